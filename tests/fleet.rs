//! End to end: a two-host fleet on one machine — two agents with their own
//! state, bridge, subnet, cgroup parent, `--http` port and published port —
//! behind a real HAProxy that checks each agent's readiness endpoint. A new
//! digest is rolled host by host (drain, apply --wait, undrain) while load runs
//! through HAProxy: zero failed requests. The pattern is docs/fleet.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_e2e::haproxy::Haproxy;
use berth_e2e::load::{get, Load};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn manifest(image: &str, host_port: u16) -> String {
    format!(
        r#"
[service.web]
image = "{image}"
replicas = 2
[service.web.port]
container = 8080
host = {host_port}
[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
retries = 2
[service.web.update]
drain = "300ms"
"#
    )
}

#[test]
fn a_new_digest_rolls_host_by_host_behind_haproxy_without_a_failed_request() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let a = Agent::start();
    let b = Agent::start();
    let (port_a, port_b) = (free_port(), free_port());
    for (agent, port) in [(&a, port_a), (&b, port_b)] {
        let path = agent.dir.path().join("v1.toml");
        std::fs::write(&path, manifest(&v1, port)).unwrap();
        agent
            .ctl(&[
                "apply",
                "--wait",
                "--timeout",
                "60s",
                "-f",
                path.to_str().unwrap(),
            ])
            .ok();
    }
    let frontend = free_port();
    let lb = Haproxy::start(
        frontend,
        &[
            ("hostA", ([127, 0, 0, 1], port_a).into(), a.http_port),
            ("hostB", ([127, 0, 0, 1], port_b).into(), b.http_port),
        ],
    );
    lb.wait_state("hostA", "UP");
    lb.wait_state("hostB", "UP");
    assert_eq!(get(frontend, "/index.html").unwrap().trim(), "v1");

    let load = Load::start(frontend, 4, Duration::from_secs(90));
    std::thread::sleep(Duration::from_millis(500));
    for (name, agent, port) in [("hostA", &a, port_a), ("hostB", &b, port_b)] {
        agent.ctl(&["drain", "on"]).ok();
        lb.wait_state(name, "DOWN");
        lb.wait_idle(name);
        let path = agent.dir.path().join("v2.toml");
        std::fs::write(&path, manifest(&v2, port)).unwrap();
        let out = agent.ctl(&[
            "apply",
            "--wait",
            "--timeout",
            "60s",
            "-f",
            path.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        agent.ctl(&["drain", "off"]).ok();
        lb.wait_state(name, "UP");
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, bodies, errors) = load.finish();
    assert!(ok > 200, "too little load: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the fleet rollout: {errors:?}"
    );
    assert!(
        bodies.contains(&"v1".to_string()) && bodies.contains(&"v2".to_string()),
        "{bodies:?}"
    );
    // Both hosts now serve only v2.
    for _ in 0..10 {
        assert_eq!(get(frontend, "/index.html").unwrap().trim(), "v2");
    }
}
