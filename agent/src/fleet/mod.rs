//! Fleet rollouts on etcd (`--fleet-etcd`): this agent's lease-bound host
//! record, the gate every new manifest from a source or `berthctl apply`
//! passes (a slot of the fleet's counting semaphore, after the earlier groups
//! baked, unless halted or paused), releasing the slot after probation,
//! halting a manifest whose rollout failed here, and `auto_revert`. Decisions
//! are pure (`decide`); etcd requests are in `etcd`. See docs/fleet.md.

pub mod decide;
pub mod etcd;
pub mod host;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::api::{FleetAgentStatus, FleetHalt, FleetHostRecord, FleetHostView, FleetStatus};
use berth_core::manifest::{valid_fleet_name, FleetPolicy, Manifest, MAX_FLEET_PARALLEL};
use berth_core::vocab::{EventKind, RevisionState};
use tokio::sync::watch;

use crate::config::{ConfigError, ConfigLayer};
use crate::control::manifest_identity;
use decide::{Policy, Snapshot};
use etcd::Conn;
pub use host::{FleetHost, HostRevision, Observation};

/// Why a fleet request failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd at {endpoints}: {what}: {}", etcd::describe(source))]
    Etcd {
        what: &'static str,
        /// The configured endpoints, comma-separated.
        endpoints: std::sync::Arc<str>,
        source: etcd_client::Error,
    },
    #[error("etcd: the lease keep-alive stream closed")]
    Closed,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fleet record JSON: {0}")]
    Json(serde_json::Error),
    #[error(
        "fleet {fleet}: host id {host:?} is held by another agent (its claim lasts as long as \
         that agent's etcd lease); give every agent its own --fleet-host"
    )]
    HostTaken { fleet: String, host: String },
    #[error("cannot keep this agent's fleet instance id in {path}: {source}")]
    Instance {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// TLS towards etcd: the CA that signs its certificate, and this agent's
/// client certificate (both PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The validated `--fleet-*` configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// etcd endpoints, `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// The fleet's name: its keys live under `/berth/fleet/<name>/`.
    pub name: String,
    pub group: String,
    pub host: String,
    /// etcd user and password.
    pub auth: Option<(String, String)>,
    pub tls: Option<EtcdTls>,
    /// Policy defaults; a manifest's `[fleet]` wins key by key.
    pub policy: FleetPolicy,
    /// How often the record, slot and halts are checked.
    pub interval: Duration,
    /// The lease's TTL: how long a gone agent's record and slot outlive it.
    pub lease_ttl: Duration,
    /// Which agent this is, beyond its host id: [`instance_id`] of its state
    /// dir. The host id is claimed for it in etcd, so a second agent with
    /// the same `--fleet-host` is refused while an agent restarted on the
    /// same state takes its claim over. Empty claims nothing (set by the
    /// agent, not by the flags).
    pub instance: String,
}

/// This agent's fleet instance id: 32 hex digits kept in
/// `<state_dir>/fleet-instance`, created on first use (written whole, then
/// renamed into place). It survives restarts and a lost state database.
pub fn instance_id(state_dir: &Path) -> Result<String, FleetError> {
    let path = state_dir.join("fleet-instance");
    let fail = |source| FleetError::Instance {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 32 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(s.trim().to_string())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let tmp = state_dir.join("fleet-instance.new");
    std::fs::write(&tmp, format!("{id}\n")).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    Ok(id)
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("endpoints", &self.endpoints)
            .field("name", &self.name)
            .field("group", &self.group)
            .field("host", &self.host)
            .field("user", &self.auth.as_ref().map(|a| &a.0))
            .field("tls", &self.tls)
            .field("policy", &self.policy)
            .field("interval", &self.interval)
            .field("lease_ttl", &self.lease_ttl)
            .field("instance", &self.instance)
            .finish()
    }
}

fn invalid(what: &'static str, value: impl Into<String>, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: value.into(),
        why,
    }
}

fn duration(
    what: &'static str,
    text: Option<&String>,
    default: Duration,
    min: Duration,
    why: &'static str,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    match berth_core::units::parse_duration(text) {
        Ok(d) if d >= min => Ok(d),
        _ => Err(invalid(what, text.clone(), why)),
    }
}

