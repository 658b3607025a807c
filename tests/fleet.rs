//! End to end: a two-host fleet on one machine — two agents with their own
//! state, bridge, subnet, cgroup parent, `--http` port and published port —
//! behind a real HAProxy that checks each agent's readiness endpoint. A new
//! digest is rolled host by host (drain, apply --wait, undrain) while load runs
//! through HAProxy: zero failed requests. The pattern is docs/fleet.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::load::{get, Load};
use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

struct Haproxy {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    fn start(frontend: u16, hosts: &[(&str, u16, u16)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let mut servers = String::new();
        for (name, traffic, check) in hosts {
            servers.push_str(&format!(
                "    server {name} 127.0.0.1:{traffic} check port {check}\n"
            ));
        }
        let cfg = format!(
            r#"global
    maxconn 2000
    stats socket {sock} mode 600 level admin
defaults
    mode http
    option http-server-close
    option redispatch
    retries 2
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    default-server inter 200ms fall 2 rise 2
frontend web
    bind 127.0.0.1:{frontend}
    default_backend web
backend web
    balance roundrobin
    option httpchk
    http-check send meth GET uri /v1/services/web/ready ver HTTP/1.1 hdr Host berth
    http-check expect status 200
{servers}"#,
            sock = socket.display()
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (apt package haproxy) must be installed");
        Haproxy {
            child,
            socket,
            _dir: dir,
        }
    }

    /// (status, current sessions) of a server, from the runtime API.
    fn server(&self, name: &str) -> Option<(String, u64)> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 17 && f[0] == "web" && f[1] == name)
                .then(|| (f[17].to_string(), f[4].parse().unwrap_or(0)))
        })
    }

    fn wait_state(&self, name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.server(name).is_some_and(|(s, _)| s == want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("haproxy never saw {name} {want}: {:?}", self.server(name));
    }

    fn wait_idle(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.server(name).is_some_and(|(_, n)| n == 0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never became idle");
    }
}

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
            ("hostA", port_a, a.http_port),
            ("hostB", port_b, b.http_port),
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
