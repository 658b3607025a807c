//! End to end: applies and what operators read back, against a real agent —
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
    berth_agent::require_root!();
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
    berth_agent::require_root!();
    let agent = Agent::start();
    let out = ctl_stdin(&agent, &["apply", "-f", "-"], "[service.web]\nimage = 1\n");
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("stdin.toml:2"), "{}", out.stderr);
}

#[test]
fn diff_shows_old_and_new_values_and_exit_code() {
    berth_agent::require_root!();
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

/// The rows of the table starting at `header` (a line of `text`), as maps of
/// column title → cell, cut at the header's column positions.
fn table(text: &str, first_title: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(first_title))
        .unwrap_or_else(|| panic!("no {first_title} table in:\n{text}"));
    let header = lines[start];
    // Titles are separated by two or more spaces.
    let mut cols: Vec<(usize, String)> = Vec::new();
    let mut i = 0;
    while i < header.len() {
        let rest = &header[i..];
        let end = rest.find("  ").unwrap_or(rest.len());
        cols.push((i, rest[..end].to_string()));
        let after = &rest[end..];
        i += end + (after.len() - after.trim_start().len());
        if end == rest.len() {
            break;
        }
    }
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            cols.iter()
                .enumerate()
                .map(|(n, (at, title))| {
                    let end = cols.get(n + 1).map(|c| c.0).unwrap_or(l.len()).min(l.len());
                    let cell = l.get((*at).min(l.len())..end).unwrap_or("").trim();
                    (title.clone(), cell.to_string())
                })
                .collect()
        })
        .collect()
}

#[test]
fn status_json_carries_everything_the_table_shows() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let port = free_port();
    let text = format!(
        "{}\n[[service.web.ports]]\ncontainer = 8080\nhost = {port}\nhost_ip = \"127.0.0.1\"\n\n\
         [service.web.health]\nhttp = {{ port = 8080, path = \"/index.html\" }}\ninterval = \"300ms\"\n\n{}",
        web(&image, 2, ""),
        worker(&image)
    );
    let path = write(&agent, "m.toml", &text);
    agent.ctl(&["apply", "-f", &path]).ok();
    agent.wait_for(30, "everything ready and healthy", |a| {
        let ready = a.ready_of("web") == (2, 2) && a.ready_of("worker") == (1, 1);
        let healthy = a
            .containers()
            .iter()
            .filter(|c| c["service"] == "web")
            .all(|c| c["health"] == "healthy");
        let complete = a.api("GET", "/v1/revisions", &[], b"").json()[0]["state"] == "complete";
        (ready && healthy && complete).then_some(())
    });

    let table_out = agent.ctl(&["status"]).ok().stdout;
    let json: serde_json::Value =
        serde_json::from_str(&agent.ctl(&["-o", "json", "status"]).ok().stdout).unwrap();

    // The header line: version and revision.
    let head = table_out.lines().next().unwrap();
    assert!(
        head.contains(json["agent"]["version"].as_str().unwrap()),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "revision {} ({}, {})",
            json["revision"]["number"],
            json["revision"]["source"].as_str().unwrap(),
            json["revision"]["state"].as_str().unwrap()
        )),
        "{head}\n{json}"
    );

    let services = table(&table_out, "SERVICE ");
    let json_services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), json_services.len(), "{table_out}\n{json}");
    assert_eq!(services.len(), 2);
    for (row, s) in services.iter().zip(json_services) {
        assert_eq!(row["SERVICE"], s["name"].as_str().unwrap());
        assert_eq!(
            row["READY"],
            format!("{}/{}", s["replicas_ready"], s["replicas_desired"])
        );
        let digest = s["digest"].as_str().unwrap();
        let hex = &digest.split_once(':').unwrap().1[..12];
        assert_eq!(
            row["IMAGE"],
            format!("{} ({hex})", s["image"].as_str().unwrap())
        );
        assert_eq!(row["RESTARTS"], s["restarts"].to_string());
        assert_eq!(row["LAST ERROR"], s["last_error"].as_str().unwrap_or(""));
    }

    let containers = table(&table_out, "CONTAINER ");
    let json_containers = json["containers"].as_array().expect("containers in JSON");
    assert_eq!(containers.len(), 3, "{table_out}");
    assert_eq!(
        containers.len(),
        json_containers.len(),
        "{table_out}\n{json}"
    );
    for (row, c) in containers.iter().zip(json_containers) {
        assert_eq!(row["CONTAINER"], c["id"].as_str().unwrap());
        assert_eq!(row["SERVICE"], c["service"].as_str().unwrap());
        assert_eq!(row["STATE"], c["state"].as_str().unwrap());
        assert_eq!(row["HEALTH"], c["health"].as_str().unwrap());
        assert_eq!(row["IP"], c["ip"].as_str().unwrap_or("-"));
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(row["PORTS"], ports.join(", "));
        assert_eq!(row["REV"], c["revision"].to_string());
    }
    // What the user checks: web's replicas are running, healthy, on the
    // published port, with an address.
    let web: Vec<_> = json_containers
        .iter()
        .filter(|c| c["service"] == "web")
        .collect();
    assert_eq!(web.len(), 2);
    for c in web {
        assert_eq!(c["state"], "running");
        assert_eq!(c["health"], "healthy");
        assert!(c["ip"].as_str().is_some_and(|ip| !ip.is_empty()), "{c}");
        assert!(c["ports"].to_string().contains(&port.to_string()), "{c}");
    }
}

