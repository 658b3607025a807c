//! End to end: images through the agent — `berthctl pull`, `images`, `gc` —
//! against a real registry: tags and digests, shared layers stored once,
//! layer semantics as a container sees them, corrupted bytes refused with
//! nothing half-written kept, a pull killed mid-way, and GC keeping what is
//! in use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use berth_core::image_ref::Digest;
use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

fn count_dir(path: &Path, filter: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .filter(|e| filter(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

fn snapshots(agent: &Agent) -> usize {
    count_dir(&agent.state_dir().join("layers"), |n| {
        !n.starts_with("tmp-")
    })
}

fn blob_exists(agent: &Agent, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    agent.state_dir().join("blobs/sha256").join(hex).exists()
}

fn assert_nothing_half_written(agent: &Agent) {
    assert_eq!(
        count_dir(&agent.state_dir().join("ingest"), |_| true),
        0,
        "ingest/ must be empty"
    );
    assert_eq!(
        count_dir(&agent.state_dir().join("layers"), |n| n.starts_with("tmp-")),
        0,
        "no partial snapshot"
    );
}

#[test]
fn pull_by_tag_and_by_digest_then_list() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1.4", "v1");
    let agent = Agent::start();
    let out = agent.ctl(&["pull", &image]).ok();
    let pinned = out.stdout.trim().to_string();
    assert!(
        pinned.starts_with(&format!("{image}@sha256:")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("resolved to sha256:") && out.stderr.contains("pulled"),
        "{}",
        out.stderr
    );
    let digest = pinned.split('@').nth(1).unwrap().to_string();
    // By digest: already present, nothing downloaded.
    let by_digest = format!(
        "{}@{digest}",
        image.split(':').take(2).collect::<Vec<_>>().join(":")
    );
    let by_digest = by_digest.replacen(":1.4@", "@", 1);
    let out = agent.ctl(&["pull", &by_digest]).ok();
    assert!(out.stderr.contains("0 B downloaded"), "{}", out.stderr);
    let images: serde_json::Value =
        serde_json::from_str(&agent.ctl(&["-o", "json", "images"]).ok().stdout).unwrap();
    let list = images.as_array().unwrap();
    assert!(
        list.iter()
            .any(|i| i["digest"] == digest.as_str() && i["layers"] == 2),
        "{images}"
    );
    assert!(snapshots(&agent) >= 2);
    let table = agent.ctl(&["images"]).ok().stdout;
    assert!(
        table.contains("shop/web:1.4") && table.contains(&digest["sha256:".len()..][..12]),
        "{table}"
    );
    let metrics = agent.http("GET", "/metrics").text();
    assert!(
        metrics.contains("berth_image_pull_bytes_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_image_pull_duration_seconds_count 2"),
        "{metrics}"
    );
    assert_nothing_half_written(&agent);
}

#[test]
fn shared_layers_are_stored_and_unpacked_once() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let a = push_web_image(&reg, "shop/a:1", "a");
    let b = push_web_image(&reg, "shop/b:1", "b");
    let agent = Agent::start();
    agent.ctl(&["pull", &a]).ok();
    assert_eq!(snapshots(&agent), 2);
    let out = agent.ctl(&["pull", &b]).ok();
    assert!(
        out.stderr.contains("already present"),
        "the busybox base layer must be reused:\n{}",
        out.stderr
    );
    assert_eq!(snapshots(&agent), 3, "base layer shared, two top layers");
}

#[test]
fn whiteouts_opaque_dirs_and_hardlinks_give_the_right_tree() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/data", 0o755)
                .file("/data/a", b"a", 0o644)
                .file("/data/b", b"b", 0o644)
                .dir("/opq", 0o755)
                .file("/opq/old", b"old", 0o644)
                .file("/keep/x", b"linked", 0o644)
                .hardlink("/keep/y", "/keep/x"),
        )
        .layer(
            LayerBuilder::new(Compression::Zstd)
                .whiteout("/data/a")
                .opaque("/opq")
                .file("/opq/new", b"new", 0o644),
        )
        .build()
        .unwrap();
    reg.push("shop/tree", "1", &img).unwrap();
    let agent = Agent::start();
    let script = "ls /data | tr '\\n' ' '; echo; ls /opq | tr '\\n' ' '; echo; stat -c %h /keep/x; cat /keep/y; echo; echo DONE; sleep 3600";
    let text = format!(
        "[service.tree]\nimage = \"{}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n",
        reg.image("shop/tree:1")
    );
    agent.apply_text("m.toml", &text).ok();
    let logs = agent.wait_for(30, "the tree listing", |a| {
        let out = a.ctl(&["logs", "tree"]);
        (out.code == 0 && out.stdout.contains("DONE")).then_some(out.stdout)
    });
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[0].trim(), "b", "whiteout must hide /data/a: {logs}");
    assert_eq!(
        lines[1].trim(),
        "new",
        "opaque dir must hide /opq/old: {logs}"
    );
    assert_eq!(lines[2].trim(), "2", "hard link count: {logs}");
    assert_eq!(lines[3].trim(), "linked", "{logs}");
    // The container's view is overlayfs over the snapshots; the snapshot of
    // the top layer holds overlay whiteouts, not files.
    let tail = agent.ctl(&["logs", "tree", "--tail", "1"]).ok().stdout;
    assert_eq!(tail.trim(), "DONE");
}

