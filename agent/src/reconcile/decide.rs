//! The rollout decision: a pure function from one service's intent and its
//! observed replicas to the actions that move it one step closer, within
//! `max_surge`/`max_unavailable`, with health gates, restart policy, backoff,
//! `depends_on` gating, the early failure of a first deploy that cannot
//! become ready, and permanent image errors. Level-triggered: it never asks
//! how the state came about.

use std::time::Duration;

use berth_core::manifest::{OnUnhealthy, RestartPolicy, UpdateStrategy};
use berth_core::spec::ContainerSpec;

/// What one service should be, as the decision needs it.
#[derive(Debug, Clone)]
pub struct Intent {
    pub replicas: u32,
    pub strategy: UpdateStrategy,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub restart: RestartPolicy,
    pub on_unhealthy: OnUnhealthy,
    /// Backoff before starting a replacement after consecutive failures
    /// (`None` = may start now).
    pub restart_wait: Option<Duration>,
    /// Consecutive replica failures since the service was last stable.
    pub failures: u32,
    /// No replica of the desired spec has been ready yet (a first deploy, or
    /// a spec whose old replicas are all gone): [`FIRST_DEPLOY_FAILURES`]
    /// failures in a row fail the rollout instead of restarting forever.
    pub first_deploy: bool,
    /// A permanent error pulling the desired image (not an image, no such
    /// manifest, a layer refused, ...): starting anything fails the rollout.
    pub image_failed: Option<String>,
    /// The services named in `depends_on`, with their readiness on this host.
    pub depends_on: Vec<Dependency>,
    /// Within the probation window after the service's last rollout: a
    /// replica failing now fails that rollout (rolled back) instead of
    /// being restarted.
    pub on_probation: bool,
    /// A replica of this service retired by a task that has removed it but
    /// not reported yet: gone from the list, it still counts as retiring,
    /// so a stop-first start waits for the report (and its event).
    pub retiring_unreported: bool,
}

/// A service this one depends on, as observed on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub ready: u32,
    pub desired: u32,
}

/// Consecutive failed replicas after which a first deploy that never had a
/// ready replica fails instead of being restarted with backoff forever.
pub const FIRST_DEPLOY_FAILURES: u32 = 3;

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running, not yet ready (health not passed, or start period not over).
    Starting,
    /// Running and ready (healthy, or running past start_period without a check).
    Ready,
    /// Running but failed its health check `retries` times in a row.
    Unhealthy,
    /// Being drained / stopped; no longer counted.
    Retiring,
    /// The process ended.
    Exited { code: i32, oom_killed: bool },
}

impl Phase {
    /// Running (starting, ready or unhealthy): it occupies a slot and may
    /// be replaced or retired.
    pub fn running(self) -> bool {
        matches!(self, Phase::Starting | Phase::Ready | Phase::Unhealthy)
    }
}

/// One observed replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// Its spec equals the desired spec.
    pub current: bool,
    pub phase: Phase,
    /// The health probe's last output (error or success text), if any.
    pub probe: Option<String>,
}

/// Whether a replica started with `stored` (its stored spec, already
/// upgraded to the current version by [`ContainerSpec::from_stored`]) runs
/// `desired` — [`Replica::current`]: no field differs. One without a
/// readable stored spec (a future version, not berthd's) never does. The
/// upgrade tests hold every released berthd's stored specs to this rule.
pub fn is_current(stored: Option<&ContainerSpec>, desired: &ContainerSpec) -> bool {
    stored.is_some_and(|s| s.changed_fields(desired).is_empty())
}

/// What to do next for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a new replica with the desired spec.
    Start,
    /// Take a replica out of service: drain, stop, remove.
    Retire { id: String, reason: RetireReason },
    /// Remove a replica that already exited.
    Remove { id: String },
    /// The rollout to the desired spec failed.
    FailRollout { reason: String },
    /// A replica failed outside a rollout (counts toward backoff).
    Failure { id: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    Replaced,
    ScaleDown,
    Unhealthy,
    RolloutFailed,
}

impl RetireReason {
    /// How long a replica retired for this reason keeps serving in-flight
    /// work before it is stopped: the service's `update.drain` when it is
    /// replaced or scaled down; nothing when it failed (unhealthy, or part
    /// of a failed rollout).
    pub fn drain(self, configured: Duration) -> Duration {
        match self {
            RetireReason::Replaced | RetireReason::ScaleDown => configured,
            RetireReason::Unhealthy | RetireReason::RolloutFailed => Duration::ZERO,
        }
    }

    /// How events and logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            RetireReason::Replaced => "replaced",
            RetireReason::ScaleDown => "scaled down",
            RetireReason::Unhealthy => "unhealthy",
            RetireReason::RolloutFailed => "rollout failed",
        }
    }
}

