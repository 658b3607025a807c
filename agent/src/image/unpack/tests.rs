//! Tests for the layer applier: normal layers, whiteouts, limits, stream
//! framing, and breakout attempts ported (by idea) from containerd's
//! `TestBreakouts` and moby's `TestUntar*` cases.
#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;

// ---- tar construction ---------------------------------------------------

/// A tar stream written by hand so names, types and framing can be malicious.
struct TarW {
    buf: Vec<u8>,
}

fn hdr(name: &[u8], ty: u8, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

impl TarW {
    fn new() -> Self {
        Self { buf: Vec::new() }
    }

    fn raw(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let h = hdr(b"PaxHeaders/x", b'x', 0o644, data.len() as u64);
        self.raw(h, &data)
    }

    /// Header name, or a PAX `path` record when it does not fit.
    fn named(&mut self, name: &str, ty: u8, mode: u32, size: u64) -> tar::Header {
        if name.len() > 99 {
            self.pax(&[("path", name.as_bytes())]);
            hdr(b"placeholder", ty, mode, size)
        } else {
            hdr(name.as_bytes(), ty, mode, size)
        }
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = self.named(name, b'5', mode, 0);
        self.raw(h, &[])
    }

    fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        let h = self.named(name, b'0', mode, data.len() as u64);
        self.raw(h, data)
    }

    fn file_owned(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = self.named(name, b'0', mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, data)
    }

    fn link_entry(&mut self, ty: u8, name: &str, target: &str, mode: u32) -> &mut Self {
        if target.len() > 99 {
            self.pax(&[("linkpath", target.as_bytes())]);
        }
        let mut h = self.named(name, ty, mode, 0);
        if target.len() <= 99 {
            let old = h.as_old_mut();
            old.linkname = [0; 100];
            old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        self.raw(h, &[])
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link_entry(b'2', name, target, 0o777)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link_entry(b'1', name, target, 0o644)
    }

    fn device(&mut self, name: &str, ty: u8, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = self.named(name, ty, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, &[])
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

// ---- fixture: a root next to a sentinel ("victim") host tree --------------

struct Fx {
    _base: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    victim: PathBuf,
    /// Absolute path of a (non-existent) directory next to the root, used
    /// where containerd's cases say `/etc`.
    etc: String,
    before: BTreeMap<PathBuf, String>,
}

impl Fx {
    fn new() -> Self {
        Self::new_in(tempfile::tempdir().unwrap())
    }

    fn new_in(base_dir: tempfile::TempDir) -> Self {
        let base = base_dir.path().to_path_buf();
        let root = base.join("root");
        let victim = base.join("victim");
        let base_etc = base.join("etc").to_str().unwrap().to_owned();
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("hello"), b"hello, host").unwrap();
        fs::write(victim.join("sub/inner"), b"inner").unwrap();
        fs::write(victim.join("perm400"), b"...").unwrap();
        fs::set_permissions(victim.join("perm400"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::write(victim.join("also-exists-outside-root"), b"...").unwrap();
        fs::set_permissions(
            victim.join("also-exists-outside-root"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let mut fx = Self {
            _base: base_dir,
            base,
            root,
            victim,
            etc: base_etc,
            before: BTreeMap::new(),
        };
        fx.before = fx.host_snapshot();
        fx
    }

    fn apply(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        apply_layer(tar, &self.root, &UnpackLimits::default())
    }

    /// Everything under the base dir except the snapshot root: type, mode,
    /// owner, size, mtime, content or link target, and xattr names.
    fn host_snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snap(&self.base, &self.base, &self.root, &mut out);
        out
    }

    /// The host side must be exactly as before (nothing created, changed,
    /// chmod'ed, chown'ed, written or removed).
    fn assert_host_untouched(&self) {
        let after = self.host_snapshot();
        assert_eq!(self.before, after, "host tree outside the root changed");
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.p(rel)).unwrap()
    }

    fn lmeta(&self, rel: &str) -> fs::Metadata {
        fs::symlink_metadata(self.p(rel)).unwrap()
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }
}

fn snap(dir: &Path, base: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let md = fs::symlink_metadata(dir).unwrap();
    record(dir, base, &md, out);
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        if p == skip {
            continue;
        }
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            snap(&p, base, skip, out);
        } else {
            record(&p, base, &md, out);
        }
    }
}

fn record(p: &Path, base: &Path, md: &fs::Metadata, out: &mut BTreeMap<PathBuf, String>) {
    let ft = md.file_type();
    let what = if ft.is_symlink() {
        format!("link->{:?}", fs::read_link(p).unwrap())
    } else if ft.is_file() {
        format!("file:{:?}", fs::read(p).unwrap())
    } else if md.is_dir() {
        "dir".to_string()
    } else {
        "other".to_string()
    };
    let xattrs: Vec<String> = xattr::list(p)
        .map(|l| l.map(|n| n.to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let key = p.strip_prefix(base).unwrap().to_path_buf();
    out.insert(
        key,
        format!(
            "{what} mode={:o} uid={} gid={} size={} mtime={}.{} ino={} nlink={} xattrs={xattrs:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ino(),
            md.nlink()
        ),
    );
}

fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

// ---- normal layers --------------------------------------------------------

#[test]
fn unpacks_a_normal_layer_with_metadata() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    t.dir("./", 0o751)
        .dir("etc/", 0o755)
        .file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .hardlink("etc/hosts.allow", "etc/hosts")
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/su", b"#!su", 0o4755, 0, 0)
        .file_owned("usr/bin/wall", b"#!wall", 0o2755, 0, 5)
        .symlink("usr/bin/sudo", "su")
        .symlink("etc/abs", "/usr/bin/su")
        .dir("tmp", 0o1777)
        .file_owned("home/app/data", b"d", 0o600, 1234, 5678)
        .device("dev/null", b'3', 1, 3, 0o666)
        .device("dev/loop0", b'4', 7, 0, 0o660)
        .device("run/fifo", b'6', 0, 0, 0o620)
        .file("/./abs//path/../norm", b"n", 0o644);
    let stats = fx.apply(&t.finish()).unwrap();
    assert_eq!(stats.entries, 15);
    assert_eq!(stats.bytes, 20 + 4 + 6 + 1 + 1);

    assert_eq!(fx.read("etc/hosts"), b"127.0.0.1 localhost\n");
    assert!(same_inode(
        &fx.lmeta("etc/hosts"),
        &fx.lmeta("etc/hosts.allow")
    ));
    assert_eq!(fx.lmeta("etc/hosts").nlink(), 2);
    assert_eq!(fx.lmeta("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(fx.lmeta("usr/bin/wall").mode() & 0o7777, 0o2755);
    assert_eq!(fx.lmeta("usr/bin/wall").gid(), 5);
    assert_eq!(fx.lmeta("tmp").mode() & 0o7777, 0o1777);
    assert!(fx.lmeta("tmp").is_dir());
    let data = fx.lmeta("home/app/data");
    assert_eq!(
        (data.uid(), data.gid(), data.mode() & 0o7777),
        (1234, 5678, 0o600)
    );
    // Implicit parents are 0755 root.
    assert_eq!(fx.lmeta("home/app").mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read_link(fx.p("usr/bin/sudo")).unwrap(),
        Path::new("su")
    );
    assert_eq!(
        fs::read_link(fx.p("etc/abs")).unwrap(),
        Path::new("/usr/bin/su")
    );
    let null = fx.lmeta("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = fx.lmeta("dev/loop0");
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), makedev(7, 0));
    let fifo = fx.lmeta("run/fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    assert_eq!(fx.read("abs/norm"), b"n");
    assert_eq!(
        fx.lmeta(".").mode() & 0o7777,
        0o751,
        "`./` entry sets the root's mode"
    );
    // mtimes: files, symlinks and directories (dirs set after their children).
    for p in [
        "etc/hosts",
        "usr/bin/su",
        "etc",
        "usr/bin",
        "tmp",
        "dev/null",
        ".",
    ] {
        assert_eq!(fx.lmeta(p).mtime(), 1_600_000_000, "mtime of {p}");
    }
    assert_eq!(fx.lmeta("usr/bin/sudo").mtime(), 1_600_000_000);
    fx.assert_host_untouched();
}

#[test]
fn pax_mtime_uid_and_long_names() {
    crate::require_root!();
    let fx = Fx::new();
    let long = format!("{}/file", "d".repeat(150));
    let mut t = TarW::new();
    t.pax(&[
        ("mtime", b"1234567890.25"),
        ("uid", b"3000000"),
        ("gid", b"3000001"),
    ])
    .file("f", b"x", 0o644)
    .file(&long, b"long", 0o644)
    .symlink("ln", &"t".repeat(300));
    fx.apply(&t.finish()).unwrap();
    let md = fx.lmeta("f");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 250_000_000));
    assert_eq!((md.uid(), md.gid()), (3_000_000, 3_000_001));
    assert_eq!(fx.read(&long), b"long");
    assert_eq!(fs::read_link(fx.p("ln")).unwrap().as_os_str().len(), 300);
}

#[test]
fn parses_pax_times() {
    let t = parse_pax_time("12.5").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (12, 500_000_000));
    let t = parse_pax_time("-1.25").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (-2, 750_000_000));
    let t = parse_pax_time("7").unwrap();
    assert_eq!((t.tv_sec(), t.tv_nsec()), (7, 0));
    assert!(parse_pax_time("").is_none());
    assert!(parse_pax_time("1e9").is_none());
    assert!(parse_pax_time(".5").is_none());
}

#[test]
fn a_thousand_entry_layer_works() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    for d in 0..10 {
        t.dir(&format!("d{d}"), 0o755);
        for f in 0..99 {
            t.file(&format!("d{d}/f{f}"), format!("{d}-{f}").as_bytes(), 0o644);
        }
    }
    let stats = fx.apply(&t.finish()).unwrap();
    assert_eq!(stats.entries, 1000);
    assert_eq!(fx.read("d7/f42"), b"7-42");
    assert_eq!(fs::read_dir(fx.p("d3")).unwrap().count(), 99);
}

