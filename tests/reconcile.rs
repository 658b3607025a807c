//! End to end: the reconciler with a real registry, the real kernel and the
//! real binaries — services come up healthy, every change is a replacement,
//! failures halt and roll back, crashes restart with backoff, drift is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn web_manifest(image: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"
[service.web]
image = "{image}"
replicas = {replicas}
{extra}

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "300ms"
timeout = "500ms"
retries = 2

[service.web.update]
drain = "100ms"
"#
    )
}

#[test]
fn two_services_come_up_running_and_healthy() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let text = format!(
        "{}\n[service.worker]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\nreplicas = 1\n",
        web_manifest(&image, 2, "")
    );
    let out = agent.apply_text("m.toml", &text);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    agent.wait_for(30, "web 2/2 and worker 1/1 ready", |a| {
        (a.ready_of("web") == (2, 2) && a.ready_of("worker") == (1, 1)).then_some(())
    });
    let containers = agent.containers();
    assert_eq!(containers.len(), 3, "{containers:?}");
    assert!(containers.iter().all(|c| c["state"] == "running"));
    let web: Vec<_> = containers
        .iter()
        .filter(|c| c["service"] == "web")
        .collect();
    assert!(web.iter().all(|c| c["health"] == "healthy"), "{web:?}");
    // The revision records the digest the tag resolved to.
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    let digest = revs[0]["digests"]["web"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    agent.wait_for(10, "revision complete", |a| {
        (a.api("GET", "/v1/revisions", &[], b"").json()[0]["state"] == "complete").then_some(())
    });
}

fn revisions(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .api("GET", "/v1/revisions", &[], b"")
        .json()
        .as_array()
        .cloned()
        .unwrap()
}

