//! Upgrades: containers a released berthd created are adopted by this build
//! without a single replacement.
//!
//! - `each_release_s_stored_specs_are_kept_by_this_build` (no root) reads
//!   what each release wrote to disk — checked in under
//!   `tests/fixtures/upgrade/VERSION/` by `scripts/upgrade-fixture.sh` — with
//!   this build's decoders (revision file, `config.json`, `state.json`, the
//!   `berth.spec` label) and runs this build's comparison (`plan`, `decide`)
//!   of each stored spec with the spec this build derives from the same
//!   revision: it fails when a change to the spec's canonical form would
//!   replace them.
//! - `containers_of_the_previous_release_are_adopted_without_replacement`
//!   (root) runs the previous release's binaries (built from its commit by
//!   `scripts/upgrade-base.sh`), then this build's berthd on the same state.
//! - `write_fixture` (ignored; `scripts/upgrade-fixture.sh` runs it)
//!   regenerates a release's fixture with its binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_agent::labels::{stored_spec, LABEL_SERVICE, LABEL_SPEC};
use berth_agent::reconcile::decide::{decide, is_current, Intent, Phase, Replica};
use berth_agent::runtime::config::{read_json, StateFile};
use berth_agent::runtime::{Runtime, RuntimePaths};
use berth_agent::state::Store;
use berth_core::manifest::{Manifest, OnUnhealthy};
use berth_core::plan::{plan, ObservedContainer, ServiceAction};
use berth_core::spec::ContainerSpec;
use berth_e2e::registry::TestRegistry;
use berth_e2e::upgrade::{fixture_dir, latest_release, release_bins, releases, CgroupSweep};
use berth_e2e::*;

/// A small, realistic manifest touching most of the spec: `web` (2
/// replicas behind a host port on loopback, health-checked, limits, a
/// sysctl, a tmpfs), `worker` (entrypoint + command, init, env file,
/// secret, user, workdir), `db` (the one writer of a named volume, so
/// stop-first; read-only rootfs, stop signal, a capability dropped, a pids
/// limit, TCP health check). 4 containers.
fn manifest(web: &str, db: &str, port: u16, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"# Berth upgrade fixture: 3 services, 4 containers.
[service.web]
image = "{web}"
replicas = 2
env = {{ GREETING = "hello", MODE = "production" }}
sysctls = {{ "net.core.somaxconn" = "1024" }}

[[service.web.ports]]
container = 8080
host = {port}
host_ip = "127.0.0.1"

[service.web.resources]
memory = "64Mi"
cpus = 0.5

[[service.web.volumes]]
tmpfs = "8Mi"
target = "/cache"

[service.web.health]
http = {{ port = 8080, path = "/index.html" }}
interval = "300ms"
timeout = "500ms"
retries = 2

[service.web.update]
drain = "100ms"

[service.worker]
image = "{web}"
entrypoint = ["/bin/busybox"]
command = ["sleep", "3600"]
init = true
env_file = "{dir}/worker.env"
user = "1000:1000"
workdir = "/tmp"
depends_on = ["db"]

[[service.worker.secrets]]
source = "{dir}/token"
target = "token"

[service.db]
image = "{db}"
readonly_rootfs = true
stop_signal = "SIGINT"
cap_drop = ["NET_RAW"]

[service.db.resources]
memory = "32Mi"
pids = 64

[[service.db.volumes]]
name = "data"
target = "/data"

[service.db.health]
tcp = {{ port = 8080 }}
interval = "300ms"
timeout = "500ms"
retries = 2
"#
    )
}

/// The containers the manifest above runs.
const CONTAINERS: usize = 4;

/// A registry with the two images, an agent running `bins`' berthd (not
/// started yet) and the manifest text with its env file and secret.
fn setup(bins: &Path) -> (TestRegistry, Agent, String, u16) {
    let reg = TestRegistry::start().unwrap();
    let web = push_web_image(&reg, "shop/web:1", "web v1");
    let db = push_web_image(&reg, "shop/db:1", "db v1");
    let mut agent = Agent::create(&[]);
    agent.bins = bins.to_path_buf();
    let dir = agent.dir.path().to_path_buf();
    std::fs::write(dir.join("worker.env"), "QUEUE=jobs\nWORKERS=4\n").unwrap();
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    let port = free_port();
    let text = manifest(&web, &db, port, &dir);
    (reg, agent, text, port)
}

