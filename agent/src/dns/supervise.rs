//! berthd's side of `berth-dns`: start it when absent (it detaches, so a kill
//! of berthd leaves it running), find it again after a restart (its pid file
//! plus the process start time), replace it when its binary or arguments
//! changed (the new one binds with SO_REUSEPORT before the old one is told to
//! stop), and publish the records it serves.

use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::records::{self, build_records, Records, ReplicaView};
use super::DnsError;
use crate::network::Ipv4Net;

/// berth-dns writes this (JSON [`PidFile`]) in its directory once it serves.
pub const PID_FILE: &str = "berth-dns.pid";
/// berthd publishes the records here (in the same directory).
pub const RECORDS_FILE: &str = "records.json";
/// berth-dns's own log (its stderr), rotated once at 1 MiB when it starts.
pub const LOG_FILE: &str = "berth-dns.log";
const LOG_MAX_BYTES: u64 = 1 << 20;
/// How long berthd waits for a new berth-dns to report that it serves.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// The DNS port on the gateway.
pub const DNS_PORT: u16 = 53;

/// What berth-dns records about itself; berthd uses it to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    pub pid: i32,
    /// Start time of the process (clock ticks since boot, `/proc/PID/stat`
    /// field 22): with the pid, it identifies the process across pid reuse.
    pub start_time: u64,
    /// The arguments it was started with (after the program name).
    pub args: Vec<String>,
}

impl PidFile {
    /// Whether the process this file names is still the one that wrote it.
    pub fn alive(&self) -> bool {
        self.pid > 0 && crate::runtime::proc_start(self.pid) == Some(self.start_time)
    }
}

/// How berthd runs berth-dns.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// `<run-dir>/dns`: pid file, records, log.
    pub dir: PathBuf,
    /// The berth-dns executable (installed next to berthd).
    pub exe: PathBuf,
    /// Where it listens: the bridge gateway.
    pub listen: Ipv4Addr,
    /// The bridge subnet: only its addresses may query.
    pub subnet: Ipv4Net,
    /// Upstream resolvers; empty: the host's `/etc/resolv.conf`.
    pub upstreams: Vec<SocketAddr>,
}

impl DnsConfig {
    /// The arguments berth-dns is started with (recorded in its pid file;
    /// a difference means it must be replaced).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--listen".to_string(),
            SocketAddrV4::new(self.listen, DNS_PORT).to_string(),
            "--subnet".to_string(),
            format!("{}/{}", self.subnet.network(), self.subnet.prefix_len()),
            "--dir".to_string(),
            self.dir.display().to_string(),
        ];
        for u in &self.upstreams {
            a.push("--upstream".into());
            a.push(u.to_string());
        }
        a
    }

    /// `berth-dns` beside the running executable.
    pub fn default_exe() -> PathBuf {
        std::env::current_exe()
            .unwrap_or_else(|_| "berthd".into())
            .with_file_name("berth-dns")
    }
}

/// What berthd found of an earlier berth-dns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The process of the pid file still runs.
    pub alive: bool,
    /// It runs the installed executable (same file: device and inode).
    pub same_exe: bool,
    /// It was started with the arguments berthd would use now.
    pub same_args: bool,
}

/// What to do about berth-dns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    /// It runs as wanted.
    Keep,
    /// None runs: start one.
    Start,
    /// One runs with another binary or arguments: start the new one, then stop it.
    Replace,
}

/// The decision, from what was found (None: no pid file).
pub fn server_action(found: Option<Found>) -> ServerAction {
    match found {
        None => ServerAction::Start,
        Some(f) if !f.alive => ServerAction::Start,
        Some(f) if f.same_exe && f.same_args => ServerAction::Keep,
        Some(_) => ServerAction::Replace,
    }
}

/// What [`Dns::ensure_server`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Running { pid: i32 },
    Started { pid: i32 },
    Replaced { old: i32, new: i32 },
}

#[derive(Debug)]
struct State {
    server: Option<PidFile>,
    published: Records,
    /// When `published` was last written (berth-dns picks it up within its
    /// reload interval).
    written_at: Option<std::time::Instant>,
}

/// How long a records file takes to be served: berth-dns checks it every
/// 100 ms; the rest is margin.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// berthd's handle on berth-dns. `Send + Sync`.
#[derive(Debug)]
pub struct Dns {
    cfg: DnsConfig,
    state: Mutex<State>,
}

impl Dns {
    /// A handle; starts nothing. The records berth-dns serves now (left by an
    /// earlier berthd) are the base of the first publication.
    pub fn new(cfg: DnsConfig) -> Dns {
        let published = records::read(&cfg.dir.join(RECORDS_FILE)).unwrap_or_default();
        Dns {
            cfg,
            state: Mutex::new(State {
                server: None,
                published,
                written_at: None,
            }),
        }
    }

    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nameserver containers should use: the gateway while berth-dns
    /// serves it, None otherwise (containers then get the host's resolvers).
    pub fn nameserver(&self) -> Option<Ipv4Addr> {
        self.lock()
            .server
            .as_ref()
            .filter(|p| p.alive())
            .map(|_| self.cfg.listen)
    }

