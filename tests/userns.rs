//! End to end: services run in their own user namespace by default (a
//! distinct, non-zero host range each, the same one after an agent restart),
//! `userns = "host"` keeps the identity map, image layers stay shared (the
//! same inode in every container) and a named volume keeps the ownership the
//! container sees (idmapped), so data written before or after is readable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

/// The running container of `service`, by id.
fn running(agent: &Agent, service: &str) -> Option<String> {
    agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == service && c["state"] == "running")
        .and_then(|c| c["id"].as_str().map(String::from))
}

/// (inside start, host start, length) of the container's uid_map, and the
/// inode of /bin/busybox in it, read by an exec'd shell.
fn probe(agent: &Agent, id: &str) -> ((u64, u64, u64), u64) {
    let r = agent.exec(
        id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "cat /proc/self/uid_map; stat -c %i /bin/busybox",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let w: Vec<u64> = r
        .output
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(w.len(), 4, "{}", r.output);
    ((w[0], w[1], w[2]), w[3])
}

#[test]
fn services_get_disjoint_ranges_kept_across_restarts_and_host_is_identity() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "userns");
    let mut agent = Agent::start();
    let text = format!(
        r#"
[service.a]
image = "{image}"
command = ["sh", "-c", "echo mine > /data/by-root; mkdir -p /data/u; chown 1000:1000 /data/u; exec sleep 3600"]
[[service.a.volumes]]
name = "adata"
target = "/data"

[service.b]
image = "{image}"
command = ["sleep", "3600"]

[service.h]
image = "{image}"
command = ["sleep", "3600"]
userns = "host"
"#
    );
    agent.apply_wait("m.toml", &text, "60s").ok();
    let ids: Vec<String> = ["a", "b", "h"]
        .iter()
        .map(|s| agent.wait_for(30, &format!("{s} running"), |ag| running(ag, s)))
        .collect();
    let (ma, ia) = probe(&agent, &ids[0]);
    let (mb, ib) = probe(&agent, &ids[1]);
    let (mh, ih) = probe(&agent, &ids[2]);
    // Own namespaces: root is an unprivileged host uid, 65536 ids each, disjoint.
    for m in [ma, mb] {
        assert_eq!(m.0, 0);
        assert!(m.1 >= 65536, "{m:?}");
        assert_eq!(m.2, 65536);
    }
    assert!(ma.1 + ma.2 <= mb.1 || mb.1 + mb.2 <= ma.1, "{ma:?} {mb:?}");
    // userns = "host": the identity map.
    assert_eq!(mh, (0, 0, 4294967295));
    // One copy of the layer: the same inode in all three.
    assert_eq!((ia, ib), (ih, ih));

    // The volume, idmapped: what container root wrote is root's on the host,
    // what it chowned to 1000 is 1000's (as without a user namespace).
    let data = agent.state_dir().join("volumes/adata/_data");
    let f = agent.wait_for(20, "by-root written", |_| {
        std::fs::metadata(data.join("by-root")).ok()
    });
    assert_eq!((f.uid(), f.gid()), (0, 0));
    let u = std::fs::metadata(data.join("u")).unwrap();
    assert_eq!((u.uid(), u.gid()), (1000, 1000));
    let r = agent.exec(
        &ids[0],
        &[
            "/bin/busybox",
            "stat",
            "-c",
            "%u:%g",
            "/data/by-root",
            "/data/u",
        ],
    );
    assert_eq!(r.output, "0:0\n1000:1000\n", "{r:?}");

    // After a restart of the agent, a new replica of `a` gets the same range.
    agent.terminate();
    agent.spawn();
    agent
        .ctl(&["restart", "a", "--wait", "--timeout", "60s"])
        .ok();
    let new_a = agent.wait_for(30, "a replaced", |ag| {
        running(ag, "a").filter(|id| *id != ids[0])
    });
    let (ma2, _) = probe(&agent, &new_a);
    assert_eq!(ma2, ma);
    agent.remove_all_containers();
}
