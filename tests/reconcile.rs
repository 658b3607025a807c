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
    let web: Vec<_> = containers.iter().filter(|c| c["service"] == "web").collect();
    assert!(web.iter().all(|c| c["health"] == "healthy"), "{web:?}");
    // The revision records the digest the tag resolved to.
    let revs = agent.api("GET", "/v1/revisions", &[], b"").json();
    let digest = revs[0]["digests"]["web"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    agent.wait_for(10, "revision complete", |a| {
        (a.api("GET", "/v1/revisions", &[], b"").json()[0]["state"] == "complete").then_some(())
    });
}
