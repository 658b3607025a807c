//! The rest of the reconcile policy beside `decide`, as pure functions with
//! table tests: when a replica counts as ready (its [`Phase`]), what
//! happens to containers no revision wants, and what a replica that could
//! not start means for its rollout. (How a revision's state moves is
//! `RevisionState::after_pass` in core.)

use std::time::{Duration, SystemTime};

use super::decide::{Phase, RetireReason};
use crate::live::HealthStatus;
use crate::runtime::ContainerState;

/// A replica without a health check is ready once it has run this long.
/// (A check's `start_period` is a grace period for the check's failures,
/// never a readiness delay: with a check, a replica is ready when it passes.)
pub const MIN_READY_RUN: Duration = Duration::from_secs(1);

/// How long a container of a service no revision runs gets to finish
/// in-flight connections before it is stopped (it is stopped with its own
/// stop signal and timeout).
pub const UNWANTED_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a container may stay `created` (directory and config written,
/// workload not started) before it counts as a create cut short. A start
/// takes well under a second; see [`abandoned_create`].
pub const CREATE_GRACE: Duration = Duration::from_secs(10);

/// What the pass knows about one replica when judging its phase.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub state: &'a ContainerState,
    /// Being drained and stopped.
    pub retiring: bool,
    /// A health check applies (the manifest's or the image's).
    pub checked: bool,
    /// Its checker's verdict so far, if it has one.
    pub health: Option<HealthStatus>,
    /// Re-adopted at start while the DNAT rules served it: ready until its
    /// first health result says otherwise.
    pub adopted_ready: bool,
}

/// The phase of a replica at `now`; `None` for a container that is gone.
pub fn phase(o: Observed<'_>, now: SystemTime) -> Option<Phase> {
    if o.retiring {
        return Some(Phase::Retiring);
    }
    Some(match o.state {
        ContainerState::Running { started_at, .. } => {
            if o.checked {
                match o.health {
                    Some(HealthStatus::Healthy) => Phase::Ready,
                    Some(HealthStatus::Unhealthy) => Phase::Unhealthy,
                    _ if o.adopted_ready => Phase::Ready,
                    _ => Phase::Starting,
                }
            } else if now.duration_since(*started_at).unwrap_or_default() >= MIN_READY_RUN {
                Phase::Ready
            } else {
                Phase::Starting
            }
        }
        ContainerState::Created => Phase::Starting,
        // Stopped by the pass before `decide` sees it (see `unsupervised`);
        // if that failed, it has ended as far as the service is concerned.
        ContainerState::MonitorLost { .. } => Phase::Exited {
            code: 128 + libc::SIGKILL,
            oom_killed: false,
        },
        ContainerState::Exited {
            code, oom_killed, ..
        } => Phase::Exited {
            code: *code,
            oom_killed: *oom_killed,
        },
        ContainerState::Unknown { .. } => Phase::Exited {
            code: -1,
            oom_killed: false,
        },
        ContainerState::NotFound => return None,
    })
}

/// Whether a container must be stopped at once because its monitor died
/// while its workload ran: nothing captures its output or can record its
/// exit, so it is stopped and its exit recorded (as containerd ends a task
/// whose shim died); then the restart policy decides as for any exit.
pub fn unsupervised(state: &ContainerState) -> bool {
    matches!(state, ContainerState::MonitorLost { .. })
}

/// Whether a container is a create that will never finish: still
/// `created` [`CREATE_GRACE`] after its config was written (a directory
/// without a config counts as created at the epoch). Starts run inside a
/// pass, so when a pass lists containers none of this agent's is in flight:
/// one left `created` is what a `kill -9` of berthd mid-create (or a failed
/// undo) leaves. Only a monitor the dead agent had just spawned could still
/// finish it, and does so in far less than the grace. Such a container
/// would otherwise count as a replica starting forever.
pub fn abandoned_create(state: &ContainerState, created_at: SystemTime, now: SystemTime) -> bool {
    matches!(state, ContainerState::Created)
        && now.duration_since(created_at).unwrap_or_default() >= CREATE_GRACE
}

/// What happens to a container of a service no revision runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwanted {
    /// Already being retired.
    Leave,
    /// Retire it: no drain, [`UNWANTED_STOP_TIMEOUT`] for in-flight work.
    Retire {
        reason: RetireReason,
        drain: Duration,
        stop_timeout: Duration,
    },
    /// It is not running: remove it now.
    Remove,
}

/// What happens to a container of a service no revision runs.
pub fn unwanted(state: &ContainerState, retiring: bool) -> Unwanted {
    match state {
        _ if retiring => Unwanted::Leave,
        ContainerState::Running { .. }
        | ContainerState::MonitorLost { .. }
        | ContainerState::Created => Unwanted::Retire {
            reason: RetireReason::ScaleDown,
            drain: Duration::ZERO,
            stop_timeout: UNWANTED_STOP_TIMEOUT,
        },
        _ => Unwanted::Remove,
    }
}