fn ids_of(agent: &Agent, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = agent
        .containers()
        .iter()
        .filter(|c| c["service"] == service)
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn running_ids(agent: &Agent, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = agent
        .containers()
        .iter()
        .filter(|c| c["service"] == service && c["state"] == "running")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn events(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .api("GET", "/v1/events", &[], b"")
        .json()
        .as_array()
        .cloned()
        .unwrap()
}

/// The service has `n` running replicas and `n` ready.
/// A registry with `tag` pushed (body "v1"), an agent, and `replicas` web
/// replicas of it applied and ready.
fn web_running(tag: &str, replicas: u32) -> (TestRegistry, String, Agent) {
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, tag, "v1");
    let agent = Agent::start();
    agent
        .apply_text("m.toml", &web_manifest(&image, replicas, ""))
        .ok();
    agent.wait_for(30, &format!("web {replicas}/{replicas}"), |a| {
        web_ready(a, "web", u64::from(replicas))
    });
    (reg, image, agent)
}

fn web_ready(agent: &Agent, service: &str, n: u64) -> Option<()> {
    (agent.ready_of(service) == (n, n) && running_ids(agent, service).len() as u64 == n)
        .then_some(())
}

#[test]
fn a_new_digest_under_the_same_tag_rolls_out_with_pull_check() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:stable", "v1");
    let agent = Agent::start();
    let out = agent.apply_text(
        "m.toml",
        &web_manifest(&image, 2, "[service.web.pull]\ncheck = \"1s\"\n"),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    agent.wait_for(30, "web 2/2", |a| web_ready(a, "web", 2));
    let old = ids_of(&agent, "web");
    let first_digest = revisions(&agent)[0]["digests"]["web"]
        .as_str()
        .unwrap()
        .to_string();

    push_web_image(&reg, "shop/web:stable", "v2");
    let new = agent.wait_for(40, "a replacement with the new digest", |a| {
        let revs = revisions(a);
        let ids = ids_of(a, "web");
        (revs.len() == 2
            && ids.len() == 2
            && ids.iter().all(|i| !old.contains(i))
            && web_ready(a, "web", 2).is_some())
        .then_some(ids)
    });
    let revs = revisions(&agent);
    let second_digest = revs[1]["digests"]["web"].as_str().unwrap();
    assert_ne!(
        second_digest, first_digest,
        "history must show both digests"
    );
    assert_eq!(revs[1]["source"], "pull-check");
    assert_eq!(new.len(), 2);
    // Old containers are gone from disk, not just stopped.
    for id in &old {
        assert!(
            !agent.state_dir().join("containers").join(id).exists(),
            "{id} left behind"
        );
    }
    let history = agent.ctl(&["history"]).ok().stdout;
    assert!(
        history.contains(&first_digest["sha256:".len()..][..12])
            && history.contains(&second_digest["sha256:".len()..][..12]),
        "{history}"
    );
}

fn assert_rollout_fails_and_rolls_back(bad_extra: &str, what: &str) {
    let (_reg, image, agent) = web_running("shop/web:1", 2);
    agent.wait_for(10, "revision 1 complete", |a| {
        (revisions(a)[0]["state"] == "complete").then_some(())
    });
    let old = running_ids(&agent, "web");

    agent
        .apply_text("m2.toml", &web_manifest(&image, 2, bad_extra))
        .ok();
    agent.wait_for(60, &format!("rollback after {what}"), |a| {
        let revs = revisions(a);
        (revs.len() == 3
            && revs[1]["state"] == "failed"
            && revs[2]["source"]
                .as_str()
                .unwrap_or("")
                .starts_with("rollback:1"))
        .then_some(())
    });
    agent.wait_for(30, "converged on the restored revision", |a| {
        (revisions(a)[2]["state"] == "complete" && ids_of(a, "web").len() == 2).then_some(())
    });
    // The old replicas kept serving the whole time and still do.
    assert_eq!(
        running_ids(&agent, "web"),
        old,
        "old replicas must never be replaced by a failed rollout"
    );
    assert_eq!(agent.ready_of("web"), (2, 2));
    let ev = events(&agent);
    assert!(ev.iter().any(|e| e["kind"] == "rollout-failed"), "{ev:?}");
    assert!(ev.iter().any(|e| e["kind"] == "rollback"), "{ev:?}");
    let metrics = agent.http("GET", "/metrics").text();
    assert!(
        metrics.contains("berth_rollouts_total{result=\"failed\",service=\"web\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_command_that_exits_at_once_halts_the_rollout_and_rolls_back() {
    berth_agent::require_root!();
    assert_rollout_fails_and_rolls_back(
        "command = [\"/bin/busybox\", \"sh\", \"-c\", \"exit 3\"]",
        "an exiting command",
    );
}

#[test]
fn a_replica_that_never_passes_its_health_check_halts_the_rollout_and_rolls_back() {
    berth_agent::require_root!();
    assert_rollout_fails_and_rolls_back(
        "command = [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"9999\", \"-h\", \"/www\"]",
        "a failing health check",
    );
}

#[test]
fn a_crashing_service_restarts_with_growing_delays() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // It runs long enough to count as ready (so it is no first deploy, which
    // would fail after three crashes), then crashes, again and again.
    let text = format!(
        "[service.crash]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 1.5; exit 1\"]\n[service.crash.restart]\npolicy = \"always\"\nbackoff = {{ initial = \"300ms\", max = \"5s\" }}\n"
    );
    agent.apply_text("m.toml", &text).ok();
    let starts = agent.wait_for(40, "five restarts", |a| {
        let ev = events(a);
        let started: Vec<String> = ev
            .iter()
            .filter(|e| e["kind"] == "container-started" && e["service"] == "crash")
            .map(|e| e["time"].as_str().unwrap().to_string())
            .collect();
        (started.len() >= 6).then_some(started)
    });
    let secs: Vec<f64> = starts.iter().map(|t| unix_seconds(t)).collect();
    let gaps: Vec<f64> = secs.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[4] > gaps[0] * 2.0, "delays must grow: {gaps:?}");
    let status = agent.api("GET", "/v1/status", &[], b"").json();
    let crash = &status["services"][0];
    assert!(crash["restarts"].as_u64().unwrap() >= 5, "{status}");
    assert!(
        crash["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 1"),
        "{status}"
    );
    let metrics = agent.http("GET", "/metrics").text();
    assert!(
        metrics.contains("berth_container_restarts_total{service=\"crash\"}"),
        "{metrics}"
    );
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`…T12:34:56.789Z`).
#[test]
fn scaling_changes_only_the_count() {
    berth_agent::require_root!();
    let (_reg, image, agent) = web_running("shop/web:1", 3);
    let three = ids_of(&agent, "web");
    agent
        .apply_text("m.toml", &web_manifest(&image, 1, ""))
        .ok();
    let one = agent.wait_for(30, "web 1/1", |a| {
        let ids = ids_of(a, "web");
        (ids.len() == 1 && web_ready(a, "web", 1).is_some()).then_some(ids)
    });
    assert!(
        three.contains(&one[0]),
        "scaling down must keep a replica, not replace it"
    );
    agent
        .apply_text("m.toml", &web_manifest(&image, 2, ""))
        .ok();
    let two = agent.wait_for(30, "web 2/2", |a| {
        let ids = ids_of(a, "web");
        (ids.len() == 2 && web_ready(a, "web", 2).is_some()).then_some(ids)
    });
    assert!(
        two.contains(&one[0]),
        "scaling up must keep the running replica"
    );
}

#[test]
fn a_container_killed_by_hand_comes_back() {
    berth_agent::require_root!();
    let (_reg, _image, agent) = web_running("shop/web:1", 1);
    let c = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "web")
        .unwrap();
    let pid = c["pid"].as_i64().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    agent.wait_for(30, "a new replica", |a| {
        let ids = running_ids(a, "web");
        (ids.len() == 1 && ids[0] != c["id"].as_str().unwrap() && web_ready(a, "web", 1).is_some())
            .then_some(())
    });
    let metrics = agent.http("GET", "/metrics").text();
    assert!(
        metrics.contains("berth_drift_total{kind=\"missing\",service=\"web\"} 1"),
        "{metrics}"
    );
}

