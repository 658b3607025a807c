//! The volume store on temp dirs: seeded once, never half, the old layout
//! migrated without losing a byte (also after a crash mid-migration),
//! removal refused while in use.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn seed_info() -> SeedInfo {
    SeedInfo {
        image: "r/app@sha256:00".into(),
        path: "/data".into(),
        entries: 1,
        bytes: 4,
    }
}

fn names(root: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn a_new_volume_is_seeded_once_even_after_it_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
    let calls = Cell::new(0);
    let seed = |data: &Path| {
        calls.set(calls.get() + 1);
        std::fs::write(data.join("seed"), "from image").unwrap();
        Ok(Some(seed_info()))
    };
    let first = store.ensure("pgdata", seed).unwrap();
    assert!(first.created);
    assert_eq!(first.seeded_from, Some(seed_info()));
    assert_eq!(first.data, store.root().join("pgdata/_data"));
    assert_eq!(
        std::fs::read_to_string(first.data.join("seed")).unwrap(),
        "from image"
    );
    let meta: VolumeMeta =
        serde_json::from_slice(&std::fs::read(store.root().join("pgdata/meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta.seeded_from, Some(seed_info()));
    assert!(!meta.migrated);

    // The workload empties it: still initialized, never seeded again.
    std::fs::remove_file(first.data.join("seed")).unwrap();
    let again = store.ensure("pgdata", seed).unwrap();
    assert!(!again.created);
    assert_eq!(calls.get(), 1);
    assert_eq!(std::fs::read_dir(&again.data).unwrap().count(), 0);
    // Also not by a fresh store (agent restart).
    let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
    store.ensure("pgdata", seed).unwrap();
    assert_eq!(calls.get(), 1);
}

#[test]
fn an_unseeded_volume_starts_0755_root() {
    crate::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("v")).unwrap();
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    let e = store.ensure("empty", |_| Ok(None)).unwrap();
    nix::sys::stat::umask(old);
    let m = std::fs::metadata(&e.data).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o755));
    assert_eq!(store.get("empty").unwrap().meta.seeded_from, None);
}

#[test]
fn a_failed_seed_leaves_no_volume_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
    let err = store
        .ensure("data", |d| {
            std::fs::write(d.join("half"), "x").unwrap();
            Err(SeedError::TooManySymlinks { path: "/x".into() })
        })
        .unwrap_err();
    assert!(err.to_string().contains("volume `data`"), "{err}");
    assert!(names(store.root()).is_empty(), "{:?}", names(store.root()));
    assert!(store.get("data").is_none());
    // The next start seeds it properly.
    let e = store
        .ensure("data", |d| {
            std::fs::write(d.join("whole"), "y").unwrap();
            Ok(Some(seed_info()))
        })
        .unwrap();
    assert!(e.created && e.data.join("whole").exists() && !e.data.join("half").exists());
}

#[test]
fn old_layout_volumes_are_migrated_without_loss() {
    crate::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("volumes");
    let old = root.join("pgdata");
    std::fs::create_dir_all(old.join("base/1")).unwrap();
    std::fs::write(old.join("base/1/table"), "rows").unwrap();
    std::fs::write(old.join("meta.json"), "the app's own file").unwrap();
    std::os::unix::fs::chown(old.join("base"), Some(999), Some(999)).unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o700)).unwrap();
    // An empty old volume is migrated too (and then never seeded).
    std::fs::create_dir_all(root.join("empty")).unwrap();

    let store = VolumeStore::open(&root).unwrap();
    let data = root.join("pgdata/_data");
    assert_eq!(
        std::fs::read_to_string(data.join("base/1/table")).unwrap(),
        "rows"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("meta.json")).unwrap(),
        "the app's own file"
    );
    assert_eq!(std::fs::metadata(data.join("base")).unwrap().uid(), 999);
    assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o7777, 0o700);
    let info = store.get("pgdata").unwrap();
    assert!(info.meta.migrated && info.meta.seeded_from.is_none());
    assert_eq!(names(&root), ["empty", "pgdata"]);
    let e = store
        .ensure("empty", |_| panic!("a migrated volume is never seeded"))
        .unwrap();
    assert!(!e.created);

    // Opening again changes nothing (no `_data/_data`).
    VolumeStore::open(&root).unwrap();
    assert!(data.join("base/1/table").exists() && !data.join("_data").exists());
}

#[test]
fn an_interrupted_migration_is_finished_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("volumes");
    // Crash after the data moved into the staging dir (before meta/rename).
    std::fs::create_dir_all(root.join(".migrate-a/_data")).unwrap();
    std::fs::write(root.join(".migrate-a/_data/f"), "a-data").unwrap();
    // Crash after the staging dir was made, before the data moved.
    std::fs::create_dir_all(root.join(".migrate-b")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("b/f"), "b-data").unwrap();
    // Leftovers of a creation and of a removal.
    std::fs::create_dir_all(root.join(".tmp-c-1-0/_data")).unwrap();
    std::fs::create_dir_all(root.join(".rm-d-1-0/_data")).unwrap();

    let store = VolumeStore::open(&root).unwrap();
    assert_eq!(names(&root), ["a", "b"]);
    assert_eq!(
        std::fs::read_to_string(root.join("a/_data/f")).unwrap(),
        "a-data"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("b/_data/f")).unwrap(),
        "b-data"
    );
    assert!(store.get("a").unwrap().meta.migrated);
    assert!(store.get("b").unwrap().meta.migrated);
}

#[test]
fn remove_is_refused_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
    let e = store
        .ensure("web", |d| {
            std::fs::write(d.join("keep"), "x").unwrap();
            Ok(None)
        })
        .unwrap();
    let err = store
        .remove("web", || Ok(vec!["service `web` (revision 3)".into()]))
        .unwrap_err();
    assert!(
        matches!(&err, VolumeError::InUse { users, .. } if users.len() == 1),
        "{err}"
    );
    assert!(
        err.to_string().contains("service `web` (revision 3)"),
        "{err}"
    );
    assert!(e.data.join("keep").exists());
    store.remove("web", || Ok(Vec::new())).unwrap();
    assert!(names(store.root()).is_empty());
    assert!(matches!(
        store.remove("web", || Ok(Vec::new())),
        Err(VolumeError::NotFound(_))
    ));
    for bad in ["../x", ".tmp-x", "", "a/b"] {
        assert!(matches!(
            store.remove(bad, || Ok(Vec::new())),
            Err(VolumeError::InvalidName(_))
        ));
        assert!(store.ensure(bad, |_| Ok(None)).is_err());
    }
}

#[test]
fn listing_and_disk_usage() {
    let dir = tempfile::tempdir().unwrap();
    let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
    let e = store
        .ensure("b", |d| {
            std::fs::write(d.join("big"), vec![7u8; 1 << 20]).unwrap();
            std::fs::hard_link(d.join("big"), d.join("big2")).unwrap();
            // Not followed: /usr is far larger than the volume.
            std::os::unix::fs::symlink("/usr", d.join("usr")).unwrap();
            Ok(None)
        })
        .unwrap();
    store.ensure("a", |_| Ok(None)).unwrap();
    let list = store.list().unwrap();
    assert_eq!(
        list.iter()
            .map(|v| v.meta.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let used = disk_usage(&e.data).unwrap();
    assert!((1 << 20..(1 << 20) + (256 << 10)).contains(&used), "{used}");
}
