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
        failures: 0,
        first_deploy: false,
        image_failed: None,
        depends_on: vec![],
        on_probation: false,
        retiring_unreported: false,
    }
}

fn r(id: &str, current: bool, phase: Phase) -> Replica {
    Replica {
        id: id.into(),
        current,
        phase,
        probe: None,
    }
}

/// A replica whose health probe last said `probe`.
fn probed(id: &str, current: bool, phase: Phase, probe: &str) -> Replica {
    Replica {
        probe: Some(probe.into()),
        ..r(id, current, phase)
    }
}

fn dep(service: &str, ready: u32, desired: u32) -> Dependency {
    Dependency {
        service: service.into(),
        ready,
        desired,
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
            "a crash is replaced (always), on a later pass after its backoff",
            intent(),
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
            "after the failure, the replacement starts once the backoff is over",
            intent(),
            vec![r("a", true, Ready)],
            vec![Action::Start],
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
            ],
        ),
        (
            "unhealthy is replaced, on a later pass after its backoff",
            intent(),
            vec![r("a", true, Ready), r("b", true, Unhealthy)],
            vec![
                Action::Failure {
                    id: "b".into(),
                    reason: "failed its health check".into(),
                },
                retire("b", RetireReason::Unhealthy),
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
            "a retiring replica is not a replica (it only holds a surge slot)",
            intent(),
            vec![r("a", true, Ready), r("b", true, Retiring)],
            vec![Action::Start],
        ),
        (
            "scale up while scaled-down replicas drain: only the surge room starts",
            Intent {
                replicas: 3,
                ..intent()
            },
            vec![
                r("a", true, Ready),
                r("b", true, Retiring),
                r("c", true, Retiring),
            ],
            vec![Action::Start],
        ),
        (
            "scale up while more drain than the surge allows: wait",
            Intent {
                replicas: 2,
                max_surge: 0,
                max_unavailable: 1,
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Retiring)],
            vec![],
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

/// The same rollout where a retired replica keeps running for a pass
/// (drain, stop) before it is gone: it still counts against
/// `replicas + max_surge`, so what runs never exceeds 3 (issue 15: the
/// chaos test sampled 4).
#[test]
fn start_first_rollout_counts_draining_replicas_against_surge() {
    for max_unavailable in [0, 1] {
        let intent = Intent {
            max_unavailable,
            ..intent()
        };
        let mut replicas = vec![r("o1", false, Ready), r("o2", false, Ready)];
        let mut next = 0;
        let mut converged = false;
        for _step in 0..30 {
            let running = replicas.len();
            assert!(running <= 3, "surge exceeded: {replicas:?}");
            let d = decide(&intent, &replicas);
            if d.converged {
                assert!(replicas.iter().all(|x| x.current && x.phase == Ready));
                converged = true;
                break;
            }
            // Retired last pass: gone now. Retired this pass: still running.
            replicas.retain(|x| x.phase != Retiring);
            for x in replicas.iter_mut() {
                if x.phase == Starting {
                    x.phase = Ready;
                }
            }
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
            assert!(replicas.len() <= 3, "surge exceeded: {replicas:?}");
        }
        assert!(converged, "max_unavailable {max_unavailable}: {replicas:?}");
    }
    // One step of it: a new replica ready, an old one draining, one old
    // ready: the draining one holds the surge slot, nothing starts.
    let d = decide(
        &intent(),
        &[
            r("n1", true, Ready),
            r("o1", false, Retiring),
            r("o2", false, Ready),
        ],
    );
    assert_eq!(d.actions, vec![]);
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
    // Removed by its task, its report not in yet: still retiring.
    let unreported = Intent {
        retiring_unreported: true,
        ..intent.clone()
    };
    assert_eq!(decide(&unreported, &[]).actions, vec![]);
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

/// Rows for a first deploy (nothing of the desired spec was ever ready),
/// backoff, `depends_on` and permanent image errors: the actions and what
/// status would say while waiting.
#[test]
fn first_deploy_backoff_depends_on_and_image_table() {
    let exited = |code| Exited {
        code,
        oom_killed: false,
    };
    let first = |failures| Intent {
        replicas: 1,
        first_deploy: true,
        failures,
        ..intent()
    };
    let probe = "connect to port 9999: Connection refused (os error 111)";
    let fail = |reason: &str| Action::FailRollout {
        reason: reason.into(),
    };
    type Row = (
        &'static str,
        Intent,
        Vec<Replica>,
        Vec<Action>,
        Option<&'static str>,
    );
    let cases: Vec<Row> = vec![
        (
            "first deploy: an early failure is replaced (after its backoff)",
            first(1),
            vec![probed("a", true, Unhealthy, probe)],
            vec![
                Action::Failure {
                    id: "a".into(),
                    reason: format!("failed its health check: {probe}"),
                },
                retire("a", RetireReason::Unhealthy),
            ],
            None,
        ),
        (
            "first deploy: the third failure in a row fails it, naming the probe's output",
            first(2),
            vec![probed("c", true, Unhealthy, probe)],
            vec![
                retire("c", RetireReason::RolloutFailed),
                fail(&format!(
                    "3 replicas failed in a row and none became ready; the last, c, failed its health check: {probe}"
                )),
            ],
            None,
        ),
        (
            "first deploy: exits count too, and the exited replica is removed",
            first(2),
            vec![r("c", true, exited(1))],
            vec![
                Action::Remove { id: "c".into() },
                fail("3 replicas failed in a row and none became ready; the last, c, exited with code 1"),
            ],
            None,
        ),
        (
            "first deploy: failures of the same pass add up",
            Intent {
                replicas: 3,
                ..first(0)
            },
            vec![
                r("a", true, exited(2)),
                r("b", true, exited(2)),
                r("c", true, exited(2)),
            ],
            vec![
                Action::Remove { id: "a".into() },
                Action::Remove { id: "b".into() },
                Action::Remove { id: "c".into() },
                fail("3 replicas failed in a row and none became ready; the last, c, exited with code 2"),
            ],
            None,
        ),
        (
            "not a first deploy (it was ready once): failures keep backing off",
            Intent {
                replicas: 1,
                failures: 7,
                restart_wait: Some(Duration::from_secs(2)),
                ..intent()
            },
            vec![probed("h", true, Unhealthy, probe)],
            vec![
                Action::Failure {
                    id: "h".into(),
                    reason: format!("failed its health check: {probe}"),
                },
                retire("h", RetireReason::Unhealthy),
            ],
            None,
        ),
        (
            "first deploy still starting: no failure yet",
            first(2),
            vec![r("c", true, Starting)],
            vec![],
            None,
        ),
        (
            "depends_on: nothing starts while a dependency has no ready replica",
            Intent {
                depends_on: vec![dep("app", 0, 1), dep("db", 1, 1)],
                ..intent()
            },
            vec![],
            vec![],
            Some("waiting for app (0/1 ready)"),
        ),
        (
            "depends_on: every dependency ready, replicas start",
            Intent {
                depends_on: vec![dep("app", 1, 2), dep("db", 1, 1)],
                ..intent()
            },
            vec![],
            vec![Action::Start, Action::Start],
            None,
        ),
        (
            "depends_on gates a scale-up",
            Intent {
                replicas: 3,
                depends_on: vec![dep("app", 0, 1), dep("db", 0, 2)],
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![],
            Some("waiting for app (0/1 ready), db (0/2 ready)"),
        ),
        (
            "depends_on never stops running replicas",
            Intent {
                depends_on: vec![dep("app", 0, 1)],
                ..intent()
            },
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![],
            None,
        ),
        (
            "a permanent image error fails the rollout instead of starting",
            Intent {
                image_failed: Some("pulling r/web:1: not an image".into()),
                ..intent()
            },
            vec![],
            vec![fail("pulling r/web:1: not an image")],
            None,
        ),
        (
            "a permanent image error fails a rollout before old replicas go",
            Intent {
                image_failed: Some("bad image".into()),
                strategy: UpdateStrategy::StopFirst,
                max_surge: 0,
                ..intent()
            },
            vec![r("o1", false, Ready), r("o2", false, Ready)],
            vec![fail("bad image")],
            None,
        ),
        (
            "a permanent image error fails even while waiting for a dependency",
            Intent {
                image_failed: Some("bad image".into()),
                depends_on: vec![dep("app", 0, 1)],
                ..intent()
            },
            vec![],
            vec![fail("bad image")],
            None,
        ),
    ];
    for (name, intent, replicas, want, waiting) in cases {
        let d = decide(&intent, &replicas);
        assert_eq!(d.actions, want, "{name}");
        assert_eq!(d.waiting.as_deref(), waiting, "{name}");
    }
}

#[test]
fn a_rollout_failure_names_the_probe_output() {
    let d = decide(
        &intent(),
        &[
            r("o1", false, Ready),
            r("o2", false, Ready),
            probed("n1", true, Unhealthy, "HTTP 503"),
        ],
    );
    assert_eq!(
        d.actions.last(),
        Some(&Action::FailRollout {
            reason: "new replica n1 failed its health check: HTTP 503".into()
        })
    );
}

#[test]
fn probation_table() {
    let exited = |code| Exited {
        code,
        oom_killed: false,
    };
    let probation = Intent {
        on_probation: true,
        ..intent()
    };
    let fail = |reason: &str| Action::FailRollout {
        reason: reason.into(),
    };
    let cases: Vec<(&str, Intent, Vec<Replica>, Vec<Action>)> = vec![
        (
            "a crash during probation fails the rollout that just finished",
            probation.clone(),
            vec![r("a", true, Ready), r("b", true, exited(1))],
            vec![fail("replica b exited with code 1 during probation")],
        ),
        (
            "turning unhealthy during probation fails it too",
            probation.clone(),
            vec![
                r("a", true, Ready),
                probed("b", true, Unhealthy, "HTTP 500"),
            ],
            vec![fail(
                "replica b failed its health check: HTTP 500 during probation",
            )],
        ),
        (
            "a clean exit under restart on-failure is no failure",
            Intent {
                restart: RestartPolicy::OnFailure,
                replicas: 1,
                ..probation.clone()
            },
            vec![r("a", true, exited(0))],
            vec![],
        ),
        (
            "probation over: a crash is restarted with backoff",
            intent(),
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
            "probation with everything healthy does nothing",
            probation,
            vec![r("a", true, Ready), r("b", true, Ready)],
            vec![],
        ),
    ];
    for (name, intent, replicas, want) in cases {
        assert_eq!(decide(&intent, &replicas).actions, want, "{name}");
    }
}
