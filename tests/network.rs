//! End to end: networking through the agent — an IP per container, published
//! ports balanced over ready replicas, zero failed requests while the image
//! changes (start-first), the documented gap of stop-first, a two-host fleet
//! behind HAProxy rolled host by host, and nothing left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use berth_e2e::load::{get, Load};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn web(image: &str, host_port: u16, strategy: &str, replicas: u32) -> String {
    format!(
        r#"
[service.web]
image = "{image}"
replicas = {replicas}

[service.web.port]
container = 8080
host = {host_port}

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
timeout = "500ms"
retries = 2

[service.web.update]
strategy = "{strategy}"
max_surge = 1
max_unavailable = {unavail}
drain = "500ms"
"#,
        unavail = if strategy == "stop-first" { 1 } else { 0 }
    )
}

fn running_web(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == "web" && c["state"] == "running")
        .collect()
}

fn rollout_under_load(strategy: &str) -> (u64, u64, Vec<String>, Vec<String>) {
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let agent = Agent::start();
    let port = free_port();
    agent
        .apply_text("m.toml", &web(&v1, port, strategy, 2))
        .ok();
    agent.wait_for(30, "2 replicas ready behind the port", |a| {
        (a.ready_of("web") == (2, 2) && get(port, "/index.html").is_ok()).then_some(())
    });
    let old: Vec<String> = running_web(&agent)
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    // Every container has its own IP on the bridge, shown by status.
    let ips = web_ips(&agent);
    assert!(
        ips.iter().all(|ip| ip.starts_with("10.")) && ips[0] != ips[1],
        "{ips:?}"
    );
    assert!(running_web(&agent)[0]["ports"][0]
        .as_str()
        .unwrap()
        .contains(&format!("{port}->8080")));

    // The port is served by the kernel (nftables DNAT) to exactly the ready replicas.
    let before = dnat_rule(&agent, port);
    assert!(
        ips.iter()
            .all(|ip| before.contains(&format!("{ip} . 8080"))),
        "{before}"
    );

    let load = Load::start(port, 4, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(500));
    agent
        .apply_text("m.toml", &web(&v2, port, strategy, 2))
        .ok();
    agent.wait_for(40, "v2 rolled out and v1 gone", |a| {
        let running = running_web(a);
        let all_web = a
            .containers()
            .into_iter()
            .filter(|c| c["service"] == "web")
            .count();
        (running.len() == 2
            && all_web == 2
            && running
                .iter()
                .all(|c| !old.contains(&c["id"].as_str().unwrap().to_string()))
            && a.ready_of("web") == (2, 2))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let result = load.finish();
    let after = dnat_rule(&agent, port);
    let new_ips = web_ips(&agent);
    assert!(
        new_ips
            .iter()
            .all(|ip| after.contains(&format!("{ip} . 8080")))
            && ips
                .iter()
                .all(|ip| new_ips.contains(ip) || !after.contains(&format!("{ip} . 8080"))),
        "old {ips:?}, new {new_ips:?}: {after}"
    );
    for id in &old {
        assert!(
            !agent.state_dir().join("containers").join(id).exists(),
            "old replica {id} left behind"
        );
    }
    result
}

/// The IPs of the running web replicas, as status shows them.
fn web_ips(agent: &Agent) -> Vec<String> {
    running_web(agent)
        .iter()
        .map(|c| c["ip"].as_str().unwrap().to_string())
        .collect()
}

/// The agent's DNAT rule for connections from this host to `port`.
fn dnat_rule(agent: &Agent, port: u16) -> String {
    let out = std::process::Command::new("nft")
        .args([
            "list",
            "chain",
            "ip",
            &format!("berth_{}", agent.bridge()),
            "published_output",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(&format!("dport {port} ")) && l.contains("dnat"))
        .unwrap_or_else(|| panic!("no DNAT rule for port {port}: {text}"))
        .to_string()
}

#[test]
fn start_first_rollout_behind_the_published_port_drops_no_request() {
    berth_agent::require_root!();
    let (ok, failed, bodies, errors) = rollout_under_load("start-first");
    assert!(ok > 200, "too little load to prove anything: {ok}");
    assert_eq!(
        failed, 0,
        "{failed} failed requests during a start-first rollout: {errors:?}"
    );
    assert!(
        bodies.contains(&"v1".to_string()) && bodies.contains(&"v2".to_string()),
        "{bodies:?}"
    );
}

#[test]
fn stop_first_rollout_has_the_documented_gap() {
    berth_agent::require_root!();
    // With stop-first and max_unavailable = 1, one replica at a time is taken
    // down before its replacement starts: capacity halves for a moment, but
    // the other replica keeps answering, so requests still succeed; with a
    // single replica there is a real gap (see docs/networking.md).
    let (ok, failed, bodies, _errors) = rollout_under_load("stop-first");
    assert!(ok > 200);
    assert!(bodies.contains(&"v2".to_string()));
    println!("stop-first with 2 replicas: {ok} ok, {failed} failed");
    assert!(
        failed <= ok / 20,
        "stop-first should lose at most a few requests: {failed}/{ok}"
    );
}

#[test]
fn stop_first_with_one_replica_has_a_gap() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let v1 = push_web_image(&reg, "shop/web:1", "v1");
    let v2 = push_web_image(&reg, "shop/web:2", "v2");
    let agent = Agent::start();
    let port = free_port();
    agent
        .apply_text("m.toml", &web(&v1, port, "stop-first", 1))
        .ok();
    agent.wait_for(30, "ready", |a| {
        (a.ready_of("web") == (1, 1) && get(port, "/index.html").is_ok()).then_some(())
    });
    let load = Load::start(port, 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    agent
        .apply_text("m.toml", &web(&v2, port, "stop-first", 1))
        .ok();
    agent.wait_for(30, "v2 ready", |a| {
        (a.ready_of("web") == (1, 1)
            && get(port, "/index.html")
                .map(|b| b.trim() == "v2")
                .unwrap_or(false))
        .then_some(())
    });
    let (ok, failed, _, _) = load.finish();
    println!("stop-first with 1 replica: {ok} ok, {failed} failed (the expected gap)");
    assert!(
        failed > 0,
        "a stop-first rollout of a single replica leaves a gap; none was seen"
    );
}

#[test]
fn containers_reach_each_other_on_the_bridge_but_not_another_agents() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "c2c");
    let a = Agent::start();
    let b = Agent::start();
    let server = "[service.server]\nimage = \"IMAGE\"\n".replace("IMAGE", &image);
    a.apply_text("m.toml", &server).ok();
    let ip = a.wait_for(30, "server running", |ag| {
        ag.containers()
            .into_iter()
            .find(|c| c["service"] == "server" && c["state"] == "running")
            .and_then(|c| c["ip"].as_str().map(String::from))
    });
    let client = |target: &str| {
        format!(
            "[service.client]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 1; for i in 1 2 3; do if printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc {target} 8080 | grep -q c2c; then echo REACHED; else echo UNREACHABLE; fi; sleep 0.3; done; sleep 3600\"]\n"
        )
    };
    // Same agent: reachable.
    a.apply_text("m.toml", &format!("{server}\n{}", client(&ip)))
        .ok();
    let logs = a.wait_for(30, "client of the same agent", |ag| {
        let out = ag.ctl(&["logs", "client"]);
        (out.stdout
            .lines()
            .filter(|l| *l == "REACHED" || *l == "UNREACHABLE")
            .count()
            >= 3)
            .then_some(out.stdout)
    });
    assert!(
        logs.lines().filter(|l| *l == "REACHED").count() >= 1,
        "{logs}"
    );
    // Another agent (another bridge and subnet): not reachable.
    b.apply_text("m.toml", &client(&ip)).ok();
    let logs = b.wait_for(40, "client of another agent", |ag| {
        let out = ag.ctl(&["logs", "client"]);
        (out.stdout
            .lines()
            .filter(|l| *l == "REACHED" || *l == "UNREACHABLE")
            .count()
            >= 3)
            .then_some(out.stdout)
    });
    assert!(
        logs.lines().all(|l| l != "REACHED"),
        "another agent's container reached it: {logs}"
    );
}

#[test]
fn nothing_is_left_after_removal_and_after_a_restart() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let mut agent = Agent::start();
    let port = free_port();
    agent
        .apply_text("m.toml", &web(&image, port, "start-first", 2))
        .ok();
    agent.wait_for(30, "ready", |a| (a.ready_of("web") == (2, 2)).then_some(()));
    let veths = |bridge: &str| -> usize {
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(veths(&agent.bridge()), 2);
    // kill -9, restart: the same two, nothing duplicated.
    agent.kill9();
    agent.spawn();
    agent.wait_for(30, "re-adopted", |a| {
        (a.ready_of("web") == (2, 2)).then_some(())
    });
    assert_eq!(veths(&agent.bridge()), 2);
    assert_eq!(get(port, "/index.html").unwrap().trim(), "v1");
    // Remove the service: veths, namespaces and the port go.
    agent
        .apply_text(
            "m.toml",
            "[service.other]\nimage = \"IMAGE\"\nreplicas = 0\n"
                .replace("IMAGE", &image)
                .as_str(),
        )
        .ok();
    agent.wait_for(30, "web removed", |a| {
        (a.containers().iter().all(|c| c["service"] != "web") && veths(&a.bridge()) == 0)
            .then_some(())
    });
    let pins = std::fs::read_dir(agent.run_dir().join("netns"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(pins, 0, "pinned namespaces left behind");
    assert!(
        get(port, "/index.html").is_err(),
        "the published port must be closed"
    );
}
