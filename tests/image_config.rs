//! End to end: the image's config as Docker applies it, through a real
//! registry, the real agent and the real kernel — the image's StopSignal stops
//! a replica at once (also one re-adopted by a restarted agent) unless the
//! manifest names another signal; the image's Healthcheck gates readiness
//! (failing, passing, NONE, overridden by the manifest); a bare numeric User
//! without a passwd entry runs with gid 0 and HOME=/; `inspect` shows the
//! image's ExposedPorts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use berth_e2e::registry::{Compression, ImageBuilder, LayerBuilder, TestRegistry};
use berth_e2e::*;

fn container_of(agent: &Agent, service: &str) -> Option<serde_json::Value> {
    agent
        .containers()
        .into_iter()
        .find(|c| c["service"] == service && c["state"] == "running")
}

fn inspect(agent: &Agent, id: &str) -> serde_json::Value {
    serde_json::from_str(&agent.ctl(&["inspect", id]).ok().stdout).unwrap()
}

/// The image asks for SIGINT; its process exits 0 on INT and ignores TERM.
fn push_sigint_image(reg: &TestRegistry) -> String {
    let img = ImageBuilder::busybox()
        .stop_signal("SIGINT")
        .cmd(&[
            "/bin/sh",
            "-c",
            "trap 'exit 0' INT; trap '' TERM; echo up; while true; do sleep 0.1; done",
        ])
        .build()
        .unwrap();
    reg.push("shop/sigint", "1", &img).unwrap();
    reg.image("shop/sigint:1")
}

fn sigint_manifest(image: &str, marker: &str, extra: &str) -> String {
    format!(
        "[service.pg]\nimage = \"{image}\"\nstop_timeout = \"10s\"\nenv = {{ MARKER = \"{marker}\" }}\n{extra}\n\
         [service.pg.update]\ndrain = \"0s\"\n"
    )
}

/// Applies `text` and returns how long the replica running before took to
/// be gone: its replacement's start and readiness, then its stop (the old
/// one is draining only for an instant with `drain = "0s"`, too short to
/// time on a loaded machine).
fn replace_and_time_the_stop(agent: &Agent, text: &str) -> Duration {
    let old = container_of(agent, "pg").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    agent.apply_text("m.toml", text).ok();
    agent.wait_for(30, "the old replica replaced", |a| {
        (!a.containers().iter().any(|c| c["id"] == old.as_str())).then_some(())
    });
    t0.elapsed()
}

#[test]
fn the_image_stop_signal_stops_a_replica_at_once_and_the_manifest_wins() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_sigint_image(&reg);
    let mut agent = Agent::start();
    agent
        .apply_text("m.toml", &sigint_manifest(&image, "1", ""))
        .ok();
    let c = agent.wait_for(30, "pg running", |a| {
        (a.ready_of("pg") == (1, 1))
            .then(|| container_of(a, "pg"))
            .flatten()
    });
    let detail = inspect(&agent, c["id"].as_str().unwrap());
    assert_eq!(
        detail["config"]["container"]["stop_signal"], 2,
        "the image's StopSignal (SIGINT) is the replica's: {detail}"
    );

    // The agent restarts; the replica it re-adopts keeps its signal.
    agent.kill9();
    agent.spawn();
    let took = replace_and_time_the_stop(&agent, &sigint_manifest(&image, "2", ""));
    assert!(
        took < Duration::from_secs(7),
        "with SIGINT the replica exits at once; replacing it took {took:?} (SIGTERM is ignored: 10s)"
    );
    agent.wait_for(30, "pg 1/1 again", |a| {
        (a.ready_of("pg") == (1, 1)).then_some(())
    });

    // The manifest's stop_signal wins over the image's.
    agent
        .apply_text(
            "m.toml",
            &sigint_manifest(&image, "3", "stop_signal = \"SIGTERM\""),
        )
        .ok();
    let c = agent.wait_for(30, "the replica of revision 3", |a| {
        a.containers()
            .into_iter()
            .find(|c| c["service"] == "pg" && c["state"] == "running" && c["revision"] == 3)
    });
    let detail = inspect(&agent, c["id"].as_str().unwrap());
    assert_eq!(
        detail["config"]["container"]["stop_signal"], 15,
        "the manifest's SIGTERM: {detail}"
    );
}

fn sleeper(healthcheck: impl FnOnce(ImageBuilder) -> ImageBuilder) -> ImageBuilder {
    healthcheck(ImageBuilder::busybox().cmd(&["/bin/sleep", "3600"]))
}