/// A file with holes, as `truncate` + `dd conv=notrunc` make it: 8 MiB with
/// data at the start, in the middle and in the last bytes.
fn sparse_source(path: &Path, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    let size = 8u64 << 20;
    f.set_len(size).unwrap();
    let data: Vec<u8> = (0..5000u32)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect();
    f.write_all_at(&data[..4096], 0).unwrap();
    f.write_all_at(&data, 3 << 20).unwrap();
    f.write_all_at(b"tail!", size - 5).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn sparse_files_in_layers_written_by_gnu_tar_run_with_their_holes() {
    berth_agent::require_root!();
    // One layer per sparse encoding GNU tar writes: PAX 0.0, 0.1, 1.0, old GNU.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sparse")).unwrap();
    let formats: [(&str, &[&str]); 4] = [
        ("p00", &["--format=posix", "--sparse-version=0.0"]),
        ("p01", &["--format=posix", "--sparse-version=0.1"]),
        ("p10", &["--format=posix", "--sparse-version=1.0"]),
        ("gnu", &["--format=gnu"]),
    ];
    let mut img = ImageBuilder::busybox();
    let mut want = Vec::new();
    for (i, (name, args)) in formats.iter().enumerate() {
        let file = src.path().join("sparse").join(name);
        sparse_source(&file, i as u8);
        want.push((name, Digest::sha256_of(&std::fs::read(&file).unwrap())));
        let out = std::process::Command::new("tar")
            .args(*args)
            .args(["--sparse", "--numeric-owner", "-cf", "-", "-C"])
            .arg(src.path())
            .arg(format!("sparse/{name}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.len() < 1 << 20,
            "{name}: GNU tar stored the holes ({} bytes)",
            out.stdout.len()
        );
        img = img.layer(LayerBuilder::verbatim(out.stdout, Compression::Gzip));
    }
    let reg = TestRegistry::start().unwrap();
    reg.push("shop/sparse", "1", &img.build().unwrap()).unwrap();
    let agent = Agent::start();
    let script = "cd /sparse && for f in p00 p01 p10 gnu; do echo $f $(stat -c '%s %b' $f) $(/bin/busybox sha256sum $f); done; echo DONE; sleep 3600";
    let text = format!(
        "[service.sparse]\nimage = \"{}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n",
        reg.image("shop/sparse:1")
    );
    agent.apply_text("m.toml", &text).ok();
    let logs = agent.wait_for(60, "the sparse listing", |a| {
        let out = a.ctl(&["logs", "sparse"]);
        (out.code == 0 && out.stdout.contains("DONE")).then_some(out.stdout)
    });
    for (name, digest) in &want {
        let line = logs
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {logs}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            f[1],
            (8u64 << 20).to_string(),
            "real size of {name}: {line}"
        );
        let blocks: u64 = f[2].parse().unwrap();
        assert!(
            blocks * 512 < 1 << 20,
            "{name} must keep its holes (allocates {blocks} blocks): {line}"
        );
        assert_eq!(
            format!("sha256:{}", f[3]),
            digest.to_string(),
            "content of {name}: {line}"
        );
    }
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_half_written_is_kept() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/bad:1", "v1");
    // Flip bytes of the top layer in the registry's own storage: the registry
    // serves it as is, so the bytes on the wire no longer match the digest.
    let built = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .dir("/www", 0o755)
                .file("/www/index.html", b"v1\n", 0o644),
        )
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
        .unwrap();
    let layer = built.layers.last().unwrap().digest.to_string();
    let hex = layer.trim_start_matches("sha256:");
    let data = reg.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let agent = Agent::start();
    let out = agent.ctl(&["pull", &image]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("shop/bad:1"),
        "the error must name the image: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(hex),
        "the error must name the layer digest: {}",
        out.stderr
    );
    assert!(
        !blob_exists(&agent, &layer),
        "a blob that failed verification must not be stored"
    );
    assert_nothing_half_written(&agent);
    assert_eq!(
        agent.ctl(&["-o", "json", "images"]).ok().stdout.trim(),
        "[]"
    );
    // Registry problems are named too.
    let out = agent.ctl(&["pull", &reg.image("shop/missing:1")]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("shop/missing:1"), "{}", out.stderr);
    let down = format!("127.0.0.1:{}/shop/x:1", free_port());
    let out = agent.ctl(&["pull", &down]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&down) || out.stderr.contains("127.0.0.1"),
        "{}",
        out.stderr
    );
    let metrics = agent.http("GET", "/metrics").text();
    assert!(
        metrics.contains("berth_registry_errors_total{"),
        "{metrics}"
    );
}

