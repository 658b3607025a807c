//! Replays every checked-in seed (`fuzz/corpus/TARGET/`) and every input a
//! fuzzer ever crashed on (`fuzz/regressions/TARGET/`) through the targets'
//! bodies, so a plain `cargo test` checks their properties on all of them.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(kind: &str) -> usize {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind);
    let mut count = 0;
    for target in berth_fuzz::TARGETS {
        let dir = base.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            if path.file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            assert!(berth_fuzz::run(target, &data));
            count += 1;
        }
    }
    count
}

#[test]
fn every_seed_passes_every_property() {
    let n = replay("corpus");
    assert!(n >= 4 * 5, "only {n} seeds found");
}

#[test]
fn every_crash_found_stays_fixed() {
    replay("regressions");
}

#[test]
fn an_unknown_target_is_refused() {
    assert!(!berth_fuzz::run("nope", b""));
}