#[test]
fn xattr_policy() {
    crate::require_root!();
    let fx = Fx::new();
    // VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_BIND_SERVICE.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    let mut t = TarW::new();
    t.pax(&[
        ("SCHILY.xattr.user.color", b"blue"),
        ("SCHILY.xattr.security.capability", &cap),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        (
            "SCHILY.xattr.security.selinux",
            b"system_u:object_r:shadow_t:s0",
        ),
    ])
    .file_owned("bin/ping", b"elf", 0o4755, 1000, 1000);
    t.pax(&[
        ("SCHILY.xattr.user.d", b"1"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
    ])
    .dir("dir", 0o755);
    fx.apply(&t.finish()).unwrap();
    let f = fx.p("bin/ping");
    assert_eq!(
        xattr::get(&f, "user.color").unwrap().as_deref(),
        Some(&b"blue"[..])
    );
    // Kept despite the chown to 1000 (xattrs are set after chown).
    assert_eq!(xattr::get(&f, "security.capability").unwrap(), Some(cap));
    assert_eq!(fx.lmeta("bin/ping").mode() & 0o7777, 0o4755);
    assert_eq!(xattr::get(&f, "trusted.overlay.opaque").unwrap(), None);
    assert_eq!(xattr::get(&f, "trusted.overlay.redirect").unwrap(), None);
    assert_ne!(
        xattr::get(&f, "security.selinux").unwrap().as_deref(),
        Some(&b"system_u:object_r:shadow_t:s0"[..])
    );
    let d = fx.p("dir");
    assert_eq!(
        xattr::get(&d, "user.d").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(xattr::get(&d, "trusted.overlay.opaque").unwrap(), None);
}

// ---- replacement ----------------------------------------------------------

#[test]
fn later_entries_replace_earlier_ones() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    t.file("a", b"first", 0o644)
        .file("a", b"second", 0o600)
        .file("b", b"file", 0o644)
        .dir("b", 0o700)
        .file("b/in", b"in", 0o644)
        .dir("c", 0o755)
        .file("c/child", b"child", 0o644)
        .dir("c", 0o711) // merge: children kept, later mode wins
        .dir("d", 0o755)
        .file("d/x", b"x", 0o644)
        .file("d", b"now a file", 0o644)
        .symlink("e", "a")
        .file("e", b"not through the link", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read("a"), b"second");
    assert_eq!(fx.lmeta("a").mode() & 0o7777, 0o600);
    assert!(fx.lmeta("b").is_dir());
    assert_eq!(fx.read("b/in"), b"in");
    assert_eq!(fx.read("c/child"), b"child");
    assert_eq!(fx.lmeta("c").mode() & 0o7777, 0o711);
    assert_eq!(fx.read("d"), b"now a file");
    assert!(fx.lmeta("e").is_file());
    assert_eq!(fx.read("e"), b"not through the link");
    assert_eq!(fx.read("a"), b"second");
}

#[test]
fn replacing_a_directory_never_follows_symlinks_inside_it() {
    crate::require_root!();
    let fx = Fx::new();
    let victim = fx.victim.to_str().unwrap().to_owned();
    let mut t = TarW::new();
    t.dir("d", 0o755)
        .symlink("d/abs", &victim)
        .symlink("d/rel", "../../victim")
        .symlink("d/hello", &format!("{victim}/hello"))
        .dir("d/sub", 0o755)
        .file("d/sub/f", b"f", 0o644)
        .file("d", b"now a file", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read("d"), b"now a file");
    fx.assert_host_untouched();
}

// ---- whiteouts ------------------------------------------------------------

#[test]
fn whiteouts_become_overlay_form() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    t.file("etc/.wh.passwd", b"", 0o644)
        .file("var/lib/.wh..wh..opq", b"", 0o644)
        .file("var/lib/new", b"new", 0o644)
        .file("kept", b"same layer", 0o644)
        .file(".wh.kept", b"", 0o644)
        .file(".wh.redone", b"", 0o644)
        .dir("redone", 0o755)
        .file(".wh..wh.plnk", b"", 0o644)
        .file(".wh.etc/somefile", b"non-empty", 0o644)
        .dir("opq", 0o755)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("dne/../.wh.gone", b"", 0o644);
    fx.apply(&t.finish()).unwrap();
    let wh = fx.lmeta("etc/passwd");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr::get(fx.p("var/lib"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fx.read("var/lib/new"), b"new");
    assert!(!fx.exists("var/lib/.wh..wh..opq"));
    assert_eq!(fx.read("kept"), b"same layer");
    assert!(fx.lmeta("redone").is_dir());
    assert_eq!(
        xattr::get(fx.p("redone"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!fx.exists("plnk") && !fx.exists(".wh..wh.plnk"));
    assert_eq!(fx.read(".wh.etc/somefile"), b"non-empty");
    assert_eq!(
        xattr::get(fx.p("opq"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(fx.lmeta("gone").file_type().is_char_device());
    assert!(!fx.exists("dne"));
    fx.assert_host_untouched();
}

#[test]
fn invalid_whiteouts_are_refused() {
    crate::require_root!();
    // containerd: WhiteoutRootParent, WhiteoutParent, WhiteoutRoot, WhiteoutCurrentDirectory.
    for name in [".wh...", "etc/.wh...", ".wh..", "etc/.wh..", ".wh."] {
        let fx = Fx::new();
        let mut t = TarW::new();
        t.file("etc/passwd", b"inside", 0o644)
            .file(name, b"", 0o644);
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidPath { .. }),
            "{name}: {err}"
        );
        assert_eq!(fx.read("etc/passwd"), b"inside", "{name}");
        fx.assert_host_untouched();
    }
}

// ---- limits and framing ---------------------------------------------------

fn limits() -> UnpackLimits {
    UnpackLimits::default()
}

#[test]
fn too_many_entries() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    for i in 0..11 {
        t.file(&format!("f{i}"), b"", 0o644);
    }
    let l = UnpackLimits {
        max_entries: 10,
        ..limits()
    };
    let err = apply_layer(&t.finish()[..], &fx.root, &l).unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { ref path, .. } if path == "f10"),
        "{err}"
    );
    // Exactly at the limit is fine.
    let fx = Fx::new();
    let mut t = TarW::new();
    for i in 0..10 {
        t.file(&format!("f{i}"), b"", 0o644);
    }
    apply_layer(&t.finish()[..], &fx.root, &l).unwrap();
}

#[test]
fn too_long_paths() {
    let fx = Fx::new();
    let mut t = TarW::new();
    t.file(&"a/".repeat(2100), b"", 0o644);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");

    let fx = Fx::new();
    let mut t = TarW::new();
    t.symlink("l", &"x".repeat(5000));
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
}

#[test]
fn too_many_bytes() {
    crate::require_root!();
    let l = UnpackLimits {
        max_total_bytes: 1000,
        max_entry_bytes: 600,
        ..limits()
    };
    let fx = Fx::new();
    let mut t = TarW::new();
    t.file("a", &[1; 500], 0o644).file("b", &[2; 501], 0o644);
    let err = apply_layer(&t.finish()[..], &fx.root, &l).unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { ref path, .. } if path == "b"),
        "{err}"
    );
    assert!(!fx.exists("b"));

    let fx = Fx::new();
    let mut t = TarW::new();
    t.file("big", &[1; 601], 0o644);
    let err = apply_layer(&t.finish()[..], &fx.root, &l).unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { ref path, .. } if path == "big"),
        "{err}"
    );
    assert!(!fx.exists("big"));
}

