//! End to end: hosts without a registry. An image saved by `skopeo copy …
//! oci-archive:` and one saved by a real `docker save` are loaded with
//! `berthctl load` while no registry is reachable, and run from a manifest
//! with `pull.policy = "never"`; a tampered archive (one layer byte flipped)
//! is refused naming the digest and stores nothing; `save` then `load`
//! gives the same digest; a missing image with `never` is refused at apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::registry::{ImageBuilder, TestRegistry};
use berth_e2e::*;

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flips one byte in the middle of the biggest blob of an OCI layout tar
/// (a layer), rewriting the tar.
fn tamper(src: &Path, dst: &Path) -> String {
    let mut ar = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut entries: Vec<(tar::Header, Vec<u8>, String)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push((e.header().clone(), data, name));
    }
    let big = entries
        .iter()
        .enumerate()
        .filter(|(_, (_, _, n))| n.starts_with("blobs/"))
        .max_by_key(|(_, (_, d, _))| d.len())
        .map(|(i, _)| i)
        .unwrap();
    let mid = entries[big].1.len() / 2;
    entries[big].1[mid] ^= 0xff;
    let digest = entries[big]
        .2
        .trim_start_matches("blobs/")
        .replace('/', ":");
    let mut b = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for (mut h, data, name) in entries {
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
    digest
}