/// Converged and idle, the agent passes only every IDLE_RESYNC (5 s); a
/// replica without a health check that is killed right after such a pass
/// is seen failing within 2.5 s only because its pidfd woke the loop.
#[test]
fn an_idle_agent_sees_an_unchecked_replica_exit_at_once() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let manifest = format!("[service.web]\nimage = \"{image}\"\n");
    agent.apply_text("m.toml", &manifest).ok();
    agent.wait_for(30, "web 1/1", |a| web_ready(a, "web", 1));
    let pid = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "web")
        .and_then(|c| c["pid"].as_i64())
        .unwrap();
    let passes = |a: &Agent| {
        a.metric("berth_reconcile_duration_seconds_count")
            .unwrap_or(0.0) as u64
    };
    // Two passes 4 s or more apart: the agent is idle.
    let mut last = (passes(&agent), std::time::Instant::now());
    agent.wait_for(30, "an idle pass", |a| {
        let n = passes(a);
        if n == last.0 {
            return None;
        }
        let gap = last.1.elapsed();
        last = (n, std::time::Instant::now());
        (gap >= std::time::Duration::from_secs(4)).then_some(())
    });
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let seen = agent.wait_for(30, "the exit seen", |a| {
        event_times(a, "container-failed", "web").first().copied()
    });
    let took = seen - killed_at;
    // The next idle pass would come up to 5 s later; the wake takes ms.
    assert!(took < 4.0, "the exit was seen {took:.2} s after the kill");
    agent.wait_for(30, "a new replica", |a| web_ready(a, "web", 1));
}

#[test]
fn rollback_runs_the_exact_digest_of_revision_1() {
    berth_agent::require_root!();
    let (reg, image, agent) = web_running("shop/web:stable", 1);
    let d1 = revisions(&agent)[0]["digests"]["web"]
        .as_str()
        .unwrap()
        .to_string();
    // The tag moves; a new apply (env change) resolves it to the new digest.
    push_web_image(&reg, "shop/web:stable", "v2");
    agent
        .apply_text("m.toml", &web_manifest(&image, 1, "env = { V = \"2\" }"))
        .ok();
    agent.wait_for(30, "revision 2 complete", |a| {
        (revisions(a).len() == 2 && revisions(a)[1]["state"] == "complete").then_some(())
    });
    assert_ne!(revisions(&agent)[1]["digests"]["web"].as_str().unwrap(), d1);
    let out = agent.ctl(&["rollback", "1"]).ok();
    assert!(
        out.stdout.contains("rolled back as revision 3"),
        "{}",
        out.stdout
    );
    agent.wait_for(30, "revision 3 complete", |a| {
        (revisions(a)[2]["state"] == "complete").then_some(())
    });
    assert_eq!(revisions(&agent)[2]["digests"]["web"].as_str().unwrap(), d1);
    let c = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "web" && c["state"] == "running")
        .unwrap();
    assert!(c["image"].as_str().unwrap().ends_with(&d1), "{c}");
}

