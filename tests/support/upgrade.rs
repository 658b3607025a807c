//! Released versions for the upgrade tests: the list in
//! `tests/fixtures/upgrade/releases`, each one's binaries (built from its
//! commit by `scripts/upgrade-base.sh`, or taken from `BERTH_PREV_BIN_DIR`),
//! the fixture of what it wrote to disk, and a cgroup sweep that stops what
//! a release's containers left even if this build could not read them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::workspace_root;

/// A released version and the commit it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `v0.1.0`.
    pub version: String,
    /// 40 hex digits.
    pub commit: String,
}

/// Every release the upgrade tests start from, oldest first.
pub fn releases() -> Vec<Release> {
    let path = workspace_root().join("tests/fixtures/upgrade/releases");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let list: Vec<Release> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let (Some(version), Some(commit)) = (parts.next(), parts.next()) else {
                panic!("{}: `{l}` is not `VERSION COMMIT`", path.display());
            };
            Release {
                version: version.to_string(),
                commit: commit.to_string(),
            }
        })
        .collect();
    assert!(!list.is_empty(), "{} lists no release", path.display());
    list
}

/// The newest release: the one this build must upgrade from.
pub fn latest_release() -> Release {
    releases().pop().expect("a release")
}

/// `tests/fixtures/upgrade/VERSION`: what that release wrote to disk.
pub fn fixture_dir(version: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures/upgrade")
        .join(version)
}

/// The binaries every release has.
pub const RELEASE_BINS: [&str; 4] = ["berthd", "berth-monitor", "berth-dns", "berthctl"];

/// The directory holding `release`'s binaries: `BERTH_PREV_BIN_DIR` when
/// set, else built by `scripts/upgrade-base.sh` (cached; minutes the first
/// time on a machine). Panics with the script's message when it cannot be
/// built, e.g. the release's commit is missing from a shallow clone.
pub fn release_bins(release: &Release) -> PathBuf {
    if let Ok(dir) = std::env::var("BERTH_PREV_BIN_DIR") {
        let dir = PathBuf::from(dir);
        check_bins(&dir, release);
        return dir;
    }
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/upgrade-base.sh"))
        .arg(&release.version)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/upgrade-base.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        out.status.success(),
        "cannot build Berth {} ({}) to upgrade from (scripts/upgrade-base.sh exited with {}):\n{}",
        release.version,
        release.commit,
        out.status,
        tail.join("\n")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    check_bins(&dir, release);
    eprintln!(
        "upgrade: {} binaries in {} ({:.1} s)",
        release.version,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    dir
}

fn check_bins(dir: &Path, release: &Release) {
    for bin in RELEASE_BINS {
        assert!(
            dir.join(bin).is_file(),
            "{} has no {bin} of Berth {}",
            dir.display(),
            release.version
        );
    }
}

/// On drop, SIGKILLs every process left in the cgroups under `parent` (in
/// every hierarchy) and removes them: the last resort when this build's
/// runtime could not stop an older release's containers.
#[derive(Debug)]
pub struct CgroupSweep(pub String);

impl Drop for CgroupSweep {
    fn drop(&mut self) {
        let mut parents = vec![Path::new("/sys/fs/cgroup").join(&self.0)];
        if let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") {
            parents.extend(roots.flatten().map(|r| r.path().join(&self.0)));
        }
        for parent in parents.iter().filter(|p| p.is_dir()) {
            let children: Vec<PathBuf> = std::fs::read_dir(parent)
                .map(|it| {
                    it.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            for child in children {
                for _ in 0..50 {
                    let procs =
                        std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                    let pids: Vec<i32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
                    if pids.is_empty() {
                        break;
                    }
                    for pid in pids {
                        // Only pids of a cgroup this test's agent owns.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let _ = std::fs::remove_dir(&child);
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}