impl FleetConfig {
    /// The fleet configuration of a merged layer; `None` without `fleet_etcd`.
    pub fn from_layer(layer: &ConfigLayer) -> Result<Option<FleetConfig>, ConfigError> {
        let Some(etcd) = &layer.fleet_etcd else {
            let stray = layer.fleet.is_some()
                || layer.fleet_group.is_some()
                || layer.fleet_host.is_some()
                || layer.fleet_etcd_user.is_some()
                || layer.fleet_etcd_password_file.is_some()
                || layer.fleet_etcd_ca.is_some()
                || layer.fleet_etcd_cert.is_some()
                || layer.fleet_etcd_key.is_some()
                || layer.fleet_auto_revert.is_some()
                || layer.fleet_interval.is_some()
                || layer.fleet_lease_ttl.is_some()
                || layer.fleet_max_parallel.is_some()
                || layer.fleet_groups.is_some()
                || layer.fleet_bake.is_some();
            if stray {
                return Err(ConfigError::Fleet(
                    "--fleet, --fleet-group, --fleet-host and the other --fleet-* flags need --fleet-etcd",
                ));
            }
            return Ok(None);
        };
        let endpoints: Vec<String> = etcd
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(invalid(
                "--fleet-etcd",
                etcd.join(","),
                "one or more http(s)://HOST:PORT, comma-separated",
            ));
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "--fleet-etcd",
                    e.clone(),
                    "an etcd endpoint like http://127.0.0.1:2379 or https://etcd1:2379",
                ));
            }
        }
        let name = layer.fleet.clone().ok_or(ConfigError::Fleet(
            "--fleet-etcd needs --fleet NAME: the fleet this host joins",
        ))?;
        if !valid_fleet_name(&name) {
            return Err(invalid("--fleet", name, "1-63 of A-Z a-z 0-9 . _ -"));
        }
        let group = layer
            .fleet_group
            .clone()
            .unwrap_or_else(|| "default".into());
        if !valid_fleet_name(&group) {
            return Err(invalid("--fleet-group", group, "1-63 of A-Z a-z 0-9 . _ -"));
        }
        let host = match &layer.fleet_host {
            Some(h) => h.clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
        };
        if !valid_fleet_name(&host) {
            return Err(invalid(
                "--fleet-host",
                host,
                "1-63 of A-Z a-z 0-9 . _ - (default: the hostname)",
            ));
        }
        let auth = match (&layer.fleet_etcd_user, &layer.fleet_etcd_password_file) {
            (None, None) => None,
            (Some(user), Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::TokenRead {
                        path: path.clone(),
                        source,
                    })?;
                let password = text.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    return Err(ConfigError::TokenEmpty(path.clone()));
                }
                Some((user.clone(), password))
            }
            _ => {
                return Err(ConfigError::Fleet(
                    "--fleet-etcd-user and --fleet-etcd-password-file go together",
                ))
            }
        };
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        let tls = match (
            &layer.fleet_etcd_ca,
            &layer.fleet_etcd_cert,
            &layer.fleet_etcd_key,
        ) {
            (_, Some(_), None) | (_, None, Some(_)) => {
                return Err(ConfigError::Fleet(
                    "--fleet-etcd-cert and --fleet-etcd-key go together",
                ))
            }
            (None, None, None) if !https => None,
            (None, None, None) => {
                return Err(ConfigError::Fleet(
                    "an https:// --fleet-etcd endpoint needs --fleet-etcd-ca (the CA that signs etcd's certificate)",
                ))
            }
            (ca, cert, key) => {
                if !https {
                    return Err(ConfigError::Fleet(
                        "--fleet-etcd-ca/-cert/-key need https:// --fleet-etcd endpoints",
                    ));
                }
                Some(EtcdTls {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
        };
        if let Some(n) = layer.fleet_max_parallel {
            if !(1..=MAX_FLEET_PARALLEL).contains(&n) {
                return Err(invalid("--fleet-max-parallel", n.to_string(), "1-10000"));
            }
        }
        let groups = match &layer.fleet_groups {
            None => None,
            Some(list) => {
                let groups: Vec<String> = list
                    .iter()
                    .flat_map(|g| g.split(','))
                    .map(|g| g.trim().to_string())
                    .filter(|g| !g.is_empty())
                    .collect();
                let mut seen = BTreeSet::new();
                if groups.is_empty()
                    || groups
                        .iter()
                        .any(|g| !valid_fleet_name(g) || !seen.insert(g.clone()))
                {
                    return Err(invalid(
                        "--fleet-groups",
                        list.join(","),
                        "distinct group names in rollout order, comma-separated",
                    ));
                }
                Some(groups)
            }
        };
        let bake = match &layer.fleet_bake {
            None => None,
            Some(_) => Some(duration(
                "--fleet-bake",
                layer.fleet_bake.as_ref(),
                Duration::ZERO,
                Duration::ZERO,
                "a duration like \"5m\"",
            )?),
        };
        Ok(Some(FleetConfig {
            endpoints,
            name,
            group,
            host,
            auth,
            tls,
            policy: FleetPolicy {
                max_parallel: layer.fleet_max_parallel,
                groups,
                bake,
                auto_revert: layer.fleet_auto_revert,
            },
            interval: duration(
                "--fleet-interval",
                layer.fleet_interval.as_ref(),
                Duration::from_secs(2),
                Duration::from_millis(50),
                "a duration of at least 50ms, like \"2s\"",
            )?,
            instance: String::new(),
            lease_ttl: duration(
                "--fleet-lease-ttl",
                layer.fleet_lease_ttl.as_ref(),
                Duration::from_secs(10),
                Duration::from_secs(2),
                "a duration of at least 2s, like \"10s\"",
            )?,
        }))
    }

    /// The policy for a manifest: its `[fleet]` keys over this configuration's
    /// over the defaults.
    pub fn policy(&self, manifest: Option<&FleetPolicy>) -> Policy {
        let d = Policy::default();
        let m = manifest.cloned().unwrap_or_default();
        let c = &self.policy;
        Policy {
            max_parallel: m.max_parallel.or(c.max_parallel).unwrap_or(d.max_parallel),
            groups: m.groups.or(c.groups.clone()).unwrap_or(d.groups),
            bake: m.bake.or(c.bake).unwrap_or(d.bake),
            auto_revert: m.auto_revert.or(c.auto_revert).unwrap_or(d.auto_revert),
        }
    }
}

/// The fleet hash of a manifest: what every host compares (the same files
/// give the same hash on every host, whatever their names' formatting).
pub fn fleet_hash(manifest: &Manifest) -> String {
    manifest_identity(manifest)
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The slot this host holds.
#[derive(Debug, Clone)]
struct Slot {
    hash: String,
    /// The revision recorded under it (once apply recorded it).
    revision: Option<u64>,
    /// Since when that revision is complete with every replica ready.
    complete_since: Option<Instant>,
}

/// What a waiting manifest saw at its last gate: the wait is retried when
/// this changes (a freed slot, a halt, the pause, the slot held here), or at
/// `retry_at` (an earlier group's records are read, not watched).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    hash: String,
    max_parallel: u32,
    view: decide::View,
    held: Option<String>,
    retry_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    reachable: Option<bool>,
    error: Option<String>,
    /// (hash, reason, since): the newest manifest waits.
    pending: Option<(String, String, Instant)>,
    slot: Option<Slot>,
    /// The record last written, and under which lease.
    written: Option<(FleetHostRecord, i64, Instant)>,
    /// When the lease was last renewed, and which.
    renewed: Option<(i64, Instant)>,
    /// Since when this host is healthy on which hash.
    healthy_since: Option<(String, u64)>,
    /// Hashes already reverted here (`auto_revert` acts once per hash).
    reverted: BTreeSet<String>,
    /// Another agent holds this host's id (see [`FleetError::HostTaken`]).
    taken: bool,
    /// The last full snapshot read (for status while etcd is away), and
    /// when (RFC 3339).
    snapshot: Snapshot,
    snapshot_at: Option<String>,
    seen: Option<Seen>,
    /// The manifest the gate was last asked about, when, and whether its
    /// source retries it by itself (see [`decide::given_up`]).
    asked: Option<(String, Instant, bool)>,
}

/// The watched keys and whether the watch feeding them is alive.
#[derive(Debug, Default)]
struct Watched {
    cache: Option<decide::Cache>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The watch of the queue's deletions, while waiting near its front.
    queue_task: Option<tokio::task::JoinHandle<()>>,
}

/// This agent's membership of its fleet.
#[derive(Debug)]
pub struct Fleet {
    pub config: FleetConfig,
    conn: tokio::sync::Mutex<Option<Conn>>,
    state: std::sync::Mutex<State>,
    watched: Arc<std::sync::Mutex<Watched>>,
    /// Bumped on every watch event and when the watch ends.
    changed: Arc<watch::Sender<u64>>,
    /// Bumped when a halt or the pause changes (the membership loop reacts).
    halts: Arc<watch::Sender<u64>>,
    /// The host changed (a rollout completed or failed): tick now.
    nudge: tokio::sync::Notify,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Fleet {
        Fleet {
            config,
            conn: tokio::sync::Mutex::new(None),
            state: std::sync::Mutex::new(State::default()),
            watched: Arc::new(std::sync::Mutex::new(Watched::default())),
            changed: Arc::new(watch::channel(0).0),
            halts: Arc::new(watch::channel(0).0),
            nudge: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, Watched> {
        lock(&self.watched)
    }

    /// Tells the membership loop the host changed (berthd: any non-fleet
    /// event), so a finished rollout releases its slot without waiting for
    /// the next round.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// The connection, opened (with a new lease) if there is none, with the
    /// watch on the queue, halts and pause running.
    async fn conn(&self) -> Result<Conn, FleetError> {
        let mut guard = self.conn.lock().await;
        let mut c = match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = Conn::open(&self.config).await?;
                tracing::info!(fleet = %self.config.name, lease = c.lease, "joined the fleet's etcd");
                *guard = Some(c.clone());
                c
            }
        };
        if self.watched().cache.is_none() {
            self.start_watch(&mut c).await?;
        }
        Ok(c)
    }

    /// Reads the watched keys and follows them: a task applies the watch's
    /// events to the cache; when the watch ends the cache is dropped (the
    /// next request reads and watches again).
    async fn start_watch(&self, conn: &mut Conn) -> Result<(), FleetError> {
        let (cache, stream) = conn.watch().await?;
        let prefix = conn.key_prefix().to_string();
        let watched = self.watched.clone();
        let changed = self.changed.clone();
        let halts = self.halts.clone();
        let mut w = self.watched();
        if let Some(old) = w.task.take() {
            old.abort();
        }
        if let Some(old) = w.queue_task.take() {
            old.abort();
        }
        w.cache = Some(cache);
        w.task = Some(tokio::spawn(async move {
            follow(stream, &prefix, &watched, || {
                changed.send_modify(|n| *n += 1);
                halts.send_modify(|n| *n += 1);
            })
            .await;
            lock(&watched).cache = None;
            changed.send_modify(|n| *n += 1);
        }));
        drop(w);
        self.changed.send_modify(|n| *n += 1);
        self.halts.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The cached view of `hash` (`None`: no live watch).
    fn view(&self, hash: &str, max_parallel: u32) -> Option<decide::View> {
        self.watched()
            .cache
            .as_ref()
            .map(|c| c.view(hash, max_parallel))
    }

    /// Watches the queue's deletions from after `revision`, with `ahead` the
    /// entries ahead of this host read at `revision`.
    async fn watch_queue(
        &self,
        conn: &mut Conn,
        revision: i64,
        ahead: Vec<String>,
    ) -> Result<(), FleetError> {
        let stream = conn.watch_queue(revision + 1).await?;
        let prefix = conn.key_prefix().to_string();
        let watched = self.watched.clone();
        let changed = self.changed.clone();
        let mut w = self.watched();
        let Some(cache) = w.cache.as_mut() else {
            return Ok(());
        };
        cache.set_ahead(revision, Some(ahead));
        if let Some(old) = w.queue_task.take() {
            old.abort();
        }
        w.queue_task = Some(tokio::spawn(async move {
            follow(stream, &prefix, &watched, || {
                changed.send_modify(|n| *n += 1)
            })
            .await;
            if let Some(cache) = lock(&watched).cache.as_mut() {
                cache.set_ahead(0, None);
            }
            changed.send_modify(|n| *n += 1);
        }));
        Ok(())
    }

    /// Stops watching the queue (granted, left it, or far from its front).
    fn stop_queue_watch(&self) {
        let mut w = self.watched();
        if let Some(task) = w.queue_task.take() {
            task.abort();
        }
        if let Some(cache) = w.cache.as_mut() {
            cache.set_ahead(0, None);
        }
    }

    /// Leaves the slot queue (releases the slot if held).
    async fn dequeue(&self, conn: &mut Conn) -> Result<(), FleetError> {
        conn.dequeue().await?;
        self.stop_queue_watch();
        if let Some(cache) = self.watched().cache.as_mut() {
            cache.set_mine(None);
        }
        Ok(())
    }

    /// A manifest applied through the API and not applied again within
    /// [`decide::unasked_hold`] (3 s once its turn has come) stops waiting:
    /// it leaves the slot queue, so a turn nobody takes holds up the hosts
    /// behind it for one membership round at most, and its pending reason
    /// goes.
    async fn give_up_unasked<H: FleetHost + ?Sized>(
        &self,
        host: &H,
        conn: &mut Conn,
    ) -> Result<(), FleetError> {
        let k = self
            .state()
            .seen
            .as_ref()
            .map(|s| s.max_parallel.max(1) as usize);
        let (mine, ahead) = {
            let w = self.watched();
            let c = w.cache.as_ref();
            (
                c.and_then(|c| c.mine()).map(|(_, h)| h.to_string()),
                c.and_then(decide::Cache::ahead),
            )
        };
        let stale = {
            let s = self.state();
            match (&s.asked, &s.pending, &s.slot) {
                (Some((hash, at, retried)), Some((pending, _, _)), None) if pending == hash => {
                    let queued = mine.as_deref() == Some(hash.as_str());
                    let at_front = queued && ahead.zip(k).is_some_and(|(a, k)| a < k);
                    let hold = decide::unasked_hold(self.config.interval, at_front);
                    decide::given_up(*retried, at.elapsed(), hold)
                        .then(|| (hash.clone(), queued, at_front, hold))
                }
                _ => None,
            }
        };
        let Some((hash, queued, at_front, hold)) = stale else {
            return Ok(());
        };
        if queued {
            self.dequeue(conn).await?;
            self.changed.send_modify(|n| *n += 1);
        }
        self.state().asked = None;
        self.set_pending(host, None);
        host.emit(
            EventKind::FleetWaiting,
            format!(
                "fleet {}: manifest {} no longer waits: {} not applied again within {} s{} \
                 (`berthctl apply --wait` asks until a slot is granted)",
                self.config.name,
                short(&hash),
                if at_front {
                    "its turn came and it was"
                } else {
                    "it was"
                },
                hold.as_secs(),
                if queued {
                    " and left the slot queue"
                } else {
                    ""
                },
            ),
        );
        Ok(())
    }

    /// Records whether etcd answered; events and the metric on a change. A
    /// host id held by another agent is an answer, not an outage: etcd is
    /// up, this agent is kept out ([`EventKind::FleetHostTaken`]).
    fn reached<H: FleetHost + ?Sized>(&self, host: &H, result: Result<(), &FleetError>) {
        let taken = matches!(result, Err(FleetError::HostTaken { .. }));
        let (was, now, was_taken) = {
            let mut s = self.state();
            let was = s.reachable;
            let was_taken = s.taken;
            s.reachable = Some(result.is_ok() || taken);
            s.taken = taken;
            s.error = result.err().map(|e| e.to_string());
            (was, s.reachable, was_taken)
        };
        host.metrics()
            .fleet_etcd_up
            .set(i64::from(now == Some(true)));
        match result {
            Err(e @ FleetError::HostTaken { .. }) if !was_taken => {
                tracing::error!(error = %e, "fleet host id taken");
                host.emit(
                    EventKind::FleetHostTaken,
                    format!("{e}; no gated rollout starts until it is free"),
                );
            }
            Ok(()) if was_taken => {
                host.emit(
                    EventKind::FleetReachable,
                    format!(
                        "fleet {}: joined as host {:?}: its id is free now",
                        self.config.name, self.config.host
                    ),
                );
            }
            Ok(()) if was == Some(false) => {
                tracing::info!("fleet etcd reachable again");
                host.emit(
                    EventKind::FleetReachable,
                    format!("fleet {}: etcd answers again", self.config.name),
                );
            }
            Err(e) if !taken && was != Some(false) => {
                tracing::warn!(error = %e, "fleet etcd unreachable");
                host.emit(
                    EventKind::FleetUnreachable,
                    format!(
                        "fleet {}: etcd unreachable, no gated rollout starts: {e}",
                        self.config.name
                    ),
                );
            }
            _ => {}
        }
    }

    /// Sets (or clears) why the newest manifest waits; an event once per
    /// distinct reason.
    fn set_pending<H: FleetHost + ?Sized>(&self, host: &H, pending: Option<(&str, String)>) {
        let changed = {
            let mut s = self.state();
            match pending {
                None => {
                    s.pending = None;
                    s.seen = None;
                    None
                }
                Some((hash, reason)) => {
                    // One event per kind of wait, not per second baked.
                    let kind =
                        |r: &str| -> String { r.chars().filter(|c| !c.is_ascii_digit()).collect() };
                    let same = s
                        .pending
                        .as_ref()
                        .is_some_and(|(h, r, _)| h == hash && kind(r) == kind(&reason));
                    let since = s
                        .pending
                        .as_ref()
                        .filter(|(h, _, _)| h == hash)
                        .map(|p| p.2)
                        .unwrap_or_else(Instant::now);
                    s.pending = Some((hash.to_string(), reason.clone(), since));
                    (!same).then_some(reason)
                }
            }
        };
        let waited = self
            .state()
            .pending
            .as_ref()
            .map(|p| p.2.elapsed().as_secs() as i64)
            .unwrap_or(0);
        host.metrics().fleet_gated_waiting_seconds.set(waited);
        if let Some(reason) = changed {
            host.emit(EventKind::FleetWaiting, format!("manifest waits: {reason}"));
        }
    }

    /// The gate before a new manifest is recorded: `Ok` when this host holds
    /// a slot for `hash` (or `hash` is what it runs: nothing to gate), `Err`
    /// with why it waits. Never blocks beyond one round of etcd requests; a
    /// host waiting in the queue decides from its watched cache and asks
    /// etcd only when the cache says a slot is free.
    pub async fn gate<H: FleetHost + ?Sized>(
        &self,
        host: &H,
        hash: &str,
        current: Option<&str>,
        manifest_policy: Option<&FleetPolicy>,
        retried: bool,
    ) -> Result<(), String> {
        self.state().asked = Some((hash.to_string(), Instant::now(), retried));
        if current == Some(hash) {
            self.set_pending(host, None);
            return Ok(());
        }
        let held = self.state().slot.as_ref().map(|s| s.hash.clone());
        let policy = self.config.policy(manifest_policy);
        match held {
            Some(h) if h == hash => return Ok(()),
            // One rollout per host at a time: the slot stays with the one in
            // progress (it ends complete, or failed and halted).
            Some(h) => {
                let reason = format!(
                    "manifest {} is still rolling out here; the new one waits for it",
                    short(&h)
                );
                self.set_pending(host, Some((hash, reason.clone())));
                self.remember(hash, policy.max_parallel, None);
                return Err(reason);
            }
            None => {}
        }
        let result = self.try_gate(hash, &policy).await;
        match result {
            Ok((Ok(()), _)) => {
                self.reached(host, Ok(()));
                self.set_pending(host, None);
                self.state().slot = Some(Slot {
                    hash: hash.to_string(),
                    revision: None,
                    complete_since: None,
                });
                host.metrics().fleet_slots_held.set(1);
                host.emit(
                    EventKind::FleetSlotAcquired,
                    format!(
                        "fleet {}: slot taken for manifest {}",
                        self.config.name,
                        short(hash)
                    ),
                );
                Ok(())
            }
            Ok((Err(wait), retry)) => {
                self.reached(host, Ok(()));
                let reason = wait.to_string();
                self.set_pending(host, Some((hash, reason.clone())));
                self.remember(hash, policy.max_parallel, retry);
                Err(reason)
            }
            Err(e) => {
                self.reached(host, Err(&e));
                let reason = match &e {
                    FleetError::HostTaken { .. } => format!("{e}; no new rollout starts"),
                    _ => format!("etcd unreachable, no new rollout starts: {e}"),
                };
                self.set_pending(host, Some((hash, reason.clone())));
                self.remember(hash, policy.max_parallel, Some(self.config.interval));
                Err(reason)
            }
        }
    }

    /// Notes what the waiting `hash` saw, for [`Fleet::wait_for_change`].
    fn remember(&self, hash: &str, max_parallel: u32, retry_in: Option<Duration>) {
        let view = self.view(hash, max_parallel);
        let mut s = self.state();
        s.seen = view.map(|view| Seen {
            hash: hash.to_string(),
            max_parallel,
            view,
            held: s.slot.as_ref().map(|sl| sl.hash.clone()),
            retry_at: retry_in.map(|d| Instant::now() + d),
        });
    }

    /// Waits (at most `max`) until the manifest that waits at the gate may
    /// get further: the watched queue frees a slot for it, a halt or the
    /// pause changes, the slot held here is released, or an earlier group's
    /// bake time is up. `true` when the gate is worth asking again; `false`
    /// after `max`. The manifest sources (and the fleet benchmark) retry the
    /// gate on `true` instead of waiting for their next poll.
    pub async fn wait_for_change(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        let mut rx = self.changed.subscribe();
        loop {
            let (seen, waiting) = {
                let s = self.state();
                (s.seen.clone(), s.pending.is_some())
            };
            let Some(seen) = seen else {
                if !waiting {
                    tokio::time::sleep_until(deadline).await;
                    return false;
                }
                // etcd did not answer at the last gate: retry when the
                // watch is back (or at the caller's poll).
                tokio::select! {
                    r = rx.changed() => {
                        if r.is_err() {
                            tokio::time::sleep_until(deadline).await;
                            return false;
                        }
                        if self.watched().cache.is_some() {
                            return true;
                        }
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline) => return false,
                }
            };
            let held = self.state().slot.as_ref().map(|s| s.hash.clone());
            match self.view(&seen.hash, seen.max_parallel) {
                // A view that said "slot" when etcd said no waits for
                // the cache to catch up (a change), not in a loop.
                Some(v) if v != seen.view => return true,
                None => return true, // the watch ended: the gate reads again
                Some(_) if held != seen.held => return true,
                Some(_) => {}
            }
            let until = match seen.retry_at {
                Some(at) if at <= Instant::now() => return true,
                Some(at) => deadline.min(tokio::time::Instant::from_std(at)),
                None => deadline,
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { tokio::time::sleep_until(deadline).await; return false },
                _ = tokio::time::sleep_until(until) => {
                    if until == deadline { return false }
                }
            }
        }
    }

    /// The gate's etcd round: `Ok` with the slot, or why it waits and when
    /// to ask again unless the watched keys say so first (`None`: they will).
    async fn try_gate(
        &self,
        hash: &str,
        policy: &Policy,
    ) -> Result<(Result<(), decide::Wait>, Option<Duration>), FleetError> {
        let mut conn = self.conn().await?;
        let me = &self.config.host;
        let k = policy.max_parallel.max(1) as usize;
        let (view, mine) = {
            let w = self.watched();
            let Some(cache) = w.cache.as_ref() else {
                return Err(FleetError::Closed);
            };
            (
                cache.view(hash, policy.max_parallel),
                cache.mine().map(|(r, h)| (r, h.to_string())),
            )
        };
        let halted_wait = |halt: &FleetHalt| decide::Wait::Halted {
            host: halt.host.clone(),
            reason: halt.reason.clone(),
        };
        // A host that may not queue keeps no place it could block others with.
        let stop = if view.paused {
            Some(decide::Wait::Paused)
        } else {
            view.halted.as_ref().map(halted_wait)
        };
        if let Some(wait) = stop {
            if mine.is_some() {
                self.dequeue(&mut conn).await?;
            }
            return Ok((Err(wait), None));
        }
        let rev = match mine.filter(|(_, h)| h == hash) {
            // Already queued for it: it keeps its place.
            Some((rev, _)) => rev,
            None => {
                let mine_rank = policy.rank(&self.config.group);
                let earlier: Vec<String> = policy.groups.iter().take(mine_rank).cloned().collect();
                let snap = Snapshot {
                    hosts: conn.records(&earlier).await?,
                    ..Default::default()
                };
                let decision =
                    decide::may_queue(&snap, me, &self.config.group, hash, policy, now_ms());
                if let Err(wait) = decision {
                    if self
                        .watched()
                        .cache
                        .as_ref()
                        .and_then(|c| c.mine())
                        .is_some()
                    {
                        self.dequeue(&mut conn).await?;
                    }
                    let retry = match &wait {
                        decide::Wait::EarlierGroup { ready_in, .. } => Some(
                            ready_in.map_or(self.config.interval, |d| d.min(self.config.interval)),
                        ),
                        _ => None,
                    };
                    return Ok((Err(wait), retry));
                }
                self.stop_queue_watch();
                let rev = conn.enqueue(hash).await?;
                if let Some(c) = self.watched().cache.as_mut() {
                    c.set_mine(Some((rev, hash.to_string())));
                }
                rev
            }
        };
        // Watching the entries ahead: they decide until fewer than K are left.
        let cached = {
            let w = self.watched();
            w.cache
                .as_ref()
                .and_then(|c| c.ahead().map(|a| (a, c.first(k))))
        };
        if let Some((ahead, holders)) = cached.clone().filter(|(a, _)| *a >= k) {
            let wait = decide::Wait::Queued {
                position: ahead + 1,
                holders,
            };
            return Ok((Err(wait), None));
        }
        let limit = decide::near_limit(policy.max_parallel);
        if cached.is_none() {
            // Far back, the index count says so without reading the queue.
            let hint = conn.ahead_hint(rev).await?;
            if decide::place(hint, policy.max_parallel, limit) == decide::Place::Far {
                let wait = decide::Wait::Queued {
                    position: hint + 1,
                    holders: Vec::new(),
                };
                return Ok((Err(wait), Some(self.config.interval)));
            }
        }
        let c = conn.confirm(hash, rev, limit).await?;
        if c.paused || c.halted.is_some() {
            self.dequeue(&mut conn).await?;
            let wait = match &c.halted {
                Some(h) => halted_wait(h),
                None => decide::Wait::Paused,
            };
            return Ok((Err(wait), None));
        }
        let queued = decide::Wait::Queued {
            position: c.ahead.len() + 1,
            holders: c.ahead.iter().take(k).cloned().collect(),
        };
        match decide::place(c.ahead.len(), policy.max_parallel, limit) {
            decide::Place::Slot => {
                self.stop_queue_watch();
                Ok((Ok(()), None))
            }
            decide::Place::Near => {
                if cached.is_none() {
                    self.watch_queue(&mut conn, c.revision, c.ahead).await?;
                }
                Ok((Err(queued), None))
            }
            decide::Place::Far => {
                self.stop_queue_watch();
                Ok((Err(queued), Some(self.config.interval)))
            }
        }
    }

    /// After the gated apply: the revision it recorded (`None`: nothing was
    /// recorded, the slot is released at the next tick).
    pub fn applied(&self, hash: &str, revision: Option<u64>) {
        let mut s = self.state();
        if let Some(slot) = s.slot.as_mut().filter(|sl| sl.hash == hash) {
            slot.revision = revision.or(Some(0));
        }
        drop(s);
        self.nudge();
    }

    /// This agent's part in the fleet, for `status`.
    pub fn agent_status(&self) -> FleetAgentStatus {
        let s = self.state();
        FleetAgentStatus {
            fleet: self.config.name.clone(),
            host: self.config.host.clone(),
            group: self.config.group.clone(),
            reachable: s.reachable == Some(true),
            error: s.error.clone(),
            slot_held: s.slot.is_some(),
            pending: s.pending.as_ref().map(|p| p.1.clone()),
        }
    }

    /// The halts this host knows of (from its watch), oldest first.
    pub fn known_halts(&self) -> Vec<FleetHalt> {
        self.watched()
            .cache
            .as_ref()
            .map(|c| c.halts())
            .unwrap_or_default()
    }

    /// The whole fleet as etcd has it now (or as last seen, when it does
    /// not answer).
    pub async fn fleet_status<H: FleetHost + ?Sized>(&self, host: &H) -> FleetStatus {
        let fresh = match self.conn().await {
            Ok(mut c) => c.snapshot().await,
            Err(e) => Err(e),
        };
        match fresh {
            Ok(snap) => {
                self.reached(host, Ok(()));
                let mut s = self.state();
                s.snapshot = snap;
                s.snapshot_at = Some(crate::now_rfc3339());
            }
            Err(e) => self.reached(host, Err(&e)),
        }
        // As `reached` recorded it (a host id held elsewhere is an answer).
        let (snap, reachable, error, read_at) = {
            let s = self.state();
            (
                s.snapshot.clone(),
                s.reachable == Some(true),
                s.error.clone(),
                s.snapshot_at.clone(),
            )
        };
        let policy = self
            .config
            .policy(host.observe().latest.and_then(|r| r.policy).as_ref());
        let mut queue = snap.queue.clone();
        queue.sort_by_key(|q| q.create_revision);
        let n = policy.max_parallel.max(1) as usize;
        let hosts = snap
            .hosts
            .iter()
            .map(|r| {
                let pos = queue.iter().position(|q| q.host == r.host);
                FleetHostView {
                    record: r.clone(),
                    slot_held: pos.is_some_and(|p| p < n),
                    queue_position: pos.filter(|p| *p >= n).map(|p| p + 1),
                }
            })
            .collect();
        FleetStatus {
            fleet: self.config.name.clone(),
            host: self.config.host.clone(),
            reachable,
            error,
            read_at,
            paused: snap.paused,
            max_parallel: policy.max_parallel,
            groups: policy.groups,
            bake: berth_core::units::format_duration(policy.bake),
            auto_revert: policy.auto_revert,
            hosts,
            halted: snap.halted,
        }
    }

    /// `berthctl fleet pause` (`on`) / `resume` (clears the pause and every halt).
    pub async fn set_paused<H: FleetHost + ?Sized>(
        &self,
        host: &H,
        on: bool,
    ) -> Result<(), FleetError> {
        let mut conn = self.conn().await?;
        let r = conn.set_paused(on).await;
        self.reached(host, r.as_ref().map(|_| ()));
        r?;
        host.emit(
            EventKind::FleetWaiting,
            if on {
                format!("fleet {} paused by {}", self.config.name, self.config.host)
            } else {
                format!("fleet {} resumed by {}", self.config.name, self.config.host)
            },
        );
        Ok(())
    }

    /// This host's record from what the host observes.
    fn record<H: FleetHost + ?Sized>(&self, host: &H, obs: &Observation) -> FleetHostRecord {
        let latest = obs.latest.as_ref();
        let hash = latest.and_then(|r| r.hash.clone());
        let state = latest.map(|r| r.state);
        let healthy = state == Some(RevisionState::Complete) && obs.all_ready;
        let since = {
            let mut s = self.state();
            match (&hash, healthy) {
                (Some(h), true) => {
                    if s.healthy_since.as_ref().is_none_or(|(sh, _)| sh != h) {
                        s.healthy_since = Some((h.clone(), now_ms()));
                    }
                    s.healthy_since.as_ref().map(|x| x.1)
                }
                _ => {
                    s.healthy_since = None;
                    None
                }
            }
        };
        FleetHostRecord {
            host: self.config.host.clone(),
            group: self.config.group.clone(),
            revision: latest.map(|r| r.number),
            manifest_hash: hash,
            state,
            digests: latest.map(|r| r.digests.clone()).unwrap_or_default(),
            ready: obs.ready,
            desired: obs.desired,
            healthy,
            healthy_since_ms: since,
            draining: host.draining(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            last_error: obs.last_error.clone().or_else(|| host.source_error()),
            pending: self.state().pending.as_ref().map(|p| p.1.clone()),
        }
    }

    /// One round: renew the lease (every third of its TTL), write the record
    /// if it changed, release or halt the held slot, revert a halted
    /// manifest (`auto_revert`). Halts come from the watch, not a read.
    async fn tick<H: FleetHost + ?Sized>(&self, host: &H) -> Result<(), FleetError> {
        let mut conn = self.conn().await?;
        let renew_every = (self.config.lease_ttl / 3).max(Duration::from_millis(500));
        let due = self
            .state()
            .renewed
            .is_none_or(|(lease, at)| lease != conn.lease || at.elapsed() >= renew_every);
        if due {
            if !conn.keep_alive().await? {
                tracing::warn!(lease = conn.lease, "fleet lease expired: joining again");
                *self.conn.lock().await = None;
                conn = self.conn().await?;
                // The expired lease took this host's queue entry with it, so
                // other hosts may already have been granted its slot. The
                // rollout here cannot be taken back: join the queue again
                // (at the back: hosts that queue later count it) and say so.
                let held = self.state().slot.as_ref().map(|s| s.hash.clone());
                if let Some(hash) = held {
                    conn.enqueue(&hash).await?;
                    host.emit(
                        EventKind::FleetUnreachable,
                        format!(
                            "fleet {}: the etcd lease expired while this host held a slot for manifest {}; \
                             its rollout goes on and it queued again, but until it releases the slot \
                             the fleet may roll one host more than max_parallel (a --fleet-lease-ttl \
                             longer than the longest etcd outage prevents this)",
                            self.config.name,
                            short(&hash)
                        ),
                    );
                }
            }
            self.state().renewed = Some((conn.lease, Instant::now()));
        }
        let obs = host.observe();
        let record = self.record(host, &obs);
        let due = {
            let s = self.state();
            match &s.written {
                None => true,
                Some((r, lease, at)) => {
                    // What others decide on goes out at once; the rest at
                    // most once per interval.
                    let decisive = (&r.manifest_hash, r.revision, r.state, r.healthy, r.draining)
                        != (
                            &record.manifest_hash,
                            record.revision,
                            record.state,
                            record.healthy,
                            record.draining,
                        );
                    *lease != conn.lease
                        || decisive
                        || (*r != record && at.elapsed() >= self.config.interval)
                }
            }
        };
        if due {
            conn.put_record(&record).await?;
            self.state().written = Some((record.clone(), conn.lease, Instant::now()));
        }
        self.check_slot(host, &mut conn, &obs).await?;
        self.give_up_unasked(host, &mut conn).await?;
        let halts = self.known_halts();
        self.maybe_revert(host, &record, &obs, &halts).await;
        if let Some(p) = &self.state().pending {
            host.metrics()
                .fleet_gated_waiting_seconds
                .set(p.2.elapsed().as_secs() as i64);
        }
        Ok(())
    }

    /// Releases the slot once its revision completed and passed probation;
    /// halts its manifest for the fleet if the revision failed.
    async fn check_slot<H: FleetHost + ?Sized>(
        &self,
        host: &H,
        conn: &mut Conn,
        obs: &Observation,
    ) -> Result<(), FleetError> {
        let Some(slot) = self.state().slot.clone() else {
            return Ok(());
        };
        let Some(n) = slot.revision else {
            return Ok(()); // the gated apply is still recording
        };
        let rec = host.revision(n);
        let current = obs.latest.as_ref().is_some_and(|l| l.number == n);
        let state = rec.as_ref().map(|r| r.state);
        let complete_for = if state == Some(RevisionState::Complete) && current {
            let healthy = self.record(host, obs).healthy;
            let mut s = self.state();
            match s.slot.as_mut() {
                Some(sl) if healthy => {
                    Some(sl.complete_since.get_or_insert_with(Instant::now).elapsed())
                }
                Some(sl) => {
                    sl.complete_since = None;
                    None
                }
                None => return Ok(()),
            }
        } else {
            None
        };
        let probation = rec.as_ref().map(|r| r.probation).unwrap_or_default();
        enum Next {
            Wait,
            Release(String),
            Halt(String),
        }
        let next = match decide::slot_next(n, state, current, complete_for, probation) {
            decide::SlotNext::Hold => Next::Wait,
            decide::SlotNext::Release(why) => Next::Release(why),
            decide::SlotNext::Halt => Next::Halt(
                host.any_error()
                    .unwrap_or_else(|| format!("revision {n} failed")),
            ),
        };
        match next {
            Next::Wait => {}
            Next::Release(why) => {
                self.dequeue(conn).await?;
                self.state().slot = None;
                self.changed.send_modify(|n| *n += 1);
                host.metrics().fleet_slots_held.set(0);
                host.emit(
                    EventKind::FleetSlotReleased,
                    format!("fleet {}: slot released: {why}", self.config.name),
                );
            }
            Next::Halt(reason) => {
                let halt = FleetHalt {
                    hash: slot.hash.clone(),
                    host: self.config.host.clone(),
                    reason: reason.clone(),
                    time: crate::now_rfc3339(),
                };
                conn.halt(&halt).await?;
                self.dequeue(conn).await?;
                self.state().slot = None;
                self.changed.send_modify(|n| *n += 1);
                host.metrics().fleet_slots_held.set(0);
                host.metrics().fleet_halts.inc();
                host.emit(
                    EventKind::FleetHalted,
                    format!(
                        "fleet {}: manifest {} halted: revision {n} failed here: {reason}",
                        self.config.name,
                        short(&slot.hash)
                    ),
                );
                host.emit(
                    EventKind::FleetSlotReleased,
                    format!(
                        "fleet {}: slot released: revision {n} failed",
                        self.config.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// With `auto_revert`, a host that completed a manifest another host
    /// later halted restores its newest complete revision of another manifest.
    async fn maybe_revert<H: FleetHost + ?Sized>(
        &self,
        host: &H,
        record: &FleetHostRecord,
        obs: &Observation,
        halts: &[FleetHalt],
    ) {
        let Some(hash) = &record.manifest_hash else {
            return;
        };
        let Some(halt) = halts.iter().find(|h| &h.hash == hash) else {
            return;
        };
        if record.state != Some(RevisionState::Complete) || self.state().reverted.contains(hash) {
            return;
        }
        let policy = self
            .config
            .policy(obs.latest.as_ref().and_then(|r| r.policy.as_ref()));
        if !policy.auto_revert {
            return;
        }
        let summary = host.revisions();
        self.state().reverted.insert(hash.clone());
        let Some(previous) = decide::revert_target(&summary, hash) else {
            tracing::warn!("auto_revert: no earlier complete revision to restore");
            return;
        };
        match host.restore(previous).await {
            Ok(revision) => host.emit(
                EventKind::FleetReverted,
                format!(
                    "fleet {}: manifest {} halted by {} ({}): restored revision {} as revision {}",
                    self.config.name,
                    short(hash),
                    halt.host,
                    halt.reason,
                    previous,
                    revision.unwrap_or(0)
                ),
            ),
            Err(e) => tracing::warn!(error = %e, "auto_revert failed"),
        }
    }

    /// Leaves the fleet: stops the watch and revokes the lease (record and
    /// queue place go now, not after the TTL).
    pub async fn leave(&self) {
        {
            let mut w = self.watched();
            for task in [w.task.take(), w.queue_task.take()].into_iter().flatten() {
                task.abort();
            }
        }
        if let Some(c) = self.conn.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.revoke()).await;
        }
    }
}

/// The fleet hash of the current revision's manifest.
pub fn current_hash<H: FleetHost + ?Sized>(host: &H) -> Option<String> {
    host.observe().latest.and_then(|r| r.hash)
}

fn lock(watched: &std::sync::Mutex<Watched>) -> std::sync::MutexGuard<'_, Watched> {
    watched.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies a watch's events to the watched cache until the stream ends (or
/// fails), calling `notify` after each batch of changes.
async fn follow(
    mut stream: etcd_client::WatchStream,
    prefix: &str,
    watched: &std::sync::Mutex<Watched>,
    notify: impl Fn(),
) {
    loop {
        let changes = match stream.message().await {
            Ok(Some(resp)) => etcd::changes(prefix, &resp),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "fleet watch ended");
                None
            }
        };
        let Some(changes) = changes else { break };
        if changes.is_empty() {
            continue;
        }
        if let Some(cache) = lock(watched).cache.as_mut() {
            for (rev, change) in changes {
                cache.apply(rev, change);
            }
        }
        notify();
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Runs the fleet membership of `host` until `shutdown`: a round every
/// `interval`, and at once when the host changes ([`Fleet::nudge`]) or a
/// halt or the pause changes.
pub async fn run<H: FleetHost + ?Sized>(
    fleet: Arc<Fleet>,
    host: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(fleet = %fleet.config.name, host = %fleet.config.host, group = %fleet.config.group,
        endpoints = ?fleet.config.endpoints, "fleet membership on etcd");
    let mut halts = fleet.halts.subscribe();
    loop {
        let r = fleet.tick(&*host).await;
        fleet.reached(&*host, r.as_ref().map(|_| ()));
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(fleet.config.interval) => {}
            _ = fleet.nudge.notified() => {}
            r = halts.changed() => if r.is_err() { break },
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break },
        }
    }
    fleet.leave().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = instance_id(dir.path()).unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(instance_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(instance_id(other.path()).unwrap(), id);
        // A damaged file gets a new id rather than stopping the agent.
        std::fs::write(dir.path().join("fleet-instance"), "half").unwrap();
        let new = instance_id(dir.path()).unwrap();
        assert_ne!(new, id);
        assert_eq!(instance_id(dir.path()).unwrap(), new);
    }

    fn layer(pairs: &str) -> ConfigLayer {
        toml::from_str(pairs).expect("layer")
    }

    #[test]
    fn fleet_flags_are_validated_and_default() {
        assert_eq!(FleetConfig::from_layer(&layer("")).ok(), Some(None));
        let c = FleetConfig::from_layer(&layer(
            "fleet_etcd = [\"http://127.0.0.1:2379,http://127.0.0.2:2379\"]\nfleet = \"shop\"\nfleet_host = \"h1\"\nfleet_groups = [\"canary,default\"]\nfleet_bake = \"3s\"",
        ))
        .expect("valid")
        .expect("a fleet");
        assert_eq!(
            c.endpoints,
            ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
        );
        assert_eq!(c.group, "default");
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            c.policy.groups.as_deref(),
            Some(&["canary".to_string(), "default".to_string()][..])
        );
        let bad = [
            ("fleet = \"shop\"", "need --fleet-etcd"),
            ("fleet_etcd = [\"127.0.0.1:2379\"]\nfleet = \"s\"", "--fleet-etcd `127.0.0.1:2379`"),
            ("fleet_etcd = [\"http://e:2379\"]", "needs --fleet NAME"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"a/b\"", "--fleet `a/b`"),
            ("fleet_etcd = [\"https://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"", "needs --fleet-etcd-ca"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_etcd_cert = \"/c\"", "go together"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_etcd_user = \"u\"", "go together"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_max_parallel = 0", "--fleet-max-parallel"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_groups = [\"a,a\"]", "--fleet-groups"),
            ("fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_lease_ttl = \"1s\"", "--fleet-lease-ttl"),
        ];
        for (text, needle) in bad {
            let err = FleetConfig::from_layer(&layer(text))
                .expect_err(text)
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_manifest_policy_wins_key_by_key() {
        let c = FleetConfig::from_layer(&layer(
            "fleet_etcd = [\"http://e:2379\"]\nfleet = \"s\"\nfleet_host = \"h\"\nfleet_max_parallel = 5\nfleet_bake = \"1m\"",
        ))
        .expect("valid")
        .expect("a fleet");
        let p = c.policy(Some(&FleetPolicy {
            max_parallel: Some(2),
            ..Default::default()
        }));
        assert_eq!(p.max_parallel, 2, "manifest over config");
        assert_eq!(
            p.bake,
            Duration::from_secs(60),
            "config where the manifest is silent"
        );
        assert!(p.groups.is_empty() && !p.auto_revert, "defaults");
        assert_eq!(c.policy(None).max_parallel, 5);
    }
}