#[test]
fn kill9_of_the_agent_during_a_rollout_converges_without_duplicates() {
    berth_agent::require_root!();
    let (_reg, image, mut agent) = web_running("shop/web:1", 2);
    // Kill at several points: right after the apply, after the first new
    // replica exists, and in the middle of draining.
    for (round, delay_ms) in [0u64, 400, 900].into_iter().enumerate() {
        let env = format!("env = {{ ROUND = \"{round}\" }}");
        agent
            .apply_text("m.toml", &web_manifest(&image, 2, &env))
            .ok();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        agent.kill9();
        agent.spawn();
        agent.wait_for(60, "converged after kill -9", |a| {
            let list = a.containers();
            let web: Vec<_> = list.iter().filter(|c| c["service"] == "web").collect();
            let n = revisions(a).len() as u64;
            (web.len() == 2
                && web
                    .iter()
                    .all(|c| c["state"] == "running" && c["revision"].as_u64() == Some(n))
                && web_ready(a, "web", 2).is_some())
            .then_some(())
        });
    }
}

#[test]
fn exec_and_tcp_health_checks_gate_readiness() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // Becomes healthy only once /tmp/ready exists (after ~5 s).
    let text = format!(
        r#"
[service.slow]
image = "{image}"
command = ["/bin/busybox", "sh", "-c", "sleep 5; touch /tmp/ready; exec sleep 3600"]
[service.slow.health]
exec = ["/bin/busybox", "test", "-f", "/tmp/ready"]
interval = "200ms"
retries = 50

[service.tcp]
image = "{image}"
[service.tcp.health]
tcp = {{ port = 8080 }}
interval = "200ms"
"#
    );
    agent.apply_text("m.toml", &text).ok();
    agent.wait_for(20, "slow running but not ready", |a| {
        let c = a
            .containers()
            .into_iter()
            .find(|c| c["service"] == "slow" && c["state"] == "running")?;
        (c["health"] == "starting" && a.ready_of("slow") == (0, 1)).then_some(())
    });
    agent.wait_for(20, "slow and tcp ready", |a| {
        (a.ready_of("slow") == (1, 1) && a.ready_of("tcp") == (1, 1)).then_some(())
    });
    let slow = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "slow")
        .unwrap();
    assert_eq!(slow["health"], "healthy");
    let detail = agent
        .api(
            "GET",
            &format!("/v1/containers/{}", slow["id"].as_str().unwrap()),
            &[],
            b"",
        )
        .json();
    assert!(detail.get("last_health_output").is_some(), "{detail}");
}