/// A TCP proxy to `upstream` that forwards at most `bytes_per_sec`.
fn slow_proxy(upstream: String, bytes_per_sec: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let pause = Duration::from_secs_f64(buf.len() as f64 / bytes_per_sec as f64);
                while let Ok(n) = s2.read(&mut buf) {
                    if n == 0 || c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn kill9_of_the_agent_mid_pull_then_a_new_pull_succeeds() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    // A 6 MB incompressible layer through a 2 MB/s proxy takes ~3 s.
    let noise: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let img = ImageBuilder::busybox()
        .layer(LayerBuilder::new(Compression::Gzip).file("/noise", &noise, 0o644))
        .build()
        .unwrap();
    reg.push("shop/big", "1", &img).unwrap();
    let port = slow_proxy(reg.host().to_string(), 2_000_000);
    let image = format!("127.0.0.1:{port}/shop/big:1");
    let mut agent = Agent::start();
    let mut pull = std::process::Command::new(berthctl_bin())
        .args(["--agent", &agent.agent_flag(), "pull", &image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the big layer is being written, then kill the agent.
    agent.wait_for(20, "an ingest in progress", |a| {
        (count_dir(&a.state_dir().join("ingest"), |_| true) > 0).then_some(())
    });
    agent.kill9();
    let _ = pull.wait();
    agent.spawn();
    // Leftovers of the killed pull are never trusted: gone at start.
    assert_nothing_half_written(&agent);
    let out = agent.ctl(&["pull", &image]).ok();
    assert!(out.stdout.contains("@sha256:"), "{}", out.stdout);
    assert_nothing_half_written(&agent);
    let layer = img.layers.last().unwrap().digest.to_string();
    assert!(blob_exists(&agent, &layer));
}

#[test]
fn gc_keeps_what_is_in_use_and_frees_the_rest() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let used = push_web_image(&reg, "shop/used:1", "used");
    let unused = push_web_image(&reg, "shop/unused:1", "unused");
    let agent = Agent::start();
    agent
        .apply_text("m.toml", &format!("[service.web]\nimage = \"{used}\"\n"))
        .ok();
    agent.wait_for(30, "web running", |a| {
        a.containers()
            .iter()
            .any(|c| c["service"] == "web" && c["state"] == "running")
            .then_some(())
    });
    agent.ctl(&["pull", &unused]).ok();
    assert_eq!(snapshots(&agent), 3);
    let out = agent.ctl(&["gc"]).ok();
    assert!(out.stdout.contains("removed 1 images"), "{}", out.stdout);
    let images: serde_json::Value =
        serde_json::from_str(&agent.ctl(&["-o", "json", "images"]).ok().stdout).unwrap();
    let refs: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, [used.as_str()], "{images}");
    assert_eq!(
        snapshots(&agent),
        2,
        "the unused top layer goes, the shared base and the used layer stay"
    );
    // The running container is untouched and a second GC frees nothing.
    assert!(agent
        .containers()
        .iter()
        .any(|c| c["service"] == "web" && c["state"] == "running"));
    let out = agent.ctl(&["gc"]).ok();
    assert!(
        out.stdout
            .contains("removed 0 images, 0 blobs, 0 layer snapshots"),
        "{}",
        out.stdout
    );
}

#[test]
fn gc_runs_by_itself_when_the_disk_fills_up() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let old = push_web_image(&reg, "shop/old:1", "old");
    let new = push_web_image(&reg, "shop/new:1", "new");
    let mut agent = Agent::create(&[]);
    // The state dir on a small filesystem of its own.
    let _fs = TmpfsMount::new(&agent.state_dir(), "48m");
    agent.spawn();
    agent.ctl(&["pull", &old]).ok();
    // Fill the filesystem past the 90% threshold.
    let stat = nix_free(&agent.state_dir());
    let filler = agent.state_dir().join("filler");
    let size = stat.0 - stat.1 / 20 - (stat.0 / 100) * 2;
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
    agent.ctl(&["pull", &new]).ok();
    let events = agent.api("GET", "/v1/events", &[], b"").json();
    let gc = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "gc")
        .cloned();
    assert!(gc.is_some(), "no automatic GC event: {events}");
    assert!(
        gc.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("removed 1 images"),
        "{events}"
    );
    let _ = std::fs::remove_file(&filler);
    agent.kill9();
    agent.remove_all_containers();
}

