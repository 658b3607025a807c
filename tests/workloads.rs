//! End to end: how a workload runs through the agent — Docker's per-container
//! sysctl defaults (a non-root server binds port 80) and the manifest's
//! `sysctls` overriding them, and `init = true` stopping a process that
//! ignores SIGTERM as PID 1 at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn containers_of(agent: &Agent, service: &str) -> Vec<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == service)
        .collect()
}

/// `GET path` from `ip:port` (a container on the test agent's own bridge); the raw reply.
fn get_at(ip: IpAddr, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn non_root_server_binds_port_80_unless_a_sysctl_says_otherwise() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "served as 1000");
    let agent = Agent::start();
    let text = format!(
        r#"
[service.web]
image = "{image}"
user = "1000"
command = ["httpd", "-f", "-p", "80", "-h", "/www"]

[service.web.health]
http = {{ port = 80, path = "/index.html" }}
interval = "200ms"
timeout = "1s"
retries = 2

[service.blocked]
image = "{image}"
user = "1000"
command = ["httpd", "-f", "-p", "80", "-h", "/www"]
sysctls = {{ "net.ipv4.ip_unprivileged_port_start" = 1024 }}

[service.blocked.restart]
policy = "never"
"#
    );
    agent.apply_text("m.toml", &text).ok();
    let web = agent.wait_for(30, "web ready on port 80", |a| {
        let c = containers_of(a, "web")
            .into_iter()
            .find(|c| c["state"] == "running")?;
        (a.ready_of("web") == (1, 1)).then_some(c)
    });
    let ip: IpAddr = web["ip"].as_str().unwrap().parse().unwrap();
    let reply = get_at(ip, 80, "/index.html").unwrap();
    assert!(
        reply.starts_with("HTTP/1.")
            && reply.contains(" 200 ")
            && reply.ends_with("served as 1000\n"),
        "{reply}"
    );
    // It runs as uid 1000 (not root), with no capabilities: in its own user
    // namespace (the default), uid 1000 is host uid base + 1000.
    let pid = web["pid"].as_i64().unwrap();
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let base: u32 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(base >= 65536, "not in an own user namespace: {map}");
    let host = base + 1000;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains(&format!("\nUid:\t{host}\t{host}\t{host}\t{host}\n"))
            && status.contains("\nCapEff:\t0000000000000000\n"),
        "{status}"
    );

    // The manifest's value wins over the default: the same bind is refused.
    let blocked = agent.wait_for(30, "blocked exited", |a| {
        containers_of(a, "blocked")
            .into_iter()
            .find(|c| c["state"] == "exited")
    });
    assert_eq!(blocked["exit_code"], 1, "{blocked}");
    let logs = agent.ctl(&["logs", "blocked"]).ok();
    assert!(
        logs.stdout.contains("bind: Permission denied")
            || logs.stderr.contains("bind: Permission denied"),
        "{logs:?}"
    );
}

#[test]
fn init_stops_a_sleep_that_ignores_sigterm_at_once() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let manifest = |replicas: u32| {
        format!(
            r#"
[service.sleeper]
image = "{image}"
replicas = {replicas}
command = ["sleep", "3600"]
init = true
stop_timeout = "10s"

[service.sleeper.update]
drain = "0s"
"#
        )
    };
    agent.apply_text("m.toml", &manifest(1)).ok();
    let c = agent.wait_for(30, "sleeper running", |a| {
        containers_of(a, "sleeper")
            .into_iter()
            .find(|c| c["state"] == "running")
    });
    // PID 1 is the init; `sleep` (the image's entrypoint is busybox) its child.
    let pid = c["pid"].as_i64().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "berth-init");
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child: i64 = children.split_whitespace().next().unwrap().parse().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{child}/cmdline")).unwrap();
    assert_eq!(
        cmdline.split('\0').collect::<Vec<_>>(),
        ["/bin/busybox", "sleep", "3600", ""]
    );

    // Scaling to 0 stops it: SIGTERM reaches `sleep` through the init, so it
    // is gone long before the 10 s stop timeout would SIGKILL it.
    let t0 = Instant::now();
    agent.apply_text("m.toml", &manifest(0)).ok();
    agent.wait_for(15, "sleeper gone", |a| {
        containers_of(a, "sleeper").is_empty().then_some(())
    });
    let took = t0.elapsed();
    eprintln!("stop of an init container through the agent: {took:?}");
    // Well under the 10 s SIGKILL (apply, a pass and the removal included).
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
