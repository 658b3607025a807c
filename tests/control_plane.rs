//! End to end: the control plane with the real binaries on temp dirs —
//! apply, history, diff, crash safety, auth, socket permissions, metrics,
//! and bad input that must be refused while the agent keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use berth_e2e::*;

#[test]
fn every_example_manifest_validates() {
    let dir = workspace_root().join("manifests");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = ctl(&["validate".into(), "-f".into(), path.display().to_string()]);
            assert_eq!(
                out.code,
                0,
                "{} does not validate:\n{}",
                path.display(),
                out.stderr
            );
            assert!(out.stdout.contains("valid"), "{}", out.stdout);
            count += 1;
        }
    }
    assert!(
        count >= 2,
        "expected example manifests in {}",
        dir.display()
    );
    let out = ctl(&["validate".into(), "-f".into(), dir.display().to_string()]);
    assert_eq!(out.code, 0, "manifests/ as a directory: {}", out.stderr);
}

#[test]
fn validate_names_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[service.web]\nimage = \"busybox\"\n\n[service.web.resources]\nmemroy = \"1G\"\n",
    )
    .unwrap();
    let out = ctl(&["validate".into(), "-f".into(), path.display().to_string()]);
    assert_eq!(out.code, 1);
    let want = format!("{}:5:1: service.web.resources.memroy:", path.display());
    assert!(
        out.stderr.contains(&want),
        "wanted {want:?} in:\n{}",
        out.stderr
    );

    std::fs::write(
        dir.path().join("a.toml"),
        "[service.web]\nimage = \"busybox\"\n",
    )
    .unwrap();
    std::fs::write(&path, "[service.web]\nimage = \"busybox:2\"\n").unwrap();
    let out = ctl(&[
        "validate".into(),
        "-f".into(),
        dir.path().display().to_string(),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("a.toml")
            && out.stderr.contains("bad.toml")
            && out.stderr.contains("defined in both"),
        "{}",
        out.stderr
    );
}

#[test]
fn apply_history_diff_and_kill9_after_ack() {
    berth_agent::require_root!();
    let mut agent = Agent::start();
    let (reg, hello) = hello_manifest(&agent);
    let out = agent.ctl(&["apply", "-f", hello.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains("applied as revision 1"),
        "{}",
        out.stdout
    );

    let out = agent.ctl(&["-o", "json", "history"]).ok();
    let revs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(revs.as_array().unwrap().len(), 1);
    assert_eq!(revs[0]["number"], 1);
    assert_eq!(revs[0]["services"][0], "hello");

    // Re-applying the same manifest records nothing new.
    let out = agent.ctl(&["apply", "-f", hello.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("unchanged"), "{}", out.stdout);

    // diff shows the change before it is applied, and records nothing.
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("hello.toml");
    let hello_text = std::fs::read_to_string(&hello).unwrap();
    let v2_text = hello_text.replacen(
        "replicas = 2",
        "replicas = 3\nenv      = { GREETING = \"v2\" }",
        1,
    );
    assert_ne!(v2_text, hello_text);
    let _ = &reg;
    std::fs::write(&v2, v2_text).unwrap();
    let out = agent.ctl(&["diff", "-f", v2.to_str().unwrap()]).ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("hello") && l.contains("modified"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.contains("2 -> 3") && line.contains("env"), "{line}");
    let out = agent
        .ctl(&["-o", "json", "diff", "-f", v2.to_str().unwrap()])
        .ok();
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["changes"][0]["fields"], serde_json::json!(["env"]));
    assert_eq!(plan["dry_run"], true);
    let revs = agent.ctl(&["-o", "json", "history"]).ok();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&revs.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Apply, then kill -9 right after the acknowledgement: the revision survives.
    let out = agent.ctl(&["apply", "-f", v2.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains("applied as revision 2"),
        "{}",
        out.stdout
    );
    agent.kill9();
    agent.spawn();
    let out = agent.ctl(&["history"]).ok();
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", out.stdout);
    assert!(rows[1].starts_with('2'), "{}", out.stdout);
    let status = agent.ctl(&["status"]).ok();
    assert!(
        status.stdout.contains("revision 2") && status.stdout.contains("/3"),
        "{}",
        status.stdout
    );
}

#[test]
fn metrics_pass_promtool_and_count_refusals() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let bad = agent.api("PUT", "/v1/manifest", &[], b"[service.x]\nimage = 1\n");
    assert_eq!(bad.status, 422);
    let reply = agent.http("GET", "/metrics");
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(
        text.contains("berth_manifest_apply_errors_total{source=\"api\"} 1"),
        "{text}"
    );
    assert!(text.contains("berth_build_info{version="), "{text}");
    assert_promtool_ok(&text);
}

#[test]
fn health_and_readiness_endpoints() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    assert_eq!(agent.http("GET", "/healthz").status, 200);
    assert_eq!(agent.http("GET", "/readyz").status, 200);
    // A service nobody declared is unknown; a declared one with no ready replica is 503.
    let r = agent.http("GET", "/v1/services/nope/ready");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    agent
        .ctl(&["apply", "-f", hello.clone().to_str().unwrap()])
        .ok();
    // 200 once a replica is ready; host drain turns it to 503 and back.
    agent.wait_for(30, "hello ready", |a| {
        (a.http("GET", "/v1/services/hello/ready").status == 200).then_some(())
    });
    let out = agent.ctl(&["drain", "on"]).ok();
    assert!(out.stdout.contains("draining"), "{}", out.stdout);
    let r = agent.http("GET", "/v1/services/hello/ready");
    assert_eq!(r.status, 503);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("draining"));
    assert_eq!(agent.status_json()["agent"]["draining"], true);
    agent.ctl(&["drain", "off"]).ok();
    assert_eq!(agent.http("GET", "/v1/services/hello/ready").status, 200);
    // The read-only listener does not take writes.
    let r = http_tcp(agent.http_port, "PUT", "/v1/manifest", &[], b"").unwrap();
    assert!(r.status == 404 || r.status == 405, "{}", r.status);
}

