//! In-process reconcile tests: the real agent, store, apply path, tracker,
//! decide and executor, on [`FakeContainers`] instead of the runtime. Each
//! test is a rollout or restart story and runs in milliseconds, without root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use berth_core::manifest::SourceFiles;
use berth_core::vocab::{EventKind, RevisionState};

use super::fake::{running_ready, FakeContainers};
use super::run::Reconciler;
use crate::config::{AgentConfig, ConfigLayer};
use crate::control::{Agent, AgentParts, ApplySource};
use crate::events::EventBus;
use crate::image::store::{ImageRecord, ImageStore};
use crate::labels::{LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC};
use crate::launch::ImageRunConfig;
use crate::metrics::Metrics;
use crate::network::proxy::PortProxy;
use crate::registry::config::RegistryConfig;
use crate::registry::RegistryClient;
use crate::runtime::{ContainerInfo, ContainerState, Runtime, RuntimePaths};
use crate::state::Store;

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// An agent on the fake, with a reconciler to drive by hand.
struct Harness {
    agent: Arc<Agent>,
    fake: Arc<FakeContainers>,
    reconciler: Reconciler,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let run = dir.path().join("run");
        let (store, _) = Store::open(&state).unwrap();
        let config = AgentConfig::from_layer(ConfigLayer {
            state_dir: Some(state.clone()),
            run_dir: Some(run.clone()),
            ..Default::default()
        })
        .unwrap();
        let metrics = Metrics::new();
        let registry = RegistryClient::new(RegistryConfig::new()).unwrap();
        let images = ImageStore::open(
            state.clone(),
            store.tree("images").unwrap(),
            registry,
            metrics.clone(),
        )
        .unwrap();
        let digest = DIGEST.parse().unwrap();
        images
            .put(&ImageRecord {
                reference: "reg.test/app:1".into(),
                digest: berth_core::image_ref::Digest::clone(&digest),
                manifest_digest: digest.clone(),
                config_digest: digest,
                layers: vec![],
                run: ImageRunConfig::default(),
                os: "linux".into(),
                architecture: "amd64".into(),
                size: 0,
                pulled_at: crate::now_rfc3339(),
                last_used: crate::now_rfc3339(),
            })
            .unwrap();
        let subnet = crate::network::addr::Ipv4Net::new("10.89.0.0".parse().unwrap(), 16).unwrap();
        let fake = Arc::new(FakeContainers::default());
        let agent = Agent::new(AgentParts {
            runtime: Arc::new(Runtime::new(RuntimePaths::new(
                state.clone(),
                run.clone(),
                "berth-test",
                "/nonexistent/berth-monitor",
            ))),
            log_archive: crate::logs::LogArchive::new(dir.path().join("logs"), 5, 1 << 20),
            containers: fake.clone(),
            proxy: PortProxy::new(),
            dns: Arc::new(crate::dns::Dns::new(crate::dns::DnsConfig {
                dir: run.join("dns"),
                exe: "/nonexistent/berth-dns".into(),
                listen: subnet.gateway(),
                subnet,
                upstreams: vec![],
            })),
            volumes: Arc::new(crate::volumes::VolumeStore::open(state.join("volumes")).unwrap()),
            config,
            store,
            events: EventBus::new(),
            metrics,
            images,
            userns_support: Ok(()),
        })
        .unwrap();
        Harness {
            reconciler: Reconciler::new(agent.clone()),
            agent,
            fake,
            _dir: dir,
        }
    }

    /// Applies a manifest whose services are `body` (TOML after the image
    /// line of a service named by its `[service.NAME]` header).
    async fn apply(&self, body: &str) -> u64 {
        let text = body.replace("IMAGE", &format!("\"reg.test/app@{DIGEST}\""));
        let mut files = SourceFiles::new();
        files.insert("m.toml".into(), text);
        self.agent
            .apply_checked(files, ApplySource::Api, false, true)
            .await
            .unwrap()
            .revision
            .unwrap()
    }

    /// Runs passes (letting spawned tasks and checkers run between them)
    /// until `done` holds; panics with `what` after 3 s.
    async fn until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        for _ in 0..600 {
            self.reconciler.pass().await.unwrap();
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "never: {what}\nrevisions: {:?}\nevents:\n{}",
            self.states(),
            self.events().join("\n")
        );
    }

    fn states(&self) -> Vec<(u64, RevisionState)> {
        self.agent
            .revisions()
            .unwrap()
            .into_iter()
            .map(|r| (r.number, r.state))
            .collect()
    }

    fn state(&self, number: u64) -> RevisionState {
        self.states()
            .into_iter()
            .find(|(n, _)| *n == number)
            .map(|(_, s)| s)
            .unwrap()
    }

    fn events(&self) -> Vec<String> {
        self.agent
            .events
            .history()
            .into_iter()
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect()
    }

    fn has_event(&self, kind: EventKind, text: &str) -> bool {
        self.agent
            .events
            .history()
            .iter()
            .any(|e| e.kind == kind.as_str() && e.message.contains(text))
    }

    /// The env value `KEY` of each running replica of `service`.
    fn running_env(&self, service: &str, key: &str) -> Vec<String> {
        self.fake
            .all(service)
            .into_iter()
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .filter_map(|c| crate::labels::stored_spec(&c.labels))
            .map(|s| s.env.get(key).cloned().unwrap_or_default())
            .collect()
    }

    fn ready(&self, service: &str) -> u32 {
        self.agent
            .live()
            .services
            .get(service)
            .map(|l| l.ready)
            .unwrap_or(0)
    }

    fn last_error(&self, service: &str) -> Option<String> {
        self.agent
            .live()
            .services
            .get(service)
            .and_then(|l| l.last_error.clone())
    }
}