#[test]
fn the_image_healthcheck_gates_readiness_unless_the_manifest_has_one() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let ms = Duration::from_millis;
    let failing =
        |b: ImageBuilder| b.healthcheck(&["CMD", "false"], ms(200), ms(1000), Duration::ZERO, 2);
    let images = [
        ("failing", sleeper(failing)),
        // Docker's defaults (interval 30s): the first probe still comes at once.
        (
            "passing",
            sleeper(|b| {
                b.healthcheck(
                    &["CMD-SHELL", "test -d / && exit 0"],
                    Duration::ZERO,
                    Duration::ZERO,
                    Duration::ZERO,
                    0,
                )
            }),
        ),
        (
            "disabled",
            sleeper(|b| b.healthcheck(&["NONE"], ms(200), ms(200), Duration::ZERO, 1)),
        ),
        ("overridden", sleeper(failing)),
    ];
    let mut text = String::new();
    for (name, builder) in &images {
        reg.push(&format!("shop/{name}"), "1", &builder.build().unwrap())
            .unwrap();
        text.push_str(&format!(
            "[service.{name}]\nimage = \"{}\"\n",
            reg.image(&format!("shop/{name}:1"))
        ));
    }
    text.push_str("[service.overridden.health]\nexec = [\"true\"]\ninterval = \"200ms\"\n");
    let agent = Agent::start();
    agent.apply_text("m.toml", &text).ok();
    agent.wait_for(30, "passing, disabled and overridden ready", |a| {
        (a.ready_of("passing") == (1, 1)
            && a.ready_of("disabled") == (1, 1)
            && a.ready_of("overridden") == (1, 1))
            .then_some(())
    });
    let health_of = |name: &str| {
        agent
            .containers()
            .into_iter()
            .find(|c| c["service"] == name && c["state"] == "running")
            .map(|c| c["health"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(health_of("passing").as_deref(), Some("healthy"));
    assert_eq!(
        health_of("disabled").as_deref(),
        Some("none"),
        "Healthcheck NONE: no check, ready by running"
    );
    assert_eq!(
        health_of("overridden").as_deref(),
        Some("healthy"),
        "the manifest's check replaces the image's failing one"
    );
    // The failing one turns unhealthy and is never ready.
    agent.wait_for(20, "failing reported unhealthy", |a| {
        let events = a.api("GET", "/v1/events", &[], b"").json();
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["kind"] == "health"
                    && e["service"] == "failing"
                    && e["message"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with("is unhealthy")
            })
            .then_some(())
    });
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            agent.ready_of("failing"),
            (0, 1),
            "a replica failing the image's check is never ready"
        );
        if let Some(h) = health_of("failing") {
            assert!(
                h == "starting" || h == "unhealthy" || h == "draining",
                "failing shows {h}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = agent.http("GET", "/metrics").text();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_health_check_failures_total{service=\"failing\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        failures >= 2.0,
        "the image's check ran and failed:\n{metrics}"
    );
}

#[test]
fn a_bare_uid_without_passwd_runs_with_gid_0_and_home_slash_and_inspect_shows_exposed_ports() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            LayerBuilder::new(Compression::Gzip)
                .whiteout("/etc/passwd")
                .whiteout("/etc/group"),
        )
        .user("1234")
        .expose("8080/tcp")
        .expose("53/udp")
        .expose("9000")
        .volume("/data")
        .cmd(&[
            "/bin/sh",
            "-c",
            "echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME\"; exec sleep 3600",
        ])
        .build()
        .unwrap();
    reg.push("shop/uid", "1", &img).unwrap();
    let agent = Agent::start();
    agent
        .apply_text(
            "m.toml",
            &format!("[service.uid]\nimage = \"{}\"\n", reg.image("shop/uid:1")),
        )
        .ok();
    let line = agent.wait_for(30, "the id line", |a| {
        let out = a.ctl(&["logs", "uid"]);
        out.stdout
            .lines()
            .find(|l| l.starts_with("uid="))
            .map(str::to_string)
    });
    // What `docker run --user 1234` prints on an image without /etc/passwd.
    assert_eq!(line.trim(), "uid=1234 gid=0 groups=0 home=/");
    let c = agent.wait_for(30, "uid running", |a| container_of(a, "uid"));
    let detail = inspect(&agent, c["id"].as_str().unwrap());
    assert_eq!(
        detail["exposed_ports"],
        serde_json::json!(["53/udp", "8080/tcp", "9000/tcp"]),
        "{detail}"
    );
    assert_eq!(
        detail["ports"],
        serde_json::json!([]),
        "exposing publishes nothing"
    );
}
