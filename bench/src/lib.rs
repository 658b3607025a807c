//! Shared helpers of the Berth benchmarks (see `bench/README.md`): timing
//! samples and percentiles, markdown tables, process memory from `/proc`,
//! running peer commands, and starting `berthd` on temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Timings of one case.
#[derive(Debug, Clone)]
pub struct Samples {
    pub name: String,
    pub times: Vec<Duration>,
}

impl Samples {
    pub fn new(name: impl Into<String>) -> Self {
        Samples {
            name: name.into(),
            times: Vec::new(),
        }
    }

    /// Nearest-rank percentile (`p` in 0..=100); p50 of an even count is the
    /// lower middle, p99 of 50 samples is the maximum.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut v = self.times.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub fn min(&self) -> Duration {
        self.times.iter().min().copied().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.times.iter().max().copied().unwrap_or_default()
    }

    pub fn mean(&self) -> Duration {
        if self.times.is_empty() {
            return Duration::ZERO;
        }
        self.times.iter().sum::<Duration>() / self.times.len() as u32
    }
}

/// `12.3 ms` / `1.234 s`.
pub fn fmt_dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.3} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// `a / b` as `3.2×`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        return f64::NAN;
    }
    a.as_secs_f64() / b.as_secs_f64()
}

/// A markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

/// `MET` / `NOT MET`.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

/// Memory of one process in KiB (`VmRSS` from status, `Pss` from smaps_rollup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub private_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
            private_kib: self.private_kib + o.private_kib,
        }
    }
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reads a process's memory; `None` when it is gone.
pub fn proc_mem(pid: i32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(Mem {
        rss_kib: kib_field(&status, "VmRSS:")?,
        pss_kib: kib_field(&rollup, "Pss:")?,
        private_kib: kib_field(&rollup, "Private_Clean:").unwrap_or(0)
            + kib_field(&rollup, "Private_Dirty:").unwrap_or(0),
    })
}

/// `1.9 MiB` from KiB.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Every live process: (pid, ppid, comm, cmdline joined by spaces).
pub fn processes() -> Vec<(i32, i32, String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push((pid, ppid, comm, cmdline));
    }
    out
}

/// Splits a command line on whitespace (peer commands never need quoting).
pub fn split_cmd(cmd: &str) -> Vec<String> {
    cmd.split_whitespace().map(str::to_string).collect()
}

/// Runs `argv`, discarding stdout; fails with stderr unless it exits 0.
pub fn run_quiet(argv: &[String]) -> Result<()> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `argv` and returns its stdout; fails with stderr unless it exits 0.
pub fn run_output(argv: &[String]) -> Result<String> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Times one run of `argv` (must exit 0).
pub fn time_cmd(argv: &[String]) -> Result<Duration> {
    let t = Instant::now();
    run_quiet(argv)?;
    Ok(t.elapsed())
}

/// A `berthd` on its own temp dirs; killed (SIGTERM, then SIGKILL) and its
/// dirs removed on drop.
#[derive(Debug)]
pub struct Berthd {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    child: Option<Child>,
    /// The private bridge given with `--bridge` (berthd versions with networking).
    bridge: Option<String>,
}

/// True when `berthd --help` lists `flag`.
fn berthd_supports(berthd: &Path, flag: &str) -> bool {
    Command::new(berthd)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

impl Berthd {
    /// Starts `berthd --state-dir T/state --run-dir T/run --http 127.0.0.1:PORT
    /// --api unix:T/run/berth.sock` (with an empty config file) and waits for `/readyz`.
    pub fn start(berthd: &Path, parent: &Path) -> Result<Berthd> {
        let dir = tempfile::Builder::new()
            .prefix("berthd-")
            .tempdir_in(parent)?;
        let http_port = berth_e2e::free_port();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "")?;
        let log = std::fs::File::create(dir.path().join("berthd.log"))?;
        // A berthd with networking creates its bridge (and nftables table) at
        // start and reconciles veths on it: give it its own, so other agents
        // on this host are never touched; removed again in `stop`. Likewise
        // its own cgroup parent.
        let mut extra: Vec<String> = Vec::new();
        let mut bridge = None;
        if berthd_supports(berthd, "--bridge") {
            let name = format!("bbench{}", std::process::id() % 100_000);
            extra.extend([
                "--bridge".into(),
                name.clone(),
                "--subnet".into(),
                "10.213.0.0/24".into(),
            ]);
            bridge = Some(name);
        }
        if berthd_supports(berthd, "--cgroup-parent") {
            extra.extend(["--cgroup-parent".into(), "berth-bench-agent".into()]);
        }
        let child = Command::new(berthd)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--http")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--api")
            .arg(format!(
                "unix:{}",
                dir.path().join("run/berth.sock").display()
            ))
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", berthd.display()))?;
        let mut d = Berthd {
            dir,
            http_port,
            child: Some(child),
            bridge,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("berthd exited with {st}: {}", d.log());
                }
            }
            if matches!(berth_e2e::http_tcp(http_port, "GET", "/readyz", &[], b""), Ok(r) if r.status == 200)
            {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("berthd not ready within 20 s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/berth.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL; then removes the
    /// private bridge, its nftables table and the cgroup parent, if made.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // berth-dns outlives berthd by design.
        berth_agent::dns::stop_server(&self.dir.path().join("run/dns"));
        if let Some(bridge) = self.bridge.take() {
            let quiet = |argv: &[&str]| {
                let _ = Command::new(argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            if Path::new("/sys/class/net").join(&bridge).exists() {
                quiet(&["ip", "link", "del", "dev", &bridge]);
            }
            quiet(&["nft", "delete", "table", "ip", &format!("berth_{bridge}")]);
        }
        // A berthd with networking leaves its `run/netns` bind mount behind
        // (pinned namespaces outlive the agent): unmount it so the dir can go.
        let mut mounts = mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stdin(Stdio::null())
                .status();
        }
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join("berth-bench-agent"));
        }
        let _ = std::fs::remove_dir("/sys/fs/cgroup/berth-bench-agent");
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points at or below `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Writes `text` to stdout and appends it to `out` when given.
pub fn emit(out: Option<&Path>, text: &str) -> Result<()> {
    print!("{text}");
    if let Some(p) = out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// `GET url` with an `Accept` header from a registry on loopback (the
/// benchmarks' image helpers); the body, or an error naming the URL and status.
pub fn registry_get(url: &str, accept: &str) -> Result<Vec<u8>> {
    let r = berth_e2e::registry::http_request("GET", url, &[("Accept", accept)], &[])?;
    if r.status != 200 {
        bail!("GET {url}: HTTP {}", r.status);
    }
    Ok(r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new("x");
        s.times = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(s.p50(), Duration::from_millis(25));
        assert_eq!(s.p99(), Duration::from_millis(50));
        assert_eq!(s.min(), Duration::from_millis(1));
        s.times = vec![Duration::from_millis(3)];
        assert_eq!(s.p99(), Duration::from_millis(3));
    }

    #[test]
    fn reads_own_memory() {
        let m = proc_mem(std::process::id() as i32).expect("self");
        assert!(m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib + 4);
    }
}