    /// Makes sure berth-dns runs as configured: keeps a running one, starts
    /// one, or replaces one with another binary or arguments. Blocking (up
    /// to [`READY_TIMEOUT`]).
    pub fn ensure_server(&self) -> Result<Outcome, DnsError> {
        let dir = &self.cfg.dir;
        std::fs::create_dir_all(dir).map_err(DnsError::io("creating", dir))?;
        let old = read_pid_file(dir);
        let found = old.as_ref().map(|p| Found {
            alive: p.alive(),
            same_exe: same_file(Path::new(&format!("/proc/{}/exe", p.pid)), &self.cfg.exe),
            same_args: p.args == self.cfg.args(),
        });
        let outcome = match server_action(found) {
            ServerAction::Keep => {
                let pid = old.as_ref().map(|p| p.pid).unwrap_or_default();
                self.lock().server = old;
                return Ok(Outcome::Running { pid });
            }
            ServerAction::Start => {
                let new = self.spawn()?;
                let pid = new.pid;
                self.lock().server = Some(new);
                Outcome::Started { pid }
            }
            ServerAction::Replace => {
                // The new one binds next to the old one (SO_REUSEPORT), so the
                // port is served throughout; only then is the old one stopped.
                let new = self.spawn()?;
                let new_pid = new.pid;
                self.lock().server = Some(new);
                let old_pid = old.as_ref().map(|p| p.pid).unwrap_or_default();
                if let Some(p) = &old {
                    terminate(p);
                }
                Outcome::Replaced {
                    old: old_pid,
                    new: new_pid,
                }
            }
        };
        Ok(outcome)
    }

    /// Starts berth-dns and waits for its `ready PID` line.
    fn spawn(&self) -> Result<PidFile, DnsError> {
        let dir = &self.cfg.dir;
        let exe = &self.cfg.exe;
        let start_err = |message: String| DnsError::Start {
            exe: exe.clone(),
            message,
        };
        let log_path = dir.join(LOG_FILE);
        if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
            let _ = std::fs::rename(&log_path, dir.join(format!("{LOG_FILE}.1")));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(DnsError::io("opening", &log_path))?;
        let mut child = Command::new(exe)
            .args(self.cfg.args())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| start_err(e.to_string()))?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("berth-dns-ready".into())
            .spawn(move || {
                let mut line = String::new();
                if let Some(out) = stdout {
                    let _ = std::io::BufReader::new(out).read_line(&mut line);
                }
                let _ = tx.send(line);
            })
            .map_err(|e| start_err(e.to_string()))?;
        let line = rx.recv_timeout(READY_TIMEOUT);
        // The first process exits as soon as it has forked the server.
        let _ = child.wait();
        let tail = || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(3).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("; ")
        };
        let line = match line {
            Ok(l) => l,
            Err(_) => {
                return Err(start_err(format!(
                    "no ready report within {READY_TIMEOUT:?} (log: {})",
                    tail()
                )))
            }
        };
        let pid: i32 = match line.trim().strip_prefix("ready ").map(str::parse) {
            Some(Ok(pid)) => pid,
            _ => return Err(start_err(format!("it exited (log: {})", tail()))),
        };
        match read_pid_file(dir) {
            Some(p) if p.pid == pid && p.alive() => Ok(p),
            _ => Err(start_err(format!(
                "its pid file {} does not name process {pid}",
                dir.join(PID_FILE).display()
            ))),
        }
    }

    /// Publishes the records for `services` and their `replicas` (see
    /// [`build_records`]); writes the file only when they changed. Returns
    /// whether it wrote.
    pub fn publish<'a>(
        &self,
        services: impl IntoIterator<Item = &'a str>,
        replicas: &[ReplicaView<'_>],
    ) -> Result<bool, DnsError> {
        let path = self.cfg.dir.join(RECORDS_FILE);
        let mut st = self.lock();
        let next = build_records(services, replicas, &st.published);
        if next == st.published && path.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.cfg.dir).map_err(DnsError::io("creating", &self.cfg.dir))?;
        records::write(&path, &next)?;
        st.published = next;
        st.written_at = Some(std::time::Instant::now());
        Ok(true)
    }

    /// How many addresses berth-dns answers for `service` by now: those of
    /// the records written at least [`SETTLE`] ago (it reloads every 100 ms),
    /// 0 while a change is still on its way.
    pub fn answering(&self, service: &str) -> usize {
        let st = self.lock();
        if st.written_at.is_some_and(|t| t.elapsed() < SETTLE) {
            return 0;
        }
        st.published.services.get(service).map_or(0, Vec::len)
    }

    /// The records published last.
    pub fn published(&self) -> Records {
        self.lock().published.clone()
    }
}