#[test]
fn oversized_extension_headers_are_refused() {
    let fx = Fx::new();
    let mut t = TarW::new();
    t.pax(&[("comment", &vec![b'x'; 2 << 20])])
        .file("f", b"", 0o644);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
}

fn small_tar() -> Vec<u8> {
    let mut t = TarW::new();
    t.file("a", &[7; 1000], 0o644).file("b", b"bee", 0o644);
    t.finish()
}

#[test]
fn truncated_streams_are_errors() {
    crate::require_root!();
    let full = small_tar();
    // In the middle of a's data, of b's header, at the end of b's data
    // (no end-of-archive block), and with nothing at all.
    for (cut, want) in [
        (700, "truncated"),
        (1536 + 100, "read"),
        (2048 + 512 + 100, "read"),
    ] {
        let fx = Fx::new();
        let err = fx.apply(&full[..cut]).unwrap_err();
        let ok = match want {
            "truncated" => matches!(err, UnpackError::Truncated { expected: 1000, .. }),
            "read" => matches!(err, UnpackError::Read { .. }),
            _ => matches!(err, UnpackError::MissingEndOfArchive),
        };
        assert!(ok, "cut at {cut}: {err}");
    }
    // Ending exactly after an entry, with no end-of-archive block (what
    // `umoci insert` writes), is accepted; the diff_id guards the whole stream.
    let fx = Fx::new();
    fx.apply(&full[..2048 + 512]).unwrap();
    assert_eq!(fx.read("b"), b"bee");
    // The full stream, with the standard two zero blocks, and with only one.
    let fx = Fx::new();
    fx.apply(&full).unwrap();
    assert_eq!(fx.read("b"), b"bee");
    let fx = Fx::new();
    fx.apply(&full[..full.len() - 512]).unwrap();
}

#[test]
fn trailing_data_is_refused_but_zero_padding_is_fine() {
    crate::require_root!();
    let mut padded = small_tar();
    padded.extend_from_slice(&[0u8; 10240 - 3072]);
    let fx = Fx::new();
    fx.apply(&padded).unwrap();

    let mut garbage = small_tar();
    garbage.extend_from_slice(b"\0\0\0GARBAGE");
    let fx = Fx::new();
    let err = fx.apply(&garbage).unwrap_err();
    assert!(matches!(err, UnpackError::TrailingData { .. }), "{err}");

    // A second archive appended after the end marker is not applied.
    let mut two = small_tar();
    let mut t = TarW::new();
    t.file("smuggled", b"x", 0o644);
    two.extend_from_slice(&t.finish());
    let fx = Fx::new();
    let err = fx.apply(&two).unwrap_err();
    assert!(matches!(err, UnpackError::TrailingData { .. }), "{err}");
    assert!(!fx.exists("smuggled"));
}

#[test]
fn bad_checksum_and_unsupported_types() {
    let mut bad = small_tar();
    bad[100] ^= 0x01; // inside a's mode field
    let fx = Fx::new();
    let err = fx.apply(&bad).unwrap_err();
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
    assert!(!fx.exists("a"));

    let fx = Fx::new();
    let mut t = TarW::new();
    let h = hdr(b"label", b'V', 0o644, 0);
    t.raw(h, &[]);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
}

#[test]
fn pre_posix_directories_end_in_a_slash() {
    crate::require_root!();
    // Type '\0' with a trailing slash is a directory (as Go's archive/tar);
    // without one it is a regular file.
    let fx = Fx::new();
    let mut t = TarW::new();
    let pre_posix = |name: &[u8], mode, size| {
        let mut h = hdr(name, b'0', mode, size);
        h.as_old_mut().linkflag = [0];
        h
    };
    t.raw(pre_posix(b"olddir/", 0o750, 0), &[])
        .raw(pre_posix(b"oldfile", 0o640, 2), b"hi");
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("olddir").is_dir());
    assert_eq!(fx.lmeta("olddir").mode() & 0o7777, 0o750);
    assert_eq!(fx.read("oldfile"), b"hi");
}

// ---- sparse files -----------------------------------------------------------

/// Writes a file with holes as `truncate -s SIZE` + `dd seek=OFF conv=notrunc`
/// would: `size` bytes, each `(offset, data)` written in place.
fn holey(path: &Path, size: u64, data: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, bytes) in data {
        f.write_all_at(bytes, *off).unwrap();
    }
    f.sync_all().unwrap();
}