/// The decision and a summary for status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// A rollout (old replicas still present) is in progress.
    pub rolling_out: bool,
    /// Current-spec replicas that are ready.
    pub ready: u32,
    /// Nothing left to do: every replica current and ready.
    pub converged: bool,
    /// Replicas should start but wait for `depends_on`: what it waits for
    /// (`waiting for app (0/1 ready)`).
    pub waiting: Option<String>,
}

fn exit_text(code: i32, oom: bool) -> String {
    if oom {
        "was OOM-killed".to_string()
    } else {
        format!("exited with code {code}")
    }
}

fn unhealthy_text(probe: Option<&str>) -> String {
    match probe {
        Some(p) if !p.is_empty() => format!("failed its health check: {p}"),
        _ => "failed its health check".into(),
    }
}

/// `waiting for app (0/1 ready), db (0/2 ready)` for the dependencies without
/// a ready replica; `None` when every one has one.
fn waiting_text(deps: &[Dependency]) -> Option<String> {
    let blocked: Vec<String> = deps
        .iter()
        .filter(|d| d.ready == 0)
        .map(|d| format!("{} ({}/{} ready)", d.service, d.ready, d.desired))
        .collect();
    (!blocked.is_empty()).then(|| format!("waiting for {}", blocked.join(", ")))
}

