//! The seeding copy on hand-made layer snapshots (as the layer applier leaves
//! them: whiteouts as 0:0 character devices, opaque directories marked with
//! `trusted.overlay.opaque`). Needs root (chown, mknod, trusted xattrs).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

fn mkdir(p: &Path, mode: u32, uid: u32, gid: u32) {
    std::fs::create_dir_all(p).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn file(p: &Path, data: &str, mode: u32, uid: u32, gid: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn whiteout(p: &Path) {
    mknodat(
        nix::fcntl::AT_FDCWD,
        p,
        SFlag::S_IFCHR,
        Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .unwrap();
}

fn opaque(p: &Path) {
    xattr::set(p, OVERLAY_OPAQUE_XATTR, b"y").unwrap();
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

/// Two layers (top first) under a temp dir, and an empty destination.
fn layers() -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top");
    let bottom = dir.path().join("bottom");
    let dest = dir.path().join("dest");
    for d in [&top, &bottom, &dest] {
        std::fs::create_dir(d).unwrap();
    }
    (dir, vec![top, bottom], dest)
}

#[test]
fn layers_merge_with_whiteouts_opaque_dirs_and_shadowing() {
    crate::require_root!();
    let (_d, l, dest) = layers();
    let (top, bottom) = (&l[0], &l[1]);
    // Bottom layer.
    mkdir(&bottom.join("data"), 0o755, 0, 0);
    file(&bottom.join("data/a"), "bottom-a", 0o644, 0, 0);
    file(&bottom.join("data/gone"), "deleted above", 0o644, 0, 0);
    file(&bottom.join("data/dir/x"), "x from bottom", 0o644, 0, 0);
    file(
        &bottom.join("data/opq/old"),
        "hidden by opaque",
        0o644,
        0,
        0,
    );
    file(
        &bottom.join("data/replaced/inner"),
        "hidden by a file",
        0o644,
        0,
        0,
    );
    file(
        &bottom.join("data/wasfile"),
        "a file below a dir",
        0o644,
        0,
        0,
    );
    // Top layer: owns the directory (non-root image).
    mkdir(&top.join("data"), 0o750, 1000, 1001);
    file(&top.join("data/a"), "top-a", 0o640, 1000, 1001);
    whiteout(&top.join("data/gone"));
    mkdir(&top.join("data/dir"), 0o711, 1000, 1001);
    file(&top.join("data/dir/y"), "y from top", 0o600, 1000, 1001);
    mkdir(&top.join("data/opq"), 0o755, 0, 0);
    opaque(&top.join("data/opq"));
    file(&top.join("data/opq/new"), "new", 0o644, 0, 0);
    file(&top.join("data/replaced"), "now a file", 0o644, 0, 0);
    file(&top.join("data/wasfile/in"), "now a dir", 0o644, 0, 0);

    let got = seed_from_layers(&l, "/data", &dest).unwrap();
    assert!(matches!(got, Seeded::Copied { entries: 6, .. }), "{got:?}");

    // The volume root takes the image directory's owner and mode (top-most).
    let root = std::fs::metadata(&dest).unwrap();
    assert_eq!(
        (root.uid(), root.gid(), root.mode() & 0o7777),
        (1000, 1001, 0o750)
    );
    assert_eq!(read(&dest.join("a")), "top-a");
    let a = std::fs::metadata(dest.join("a")).unwrap();
    assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1000, 1001, 0o640));
    assert!(
        !dest.join("gone").exists(),
        "a whiteout hides the lower file"
    );
    // Merged directory: both layers' files, the top's metadata.
    assert_eq!(read(&dest.join("dir/x")), "x from bottom");
    assert_eq!(read(&dest.join("dir/y")), "y from top");
    let dir = std::fs::metadata(dest.join("dir")).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (1000, 0o711));
    // Opaque: only the top layer's content.
    assert_eq!(read(&dest.join("opq/new")), "new");
    assert!(!dest.join("opq/old").exists());
    assert!(xattr::get(dest.join("opq"), OVERLAY_OPAQUE_XATTR)
        .unwrap()
        .is_none());
    // A file over a directory, a directory over a file.
    assert_eq!(read(&dest.join("replaced")), "now a file");
    assert_eq!(read(&dest.join("wasfile/in")), "now a dir");
    let mut names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "dir", "opq", "replaced", "wasfile"]);
}