/// Bytes that differ per position (so misplaced data cannot compare equal).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A source tree of sparse (and one dense) files; returns it with the names.
fn sparse_sources() -> (tempfile::TempDir, Vec<String>) {
    let src = tempfile::tempdir().unwrap();
    let p = |n: &str| src.path().join(n);
    // Leading hole, two data regions, trailing hole.
    holey(
        &p("holes"),
        3 << 20,
        &[(200_000, b"hello".to_vec()), (900_000, pattern(10_000, 7))],
    );
    // Data at both ends (no trailing hole).
    holey(
        &p("ends"),
        256 << 10,
        &[(0, pattern(4096, 1)), ((256 << 10) - 5, b"tail!".to_vec())],
    );
    // Only a hole.
    holey(&p("void"), 1 << 20, &[]);
    // 200 data regions: a 1.0 map over several 512-byte blocks.
    let many: Vec<(u64, Vec<u8>)> = (0..200u64)
        .map(|i| (i * (64 << 10) + 100, pattern(700, i as u8)))
        .collect();
    holey(&p("many"), 200 * (64 << 10), &many);
    // A name over 100 bytes (PAX `path` and `GNU.sparse.name`).
    let long = format!("deep/{}/long-sparse", "x".repeat(120));
    holey(&p(&long), 2 << 20, &[(1 << 20, pattern(5000, 9))]);
    fs::write(p("plain"), pattern(3000, 3)).unwrap();
    fs::set_permissions(p("holes"), fs::Permissions::from_mode(0o640)).unwrap();
    let names = ["holes", "ends", "void", "many", &long, "plain"];
    (src, names.iter().map(|n| n.to_string()).collect())
}

/// `tar ARGS -cf - -C src NAMES…` with GNU tar.
fn gnu_tar(src: &Path, args: &[&str], names: &[String]) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args(args)
        .args(["--numeric-owner", "-cf", "-", "-C"])
        .arg(src)
        .args(names)
        .output()
        .expect("GNU tar runs");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Each file unpacked is byte-identical to its source (content, size, mode,
/// mtime) and a source with holes still has them (allocated blocks).
fn assert_same_files(fx: &Fx, src: &Path, names: &[String], what: &str) {
    for n in names {
        let (a, b) = (fs::metadata(src.join(n)).unwrap(), fx.lmeta(n));
        assert!(b.is_file(), "{what}: {n} is a file");
        assert_eq!(b.len(), a.len(), "{what}: size of {n}");
        assert!(
            fs::read(src.join(n)).unwrap() == fx.read(n),
            "{what}: content of {n} differs"
        );
        assert_eq!(b.mode() & 0o7777, a.mode() & 0o7777, "{what}: mode of {n}");
        assert_eq!(b.mtime(), a.mtime(), "{what}: mtime of {n}");
        let sparse_src = a.blocks() * 512 < a.len() / 2;
        if sparse_src {
            // Holes stay holes: about what the source allocates, far below
            // the size (slack for extent rounding).
            assert!(
                b.blocks() <= a.blocks() + 128,
                "{what}: {n} allocates {} blocks, source {}",
                b.blocks(),
                a.blocks()
            );
        }
    }
}

#[test]
fn gnu_tar_pax_sparse_formats_unpack_byte_identical() {
    let (src, names) = sparse_sources();
    let holes = fs::metadata(src.path().join("holes")).unwrap();
    assert!(
        holes.blocks() * 512 < holes.len() / 2,
        "test fixture: the filesystem keeps holes"
    );
    for version in ["0.0", "0.1", "1.0"] {
        let arg = format!("--sparse-version={version}");
        let tar = gnu_tar(src.path(), &["--format=posix", "--sparse", &arg], &names);
        // The archive really is sparse in this format (else the test is moot).
        assert!(
            contains(&tar, b"GNU.sparse."),
            "{version}: no sparse records"
        );
        let marker: &[u8] = match version {
            "0.0" => b"GNU.sparse.offset=",
            "0.1" => b"GNU.sparse.map=",
            _ => b"GNU.sparse.major=1",
        };
        assert!(contains(&tar, marker), "{version}: no {marker:?}");
        assert!(
            tar.len() < 2 << 20,
            "{version}: archive is {} bytes (holes stored?)",
            tar.len()
        );
        let fx = Fx::new();
        fx.apply(&tar).unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_same_files(&fx, src.path(), &names, version);
        // No placeholder names (`GNUSparseFile.PID/…`) left behind.
        let top: Vec<String> = fs::read_dir(&fx.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !top.iter().any(|n| n.starts_with("GNUSparseFile")),
            "{version}: {top:?}"
        );
        let void = fx.lmeta("void");
        assert_eq!((void.len(), void.blocks()), (1 << 20, 0), "{version}: void");
        fx.assert_host_untouched();
    }
}

#[test]
fn old_gnu_sparse_entries_keep_holes() {
    let (src, names) = sparse_sources();
    let tar = gnu_tar(src.path(), &["--format=gnu", "--sparse"], &names);
    // At least one old-GNU sparse header (type 'S' at offset 156).
    assert!(
        tar.chunks(512)
            .any(|h| h.len() == 512 && h[156] == b'S' && h[257..262] == *b"ustar"),
        "no type 'S' entry"
    );
    let fx = Fx::new();
    fx.apply(&tar).unwrap();
    assert_same_files(&fx, src.path(), &names, "old GNU");
    fx.assert_host_untouched();
}

#[test]
fn sparse_streams_cut_short_are_truncated_errors() {
    let (src, _) = sparse_sources();
    let names = vec!["ends".to_string()];
    let tar = gnu_tar(
        src.path(),
        &["--format=posix", "--sparse", "--sparse-version=1.0"],
        &names,
    );
    // PAX header + records, the entry's header, then the map block and data.
    for cut in [1536 + 100, 1536 + 512 + 100] {
        let fx = Fx::new();
        let err = fx.apply(&tar[..cut]).unwrap_err();
        assert!(
            matches!(err, UnpackError::Truncated { ref path, .. } if path == "ends"),
            "cut at {cut}: {err}"
        );
    }
}

/// A PAX sparse entry: records, then a regular header named `header_name`.
fn sparse_tar(records: &[(&str, &[u8])], header_name: &str, data: &[u8]) -> Vec<u8> {
    let mut t = TarW::new();
    t.pax(records).file(header_name, data, 0o644);
    t.finish()
}

/// A format 1.0 map as GNU tar stores it: decimal lines padded to 512 bytes.
fn map_1_0(lines: &[u64]) -> Vec<u8> {
    let mut v: Vec<u8> = lines
        .iter()
        .flat_map(|n| format!("{n}\n").into_bytes())
        .collect();
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

#[test]
fn hand_made_sparse_entries_apply() {
    crate::require_root!();
    // 0.1 with the data in two segments and a trailing hole.
    let fx = Fx::new();
    let tar = sparse_tar(
        &[
            ("GNU.sparse.size", b"10000"),
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.name", b"etc/real"),
            ("GNU.sparse.map", b"0,3,5000,2"),
        ],
        "GNUSparseFile.1/real",
        b"abcde",
    );
    let stats = fx.apply(&tar).unwrap();
    assert_eq!(stats.bytes, 5);
    let mut want = vec![0u8; 10_000];
    want[..3].copy_from_slice(b"abc");
    want[5000..5002].copy_from_slice(b"de");
    assert_eq!(fx.read("etc/real"), want);
    assert!(!fx.exists("GNUSparseFile.1"));

    // 1.0: the map leads the data.
    let fx = Fx::new();
    let mut data = map_1_0(&[1, 4096, 4]);
    data.extend_from_slice(b"wxyz");
    let tar = sparse_tar(
        &[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"v1"),
            ("GNU.sparse.realsize", b"8192"),
        ],
        "GNUSparseFile.2/v1",
        &data,
    );
    fx.apply(&tar).unwrap();
    let got = fx.read("v1");
    assert_eq!(got.len(), 8192);
    assert_eq!(&got[4096..4100], b"wxyz");
    assert!(got[..4096].iter().chain(&got[4100..]).all(|b| *b == 0));
}

#[test]
fn malformed_sparse_entries_are_refused_naming_the_entry() {
    let v1 = |map: Vec<u8>, data: &[u8]| {
        let mut d = map;
        d.extend_from_slice(data);
        sparse_tar(
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", b"real-name"),
                ("GNU.sparse.realsize", b"100"),
            ],
            "GNUSparseFile.9/real-name",
            &d,
        )
    };
    let v01 = |map: &[u8], count: &[u8], data: &[u8]| {
        sparse_tar(
            &[
                ("GNU.sparse.size", b"100"),
                ("GNU.sparse.numblocks", count),
                ("GNU.sparse.name", b"real-name"),
                ("GNU.sparse.map", map),
            ],
            "GNUSparseFile.9/real-name",
            data,
        )
    };
    // Pairs keep coming until the entry's data ends.
    let mut unended = b"1000\n".to_vec();
    unended.resize(512, b'\n');
    unended[5..].iter_mut().step_by(2).for_each(|b| *b = b'7');
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "offset past realsize",
            v01(b"200,1", b"1", b"x"),
            "past the real size",
        ),
        (
            "segment over the end",
            v01(b"95,10", b"1", &[1; 10]),
            "past the real size",
        ),
        ("overlapping", v01(b"0,10,5,10", b"2", &[1; 20]), "overlap"),
        ("unsorted", v01(b"50,10,0,10", b"2", &[1; 20]), "not sorted"),
        (
            "numbytes past the data",
            v01(b"0,50", b"1", &[1; 10]),
            "covers 50",
        ),
        (
            "unreferenced data",
            v01(b"0,5", b"1", &[1; 10]),
            "stores 10",
        ),
        ("count mismatch", v01(b"0,1", b"7", b"x"), "declares 7"),
        (
            "huge count",
            v01(b"0,1", b"18446744073709551615", b"x"),
            "declares 18446744073709551615",
        ),
        ("odd map", v01(b"0,1,2", b"1", b"x"), "odd number"),
        ("not a number", v01(b"0,-1", b"1", b"x"), "not a decimal"),
        (
            "1.0 huge count",
            v1(map_1_0(&[99_999_999_999]), b""),
            "claims 99999999999",
        ),
        ("1.0 map past the data", v1(unended, b""), "runs past"),
        (
            "1.0 numbytes past the data",
            v1(map_1_0(&[1, 0, 60]), &[1; 10]),
            "covers 60",
        ),
        (
            "1.0 offsets past realsize",
            v1(map_1_0(&[1, 100, 1]), b"x"),
            "past the real size",
        ),
        (
            "1.0 unsorted",
            v1(map_1_0(&[2, 50, 1, 10, 1]), b"xy"),
            "not sorted",
        ),
        (
            "unknown version",
            sparse_tar(
                &[
                    ("GNU.sparse.major", b"2"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"real-name"),
                    ("GNU.sparse.realsize", b"1"),
                ],
                "GNUSparseFile.9/real-name",
                b"",
            ),
            "version 2.0",
        ),
    ];
    for (what, tar, msg) in cases {
        let fx = Fx::new();
        let err = fx.apply(&tar).unwrap_err();
        assert!(
            matches!(err, UnpackError::Sparse { ref path, .. } if path == "real-name"),
            "{what}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains(msg), "{what}: {text:?} lacks {msg:?}");
        assert!(text.contains("\"real-name\""), "{what}: {text}");
        // Refused before anything was created.
        assert!(
            !fx.exists("real-name") && !fx.exists("GNUSparseFile.9"),
            "{what}"
        );
        fx.assert_host_untouched();
    }
}