/// Whether a converged service's last error clears: the error belongs to
/// an earlier revision than the one now converged (`error_revision <
/// revision`) and the service has no failures pending, or the service just
/// proved stable again after failures (`stable_again`). A port that is
/// still not published keeps its error either way.
pub fn error_clears(
    error_revision: u64,
    revision: u64,
    failures: u32,
    stable_again: bool,
    port_unpublished: bool,
) -> bool {
    !port_unpublished && (stable_again || (error_revision < revision && failures == 0))
}

/// Why a `Start` could not be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// A host port of the new replica is held by something else.
    PortHeld,
    /// Preparing or starting the container failed.
    Start,
}

/// What a failed start means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStartFailure {
    /// The rollout fails (rolled back, or halted).
    FailRollout,
    /// A failure of the service: restart backoff, then try again.
    Backoff,
    /// Reported in status; tried again on the next pass.
    Report,
}

/// What a failed start means for the service: during a rollout (old
/// replicas still serve) it fails the rollout; a port held elsewhere fails a
/// revision that has not completed yet (as Docker refuses to start such a
/// container) and is otherwise reported until the port frees; any other
/// start failure of a running service backs off like a crash.
pub fn after_start_failure(
    why: StartFailure,
    rolling_out: bool,
    revision_complete: bool,
) -> AfterStartFailure {
    match why {
        StartFailure::PortHeld if !revision_complete => AfterStartFailure::FailRollout,
        StartFailure::PortHeld => AfterStartFailure::Report,
        StartFailure::Start if rolling_out => AfterStartFailure::FailRollout,
        StartFailure::Start => AfterStartFailure::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(ran: Duration, now: SystemTime) -> ContainerState {
        ContainerState::Running {
            pid: 42,
            started_at: now - ran,
        }
    }

    #[test]
    fn phase_table() {
        let now = SystemTime::now();
        let young = running(Duration::from_millis(200), now);
        let old = running(Duration::from_secs(5), now);
        let exited = ContainerState::Exited {
            code: 3,
            oom_killed: false,
            finished_at: now,
            signal: None,
        };
        let lost = ContainerState::MonitorLost {
            pid: 42,
            monitor_pid: 41,
            started_at: now,
        };
        let o = |state, checked, health, adopted_ready| Observed {
            state,
            retiring: false,
            checked,
            health,
            adopted_ready,
        };
        use HealthStatus::*;
        let cases: Vec<(&str, Observed<'_>, Option<Phase>)> = vec![
            (
                "no check, just started: not yet",
                o(&young, false, None, false),
                Some(Phase::Starting),
            ),
            (
                "no check, ran past MIN_READY_RUN: ready",
                o(&old, false, None, false),
                Some(Phase::Ready),
            ),
            (
                "a check: not ready before it passes, however long it ran",
                o(&old, true, None, false),
                Some(Phase::Starting),
            ),
            (
                "a check still in its start period",
                o(&old, true, Some(Starting), false),
                Some(Phase::Starting),
            ),
            (
                "a check passed: ready at once",
                o(&young, true, Some(Healthy), false),
                Some(Phase::Ready),
            ),
            (
                "a check failed retries times",
                o(&old, true, Some(Unhealthy), false),
                Some(Phase::Unhealthy),
            ),
            (
                "adopted while serving: ready until a result",
                o(&young, true, None, true),
                Some(Phase::Ready),
            ),
            (
                "adopted, then the check fails",
                o(&young, true, Some(Unhealthy), true),
                Some(Phase::Unhealthy),
            ),
            (
                "created",
                o(&ContainerState::Created, false, None, false),
                Some(Phase::Starting),
            ),
            (
                "exited",
                o(&exited, false, None, false),
                Some(Phase::Exited {
                    code: 3,
                    oom_killed: false,
                }),
            ),
            (
                "gone",
                o(&ContainerState::NotFound, false, None, false),
                None,
            ),
            (
                "its monitor died (not stopped yet): ended, as SIGKILLed",
                o(&lost, true, Some(Healthy), false),
                Some(Phase::Exited {
                    code: 137,
                    oom_killed: false,
                }),
            ),
            (
                "retiring wins",
                Observed {
                    retiring: true,
                    ..o(&old, false, None, false)
                },
                Some(Phase::Retiring),
            ),
        ];
        for (name, observed, want) in cases {
            assert_eq!(phase(observed, now), want, "{name}");
        }
    }

    #[test]
    fn unwanted_containers_table() {
        let now = SystemTime::now();
        let run = running(Duration::from_secs(1), now);
        let exited = ContainerState::Exited {
            code: 0,
            oom_killed: false,
            finished_at: now,
            signal: None,
        };
        let retire = Unwanted::Retire {
            reason: RetireReason::ScaleDown,
            drain: Duration::ZERO,
            stop_timeout: UNWANTED_STOP_TIMEOUT,
        };
        assert_eq!(unwanted(&run, false), retire);
        assert_eq!(unwanted(&ContainerState::Created, false), retire);
        let lost = ContainerState::MonitorLost {
            pid: 42,
            monitor_pid: 41,
            started_at: now,
        };
        assert_eq!(unwanted(&lost, false), retire);
        assert_eq!(unwanted(&exited, false), Unwanted::Remove);
        assert_eq!(unwanted(&run, true), Unwanted::Leave);
    }

    #[test]
    fn only_a_workload_without_its_monitor_is_stopped_at_once() {
        let now = SystemTime::now();
        let cases = [
            (running(Duration::from_secs(1), now), false),
            (
                ContainerState::MonitorLost {
                    pid: 42,
                    monitor_pid: 41,
                    started_at: now,
                },
                true,
            ),
            (ContainerState::Created, false),
            (
                ContainerState::Exited {
                    code: 0,
                    oom_killed: false,
                    finished_at: now,
                    signal: None,
                },
                false,
            ),
            (
                ContainerState::Unknown {
                    reason: "gone".into(),
                },
                false,
            ),
            (ContainerState::NotFound, false),
        ];
        for (state, want) in cases {
            assert_eq!(unsupervised(&state), want, "{state:?}");
        }
    }

    #[test]
    fn abandoned_create_table() {
        let now = SystemTime::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let cases = [
            (
                "created just now: a monitor may still start it",
                ContainerState::Created,
                ago(0),
                false,
            ),
            (
                "created within the grace",
                ContainerState::Created,
                ago(9),
                false,
            ),
            (
                "created past the grace",
                ContainerState::Created,
                ago(10),
                true,
            ),
            (
                "no config (epoch)",
                ContainerState::Created,
                SystemTime::UNIX_EPOCH,
                true,
            ),
            (
                "created in the future (clock step)",
                ContainerState::Created,
                now + Duration::from_secs(60),
                false,
            ),
            (
                "running, however old",
                running(Duration::from_secs(100), now),
                ago(100),
                false,
            ),
            (
                "exited, however old",
                ContainerState::Exited {
                    code: 0,
                    oom_killed: false,
                    finished_at: now,
                    signal: None,
                },
                ago(100),
                false,
            ),
        ];
        for (name, state, created_at, want) in cases {
            assert_eq!(abandoned_create(&state, created_at, now), want, "{name}");
        }
    }

    #[test]
    fn drain_by_reason_table() {
        let configured = Duration::from_secs(5);
        for (reason, want) in [
            (RetireReason::Replaced, configured),
            (RetireReason::ScaleDown, configured),
            (RetireReason::Unhealthy, Duration::ZERO),
            (RetireReason::RolloutFailed, Duration::ZERO),
        ] {
            assert_eq!(reason.drain(configured), want, "{reason:?}");
        }
    }

    #[test]
    fn last_error_table() {
        // (error of revision, converged on revision, failures, stable again, port unpublished)
        let cases = [
            (
                "a later revision converged: cleared",
                (2, 3, 0, false, false),
                true,
            ),
            (
                "the same revision: kept (a crash loop converges between crashes)",
                (3, 3, 0, false, false),
                false,
            ),
            (
                "a later revision still backing off: kept",
                (2, 3, 1, false, false),
                false,
            ),
            (
                "stable again after failures: cleared",
                (3, 3, 0, true, false),
                true,
            ),
            ("a port still held: kept", (2, 3, 0, true, true), false),
        ];
        for (name, (err_rev, rev, failures, stable, port), want) in cases {
            assert_eq!(
                error_clears(err_rev, rev, failures, stable, port),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn start_failure_table() {
        use AfterStartFailure::*;
        use StartFailure::*;
        let cases = [
            (PortHeld, false, false, FailRollout),
            (PortHeld, true, false, FailRollout),
            (PortHeld, false, true, Report),
            (PortHeld, true, true, Report),
            (Start, true, true, FailRollout),
            (Start, true, false, FailRollout),
            (Start, false, true, Backoff),
            (Start, false, false, Backoff),
        ];
        for (why, rolling, complete, want) in cases {
            assert_eq!(
                after_start_failure(why, rolling, complete),
                want,
                "{why:?} rolling_out={rolling} complete={complete}"
            );
        }
    }
}