/// What the test compares across the upgrade: each container's id, service,
/// state and pid, and the revisions.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// id → (service, state, pid).
    containers: BTreeMap<String, (String, String, i64)>,
    /// (number, state) of every revision.
    revisions: Vec<(u64, String)>,
}

fn snapshot(agent: &Agent) -> Snapshot {
    let containers = agent
        .containers()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                (
                    c["service"].as_str().unwrap_or_default().to_string(),
                    c["state"].as_str().unwrap_or_default().to_string(),
                    c["pid"].as_i64().unwrap_or(0),
                ),
            )
        })
        .collect();
    let revisions = agent
        .api("GET", "/v1/revisions", &[], b"")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().unwrap(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    Snapshot {
        containers,
        revisions,
    }
}

/// Every service of the manifest runs its replicas, all ready and all on
/// the current revision's spec, and the revision is complete.
fn converged(agent: &Agent) -> Option<Snapshot> {
    let status = agent.api("GET", "/v1/status", &[], b"").json();
    let services = status["services"].as_array()?;
    let all = services.len() == 3
        && services.iter().all(|s| {
            let want = s["replicas_desired"].as_u64();
            want.is_some()
                && s["replicas_ready"].as_u64() == want
                && s["replicas_updated"].as_u64() == want
        });
    let snap = snapshot(agent);
    (all && status["revision"]["state"] == "complete"
        && snap.containers.len() == CONTAINERS
        && snap
            .containers
            .values()
            .all(|(_, state, pid)| state == "running" && *pid > 0))
    .then_some(snap)
}

/// `GET /v1/events`.
fn events(agent: &Agent) -> Vec<serde_json::Value> {
    let r = agent.api("GET", "/v1/events", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().cloned().unwrap_or_default()
}

/// `berth_reconcile_duration_seconds_count`: reconcile passes so far.
fn passes(agent: &Agent) -> u64 {
    agent
        .metric("berth_reconcile_duration_seconds_count")
        .unwrap_or(0.0) as u64
}

/// `release`'s berthd on fresh dirs with the manifest applied and converged.
fn previous_release_running(bins: &Path) -> (TestRegistry, Agent, String, u16, Snapshot) {
    let (reg, mut agent, text, port) = setup(bins);
    agent.spawn();
    let out = agent.apply_wait("manifest.toml", &text, "60s");
    assert_eq!(
        out.code, 0,
        "the previous release refused the fixture manifest:\n{}{}",
        out.stdout, out.stderr
    );
    let before = agent.wait_for(60, "the previous release converged", converged);
    (reg, agent, text, port, before)
}

#[test]
fn containers_of_the_previous_release_are_adopted_without_replacement() {
    berth_agent::require_root!();
    let release = latest_release();
    let old_bins = release_bins(&release);
    // Declared first, so dropped after the agent (which stops and removes
    // its containers): kills whatever is left in the agent's cgroups even
    // if this build could not read the release's containers.
    let _sweep;
    let (_reg, mut agent, text, port, before) = previous_release_running(&old_bins);
    _sweep = CgroupSweep(agent.cgroup_parent());
    let old_version = agent.status_json()["agent"]["version"].clone();
    // Events are kept across restarts: only those after the upgrade count.
    let last_seq = events(&agent)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);

    // The upgrade as a package manager does it: stop the old berthd
    // (containers live on), start the new one on the same state.
    let status = agent.terminate();
    assert!(status.success(), "the previous berthd exited with {status}");
    agent.bins = bin_dir();
    agent.spawn();
    let new_status = agent.status_json();
    let new_version = new_status["agent"]["version"].clone();
    // The release's database is whole: this build rebuilds nothing from it.
    assert_eq!(
        new_status["rebuilt"],
        serde_json::Value::Null,
        "the previous release's state database taken for a lost one"
    );
    eprintln!(
        "upgrade: berthd {old_version} of {} ({}) → {new_version} of this build",
        release.version,
        &release.commit[..7]
    );

    let after = agent.wait_for(30, "this build converged on the adopted containers", |a| {
        converged(a)
    });
    // Several passes later nothing moved either (a replacement would start
    // a new container, stop an old one or record a revision). An idle agent
    // passes every 5 s (`IDLE_RESYNC`).
    let start = passes(&agent);
    agent.wait_for(40, "3 more reconcile passes", |a| {
        (passes(a) >= start + 3).then_some(())
    });
    let later = agent.wait_for(10, "still converged", converged);
    assert_eq!(
        after, before,
        "this build changed what the previous release ran"
    );
    assert_eq!(later, before, "this build replaced containers later on");
    let since: Vec<_> = events(&agent)
        .into_iter()
        .filter(|e| e["seq"].as_u64().unwrap_or(0) > last_seq)
        .collect();
    assert!(
        since.iter().any(|e| e["kind"] == "agent-started"),
        "no agent-started event of this build after seq {last_seq}: {since:?}"
    );
    let moves: Vec<_> = since
        .iter()
        .filter(|e| {
            matches!(
                e["kind"].as_str(),
                Some(
                    "container-started"
                        | "container-removed"
                        | "container-failed"
                        | "rollout-started"
                        | "revision-applied"
                )
            )
        })
        .collect();
    assert!(moves.is_empty(), "events after the upgrade: {moves:?}");
    // `berthctl diff --exit-code` of the same manifest: nothing changes.
    let path = agent.dir.path().join("manifest.toml");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    let diff = agent.ctl(&["diff", "--exit-code", "-f", path.to_str().unwrap()]);
    assert_eq!(
        diff.code, 0,
        "berthctl diff after the upgrade:\n{}{}",
        diff.stdout, diff.stderr
    );
    // The adopted web replicas still serve on the published port.
    let page = http_tcp(port, "GET", "/index.html", &[], b"").unwrap();
    assert_eq!((page.status, page.text()), (200, "web v1\n".to_string()));
    let replaced = before
        .containers
        .keys()
        .filter(|id| !later.containers.contains_key(*id))
        .count();
    println!(
        "upgrade {} → HEAD: {} containers adopted, {replaced} replaced",
        release.version,
        later.containers.len()
    );
}

