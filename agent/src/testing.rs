//! Test gating shared by the agent's unit tests, `agent/tests` and `berth-e2e`:
//! a test that needs root (containers, cgroups, mounts, netns, nftables,
//! bridges, `chown`/`mknod`/`trusted.*` xattrs, a real berthd) starts with
//! [`require_root!`](crate::require_root). As a normal user it is then skipped and says so on stderr;
//! with `BERTH_REQUIRE_ROOT=1` (scripts/test.sh sets it) it fails instead, so
//! a run meant to cover everything can never skip silently. See docs/testing.md.

use std::io::Write as _;

/// The environment variable that turns a skip into a failure: set (to
/// anything but empty or `0`), a root-only test run as a normal user panics.
pub const REQUIRE_ROOT_ENV: &str = "BERTH_REQUIRE_ROOT";

/// The first line of the calling test: returns from it (with `()` or
/// `Ok(())`) unless the process runs as root (effective uid 0), after
/// printing `skipped (needs root): <crate::path::test>` to stderr. Under
/// `BERTH_REQUIRE_ROOT=1` it panics instead of skipping.
///
/// ```no_run
/// // #[test]
/// fn containers_start() {
///     berth_agent::require_root!();
///     // … uses namespaces and cgroups …
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::testing::is_root()
            && $crate::testing::skip_unless_required(
                {
                    fn here() {}
                    ::std::any::type_name_of_val(&here)
                },
                "needs root",
            )
        {
            return $crate::testing::Skipped::skipped();
        }
    };
}

/// Skips the calling test because of what this host lacks (e.g. `"no
/// cgroup2 mount"`): prints `skipped (<reason>): <crate::path::test>` to
/// stderr and returns from the test. Not affected by `BERTH_REQUIRE_ROOT`.
#[macro_export]
macro_rules! skip_test {
    ($reason:expr) => {{
        $crate::testing::report_skip(
            {
                fn here() {}
                ::std::any::type_name_of_val(&here)
            },
            $reason,
        );
        return $crate::testing::Skipped::skipped();
    }};
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For [`require_root!`](crate::require_root) as a normal user: `true`
/// (skip, reported on stderr) unless [`REQUIRE_ROOT_ENV`] is set, which
/// panics naming the test. `probe` is the type name of a fn item declared in
/// the test (`crate::module::test::here`).
#[track_caller]
pub fn skip_unless_required(probe: &str, reason: &str) -> bool {
    let set = std::env::var_os(REQUIRE_ROOT_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if set {
        panic!(
            "{} {reason}, and {REQUIRE_ROOT_ENV} is set: run it as root",
            test_name(probe)
        );
    }
    report_skip(probe, reason);
    true
}

/// Prints `skipped (<reason>): <test>` to stderr. Written to the stream
/// directly rather than with `eprintln!`, which the test harness captures
/// and drops for a test that passes: so a plain `cargo test` shows it.
pub fn report_skip(probe: &str, reason: &str) {
    let line = format!("skipped ({reason}): {}\n", test_name(probe));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The test's path from the type name of a fn item declared in its body:
/// `berth_agent::image::tests::t::here` → `berth_agent::image::tests::t`, and
/// the `{{closure}}` of an async test's body is dropped.
fn test_name(probe: &str) -> String {
    let path = probe.strip_suffix("::here").unwrap_or(probe);
    path.split("::")
        .filter(|s| *s != "{{closure}}")
        .collect::<Vec<_>>()
        .join("::")
}

/// What a skipped test returns: `()` or `Ok(())`.
pub trait Skipped {
    /// The value that reports the test as passed.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_probe_without_closures() {
        for (probe, want) in [
            ("berth_agent::a::tests::t::here", "berth_agent::a::tests::t"),
            ("images::pull::{{closure}}::here", "images::pull"),
            ("x", "x"),
        ] {
            assert_eq!(test_name(probe), want, "{probe}");
        }
        fn here() {}
        assert_eq!(
            test_name(std::any::type_name_of_val(&here)),
            "berth_agent::testing::tests::names_come_from_the_probe_without_closures"
        );
    }
}

/// A tmpfs of a few KiB or MiB mounted on a fresh temp dir (root only), for
/// tests of what happens when a write meets a full filesystem. Unmounted
/// (lazily if busy) on drop, also when the test panics.
#[cfg(test)]
#[derive(Debug)]
pub struct SmallFs {
    dir: tempfile::TempDir,
}

#[cfg(test)]
impl SmallFs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `"64k"`).
    pub fn mount(size: &str) -> std::io::Result<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("berth-smallfs-")
            .tempdir()?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()?
            .success();
        if !ok {
            return Err(std::io::Error::other(format!(
                "mount tmpfs at {}",
                dir.path().display()
            )));
        }
        Ok(SmallFs { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes zeros into `name` until the filesystem is full; returns the
    /// bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let mut f = match std::fs::File::create(self.path().join(name)) {
            Ok(f) => f,
            Err(_) => return 0,
        };
        let block = vec![0u8; 4096];
        let mut n = 0;
        while let Ok(w) = f.write(&block) {
            if w == 0 {
                break;
            }
            n += w as u64;
        }
        n
    }
}

#[cfg(test)]
impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