/// A private dockerd (no iptables, no bridge) on a socket of its own; killed
/// and its mounts undone on drop.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("docker.sock");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Dockerd {
            child,
            dir: dir.to_path_buf(),
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker().arg("info").output().unwrap().status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        d
    }

    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(format!("unix://{}", self.sock.display()));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in berth_agent::runtime::mounts_under(&self.dir).iter().rev() {
            let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// skopeo's `oci-archive:` of a busybox image pushed to a registry that is
/// stopped again before this returns.
fn oci_archive(path: &Path) {
    let reg = TestRegistry::start().unwrap();
    reg.push(
        "shop/busybox",
        "1",
        &ImageBuilder::busybox().build().unwrap(),
    )
    .unwrap();
    sh(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/shop/busybox:1", reg.host()))
        .arg(format!("oci-archive:{}:shop/busybox:1", path.display())));
}

const NEVER: &str = "[service.NAME.pull]\npolicy = \"never\"\n";

fn manifest(name: &str, image: &str) -> String {
    format!(
        "[service.{name}]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\n{}",
        NEVER.replace("NAME", name)
    )
}

#[test]
fn archives_from_skopeo_and_docker_load_and_run_without_a_registry() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let work = agent.dir.path().join("archives");
    std::fs::create_dir_all(&work).unwrap();

    // skopeo's oci-archive of an image pushed to a registry that is then gone.
    let oci = work.join("busybox-oci.tar");
    {
        let reg = TestRegistry::start().unwrap();
        reg.push(
            "shop/busybox",
            "1",
            &ImageBuilder::busybox().build().unwrap(),
        )
        .unwrap();
        sh(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{}/shop/busybox:1", reg.host()))
            .arg(format!("oci-archive:{}:shop/busybox:1", oci.display())));
    }
    // A tampered copy is refused naming the blob, and stores nothing.
    let bad = work.join("tampered.tar");
    let digest = tamper(&oci, &bad);
    let r = agent.ctl(&["load", bad.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(&digest), "names {digest}: {}", r.stderr);
    assert!(
        r.stderr.contains("shop/busybox:1 in the archive") && !r.stderr.contains("127.0.0.1"),
        "names the image, not the loopback server: {}",
        r.stderr
    );
    // Not an archive at all: one readable line, no bytes of it.
    let junk = work.join("junk.tar");
    std::fs::write(
        &junk,
        (0..4096u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let r = agent.ctl(&["load", junk.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("not a readable tar archive"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains('\u{fffd}'), "{}", r.stderr);
    let images = agent.ctl(&["-o", "json", "images"]).ok().stdout;
    assert!(!images.contains("shop/busybox"), "{images}");

    let out = agent.ctl(&["load", oci.to_str().unwrap()]).ok().stdout;
    assert!(
        out.starts_with("loaded docker.io/shop/busybox:1 as sha256:"),
        "{out}"
    );
    let loaded_digest = out.trim().rsplit(' ').next().unwrap().to_string();

    // A real `docker save` of an image made with `docker import`.
    let docker_tar = work.join("busybox-docker.tar");
    let d = Dockerd::start(&work.join("docker"));
    let rootfs = work.join("rootfs.tar");
    let bb = work.join("bb");
    std::fs::create_dir_all(bb.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", bb.join("bin").join(a)).unwrap();
    }
    sh(Command::new("tar")
        .arg("-C")
        .arg(&bb)
        .arg("-cf")
        .arg(&rootfs)
        .arg("."));
    sh(d.docker().arg("import").arg(&rootfs).arg("berth-test/bb:2"));
    sh(d.docker()
        .args(["save", "-o"])
        .arg(&docker_tar)
        .arg("berth-test/bb:2"));
    drop(d);
    let out = agent
        .ctl(&["load", docker_tar.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        out.starts_with("loaded docker.io/berth-test/bb:2 as sha256:"),
        "{out}"
    );

    // Both run from a manifest that never pulls (no registry is up).
    let text = format!(
        "{}\n{}",
        manifest("oci", "shop/busybox:1"),
        manifest("dock", "berth-test/bb:2")
    );
    agent.apply_wait("m.toml", &text, "60s").ok();
    for s in ["oci", "dock"] {
        agent.wait_for(30, &format!("{s} running"), |ag| ag.running_id(s));
    }

    // save then load: the same digest, under the name it was saved with.
    let saved = work.join("saved.tar");
    agent
        .ctl(&["save", "shop/busybox:1", "--out", saved.to_str().unwrap()])
        .ok();
    let again = agent.ctl(&["load", saved.to_str().unwrap()]).ok().stdout;
    assert_eq!(
        again.trim(),
        format!("loaded docker.io/shop/busybox:1 as {loaded_digest}")
    );
    // And with --tag, under a new name, the same digest.
    let renamed = agent
        .ctl(&["load", saved.to_str().unwrap(), "--tag", "local/renamed:7"])
        .ok()
        .stdout;
    assert_eq!(
        renamed.trim(),
        format!("loaded docker.io/local/renamed:7 as {loaded_digest}")
    );
    println!("archives: oci-archive and docker save loaded and running; save→load {loaded_digest}");
    agent.remove_all_containers();
}

#[test]
fn never_refuses_an_image_that_is_not_loaded() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let r = agent.apply_text("m.toml", &manifest("x", "nowhere/missing:1"));
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("docker.io/nowhere/missing:1 is not in the agent's store and its pull.policy is \"never\": load it first with `berthctl load ARCHIVE`"),
        "{}",
        r.stderr
    );
    assert!(agent.containers().is_empty());
}

#[test]
fn a_manifest_directory_ships_the_archive_of_its_image() {
    berth_agent::require_root!();
    let mut agent = Agent::create(&[]);
    let dir = agent.dir.path().join("gitops");
    std::fs::create_dir_all(&dir).unwrap();
    oci_archive(&dir.join("busybox.tar"));
    std::fs::write(dir.join("app.toml"), manifest("app", "shop/busybox:1")).unwrap();
    agent.extra_args = vec!["--manifests".into(), dir.display().to_string()];
    agent.spawn();
    agent.wait_for(60, "app running from the shipped archive", |ag| {
        ag.running_id("app")
    });
    let images = agent.ctl(&["-o", "json", "images"]).ok().stdout;
    assert!(images.contains("docker.io/shop/busybox:1"), "{images}");
    let events = agent.ctl(&["events"]).ok().stdout;
    assert!(events.contains("image-loaded"), "{events}");
    agent.remove_all_containers();
}

#[test]
fn a_git_source_ships_the_archive_of_its_image() {
    berth_agent::require_root!();
    let mut agent = Agent::create(&[]);
    let bare = agent.dir.path().join("fleet.git");
    let work = agent.dir.path().join("work");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(work.join("hosts")).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    oci_archive(&work.join("hosts/busybox.tar"));
    std::fs::write(
        work.join("hosts/app.toml"),
        manifest("app", "shop/busybox:1"),
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "app and its image"]);
    git(&work, &["push", "-q", "origin", "main"]);
    agent.extra_args = [
        "--git",
        &format!("file://{}", bare.display()),
        "--git-ref",
        "main",
        "--git-path",
        "hosts",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    agent.spawn();
    agent.wait_for(60, "app running from the archive in git", |ag| {
        ag.running_id("app")
    });
    agent.remove_all_containers();
}