/// Regenerates `tests/fixtures/upgrade/VERSION/` (or `$BERTH_UPGRADE_FIXTURE_OUT`)
/// with the release's binaries: `scripts/upgrade-fixture.sh` runs it.
#[test]
#[ignore = "writes the fixture; run by scripts/upgrade-fixture.sh"]
fn write_fixture() {
    berth_agent::require_root!();
    let release = match std::env::var("BERTH_UPGRADE_VERSION") {
        Ok(v) => releases()
            .into_iter()
            .find(|r| r.version == v)
            .unwrap_or_else(|| panic!("{v} is not in tests/fixtures/upgrade/releases")),
        Err(_) => latest_release(),
    };
    let bins = release_bins(&release);
    let _sweep;
    let (_reg, mut agent, text, _, _) = previous_release_running(&bins);
    _sweep = CgroupSweep(agent.cgroup_parent());
    agent.terminate();
    let out = std::env::var("BERTH_UPGRADE_FIXTURE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| fixture_dir(&release.version));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("manifest.toml"), &text).unwrap();
    let state = agent.state_dir();
    copy_dir(&state.join("revisions"), &out.join("revisions"), &|_| true);
    copy_dir(&state.join("volumes"), &out.join("volumes"), &|p: &Path| {
        p.file_name().is_some_and(|n| n == "meta.json") || p.is_dir()
    });
    let containers = std::fs::read_dir(state.join("containers")).unwrap();
    for c in containers.flatten() {
        let to = out.join("containers").join(c.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for name in ["config.json", "state.json"] {
            std::fs::copy(c.path().join(name), to.join(name)).unwrap();
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(c.path().join("config.json")).unwrap()).unwrap();
        let label = config["container"]["labels"][LABEL_SPEC].as_str().unwrap();
        std::fs::write(to.join("berth.spec.json"), format!("{label}\n")).unwrap();
    }
    std::fs::write(
        out.join("VERSION"),
        format!(
            "{} {}\n{}",
            release.version,
            release.commit,
            String::from_utf8_lossy(
                &std::process::Command::new(bins.join("berthd"))
                    .arg("--version")
                    .output()
                    .unwrap()
                    .stdout
            )
        ),
    )
    .unwrap();
    eprintln!("wrote {}", out.display());
}

/// Copies the files of `from` that `keep` accepts (recursively) into `to`.
fn copy_dir(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    std::fs::create_dir_all(to).unwrap();
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            if keep(&path) {
                copy_dir(&path, &to.join(e.file_name()), keep);
            }
        } else if keep(&path) {
            std::fs::copy(&path, to.join(e.file_name())).unwrap();
        }
    }
}

