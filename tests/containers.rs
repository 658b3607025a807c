//! End to end: containers through the agent — `inspect`, `logs`, and
//! containers that outlive `berthd` (kill -9, exits while it is down).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

fn service_containers(agent: &Agent, service: &str) -> Vec<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == service)
        .collect()
}

#[test]
fn inspect_and_logs_tail_and_follow() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let text = format!(
        "[service.ticker]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"grep ^Seccomp: /proc/self/status; i=0; while true; do echo tick $i; echo oops $i >&2; i=$((i+1)); sleep 0.2; done\"]\nuser = \"1000:1000\"\nenv = {{ MODE = \"test\" }}\n[service.ticker.resources]\nmemory = \"64Mi\"\npids = 64\n"
    );
    agent.apply_text("m.toml", &text).ok();
    let c = agent.wait_for(30, "ticker running", |a| {
        service_containers(a, "ticker")
            .into_iter()
            .find(|c| c["state"] == "running")
    });
    let id = c["id"].as_str().unwrap().to_string();
    let out = agent.ctl(&["inspect", &id[..id.len() - 4]]).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "running");
    assert!(v["pid"].as_i64().unwrap() > 1);
    assert_eq!(v["spec"]["memory_bytes"], 64 << 20);
    assert_eq!(v["spec"]["env"]["MODE"], "test");
    assert_eq!(v["config"]["container"]["user"]["uid"], 1000);
    let files = v["log_files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("/logs/container.log")),
        "{v}"
    );
    // --tail
    agent.wait_for(10, "a few lines", |a| {
        let out = a.ctl(&["logs", "ticker"]);
        (out.stdout.matches("tick").count() >= 3).then_some(())
    });
    // The workload (a non-root user here) runs under the default seccomp filter.
    let out = agent.ctl(&["logs", "ticker"]).ok();
    assert!(out.stdout.contains("Seccomp:\t2\n"), "{}", out.stdout);
    let out = agent.ctl(&["logs", &id, "--tail", "2"]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    // -f streams lines written after it started.
    let mut child = std::process::Command::new(berthctl_bin())
        .args([
            "--agent",
            &agent.agent_flag(),
            "logs",
            "-f",
            "--tail",
            "0",
            "ticker",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while lines.len() < 4 && Instant::now() < deadline {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("tick")) && lines.iter().any(|l| l.contains("oops")),
        "{lines:?}"
    );
    // An unknown container is a clear 404.
    let out = agent.ctl(&["inspect", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("container `nope` not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn containers_outlive_the_agent_and_are_readopted_with_their_exit_codes() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let mut agent = Agent::start();
    let text = format!(
        "[service.web]\nimage = \"{image}\"\nreplicas = 2\n\n[service.job]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 2; exit 7\"]\n[service.job.restart]\npolicy = \"never\"\n"
    );
    agent.apply_text("m.toml", &text).ok();
    let before = agent.wait_for(30, "web 2 running and job running", |a| {
        let web: Vec<_> = service_containers(a, "web")
            .into_iter()
            .filter(|c| c["state"] == "running")
            .collect();
        let job = service_containers(a, "job");
        (web.len() == 2 && job.len() == 1 && job[0]["state"] == "running").then_some(web)
    });
    agent.kill9();
    // The workloads keep running without the agent...
    for c in &before {
        let pid = c["pid"].as_i64().unwrap();
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container {} died with the agent",
            c["id"]
        );
    }
    // ...and the job (`sleep 2; exit 7`) exits while nobody watches.
    std::thread::sleep(Duration::from_millis(4000));
    agent.spawn();
    let after: Vec<String> = service_containers(&agent, "web")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = before
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut got = after.clone();
    got.sort();
    assert_eq!(
        got, want,
        "the new agent must re-adopt the same containers, not replace them"
    );
    let job = agent.wait_for(10, "the job seen exited", |a| {
        let job = service_containers(a, "job");
        (job.len() == 1 && job[0]["state"] == "exited").then_some(job)
    });
    assert_eq!(job[0]["exit_code"], 7, "{job:?}");
    // Still re-adopted, still the same, a little later.
    std::thread::sleep(Duration::from_millis(1500));
    let mut again: Vec<String> = service_containers(&agent, "web")
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    again.sort();
    assert_eq!(again, want);
}

/// `berthctl top`: a busy container shows CPU use, an idle one none; memory
/// and pids are the cgroup's, with the manifest's limit.
#[test]
fn top_shows_cpu_memory_and_pids_per_container() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    let text = format!(
        "[service.busy]\nimage = \"{image}\"\nentrypoint = [\"/bin/busybox\", \"sh\", \"-c\", \"while :; do :; done\"]\n[service.busy.resources]\nmemory = \"64Mi\"\n\n[service.idle]\nimage = \"{image}\"\nentrypoint = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"
    );
    agent.apply_text("m.toml", &text).ok();
    agent.wait_for(30, "both running", |a| {
        let running = a
            .containers()
            .iter()
            .filter(|c| c["state"] == "running")
            .count();
        (running == 2).then_some(())
    });
    let out = agent.ctl(&["-o", "json", "top", "--interval", "1s"]).ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    let row = |svc: &str| rows.iter().find(|r| r["service"] == svc).unwrap().clone();
    let (busy, idle) = (row("busy"), row("idle"));
    assert!(busy["cpu_percent"].as_f64().unwrap() > 20.0, "{busy}");
    assert!(idle["cpu_percent"].as_f64().unwrap() < 5.0, "{idle}");
    assert_eq!(busy["memory_limit_bytes"], 64 << 20);
    assert!(busy["memory_bytes"].as_u64().unwrap() > 0);
    assert!(idle["pids"].as_u64().unwrap() >= 1);
    let table = agent.ctl(&["top", "--interval", "200ms"]).ok().stdout;
    assert!(table.starts_with("CONTAINER"), "{table}");
    assert!(table.contains("/ 67.1 MB"), "{table}");
    agent.remove_all_containers();
}

/// `Max open files` of a process, (soft, hard), from `/proc/PID/limits`.
fn open_files_limit(pid: u64) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// Started from a shell with the usual soft limit of 1024 open files, the
/// agent (about four descriptors per container) raises its own to the hard
/// limit, and its containers get what they get under the systemd unit.
#[test]
fn an_agent_started_with_a_low_open_file_limit_raises_it() {
    berth_agent::require_root!();
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // This test binary's processes (and the berthd it starts) get 1024.
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // An unlimited hard limit caps the soft one at fs.nr_open.
    let (want_soft, want_hard) = if hard == nix::sys::resource::RLIM_INFINITY {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
        (nr_open.trim().to_string(), "unlimited".to_string())
    } else {
        (hard.to_string(), hard.to_string())
    };
    let (soft, agent_hard) = open_files_limit(u64::from(agent.pid()));
    assert_eq!(
        (soft.as_str(), agent_hard.as_str()),
        (want_soft.as_str(), want_hard.as_str()),
        "berthd's soft limit was not raised"
    );
    assert!(
        agent.log().contains("raised the open-file limit"),
        "{}",
        agent.log()
    );
    agent
        .apply_text(
            "m.toml",
            &format!("[service.idle]\nimage = \"{image}\"\nentrypoint = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
        )
        .ok();
    let pid = agent.wait_for(30, "running", |a| {
        a.containers()
            .into_iter()
            .find(|c| c["state"] == "running")
            .and_then(|c| c["pid"].as_u64())
    });
    assert_eq!(open_files_limit(pid), (soft.clone(), agent_hard));
    agent.remove_all_containers();
}
