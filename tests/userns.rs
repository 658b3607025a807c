//! End to end: services run in their own user namespace by default (a
//! distinct, non-zero host range each, the same one after an agent restart),
//! `userns = "host"` keeps the identity map, image layers stay shared (the
//! same inode in every container) and a named volume keeps the ownership the
//! container sees (idmapped), so data written before or after is readable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

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
        .map(|s| agent.wait_for(30, &format!("{s} running"), |ag| ag.running_id(s)))
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
        ag.running_id("a").filter(|id| *id != ids[0])
    });
    let (ma2, _) = probe(&agent, &new_a);
    assert_eq!(ma2, ma);
    agent.remove_all_containers();
}

/// A 128 MiB ext2 filesystem (its driver takes no id-mapped mounts) on a
/// loop device mounted at a path; unmounted (the loop device freed with it)
/// and its image removed on drop.
struct Ext2Mount(std::path::PathBuf, std::path::PathBuf);

impl Ext2Mount {
    fn new(path: &std::path::Path, image: &std::path::Path) -> Ext2Mount {
        let sh = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        std::fs::create_dir_all(path).unwrap();
        sh(std::process::Command::new("truncate")
            .args(["-s", "128M"])
            .arg(image));
        sh(std::process::Command::new("mkfs.ext2")
            .args(["-q", "-F"])
            .arg(image));
        let guard = Ext2Mount(path.to_path_buf(), image.to_path_buf());
        sh(std::process::Command::new("mount")
            .args(["-t", "ext2", "-o", "loop"])
            .arg(image)
            .arg(path));
        guard
    }
}

impl Drop for Ext2Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_file(&self.1);
    }
}

#[test]
fn a_state_dir_that_cannot_be_idmapped_is_found_at_start_and_named() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "userns-fs");
    let mut agent = Agent::create(&[]);
    let _ext2 = Ext2Mount::new(&agent.state_dir(), &agent.dir.path().join("ext2.img"));
    agent.spawn();
    // Said once at start, naming the state dir and what to do.
    let state = agent.state_dir().display().to_string();
    let log = agent.wait_for(10, "the start-up warning", |ag| {
        let log = ag.log();
        log.contains("user namespaces unavailable").then_some(log)
    });
    assert!(
        log.contains(&format!("{state} cannot be id-mapped")),
        "{log}"
    );
    // A userns = "auto" service fails with that reason instead of at
    // container start with a bare EINVAL; nothing runs.
    agent
        .apply_text(
            "m.toml",
            &format!("[service.a]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n"),
        )
        .ok();
    let err = agent.wait_for(30, "a's error", |ag| {
        let s = ag.status_json();
        s["services"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == "a")
            .and_then(|x| x["last_error"].as_str().map(String::from))
            .filter(|e| !e.is_empty())
    });
    assert!(
        err.contains("user namespaces are unavailable") && err.contains("cannot be id-mapped"),
        "{err}"
    );
    assert!(err.contains("--userns-fallback"), "{err}");
    assert!(agent.running_id("a").is_none());
    agent.remove_all_containers();
}