fn read_pid_file(dir: &Path) -> Option<PidFile> {
    let text = std::fs::read(dir.join(PID_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `dir/berth-dns.pid` atomically (berth-dns, once it serves).
pub fn write_pid_file(dir: &Path, p: &PidFile) -> Result<(), DnsError> {
    let path = dir.join(PID_FILE);
    let tmp = dir.join(format!("{PID_FILE}.tmp"));
    let body = serde_json::to_vec(p).map_err(|e| DnsError::Records {
        path: path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, body).map_err(DnsError::io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(DnsError::io("renaming into place", &path))
}

/// Removes the pid file if it still names `pid` (a replaced berth-dns must
/// not remove its successor's).
pub fn remove_pid_file(dir: &Path, pid: i32) {
    if read_pid_file(dir).is_some_and(|p| p.pid == pid) {
        let _ = std::fs::remove_file(dir.join(PID_FILE));
    }
}

/// Whether two paths are the same file (device and inode; `/proc/PID/exe`
/// resolves to the running binary even after it was replaced on disk).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// SIGTERM to the process of `p` if it is still that process (pidfd: no
/// race with pid reuse).
fn terminate(p: &PidFile) {
    use crate::sys::process::{pidfd_open, pidfd_send_signal};
    if let Ok(fd) = pidfd_open(p.pid) {
        if p.alive() {
            let _ = pidfd_send_signal(&fd, libc::SIGTERM);
        }
    }
}

/// Stops the berth-dns whose pid file is in `dir` (uninstall, tests): SIGTERM,
/// then SIGKILL after 2 s. Returns whether one was running.
pub fn stop_server(dir: &Path) -> bool {
    let Some(p) = read_pid_file(dir) else {
        return false;
    };
    if !p.alive() {
        return false;
    }
    terminate(&p);
    let deadline = Instant::now() + Duration::from_secs(2);
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if p.alive() {
        if let Ok(fd) = crate::sys::process::pidfd_open(p.pid) {
            if p.alive() {
                let _ = crate::sys::process::pidfd_send_signal(&fd, libc::SIGKILL);
            }
        }
    }
    remove_pid_file(dir, p.pid);
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_action_keeps_starts_or_replaces() {
        let f = |alive, same_exe, same_args| {
            Some(Found {
                alive,
                same_exe,
                same_args,
            })
        };
        let cases = [
            (None, ServerAction::Start),
            (f(false, true, true), ServerAction::Start),
            (f(false, false, false), ServerAction::Start),
            (f(true, true, true), ServerAction::Keep),
            (f(true, false, true), ServerAction::Replace),
            (f(true, true, false), ServerAction::Replace),
        ];
        for (found, want) in cases {
            assert_eq!(server_action(found), want, "{found:?}");
        }
    }

    #[test]
    fn args_name_the_gateway_subnet_dir_and_upstreams() {
        let cfg = DnsConfig {
            dir: "/run/berth/dns".into(),
            exe: "/usr/bin/berth-dns".into(),
            listen: Ipv4Addr::new(10, 89, 0, 1),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 89, 0, 0), 16).unwrap(),
            upstreams: vec!["127.0.0.1:5353".parse().unwrap()],
        };
        assert_eq!(
            cfg.args().join(" "),
            "--listen 10.89.0.1:53 --subnet 10.89.0.0/16 --dir /run/berth/dns --upstream 127.0.0.1:5353"
        );
    }

    #[test]
    fn pid_file_identifies_this_process_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let p = PidFile {
            pid: me,
            start_time: crate::runtime::proc_start(me).unwrap(),
            args: vec!["--listen".into()],
        };
        write_pid_file(dir.path(), &p).unwrap();
        assert_eq!(read_pid_file(dir.path()), Some(p.clone()));
        assert!(p.alive());
        let reused = PidFile {
            start_time: p.start_time + 1,
            ..p.clone()
        };
        assert!(
            !reused.alive(),
            "same pid, other start time: another process"
        );
        remove_pid_file(dir.path(), me + 1);
        assert!(
            dir.path().join(PID_FILE).exists(),
            "names another pid: kept"
        );
        remove_pid_file(dir.path(), me);
        assert!(!dir.path().join(PID_FILE).exists());
    }

    #[test]
    fn publish_writes_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let dns = Dns::new(DnsConfig {
            dir: dir.path().join("dns"),
            exe: "/nonexistent".into(),
            listen: Ipv4Addr::new(10, 0, 0, 1),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 24).unwrap(),
            upstreams: Vec::new(),
        });
        assert_eq!(dns.nameserver(), None, "nothing started");
        let r = [ReplicaView {
            service: "app",
            id: "app-1",
            ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            running: true,
            readiness: records::Readiness::Ready,
        }];
        assert!(dns.publish(["app"], &r).unwrap());
        assert!(
            !dns.publish(["app"], &r).unwrap(),
            "unchanged: not rewritten"
        );
        let on_disk = records::read(&dir.path().join("dns").join(RECORDS_FILE)).unwrap();
        assert_eq!(on_disk.services["app"], vec![Ipv4Addr::new(10, 0, 0, 2)]);
        // A new handle (berthd restarted) starts from what is on disk.
        let again = Dns::new(dns.config().clone());
        assert_eq!(again.published(), on_disk);
        assert!(dns.publish(["app"], &[]).unwrap());
        assert!(records::read(&dir.path().join("dns").join(RECORDS_FILE))
            .unwrap()
            .services["app"]
            .is_empty());
    }
}