/// What one release's fixture holds, read with this build's code.
struct FixtureCheck {
    containers: usize,
    /// `service: container: fields` of every stored spec this build would replace.
    replaced: Vec<String>,
}

/// Reads `dir` (a release's fixture) with this build's decoders and
/// compares every stored spec with this build's desired spec.
fn check_fixture(dir: &Path) -> FixtureCheck {
    let name = dir.display();
    // The revision: from its file, as the store rebuilds a lost database.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &dir.join("revisions"),
        &tmp.path().join("revisions"),
        &|_| true,
    );
    let (store, report) = Store::open(tmp.path()).unwrap();
    assert!(
        report.rebuilt_revisions >= 1,
        "{name}: no revision file this build can read"
    );
    let rec = store
        .latest_revision()
        .unwrap()
        .unwrap_or_else(|| panic!("{name}: no revision"));
    let text = std::fs::read_to_string(dir.join("manifest.toml")).unwrap();
    assert!(
        rec.files.values().any(|f| *f == text),
        "{name}: the revision does not hold manifest.toml"
    );
    // The manifest as this build parses it, and its desired specs with the
    // revision's resolved digests and env files.
    let (manifest, desired) = berth_agent::control::Agent::desired_of(&rec)
        .unwrap_or_else(|e| panic!("{name}: this build refuses the revision's manifest: {e}"));
    assert_eq!(
        Manifest::from_str_named("manifest.toml", &text)
            .unwrap()
            .services
            .keys()
            .collect::<Vec<_>>(),
        manifest.services.keys().collect::<Vec<_>>()
    );

    // The containers, read as the runtime re-adopts them.
    let state = tmp.path().join("state");
    copy_dir(&dir.join("containers"), &state.join("containers"), &|_| {
        true
    });
    let rt = Runtime::new(RuntimePaths::new(
        &state,
        tmp.path().join("run"),
        "berth-upgrade-fixture",
        "/nonexistent/berth-monitor",
    ));
    let ids: Vec<String> = std::fs::read_dir(state.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!ids.is_empty(), "{name}: no containers");
    let mut observed = Vec::new();
    let mut replaced = Vec::new();
    for id in &ids {
        let cdir = state.join("containers").join(id);
        let info = rt
            .info(id)
            .unwrap_or_else(|e| panic!("{name}: container {id}: {e}"));
        let st: Option<StateFile> = read_json(id, &cdir.join("state.json"))
            .unwrap_or_else(|e| panic!("{name}: container {id}: {e}"));
        assert!(st.is_some_and(|s| s.pid > 0), "{name}: {id}: state.json");
        let label = info
            .labels
            .get(LABEL_SPEC)
            .unwrap_or_else(|| panic!("{name}: {id} has no {LABEL_SPEC} label"));
        let file = std::fs::read_to_string(cdir.join("berth.spec.json")).unwrap();
        assert_eq!(label.trim(), file.trim(), "{name}: {id}: berth.spec.json");
        let service = info.labels[LABEL_SERVICE].clone();
        let spec = stored_spec(&info.labels)
            .unwrap_or_else(|| panic!("{name}: {id}: this build cannot read its stored spec"));
        let want = desired
            .iter()
            .find(|d| d.name == service)
            .unwrap_or_else(|| panic!("{name}: {id}: service {service} not in the manifest"));
        if !is_current(Some(&spec), &want.spec) {
            replaced.push(format!(
                "{service}: {id}: {:?}\n  stored (upgraded): {}\n  desired:           {}",
                spec.changed_fields(&want.spec),
                spec.canonical_json(),
                want.spec.canonical_json()
            ));
        }
        observed.push((service, id.clone(), spec));
    }

    // What `diff`/`apply` plan: every service unchanged.
    let obs: Vec<ObservedContainer> = observed
        .iter()
        .map(|(service, id, spec)| ObservedContainer {
            id: id.clone(),
            service: service.clone(),
            spec: Some(spec.clone()),
        })
        .collect();
    for p in plan(&desired, &obs) {
        if p.action != ServiceAction::Unchanged || !p.steps.is_empty() {
            replaced.push(format!(
                "plan for {}: {:?} {:?}",
                p.service, p.action, p.steps
            ));
        }
    }
    // What the reconciler decides with every replica ready: nothing.
    for svc in manifest.services.values() {
        let want = desired.iter().find(|d| d.name == svc.name).unwrap();
        let replicas: Vec<Replica> = observed
            .iter()
            .filter(|(s, _, _)| *s == svc.name)
            .map(|(_, id, spec)| Replica {
                id: id.clone(),
                current: is_current(Some(spec), &want.spec),
                phase: Phase::Ready,
                probe: None,
            })
            .collect();
        assert_eq!(
            replicas.len(),
            svc.replicas as usize,
            "{name}: the fixture lacks replicas of {}",
            svc.name
        );
        let intent = Intent {
            replicas: svc.replicas,
            strategy: svc.update.strategy,
            max_surge: svc.update.max_surge,
            max_unavailable: svc.update.max_unavailable,
            restart: svc.restart.policy,
            on_unhealthy: svc
                .health
                .as_ref()
                .map(|h| h.on_unhealthy)
                .unwrap_or(OnUnhealthy::Restart),
            restart_wait: None,
            failures: 0,
            first_deploy: false,
            image_failed: None,
            depends_on: Vec::new(),
            on_probation: false,
            retiring_unreported: false,
        };
        let d = decide(&intent, &replicas);
        if !d.actions.is_empty() || !d.converged || d.rolling_out {
            replaced.push(format!("decide for {}: {d:?}", svc.name));
        }
    }
    FixtureCheck {
        containers: ids.len(),
        replaced,
    }
}

