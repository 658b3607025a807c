//! Shared fixtures for the end-to-end tests: locate the real binaries, run
//! `berthd` on temp dirs (killed and cleaned up on drop, also when a test
//! panics), run `berthctl`, and speak raw HTTP/1.1 to unix and TCP listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod disk;
pub mod dns;
pub mod haproxy;
pub mod load;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod upgrade;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the built `berthd` and `berthctl` (next to the test binary).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    assert!(
        dir.join("berthd").exists() && dir.join("berthctl").exists(),
        "berthd/berthctl not built in {}: run `cargo build --workspace --bins` first",
        dir.display()
    );
    dir
}

pub fn berthd_bin() -> PathBuf {
    bin_dir().join("berthd")
}

pub fn berthctl_bin() -> PathBuf {
    bin_dir().join("berthctl")
}

/// A free port (TCP and UDP, on every address), taken from below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 and up by
/// default): a port the kernel picks for an outgoing connection could be
/// taken again by one between this call and the bind it is for (an agent
/// started, an etcd restarted). Never the same port twice in one test
/// binary.
pub fn free_port() -> u16 {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if given.contains(&port) {
            continue;
        }
        let free = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if free {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000 after 1000 tries");
}

/// A running `berthd` on its own temp dirs.
#[derive(Debug)]
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub extra_args: Vec<String>,
    /// Extra environment for the berthd process.
    pub env: Vec<(String, String)>,
    /// The directory whose `berthd` is started and whose `berthctl` runs
    /// [`Agent::ctl`]: [`bin_dir`], or a released version's (the upgrade
    /// tests start an older berthd, then this build's, on the same dirs).
    pub bins: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// The name of this agent's temp dir, unique per test agent; the bridge,
    /// subnet and cgroup parent are derived from it.
    fn name(&self) -> String {
        self.dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string()
    }

    /// This agent's bridge (unique per test agent, ≤ 15 bytes).
    pub fn bridge(&self) -> String {
        let name = self.name();
        let h = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        format!("bt{:08x}", h)
    }

    /// This agent's subnet: a /24 picked from the agent's name.
    pub fn subnet(&self) -> String {
        let name = self.name();
        let h = name
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(131).wrapping_add(u32::from(b)));
        format!("10.{}.{}.0/24", 200 + (h % 50), (h >> 8) % 256)
    }

    /// The cgroup parent of this agent's containers (unique per test agent).
    pub fn cgroup_parent(&self) -> String {
        let name = self.name();
        format!("berth-test-{}", name.replace('.', "_"))
    }
}

impl Agent {
    /// Starts berthd with a unix API socket and a read-only HTTP listener.
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    /// Starts berthd with extra flags.
    pub fn start_with(extra: &[&str]) -> Agent {
        let mut agent = Agent::create(extra);
        agent.spawn();
        agent
    }