#[test]
fn sparse_names_sizes_and_kinds_are_policed() {
    crate::require_root!();
    // The real name goes through the same path checks as any name.
    let fx = Fx::new();
    let tar = sparse_tar(
        &[
            ("GNU.sparse.size", b"10"),
            ("GNU.sparse.numblocks", b"1"),
            ("GNU.sparse.name", b"../../victim/hello"),
            ("GNU.sparse.map", b"0,1"),
        ],
        "GNUSparseFile.1/hello",
        b"x",
    );
    let err = fx.apply(&tar).unwrap_err();
    assert!(
        matches!(err, UnpackError::InvalidPath { ref path, .. } if path == "../../victim/hello"),
        "{err}"
    );
    fx.assert_host_untouched();

    // An absolute real name lands inside the root.
    let fx = Fx::new();
    let tar = sparse_tar(
        &[
            ("GNU.sparse.size", b"3"),
            ("GNU.sparse.numblocks", b"1"),
            (
                "GNU.sparse.name",
                fx.victim.join("hello").to_str().unwrap().as_bytes(),
            ),
            ("GNU.sparse.map", b"0,3"),
        ],
        "GNUSparseFile.1/hello",
        b"abc",
    );
    fx.apply(&tar).unwrap();
    assert_eq!(fx.read(fx.victim.join("hello").to_str().unwrap()), b"abc");
    fx.assert_host_untouched();

    // The real size counts against max_entry_bytes, not the stored bytes.
    let fx = Fx::new();
    let l = UnpackLimits {
        max_entry_bytes: 1 << 20,
        ..limits()
    };
    let tar = sparse_tar(
        &[
            ("GNU.sparse.size", b"1048577"),
            ("GNU.sparse.numblocks", b"1"),
            ("GNU.sparse.name", b"big"),
            ("GNU.sparse.map", b"0,1"),
        ],
        "GNUSparseFile.1/big",
        b"x",
    );
    let err = apply_layer(&tar[..], &fx.root, &l).unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { ref path, .. } if path == "big"),
        "{err}"
    );
    assert!(!fx.exists("big"));

    // Sparse records on anything but a regular file are refused.
    let fx = Fx::new();
    let mut t = TarW::new();
    t.pax(&[("GNU.sparse.size", b"1"), ("GNU.sparse.numblocks", b"0")])
        .symlink("link", "target");
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(
        matches!(err, UnpackError::Unsupported { ref path, .. } if path == "link"),
        "{err}"
    );
    assert!(!fx.exists("link"));
}

// ---- breakouts: containerd TestBreakouts (ideas) -------------------------

// The containerd cases point symlinks at `/etc`; here "etc" is the absolute
// path of a directory next to the root (`fx.etc`, inside the temp dir). Clamped
// to the root it names `root/<that path>`; a regression that followed it for
// real would land in the watched temp dir, never in the host's `/etc`.