/// Decides the next actions for one service.
pub fn decide(intent: &Intent, replicas: &[Replica]) -> Decision {
    let mut d = Decision::default();
    let want = intent.replicas as usize;
    let old_running = replicas
        .iter()
        .filter(|r| !r.current && r.phase.running())
        .count();
    let rolling_out = old_running > 0;
    let retiring_exists =
        intent.retiring_unreported || replicas.iter().any(|r| r.phase == Phase::Retiring);
    d.rolling_out = rolling_out;

    // Exits and health failures first.
    let mut failed_rollout = None;
    // Replicas that occupy a slot and need no replacement.
    let mut satisfied_exits = 0usize;
    // Current replicas that failed outside a rollout: (id, reason, exited).
    let mut failed: Vec<(String, String, bool)> = Vec::new();
    for r in replicas {
        match r.phase {
            Phase::Exited { code, oom_killed } => {
                if !r.current {
                    d.actions.push(Action::Remove { id: r.id.clone() });
                    continue;
                }
                if rolling_out {
                    failed_rollout.get_or_insert_with(|| {
                        format!("new replica {} {}", r.id, exit_text(code, oom_killed))
                    });
                    d.actions.push(Action::Remove { id: r.id.clone() });
                    continue;
                }
                let restart = match intent.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => code != 0 || oom_killed,
                    RestartPolicy::Never => false,
                };
                if restart {
                    failed.push((r.id.clone(), exit_text(code, oom_killed), true));
                } else {
                    satisfied_exits += 1;
                }
            }
            Phase::Unhealthy if r.current => {
                if rolling_out {
                    failed_rollout.get_or_insert_with(|| {
                        format!(
                            "new replica {} {}",
                            r.id,
                            unhealthy_text(r.probe.as_deref())
                        )
                    });
                } else if intent.on_unhealthy == OnUnhealthy::Restart {
                    failed.push((r.id.clone(), unhealthy_text(r.probe.as_deref()), false));
                }
            }
            _ => {}
        }
    }
    if intent.on_probation {
        if let Some((id, why, _)) = failed.first() {
            // The rollout that just finished is not trusted yet.
            d.actions.push(Action::FailRollout {
                reason: format!("replica {id} {why} during probation"),
            });
            return d;
        }
    }
    let failures_now = intent.failures.saturating_add(failed.len() as u32);
    let mut replaced_now = false;
    if intent.first_deploy && !failed.is_empty() && failures_now >= FIRST_DEPLOY_FAILURES {
        // A first deploy that keeps failing will not fix itself: stop.
        let (id, why, _) = failed.last().cloned().unwrap_or_default();
        failed_rollout = Some(format!(
            "{failures_now} replicas failed in a row and none became ready; the last, {id}, {why}"
        ));
        for (id, _, exited) in &failed {
            if *exited {
                d.actions.push(Action::Remove { id: id.clone() });
            }
        }
    } else {
        // The failures set a backoff: replacements start on a later pass.
        replaced_now = !failed.is_empty();
        for (id, reason, exited) in failed {
            d.actions.push(Action::Failure {
                id: id.clone(),
                reason,
            });
            d.actions.push(if exited {
                Action::Remove { id }
            } else {
                Action::Retire {
                    id,
                    reason: RetireReason::Unhealthy,
                }
            });
        }
    }
    if let Some(reason) = failed_rollout {
        // Halt: remove every new replica, keep the old ones serving.
        for r in replicas.iter().filter(|r| r.current) {
            match r.phase {
                Phase::Starting | Phase::Ready | Phase::Unhealthy => {
                    d.actions.push(Action::Retire {
                        id: r.id.clone(),
                        reason: RetireReason::RolloutFailed,
                    })
                }
                _ => {}
            }
        }
        d.actions.push(Action::FailRollout { reason });
        return d;
    }

    let retiring_now: Vec<&str> = d
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Retire { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let alive = |r: &&Replica| r.phase.running() && !retiring_now.contains(&r.id.as_str());
    let cur: Vec<&Replica> = replicas
        .iter()
        .filter(|r| r.current)
        .filter(alive)
        .collect();
    let old: Vec<&Replica> = replicas
        .iter()
        .filter(|r| !r.current)
        .filter(alive)
        .collect();
    let cur_ready = cur.iter().filter(|r| r.phase == Phase::Ready).count();
    let old_ready = old.iter().filter(|r| r.phase == Phase::Ready).count();
    let cur_count = cur.len() + satisfied_exits;
    d.ready = cur_ready as u32;
    // Replicas being retired still run until they are removed: they count
    // against `replicas + max_surge` (Kubernetes' `podReplacementPolicy:
    // TerminationComplete`), so no sampling of what runs ever sees more.
    let draining = replicas
        .iter()
        .filter(|r| r.phase == Phase::Retiring)
        .count()
        + retiring_now.len();
    let surge_room =
        |running: usize| (want + intent.max_surge as usize).saturating_sub(running + draining);
    let can_start = intent.restart_wait.is_none() && !replaced_now;
    let mut retire = Vec::new();
    let mut starts = 0usize;

    if old.is_empty() {
        // Steady state: scale to the wanted count.
        let stop_first_wait = intent.strategy == UpdateStrategy::StopFirst && retiring_exists;
        if cur_count < want && can_start && !stop_first_wait {
            starts = (want - cur_count).min(surge_room(cur.len()));
        } else if cur_count > want {
            // Retire not-ready replicas first, then the newest (highest id).
            let mut extra: Vec<&Replica> = cur.clone();
            extra.sort_by(|a, b| {
                (a.phase == Phase::Ready)
                    .cmp(&(b.phase == Phase::Ready))
                    .then(b.id.cmp(&a.id))
            });
            for r in extra.into_iter().take(cur_count - want) {
                retire.push((r.id.clone(), RetireReason::ScaleDown));
            }
        }
    } else {
        let old_unready: Vec<&&Replica> = old.iter().filter(|r| r.phase != Phase::Ready).collect();
        for r in &old_unready {
            retire.push((r.id.clone(), RetireReason::Replaced));
        }
        let min_available = want.saturating_sub(intent.max_unavailable as usize);
        match intent.strategy {
            UpdateStrategy::StartFirst => {
                // Every old replica runs until removed, the unready ones
                // retired just now included.
                let room = surge_room(cur.len() + old.len());
                starts = want.saturating_sub(cur.len()).min(room);
                let excess = (cur_ready + old_ready).saturating_sub(min_available);
                for r in old.iter().filter(|r| r.phase == Phase::Ready).take(excess) {
                    retire.push((r.id.clone(), RetireReason::Replaced));
                }
            }
            UpdateStrategy::StopFirst => {
                // Old replicas go down first, a batch at a time; new ones start
                // only once nothing of the service is still retiring (they may
                // hold exclusive volumes).
                let batch = (intent.max_unavailable as usize).max(1);
                let unavailable_now = want.saturating_sub(cur_ready + old_ready);
                let can_stop = batch.saturating_sub(unavailable_now);
                for r in old
                    .iter()
                    .filter(|r| r.phase == Phase::Ready)
                    .take(can_stop)
                {
                    retire.push((r.id.clone(), RetireReason::Replaced));
                }
                if retire.is_empty() && !retiring_exists {
                    starts = want
                        .saturating_sub(cur.len())
                        .min(want.saturating_sub(cur.len() + old_ready));
                }
            }
        }
        if !can_start {
            starts = 0;
        }
    }
    if let Some(reason) = &intent.image_failed {
        if starts > 0 || !old.is_empty() {
            // Retrying cannot fix the image: fail before touching anything.
            d.actions.push(Action::FailRollout {
                reason: reason.clone(),
            });
            return d;
        }
    }
    if starts > 0 {
        // depends_on gates starting replicas (first start, scale-up,
        // replacement), never keeping running ones.
        if let Some(waiting) = waiting_text(&intent.depends_on) {
            d.waiting = Some(waiting);
            starts = 0;
        }
    }
    d.actions.extend((0..starts).map(|_| Action::Start));
    for (id, reason) in retire {
        d.actions.push(Action::Retire { id, reason });
    }
    d.converged = !retiring_exists
        && old.is_empty()
        && cur_ready + satisfied_exits == want
        && cur.len() + satisfied_exits == want
        && d.actions.is_empty();
    d
}

#[cfg(test)]
mod tests;
