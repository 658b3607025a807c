//! Stage timestamps of a container start, for profiling (`bench/start.sh`
//! prints their breakdown). Off by default, and then a stage costs one branch:
//! with [`RuntimePaths::trace_stages`](super::RuntimePaths) the runtime, the
//! monitor (told by [`ENV`]) and the init record `CLOCK_MONOTONIC` stamps in
//! memory and append them as `name nanoseconds` lines to
//! `<container-dir>/stages`, one `write` per batch and only where the batch
//! ends (the init writes its own right before `execve`), so the tracing does
//! not print on the path it times. [`read`] returns them in time order.

use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::Path;

/// The environment variable the runtime gives the monitor (`1`: record).
pub const ENV: &str = "BERTH_TRACE_STAGES";
/// The file in the container directory that collects the stamps.
pub const FILE: &str = "stages";

/// Stamps of one process: `(stage, CLOCK_MONOTONIC ns)` in the order taken.
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    on: bool,
    list: Vec<(&'static str, u64)>,
}

impl Stamps {
    /// Recording when `on`; otherwise every call is a no-op.
    pub fn new(on: bool) -> Self {
        Stamps {
            on,
            list: Vec::with_capacity(if on { 32 } else { 0 }),
        }
    }

    /// Recording when [`ENV`] is `1` (in the monitor).
    pub fn from_env() -> Self {
        Self::new(std::env::var_os(ENV).is_some_and(|v| v == "1"))
    }

    /// Whether stamps are recorded.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Records that `stage` ended now.
    pub fn stamp(&mut self, stage: &'static str) {
        if self.on {
            self.list.push((stage, now_ns()));
        }
    }

    /// Forgets what was recorded (a forked child starts its own list).
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// The recorded stamps as `name ns` lines.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.list.len() * 32);
        for (name, ns) in &self.list {
            let _ = writeln!(out, "{name} {ns}");
        }
        out
    }

    /// Writes the stamps to `fd` in one `write` and forgets them. Best
    /// effort: a trace never fails a start.
    pub fn flush_to(&mut self, fd: impl AsFd) {
        if self.on && !self.list.is_empty() {
            let _ = nix::unistd::write(fd, &self.encode());
            self.list.clear();
        }
    }

    /// Appends the stamps to `<dir>/stages` (see [`Stamps::flush_to`]).
    pub fn flush_into(&mut self, dir: &Path) {
        self.flush_into_file(&dir.join(FILE));
    }

    /// Appends the stamps to the file `path` (see [`Stamps::flush_to`]).
    pub fn flush_into_file(&mut self, path: &Path) {
        if self.on && !self.list.is_empty() {
            if let Ok(f) = append(path) {
                self.flush_to(&f);
            }
        }
    }
}

/// Opens `<dir>/stages` for appending (close-on-exec, created 0600).
pub fn open_append(dir: &Path) -> std::io::Result<std::fs::File> {
    append(&dir.join(FILE))
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The stamps in the file `path`, sorted by time; the file is deleted.
pub fn take(path: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(path)?;
    std::fs::remove_file(path)?;
    Ok(parse(&text))
}

/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process, so
/// stamps of the runtime, the monitor and the init compare).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Parses `name ns` lines (others are skipped), sorted by time.
pub fn parse(text: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (name, ns) = l.rsplit_once(' ')?;
            Some((name.to_string(), ns.parse().ok()?))
        })
        .collect();
    out.sort_by_key(|(_, ns)| *ns);
    out
}

/// The stamps in `<dir>/stages`, sorted by time.
pub fn read(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    Ok(parse(&std::fs::read_to_string(dir.join(FILE))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_free_when_off_and_round_trip_when_on() {
        let mut off = Stamps::new(false);
        off.stamp("a");
        assert!(off.encode().is_empty());
        let mut on = Stamps::new(true);
        on.stamp("monitor.main");
        on.stamp("init.go");
        let text = String::from_utf8(on.encode()).unwrap_or_default();
        let parsed = parse(&text);
        assert_eq!(
            parsed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["monitor.main", "init.go"]
        );
        assert!(parsed[0].1 > 0 && parsed[0].1 <= parsed[1].1, "{parsed:?}");
    }

    #[test]
    fn parse_orders_lines_of_several_writers_by_time() {
        let text = "runtime.create 100\ninit.go 300\nmonitor.main 200\ngarbage\n";
        assert_eq!(
            parse(text),
            [
                ("runtime.create".to_string(), 100),
                ("monitor.main".to_string(), 200),
                ("init.go".to_string(), 300)
            ]
        );
    }
}