#[test]
fn apply_wait_follows_the_rollout_and_fails_on_failure() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let good = agent.dir.path().join("good.toml");
    std::fs::write(&good, web_manifest(&image, 2, "")).unwrap();
    let out = agent.ctl(&[
        "apply",
        "--wait",
        "--timeout",
        "60s",
        "-f",
        good.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("revision 1 rolled out"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("web 2/2"),
        "progress per service: {}",
        out.stderr
    );
    let bad = agent.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        web_manifest(&image, 2, "command = [\"/bin/busybox\", \"false\"]"),
    )
    .unwrap();
    let out = agent.ctl(&[
        "apply",
        "--wait",
        "--timeout",
        "60s",
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("revision 2 failed"), "{}", out.stderr);
    // status shows each service's revision, digest, ready/desired, restarts and last error.
    let status = agent.ctl(&["status"]).ok().stdout;
    assert!(
        status.contains("web") && status.contains("2/2") && status.contains("rollout failed"),
        "{status}"
    );
}

#[test]
fn a_crash_during_probation_rolls_back_to_the_last_good_revision() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let probation = "[service.web.update]\nprobation = \"60s\"\ndrain = \"100ms\"\n";
    let base =
        web_manifest(&image, 1, "").replace("[service.web.update]\ndrain = \"100ms\"\n", probation);
    agent.apply_text("m.toml", &base).ok();
    agent.wait_for(30, "revision 1 complete", |a| {
        (revisions(a)[0]["state"] == "complete").then_some(())
    });
    // v2 serves (passes its health check, so the rollout completes), then crashes.
    let crashing = base.replace(
        "replicas = 1\n",
        "replicas = 1\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox httpd -p 8080 -h /www; sleep 3; exit 1\"]\n",
    );
    agent.apply_text("m.toml", &crashing).ok();
    agent.wait_for(30, "revision 2 complete", |a| {
        (revisions(a)
            .get(1)
            .is_some_and(|r| r["state"] == "complete"))
        .then_some(())
    });
    agent.wait_for(40, "probation rollback", |a| {
        let revs = revisions(a);
        (revs.len() == 3
            && revs[1]["state"] == "failed"
            && revs[2]["source"]
                .as_str()
                .unwrap_or("")
                .starts_with("rollback:1"))
        .then_some(())
    });
    agent.wait_for(30, "back on revision 1's spec", |a| {
        let running = running_ids(a, "web");
        (running.len() == 1
            && a.ready_of("web") == (1, 1)
            && revisions(a)[2]["state"] == "complete")
            .then_some(())
    });
    let ev = events(&agent);
    assert!(
        ev.iter().any(|e| e["kind"] == "rollout-failed"
            && e["message"].as_str().unwrap().contains("probation")),
        "{ev:?}"
    );
}

#[test]
fn every_spec_metric_is_exported_and_passes_promtool() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    agent
        .apply_text("m.toml", &web_manifest(&image, 1, ""))
        .ok();
    agent.wait_for(30, "web ready", |a| {
        (a.ready_of("web") == (1, 1)).then_some(())
    });
    agent.ctl(&["pull", &image]).ok();
    agent.wait_for(30, "a rollout counted", |a| {
        a.http("GET", "/metrics")
            .text()
            .contains("berth_service_image_info{")
            .then_some(())
    });
    let text = agent.http("GET", "/metrics").text();
    for name in [
        "berth_reconcile_duration_seconds_bucket",
        "berth_reconcile_errors_total",
        "berth_services_desired_replicas{service=\"web\"} 1",
        "berth_services_ready_replicas{service=\"web\"} 1",
        "berth_containers{state=\"running\"} 1",
        "berth_container_restarts_total",
        "berth_container_cpu_seconds_total{container=",
        "berth_container_memory_bytes{container=",
        "berth_image_pull_bytes_total",
        "berth_image_pull_duration_seconds_bucket",
        "berth_rollouts_total",
        "berth_rollout_duration_seconds",
        "berth_health_check_failures_total",
        "berth_drift_total",
        "berth_manifest_apply_errors_total",
        "berth_service_image_info{digest=\"sha256:",
        "berth_build_info{version=",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    assert_promtool_ok(&text);
}

/// Times (seconds of the day) of `kind` events of `service`, oldest first.
fn event_times(agent: &Agent, kind: &str, service: &str) -> Vec<f64> {
    events(agent)
        .iter()
        .filter(|e| e["kind"] == kind && e["service"] == service)
        .map(|e| unix_seconds(e["time"].as_str().unwrap()))
        .collect()
}

/// `berthctl apply --wait --timeout 60s` of `text`; the output and how long it took.
fn apply_wait(agent: &Agent, name: &str, text: &str) -> (CtlOutput, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = agent.apply_wait(name, text, "60s");
    (out, started.elapsed())
}

