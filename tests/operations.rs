//! End to end: a day of operations with berthctl against a real agent —
//! applies never remove a service silently (`--prune`), `apply -f -` reads
//! stdin, `diff` shows old → new values and `--exit-code`, and
//! `-o json status` carries what the table shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn web(image: &str, replicas: u32, env: &str) -> String {
    format!(
        "[service.web]\nimage = \"{image}\"\nreplicas = {replicas}\n{env}\n\
         [service.web.update]\ndrain = \"100ms\"\n"
    )
}

fn worker(image: &str) -> String {
    format!(
        "[service.worker]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\nstop_timeout = \"1s\"\n"
    )
}

/// `berthctl ARGS` with `input` on stdin (not a terminal).
fn ctl_stdin(agent: &Agent, args: &[&str], input: &str) -> CtlOutput {
    let mut child = Command::new(berthctl_bin())
        .arg("--agent")
        .arg(agent.agent_flag())
        .args(args)
        .env_remove("BERTH_AGENT")
        .env_remove("BERTH_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berthctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("berthctl output").into()
}

fn write(agent: &Agent, name: &str, text: &str) -> String {
    let path = agent.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn service_names(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = agent.status_json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn apply_refuses_to_drop_a_service_without_prune() {
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let both = write(
        &agent,
        "both.toml",
        &format!("{}\n{}", web(&image, 1, ""), worker(&image)),
    );
    agent.ctl(&["apply", "-f", &both]).ok();
    agent.wait_for(30, "web and worker ready", |a| {
        (a.ready_of("web") == (1, 1) && a.ready_of("worker") == (1, 1)).then_some(())
    });

    // One service only, not on a terminal: refused, naming what would go.
    let one = write(&agent, "one.toml", &web(&image, 1, ""));
    let out = agent.ctl(&["apply", "-f", &one]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("`worker`") && out.stderr.contains("--prune"),
        "{}",
        out.stderr
    );
    // API users get the same refusal, with the services listed.
    let r = agent.api("PUT", "/v1/manifest", &[], web(&image, 1, "").as_bytes());
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "would_remove");
    assert_eq!(
        r.json()["error"]["details"]["services"],
        serde_json::json!(["worker"])
    );
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    assert_eq!(
        revs.as_array().unwrap().len(),
        1,
        "nothing recorded: {revs}"
    );
    assert_eq!(service_names(&agent), ["web", "worker"]);
    assert_eq!(agent.ready_of("worker"), (1, 1));

    // From stdin, with --prune: worker goes.
    let out = ctl_stdin(
        &agent,
        &["apply", "--prune", "-f", "-"],
        &web(&image, 1, ""),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("applied as revision 2"),
        "{}",
        out.stdout
    );
    agent.wait_for(30, "worker's container removed", |a| {
        a.containers()
            .iter()
            .all(|c| c["service"] != "worker")
            .then_some(())
    });
    assert_eq!(service_names(&agent), ["web"]);
}

#[test]
fn apply_from_stdin_names_stdin_in_errors() {
    let agent = Agent::start();
    let out = ctl_stdin(&agent, &["apply", "-f", "-"], "[service.web]\nimage = 1\n");
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("stdin.toml:2"), "{}", out.stderr);
}

#[test]
fn diff_shows_old_and_new_values_and_exit_code() {
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let v1 = write(
        &agent,
        "v1.toml",
        &web(&image, 1, "env = { GREETING = \"hello\" }"),
    );
    agent.ctl(&["apply", "-f", &v1]).ok();
    agent.wait_for(30, "web ready", |a| {
        (a.ready_of("web") == (1, 1)).then_some(())
    });

    // The same manifest: no changes, --exit-code 0.
    let out = agent.ctl(&["diff", "--exit-code", "-f", &v1]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    let v2 = write(
        &agent,
        "v2.toml",
        &web(&image, 3, "env = { GREETING = \"s3cret-value\" }"),
    );
    let out = agent.ctl(&["diff", "--exit-code", "-f", &v2]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("replicas 1 -> 3"), "{}", out.stdout);
    assert!(
        out.stdout.contains("env.GREETING set -> changed"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("s3cret"),
        "env values stay hidden: {}",
        out.stdout
    );
    // Without --exit-code a diff with changes is a success.
    let out = agent.ctl(&["diff", "-f", &v2]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // An error is 2 with --exit-code.
    let out = agent.ctl(&["diff", "--exit-code", "-f", "/nonexistent/m.toml"]);
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    // Nothing was recorded.
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    assert_eq!(revs.as_array().unwrap().len(), 1, "{revs}");
}
