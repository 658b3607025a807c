//! End to end: a day of operations — `berthctl exec` runs a command in a
//! workload's namespaces, cgroup, user, capabilities and seccomp filter (by
//! container or by service) and exits with its code; `berthctl restart`
//! replaces a service's replicas with the same spec, without downtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_e2e::load::{get, Load};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn running(agent: &Agent, service: &str) -> Vec<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == service && c["state"] == "running")
        .collect()
}

/// The `Uid`, `CapEff` and `Seccomp` lines of a `/proc/PID/status` text.
fn identity(status: &str) -> Vec<String> {
    let mut lines: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("CapEff:") || l.starts_with("Seccomp:"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn exec_runs_as_the_workload_and_returns_its_exit_code() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let text = format!(
        "[service.app]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\nuser = \"1000:1000\"\n\n[service.rooted]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n"
    );
    agent.apply_text("m.toml", &text).ok();
    let (app, rooted) = agent.wait_for(30, "app and rooted running", |a| {
        let app = running(a, "app");
        let rooted = running(a, "rooted");
        (app.len() == 1 && rooted.len() == 1).then(|| {
            (
                app[0]["id"].as_str().unwrap().to_string(),
                rooted[0]["id"].as_str().unwrap().to_string(),
            )
        })
    });

    for (target, uid) in [(app.as_str(), "1000"), ("rooted", "0")] {
        // The exec'd process and the workload (PID 1) read the same way.
        let own = agent
            .ctl(&["exec", target, "--", "cat", "/proc/self/status"])
            .ok();
        let workload = agent
            .ctl(&["exec", target, "--", "cat", "/proc/1/status"])
            .ok();
        let (own, workload) = (identity(&own.stdout), identity(&workload.stdout));
        assert_eq!(own.len(), 3, "{own:?}");
        assert_eq!(own, workload, "exec in {target}");
        let uid_line = own.iter().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid_line.split_whitespace().nth(1),
            Some(uid),
            "{target}: {uid_line}"
        );
        // Under the default seccomp filter (mode 2).
        assert!(own.contains(&"Seccomp:\t2".to_string()), "{own:?}");
    }
    // Root in the container keeps Docker's reduced capability set: some, not all.
    let caps = agent
        .ctl(&[
            "exec",
            &rooted,
            "--",
            "grep",
            "^CapEff:",
            "/proc/self/status",
        ])
        .ok()
        .stdout;
    let caps = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(caps != 0 && caps & (1 << 21) == 0, "CapEff {caps:x}"); // no CAP_SYS_ADMIN
                                                                    // A user=1000 workload has none.
    let caps = agent
        .ctl(&["exec", "app", "--", "grep", "^CapEff:", "/proc/self/status"])
        .ok()
        .stdout;
    assert!(caps.contains("0000000000000000"), "{caps}");

    // It runs in the workload's cgroup and sees the workload's processes.
    let cg_own = agent
        .ctl(&["exec", &app, "--", "cat", "/proc/self/cgroup"])
        .ok()
        .stdout;
    let cg_workload = agent
        .ctl(&["exec", &app, "--", "cat", "/proc/1/cgroup"])
        .ok()
        .stdout;
    assert_eq!(cg_own, cg_workload);
    let ps = agent.ctl(&["exec", "app", "--", "ps"]).ok().stdout;
    assert!(ps.contains("sleep 3600"), "{ps}");

    // The command's exit code is berthctl's; by service name and by id prefix.
    let out = agent.ctl(&["exec", "app", "--", "sh", "-c", "echo bye; exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "bye\n");
    let out = agent.ctl(&["exec", &app[..12], "--", "false"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = agent.ctl(&["exec", "app", "--", "/no/such/binary"]);
    assert_eq!(out.code, 127, "{out:?}");
    // A timeout kills the command: 124, as timeout(1).
    let out = agent.ctl(&["exec", "--timeout", "300ms", "app", "--", "sleep", "30"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);

    // Clear errors: an unknown target, -it without a terminal (as docker exec;
    // interactive exec under a pty is in tests/exec_stream.rs).
    let out = agent.ctl(&["exec", "nope", "--", "true"]);
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("`nope` not found"), "{}", out.stderr);
    let out = agent.ctl(&["exec", "-it", "app", "--", "sh"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("the input device is not a TTY"),
        "{}",
        out.stderr
    );
}

fn web(image: &str, port: u16) -> String {
    format!(
        r#"
[service.web]
image = "{image}"
replicas = 2
env = {{ COLOR = "blue" }}

[service.web.port]
container = 8080
host = {port}

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2

[service.web.update]
strategy = "start-first"
max_surge = 1
max_unavailable = 0
drain = "500ms"

[service.other]
image = "{image}"
command = ["sleep", "3600"]

[service.other.update]
strategy = "stop-first"
"#
    )
}

#[test]
fn restart_replaces_replicas_with_the_same_spec_without_downtime() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let port = free_port();
    agent.apply_text("m.toml", &web(&image, port)).ok();
    agent.wait_for(30, "2 replicas ready behind the port", |a| {
        (a.ready_of("web") == (2, 2)
            && running(a, "other").len() == 1
            && get(port, "/index.html").is_ok())
        .then_some(())
    });
    let ids = |a: &Agent, s: &str| -> Vec<String> {
        running(a, s)
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    let old = ids(&agent, "web");
    let other = ids(&agent, "other");
    let spec_before = agent.ctl(&["inspect", &old[0]]).ok().stdout;
    let spec_before: serde_json::Value = serde_json::from_str(&spec_before).unwrap();

    let load = Load::start(port, 4, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.ctl(&["restart", "web", "--wait", "--timeout", "60s"]);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, bodies, errors) = load.finish();
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(failed, 0, "{ok} ok, {failed} failed: {errors:?}");
    assert!(ok > 10, "{ok}");
    assert_eq!(bodies, vec!["v1".to_string()]);

    let new = agent.wait_for(30, "old replicas gone", |a| {
        let now = ids(a, "web");
        let all = a
            .containers()
            .into_iter()
            .filter(|c| c["service"] == "web")
            .count();
        (now.len() == 2 && all == 2 && a.ready_of("web") == (2, 2)).then_some(now)
    });
    assert!(new.iter().all(|id| !old.contains(id)), "{old:?} → {new:?}");
    // Only the restarted service was replaced.
    assert_eq!(ids(&agent, "other"), other);
    // Same spec: image (digest), env, ports.
    let spec_after = agent.ctl(&["inspect", &new[0]]).ok().stdout;
    let spec_after: serde_json::Value = serde_json::from_str(&spec_after).unwrap();
    for key in ["image", "env", "ports", "command", "user"] {
        assert_eq!(spec_before["spec"][key], spec_after["spec"][key], "{key}");
    }
    assert_eq!(spec_after["spec"]["env"]["COLOR"], "blue");
    // Recorded as a revision (history shows it) with the same manifest.
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    let last = revs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"], "restart:web", "{revs}");
    assert_eq!(last["state"], "complete", "{revs}");

    // Re-applying the same manifest after a restart changes nothing.
    let out = agent.apply_text("m.toml", &web(&image, port)).ok();
    assert!(out.stdout.contains("unchanged"), "{}", out.stdout);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ids(&agent, "web"), new);

    // A stop-first service is restarted too (its old replica goes first); the
    // other service is left alone.
    let out = agent.ctl(&["restart", "other", "--wait", "--timeout", "60s"]);
    assert_eq!(out.code, 0, "{out:?}");
    let now = agent.wait_for(30, "other replaced", |a| {
        let now = ids(a, "other");
        (now.len() == 1 && now != other).then_some(now)
    });
    assert_ne!(now, other);
    assert_eq!(ids(&agent, "web"), new);

    // An unknown service is a clear error.
    let out = agent.ctl(&["restart", "nope"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("service `nope`"), "{}", out.stderr);
}