#[test]
fn a_first_deploy_that_never_becomes_healthy_fails_apply_wait_early_with_the_probe_output() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // httpd listens on 8080; the check asks 9999, where nothing listens.
    let text = format!(
        r#"
[service.web]
image = "{image}"
[service.web.health]
http = {{ port = 9999, path = "/" }}
interval = "200ms"
timeout = "500ms"
retries = 2
"#
    );
    let (out, took) = apply_wait(&agent, "m.toml", &text);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        took < std::time::Duration::from_secs(30),
        "must fail well before the 60 s timeout, took {took:?}"
    );
    assert!(
        out.stderr.contains("revision 1 failed")
            && out.stderr.contains("none became ready")
            && out.stderr.contains("connect to port 9999"),
        "reason and probe output: {}",
        out.stderr
    );
    // Status and events say the same; nothing keeps being replaced.
    let status = agent.ctl(&["status"]).ok().stdout;
    assert!(
        status.contains("rollout failed") && status.contains("connect to port 9999"),
        "{status}"
    );
    let ev = events(&agent);
    assert!(
        ev.iter().any(|e| e["kind"] == "rollout-failed"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("connect to port 9999")),
        "{ev:?}"
    );
    assert_eq!(revisions(&agent)[0]["state"], "failed");
    agent.wait_for(20, "the failed replicas removed", |a| {
        ids_of(a, "web").is_empty().then_some(())
    });
    let starts = event_times(&agent, "container-started", "web").len();
    assert_eq!(starts, 3, "three tries, then stop: {ev:?}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        event_times(&agent, "container-started", "web").len(),
        starts
    );
}

#[test]
fn a_never_healthy_replica_is_replaced_with_growing_delays_up_to_the_max() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // Healthy while /flag/ok exists on the host; the service was ready once,
    // so this is no first deploy and its replicas are restarted forever.
    let flag = agent.dir.path().join("flag");
    std::fs::create_dir(&flag).unwrap();
    std::fs::set_permissions(&flag, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(flag.join("ok"), "").unwrap();
    let text = format!(
        r#"
[service.web]
image = "{image}"
# httpd as PID 1 ignores SIGTERM: without a short stop timeout each retired
# replica runs its full 10 s, and while it stops it counts against
# replicas + max_surge, so the gaps would measure stops, not the backoff.
stop_timeout = "200ms"
[[service.web.volumes]]
host = "{}"
target = "/flag"
readonly = true
[service.web.health]
exec = ["/bin/busybox", "test", "-f", "/flag/ok"]
interval = "200ms"
retries = 2
[service.web.restart]
backoff = {{ initial = "200ms", max = "2s" }}
[service.web.update]
probation = "0s"
"#,
        flag.display()
    );
    let (out, _) = apply_wait(&agent, "m.toml", &text);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    std::fs::remove_file(flag.join("ok")).unwrap();
    // The first start, the replacement of the original, then 6 more.
    let starts = agent.wait_for(60, "eight starts", |a| {
        let t = event_times(a, "container-started", "web");
        (t.len() >= 8).then_some(t)
    });
    // Gaps between replacements: the time to turn unhealthy (constant) plus
    // a backoff of 0.4, 0.8, 1.6, 2, 2, 2 s.
    // The bounds leave a loaded machine about a second of jitter in the
    // time to turn unhealthy; unbounded doubling would reach 25 s by the last.
    let gaps: Vec<f64> = starts[1..].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[3] > gaps[0] + 0.6,
        "delays must grow towards the max: {gaps:?}"
    );
    let (base, last) = (gaps[0] - 0.4, gaps[gaps.len() - 1]);
    assert!(
        last > base + 1.0 && last < base + 4.0,
        "the delay levels off at the 2 s max: {gaps:?}"
    );
    let status = agent.api("GET", "/v1/status", &[], b"").json();
    let web = &status["services"][0];
    assert!(web["restarts"].as_u64().unwrap() >= 6, "{status}");
    assert!(
        web["last_error"]
            .as_str()
            .unwrap()
            .contains("failed its health check: exec: exit code 1"),
        "{status}"
    );
    assert_eq!(revisions(&agent)[0]["state"], "complete", "not failed");
}

/// Pushes a Helm-chart-shaped OCI artifact under `repo:tag`; its digest.
fn push_helm_chart(reg: &TestRegistry, repo: &str, tag: &str) -> String {
    let config = br#"{"name":"web","version":"1.0.0"}"#;
    let chart = b"not a layer tarball";
    let config_digest = reg.push_blob(repo, config).unwrap();
    let chart_digest = reg.push_blob(repo, chart).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": berth_e2e::registry::MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
            "digest": chart_digest.to_string(),
            "size": chart.len(),
        }],
    }))
    .unwrap();
    reg.push_manifest(
        repo,
        tag,
        berth_e2e::registry::MEDIA_OCI_MANIFEST,
        &manifest,
    )
    .unwrap()
    .to_string()
}