#[test]
fn owners_modes_xattrs_times_hard_links_and_symlinks_are_kept() {
    crate::require_root!();
    let (d, l, dest) = layers();
    let top = &l[0];
    mkdir(&top.join("data/sub"), 0o755, 0, 0);
    file(&top.join("data/f"), "linked", 0o4750, 1234, 5678);
    xattr::set(top.join("data/f"), "user.seed", b"file-xattr").unwrap();
    xattr::set(top.join("data/sub"), "user.seed", b"dir-xattr").unwrap();
    std::fs::hard_link(top.join("data/f"), top.join("data/f2")).unwrap();
    std::fs::hard_link(top.join("data/f"), top.join("data/sub/f3")).unwrap();
    // Symlinks pointing out of the image: copied verbatim, never followed.
    let host_secret = d.path().join("host-secret");
    std::fs::write(&host_secret, "HOST DATA").unwrap();
    symlink(&host_secret, top.join("data/abs")).unwrap();
    symlink("../../../../host-secret", top.join("data/rel")).unwrap();
    symlink("/etc", top.join("data/etc")).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &top.join("data/rel"),
        Some(Uid::from_raw(77)),
        Some(Gid::from_raw(78)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    nix::unistd::mkfifo(&top.join("data/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::set_permissions(
        top.join("data/fifo"),
        std::fs::Permissions::from_mode(0o620),
    )
    .unwrap();
    let old = TimeSpec::new(1_600_000_000, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        &top.join("data/f"),
        &old,
        &old,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    utimensat(
        nix::fcntl::AT_FDCWD,
        &top.join("data/sub"),
        &old,
        &old,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    mkdir(&l[1], 0o755, 0, 0);

    seed_from_layers(&l, "/data", &dest).unwrap();

    let f = std::fs::metadata(dest.join("f")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1234, 5678, 0o4750));
    assert_eq!(f.mtime(), 1_600_000_000);
    assert_eq!(f.nlink(), 3, "f, f2 and sub/f3 stay one inode");
    for other in ["f2", "sub/f3"] {
        assert_eq!(std::fs::metadata(dest.join(other)).unwrap().ino(), f.ino());
    }
    assert_eq!(
        xattr::get(dest.join("f"), "user.seed").unwrap().unwrap(),
        b"file-xattr"
    );
    assert_eq!(
        xattr::get(dest.join("sub"), "user.seed").unwrap().unwrap(),
        b"dir-xattr"
    );
    assert_eq!(
        std::fs::metadata(dest.join("sub")).unwrap().mtime(),
        1_600_000_000
    );
    for (name, target) in [
        ("abs", host_secret.to_str().unwrap()),
        ("rel", "../../../../host-secret"),
        ("etc", "/etc"),
    ] {
        let m = std::fs::symlink_metadata(dest.join(name)).unwrap();
        assert!(m.file_type().is_symlink(), "{name}");
        assert_eq!(
            std::fs::read_link(dest.join(name)).unwrap(),
            Path::new(target)
        );
    }
    let rel = std::fs::symlink_metadata(dest.join("rel")).unwrap();
    assert_eq!((rel.uid(), rel.gid()), (77, 78));
    let fifo = std::fs::symlink_metadata(dest.join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 7);
}

#[test]
fn the_target_is_resolved_inside_the_image_never_on_the_host() {
    crate::require_root!();
    let (_d, l, dest) = layers();
    let (top, bottom) = (&l[0], &l[1]);
    // `/var/run -> ../run` (relative), `/srv/data -> /etc/app` (absolute,
    // pointing at the image's /etc, not the host's), and a `..` chain that
    // would climb out of the image root.
    mkdir(&bottom.join("var"), 0o755, 0, 0);
    symlink("../run", bottom.join("var/run")).unwrap();
    file(&bottom.join("run/app/pid"), "in-image", 0o644, 0, 0);
    mkdir(&top.join("srv"), 0o755, 0, 0);
    symlink("/etc/app", top.join("srv/data")).unwrap();
    file(&top.join("etc/app/conf"), "image conf", 0o644, 0, 0);
    symlink("../../../../../../etc/app", top.join("srv/up")).unwrap();

    seed_from_layers(&l, "/var/run/app", &dest).unwrap();
    assert_eq!(read(&dest.join("pid")), "in-image");

    for (i, target) in ["/srv/data", "/srv/up", "/srv/../../srv/data/"]
        .iter()
        .enumerate()
    {
        let out = dest.with_file_name(format!("dest{i}"));
        std::fs::create_dir(&out).unwrap();
        seed_from_layers(&l, target, &out).unwrap();
        assert_eq!(read(&out.join("conf")), "image conf", "{target}");
        assert!(
            !out.join("passwd").exists(),
            "{target}: the host's /etc leaked in"
        );
    }
}

#[test]
fn missing_paths_files_whiteouts_and_loops() {
    crate::require_root!();
    let (_d, l, dest) = layers();
    let (top, bottom) = (&l[0], &l[1]);
    file(&bottom.join("data/x"), "x", 0o644, 0, 0);
    file(&bottom.join("afile"), "f", 0o644, 0, 0);
    file(&bottom.join("wiped/x"), "x", 0o644, 0, 0);
    whiteout(&top.join("wiped"));
    symlink("loop2", top.join("loop1")).unwrap();
    symlink("loop1", top.join("loop2")).unwrap();
    symlink("/nowhere", top.join("dangling")).unwrap();

    assert_eq!(
        seed_from_layers(&l, "/nope", &dest).unwrap(),
        Seeded::NoSuchPath
    );
    assert_eq!(
        seed_from_layers(&l, "/data/x/y", &dest).unwrap(),
        Seeded::NoSuchPath
    );
    assert_eq!(
        seed_from_layers(&l, "/afile", &dest).unwrap(),
        Seeded::NotADirectory
    );
    assert_eq!(
        seed_from_layers(&l, "/wiped", &dest).unwrap(),
        Seeded::NoSuchPath
    );
    assert_eq!(
        seed_from_layers(&l, "/dangling", &dest).unwrap(),
        Seeded::NoSuchPath
    );
    assert!(matches!(
        seed_from_layers(&l, "/loop1", &dest),
        Err(SeedError::TooManySymlinks { .. })
    ));
    // Nothing was written, and the root kept its own metadata.
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(&dest).unwrap().uid(), 0);
}

#[test]
fn deep_trees_need_no_recursion_and_have_a_limit() {
    crate::require_root!();
    let (_d, l, dest) = layers();
    let deep = |n: usize| vec!["d"; n].join("/");
    file(
        &l[1].join("data").join(deep(150)).join("leaf"),
        "deep",
        0o644,
        0,
        0,
    );
    seed_from_layers(&l, "/data", &dest).unwrap();
    assert_eq!(read(&dest.join(deep(150)).join("leaf")), "deep");

    let out = dest.with_file_name("dest-too");
    std::fs::create_dir(&out).unwrap();
    assert!(matches!(
        seed_with_limit(&l, "/data", &out, 100),
        Err(SeedError::TooDeep { max: 100, .. })
    ));
}
