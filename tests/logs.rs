//! End to end: container logs as a user reads them with `berthctl logs` —
//! stdout and stderr interleaved in order with timestamps, kept after a
//! replica exits or is replaced (`--previous`, the per-service archive), a
//! crash-looping first deploy still has logs, `-f` follows a service into the
//! replicas of a rollout, and re-adopted containers (with pre-CRI log files)
//! keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

/// The lines a crash run prints: out1, err1, ..., out5, err5.
fn crash_lines() -> Vec<String> {
    (1..=5)
        .flat_map(|i| [format!("out{i}"), format!("err{i}")])
        .collect()
}

/// Splits `--timestamps` output into (time, line), checking every line has
/// an RFC 3339 UTC time and that the times never go back.
fn timed_lines(text: &str) -> Vec<(String, String)> {
    let v: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (t, rest) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("no timestamp: {l:?}"));
            assert!(
                t.len() == 30 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
                "not an RFC 3339 UTC time: {t:?} in {l:?}"
            );
            (t.to_string(), rest.to_string())
        })
        .collect();
    assert!(
        v.windows(2).all(|w| w[0].0 <= w[1].0),
        "times go back: {text}"
    );
    v
}

fn events_of(agent: &Agent, kind: &str, service: &str) -> Vec<serde_json::Value> {
    agent
        .api("GET", "/v1/events", &[], b"")
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind && e["service"] == service)
        .collect()
}

