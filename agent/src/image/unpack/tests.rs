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

    let fx = Fx::new();
    let mut t = TarW::new();
    t.pax(&[("GNU.sparse.map", b"0,1")]).file("s", b"x", 0o644);
    let err = fx.apply(&t.finish()).unwrap_err();
    assert!(matches!(err, UnpackError::Unsupported { .. }), "{err}");
}

// ---- breakouts: containerd TestBreakouts (ideas) -------------------------

// The containerd cases point symlinks at `/etc`; here "etc" is the absolute
// path of a directory next to the root (`fx.etc`, inside the temp dir). Clamped
// to the root it names `root/<that path>`; a regression that followed it for
// real would land in the watched temp dir, never in the host's `/etc`.

#[test]
fn symlink_absolute() {
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