/// A service `web` of `replicas` replicas with `env`, quick backoff, no drain.
fn web(replicas: u32, env: &str, extra: &str) -> String {
    format!(
        r#"
[service.web]
image = IMAGE
command = ["/app"]
replicas = {replicas}
env = {{ {env} }}
[service.web.restart]
backoff = {{ initial = "20ms", max = "80ms" }}
[service.web.update]
drain = "0s"
{extra}
"#
    )
}

#[tokio::test]
async fn a_first_deploy_starts_every_replica_and_completes_the_revision() {
    let mut h = Harness::new();
    let rev = h.apply(&web(3, r#"V = "1""#, "")).await;
    h.until("3 ready and the revision complete", |h| {
        h.ready("web") == 3 && h.state(rev) == RevisionState::Complete
    })
    .await;
    assert_eq!(h.fake.running("web").len(), 3);
    assert_eq!(h.fake.started().len(), 3, "nothing started twice");
    assert!(h.has_event(EventKind::RevisionComplete, "revision 1"));
    // A converged host stays put: more passes start and stop nothing.
    for _ in 0..5 {
        h.reconciler.pass().await.unwrap();
    }
    assert_eq!(h.fake.started().len(), 3);
}

#[tokio::test]
async fn a_new_spec_rolls_out_start_first_and_the_old_replicas_go() {
    let mut h = Harness::new();
    h.apply(&web(2, r#"V = "1""#, "")).await;
    h.until("v1 ready", |h| h.ready("web") == 2).await;
    let v1 = h.fake.running("web");
    let rev = h.apply(&web(2, r#"V = "2""#, "")).await;
    h.until("v2 everywhere and the revision complete", |h| {
        h.running_env("web", "V") == ["2", "2"] && h.state(rev) == RevisionState::Complete
    })
    .await;
    for id in v1 {
        assert!(
            h.has_event(
                EventKind::ContainerRemoved,
                &format!("{id} removed (replaced)")
            ),
            "{id} retired as replaced"
        );
    }
    assert!(h.fake.peak("web") <= 3, "max_surge 1: at most 3 at once");
    assert!(h.has_event(EventKind::RolloutStarted, "revision 2"));
    assert!(h.has_event(EventKind::RolloutComplete, "revision 2"));
}

#[tokio::test]
async fn a_replica_that_exits_mid_rollout_rolls_the_revision_back() {
    let mut h = Harness::new();
    h.apply(&web(2, r#"V = "1""#, "")).await;
    h.until("v1 complete", |h| h.state(1) == RevisionState::Complete)
        .await;
    h.apply(&web(2, r#"V = "2", FAKE = "exit:3""#, "")).await;
    h.until("rolled back to v1 as revision 3", |h| {
        h.states().len() == 3 && h.state(3) == RevisionState::Complete
    })
    .await;
    assert_eq!(h.state(2), RevisionState::Failed);
    assert_eq!(h.running_env("web", "V"), ["1", "1"]);
    assert!(h.has_event(EventKind::RolloutFailed, "exited with code 3"));
    assert!(h.has_event(EventKind::Rollback, "restored revision 1 as revision 3"));
    let revisions = h.agent.revisions().unwrap();
    assert_eq!(revisions[2].source, "rollback:1 (revision 2 failed)");
}

#[tokio::test]
async fn a_start_failure_during_a_rollout_rolls_it_back() {
    let mut h = Harness::new();
    h.apply(&web(1, r#"V = "1""#, "")).await;
    h.until("v1 complete", |h| h.state(1) == RevisionState::Complete)
        .await;
    h.apply(&web(1, r#"V = "2", FAKE = "nostart""#, "")).await;
    h.until("rolled back", |h| {
        h.states().len() == 3 && h.state(3) == RevisionState::Complete
    })
    .await;
    assert_eq!(h.state(2), RevisionState::Failed);
    assert!(h.has_event(
        EventKind::ContainerStartFailed,
        "the fake refuses to start it"
    ));
    assert_eq!(h.running_env("web", "V"), ["1"]);
}

#[tokio::test]
async fn a_crashing_replica_is_replaced_with_growing_delays() {
    let mut h = Harness::new();
    h.apply(&web(1, r#"V = "1""#, r#"probation = "0s""#)).await;
    h.until("ready", |h| h.ready("web") == 1).await;
    for failure in 1..=3u32 {
        let id = h.fake.running("web")[0].clone();
        h.fake.crash(&id, 1);
        h.until("replaced", |h| {
            h.fake.running("web").len() == 1 && h.fake.running("web")[0] != id
        })
        .await;
        let wait = Duration::from_millis(20 * (1 << (failure - 1)));
        assert!(
            h.has_event(
                EventKind::ContainerFailed,
                &format!("{id} exited with code 1; replacing it in {wait:?} (failure {failure} in a row)")
            ),
            "failure {failure}: {:?}",
            h.events()
        );
    }
    let l = h.agent.live().services["web"].clone();
    assert_eq!(l.restarts, 3);
    assert_eq!(
        l.last_error
            .as_deref()
            .map(|e| e.contains("exited with code 1")),
        Some(true)
    );
    assert_eq!(
        h.state(1),
        RevisionState::Complete,
        "restarts are no rollout"
    );
}

#[tokio::test]
async fn an_unhealthy_replica_is_replaced_after_backoff() {
    let mut h = Harness::new();
    let health = r#"probation = "0s"
[service.web.health]
exec = ["/check"]
interval = "100ms"
retries = 1"#;
    h.apply(&web(2, r#"V = "1""#, health)).await;
    h.until("2 healthy", |h| h.ready("web") == 2).await;
    let sick = h.fake.running("web")[0].clone();
    h.fake.set_unhealthy(&sick, true);
    h.until("the unhealthy one replaced", |h| {
        let running = h.fake.running("web");
        running.len() == 2 && !running.contains(&sick) && h.ready("web") == 2
    })
    .await;
    assert!(
        h.has_event(EventKind::ContainerFailed, "failed its health check: exec: exit code 1: not ok; replacing it in 20ms (failure 1 in a row)"),
        "{:?}",
        h.events()
    );
    assert!(h.has_event(
        EventKind::ContainerRemoved,
        &format!("{sick} removed (unhealthy)")
    ));
    assert_eq!(h.agent.live().services["web"].restarts, 1);
}

#[tokio::test]
async fn a_first_deploy_that_keeps_crashing_halts_after_three_failures() {
    let mut h = Harness::new();
    let rev = h.apply(&web(1, r#"FAKE = "exit:2""#, "")).await;
    h.until("the revision failed", |h| {
        h.state(rev) == RevisionState::Failed
    })
    .await;
    assert_eq!(h.fake.started().len(), 3, "three tries, then no more");
    assert!(h.has_event(EventKind::RolloutHalted, "revision 1 failed"));
    assert!(h
        .last_error("web")
        .is_some_and(|e| e.contains("3 replicas failed in a row and none became ready")));
    for _ in 0..10 {
        h.reconciler.pass().await.unwrap();
    }
    assert_eq!(h.fake.started().len(), 3, "a halted service is left alone");
}

#[tokio::test]
async fn a_crash_during_probation_rolls_back_to_the_last_good_revision() {
    let mut h = Harness::new();
    h.apply(&web(1, r#"V = "1""#, r#"probation = "10s""#)).await;
    h.until("v1 complete", |h| h.state(1) == RevisionState::Complete)
        .await;
    h.apply(&web(1, r#"V = "2""#, r#"probation = "10s""#)).await;
    h.until("v2 complete", |h| h.state(2) == RevisionState::Complete)
        .await;
    let id = h.fake.running("web")[0].clone();
    h.fake.crash(&id, 137);
    h.until("back on v1", |h| {
        h.states().len() == 3 && h.running_env("web", "V") == ["1"]
    })
    .await;
    assert_eq!(h.state(2), RevisionState::Failed);
    assert!(h.has_event(
        EventKind::RolloutFailed,
        &format!("replica {id} exited with code 137 during probation")
    ));
}

#[tokio::test]
async fn a_single_writer_volume_never_has_two_replicas_at_once() {
    let mut h = Harness::new();
    let with_volume = |v: &str| {
        web(1, &format!(r#"V = "{v}""#), "")
            + "[[service.web.volumes]]\nname = \"data\"\ntarget = \"/data\"\n"
    };
    h.apply(&with_volume("1")).await;
    h.until("v1 complete", |h| h.state(1) == RevisionState::Complete)
        .await;
    for v in ["2", "3"] {
        let rev = h.apply(&with_volume(v)).await;
        h.until("rolled out", |h| h.state(rev) == RevisionState::Complete)
            .await;
    }
    assert_eq!(h.running_env("web", "V"), ["3"]);
    assert_eq!(
        h.fake.peak("web"),
        1,
        "stop-first: the old writer is gone before the new one starts"
    );
}

#[tokio::test]
async fn state_left_by_a_killed_agent_converges_without_duplicates() {
    let mut h = Harness::new();
    h.apply(&web(2, r#"V = "1""#, "")).await;
    // What an earlier agent left: three current replicas (one too many), an
    // exited one, and a container of a service no revision runs.
    let rec = h.agent.store().latest_revision().unwrap().unwrap();
    let (_, desired) = Agent::desired_of(&rec).unwrap();
    let spec = desired[0].spec.canonical_json();
    let left = |id: &str, service: &str, state: ContainerState| {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(LABEL_SERVICE.to_string(), service.to_string());
        labels.insert(LABEL_SPEC.to_string(), spec.clone());
        labels.insert(LABEL_REVISION.to_string(), "1".to_string());
        h.fake.adopt(ContainerInfo {
            id: id.into(),
            name: id.into(),
            labels,
            dir: "/nonexistent".into(),
            created_at: std::time::SystemTime::now(),
            state,
        });
    };
    for id in ["web-a", "web-b", "web-c"] {
        left(id, "web", running_ready());
    }
    left(
        "web-d",
        "web",
        ContainerState::Exited {
            code: 0,
            signal: None,
            oom_killed: false,
            finished_at: std::time::SystemTime::now(),
        },
    );
    left("gone-a", "gone", running_ready());
    h.until("exactly the two wanted replicas", |h| {
        h.fake.all("web").len() == 2 && h.fake.all("gone").is_empty() && h.ready("web") == 2
    })
    .await;
    assert!(h.fake.started().is_empty(), "adopted, none started");
    assert_eq!(
        h.fake.running("web"),
        ["web-a", "web-b"],
        "the newest extra goes"
    );
    h.until("complete", |h| h.state(1) == RevisionState::Complete)
        .await;
}

#[tokio::test]
async fn a_rollout_error_stays_through_the_rollback_and_clears_with_a_good_revision() {
    let mut h = Harness::new();
    h.apply(&web(1, r#"V = "1""#, "")).await;
    h.until("v1 complete", |h| h.state(1) == RevisionState::Complete)
        .await;
    h.apply(&web(1, r#"V = "2", FAKE = "exit:4""#, "")).await;
    h.until("rolled back", |h| {
        h.states().len() == 3 && h.state(3) == RevisionState::Complete
    })
    .await;
    for _ in 0..5 {
        h.reconciler.pass().await.unwrap();
    }
    assert!(
        h.last_error("web")
            .is_some_and(|e| e.starts_with("rollout failed:") && e.contains("exited with code 4")),
        "the reason stays while the restored revision runs: {:?}",
        h.last_error("web")
    );
    let rev = h.apply(&web(1, r#"V = "5""#, "")).await;
    h.until("the good revision complete", |h| {
        h.state(rev) == RevisionState::Complete
    })
    .await;
    assert_eq!(
        h.last_error("web"),
        None,
        "a good revision clears the old error"
    );
}

#[tokio::test]
async fn status_counts_updated_replicas_as_they_start() {
    let mut h = Harness::new();
    h.apply(&web(2, r#"V = "1""#, "")).await;
    h.reconciler.pass().await.unwrap();
    h.reconciler.pass().await.unwrap();
    let s = h.agent.status().unwrap();
    let web = &s.services[0];
    assert_eq!(
        (web.replicas_updated, web.replicas_desired),
        (2, 2),
        "both started replicas run the new spec: {web:?}"
    );
    assert!(web.replicas_ready <= web.replicas_updated, "{web:?}");
}

/// `apply --wait` showed `1/1 updated`, then `0/1`: right after a new
/// revision is recorded, the count of the last pass (against the old one)
/// was shown as the new one's.
#[tokio::test]
async fn a_new_revision_counts_no_updated_replica_before_a_pass_has_seen_it() {
    let mut h = Harness::new();
    h.apply(&web(1, r#"V = "1""#, "")).await;
    h.reconciler.pass().await.unwrap();
    h.reconciler.pass().await.unwrap();
    assert_eq!(h.agent.status().unwrap().services[0].replicas_updated, 1);
    h.apply(&web(1, r#"V = "2""#, "")).await;
    let web = h.agent.status().unwrap().services[0].clone();
    assert_eq!(web.replicas_updated, 0, "{web:?}");
}

#[tokio::test]
async fn a_start_first_rollout_never_leaves_its_published_port_without_a_ready_replica() {
    let mut h = Harness::new();
    // A free port: the proxy binds it (no root needed above 1024).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!("ports = [{{ container = 80, host = {port} }}]");
    let with_port = |v: &str| {
        web(1, &format!(r#"V = "{v}""#), "")
            .replace("replicas = 1", &format!("replicas = 1\n{ports}"))
    };
    h.apply(&with_port("1")).await;
    h.until("v1 ready", |h| h.ready("web") == 1).await;
    assert_eq!(h.agent.proxy.unserved("web"), 0, "v1 came up without a gap");
    let rev = h.apply(&with_port("2")).await;
    h.until("v2 complete and v1 gone", |h| {
        h.state(rev) == RevisionState::Complete && h.running_env("web", "V") == ["2"]
    })
    .await;
    // The old replica is taken out of service only once the new one takes
    // the port: from its retirement on, a connection would otherwise find
    // no Ready replica and be reset (seen in the VM tier as curl exit 56).
    assert_eq!(
        h.agent.proxy.unserved("web"),
        0,
        "the port lost its last Ready replica during the rollout; endpoints: {:?}",
        h.agent.proxy.stats("web")
    );
}
