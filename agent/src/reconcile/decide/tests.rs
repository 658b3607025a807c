//! Table tests: each row is a situation a service can be in and the actions
//! the decision must take next.

use super::*;

fn intent() -> Intent {
    Intent {
        replicas: 2,
        strategy: UpdateStrategy::StartFirst,
        max_surge: 1,
        max_unavailable: 0,
        restart: RestartPolicy::Always,
        on_unhealthy: OnUnhealthy::Restart,
        restart_wait: None,
    }
}

fn r(id: &str, current: bool, phase: Phase) -> Replica {
    Replica {
        id: id.into(),
        current,
        phase,
    }
}

use Phase::*;

fn retire(id: &str, reason: RetireReason) -> Action {
    Action::Retire {
        id: id.into(),
        reason,
    }
}

#[test]
fn steady_state_table() {
    let exited = |code| Exited {
        code,
        oom_killed: false,
    };
    let cases: Vec<(&str, Intent, Vec<Replica>, Vec<Action>)> = vec![
        (
            "create from nothing",
            intent(),
            vec![],
            vec![Action::Start, Action::Start],
        ),
        (
            "converged",
            intent(),
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![],
        ),
        (
            "scale up by one",
            Intent {
                replicas: 3,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![Action::Start],
        ),
        (
            "scale down retires the newest ready",
            Intent {
                replicas: 1,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![retire("b", RetireReason::ScaleDown)],
        ),
        (
            "scale down prefers a not-ready replica",
            Intent {
                replicas: 1,
                ..intent()
            },
            vec![r("a", true, Starting), r("b", true, Ready)],
            vec![retire("a", RetireReason::ScaleDown)],
        ),
        (
            "a crash is replaced (always)",
            intent(),
            vec![r("a", true, Ready), r("b", true, exited(1))],
            vec![
                Action::Failure {
                    id: "b".into(),
                    reason: "exited with code 1".into(),
                },
                Action::Remove { id: "b".into() },
                Action::Start,
            ],
        ),
        (
            "backoff holds the replacement",
            Intent {
                restart_wait: Some(Duration::from_millis(400)),
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, exited(1))],
            vec![
                Action::Failure {
                    id: "b".into(),
                    reason: "exited with code 1".into(),
                },
                Action::Remove { id: "b".into() },
            ],
        ),
        (
            "on-failure keeps a clean exit",
            Intent {
                restart: RestartPolicy::OnFailure,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, exited(0))],
            vec![],
        ),
        (
            "never keeps any exit",
            Intent {
                restart: RestartPolicy::Never,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, exited(3))],
            vec![],
        ),
        (
            "an OOM kill is a failure",
            Intent {
                restart: RestartPolicy::OnFailure,
                ..intent()
            },
            vec![
                r("a", true, Ready),
                r(
                    "b",
                    true,
                    Exited {
                        code: 137,
                        oom_killed: true,
                    },
                ),
            ],
            vec![
                Action::Failure {
                    id: "b".into(),
                    reason: "was OOM-killed".into(),
                },
                Action::Remove { id: "b".into() },
                Action::Start,
            ],
        ),
        (
            "unhealthy is replaced",
            intent(),
            vec![r("a", true, Ready), r("b", true, Unhealthy)],
            vec![
                Action::Failure {
                    id: "b".into(),
                    reason: "failed its health check".into(),
                },
                retire("b", RetireReason::Unhealthy),
                Action::Start,
            ],
        ),
        (
            "unhealthy is ignored when asked",
            Intent {
                on_unhealthy: OnUnhealthy::Ignore,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Unhealthy)],
            vec![],
        ),
        (
            "retiring replicas do not count",
            intent(),
            vec![r("a", true, Ready), r("b", true, Retiring)],
            vec![Action::Start],
        ),
    ];
    for (name, intent, replicas, want) in cases {
        assert_eq!(decide(&intent, &replicas).actions, want, "{name}");
    }
}

/// Drives a start-first rollout of 2 replicas step by step, applying each
/// decision as the executor would and marking new replicas ready.
#[test]
fn start_first_rollout_never_drops_below_desired_ready() {
    let intent = intent();
    let mut replicas = vec![r("o1", false, Ready), r("o2", false, Ready)];
    let mut next = 0;
    for _step in 0..20 {
        let d = decide(&intent, &replicas);
        let ready = replicas.iter().filter(|x| x.phase == Ready).count();
        assert!(ready >= 2, "availability dropped: {replicas:?}");
        let alive = replicas
            .iter()
            .filter(|x| matches!(x.phase, Ready | Starting))
            .count();
        assert!(alive <= 3, "surge exceeded: {replicas:?}");
        if d.converged {
            assert!(replicas.iter().all(|x| x.current && x.phase == Ready));
            assert_eq!(replicas.len(), 2);
            return;
        }
        // New replicas become ready between passes; retired ones disappear.
        for x in replicas.iter_mut() {
            if x.phase == Starting {
                x.phase = Ready;
            }
        }
        replicas.retain(|x| x.phase != Retiring);
        for a in d.actions {
            match a {
                Action::Start => {
                    next += 1;
                    replicas.push(r(&format!("n{next}"), true, Starting));
                }
                Action::Retire { id, .. } => replicas
                    .iter_mut()
                    .filter(|x| x.id == id)
                    .for_each(|x| x.phase = Retiring),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("rollout did not converge: {replicas:?}");
}

#[test]
fn stop_first_retires_before_starting() {
    let intent = Intent {
        replicas: 1,
        strategy: UpdateStrategy::StopFirst,
        max_surge: 0,
        max_unavailable: 0,
        ..intent()
    };
    let d = decide(&intent, &[r("o1", false, Ready)]);
    assert_eq!(d.actions, vec![retire("o1", RetireReason::Replaced)]);
    // While the old one is still retiring, nothing new starts.
    let d = decide(&intent, &[r("o1", false, Retiring)]);
    assert_eq!(d.actions, vec![]);
    let d = decide(&intent, &[]);
    assert_eq!(d.actions, vec![Action::Start]);
}

#[test]
fn a_new_replica_that_exits_during_rollout_halts_it() {
    let d = decide(
        &intent(),
        &[
            r("o1", false, Ready),
            r("o2", false, Ready),
            r(
                "n1",
                true,
                Exited {
                    code: 2,
                    oom_killed: false,
                },
            ),
        ],
    );
    assert_eq!(
        d.actions,
        vec![
            Action::Remove { id: "n1".into() },
            Action::FailRollout {
                reason: "new replica n1 exited with code 2".into()
            }
        ]
    );
}

#[test]
fn a_new_replica_that_turns_unhealthy_during_rollout_halts_it_and_new_ones_go() {
    let d = decide(
        &intent(),
        &[
            r("o1", false, Ready),
            r("o2", false, Ready),
            r("n1", true, Unhealthy),
            r("n2", true, Starting),
        ],
    );
    assert_eq!(
        d.actions,
        vec![
            retire("n1", RetireReason::RolloutFailed),
            retire("n2", RetireReason::RolloutFailed),
            Action::FailRollout {
                reason: "new replica n1 failed its health check".into()
            }
        ]
    );
    assert!(d.rolling_out);
}

#[test]
fn converged_and_ready_counts() {
    let d = decide(&intent(), &[r("a", true, Ready), r("b", true, Starting)]);
    assert_eq!((d.ready, d.converged), (1, false));
    let d = decide(&intent(), &[r("a", true, Ready), r("b", true, Ready)]);
    assert_eq!((d.ready, d.converged), (2, true));
}
