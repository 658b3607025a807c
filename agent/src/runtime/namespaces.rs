//! The namespaces a container gets: mount, PID (the command is PID 1), UTS
//! (hostname = container name), IPC, network (only `lo`, up) and cgroup. The
//! PID namespace is entered by the monitor before it forks the init (so the
//! init is PID 1); the rest are unshared by the init itself. The user
//! namespace (`ContainerConfig::userns`) is made and joined by
//! [`super::userns`], after all of these. A container given a pinned network
//! namespace joins it with `setns` instead.

use nix::sched::CloneFlags;

/// A namespace step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("container {id}: unshare({what}): {source}")]
    Unshare {
        id: String,
        what: String,
        source: nix::Error,
    },
    #[error("container {id}: sethostname({name}): {source}")]
    Hostname {
        id: String,
        name: String,
        source: nix::Error,
    },
    #[error("container {id}: bringing up lo: {source}")]
    Loopback { id: String, source: std::io::Error },
    #[error("container {id}: joining network namespace {path}: {source}")]
    JoinNet {
        id: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: user namespaces are not supported yet")]
    UserNamespaceUnsupported { id: String },
}

/// A uid/gid mapping for a future user-namespace mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub len: u32,
}

/// Which namespaces a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub mount: bool,
    pub pid: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    pub cgroup: bool,
    /// `Some` would run the container in a user namespace with these maps.
    pub user: Option<(Vec<IdMap>, Vec<IdMap>)>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            mount: true,
            pid: true,
            uts: true,
            ipc: true,
            net: true,
            cgroup: true,
            user: None,
        }
    }
}

impl Namespaces {
    /// Flags the init unshares itself (everything but PID, which must be
    /// unshared by its parent before the fork).
    pub fn init_flags(&self) -> CloneFlags {
        let mut f = CloneFlags::empty();
        for (on, flag) in [
            (self.mount, CloneFlags::CLONE_NEWNS),
            (self.uts, CloneFlags::CLONE_NEWUTS),
            (self.ipc, CloneFlags::CLONE_NEWIPC),
            (self.net, CloneFlags::CLONE_NEWNET),
            (self.cgroup, CloneFlags::CLONE_NEWCGROUP),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }

    /// In the monitor: makes the next child the first process of a new PID namespace.
    pub fn enter_pid_for_children(&self, id: &str) -> Result<(), NamespaceError> {
        if self.user.is_some() {
            return Err(NamespaceError::UserNamespaceUnsupported { id: id.into() });
        }
        if self.pid {
            nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|source| {
                NamespaceError::Unshare {
                    id: id.into(),
                    what: "CLONE_NEWPID".into(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// For a container that joins `netns` (if any): no network namespace of its own.
    pub fn for_netns(netns: Option<&std::path::Path>) -> Namespaces {
        Namespaces {
            net: netns.is_none(),
            ..Namespaces::default()
        }
    }

    /// In the init: joins the pinned network namespace at `path` (set up by the
    /// agent: `lo`, `eth0`, routes), before the mount namespace hides the file.
    pub fn join_net(id: &str, path: &std::path::Path) -> Result<(), NamespaceError> {
        let err = |source| NamespaceError::JoinNet {
            id: id.into(),
            path: path.into(),
            source,
        };
        let f = std::fs::File::open(path).map_err(err)?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| err(std::io::Error::from_raw_os_error(e as i32)))
    }

    /// In the init (already in its cgroup): unshares the rest, sets the
    /// hostname and brings up loopback in the new network namespace.
    pub fn enter_in_init(&self, id: &str, hostname: &str) -> Result<(), NamespaceError> {
        let flags = self.init_flags();
        nix::sched::unshare(flags).map_err(|source| NamespaceError::Unshare {
            id: id.into(),
            what: format!("{flags:?}"),
            source,
        })?;
        if self.uts {
            nix::unistd::sethostname(hostname).map_err(|source| NamespaceError::Hostname {
                id: id.into(),
                name: hostname.into(),
                source,
            })?;
        }
        if self.net {
            crate::sys::net::loopback_up().map_err(|source| NamespaceError::Loopback {
                id: id.into(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_unshares_everything_but_pid() {
        let f = Namespaces::default().init_flags();
        assert!(f.contains(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
        ));
        assert!(!f.contains(CloneFlags::CLONE_NEWPID));
        assert!(!f.contains(CloneFlags::CLONE_NEWUSER));
    }

    #[test]
    fn a_joined_netns_is_not_unshared() {
        let f =
            Namespaces::for_netns(Some(std::path::Path::new("/run/berth/netns/c"))).init_flags();
        assert!(!f.contains(CloneFlags::CLONE_NEWNET));
        assert!(f.contains(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS));
        assert_eq!(Namespaces::for_netns(None), Namespaces::default());
    }
}
