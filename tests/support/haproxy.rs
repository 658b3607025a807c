//! A real HAProxy in front of test agents (Debian's haproxy): one HTTP
//! frontend on loopback balancing round-robin over each host's published
//! port, each server checked on its agent's readiness endpoint
//! (`/v1/services/web/ready` on the `--http` listener), as docs/fleet.md
//! configures it; killed on drop.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running haproxy and its runtime API socket.
#[derive(Debug)]
pub struct Haproxy {
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
    /// Serves `127.0.0.1:frontend`; `hosts` are (server name, where its
    /// traffic goes, the agent's `--http` port on 127.0.0.1 for checks).
    pub fn start(frontend: u16, hosts: &[(&str, SocketAddr, u16)]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("berth-haproxy-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("admin.sock");
        let mut servers = String::new();
        for (name, traffic, check) in hosts {
            servers.push_str(&format!(
                "    server {name} {traffic} check addr 127.0.0.1 port {check}\n"
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
    timeout check 3s
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
    pub fn server(&self, name: &str) -> Option<(String, u64)> {
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

    /// Waits up to 30 s until HAProxy shows server `name` in state `want`
    /// (`UP`, `DOWN`).
    pub fn wait_state(&self, name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.server(name).is_some_and(|(s, _)| s == want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("haproxy never saw {name} {want}: {:?}", self.server(name));
    }

    /// Waits up to 30 s until server `name` has no current session.
    pub fn wait_idle(&self, name: &str) {
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
