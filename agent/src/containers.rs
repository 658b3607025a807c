//! The runtime seam: everything the reconciler and the health checks do to
//! containers (list, start with the network attached, stop-and-remove,
//! kill, remove, exec) behind one async trait, as youki keeps syscalls behind one
//! trait. [`RuntimeContainers`] is the real one: it owns the runtime, the
//! network and the log archive, and makes their blocking calls off the async
//! threads. Reconcile tests drive the same code with a scripted fake.

use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::logs::LogArchive;
use crate::network::{NetError, Network};
use crate::runtime::{ContainerConfig, ContainerInfo, ExecOutput, ExitInfo, Runtime, RuntimeError};

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("network: {0}")]
    Network(Box<NetError>),
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    /// Starting failed, and so did detaching the network it was given.
    #[error("{error}; undoing the network also failed: {undo}")]
    StartUndo {
        error: Box<RuntimeError>,
        undo: Box<NetError>,
    },
    /// The blocking thread running the operation panicked or was cancelled.
    #[error("{what}: the worker thread failed: {reason}")]
    Worker { what: &'static str, reason: String },
}

impl From<NetError> for ContainerError {
    fn from(e: NetError) -> Self {
        ContainerError::Network(Box::new(e))
    }
}

impl From<RuntimeError> for ContainerError {
    fn from(e: RuntimeError) -> Self {
        ContainerError::Runtime(Box::new(e))
    }
}

/// A container that started: its state and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Started {
    pub info: ContainerInfo,
    pub ip: Ipv4Addr,
}

/// What berthd does to containers. Every method is safe to call from async
/// code: implementations never block the calling thread.
#[async_trait::async_trait]
pub trait Containers: Send + Sync + Debug {
    /// Every container on this host, running or not, sorted by id.
    async fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError>;

    /// Attaches `cfg.id` to the network (filling in `cfg.netns` and
    /// `cfg.address`), then creates and starts it. On failure nothing of it
    /// is left: the network attachment is undone too.
    async fn start(&self, cfg: ContainerConfig) -> Result<Started, ContainerError>;

    /// Stops a container (its stop signal, SIGKILL after its stop timeout),
    /// removes it keeping its logs in the archive, and detaches its network.
    /// The result is the removal's; a failed detach is logged.
    async fn stop_and_remove(&self, id: &str) -> Result<(), ContainerError>;

    /// SIGKILLs a container (PID 1 and its cgroup) and keeps it, its exit
    /// recorded (by the runtime itself for a workload whose monitor died).
    async fn kill(&self, id: &str) -> Result<ExitInfo, ContainerError>;

    /// Removes a container that is no longer running, keeping its logs, and
    /// detaches its network (a failed detach is logged).
    async fn remove(&self, id: &str) -> Result<(), ContainerError>;

    /// Runs `argv` inside a running container, with its namespaces, cgroup,
    /// capabilities and seccomp filter, for at most `timeout`.
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError>;
}

/// The real containers: berthd's runtime on the host's network.
#[derive(Debug, Clone)]
pub struct RuntimeContainers {
    runtime: Arc<Runtime>,
    network: Arc<Network>,
    archive: LogArchive,
}

impl RuntimeContainers {
    pub fn new(runtime: Arc<Runtime>, network: Arc<Network>, archive: LogArchive) -> Self {
        RuntimeContainers {
            runtime,
            network,
            archive,
        }
    }

    /// Runs `f` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&RuntimeContainers) -> Result<T, ContainerError> + Send + 'static,
    ) -> Result<T, ContainerError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| ContainerError::Worker {
                what,
                reason: e.to_string(),
            })?
    }

    /// Removes `id` keeping its logs, then detaches its network.
    fn remove_and_detach(&self, id: &str) -> Result<(), ContainerError> {
        let removed = crate::logs::remove_keeping_logs(&self.runtime, &self.archive, id);
        if let Err(e) = self.network.detach(id) {
            tracing::warn!(container = %id, error = %e, "network detach failed");
        }
        Ok(removed?)
    }
}

#[async_trait::async_trait]
impl Containers for RuntimeContainers {
    async fn list(&self) -> Result<Vec<ContainerInfo>, ContainerError> {
        self.blocking("listing containers", |me| Ok(me.runtime.list()?))
            .await
    }

    async fn start(&self, mut cfg: ContainerConfig) -> Result<Started, ContainerError> {
        self.blocking("starting a container", move |me| {
            let att = me.network.attach(&cfg.id)?;
            cfg.netns = Some(att.netns_path.clone());
            cfg.address = Some(att.ip);
            match me.runtime.create_and_start(&cfg) {
                Ok(info) => Ok(Started { info, ip: att.ip }),
                Err(error) => Err(match me.network.detach(&cfg.id) {
                    Ok(()) => error.into(),
                    Err(undo) => ContainerError::StartUndo {
                        error: Box::new(error),
                        undo: Box::new(undo),
                    },
                }),
            }
        })
        .await
    }

    async fn stop_and_remove(&self, id: &str) -> Result<(), ContainerError> {
        let id = id.to_string();
        self.blocking("stopping a container", move |me| {
            // A container that already stopped is removed all the same.
            if let Err(e) = me.runtime.stop(&id, None, None) {
                tracing::debug!(container = %id, error = %e, "stop before removal");
            }
            me.remove_and_detach(&id)
        })
        .await
    }

    async fn kill(&self, id: &str) -> Result<ExitInfo, ContainerError> {
        let id = id.to_string();
        self.blocking("killing a container", move |me| {
            Ok(me
                .runtime
                .stop(&id, Some(libc::SIGKILL), Some(Duration::ZERO))?)
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let id = id.to_string();
        self.blocking("removing a container", move |me| me.remove_and_detach(&id))
            .await
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        let (id, argv) = (id.to_string(), argv.to_vec());
        self.blocking("exec", move |me| {
            Ok(me.runtime.exec(&id, &argv, timeout)?)
        })
        .await
    }
}