#[test]
fn wait_says_rolled_out_only_once_removed_services_are_gone() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let both = write(
        &agent,
        "both.toml",
        &format!("{}\n{}", web(&image, 1, ""), worker(&image)),
    );
    agent
        .ctl(&["apply", "--wait", "--timeout", "60s", "-f", &both])
        .ok();
    let worker_id = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "worker")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .unwrap();
    let one = write(&agent, "one.toml", &web(&image, 1, ""));
    let out = agent.ctl(&["apply", "--prune", "--wait", "--timeout", "60s", "-f", &one]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("revision 2 rolled out"),
        "{}",
        out.stdout
    );
    // Progress names what still drains (not a terminal: one line per change).
    assert!(
        out.stderr
            .contains("revision 2: web 1/1 ready, 1/1 updated, worker 1 draining (removed)"),
        "{}",
        out.stderr
    );
    // Its veth and mounts are gone too, not only the container (the kernel
    // deletes a veth with its namespace, a moment later).
    agent.settle_links([&worker_id], false);
    let veth = berth_agent::network::veth_name(&agent.bridge(), &worker_id);
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "veth {veth} of the removed worker remains"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&worker_id),
        "mounts of the removed worker remain"
    );
    // An empty manifest: rolled out once nothing of the host's is left.
    let web_id = agent.containers()[0]["id"].as_str().unwrap().to_string();
    let empty = write(&agent, "empty.toml", "# nothing\n");
    let out = agent.ctl(&[
        "apply",
        "--prune",
        "--wait",
        "--timeout",
        "60s",
        "-f",
        &empty,
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("revision 3 rolled out"),
        "{}",
        out.stdout
    );
    assert!(agent.containers().is_empty());
    agent.settle_links([&web_id], false);
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let veth = berth_agent::network::veth_name(&agent.bridge(), &web_id);
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&veth));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&web_id), "mounts of {web_id} remain");
    // The worker (sleep as PID 1 ignores SIGTERM, so it is killed after its
    // grace period) is gone by the time wait says so.
    let left: Vec<_> = agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == "worker")
        .collect();
    assert!(left.is_empty(), "rolled out while worker remains: {left:?}");
}

#[test]
fn a_revision_replaced_mid_rollout_is_superseded() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let health = "[service.web.health]\nhttp = { port = 8080, path = \"/index.html\" }\ninterval = \"300ms\"\n";
    let v1 = write(
        &agent,
        "v1.toml",
        &format!("{}{health}", web(&image, 1, "")),
    );
    agent
        .ctl(&["apply", "--wait", "--timeout", "60s", "-f", &v1])
        .ok();
    let v2 = write(
        &agent,
        "v2.toml",
        &format!("{}{health}", web(&image, 1, "env = { V = \"2\" }")),
    );
    let v3 = write(
        &agent,
        "v3.toml",
        &format!("{}{health}", web(&image, 1, "env = { V = \"3\" }")),
    );
    agent.ctl(&["apply", "-f", &v2]).ok();
    agent
        .ctl(&["apply", "--wait", "--timeout", "60s", "-f", &v3])
        .ok();
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    let states: Vec<&str> = revs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["complete", "superseded", "complete"], "{revs}");
}

#[test]
fn rollback_wait_follows_the_rollout_back() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let v1 = write(&agent, "v1.toml", &web(&image, 2, "env = { V = \"1\" }"));
    let v2 = write(&agent, "v2.toml", &web(&image, 2, "env = { V = \"2\" }"));
    for f in [&v1, &v2] {
        agent
            .ctl(&["apply", "--wait", "--timeout", "60s", "-f", f])
            .ok();
    }
    let out = agent.ctl(&["rollback", "--wait", "--timeout", "60s"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("rolled back as revision 3"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("revision 3 rolled out"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("revision 3: web 2/2 ready, 2/2 updated"),
        "{}",
        out.stderr
    );
    // Rolled out means only the restored spec runs: nothing of v2 is left.
    let revisions: Vec<String> = agent
        .containers()
        .iter()
        .map(|c| c["revision"].to_string())
        .collect();
    assert_eq!(revisions, ["3", "3"], "only replicas the rollback started");
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    assert_eq!(revs[2]["state"], "complete");
    assert_eq!(revs[2]["source"], "rollback:1");
}