/// (free bytes, total bytes) of the filesystem holding `path`.
fn nix_free(path: &Path) -> (u64, u64) {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail,size"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}

/// Docker's credential-helper protocol: `docker-credential-NAME get` reads the
/// server on stdin and answers `{"Username", "Secret"}` (or fails with
/// "credentials not found"). The helper here logs what it was asked.
#[test]
fn credential_helpers_from_docker_config_json() {
    berth_agent::require_root!();
    let reg = TestRegistry::start_with_htpasswd("deploy", "s3cret-pw").unwrap();
    reg.push(
        "private/app",
        "v1",
        &ImageBuilder::busybox().build().unwrap(),
    )
    .unwrap();
    let image = reg.image("private/app:v1");
    let mut agent = Agent::create(&[]);
    let bin = agent.dir.path().join("helpers");
    std::fs::create_dir_all(&bin).unwrap();
    let asked = agent.dir.path().join("asked");
    let helper = |name: &str, body: &str| {
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    helper(
        "berthtest",
        &format!(
            "[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> {}\necho '{{\"ServerURL\":\"'$server'\",\"Username\":\"deploy\",\"Secret\":\"s3cret-pw\"}}'",
            asked.display()
        ),
    );
    helper("broken", "read server; echo 'keychain locked' >&2; exit 1");
    let docker_dir = agent.dir.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let write_config = |helper: &str| {
        let config = format!(
            r#"{{"auths": {{"{host}": {{}}}}, "credHelpers": {{"{host}": "{helper}"}}}}"#,
            host = reg.host()
        );
        std::fs::write(docker_dir.join("config.json"), config).unwrap();
    };
    write_config("berthtest");
    agent.env = vec![
        ("DOCKER_CONFIG".into(), docker_dir.display().to_string()),
        (
            "PATH".into(),
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
    ];
    agent.spawn();
    agent.ctl(&["pull", &image]).ok();
    let asked_for = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(
        asked_for.trim(),
        reg.host(),
        "the helper is asked for the registry host"
    );

    // A helper that fails: a clear error naming the helper and the registry.
    write_config("broken");
    agent.terminate();
    agent.spawn();
    let out = agent.ctl(&["pull", &reg.image("private/app:v1")]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let err = format!("{}{}", out.stdout, out.stderr);
    assert!(
        err.contains("docker-credential-broken")
            && err.contains(reg.host())
            && err.contains("keychain locked"),
        "{err}"
    );
}
