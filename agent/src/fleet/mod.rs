//! Fleet rollouts on etcd (`--fleet-etcd`): this agent's lease-bound host
//! record, the gate every new manifest from a source or `berthctl apply`
//! passes (a slot of the fleet's counting semaphore, after the earlier groups
//! baked, unless halted or paused), releasing the slot after probation,
//! halting a manifest whose rollout failed here, and `auto_revert`. Decisions
//! are pure (`decide`); etcd requests are in `etcd`. See docs/fleet.md.

pub mod decide;
pub mod etcd;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::api::{FleetAgentStatus, FleetHalt, FleetHostRecord, FleetHostView, FleetStatus};
use berth_core::manifest::{valid_fleet_name, FleetPolicy, Manifest, MAX_FLEET_PARALLEL};
use berth_core::vocab::{EventKind, RevisionState};
use tokio::sync::watch;

use crate::config::{ConfigError, ConfigLayer};
use crate::control::{manifest_identity, Agent, ApplySource};
use decide::{Policy, Snapshot};
use etcd::Conn;

/// Why a fleet request failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd: {what}: {}", etcd::describe(source))]
    Etcd {
        what: &'static str,
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

#[derive(Debug, Default)]
struct State {
    reachable: Option<bool>,
    error: Option<String>,
    /// (hash, reason, since): the newest manifest waits.
    pending: Option<(String, String, Instant)>,
    slot: Option<Slot>,
    /// The record last written, and under which lease.
    written: Option<(FleetHostRecord, i64, Instant)>,
    /// Since when this host is healthy on which hash.
    healthy_since: Option<(String, u64)>,
    /// Hashes already reverted here (`auto_revert` acts once per hash).
    reverted: BTreeSet<String>,
    /// The last snapshot read (for status while etcd is away).
    snapshot: Snapshot,
}

/// This agent's membership of its fleet.
#[derive(Debug)]
pub struct Fleet {
    pub config: FleetConfig,
    conn: tokio::sync::Mutex<Option<Conn>>,
    state: std::sync::Mutex<State>,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Fleet {
        Fleet {
            config,
            conn: tokio::sync::Mutex::new(None),
            state: std::sync::Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection, opened (with a new lease) if there is none.
    async fn conn(&self) -> Result<Conn, FleetError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Conn::open(&self.config).await?;
        tracing::info!(fleet = %self.config.name, lease = c.lease, "joined the fleet's etcd");
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Records whether etcd answered; events and the metric on a change.
    fn reached(&self, agent: &Agent, result: Result<(), &FleetError>) {
        let (was, now) = {
            let mut s = self.state();
            let was = s.reachable;
            s.reachable = Some(result.is_ok());
            s.error = result.err().map(|e| e.to_string());
            (was, s.reachable)
        };
        agent
            .metrics
            .fleet_etcd_up
            .set(i64::from(now == Some(true)));
        match (was, result) {
            (Some(false), Ok(())) => {
                tracing::info!("fleet etcd reachable again");
                agent.emit(
                    EventKind::FleetReachable,
                    None,
                    format!("fleet {}: etcd answers again", self.config.name),
                );
            }
            (Some(true) | None, Err(e)) => {
                tracing::warn!(error = %e, "fleet etcd unreachable");
                agent.emit(
                    EventKind::FleetUnreachable,
                    None,
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
    fn set_pending(&self, agent: &Agent, pending: Option<(&str, String)>) {
        let changed = {
            let mut s = self.state();
            match pending {
                None => {
                    s.pending = None;
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
        agent.metrics.fleet_gated_waiting_seconds.set(waited);
        if let Some(reason) = changed {
            agent.emit(
                EventKind::FleetWaiting,
                None,
                format!("manifest waits: {reason}"),
            );
        }
    }

    /// The gate before a new manifest is recorded: `Ok` when this host holds
    /// a slot for `hash` (or `hash` is what it runs: nothing to gate), `Err`
    /// with why it waits. Never blocks beyond one round of etcd requests.
    pub async fn gate(
        &self,
        agent: &Agent,
        hash: &str,
        current: Option<&str>,
        manifest_policy: Option<&FleetPolicy>,
    ) -> Result<(), String> {
        if current == Some(hash) {
            self.set_pending(agent, None);
            return Ok(());
        }
        let held = self.state().slot.as_ref().map(|s| s.hash.clone());
        match held {
            Some(h) if h == hash => return Ok(()),
            // One rollout per host at a time: the slot stays with the one in
            // progress (it ends complete, or failed and halted).
            Some(h) => {
                let reason = format!(
                    "manifest {} is still rolling out here; the new one waits for it",
                    short(&h)
                );
                self.set_pending(agent, Some((hash, reason.clone())));
                return Err(reason);
            }
            None => {}
        }
        let policy = self.config.policy(manifest_policy);
        let result = self.try_gate(hash, &policy).await;
        match result {
            Ok(Ok(())) => {
                self.reached(agent, Ok(()));
                self.set_pending(agent, None);
                self.state().slot = Some(Slot {
                    hash: hash.to_string(),
                    revision: None,
                    complete_since: None,
                });
                agent.metrics.fleet_slots_held.set(1);
                agent.emit(
                    EventKind::FleetSlotAcquired,
                    None,
                    format!(
                        "fleet {}: slot taken for manifest {}",
                        self.config.name,
                        short(hash)
                    ),
                );
                Ok(())
            }
            Ok(Err(wait)) => {
                self.reached(agent, Ok(()));
                let reason = wait.to_string();
                self.set_pending(agent, Some((hash, reason.clone())));
                Err(reason)
            }
            Err(e) => {
                self.reached(agent, Err(&e));
                let reason = format!("etcd unreachable, no new rollout starts: {e}");
                self.set_pending(agent, Some((hash, reason.clone())));
                Err(reason)
            }
        }
    }

    async fn try_gate(
        &self,
        hash: &str,
        policy: &Policy,
    ) -> Result<Result<(), decide::Wait>, FleetError> {
        let mut conn = self.conn().await?;
        let snap = conn.snapshot().await?;
        let me = &self.config.host;
        let decision = decide::may_queue(&snap, me, &self.config.group, hash, policy, now_ms());
        self.state().snapshot = snap.clone();
        if let Err(wait) = decision {
            // A host that may not queue keeps no place it could block others with.
            if snap.queue.iter().any(|q| &q.host == me) {
                conn.dequeue().await?;
            }
            return Ok(Err(wait));
        }
        conn.enqueue(hash).await?;
        let snap = conn.snapshot().await?;
        let slot = decide::slot(&snap.queue, me, policy.max_parallel);
        self.state().snapshot = snap;
        Ok(slot)
    }

    /// After the gated apply: the revision it recorded (`None`: nothing was
    /// recorded, the slot is released at the next tick).
    pub fn applied(&self, hash: &str, revision: Option<u64>) {
        let mut s = self.state();
        if let Some(slot) = s.slot.as_mut().filter(|sl| sl.hash == hash) {
            slot.revision = revision.or(Some(0));
        }
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

    /// The whole fleet as etcd has it now (or as last seen, when it does
    /// not answer).
    pub async fn fleet_status(&self, agent: &Agent) -> FleetStatus {
        let fresh = match self.conn().await {
            Ok(mut c) => c.snapshot().await,
            Err(e) => Err(e),
        };
        let (snap, reachable, error) = match fresh {
            Ok(snap) => {
                self.reached(agent, Ok(()));
                self.state().snapshot = snap.clone();
                (snap, true, None)
            }
            Err(e) => {
                self.reached(agent, Err(&e));
                (self.state().snapshot.clone(), false, Some(e.to_string()))
            }
        };
        let policy = self
            .config
            .policy(current_manifest(agent).and_then(|m| m.fleet).as_ref());
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
    pub async fn set_paused(&self, agent: &Agent, on: bool) -> Result<(), FleetError> {
        let mut conn = self.conn().await?;
        let r = conn.set_paused(on).await;
        self.reached(agent, r.as_ref().map(|_| ()));
        r?;
        agent.emit(
            EventKind::FleetWaiting,
            None,
            if on {
                format!("fleet {} paused by {}", self.config.name, self.config.host)
            } else {
                format!("fleet {} resumed by {}", self.config.name, self.config.host)
            },
        );
        Ok(())
    }

    /// This host's record from the agent's store and live state.
    fn record(&self, agent: &Agent) -> FleetHostRecord {
        let latest = agent.store().latest_revision().ok().flatten();
        let manifest = latest
            .as_ref()
            .and_then(|r| Agent::desired_of(r).ok())
            .map(|(m, _)| m);
        let hash = manifest.as_ref().map(fleet_hash);
        let (mut ready, mut desired, mut all_ready, mut last_error) = (0, 0, true, None);
        if let Some(m) = &manifest {
            let live = agent.live();
            for s in m.services.values() {
                let l = live.services.get(&s.name).cloned().unwrap_or_default();
                ready += l.ready.min(s.replicas);
                desired += s.replicas;
                all_ready &= l.ready >= s.replicas;
                if last_error.is_none() {
                    last_error = l.last_error.clone();
                }
            }
        }
        let state = latest.as_ref().map(|r| r.info.state);
        let healthy = state == Some(RevisionState::Complete) && all_ready;
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
            revision: latest.as_ref().map(|r| r.info.number),
            manifest_hash: hash,
            state,
            digests: latest.map(|r| r.info.digests).unwrap_or_default(),
            ready,
            desired,
            healthy,
            healthy_since_ms: since,
            draining: agent.is_draining(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            last_error: last_error.or_else(|| agent.source_error()),
            pending: self.state().pending.as_ref().map(|p| p.1.clone()),
        }
    }

    /// One round: renew the lease, release or halt the held slot, write the
    /// record if it changed, revert a halted manifest (`auto_revert`).
    async fn tick(&self, agent: &Agent) -> Result<(), FleetError> {
        let mut conn = self.conn().await?;
        if !conn.keep_alive().await? {
            tracing::warn!(lease = conn.lease, "fleet lease expired: joining again");
            *self.conn.lock().await = None;
            conn = self.conn().await?;
        }
        self.check_slot(agent, &mut conn).await?;
        let record = self.record(agent);
        let due = {
            let s = self.state();
            match &s.written {
                None => true,
                Some((r, lease, at)) => {
                    *lease != conn.lease || (*r != record && at.elapsed() >= self.config.interval)
                }
            }
        };
        if due {
            conn.put_record(&record).await?;
            self.state().written = Some((record.clone(), conn.lease, Instant::now()));
        }
        let snap = conn.snapshot().await?;
        self.state().snapshot = snap.clone();
        self.maybe_revert(agent, &record, &snap).await;
        if let Some(p) = &self.state().pending {
            agent
                .metrics
                .fleet_gated_waiting_seconds
                .set(p.2.elapsed().as_secs() as i64);
        }
        Ok(())
    }

    /// Releases the slot once its revision completed and passed probation;
    /// halts its manifest for the fleet if the revision failed.
    async fn check_slot(&self, agent: &Agent, conn: &mut Conn) -> Result<(), FleetError> {
        let Some(slot) = self.state().slot.clone() else {
            return Ok(());
        };
        let Some(n) = slot.revision else {
            return Ok(()); // the gated apply is still recording
        };
        let rec = agent.store().revision(n).ok().flatten();
        let current = agent
            .store()
            .latest_revision()
            .ok()
            .flatten()
            .is_some_and(|l| l.info.number == n);
        let state = rec.as_ref().map(|r| r.info.state);
        let complete_for = if state == Some(RevisionState::Complete) && current {
            let healthy = self.record(agent).healthy;
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
        let probation = rec
            .as_ref()
            .and_then(|r| Agent::desired_of(r).ok())
            .and_then(|(m, _)| m.services.values().map(|s| s.update.probation).max())
            .unwrap_or_default();
        enum Next {
            Wait,
            Release(String),
            Halt(String),
        }
        let next = match decide::slot_next(n, state, current, complete_for, probation) {
            decide::SlotNext::Hold => Next::Wait,
            decide::SlotNext::Release(why) => Next::Release(why),
            decide::SlotNext::Halt => Next::Halt({
                let live = agent.live();
                live.services
                    .values()
                    .find_map(|l| l.last_error.clone())
                    .unwrap_or_else(|| format!("revision {n} failed"))
            }),
        };
        match next {
            Next::Wait => {}
            Next::Release(why) => {
                conn.dequeue().await?;
                self.state().slot = None;
                agent.metrics.fleet_slots_held.set(0);
                agent.emit(
                    EventKind::FleetSlotReleased,
                    None,
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
                conn.dequeue().await?;
                self.state().slot = None;
                agent.metrics.fleet_slots_held.set(0);
                agent.metrics.fleet_halts.inc();
                agent.emit(
                    EventKind::FleetHalted,
                    None,
                    format!(
                        "fleet {}: manifest {} halted: revision {n} failed here: {reason}",
                        self.config.name,
                        short(&slot.hash)
                    ),
                );
                agent.emit(
                    EventKind::FleetSlotReleased,
                    None,
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
    async fn maybe_revert(&self, agent: &Agent, record: &FleetHostRecord, snap: &Snapshot) {
        let Some(hash) = &record.manifest_hash else {
            return;
        };
        let Some(halt) = snap.halted.iter().find(|h| &h.hash == hash) else {
            return;
        };
        if record.state != Some(RevisionState::Complete) || self.state().reverted.contains(hash) {
            return;
        }
        let policy = self
            .config
            .policy(current_manifest(agent).and_then(|m| m.fleet).as_ref());
        if !policy.auto_revert {
            return;
        }
        let Ok(revisions) = agent.store().revisions() else {
            return;
        };
        let summary: Vec<(u64, RevisionState, String)> = revisions
            .iter()
            .map(|r| {
                let h = Agent::desired_of(r)
                    .map(|(m, _)| fleet_hash(&m))
                    .unwrap_or_default();
                (r.info.number, r.info.state, h)
            })
            .collect();
        self.state().reverted.insert(hash.clone());
        let previous = decide::revert_target(&summary, hash)
            .and_then(|n| revisions.iter().find(|r| r.info.number == n));
        let Some(prev) = previous else {
            tracing::warn!("auto_revert: no earlier complete revision to restore");
            return;
        };
        match agent
            .restore(prev, ApplySource::Rollback(prev.info.number))
            .await
        {
            Ok(resp) => agent.emit(
                EventKind::FleetReverted,
                None,
                format!(
                    "fleet {}: manifest {} halted by {} ({}): restored revision {} as revision {}",
                    self.config.name,
                    short(hash),
                    halt.host,
                    halt.reason,
                    prev.info.number,
                    resp.revision.unwrap_or(0)
                ),
            ),
            Err(e) => tracing::warn!(error = %e, "auto_revert failed"),
        }
    }

    /// Leaves the fleet: revokes the lease (record and queue place go now,
    /// not after the TTL).
    async fn leave(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.revoke()).await;
        }
    }
}

/// The current revision's manifest, if any.
fn current_manifest(agent: &Agent) -> Option<Manifest> {
    let latest = agent.store().latest_revision().ok().flatten()?;
    Agent::desired_of(&latest).ok().map(|(m, _)| m)
}

/// The fleet hash of the current revision's manifest.
pub fn current_hash(agent: &Agent) -> Option<String> {
    current_manifest(agent).as_ref().map(fleet_hash)
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Runs the fleet membership until `shutdown`: a tick every `interval`.
pub async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let Some(fleet) = agent.fleet.clone() else {
        return;
    };
    tracing::info!(fleet = %fleet.config.name, host = %fleet.config.host, group = %fleet.config.group,
        endpoints = ?fleet.config.endpoints, "fleet membership on etcd");
    loop {
        let r = fleet.tick(&agent).await;
        fleet.reached(&agent, r.as_ref().map(|_| ()));
        if crate::sources::sleep_or_stop(fleet.config.interval, &mut shutdown).await {
            break;
        }
    }
    fleet.leave().await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
