//! berthd's own open-file limit. The agent holds about four descriptors per
//! container (pidfds for its cache and for exit watches, the monitor's
//! socket), so at start it raises its soft `RLIMIT_NOFILE` to the hard limit,
//! as Go programs and systemd's guidance for services do. Children inherit
//! it: workloads get the same limit as under `deploy/berthd.service`
//! (`LimitNOFILE=1048576`), whether berthd was started by systemd or a shell.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The soft limit to set, or `None` when the current one is already the
/// highest allowed. `soft`/`hard` as `getrlimit(2)` returns them;
/// `nr_open` is `/proc/sys/fs/nr_open`, the most a process may hold, which
/// caps an unlimited hard limit (the kernel refuses a soft limit above it).
pub fn raised_soft(soft: u64, hard: u64, nr_open: u64) -> Option<u64> {
    let target = if hard == RLIM_INFINITY { nr_open } else { hard };
    (soft < target).then_some(target)
}

/// Raises the soft open-file limit (see [`raised_soft`]). Returns the limit
/// before and after, or the error of `setrlimit(2)`.
pub fn raise_open_files() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    match raised_soft(soft, hard, nr_open) {
        Some(new) => {
            setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
            Ok((soft, new))
        }
        None => Ok((soft, soft)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_the_hard_one_capped_by_nr_open() {
        let cases = [
            // (soft, hard, nr_open) → raised to
            ((1024, 524_288, 1 << 20), Some(524_288)),
            ((1024, RLIM_INFINITY, 1 << 20), Some(1 << 20)),
            ((1 << 20, 1 << 20, 1 << 20), None),
            ((1 << 20, RLIM_INFINITY, 1 << 20), None),
            ((4096, 4096, 1 << 20), None),
        ];
        for ((soft, hard, nr_open), want) in cases {
            assert_eq!(
                raised_soft(soft, hard, nr_open),
                want,
                "{soft} {hard} {nr_open}"
            );
        }
    }
}
