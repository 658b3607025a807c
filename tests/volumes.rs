//! End to end: named volumes are seeded from the image once (a non-root
//! image can write its volume), keep their data across replacements, have one
//! writer at a time (a `flock` held by the workload is never contested across
//! updates), an image `VOLUME` keeps its data like a named volume, and
//! `berthctl volumes` lists and removes volumes (refusing while in use).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

fn events(agent: &Agent) -> Vec<serde_json::Value> {
    let r = agent.api("GET", "/v1/events", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

fn volume_data(agent: &Agent, name: &str) -> PathBuf {
    agent.state_dir().join("volumes").join(name).join("_data")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until `file` (on the host) contains `needle`; returns its content.
fn file_containing(agent: &Agent, file: &Path, needle: &str) -> String {
    agent.wait_for(45, &format!("{needle:?} in {}", file.display()), |_| {
        let text = read(file);
        text.contains(needle).then_some(text)
    })
}

fn volumes_json(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.ctl(&["-o", "json", "volumes"]).ok();
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn volume_entry(agent: &Agent, name: &str) -> Option<serde_json::Value> {
    volumes_json(agent).into_iter().find(|v| v["name"] == name)
}

fn apply_wait(agent: &Agent, file: &str, text: &str) -> CtlOutput {
    agent.apply_wait(file, text, "90s")
}

/// A layer with util-linux `flock` and the libraries it links (busybox has no
/// `flock` applet here), at their host paths.
fn flock_layer() -> LayerBuilder {
    let out = std::process::Command::new("ldd")
        .arg("/usr/bin/flock")
        .output()
        .expect("ldd");
    let mut layer =
        LayerBuilder::new(Compression::Gzip).host_file("/usr/bin/flock", "/usr/bin/flock");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            layer = layer.host_file(&p, &p);
        }
    }
    layer
}

/// A non-root image (`USER 1000`) owning `/data` with seed files; the
/// container writes its volume on first start, the volume holds the seed
/// (owners, modes, symlink, hard link), and a replacement keeps what the
/// workload wrote — the seed is not applied again. A volume of the old
/// layout is migrated with its data and not seeded. `volumes` lists the
/// volume with its service; `volumes rm` refuses while it is in use and
/// removes it once the service is gone.
#[test]
fn a_non_root_image_writes_its_seeded_volume_and_keeps_its_data() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let script = "if [ ! -e /data/runs ]; then echo changed > /data/seed.txt || exit 3; rm /data/deleteme || exit 3; fi; \
        echo \"run $GEN uid $(id -u)\" >> /data/runs || { echo CANNOT-WRITE; exit 3; }; \
        cat /old/olddata.txt >> /data/runs || exit 4; exec sleep 3600";
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir_owned("/data", 0o750, 1000, 1000)
                .file_owned("/data/seed.txt", b"seed v1\n", 0o640, 1000, 1000)
                .file_owned("/data/deleteme", b"x\n", 0o644, 1000, 1000)
                .dir_owned("/data/sub", 0o700, 1000, 1000)
                .file_owned("/data/sub/nested", b"nested\n", 0o600, 1000, 1000)
                .symlink("/data/passwd", "/etc/passwd")
                .hardlink("/data/hl", "/data/seed.txt")
                .dir("/old", 0o755)
                .file(
                    "/old/should-not-appear",
                    b"seed of a migrated volume\n",
                    0o644,
                ),
        )
        .user("1000")
        .entrypoint(&["/bin/sh", "-c", script])
        .cmd(&[])
        .build()
        .unwrap();
    reg.push("shop/app", "1", &img).unwrap();
    let image = reg.image("shop/app:1");

    // A volume of the old layout (data directly in volumes/NAME/).
    let mut agent = Agent::create(&[]);
    let legacy = agent.state_dir().join("volumes/legacy");
    std::fs::create_dir_all(&legacy).unwrap();
    std::fs::write(legacy.join("olddata.txt"), "old data kept\n").unwrap();
    agent.spawn();
    assert_eq!(
        read(&volume_data(&agent, "legacy").join("olddata.txt")),
        "old data kept\n",
        "migrated at start"
    );

    let manifest = |gen: u32| {
        format!(
            "[service.app]\nimage = \"{image}\"\nenv = {{ GEN = \"{gen}\" }}\nstop_timeout = \"1s\"\n\n[service.app.update]\ndrain = \"0s\"\n\n[[service.app.volumes]]\nname = \"appdata\"\ntarget = \"/data\"\n\n[[service.app.volumes]]\nname = \"legacy\"\ntarget = \"/old\"\n"
        )
    };
    apply_wait(&agent, "app.toml", &manifest(1)).ok();
    let data = volume_data(&agent, "appdata");
    let runs = file_containing(&agent, &data.join("runs"), "run 1 uid 1000");
    assert!(runs.contains("old data kept"), "{runs}");

    // The seed: the image directory's owner and mode, its files, links.
    let root = std::fs::metadata(&data).unwrap();
    assert_eq!(
        (root.uid(), root.gid(), root.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        read(&data.join("seed.txt")),
        "changed\n",
        "written by uid 1000"
    );
    assert_eq!(read(&data.join("sub/nested")), "nested\n");
    let nested = std::fs::metadata(data.join("sub/nested")).unwrap();
    assert_eq!((nested.uid(), nested.mode() & 0o7777), (1000, 0o600));
    assert_eq!(
        std::fs::read_link(data.join("passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::metadata(data.join("hl")).unwrap().ino(),
        std::fs::metadata(data.join("seed.txt")).unwrap().ino()
    );
    assert!(!data.join("deleteme").exists());
    assert!(
        !volume_data(&agent, "legacy")
            .join("should-not-appear")
            .exists(),
        "a migrated volume is never seeded"
    );

    // Listed with its service; removal refused while in use.
    let table = agent.ctl(&["volumes"]).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with("appdata "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" app "), "{table}");
    assert!(
        table.lines().next().unwrap().contains("SERVICES"),
        "{table}"
    );
    let v = volume_entry(&agent, "appdata").unwrap();
    assert_eq!(v["services"], serde_json::json!(["app"]));
    assert_eq!(v["containers"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["size_bytes"].as_u64().unwrap() > 0, "{v}");
    let seeded = v["seeded_from"].as_str().unwrap();
    assert!(
        seeded.contains("shop/app") && seeded.ends_with(":/data"),
        "{v}"
    );
    let out = agent.ctl(&["volumes", "rm", "appdata"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("in use") && out.stderr.contains("service `app`"),
        "{}",
        out.stderr
    );
    let container = v["containers"][0].as_str().unwrap();
    assert!(out.stderr.contains(container), "{}", out.stderr);
    let r = agent.api("DELETE", "/v1/volumes/appdata", &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "volume_in_use");

    // A replacement keeps what the workload wrote; the seed is not re-applied.
    apply_wait(&agent, "app.toml", &manifest(2)).ok();
    let runs = file_containing(&agent, &data.join("runs"), "run 2 uid 1000");
    assert!(runs.starts_with("run 1 uid 1000\n"), "{runs}");
    assert_eq!(read(&data.join("seed.txt")), "changed\n");
    assert!(!data.join("deleteme").exists(), "seed applied again");

    // Once no service or container uses it, it can be removed.
    let other = format!(
        "[service.other]\nimage = \"{image}\"\nentrypoint = [\"/bin/sleep\", \"3600\"]\nstop_timeout = \"1s\"\n"
    );
    let path = agent.dir.path().join("other.toml");
    std::fs::write(&path, other).unwrap();
    agent
        .ctl(&[
            "apply",
            "--prune",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout",
            "60s",
        ])
        .ok();
    agent.wait_for(30, "app's containers removed", |a| {
        a.containers()
            .iter()
            .all(|c| c["service"] != "app")
            .then_some(())
    });
    let v = volume_entry(&agent, "appdata").unwrap();
    assert_eq!(v["services"], serde_json::json!([]), "{v}");
    agent.ctl(&["volumes", "rm", "appdata"]).ok();
    assert!(!agent.state_dir().join("volumes/appdata").exists());
    assert!(volume_entry(&agent, "appdata").is_none());
    let out = agent.ctl(&["volumes", "rm", "appdata"]);
    assert!(
        out.code != 0 && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
    agent.remove_all_containers();
}

/// The single-writer check: a workload that takes an exclusive
/// `flock` on its volume and exits loudly when it cannot. Five updates in a
/// row never overlap two writers (stop-first by default); the same rollout
/// with `shared = true` and `start-first` does overlap, and the check sees
/// it. `replicas = 2` with the volume is refused with file:line:col.
#[test]
fn a_single_writer_volume_never_has_two_writers_across_updates() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let script = "exec 9>>/data/lock; if ! flock -n 9; then echo LOCK-TAKEN-BY-ANOTHER-WRITER; echo \"gen $GEN\" >> /data/failures; exit 99; fi; \
        echo \"gen $GEN\" >> /data/gens; echo \"LOCKED gen $GEN\"; exec sleep 3600";
    let img = ImageBuilder::busybox()
        .layer(flock_layer())
        .entrypoint(&["/bin/sh", "-c", script])
        .build()
        .unwrap();
    reg.push("shop/locker", "1", &img).unwrap();
    let image = reg.image("shop/locker:1");
    let agent = Agent::start();
    let manifest = |gen: u32, extra_update: &str, extra_volume: &str| {
        format!(
            "[service.locker]\nimage = \"{image}\"\nenv = {{ GEN = \"{gen}\" }}\nstop_timeout = \"1s\"\n\n[service.locker.update]\ndrain = \"0s\"\n{extra_update}\n[[service.locker.volumes]]\nname = \"lockdata\"\ntarget = \"/data\"\n{extra_volume}"
        )
    };
    let data = volume_data(&agent, "lockdata");
    for gen in 0..=5 {
        apply_wait(&agent, "locker.toml", &manifest(gen, "", "")).ok();
        file_containing(&agent, &data.join("gens"), &format!("gen {gen}\n"));
    }
    let want: String = (0..=5).map(|g| format!("gen {g}\n")).collect();
    assert_eq!(
        read(&data.join("gens")),
        want,
        "each generation ran once, in order"
    );
    assert!(
        !data.join("failures").exists(),
        "two writers: {}",
        read(&data.join("failures"))
    );
    let logs = agent.ctl(&["logs", "locker"]).ok().stdout;
    assert!(
        logs.contains("LOCKED gen 5") && !logs.contains("LOCK-TAKEN"),
        "{logs}"
    );
    let failed: Vec<_> = events(&agent)
        .into_iter()
        .filter(|e| {
            let kind = e["kind"].as_str().unwrap_or("");
            kind.contains("failed") || kind == "rollback"
        })
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let status = agent.status_json();
    assert_eq!(status["services"][0]["restarts"], 0, "{status}");

    // The check can fail: shared + start-first overlaps old and new.
    let overlap = manifest(6, "strategy = \"start-first\"\n", "shared = true\n");
    let path = agent.dir.path().join("locker.toml");
    std::fs::write(&path, &overlap).unwrap();
    agent.ctl(&["apply", "-f", path.to_str().unwrap()]).ok();
    file_containing(&agent, &data.join("failures"), "gen 6");

    // Two replicas of a one-writer volume: refused offline and by the agent.
    let two = manifest(7, "", "").replace("stop_timeout", "replicas = 2\nstop_timeout");
    std::fs::write(&path, &two).unwrap();
    let want = format!("{}:4:12: service.locker.replicas:", path.display());
    let out = ctl(&["validate".into(), "-f".into(), path.display().to_string()]);
    assert!(
        out.code != 0 && out.stderr.contains(&want),
        "want {want} in:\n{}",
        out.stderr
    );
    let out = agent.ctl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        out.code != 0 && out.stderr.contains(&want),
        "want {want} in:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("shared = true"), "{}", out.stderr);
    // ... and accepted when the data is marked safe to share.
    std::fs::write(&path, format!("{two}shared = true\n")).unwrap();
    ctl(&["validate".into(), "-f".into(), path.display().to_string()]).ok();
    agent
        .ctl(&["apply", "--dry-run", "-f", path.to_str().unwrap()])
        .ok();
    agent.remove_all_containers();
}

/// An image `VOLUME /data` with no manifest volume becomes the volume
/// `cache_data`: seeded from the image, kept across a replacement (which
/// runs stop-first: the old container is gone before the new one starts),
/// listed by `volumes`. Two replicas are refused at apply, naming the path
/// and the fix; a tmpfs at the path lifts it.
#[test]
fn an_image_volume_keeps_its_data_across_replacement() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/data", 0o755)
                .file("/data/seed", b"image seed\n", 0o644),
        )
        .volume("/data")
        .entrypoint(&[
            "/bin/sh",
            "-c",
            "echo \"gen $GEN\" >> /data/gens; exec sleep 3600",
        ])
        .build()
        .unwrap();
    reg.push("shop/cache", "1", &img).unwrap();
    let image = reg.image("shop/cache:1");
    let agent = Agent::start();
    let manifest = |gen: u32, extra: &str| {
        format!(
            "[service.cache]\nimage = \"{image}\"\nenv = {{ GEN = \"{gen}\" }}\nstop_timeout = \"1s\"\n{extra}\n[service.cache.update]\ndrain = \"0s\"\n"
        )
    };
    apply_wait(&agent, "cache.toml", &manifest(1, "")).ok();
    let data = volume_data(&agent, "cache_data");
    file_containing(&agent, &data.join("gens"), "gen 1\n");
    assert_eq!(read(&data.join("seed")), "image seed\n");
    let first: Vec<String> = agent
        .containers()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first.len(), 1);

    // `diff` / a dry run say how it rolls out.
    let path = agent.dir.path().join("cache.toml");
    std::fs::write(&path, manifest(2, "")).unwrap();
    let out = agent
        .ctl(&["apply", "--dry-run", "-f", path.to_str().unwrap()])
        .ok();
    assert!(
        out.stdout
            .contains("updates stop-first: image VOLUME /data is kept as volume `cache_data`"),
        "{}",
        out.stdout
    );
    apply_wait(&agent, "cache.toml", &manifest(2, "")).ok();
    let gens = file_containing(&agent, &data.join("gens"), "gen 2\n");
    assert_eq!(gens, "gen 1\ngen 2\n", "the data survived the replacement");
    // Stop-first: the old replica was removed before the new one started.
    let ev = events(&agent);
    let pos = |kind: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        ev.iter()
            .position(|e| e["kind"] == kind && pred(e))
            .unwrap_or_else(|| panic!("no {kind} event: {ev:?}"))
    };
    let removed = pos("container-removed", &|e| {
        e["container"] == first[0].as_str()
    });
    let started = pos("container-started", &|e| {
        e["service"] == "cache" && e["container"] != first[0].as_str()
    });
    assert!(removed < started, "two writers overlapped: {ev:?}");
    let v = volume_entry(&agent, "cache_data").unwrap();
    assert_eq!(v["services"], serde_json::json!(["cache"]), "{v}");

    // Two replicas would write the image volume at once.
    std::fs::write(&path, manifest(3, "replicas = 2\n")).unwrap();
    let out = agent.ctl(&["apply", "-f", path.to_str().unwrap()]);
    let want = format!("{}:5:12: service.cache.replicas:", path.display());
    assert!(
        out.code != 0 && out.stderr.contains(&want),
        "want {want} in:\n{}",
        out.stderr
    );
    for needle in ["VOLUME /data", "cache_data", "tmpfs", "shared = true"] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    // A tmpfs there: per-replica scratch, fine with two replicas.
    let tmpfs = format!(
        "{}\n[[service.cache.volumes]]\ntmpfs = \"1Mi\"\ntarget = \"/data\"\n",
        manifest(3, "replicas = 2\n")
    );
    std::fs::write(&path, tmpfs).unwrap();
    agent
        .ctl(&["apply", "--dry-run", "-f", path.to_str().unwrap()])
        .ok();
    agent.remove_all_containers();
}
