//! End to end: `berthctl convert` of the web + database + cache Compose
//! stack in `tests/compose/stack`, applied to a real berthd with a real
//! registry, behaves as its Compose file describes: names resolve between
//! services, interpolated values reach the processes, the published port is
//! on the address written, the cache's root filesystem is read-only with a
//! tmpfs, the database's named volume keeps its data across a replacement,
//! and `--strict` refuses a file with keys Berth cannot express.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use berth_e2e::registry::{ImageBuilder, TestRegistry};
use berth_e2e::*;

/// `berthctl convert` with `env` set; (exit code, stdout, stderr).
fn convert(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(berthctl_bin());
    cmd.arg("convert").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_converted_compose_stack_runs_as_compose_describes() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    reg.push(
        "shop/busybox",
        "1",
        &ImageBuilder::busybox().build().unwrap(),
    )
    .unwrap();
    let agent = Agent::start();
    let port = free_port();
    let out_dir = agent.dir.path().join("converted");
    let stack = workspace_root().join("tests/compose/stack/compose.yaml");
    let (code, _, err) = convert(
        &[stack.to_str().unwrap(), "--out", out_dir.to_str().unwrap()],
        &[
            ("REGISTRY", reg.host()),
            ("WEB_PORT", &port.to_string()),
            ("GREETING", "hi-from-env"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 service(s) converted"), "{err}");
    let manifest = out_dir.join("shop.toml");
    agent
        .ctl(&["validate", "-f", manifest.to_str().unwrap()])
        .ok();
    agent
        .ctl(&[
            "apply",
            "-f",
            manifest.to_str().unwrap(),
            "--wait",
            "--timeout",
            "120s",
        ])
        .ok();

    // web reads db and cache by their service names and serves the result
    // on the loopback address the Compose file published it on.
    let page = agent.wait_for(60, "web serves what db and cache answered", |_| {
        load::get(port, "/")
            .ok()
            .filter(|b| b.contains("db=stored-") && b.contains("cache=PONG"))
    });
    assert!(page.contains("greeting=hi-from-env"), "{page}");
    let first_state = page
        .split_whitespace()
        .find_map(|w| w.strip_prefix("db="))
        .unwrap()
        .to_string();

    // cache: read-only root, writable tmpfs at /srv.
    let cache = agent.wait_for(10, "cache running", |ag| ag.running_id("cache"));
    let r = agent.exec(
        &cache,
        &["sh", "-c", "touch /x 2>&1; touch /srv/ok && echo srv-ok"],
    );
    assert!(r.output.contains("Read-only file system"), "{r:?}");
    assert!(r.output.contains("srv-ok"), "{r:?}");

    // db's data is in the named volume: a new replica appends to it.
    agent
        .ctl(&["restart", "db", "--wait", "--timeout", "120s"])
        .ok();
    let log = agent.state_dir().join("volumes/dbdata/_data/www/log");
    let lines = agent.wait_for(60, "two db starts logged in the volume", |_| {
        let t = std::fs::read_to_string(&log).ok()?;
        (t.lines().count() >= 2).then_some(t)
    });
    assert!(lines.starts_with(&first_state), "{lines}");
    println!(
        "compose-convert: 3 services converted and running; db volume kept {} starts",
        lines.lines().count()
    );
    agent.remove_all_containers();
}

#[test]
fn strict_refuses_keys_berth_cannot_express_and_names_them() {
    let file = workspace_root().join("tests/compose/unsupported/compose.yaml");
    let (code, out, err) = convert(&[file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[service.app]"), "{out}");
    assert!(
        err.contains("compose.yaml:9:5: not converted: services.app.privileged:"),
        "{err}"
    );
    let (code, out, err) = convert(&[file.to_str().unwrap(), "--strict"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("8 key(s) cannot be converted (--strict): nothing written"),
        "{err}"
    );
    // JSON for scripts: every note with its place and kind.
    let (code, out, _) = convert(&["-o", "json", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    let n = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["key"] == "services.app.network_mode")
        .unwrap();
    assert_eq!(
        (n["line"].as_u64(), n["column"].as_u64()),
        (Some(8), Some(5))
    );
    assert_eq!(n["kind"], "unsupported");
}
