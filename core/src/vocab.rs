//! Berth's vocabulary as types, each declared once: the states a revision
//! goes through and the kinds of event the agent emits. The wire form (JSON,
//! the event stream, `history`) is each variant's kebab-case name, as it was
//! when these were strings.

use serde::{Deserialize, Serialize};

/// Where a revision is in its life.
///
/// | state | meaning | next |
/// |---|---|---|
/// | `applied` | recorded; the reconciler has not acted on it yet | `rolling-out`, `complete`, `failed`, `superseded` |
/// | `rolling-out` | replicas are being replaced | `complete`, `failed`, `superseded` |
/// | `complete` | every service ran its desired replicas, ready, at once | — |
/// | `failed` | a service's rollout failed (rolled back, or halted) | — |
/// | `superseded` | a newer revision was recorded before it completed | — |
/// | `rolled-back` | written by early versions; read as `failed` would be | — |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevisionState {
    Applied,
    RollingOut,
    Complete,
    Failed,
    Superseded,
    RolledBack,
}

impl RevisionState {
    /// The wire form (`rolling-out`).
    pub fn as_str(self) -> &'static str {
        match self {
            RevisionState::Applied => "applied",
            RevisionState::RollingOut => "rolling-out",
            RevisionState::Complete => "complete",
            RevisionState::Failed => "failed",
            RevisionState::Superseded => "superseded",
            RevisionState::RolledBack => "rolled-back",
        }
    }

    /// Not yet finished: `applied` or `rolling-out`.
    pub fn in_progress(self) -> bool {
        matches!(self, RevisionState::Applied | RevisionState::RollingOut)
    }

    /// The state the current revision moves to after a reconcile pass in
    /// which every service converged (`all_converged`) or not; `None`: it
    /// stays.
    pub fn after_pass(self, all_converged: bool) -> Option<RevisionState> {
        match (self, all_converged) {
            (RevisionState::Applied | RevisionState::RollingOut, true) => {
                Some(RevisionState::Complete)
            }
            (RevisionState::Applied, false) => Some(RevisionState::RollingOut),
            _ => None,
        }
    }

    /// The state the latest revision moves to when a newer one is recorded:
    /// one still in progress never completes, so it is `superseded`.
    pub fn when_superseded(self) -> Option<RevisionState> {
        self.in_progress().then_some(RevisionState::Superseded)
    }
}