#[test]
fn a_crashed_replica_keeps_its_interleaved_timestamped_logs() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    // The two streams are two pipes: lines are ordered as the monitor reads
    // them, so the writes are spaced a little (as real output usually is).
    let text = format!(
        "[service.crash]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"for i in 1 2 3 4 5; do echo out$i; sleep 0.2; echo err$i >&2; sleep 0.2; done; exit 1\"]\n[service.crash.restart]\npolicy = \"always\"\nbackoff = {{ initial = \"3s\", max = \"3s\" }}\n"
    );
    agent.apply_text("m.toml", &text).ok();
    // The first deploy crashes: its replica is removed and the next one
    // waits out the backoff.
    let removed = agent.wait_for(30, "the first replica removed", |a| {
        events_of(a, "container-removed", "crash")
            .first()
            .map(|e| e["container"].as_str().unwrap_or_default().to_string())
    });
    assert!(!removed.is_empty());
    // `logs SERVICE` shows lines rather than "not found": the new replica's,
    // or while it has printed none, the crashed one's.
    let out = agent.ctl(&["logs", "crash"]).ok();
    assert_eq!(
        out.stdout.lines().next(),
        Some("out1"),
        "logs of a crash-looping service: {:?}",
        out.stdout
    );
    // --previous --timestamps: every line, in order, each with its time.
    let out = agent
        .ctl(&["logs", "crash", "--previous", "--timestamps"])
        .ok();
    let lines: Vec<String> = timed_lines(&out.stdout)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, crash_lines(), "{}", out.stdout);
    // The archive on disk: the CRI file and the metadata.
    let dir = agent.state_dir().join("logs").join("crash");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{removed}.json"))).unwrap())
            .unwrap();
    assert_eq!(meta["service"], "crash");
    assert_eq!(meta["exit_code"], 1);
    assert_eq!(meta["revision"], 1);
    let raw = std::fs::read_to_string(dir.join(format!("{removed}.log"))).unwrap();
    assert!(
        raw.lines()
            .nth(1)
            .is_some_and(|l| l.ends_with(" stderr F err1")),
        "{raw}"
    );
    // The archived container by id, with --tail and --since.
    let out = agent.ctl(&["logs", &removed, "--tail", "2"]).ok();
    assert_eq!(out.stdout, "out5\nerr5\n");
    let out = agent.ctl(&["logs", &removed, "--since", "1h"]).ok();
    assert_eq!(out.stdout.lines().count(), 10, "{}", out.stdout);
    let out = agent
        .ctl(&["logs", &removed, "--since", "2999-01-01T00:00:00Z"])
        .ok();
    assert_eq!(out.stdout, "");
    // After the restart the replaced replica's logs are still there.
    agent.wait_for(30, "the replica restarted", |a| {
        (events_of(a, "container-started", "crash").len() >= 2).then_some(())
    });
    let out = agent.ctl(&["logs", "crash", "--previous"]).ok();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        crash_lines(),
        "{}",
        out.stdout
    );
    // A bad --since is a clear error; --previous needs a service.
    let out = agent.ctl(&["logs", "crash", "--since", "yesterday"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("since: `yesterday` is neither an RFC 3339 time nor a duration"),
        "{}",
        out.stderr
    );
    let out = agent.ctl(&["logs", &removed, "--previous"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("is not a service"), "{}", out.stderr);
}

/// `berthctl logs -f ARGS`, its lines arriving on a channel; killed on drop.
struct Follow {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follow {
    fn start(agent: &Agent, args: &[&str]) -> Follow {
        let mut child = Command::new(berthctl_bin())
            .args(["--agent", &agent.agent_flag(), "logs", "-f"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follow { child, lines }
    }

    /// Reads lines until one satisfies `want` (returned) or `secs` pass.
    fn until(&self, secs: u64, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "logs -f: no {what} within {secs}s; last lines: {:?}",
                    seen.iter().rev().take(10).collect::<Vec<_>>()
                ),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ticker(image: &str, mark: &str) -> String {
    format!(
        "[service.ticker]\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sh\", \"-c\", \"i=0; while true; do echo $MARK $i; i=$((i+1)); sleep 0.2; done\"]\nenv = {{ MARK = \"{mark}\" }}\n[service.ticker.update]\ndrain = \"100ms\"\n"
    )
}

fn running_ids(agent: &Agent, service: &str) -> Vec<String> {
    agent
        .containers()
        .into_iter()
        .filter(|c| c["service"] == service && c["state"] == "running")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn logs_follow_of_a_service_continues_into_a_rollouts_new_replica() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    agent.apply_text("m.toml", &ticker(&image, "v1")).ok();
    let old = agent.wait_for(30, "ticker running", |a| {
        let ids = running_ids(a, "ticker");
        (ids.len() == 1).then_some(ids)
    });
    let follow = Follow::start(&agent, &["ticker", "--tail", "1"]);
    follow.until(10, "a v1 line", |l| l.starts_with("v1 "));
    // A rollout to a new env replaces the replica.
    agent.apply_text("m2.toml", &ticker(&image, "v2")).ok();
    follow.until(60, "a line of the new replica", |l| l.starts_with("v2 "));
    // ...and keeps following it.
    follow.until(10, "more lines of the new replica", |l| l == "v2 5");
    agent.wait_for(30, "the old replica removed", |a| {
        let ids = running_ids(a, "ticker");
        (ids.len() == 1 && ids != old && a.containers().len() == 1).then_some(())
    });
    // The replaced replica's lines are in the archive.
    let prev = agent.wait_for(30, "the old replica archived", |a| {
        let out = a.ctl(&["logs", "ticker", "--previous"]);
        (out.code == 0).then_some(out.stdout)
    });
    assert!(prev.lines().all(|l| l.starts_with("v1 ")), "{prev}");
    assert!(prev.contains("v1 3\n"), "{prev}");
    drop(follow);
    // Scaled to zero, `logs SERVICE` shows the last replica's lines.
    let zero = ticker(&image, "v2").replace(
        "[service.ticker.update]",
        "replicas = 0\n[service.ticker.update]",
    );
    agent.apply_text("m3.toml", &zero).ok();
    agent.wait_for(30, "no replica left", |a| {
        a.containers().is_empty().then_some(())
    });
    let out = agent.ctl(&["logs", "ticker", "--tail", "3"]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines.iter().all(|l| l.starts_with("v2 ")), "{}", out.stdout);
}

#[test]
fn readopted_containers_keep_their_logs_including_pre_cri_files() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let mut agent = Agent::start();
    agent.apply_text("m.toml", &ticker(&image, "v1")).ok();
    let id = agent.wait_for(30, "ticker running", |a| {
        running_ids(a, "ticker").into_iter().next()
    });
    agent.kill9();
    // A container of an older berthd: raw stdout.log/stderr.log, no times.
    let logs = agent.state_dir().join("containers").join(&id).join("logs");
    std::fs::write(logs.join("stdout.log"), "legacy out\n").unwrap();
    std::fs::write(logs.join("stderr.log"), "legacy err\n").unwrap();
    agent.spawn();
    let out = agent.wait_for(30, "ticks after re-adoption", |a| {
        let out = a.ctl(&["logs", "ticker", "--timestamps"]);
        eprintln!("DBG {out:?}");
        (out.code == 0 && out.stdout.contains(" v1 3\n")).then_some(out.stdout)
    });
    let lines: Vec<&str> = out.lines().collect();
    // Untimed lines come first, unprefixed; CRI lines carry their time.
    assert_eq!(&lines[..2], ["legacy out", "legacy err"], "{out}");
    assert!(lines[2..].iter().all(|l| l.contains("Z v1 ")), "{out}");
    assert_eq!(running_ids(&agent, "ticker"), vec![id.clone()]);
    // Replaced, the old files are archived with it and still read.
    agent.apply_text("m2.toml", &ticker(&image, "v2")).ok();
    let prev = agent.wait_for(60, "the re-adopted replica archived", |a| {
        let out = a.ctl(&["logs", "ticker", "--previous"]);
        (out.code == 0).then_some(out.stdout)
    });
    assert!(prev.starts_with("legacy out\nlegacy err\nv1 0\n"), "{prev}");
    let dir = agent.state_dir().join("logs").join("ticker");
    assert!(dir.join(format!("{id}.stdout.log")).is_file());
    assert!(dir.join(format!("{id}.log")).is_file());
}