#[test]
fn symlink_absolute() {
    crate::require_root!();
    let fx = Fx::new();
    let etc = fx.etc.clone();
    let mut t = TarW::new();
    t.dir(&etc, 0o755)
        .symlink("localetc", &etc)
        .file("/localetc/unbroken", b"unbroken", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read(&format!("{etc}/unbroken")), b"unbroken");
    assert!(fx.lmeta("localetc").is_symlink());
    fx.assert_host_untouched();
}

#[test]
fn symlink_absolute_to_host_path() {
    crate::require_root!();
    let fx = Fx::new();
    let victim = fx.victim.to_str().unwrap().to_owned();
    let mut t = TarW::new();
    t.symlink("loophole", &victim)
        .file("loophole/hello", b"pwned", 0o777);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::InvalidPath { .. }), "{err}");
    fx.assert_host_untouched();
}

#[test]
fn symlink_up_and_out_and_multiple() {
    crate::require_root!();
    // SymlinkUpAndOut, SymlinkMultipleAbsolute, SymlinkMultipleRelative, and a
    // relative link that climbs far above the root.
    for case in 0..4 {
        let fx = Fx::new();
        let etc = fx.etc.clone();
        let deep = format!("{}{}", "../".repeat(12), etc.trim_start_matches('/'));
        let (links, file) = match case {
            0 => (
                vec![("localetc".to_owned(), format!("/dummy/..{etc}"))],
                "/localetc/unbroken",
            ),
            1 => (
                vec![
                    ("/dummy/etc".to_owned(), etc.clone()),
                    ("localetc".into(), "/dummy/etc".into()),
                ],
                "/dummy/etc/unbroken",
            ),
            2 => (
                vec![
                    ("/dummy/etc".to_owned(), etc.clone()),
                    ("localetc".into(), "./dummy/etc".into()),
                ],
                "/dummy/etc/unbroken",
            ),
            _ => (vec![("localetc".to_owned(), deep)], "localetc/unbroken"),
        };
        let mut t = TarW::new();
        t.dir(&etc, 0o755).dir("dummy", 0o755);
        for (name, target) in &links {
            t.symlink(name, target);
        }
        t.file(file, b"unbroken", 0o644);
        fx.apply(&t.finish()).unwrap();
        assert_eq!(
            fx.read(&format!("{etc}/unbroken")),
            b"unbroken",
            "{links:?}"
        );
        fx.assert_host_untouched();
    }
}

#[test]
fn symlink_empty_file() {
    crate::require_root!();
    let fx = Fx::new();
    let etc = fx.etc.clone();
    let mut t = TarW::new();
    t.dir(&etc, 0o755)
        .file(&format!("{etc}/emptied"), b"notempty", 0o644)
        .symlink("localetc", &etc)
        .file("/localetc/emptied", b"", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read(&format!("{etc}/emptied")), b"");
    fx.assert_host_untouched();
}

#[test]
fn hardlinks_through_symlinked_dirs_stay_inside() {
    crate::require_root!();
    // HardlinkRelative, HardlinkDownAndOut, HardlinkAbsolute, HardlinkRelativeLong,
    // HardlinkDirectAbsolute.
    for case in 0..5 {
        let fx = Fx::new();
        let etc = fx.etc.clone();
        let erel = etc.trim_start_matches('/');
        let up = "../".repeat(12);
        let (links, target, name): (Vec<(&str, String)>, String, &str) = match case {
            0 => (
                vec![("breakouts/d1", format!("{up}{erel}"))],
                "/breakouts/d1/passwd".into(),
                "breakouts/mypasswd",
            ),
            1 => (
                vec![("breakouts/d1", format!("../downandout/{up}{erel}"))],
                "/breakouts/d1/passwd".into(),
                "breakouts/mypasswd",
            ),
            2 => (
                vec![("localetc", etc.clone())],
                "/localetc/passwd".into(),
                "localpasswd",
            ),
            3 => (
                vec![("localetc", format!("{up}{up}{erel}"))],
                "/localetc/passwd".into(),
                "localpasswd",
            ),
            _ => (vec![], format!("{etc}/passwd"), "localpasswd"),
        };
        let mut t = TarW::new();
        t.dir(&etc, 0o770)
            .file(&format!("{etc}/passwd"), b"inside", 0o644)
            .dir("breakouts", 0o755)
            .dir("downandout", 0o755);
        for (n, tg) in &links {
            t.symlink(n, tg);
        }
        t.hardlink(name, &target);
        fx.apply(&t.finish()).unwrap();
        assert!(
            same_inode(&fx.lmeta(name), &fx.lmeta(&format!("{etc}/passwd"))),
            "{target} -> {name}"
        );
        fx.assert_host_untouched();
    }
}

#[test]
fn hardlink_relative_up_and_out_through_missing_dir_is_refused() {
    crate::require_root!();
    // HardlinkRelativeUpAndOut: the kernel resolves `upandout/..` only if
    // `upandout` exists (containerd folds it lexically), so this is refused.
    let fx = Fx::new();
    let etc = fx.etc.clone();
    let mut t = TarW::new();
    t.dir(&etc, 0o770)
        .file(&format!("{etc}/passwd"), b"inside", 0o644)
        .symlink("localetc", &format!("upandout/../../..{etc}"))
        .hardlink("localpasswd", "/localetc/passwd");
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    fx.assert_host_untouched();
}

#[test]
fn hardlink_direct_relative_is_refused() {
    crate::require_root!();
    // HardlinkDirectRelative: containerd clamps, we refuse the escaping `..`.
    for target in [
        "../../../../../etc/passwd",
        "../victim/hello",
        "/../victim/hello",
    ] {
        let fx = Fx::new();
        let mut t = TarW::new();
        t.dir("etc", 0o770)
            .file("/etc/passwd", b"inside", 0o644)
            .hardlink("localpasswd", target);
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::BadHardLink { .. }),
            "{target}: {err}"
        );
        assert!(!fx.exists("localpasswd"));
        fx.assert_host_untouched();
    }
}

#[test]
fn hardlink_to_host_absolute_path_is_refused() {
    let fx = Fx::new();
    let hello = fx.victim.join("hello");
    let mut t = TarW::new();
    t.hardlink("stolen", hello.to_str().unwrap());
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    fx.assert_host_untouched();
    assert_eq!(fs::metadata(&hello).unwrap().nlink(), 1);
}

#[test]
fn symlink_parent_directory_and_empty_filename() {
    crate::require_root!();
    // SymlinkParentDirectory, SymlinkEmptyFilename: a symlink named `..` or ``.
    for name in ["..", "", "/", "./", "a/../.."] {
        let fx = Fx::new();
        let etc = fx.etc.clone();
        let mut t = TarW::new();
        t.dir(&etc, 0o770)
            .file(&format!("{etc}/passwd"), b"inside", 0o644)
            .symlink(name, &etc)
            .hardlink("localpasswd", &format!("{etc}/passwd"));
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidPath { .. }),
            "{name:?}: {err}"
        );
        assert!(fx.lmeta(".").is_dir());
        assert!(!fx.exists("localpasswd"));
        fx.assert_host_untouched();
    }
}