impl std::fmt::Display for RevisionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! event_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident = $wire:literal, )*) => {
        /// What happened, as `berthctl events` and `GET /v1/events` name it.
        ///
        /// | kind | when |
        /// |---|---|
        $( #[doc = concat!("| `", $wire, "` |", $($doc,)* " |")] )*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The wire form (`rollout-started`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( EventKind::$variant => $wire, )*
                }
            }

            /// The kind of a wire name; `None` for a name no version emits.
            pub fn parse(name: &str) -> Option<EventKind> {
                match name {
                    $( $wire => Some(EventKind::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

event_kinds! {
    /// berthd finished its first reconcile pass and serves.
    AgentStarted = "agent-started",
    /// berthd found its state database lost and rebuilt it from the kernel and the disk (counts in the message, `status.rebuilt`).
    StateRebuilt = "state-rebuilt",
    /// A revision was recorded (apply, source, rollback, restart, pull check).
    RevisionApplied = "revision-applied",
    /// Every service of the current revision runs its desired replicas, ready.
    RevisionComplete = "revision-complete",
    /// A manifest was refused (invalid, unresolvable, would remove services, managed by a source).
    ApplyRefused = "apply-refused",
    /// A service started replacing replicas.
    RolloutStarted = "rollout-started",
    /// A service's rollout finished.
    RolloutComplete = "rollout-complete",
    /// A service's rollout failed.
    RolloutFailed = "rollout-failed",
    /// A failed rollout restored the last complete revision.
    Rollback = "rollback",
    /// A failed rollout without a revision to restore: the service keeps what runs.
    RolloutHalted = "rollout-halted",
    /// A replica started.
    ContainerStarted = "container-started",
    /// Starting a replica failed.
    ContainerStartFailed = "container-start-failed",
    /// A replica exited or turned unhealthy and will be replaced.
    ContainerFailed = "container-failed",
    /// A replica was killed by the kernel's OOM killer and will be replaced.
    ContainerOomKilled = "container-oom-killed",
    /// A replica's monitor died while its workload ran (nothing captured its output or could record its exit): the workload was stopped, and the restart policy replaces it.
    ContainerMonitorLost = "container-monitor-lost",
    /// A replica was stopped and removed.
    ContainerRemoved = "container-removed",
    /// Removing a replica failed.
    ContainerRemoveFailed = "container-remove-failed",
    /// A replica's health changed.
    Health = "health",
    /// An image was pulled.
    ImagePulled = "image-pulled",
    /// An image was loaded from an archive (`berthctl load`).
    ImageLoaded = "image-loaded",
    /// Pulling an image failed.
    PullFailed = "pull-failed",
    /// A `pull.check` found a tag on a new digest.
    TagMoved = "tag-moved",
    /// A host port could not be published.
    PortFailed = "port-failed",
    /// A service waits for its `depends_on` before starting replicas.
    Waiting = "waiting",
    /// Every dependency of a waiting service has a ready replica.
    DependenciesReady = "dependencies-ready",
    /// A named volume was created.
    VolumeCreated = "volume-created",
    /// A named volume was removed.
    VolumeRemoved = "volume-removed",
    /// Images and logs no revision keeps were removed.
    Gc = "gc",
    /// The host's drain was turned on or off.
    Drain = "drain",
    /// The manifest source could not be reached.
    SourceUnreachable = "source-unreachable",
    /// The manifest source offered a manifest that was refused.
    SourceRefused = "source-refused",
    /// A new manifest waits for the fleet (a slot, an earlier group's bake, a halt, a pause).
    FleetWaiting = "fleet-waiting",
    /// This host took a rollout slot of the fleet.
    FleetSlotAcquired = "fleet-slot-acquired",
    /// This host's rollout completed and passed probation: its slot is free.
    FleetSlotReleased = "fleet-slot-released",
    /// A rollout failed here: its manifest is halted for the whole fleet.
    FleetHalted = "fleet-halted",
    /// A manifest this host completed was halted: rolled back (`auto_revert`).
    FleetReverted = "fleet-reverted",
    /// The fleet's etcd cannot be reached: no gated rollout starts.
    FleetUnreachable = "fleet-unreachable",
    /// The fleet's etcd answers again (or this host's id is free again).
    FleetReachable = "fleet-reachable",
    /// Another agent holds this host's id (`--fleet-host`): this agent stays
    /// out of the fleet, and no gated rollout starts, until the id is free.
    FleetHostTaken = "fleet-host-taken",
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
            assert!(seen.insert(k.as_str()), "{k} twice");
        }
        assert_eq!(EventKind::parse("no-such-kind"), None);
    }

    #[test]
    fn revision_transition_table() {
        use RevisionState::*;
        let after_pass = [
            (Applied, true, Some(Complete)),
            (Applied, false, Some(RollingOut)),
            (RollingOut, true, Some(Complete)),
            (RollingOut, false, None),
            (Complete, false, None),
            (Complete, true, None),
            (Failed, true, None),
            (Superseded, true, None),
        ];
        for (state, converged, want) in after_pass {
            assert_eq!(
                state.after_pass(converged),
                want,
                "{state} converged={converged}"
            );
        }
        let superseded = [
            (Applied, Some(Superseded)),
            (RollingOut, Some(Superseded)),
            (Complete, None),
            (Failed, None),
            (Superseded, None),
        ];
        for (state, want) in superseded {
            assert_eq!(state.when_superseded(), want, "{state}");
        }
    }

    #[test]
    fn revision_states_keep_their_wire_form() {
        for (s, wire) in [
            (RevisionState::Applied, "\"applied\""),
            (RevisionState::RollingOut, "\"rolling-out\""),
            (RevisionState::Superseded, "\"superseded\""),
            (RevisionState::RolledBack, "\"rolled-back\""),
        ] {
            assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some(wire));
            assert_eq!(format!("\"{s}\""), wire);
        }
    }
}
