//! End to end: manifests written the way a Compose user writes them —
//! `command` replaces only the image's Cmd (the entrypoint script still runs),
//! `entrypoint` replaces both, env names with dots reach the process, and a
//! writable volume has one writer (refused with file:line:col, shown by diff).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

/// An official-image-style entrypoint: first-run setup, then `exec "$@"`.
/// It prints the environment it was started with (from /proc: a shell drops
/// names that are not identifiers from its own exports, the kernel does not).
const ENTRY: &str = "#!/bin/sh\necho \"ENTRY setup, args: $*\"\ntr '\\0' '\\n' < /proc/$$/environ | grep -E '^(spring|my-)' | sort\nexec \"$@\"\n";

fn push_entry_image(reg: &TestRegistry) -> String {
    let img = ImageBuilder::busybox()
        .layer(LayerBuilder::new(Compression::Gzip).file("/entry.sh", ENTRY.as_bytes(), 0o755))
        .entrypoint(&["/entry.sh"])
        .cmd(&["echo", "IMAGE-CMD"])
        .build()
        .unwrap();
    reg.push("shop/entry", "1", &img).unwrap();
    reg.image("shop/entry:1")
}

fn logs_containing(agent: &Agent, service: &str, needle: &str) -> String {
    agent.wait_for(30, needle, |a| {
        let out = a.ctl(&["logs", service]);
        out.stdout.contains(needle).then_some(out.stdout)
    })
}

#[test]
fn command_replaces_cmd_only_and_entrypoint_replaces_both() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_entry_image(&reg);
    let agent = Agent::start();
    let text = format!(
        r#"[service.db]
image = "{image}"
command = ["sh", "-c", "echo CMD-RAN; exec sleep 3600"]
env = {{ "spring.profiles.active" = "prod", "my-feature-flag" = "on" }}

[service.plain]
image = "{image}"

[service.over]
image = "{image}"
entrypoint = ["/bin/busybox", "sh", "-c", "echo OVERRIDE $0; exec sleep 3600"]
"#
    );
    agent.apply_text("stack.toml", &text).ok();

    // Compose's `command`: the entrypoint script ran first, with the command as its args.
    let db = logs_containing(&agent, "db", "CMD-RAN");
    assert!(
        db.contains("ENTRY setup, args: sh -c echo CMD-RAN; exec sleep 3600"),
        "{db}"
    );
    // Env names Docker accepts reach the process as written.
    assert!(db.contains("spring.profiles.active=prod"), "{db}");
    assert!(db.contains("my-feature-flag=on"), "{db}");
    // No command: the image's Entrypoint + Cmd.
    let plain = logs_containing(&agent, "plain", "IMAGE-CMD");
    assert!(
        plain.contains("ENTRY setup, args: echo IMAGE-CMD"),
        "{plain}"
    );
    // `entrypoint` replaces the script and clears the image's Cmd (no IMAGE-CMD arg).
    let over = logs_containing(&agent, "over", "OVERRIDE");
    assert!(!over.contains("ENTRY"), "{over}");
    assert!(
        over.contains("OVERRIDE sh"),
        "$0 is the argv after -c: {over}"
    );
    assert!(!over.contains("IMAGE-CMD"), "{over}");
    agent.remove_all_containers();
}

#[test]
fn a_writable_volume_has_one_writer_unless_shared() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.toml");
    let body = "[service.db]\nimage = \"127.0.0.1:5000/db:1\"\nreplicas = 2\n\n[[service.db.volumes]]\nname = \"pgdata\"\ntarget = \"/var/lib/postgresql/data\"\n";
    std::fs::write(&path, body).unwrap();
    let out = ctl(&["validate".into(), "-f".into(), path.display().to_string()]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let want = format!("{}:3:12: service.db.replicas:", path.display());
    assert!(
        out.stderr.contains(&want),
        "want {want} in:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("volume `pgdata`") && out.stderr.contains("shared = true"),
        "{}",
        out.stderr
    );

    // Marked shared, several writers are the user's stated intent.
    std::fs::write(&path, format!("{body}shared = true\n")).unwrap();
    ctl(&["validate".into(), "-f".into(), path.display().to_string()]).ok();

    // One replica: valid, and `apply --dry-run` says it updates stop-first.
    let agent = Agent::start();
    std::fs::write(&path, body.replace("replicas = 2", "replicas = 1")).unwrap();
    let out = agent
        .ctl(&["apply", "--dry-run", "-f", path.to_str().unwrap()])
        .ok();
    assert!(
        out.stdout
            .contains("updates stop-first: volume `pgdata` at /var/lib/postgresql/data"),
        "{}",
        out.stdout
    );
}