#[test]
fn symlink_parent_relative_and_slash_ended() {
    crate::require_root!();
    // SymlinkParentRelative: `localetc/sub/..` names `localetc`.
    let fx = Fx::new();
    let etc = fx.etc.clone();
    let passwd = format!("{etc}/passwd");
    let mut t = TarW::new();
    t.dir(&etc, 0o770)
        .file(&passwd, b"inside", 0o644)
        .symlink("localetc/sub/..", &format!("{etc}/"))
        .hardlink("/localetc/localpasswd", &passwd);
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("localetc").is_symlink());
    assert!(same_inode(
        &fx.lmeta(&format!("{etc}/localpasswd")),
        &fx.lmeta(&passwd)
    ));
    fx.assert_host_untouched();

    // SymlinkSlashEnded.
    let fx = Fx::new();
    let mut t = TarW::new();
    t.dir("etc", 0o770)
        .file("/etc/passwd", b"inside", 0o644)
        .dir("localetc/", 0o770)
        .hardlink("/localetc/localpasswd", "/etc/passwd");
    fx.apply(&t.finish()).unwrap();
    assert!(same_inode(
        &fx.lmeta("localetc/localpasswd"),
        &fx.lmeta("etc/passwd")
    ));
    fx.assert_host_untouched();
}

#[test]
fn symlink_override_directory() {
    crate::require_root!();
    // SymlinkOverrideDirectory(+Relative): a symlink replaces a directory.
    for relative in [false, true] {
        let fx = Fx::new();
        let etc = fx.etc.clone();
        let target = if relative {
            format!("{}{}", "../".repeat(12), etc.trim_start_matches('/'))
        } else {
            etc.clone()
        };
        let passwd = format!("{etc}/passwd");
        let mut t = TarW::new();
        t.dir(&etc, 0o755)
            .file(&passwd, b"inside", 0o644)
            .dir("localetc", 0o755)
            .file("localetc/old", b"old", 0o644)
            .symlink("localetc", &target)
            .hardlink("/localetc/localpasswd", &passwd);
        fx.apply(&t.finish()).unwrap();
        assert!(fx.lmeta("localetc").is_symlink());
        assert!(same_inode(
            &fx.lmeta(&format!("{etc}/localpasswd")),
            &fx.lmeta(&passwd)
        ));
        assert!(!fx.exists(&format!("{etc}/old")));
        fx.assert_host_untouched();
    }
}

#[test]
fn directory_override_symlink() {
    crate::require_root!();
    // DirectoryOverrideSymlink: a directory entry replaces a symlink (here one
    // pointing at the host) instead of merging through it.
    let fx = Fx::new();
    let victim = fx.victim.to_str().unwrap().to_owned();
    let mut t = TarW::new();
    t.symlink("localetc", &victim)
        .symlink("rel", "../victim")
        .dir("/localetc/", 0o700)
        .dir("rel", 0o700)
        .file("localetc/hello", b"pwned", 0o777)
        .file("rel/hello", b"pwned", 0o777);
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("localetc").is_dir());
    assert!(fx.lmeta("rel").is_dir());
    assert_eq!(fx.read("localetc/hello"), b"pwned");
    fx.assert_host_untouched();

    // DirectoryOverrideSymlinkAndHardlink.
    let fx = Fx::new();
    let mut t = TarW::new();
    t.dir("etc", 0o755)
        .file("etc/passwd", b"inside", 0o644)
        .symlink("localetc", "etc")
        .hardlink("localetc/localpasswd", "etc/passwd")
        .dir("/localetc/", 0o755)
        .file("/localetc/localpasswd", b"different", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read("etc/passwd"), b"inside");
    assert_eq!(fx.read("localetc/localpasswd"), b"different");
    assert!(!same_inode(
        &fx.lmeta("localetc/localpasswd"),
        &fx.lmeta("etc/passwd")
    ));
    fx.assert_host_untouched();
}

#[test]
fn whiteouts_never_reach_outside() {
    crate::require_root!();
    // WhiteoutSymlink: whiting out a same-layer symlink to the host.
    let fx = Fx::new();
    let victim = fx.victim.to_str().unwrap().to_owned();
    let mut t = TarW::new();
    t.symlink("localetc", &victim)
        .file(".wh.localetc", b"", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("localetc").is_symlink());
    fx.assert_host_untouched();

    // WhiteoutSymlinkPath / WhiteoutDeadSymlinkParent: whiteouts and opaque
    // markers below a symlink that points outside (dangling once clamped).
    let dne = fx.base.join("dne").to_str().unwrap().to_owned();
    for (target, name) in [
        ("../victim", "loophole/.wh.hello"),
        (victim.as_str(), "loophole/.wh.hello"),
        (dne.as_str(), "loophole/.wh.etc"),
        ("../victim", "loophole/.wh..wh..opq"),
        (victim.as_str(), "loophole/sub/.wh..wh..opq"),
    ] {
        let fx = Fx::new();
        let mut t = TarW::new();
        t.symlink("loophole", target).file(name, b"", 0o644);
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidPath { .. }),
            "{name}: {err}"
        );
        fx.assert_host_untouched();
    }

    // WhiteoutSymlinkPath where the symlink resolves inside the root.
    let fx = Fx::new();
    let etc = fx.etc.clone();
    let mut t = TarW::new();
    t.dir(&etc, 0o755)
        .file(&format!("{etc}/passwd"), b"all users", 0o644)
        .symlink("localetc", &etc)
        .file("localetc/.wh.whitedout", b"", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert!(fx
        .lmeta(&format!("{etc}/whitedout"))
        .file_type()
        .is_char_device());
    assert_eq!(fx.read(&format!("{etc}/passwd")), b"all users");
    fx.assert_host_untouched();
}

#[test]
fn hardlink_to_symlink_before_target_exists() {
    crate::require_root!();
    // HardlinkSymlinkBeforeCreateTarget, HardlinkSymlinkRelative, HardlinkSymlinkAbsolute.
    let fx = Fx::new();
    let hello = fx.victim.join("hello");
    let mut t = TarW::new();
    t.dir("etc", 0o770)
        .symlink("localpasswd", hello.to_str().unwrap())
        .hardlink("localpasswd-dup", "localpasswd")
        .file("/etc/passwd", b"after", 0o644)
        .symlink("passwdlink", "../../../../../etc/passwd")
        .hardlink("rellink", "/passwdlink")
        .symlink("abslink", "/etc/passwd")
        .hardlink("abslink2", "abslink");
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("localpasswd-dup").is_symlink());
    assert!(same_inode(
        &fx.lmeta("localpasswd-dup"),
        &fx.lmeta("localpasswd")
    ));
    assert_eq!(fs::read_link(fx.p("localpasswd-dup")).unwrap(), hello);
    assert!(fx.lmeta("rellink").is_symlink());
    assert!(same_inode(&fx.lmeta("rellink"), &fx.lmeta("passwdlink")));
    assert!(same_inode(&fx.lmeta("abslink2"), &fx.lmeta("abslink")));
    assert_eq!(fx.read("etc/passwd"), b"after");
    fx.assert_host_untouched();
}

