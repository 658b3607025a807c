//! A small real filesystem for full-disk tests: an image file on the host
//! disk, `mkfs.ext4` (no blocks reserved for root, so "full" is full for
//! berthd too), attached with `losetup` and mounted at a given path. Dropping
//! it unmounts (lazily if still busy) and detaches the loop device, also when
//! the test panicked. [`fill`] and [`Filler`] take its free space away.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// An ext4 filesystem on a loop device, mounted at `mount`.
#[derive(Debug)]
pub struct LoopFs {
    pub mount: PathBuf,
    pub device: String,
    /// Holds the image file; removed after the device is detached.
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopFs {
    /// Makes a `mib` MiB ext4 and mounts it at `mount` (created if missing).
    pub fn new(mount: &Path, mib: u64) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix("berth-loopfs-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E", "nodiscard"])
            .arg(&image));
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        // From here on Drop detaches the device.
        let fs = LoopFs {
            mount: mount.to_path_buf(),
            device,
            _dir: dir,
        };
        std::fs::create_dir_all(mount).unwrap();
        run(Command::new("mount").arg(&fs.device).arg(mount));
        fs
    }

    /// Bytes an unprivileged and a root writer can still allocate.
    pub fn free(&self) -> u64 {
        free_bytes(&self.mount)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let quiet = |c: &mut Command| {
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(Command::new("umount").arg(&self.mount)) {
            // Something still holds it (a container's mount): detach the
            // mount now, the filesystem goes when its last user does.
            quiet(Command::new("umount").arg("-l").arg(&self.mount));
        }
        // On a busy device `losetup -d` sets autoclear: it detaches once free.
        quiet(Command::new("losetup").arg("-d").arg(&self.device));
    }
}

/// Free bytes (for root) on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    s.blocks_free() * s.fragment_size()
}

/// Fraction of the filesystem holding `path` in use.
pub fn used_fraction(path: &Path) -> f64 {
    let s = nix::sys::statvfs::statvfs(path).unwrap();
    1.0 - s.blocks_available() as f64 / s.blocks() as f64
}

/// A file taking the free space of a filesystem; removed on drop.
#[derive(Debug)]
pub struct Filler(pub PathBuf);

impl Filler {
    /// Fills the filesystem of `dir` until at most `leave` bytes are free.
    pub fn new(dir: &Path, leave: u64) -> Filler {
        let path = dir.join(format!("filler-{}", std::process::id()));
        let filler = Filler(path);
        filler.top_up(leave);
        filler
    }

    /// Grows the filler again (the space freed meanwhile is taken back).
    /// The filesystem is synced first and the fill repeated once: ext4
    /// reserves blocks for data not yet written back (delayed allocation)
    /// and frees the unused part of that reservation at writeback, so a
    /// fill measured before it would leave a few blocks free a moment later.
    pub fn top_up(&self, leave: u64) {
        for _ in 0..2 {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.0)
                .unwrap();
            let _ = nix::unistd::syncfs(&f);
            let free = free_bytes(self.0.parent().unwrap());
            let have = std::fs::metadata(&self.0).map(|m| m.len()).unwrap_or(0);
            if free > leave {
                let len = have + (free - leave);
                // fallocate(2): blocks really allocated, no data written.
                let _ = nix::fcntl::fallocate(
                    &f,
                    nix::fcntl::FallocateFlags::empty(),
                    have as i64,
                    (len - have) as i64,
                );
            }
        }
    }

    /// Removes the filler (space back).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `n` bytes that do not compress (xorshift), so a layer's blob is as large
/// as its file.
pub fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}