#[test]
fn each_release_s_stored_specs_are_kept_by_this_build() {
    for release in releases() {
        let dir = fixture_dir(&release.version);
        assert!(
            dir.join("manifest.toml").is_file(),
            "{} has no fixture: run `bash scripts/upgrade-fixture.sh {}` (root)",
            release.version,
            release.version
        );
        let check = check_fixture(&dir);
        assert!(
            check.replaced.is_empty(),
            "this build would replace containers of Berth {} — the spec's canonical \
             form or comparison changed. Keep old stored specs equal: a new field \
             must be absent from the stored form while it has its default (see \
             `cap_add` in core/src/spec.rs), or bump SPEC_VERSION with an upgrade \
             step in ContainerSpec::from_stored.\n{}",
            release.version,
            check.replaced.join("\n")
        );
        assert_eq!(check.containers, CONTAINERS, "{}", release.version);
        println!(
            "upgrade {} → HEAD (fixture): {} containers kept, 0 replaced",
            release.version, check.containers
        );
    }
}

/// The specs of every earlier version still decode and upgrade to what the
/// container runs; each case under `tests/fixtures/upgrade/spec-vN/` is a
/// label as that version's berthd wrote it, the manifest text it came from
/// and the fields this build finds changed against that text.
#[test]
fn every_older_spec_version_still_decodes() {
    let root = workspace_root().join("tests/fixtures/upgrade");
    let mut seen = 0;
    for version in 1..berth_core::spec::SPEC_VERSION {
        let dir = root.join(format!("spec-v{version}"));
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "{}: no cases", dir.display());
        for path in cases {
            let case: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let label: serde_json::Value =
                serde_json::from_str(case["label"].as_str().unwrap()).unwrap();
            assert_eq!(label["version"], version, "{}", path.display());
            let spec = ContainerSpec::from_stored(&label)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(spec.version, berth_core::spec::SPEC_VERSION);
            let m = Manifest::from_str_named("m.toml", case["manifest"].as_str().unwrap()).unwrap();
            let svc = m.services.values().next().unwrap();
            let digest = case["digest"]
                .as_str()
                .map(|d| d.parse::<berth_core::image_ref::Digest>().unwrap());
            let now = ContainerSpec::for_service(svc, digest.as_ref(), &[]);
            let expected: Vec<String> = serde_json::from_value(case["changed"].clone()).unwrap();
            assert_eq!(
                spec.changed_fields(&now),
                expected,
                "{}: {}",
                path.display(),
                case["why"]
            );
            seen += 1;
        }
    }
    assert!(seen > 0 || berth_core::spec::SPEC_VERSION == 1);
}