#[test]
fn hardlink_symlink_chmod() {
    crate::require_root!();
    // HardlinkSymlinkChmod: a symlink named after a host path, pointing at a
    // 0400 host file, then a hard link (mode 0777, other owner) to it.
    let fx = Fx::new();
    let p = fx.victim.join("perm400");
    let ep = fx.victim.join("also-exists-outside-root");
    let mut t = TarW::new();
    t.symlink(ep.to_str().unwrap(), p.to_str().unwrap());
    let mut h = hdr(b"sketchylink", b'1', 0o777, 0);
    h.set_uid(4242);
    h.set_gid(4242);
    let name = ep.to_str().unwrap().as_bytes();
    h.as_old_mut().linkname[..name.len()].copy_from_slice(name);
    t.raw(h, &[]);
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("sketchylink").is_symlink());
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o400);
    assert_eq!(fs::metadata(&p).unwrap().uid(), 0);
    assert_eq!(fs::symlink_metadata(&ep).unwrap().mode() & 0o7777, 0o640);
    fx.assert_host_untouched();
}

#[test]
fn files_over_host_symlinks_replace_the_link() {
    crate::require_root!();
    // chmod/chown/truncate through an existing symlink must not happen.
    for ty in [b'0', b'5', b'3', b'6'] {
        let fx = Fx::new();
        let hello = fx.victim.join("hello");
        let mut t = TarW::new();
        t.symlink("x", hello.to_str().unwrap());
        let mut h = hdr(b"x", ty, 0o4777, 0);
        h.set_uid(4242);
        if ty == b'3' {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        t.raw(h, &[]);
        fx.apply(&t.finish()).unwrap();
        assert!(!fx.lmeta("x").is_symlink(), "type {}", ty as char);
        assert_eq!(fx.lmeta("x").uid(), 4242);
        fx.assert_host_untouched();
    }
}

#[test]
fn symlink_to_parent_is_clamped_and_loops_fail() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    t.symlink("up", "..").file("up/up/up/escape", b"x", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert_eq!(fx.read("escape"), b"x");
    assert!(!fx.base.join("escape").exists());
    fx.assert_host_untouched();

    let fx = Fx::new();
    let mut t = TarW::new();
    t.symlink("l1", "l2")
        .symlink("l2", "l1")
        .file("l1/x", b"x", 0o644);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Io { .. }), "{err}");
    fx.assert_host_untouched();
}

// ---- breakouts: moby TestUntar* (ideas) -----------------------------------

#[test]
fn untar_invalid_filenames() {
    for name in [
        "../victim/dotdot",
        "/../victim/slash-dotdot",
        "a/../../victim/x",
    ] {
        let fx = Fx::new();
        let mut t = TarW::new();
        t.file(name, b"pwned", 0o644);
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidPath { .. }),
            "{name}: {err}"
        );
        fx.assert_host_untouched();
    }
}

#[test]
fn untar_hardlink_to_symlink() {
    crate::require_root!();
    let fx = Fx::new();
    let mut t = TarW::new();
    t.symlink("symlink1", "regfile")
        .hardlink("symlink2", "symlink1")
        .file("regfile", b"reg", 0o644);
    fx.apply(&t.finish()).unwrap();
    assert!(fx.lmeta("symlink2").is_symlink());
    assert_eq!(
        fs::read_link(fx.p("symlink2")).unwrap(),
        Path::new("regfile")
    );
    assert_eq!(fs::read(fx.p("symlink2")).unwrap(), b"reg");
    fx.assert_host_untouched();
}

#[test]
fn untar_invalid_hardlink() {
    let cases: Vec<Vec<(&str, u8, &str)>> = vec![
        // try reading victim/hello (../), (/../)
        vec![("dotdot", b'1', "../victim/hello")],
        vec![("slash-dotdot", b'1', "/../victim/hello")],
        // try writing victim/file
        vec![
            ("loophole-victim", b'1', "../victim"),
            ("loophole-victim/file", b'0', ""),
        ],
        vec![
            ("loophole-victim", b'1', "/../victim"),
            ("loophole-victim/file", b'0', ""),
        ],
        // try reading victim/hello (hardlink, symlink) and (hardlink, hardlink)
        vec![
            ("loophole-victim", b'1', "../victim"),
            ("symlink", b'2', "loophole-victim/hello"),
        ],
        vec![
            ("loophole-victim", b'1', "../victim"),
            ("hardlink", b'1', "loophole-victim/hello"),
        ],
        // try removing victim directory
        vec![
            ("loophole-victim", b'1', "../victim"),
            ("loophole-victim", b'0', ""),
        ],
    ];
    for case in cases {
        let fx = Fx::new();
        let mut t = TarW::new();
        for (name, ty, target) in &case {
            match ty {
                b'0' => t.file(name, b"pwned", 0o777),
                ty => t.link_entry(*ty, name, target, 0o777),
            };
        }
        let err = fx.apply(&t.finish()).unwrap_err();
        assert!(
            matches!(err, UnpackError::BadHardLink { .. }),
            "{case:?}: {err}"
        );
        fx.assert_host_untouched();
    }
}

/// (entry name, tar type flag, link target).
type Step<'a> = (&'a str, u8, &'a str);

#[test]
fn untar_invalid_symlink() {
    crate::require_root!();
    // (entries, expect an error?) — symlinks themselves may point anywhere.
    let cases: Vec<(Vec<Step>, bool)> = vec![
        // try reading victim/hello (../), (/../)
        (vec![("dotdot", b'2', "../victim/hello")], false),
        (vec![("slash-dotdot", b'2', "/../victim/hello")], false),
        // try writing victim/file
        (
            vec![
                ("loophole-victim", b'2', "../victim"),
                ("loophole-victim/file", b'0', ""),
            ],
            true,
        ),
        // try reading victim/hello (symlink, symlink) and (symlink, hardlink)
        (
            vec![
                ("loophole-victim", b'2', "../victim"),
                ("symlink", b'2', "loophole-victim/hello"),
            ],
            false,
        ),
        (
            vec![
                ("loophole-victim", b'2', "../victim"),
                ("hardlink", b'1', "loophole-victim/hello"),
            ],
            true,
        ),
        // try removing victim directory (the symlink is replaced, not followed)
        (
            vec![
                ("loophole-victim", b'2', "../victim"),
                ("loophole-victim", b'0', ""),
            ],
            false,
        ),
        // try writing to victim/newdir/newfile with a symlink in the path
        (
            vec![
                ("dir/loophole", b'2', "../../victim"),
                ("dir/loophole/newdir/newfile", b'0', ""),
            ],
            true,
        ),
        // the same via an absolute host path
        (
            vec![("abs", b'2', "@VICTIM"), ("abs/newdir/newfile", b'0', "")],
            true,
        ),
    ];
    for (case, want_err) in cases {
        let fx = Fx::new();
        let victim = fx.victim.to_str().unwrap().to_owned();
        let mut t = TarW::new();
        for (name, ty, target) in &case {
            let target = target.replace("@VICTIM", &victim);
            match ty {
                b'0' => t.file(name, b"pwned", 0o777),
                ty => t.link_entry(*ty, name, &target, 0o777),
            };
        }
        let res = fx.apply(&t.finish());
        assert_eq!(res.is_err(), want_err, "{case:?}: {res:?}");
        if let Err(err) = res {
            assert!(
                matches!(
                    err,
                    UnpackError::InvalidPath { .. } | UnpackError::BadHardLink { .. }
                ),
                "{case:?}: {err}"
            );
        }
        fx.assert_host_untouched();
    }
}