    /// An agent with its temp dirs, not started yet (see [`Agent::spawn`]).
    pub fn create(extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .unwrap();
        Agent {
            dir,
            http_port: free_port(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            bins: bin_dir(),
            child: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("berth.sock")
    }

    /// berth-dns's directory: records.json, its pid file and log.
    pub fn dns_dir(&self) -> PathBuf {
        self.run_dir().join("dns")
    }

    pub fn agent_flag(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// (Re)starts the process on the same dirs and waits until it is ready.
    pub fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// (Re)starts the process on the same dirs without waiting for it.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .unwrap();
        std::fs::write(self.dir.path().join("no-config.toml"), "").unwrap();
        let child = Command::new(self.bins.join("berthd"))
            .arg("--config")
            .arg(self.dir.path().join("no-config.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--api")
            .arg(self.agent_flag())
            .arg("--http")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--cgroup-parent")
            .arg(self.cgroup_parent())
            .arg("--bridge")
            .arg(self.bridge())
            .arg("--subnet")
            .arg(self.subnet())
            .args(&self.extra_args)
            .env("BERTH_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("berthd exited early with {status}:\n{}", self.log());
                }
            }
            if let Ok(r) = http_tcp(self.http_port, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "berthd not ready in 20s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running berthd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9` the agent (containers and state must survive it).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("berthd did not exit within 15s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs berthctl against this agent.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut full = vec!["--agent".to_string(), self.agent_flag()];
        full.extend(args.iter().map(|s| s.to_string()));
        ctl_with(&self.bins.join("berthctl"), &full)
    }

    /// A raw request on the API socket.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpReply {
        http_unix(&self.socket(), method, path, headers, body).unwrap()
    }

    /// The value of one series of `GET /metrics`, named as exposed (with its
    /// labels: `berth_x_total{service="web"}`); `None` when it is not there.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.http("GET", "/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// A raw request on the read-only listener.
    pub fn http(&self, method: &str, path: &str) -> HttpReply {
        http_tcp(self.http_port, method, path, &[], b"").unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        self.remove_all_containers();
    }
}

/// What a berthctl run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> CtlOutput {
        assert_eq!(
            self.code, 0,
            "berthctl failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for CtlOutput {
    fn from(o: Output) -> Self {
        CtlOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs berthctl with the given arguments (no agent flag added).
pub fn ctl(args: &[String]) -> CtlOutput {
    ctl_with(&berthctl_bin(), args)
}

/// Runs the `berthctl` at `bin` with the given arguments.
pub fn ctl_with(bin: &Path, args: &[String]) -> CtlOutput {
    Command::new(bin)
        .args(args)
        .env_remove("BERTH_AGENT")
        .env_remove("BERTH_TOKEN_FILE")
        .env_remove("BERTH_CA_FILE")
        .env_remove("BERTH_CERT_FILE")
        .env_remove("BERTH_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run berthctl")
        .into()
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Sends a request and reads the whole response. The body is written from a
/// second thread so a server that answers early (413) is still read.
fn exchange<S: Read + Write + Send + 'static>(
    mut stream: S,
    writer: Option<S>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let head = request_bytes(method, path, headers, body);
    let body = body.to_vec();
    let writer_thread = match writer {
        Some(mut w) => Some(std::thread::spawn(move || {
            let _ = w.write_all(&head).and_then(|_| w.write_all(&body));
        })),
        None => {
            stream.write_all(&head)?;
            stream.write_all(&body)?;
            None
        }
    };
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    if let Some(t) = writer_thread {
        let _ = t.join();
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpReply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// One request over a unix socket.
pub fn http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let w = s.try_clone()?;
    exchange(s, Some(w), method, path, headers, body)
}

/// One request to 127.0.0.1:port.
pub fn http_tcp(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let w = s.try_clone()?;
    exchange(s, Some(w), method, path, headers, body)
}

/// The workspace root (for `manifests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Pushes a busybox image whose `/www/index.html` says `marker` and whose
/// default command serves it with `httpd` on port 8080.
pub fn push_web_image(reg: &registry::TestRegistry, repo_tag: &str, marker: &str) -> String {
    let (repo, tag) = repo_tag.split_once(':').unwrap();
    let img = registry::ImageBuilder::busybox()
        .layer(
            registry::LayerBuilder::new(registry::Compression::Gzip)
                .dir("/www", 0o755)
                .file("/www/index.html", format!("{marker}\n").as_bytes(), 0o644),
        )
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
        .unwrap();
    reg.push(repo, tag, &img).unwrap();
    reg.image(repo_tag)
}

impl Agent {
    /// `berthctl -o json status`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ctl(&["-o", "json", "status"]).ok();
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// The containers the agent reports.
    pub fn containers(&self) -> Vec<serde_json::Value> {
        let r = self.api("GET", "/v1/containers", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The id of a running container of `service`, if any.
    pub fn running_id(&self, service: &str) -> Option<String> {
        self.containers()
            .into_iter()
            .find(|c| c["service"] == service && c["state"] == "running")
            .and_then(|c| c["id"].as_str().map(String::from))
    }

    /// Polls `check` until it returns Some or `secs` pass (then panics with
    /// `what`, the status and the agent log).
    pub fn wait_for<T>(
        &self,
        secs: u64,
        what: &str,
        mut check: impl FnMut(&Agent) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.api("GET", "/v1/status", &[], b"").text();
                let containers = self.api("GET", "/v1/containers", &[], b"").text();
                let events = self.api("GET", "/v1/events", &[], b"").text();
                panic!(
                    "timed out after {secs}s waiting for {what}\nstatus: {status}\ncontainers: {containers}\nevents: {events}\nlog tail:\n{}",
                    self.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ready/desired of a service from `status`.
    pub fn ready_of(&self, service: &str) -> (u64, u64) {
        let r = self.api("GET", "/v1/status", &[], b"").json();
        r["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service))
            .map(|s| {
                (
                    s["replicas_ready"].as_u64().unwrap_or(0),
                    s["replicas_desired"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    }

    /// Writes a manifest into the agent's temp dir and applies it.
    pub fn apply_text(&self, name: &str, text: &str) -> CtlOutput {
        self.apply_file(name, text, &[])
    }

    /// [`Agent::apply_text`] with `--wait --timeout TIMEOUT`: returns once the
    /// rollout completed or failed.
    pub fn apply_wait(&self, name: &str, text: &str, timeout: &str) -> CtlOutput {
        self.apply_file(name, text, &["--wait", "--timeout", timeout])
    }

    /// Writes `text` as `name` in the temp dir; `apply --prune -f` it with `extra`.
    fn apply_file(&self, name: &str, text: &str, extra: &[&str]) -> CtlOutput {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut args = vec!["apply", "--prune", "-f", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ctl(&args)
    }

    /// Containers outlive the agent by design, so tests remove them (and the
    /// agent's berth-dns, bridge, nftables table, netns mounts and cgroup
    /// parent) here.
    pub fn remove_all_containers(&self) {
        berth_agent::dns::stop_server(&self.dns_dir());
        let dir = self.state_dir().join("containers");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let rt = cleanup_runtime(self);
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = rt.stop(&id, Some(9), Some(Duration::from_secs(2)));
                let _ = rt.remove(&id);
            }
        }
        // Network leftovers of a killed agent: pinned namespaces, the shared
        // netns dir mount, the bridge (veths go with their namespaces).
        let netns = self.run_dir().join("netns");
        if let Ok(pins) = std::fs::read_dir(&netns) {
            for pin in pins.flatten() {
                let _ = Command::new("umount").arg("-l").arg(pin.path()).status();
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&netns).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &format!("berth_{}", self.bridge())])
            .stderr(Stdio::null())
            .status();
        // The per-agent cgroup parent, in every hierarchy.
        if let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") {
            for root in roots.flatten() {
                let _ = std::fs::remove_dir(root.path().join(self.cgroup_parent()));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(self.cgroup_parent()));
    }
}

impl Agent {
    /// Runs `args` inside container `id` straight through the runtime (works
    /// while berthd is down); panics if it cannot be run at all.
    pub fn exec(&self, id: &str, args: &[&str]) -> berth_agent::runtime::ExecOutput {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        cleanup_runtime(self)
            .exec(id, &args, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("exec {args:?} in {id}: {e}"))
    }

    /// Everything container `id` wrote to stdout so far (read from its log
    /// files, also while berthd is down).
    pub fn stdout_of(&self, id: &str) -> String {
        use berth_agent::runtime::crilog::{decode, Stream};
        let mut out = String::new();
        for file in cleanup_runtime(self).logs(id).unwrap() {
            let bytes = std::fs::read(&file.path).unwrap_or_default();
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let r = decode(line, file.stream);
                if r.stream == Stream::Stdout {
                    out.push_str(&String::from_utf8_lossy(r.content));
                    if !r.partial {
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

fn cleanup_runtime(agent: &Agent) -> berth_agent::runtime::Runtime {
    berth_agent::runtime::Runtime::new(berth_agent::runtime::RuntimePaths::new(
        agent.state_dir(),
        agent.run_dir(),
        &agent.cgroup_parent(),
        bin_dir().join("berth-monitor"),
    ))
}

/// `manifests/hello.toml` made runnable here: its image is pushed to a test
/// registry, and the reference and host port point at this test's own.
pub fn hello_manifest(agent: &Agent) -> (registry::TestRegistry, PathBuf) {
    let reg = registry::TestRegistry::start().unwrap();
    push_web_image(&reg, "berth/demo:1", "hello from berth");
    let text = std::fs::read_to_string(workspace_root().join("manifests/hello.toml"))
        .unwrap()
        .replace("127.0.0.1:5000", reg.host())
        .replace("18080", &free_port().to_string());
    let path = agent.dir.path().join("hello.toml");
    std::fs::write(&path, text).unwrap();
    (reg, path)
}

/// A tmpfs mounted at a path for a test; unmounted on drop.
#[derive(Debug)]
pub struct TmpfsMount(pub PathBuf);

impl TmpfsMount {
    pub fn new(path: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs at {}", path.display());
        TmpfsMount(path.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Asserts `promtool check metrics` accepts a Prometheus exposition.
pub fn assert_promtool_ok(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs git in `dir`, panicking with its output on failure.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Berth Test",
            "-c",
            "user.email=test@berth.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An RFC 3339 time (events, records) as seconds since the Unix epoch.
pub fn unix_seconds(rfc3339: &str) -> f64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"));
    t.unix_timestamp_nanos() as f64 / 1e9
}

impl Agent {
    /// Waits (at most 10 s) until the veths of the containers `ids` are
    /// gone and, with `bridge_empty`, nothing is left on the bridge: the
    /// kernel deletes a veth when the last reference to its namespace goes,
    /// in a work queue, after the removal returned. Returns either way; the
    /// caller asserts what is left.
    pub fn settle_links<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String> + Clone,
        bridge_empty: bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let net = Path::new("/sys/class/net");
        loop {
            let veth_left = ids.clone().into_iter().any(|id| {
                net.join(berth_agent::network::veth_name(&self.bridge(), id))
                    .exists()
            });
            let ports_left = bridge_empty
                && std::fs::read_dir(net.join(self.bridge()).join("brif"))
                    .into_iter()
                    .flatten()
                    .next()
                    .is_some();
            if !(veth_left || ports_left) || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