#[test]
fn a_tag_that_is_not_a_runnable_image_fails_apply_wait_at_once() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let chart = push_helm_chart(&reg, "charts/web", "1");
    let arm = berth_e2e::registry::ImageBuilder::busybox()
        .platform("linux", "arm64", None)
        .build()
        .unwrap();
    reg.push_index("shop/armonly", "1", &[&arm]).unwrap();
    let agent = Agent::start();

    let text = |image: String| format!("[service.web]\nimage = \"{image}\"\n");
    let (out, took) = apply_wait(&agent, "m.toml", &text(reg.image("charts/web:1")));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert!(
        out.stderr.contains("revision 1 failed")
            && out.stderr.contains("a Helm chart, not a container image")
            && out.stderr.contains(&chart),
        "names the manifest and what it is: {}",
        out.stderr
    );
    let ev = events(&agent);
    let pulls = ev.iter().filter(|e| e["kind"] == "pull-failed").count();
    assert_eq!(pulls, 1, "a permanent error is not retried: {ev:?}");

    let (out, took) = apply_wait(&agent, "m.toml", &text(reg.image("shop/armonly:1")));
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
    assert!(
        out.stderr.contains("revision 2 failed")
            && out.stderr.contains("no manifest for platform linux/amd64")
            && out.stderr.contains("linux/arm64"),
        "{}",
        out.stderr
    );
    let status = agent.ctl(&["status"]).ok().stdout;
    assert!(status.contains("linux/arm64"), "{status}");
    assert!(ids_of(&agent, "web").is_empty());
}

#[test]
fn depends_on_starts_a_service_once_its_dependency_is_ready() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let text = format!(
        r#"
[service.app]
image = "{image}"
command = ["/bin/busybox", "sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 3600"]
[service.app.health]
exec = ["/bin/busybox", "test", "-f", "/tmp/ready"]
interval = "200ms"
retries = 50

[service.web]
image = "{image}"
depends_on = ["app"]
[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "200ms"
"#
    );
    agent.apply_text("m.toml", &text).ok();
    let status = agent.wait_for(20, "web waiting for app", |a| {
        let s = a.ctl(&["status"]).ok().stdout;
        s.contains("waiting for app (0/1 ready)").then_some(s)
    });
    assert!(!status.contains("web-"), "no web container yet: {status}");
    agent.wait_for(30, "app and web ready", |a| {
        (a.ready_of("app") == (1, 1) && a.ready_of("web") == (1, 1)).then_some(())
    });
    let app_healthy = events(&agent)
        .iter()
        .find(|e| {
            e["kind"] == "health"
                && e["service"] == "app"
                && e["message"].as_str().unwrap().ends_with("is healthy")
        })
        .map(|e| unix_seconds(e["time"].as_str().unwrap()))
        .expect("app's health event");
    let app_started = event_times(&agent, "container-started", "app")[0];
    let web_started = event_times(&agent, "container-started", "web");
    assert_eq!(web_started.len(), 1);
    assert!(
        web_started[0] >= app_healthy && web_started[0] - app_started >= 2.0,
        "web started at {}, app started at {app_started} and was healthy at {app_healthy}",
        web_started[0]
    );
    let ev = events(&agent);
    assert!(
        ev.iter()
            .any(|e| e["kind"] == "waiting" && e["service"] == "web"),
        "{ev:?}"
    );
    let status = agent.ctl(&["status"]).ok().stdout;
    assert!(!status.contains("waiting for"), "{status}");

    // The dependency going down does not stop the running dependent.
    let web = running_ids(&agent, "web");
    let app = agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == "app")
        .unwrap();
    let pid = app["pid"].as_i64().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    agent.wait_for(30, "app replaced and ready", |a| {
        let ids = running_ids(a, "app");
        (ids.len() == 1 && ids[0] != app["id"].as_str().unwrap() && a.ready_of("app") == (1, 1))
            .then_some(())
    });
    assert_eq!(running_ids(&agent, "web"), web, "web kept running");
}