/// Plain TCP (`--api-insecure`, warned about at start) still requires the
/// token; HTTPS is tested in api_tls.rs.
#[test]
fn tcp_api_requires_the_bearer_token() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let port = free_port();
    let agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-token-file",
        token_file.to_str().unwrap(),
        "--api-insecure",
    ]);
    assert!(
        agent.log().contains("plain HTTP (--api-insecure)") && agent.log().contains("WARN"),
        "{}",
        agent.log()
    );
    let none = http_tcp(port, "GET", "/v1/status", &[], b"").unwrap();
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], "unauthorized");
    assert!(none
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let wrong = http_tcp(
        port,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer s3cret-tokem")],
        b"",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let good = http_tcp(
        port,
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer s3cret-token")],
        b"",
    )
    .unwrap();
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(good.json()["agent"]["ready"], true);

    // berthctl over TCP: works with the token, one clear line without it.
    let addr = format!("http://127.0.0.1:{port}");
    let out = ctl(&[
        "--agent".into(),
        addr.clone(),
        "--token-file".into(),
        token_file.display().to_string(),
        "status".into(),
    ])
    .ok();
    assert!(out.stdout.contains("berthd"), "{}", out.stdout);
    let out = ctl(&["--agent".into(), addr, "status".into()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("unauthorized") && out.stderr.trim().lines().count() == 1,
        "{}",
        out.stderr
    );
    drop(agent);
}

#[test]
fn the_api_socket_is_root_only() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let mode = std::fs::metadata(agent.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(agent.run_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let state_mode = std::fs::metadata(agent.state_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(state_mode, 0o700);
    // An unprivileged user gets one clear line, not a stack of errors. The
    // temp dir must be traversable for the check to reach the socket itself.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(agent.run_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(berthctl_bin())
        .args(["--agent", &agent.agent_flag(), "status"])
        .output()
        .unwrap();
    std::fs::set_permissions(agent.run_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("root-only"),
        "{stderr}"
    );
}

#[test]
fn unreachable_agent_is_one_clear_line() {
    let out = ctl(&[
        "--agent".into(),
        "unix:/nonexistent/berth.sock".into(),
        "status".into(),
    ]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach berthd") && out.stderr.contains("is berthd running"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let out = ctl(&[
        "--agent".into(),
        format!("http://127.0.0.1:{}", free_port()),
        "history".into(),
    ]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot reach berthd"), "{}", out.stderr);
}

#[test]
fn bad_input_gets_json_4xx_and_the_agent_keeps_serving() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    agent
        .ctl(&["apply", "-f", hello.clone().to_str().unwrap()])
        .ok();

    let garbage = agent.api("PUT", "/v1/manifest", &[], b"\x00\x01 this is ] not toml");
    assert_eq!(garbage.status, 422, "{}", garbage.text());
    assert_eq!(garbage.json()["error"]["code"], "invalid_manifest");

    let unknown = agent.api(
        "PUT",
        "/v1/manifest",
        &[],
        b"[service.web]\nimage = \"busybox\"\nreplica = 3\n",
    );
    assert_eq!(unknown.status, 422);
    let problem = &unknown.json()["error"]["details"]["problems"][0];
    assert_eq!(problem["key"], "service.web.replica");
    assert_eq!(
        (problem["line"].as_u64(), problem["column"].as_u64()),
        (Some(3), Some(1))
    );

    let big = vec![b'#'; 10 << 20];
    let too_big = agent.api("PUT", "/v1/manifest", &[], &big);
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    assert_eq!(too_big.json()["error"]["code"], "body_too_large");

    let bad_json = agent.api(
        "PUT",
        "/v1/manifest",
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(bad_json.status, 400);
    assert_eq!(bad_json.json()["error"]["code"], "bad_json");

    let missing = agent.api("GET", "/v1/nothing-here", &[], b"");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");

    let wrong_method = agent.api("DELETE", "/v1/revisions", &[], b"");
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["error"]["message"].is_string());

    // Nothing already stored was lost, and the agent still answers.
    let revs = agent.api("GET", "/v1/revisions", &[], b"");
    assert_eq!(revs.status, 200);
    assert_eq!(revs.json().as_array().unwrap().len(), 1);
    let events = agent.api("GET", "/v1/events", &[], b"").json();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "apply-refused"),
        "{events}"
    );
}

#[test]
fn events_follow_streams_new_events() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    let mut child = Command::new(berthctl_bin())
        .args(["--agent", &agent.agent_flag(), "events", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    agent
        .ctl(&["apply", "-f", hello.clone().to_str().unwrap()])
        .ok();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            let applied = line.contains("revision-applied");
            seen.push(line);
            if applied {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("agent-started")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("revision-applied") && l.contains("revision 1")),
        "{seen:?}"
    );
}

#[test]
fn events_survive_kill9_and_filter_by_service_kind_and_since() {
    berth_agent::require_root!();
    let mut agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    agent.ctl(&["apply", "-f", hello.to_str().unwrap()]).ok();
    agent.wait_for(30, "hello ready", |a| {
        (a.ready_of("hello") == (2, 2)).then_some(())
    });
    let events = |a: &Agent, args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["-o", "json", "events"];
        all.extend_from_slice(args);
        a.ctl(&all)
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let before = events(&agent, &[]);
    assert!(before.len() >= 4, "{before:?}");
    // sled writes its log every 500 ms; a kill -9 later than that loses
    // nothing (3 s: the flush's fsync on a busy disk).
    std::thread::sleep(std::time::Duration::from_secs(3));
    agent.kill9();
    agent.spawn();
    let after = events(&agent, &[]);
    let seqs = |v: &[serde_json::Value]| -> Vec<u64> {
        v.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(
        seqs(&after)[..before.len()],
        seqs(&before)[..],
        "every event before the kill is kept, in order"
    );
    assert!(
        after.len() > before.len(),
        "the new agent's start is recorded too"
    );
    assert!(
        seqs(&after).windows(2).all(|w| w[0] < w[1]),
        "seq continues"
    );
    // Filters.
    let hello_only = events(&agent, &["--service", "hello"]);
    assert!(!hello_only.is_empty() && hello_only.iter().all(|e| e["service"] == "hello"));
    let started = events(&agent, &["--kind", "agent-started"]);
    assert_eq!(started.len(), 2, "{started:?}");
    // Everything so far is within the hour (health events may have come since).
    let since = events(&agent, &["--since", "1h"]);
    assert_eq!(seqs(&since)[..after.len()], seqs(&after)[..]);
    assert!(events(&agent, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let bad = agent.ctl(&["events", "--since", "yesterday"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("yesterday"), "{}", bad.stderr);
}

/// The observability kit under deploy/: the alert rules pass `promtool check
/// rules` and the fleet's scrape config `promtool check config`, and every `berth_*` / `process_*` metric the rules and the Grafana
/// dashboard use is one berthd declares (other names — `up`, node_exporter's —
/// come from elsewhere); the running agent exports the process metrics.
#[test]
fn alert_rules_and_dashboard_use_only_exported_metrics() {
    berth_agent::require_root!();
    let deploy = workspace_root().join("deploy");
    let rules = deploy.join("prometheus/berth-alerts.yml");
    // The rules, and the fleet's scrape config (docs/fleet.md) that loads them.
    for (what, file) in [
        ("rules", rules.clone()),
        ("config", deploy.join("prometheus/prometheus.yml")),
    ] {
        let out = Command::new("promtool")
            .args(["check", what])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check {what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard = std::fs::read_to_string(deploy.join("grafana/berth-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let text = std::fs::read_to_string(&rules).unwrap() + &dashboard;
    let declared = berth_agent::metrics::Metrics::new().declared_names();
    let mut used = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("berth_") || word.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s).filter(|b| declared.contains(*b)))
                .unwrap_or(word);
            used.insert(base.to_string());
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !declared.contains(*n)).collect();
    assert!(unknown.is_empty(), "not exported by berthd: {unknown:?}");
    // The process collector really runs in berthd.
    let agent = Agent::start();
    let metrics = http_tcp(agent.http_port, "GET", "/metrics", &[], b"")
        .unwrap()
        .text();
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "berth_store_bytes{part=\"blobs\"}",
        "berth_last_reconcile_success_timestamp_seconds",
        "berth_host_draining 0",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert_promtool_ok(&metrics);
}

/// `berthctl status | head -1`: every printing command whose reader has gone
/// ends quietly with success, never a panic.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    berth_agent::require_root!();
    let agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    agent.ctl(&["apply", "-f", hello.to_str().unwrap()]).ok();
    let hello = hello.to_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["ps"],
        vec!["-o", "json", "status"],
        vec!["history"],
        vec!["events"],
        vec!["images"],
        vec!["volumes"],
        vec!["-o", "json", "volumes"],
        vec!["top", "--interval", "100ms"],
        vec!["diff", "-f", &hello],
        vec!["validate", "-f", &hello],
        vec!["completions", "bash"],
        vec!["--help"],
    ];
    for args in commands {
        let mut child = Command::new(berthctl_bin())
            .arg("--agent")
            .arg(agent.agent_flag())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// The install step (scripts/install.sh) into a temp root: the unit passes
/// `systemd-analyze verify` (its man pages found), `man -l` renders both
/// pages, and the bash completion loads.
#[test]
fn install_step_unit_man_pages_and_completions() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/install.sh"))
        .env("PREFIX", r.join("usr"))
        .env("SYSCONFDIR", r.join("etc"))
        .env("UNITDIR", r.join("units"))
        .env("COMPLETIONS_PREFIX", r.join("share"))
        .env("BIN_SRC", bin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(r.join("units/berthd.service")).unwrap();
    for line in ["KillMode=process", "Type=notify", "Delegate=yes"] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(r.join("units/berthd.service"))
        .env("MANPATH", r.join("usr/share/man"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    for (page, needle) in [
        ("usr/share/man/man8/berthd.8", "--cgroup-parent"),
        ("usr/share/man/man1/berthctl.1", "--agent"),
        ("usr/share/man/man1/berthctl-apply.1", "--dry-run"),
    ] {
        let man = Command::new("man")
            .arg("-l")
            .arg(r.join(page))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&man.stdout);
        assert!(
            man.status.success() && text.contains(needle),
            "{page}: {text}"
        );
    }
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p berthctl",
            r.join("share/bash-completion/completions/berthctl")
                .display()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bash.stdout).contains("-F _berthctl berthctl"),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
}

/// `Type=notify`: READY=1 once the first reconcile pass is done (the agent
/// answers /readyz), STOPPING=1 on SIGTERM — over `$NOTIFY_SOCKET`.
#[test]
fn systemd_hears_ready_and_stopping() {
    berth_agent::require_root!();
    let mut agent = Agent::create(&[]);
    let path = agent.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    agent.env = vec![("NOTIFY_SOCKET".into(), path.display().to_string())];
    agent.spawn();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert_eq!(
        http_tcp(agent.http_port, "GET", "/readyz", &[], b"")
            .unwrap()
            .status,
        200,
        "ready was sent only once the agent is ready"
    );
    assert!(agent.terminate().success());
    let n = sock.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
}

#[test]
fn sigterm_shuts_down_cleanly_and_a_second_agent_is_refused() {
    berth_agent::require_root!();
    let mut agent = Agent::start();
    // A second agent on the same state dir must refuse to start.
    let out = Command::new(berthd_bin())
        .args(["--state-dir", agent.state_dir().to_str().unwrap()])
        .args(["--run-dir", agent.dir.path().join("run2").to_str().unwrap()])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another berthd already uses state dir"));
    let status = agent.terminate();
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    assert!(!agent.socket().exists(), "socket left behind");
    assert!(agent.log().contains("stopped"));
}

#[test]
fn a_broken_database_is_moved_aside_and_history_rebuilt() {
    berth_agent::require_root!();
    let mut agent = Agent::start();
    let (_reg, hello) = hello_manifest(&agent);
    agent
        .ctl(&["apply", "-f", hello.clone().to_str().unwrap()])
        .ok();
    agent.terminate();
    let db = agent.state_dir().join("db");
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::write(&db, b"garbage").unwrap();
    agent.spawn();
    let out = agent.ctl(&["-o", "json", "history"]).ok();
    let revs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(revs.as_array().unwrap().len(), 1, "{}", out.stdout);
    assert!(agent.log().contains("moving it aside"), "{}", agent.log());
    let aside = std::fs::read_dir(agent.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("db.broken-"));
    assert!(aside);
}
