//! The daemon's lifecycle and the one composition root: take the state-dir
//! lock, open the store, build the agent from its parts ([`build_agent`]:
//! registry, images, network with its NAT/DNAT fallbacks, runtime, DNS,
//! volumes), bind the listeners (root-only unix socket, HTTPS TCP behind a
//! token and/or client certificates — plain TCP only when asked for —,
//! read-only HTTP), serve until SIGTERM/SIGINT, then shut down cleanly.

use berth_core::vocab::EventKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use crate::config::{AgentConfig, ApiListen};
use crate::control::{Agent, AgentError, AgentParts};
use crate::events::EventBus;
use crate::http::{api_router, read_only_router, Listener};
use crate::image::store::{ImageError, ImageStore};
use crate::metrics::Metrics;
use crate::network::proxy::PortProxy;
use crate::network::{NetConfig, NetError, Network};
use crate::registry::config::RegistryConfig;
use crate::registry::{RegistryClient, RegistryError};
use crate::runtime::{Runtime, RuntimePaths};
use crate::state::{private_dir, StateError, Store};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("--registry-config: {0}")]
    RegistryConfig(#[from] crate::registry::config::ConfigError),
    #[error("registry client: {0}")]
    Registry(#[from] RegistryError),
    #[error("image store: {0}")]
    Images(#[from] Box<ImageError>),
    #[error("--subnet: {0}")]
    Subnet(#[from] crate::network::addr::AddrError),
    #[error("network: {0}")]
    Network(#[from] NetError),
    #[error("volumes: {0}")]
    Volumes(#[from] crate::volumes::VolumeError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("another berthd already uses state dir {0} (lock held)")]
    Locked(PathBuf),
    #[error("another berthd is already serving {0}")]
    SocketInUse(PathBuf),
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds the exclusive lock on the state dir for the daemon's lifetime.
#[derive(Debug)]
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Takes `state_dir/berthd.lock` exclusively, so two agents never share state.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, DaemonError> {
    private_dir(state_dir)?;
    let path = state_dir.join("berthd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Io {
            path: path.clone(),
            source,
        })?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(StateLock { _file: lock }),
        Err(_) => Err(DaemonError::Locked(state_dir.to_path_buf())),
    }
}

/// Binds a unix socket at `path` with mode 0600 in a 0700 directory. A stale
/// socket file is replaced; a live one (another agent) is an error.
pub async fn bind_unix(path: &Path) -> Result<UnixListener, DaemonError> {
    let io = |source| DaemonError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(|source| DaemonError::Bind {
        what: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// The monitor executable: `berth-monitor` beside the running binary, or
/// the running binary itself (it understands the monitor subcommand too).
fn monitor_exe() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| "berthd".into());
    let sibling = me.with_file_name("berth-monitor");
    if sibling.is_file() {
        sibling
    } else {
        me
    }
}

/// Registry settings: `--registry-config` plus Docker's `config.json`
/// (`config.docker_config`; an unreadable one is logged and skipped, as the
/// Docker CLI does).
fn registry_config(config: &AgentConfig) -> Result<RegistryConfig, DaemonError> {
    let mut rc = match &config.registry_config {
        Some(path) => RegistryConfig::load(path)?,
        None => RegistryConfig::new(),
    };
    if let Some(path) = &config.docker_config {
        if let Err(e) = rc.load_docker_config(path) {
            tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable Docker config");
        }
    }
    Ok(rc)
}

/// Builds the agent of `config` over an open `store`: every part is made
/// here and nowhere else. Without nftables the network runs without NAT and
/// isolation, and published ports without the DNAT fast path (both logged).
pub fn build_agent(
    config: AgentConfig,
    store: Store,
) -> Result<(Arc<Agent>, Arc<Network>), DaemonError> {
    let metrics = Metrics::new();
    let registry = RegistryClient::new(registry_config(&config)?)?;
    let images = ImageStore::open(
        config.state_dir.clone(),
        store.tree("images")?,
        registry,
        metrics.clone(),
    )
    .map_err(Box::new)?;
    let subnet = crate::network::addr::Ipv4Net::new(config.subnet.0, config.subnet.1)?;
    // Outbound NAT and isolation from other bridges (nftables), like
    // Docker's default; without nftables the agent still runs, unisolated.
    let net_config = |masquerade| -> Result<NetConfig, DaemonError> {
        Ok(NetConfig {
            bridge: config.bridge.clone(),
            subnet,
            run_dir: config.run_dir.clone(),
            ipam_tree: store.tree("ipam")?,
            masquerade,
        })
    };
    let network = match Network::open(net_config(true)?) {
        Ok(n) => n,
        Err(e @ NetError::Nat { .. }) => {
            tracing::warn!(error = %e, "no NAT or bridge isolation (is nftables installed?)");
            Network::open(net_config(false)?)?
        }
        Err(e) => return Err(e.into()),
    };
    // Published ports take the kernel's DNAT path where the bridge's
    // nftables table exists; the proxy alone otherwise.
    let proxy = if network.masquerade() {
        match crate::network::dnat::Dnat::enable(network.bridge(), network.subnet()) {
            Ok(dnat) => PortProxy::with_dnat(tokio::runtime::Handle::current(), dnat),
            Err(e) => {
                tracing::warn!(error = %e, "published ports without the DNAT fast path");
                PortProxy::new()
            }
        }
    } else {
        PortProxy::new()
    };
    let proxy = proxy.with_default_ip(config.publish_ip);
    let dns = crate::dns::Dns::new(crate::dns::DnsConfig {
        dir: config.run_dir.join("dns"),
        exe: crate::dns::DnsConfig::default_exe(),
        listen: subnet.gateway(),
        subnet,
        upstreams: config.dns_upstream.clone(),
    });
    let volumes = crate::volumes::VolumeStore::open(config.state_dir.join("volumes"))?;
    let runtime = Arc::new(Runtime::new(RuntimePaths::new(
        config.state_dir.clone(),
        config.run_dir.clone(),
        &config.cgroup_parent,
        monitor_exe(),
    )));
    let log_archive = crate::logs::LogArchive::new(
        config.state_dir.join("logs"),
        crate::logs::ARCHIVE_KEEP,
        crate::logs::ARCHIVE_MAX_BYTES,
    );
    let events = EventBus::persistent(store.tree(crate::events::TREE)?);
    let network = Arc::new(network);
    let containers = Arc::new(crate::containers::RuntimeContainers::new(
        runtime.clone(),
        network.clone(),
        log_archive.clone(),
    ));
    let userns_support = userns_support(&runtime.paths().monitor_exe, &config.state_dir);
    let agent = Agent::new(AgentParts {
        config,
        store,
        events,
        metrics,
        images,
        runtime,
        log_archive,
        containers,
        proxy,
        dns: Arc::new(dns),
        volumes: Arc::new(volumes),
        userns_support,
    })?;
    Ok((agent, network))
}

/// Whether `userns = "auto"` services can run here: the kernel's support
/// ([`crate::runtime::userns::probe`]), then whether the filesystem under
/// `state_dir` takes id-mapped mounts (probed through `monitor_exe`, since
/// making a user namespace needs a single-threaded process).
pub fn userns_support(monitor_exe: &Path, state_dir: &Path) -> Result<(), String> {
    crate::runtime::userns::probe()?;
    crate::runtime::userns::probe_filesystem(monitor_exe, state_dir)
}

/// Longest start-up waits for the manifest source's first sync.
pub const FIRST_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the agent until a shutdown signal.
pub async fn run(config: AgentConfig) -> Result<(), DaemonError> {
    // Handlers first: a SIGTERM during the start-up waits below must shut
    // down cleanly, not take the default action.
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        let _ = signalled_tx.send(true);
    });
    // The TCP API's certificates are read before anything else, so a bad
    // file stops the start with its name, before state is touched.
    let has_tcp = config.api.iter().any(|a| matches!(a, ApiListen::Tcp(_)));
    let tls = match &config.api_tls {
        Some(tls) if has_tcp => Some(crate::tls::server_config(tls)?),
        _ => None,
    };
    match crate::sys::limits::raise_open_files() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "raised the open-file limit (RLIMIT_NOFILE)")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
    let _lock = lock_state_dir(&config.state_dir)?;
    private_dir(&config.run_dir)?;
    let (store, report) = Store::open(&config.state_dir)?;
    if let Some(lost) = &report.lost {
        tracing::error!(reason = %lost.describe(), moved_to = ?report.moved_aside,
            rebuilt_revisions = report.rebuilt_revisions,
            "the state database was lost; revisions were rebuilt from revisions/*.rev, the rest follows from the kernel and the disk");
    }
    let (agent, network) = build_agent(config.clone(), store)?;
    // What a lost database held comes back before anything can hand out an
    // address or id range, collect an image or answer the API.
    let rebuilt = {
        let (agent, network) = (agent.clone(), network.clone());
        crate::control::blocking("rebuilding state", move || {
            crate::rebuild::run(&agent, &network, &report)
        })
        .await?
    };
    if let Some(r) = rebuilt {
        let _ = agent.rebuilt.set(r);
    }
    agent
        .metrics
        .register_collector(Box::new(crate::stats::ContainerStats::new(
            agent.runtime.clone(),
        )));
    if let Some(store_size) = crate::stats::StoreSize::new(config.state_dir.clone()) {
        agent.metrics.register_collector(Box::new(store_size));
    }

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for api in &config.api {
        match api {
            ApiListen::Unix(path) => {
                let listener = bind_unix(path).await?;
                sockets.push(path.clone());
                tracing::info!(socket = %path.display(), "API listening (unix, root-only)");
                let router = api_router(agent.clone(), Listener::Unix, None);
                let mut rx = shutdown_tx.subscribe();
                servers.spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = rx.recv().await;
                        })
                        .await
                });
            }
            ApiListen::Tcp(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| DaemonError::Bind {
                            what: format!("tcp:{addr}"),
                            source,
                        })?;
                let router = api_router(agent.clone(), Listener::Tcp, config.api_token.clone());
                let mut rx = shutdown_tx.subscribe();
                let shutdown = async move {
                    let _ = rx.recv().await;
                };
                match &tls {
                    Some(tls) => {
                        let client_certs = config
                            .api_tls
                            .as_ref()
                            .is_some_and(|t| t.client_ca.is_some());
                        tracing::info!(%addr, token = config.api_token.is_some(), client_certs,
                            "API listening (tcp, HTTPS)");
                        let listener = crate::tls::TlsListener::new(listener, tls.clone())
                            .map_err(|source| DaemonError::Bind {
                                what: format!("tcp:{addr}"),
                                source,
                            })?;
                        servers.spawn(async move {
                            axum::serve(listener, router)
                                .with_graceful_shutdown(shutdown)
                                .await
                        });
                    }
                    None => {
                        tracing::warn!(%addr,
                            "API listening on plain HTTP (--api-insecure): the bearer token, manifests and secret paths cross the network in clear text; use --api-tls-cert and --api-tls-key");
                        servers.spawn(async move {
                            axum::serve(listener, router)
                                .with_graceful_shutdown(shutdown)
                                .await
                        });
                    }
                }
            }
        }
    }
    let http = TcpListener::bind(config.http)
        .await
        .map_err(|source| DaemonError::Bind {
            what: format!("--http {}", config.http),
            source,
        })?;
    tracing::info!(addr = %config.http, "read-only HTTP listening (metrics, health, readiness)");
    let router = read_only_router(agent.clone());
    let mut rx = shutdown_tx.subscribe();
    servers.spawn(async move {
        axum::serve(http, router)
            .with_graceful_shutdown(async move {
                let _ = rx.recv().await;
            })
            .await
    });

    // The manifest source applies its current content before the agent
    // reports ready (bounded, so an unreachable remote does not block it).
    let (sources_stop, sources_rx) = tokio::sync::watch::channel(false);
    // The fleet membership (record, slot, halts) runs beside the source,
    // whose new manifests pass its gate.
    let fleet_task = agent.fleet.clone().map(|fleet| {
        tokio::spawn(crate::fleet::run(
            fleet,
            agent.clone(),
            sources_stop.subscribe(),
        ))
    });
    let source = crate::sources::spawn(agent.clone(), sources_rx);
    let source_task = match source {
        Some(mut running) => {
            tokio::select! {
                waited = tokio::time::timeout(FIRST_SYNC_WAIT, &mut running.first_sync) => {
                    if waited.is_err() {
                        tracing::warn!("the manifest source's first sync is still running; serving anyway");
                    }
                }
                _ = signalled.wait_for(|s| *s) => {}
            }
            Some(running.task)
        }
        None => None,
    };

    // Network state left by an earlier run: orphans go, live containers keep
    // their addresses.
    match agent.list_containers().await {
        Ok(list) => {
            let ids: Vec<String> = list.iter().map(|c| c.id.clone()).collect();
            match network.reconcile(ids.iter().map(String::as_str)) {
                Ok(r) if !r.namespaces_removed.is_empty() || !r.veths_deleted.is_empty() => {
                    tracing::info!(namespaces = ?r.namespaces_removed, veths = ?r.veths_deleted, "removed network leftovers")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "network reconcile failed"),
            }
            // Replicas the DNAT rules were serving stay Ready until their
            // first health result, so a restart takes none out of service.
            let adopted = agent.proxy.adopted();
            let mut live = agent.live();
            for id in ids {
                if let Some(att) = network.get(&id) {
                    if adopted.contains(&att.ip) {
                        live.adopted_ready.insert(id.clone());
                    }
                    live.addresses.insert(id, att.ip);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list containers at start"),
    }
    // Service discovery: berth-dns runs (found again, started or replaced)
    // before containers are started, so they get it as their nameserver;
    // then it is checked every DNS_CHECK. It is never stopped with berthd.
    let (dns_stop, mut dns_rx) = tokio::sync::watch::channel(false);
    let mut dns_error = None;
    ensure_dns(&agent, &mut dns_error).await;
    let dns_agent = agent.clone();
    let dns_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DNS_CHECK) => ensure_dns(&dns_agent, &mut dns_error).await,
                _ = dns_rx.changed() => return,
            }
        }
    });
    // The state filesystem, every --disk-check-interval: fuller than
    // AUTO_GC_USED_FRACTION, GC removes unused images and prunes the log
    // archive; the database's headroom is renewed (see
    // `Store::reserve_headroom`).
    let disk_agent = agent.clone();
    let disk_every = config.disk_check_interval;
    let disk_task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(disk_every).await;
            if let Err(e) = disk_agent.store().reserve_headroom() {
                tracing::debug!(error = %e, "state database headroom not renewed");
            }
            disk_agent.maybe_auto_gc(None).await;
        }
    });
    // The first reconcile pass (re-adopting what runs) completes before the
    // agent reports ready.
    let (reconcile_stop, reconcile_rx) = tokio::sync::watch::channel(false);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reconciler = tokio::spawn(crate::reconcile::run::run_loop(
        agent.clone(),
        reconcile_rx,
        first_tx,
    ));
    tokio::select! {
        waited = tokio::time::timeout(FIRST_SYNC_WAIT, first_rx) => {
            if waited.is_err() {
                tracing::warn!("the first reconcile pass is still running; serving anyway");
            }
        }
        // Returns at once when the signal came earlier.
        _ = signalled.wait_for(|s| *s) => {}
    }
    if !*signalled.borrow() {
        agent.set_ready();
        agent.emit(
            EventKind::AgentStarted,
            None,
            format!("berthd {} ready", env!("CARGO_PKG_VERSION")),
        );
        tracing::info!("berthd ready");
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    let _ = signalled.wait_for(|s| *s).await;
    tracing::info!("shutting down");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(());
    let _ = sources_stop.send(true);
    let _ = reconcile_stop.send(true);
    let _ = dns_stop.send(true);
    dns_task.abort();
    disk_task.abort();
    if let Some(task) = fleet_task {
        // Leaving revokes the lease: the record and any slot go at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    if tokio::time::timeout(std::time::Duration::from_secs(5), reconciler)
        .await
        .is_err()
    {
        tracing::warn!("reconciler did not stop within 5s");
    }
    if let Some(task) = source_task {
        let abort = task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    // Followers of /v1/events keep connections open; do not wait forever.
    let drain = async { while servers.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        servers.abort_all();
    }
    agent.store().flush()?;
    for path in sockets {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "could not remove socket");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often berthd checks that berth-dns still runs.
pub const DNS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Makes sure berth-dns runs as configured (see `dns::Dns::ensure_server`);
/// logs a failure once per distinct message.
async fn ensure_dns(agent: &Arc<Agent>, last_error: &mut Option<String>) {
    use crate::dns::Outcome;
    let dns = agent.dns.clone();
    let result = tokio::task::spawn_blocking(move || dns.ensure_server())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let m = &agent.metrics;
    match result {
        Ok(outcome) => {
            match outcome {
                Outcome::Running { .. } => {}
                Outcome::Started { pid } => {
                    m.dns_server_started("missing");
                    tracing::info!(pid, listen = %agent.dns.config().listen, "berth-dns started");
                }
                Outcome::Replaced { old, new } => {
                    m.dns_server_started("replaced");
                    tracing::info!(old, new, "berth-dns replaced (binary or arguments changed)");
                }
            }
            *last_error = None;
            m.dns_server_up.set(1);
        }
        Err(e) => {
            if last_error.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "service discovery is unavailable; new containers get the host's resolvers");
                *last_error = Some(e);
            }
            m.dns_server_up.set(0);
        }
    }
}

/// Tells systemd (`Type=notify`) about readiness and shutdown; nothing without
/// `$NOTIFY_SOCKET`. A failed notification is logged, never fatal.
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Shared agent handle type for binaries and tests.
pub type AgentHandle = Arc<Agent>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::ConfigLayer;

    #[tokio::test]
    async fn a_bad_registry_config_is_a_start_up_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("registries.toml");
        std::fs::write(&bad, "[registry.\"r.test\"\nmirrors = 3\n").unwrap();
        let config = AgentConfig::from_layer(ConfigLayer {
            state_dir: Some(dir.path().join("state")),
            run_dir: Some(dir.path().join("run")),
            registry_config: Some(bad.clone()),
            ..Default::default()
        })
        .unwrap();
        let (store, _) = Store::open(&config.state_dir).unwrap();
        let err = build_agent(config, store).err().unwrap();
        assert!(
            matches!(err, DaemonError::RegistryConfig(_)),
            "a start-up error, not a bad request: {err:?}"
        );
        assert!(err.to_string().starts_with("--registry-config: "), "{err}");
        let missing = dir.path().join("nope.toml");
        let config = AgentConfig::from_layer(ConfigLayer {
            state_dir: Some(dir.path().join("state2")),
            run_dir: Some(dir.path().join("run2")),
            registry_config: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap();
        let (store, _) = Store::open(&config.state_dir).unwrap();
        let err = build_agent(config, store).err().unwrap().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
