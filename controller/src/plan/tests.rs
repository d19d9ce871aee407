//! Table-driven tests of every transition the planner makes. No tokio, no Docker.

use super::*;
use crate::model::{ContainerInfo, ContainerState, Role};
use crate::op::{Entry, Event, OpKind, Operation, Outcome, Phase, Step, StepOutput};

const HOST: &str =
    "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n---\n";

/// An environment `web` with two replicas, nginx traffic, a readiness probe and a
/// BackwardCompatible migration with a backup; `extra` lines are appended to its spec
/// (later keys override nothing: write only fields not already set).
fn spec_with(extra: &str, replicas: u32) -> EnvironmentSpec {
    let text = format!(
        "{HOST}apiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: web}}\nspec:\n  host: h\n  image: app:v2\n  replicas: {replicas}\n  ports: [{{name: http, containerPort: 8080}}]\n  health:\n    readiness: {{http: {{path: /ready, port: http}}}}\n{extra}"
    );
    let m = berth_api::load_texts(vec![("t.yaml".into(), text)])
        .into_manifests()
        .map_err(|l| {
            l.diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        })
        .unwrap();
    m.environments["web"].spec.clone()
}

const BLUEGREEN_BC: &str = "  traffic: {nginx: {upstreamFile: /u.conf}}\n  migration: {policy: BackwardCompatible, command: [m]}\n  backup: {postgres: {container: db, database: d, user: u}, directory: /b}\n  strategy: {progressDeadline: 1m, verifyFor: 20s, drainFor: 5s}\n";
const BREAKING: &str = "  traffic: {nginx: {upstreamFile: /u.conf}}\n  migration: {policy: Breaking, command: [m]}\n  backup: {postgres: {container: db, database: d, user: u}, directory: /b}\n  strategy: {progressDeadline: 1m, verifyFor: 20s}\n";

fn spec() -> EnvironmentSpec {
    spec_with(BLUEGREEN_BC, 2)
}

fn replica(
    rev: Revision,
    i: u32,
    state: ContainerState,
    ready: Option<bool>,
) -> (ContainerInfo, Health) {
    (
        ContainerInfo {
            id: format!("id-{rev}-{i}"),
            name: replica_name("web", rev, i),
            env_name: "web".into(),
            revision: rev,
            role: Role::App,
            replica: Some(i),
            op: None,
            template_hash: format!("hash{rev}"),
            image: format!("app:v{rev}"),
            port: Some(20000 + (rev as u16) * 10 + i as u16),
            state,
        },
        Health {
            ready,
            live: Some(true),
            last_output: if ready == Some(false) {
                "HTTP 503: not yet".into()
            } else {
                String::new()
            },
        },
    )
}

fn running_ready(rev: Revision, n: u32) -> Vec<(ContainerInfo, Health)> {
    (0..n)
        .map(|i| replica(rev, i, ContainerState::Running, Some(true)))
        .collect()
}

fn port(rev: Revision, i: u32) -> u16 {
    20000 + (rev as u16) * 10 + i as u16
}

fn journal_at(current: Option<Revision>) -> Journal {
    Journal {
        current: current.map(|r| (r, format!("hash{r}"))),
        revisions: (1..=current.unwrap_or(0))
            .map(|r| (r, format!("hash{r}")))
            .collect(),
        next_revision: current.unwrap_or(0) + 1,
        ..Journal::default()
    }
}

fn operation(
    spec: &EnvironmentSpec,
    from: Option<Revision>,
    to: Revision,
    log: Vec<(u64, Entry)>,
) -> Operation {
    Operation {
        id: "01OP".into(),
        env: "web".into(),
        kind: OpKind::Rollout,
        from,
        to,
        reason: "test".into(),
        created_at: 0,
        steps: steps_for(spec, from),
        log: log
            .into_iter()
            .map(|(at, entry)| Event { at, entry })
            .collect(),
        spec: serde_json::to_value(spec).unwrap(),
    }
}

/// A log in which the forward steps before `step` succeeded at t=0 and `step` started at
/// `started`.
fn log_until(
    spec: &EnvironmentSpec,
    from: Option<Revision>,
    step: Step,
    started: u64,
) -> Vec<(u64, Entry)> {
    let mut log = Vec::new();
    for (i, s) in steps_for(spec, from).into_iter().enumerate() {
        log.push((
            0,
            Entry::Started {
                phase: Phase::Forward,
                index: i,
            },
        ));
        if s == step {
            log.last_mut().unwrap().0 = started;
            return log;
        }
        log.push((
            0,
            Entry::Succeeded {
                phase: Phase::Forward,
                index: i,
                output: StepOutput::None,
            },
        ));
    }
    panic!("{step:?} is not a step of this rollout");
}

fn index_of(spec: &EnvironmentSpec, from: Option<Revision>, step: Step) -> usize {
    steps_for(spec, from)
        .iter()
        .position(|s| *s == step)
        .unwrap()
}

fn observed(containers: Vec<(ContainerInfo, Health)>, traffic: Option<Vec<u16>>) -> Observed {
    Observed {
        containers,
        traffic,
    }
}

use Step::*;

#[test]
fn step_order_follows_strategy_and_migration_policy() {
    let cases: Vec<(&str, &str, Option<Revision>, Vec<Step>)> = vec![
        (
            "bluegreen, backward compatible, first deploy",
            BLUEGREEN_BC,
            None,
            vec![
                PullImage,
                Backup,
                Migrate,
                StartCandidate,
                WaitReady,
                SwitchTraffic,
                Verify,
                Prune,
            ],
        ),
        (
            "bluegreen, backward compatible, update",
            BLUEGREEN_BC,
            Some(1),
            vec![
                PullImage,
                Backup,
                Migrate,
                StartCandidate,
                WaitReady,
                SwitchTraffic,
                Verify,
                RetireOld,
                Prune,
            ],
        ),
        (
            "breaking",
            BREAKING,
            Some(1),
            vec![
                PullImage,
                CreateCandidate,
                StopOld,
                Backup,
                Migrate,
                StartCandidate,
                WaitReady,
                SwitchTraffic,
                Verify,
                Prune,
            ],
        ),
        (
            "recreate, no migration, no traffic",
            "  strategy: {type: Recreate}\n",
            Some(1),
            vec![PullImage, StopOld, StartCandidate, WaitReady, Verify, Prune],
        ),
        (
            "backup always without migration",
            "  backup: {when: Always, volume: {name: v}, directory: /b}\n",
            Some(1),
            vec![
                PullImage,
                Backup,
                StartCandidate,
                WaitReady,
                Verify,
                RetireOld,
                Prune,
            ],
        ),
        (
            "approval and smoke checks",
            "  approval: Required\n  smoke: [{path: /}]\n",
            Some(1),
            vec![
                AwaitApproval,
                PullImage,
                StartCandidate,
                WaitReady,
                SmokeCandidate,
                Verify,
                RetireOld,
                Prune,
            ],
        ),
    ];
    for (name, extra, from, want) in cases {
        assert_eq!(steps_for(&spec_with(extra, 1), from), want, "{name}");
    }
}

#[test]
fn with_nothing_deployed_the_first_rollout_begins() {
    let s = spec();
    let a = plan(
        "web",
        &s,
        "hash1",
        &observed(vec![], None),
        &journal_at(None),
        0,
    );
    let Action::Begin(op) = a else {
        panic!("{a:?}")
    };
    assert_eq!((op.from, op.to, op.new_revision), (None, 1, true));
    assert_eq!(op.steps[0], PullImage);
}

#[test]
fn a_changed_template_begins_a_rollout_to_a_new_revision() {
    let s = spec();
    let obs = observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)]));
    let a = plan("web", &s, "hash2", &obs, &journal_at(Some(1)), 0);
    let Action::Begin(op) = a else {
        panic!("{a:?}")
    };
    assert_eq!((op.from, op.to, op.new_revision), (Some(1), 2, true));
    assert!(op.reason.contains("revision 1 → 2"), "{}", op.reason);
}

#[test]
fn a_reverted_template_gets_its_old_revision_back() {
    let s = spec();
    let mut j = journal_at(Some(2));
    j.revisions = vec![(1, "old".into()), (2, "hash2".into())];
    let a = plan(
        "web",
        &s,
        "old",
        &observed(running_ready(2, 2), Some(vec![port(2, 0), port(2, 1)])),
        &j,
        0,
    );
    let Action::Begin(op) = a else {
        panic!("{a:?}")
    };
    assert_eq!((op.from, op.to, op.new_revision), (Some(2), 1, false));
}

#[test]
fn a_healthy_environment_is_idle() {
    let s = spec();
    let obs = observed(running_ready(1, 2), Some(vec![port(1, 1), port(1, 0)]));
    let a = plan("web", &s, "hash1", &obs, &journal_at(Some(1)), 0);
    assert!(
        matches!(&a, Action::Idle { message, .. } if message.contains("2 of 2 replicas ready")),
        "{a:?}"
    );
}

#[test]
fn a_failed_template_is_not_retried_and_paused_rollouts_wait() {
    let s = spec();
    let obs = observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)]));
    let mut j = journal_at(Some(1));
    j.failed_hash = Some(("hash2".into(), "never ready".into()));
    let a = plan("web", &s, "hash2", &obs, &j, 0);
    assert!(
        matches!(&a, Action::Idle { message, .. } if message.contains("never ready")),
        "{a:?}"
    );
    // ...but the current revision is still kept whole.
    let obs1 = observed(running_ready(1, 1), Some(vec![port(1, 0)]));
    let a = plan("web", &s, "hash2", &obs1, &j, 0);
    assert!(
        matches!(a, Action::Repair(Repair::StartReplica { replica: 1, .. })),
        "{a:?}"
    );
    let mut j = journal_at(Some(1));
    j.paused = true;
    let a = plan("web", &s, "hash2", &obs, &j, 0);
    assert!(
        matches!(&a, Action::Idle { message, .. } if message.contains("paused")),
        "{a:?}"
    );
}

type RepairCheck = fn(&Repair) -> bool;

#[test]
fn drift_is_repaired_in_place() {
    let s = spec();
    let j = journal_at(Some(1));
    let both = Some(vec![port(1, 0), port(1, 1)]);
    let mut dead = running_ready(1, 2);
    dead[1].0.state = ContainerState::Exited(137);
    let mut unlive = running_ready(1, 2);
    unlive[0].1.live = Some(false);
    let mut stray = running_ready(1, 2);
    stray.push(replica(0, 0, ContainerState::Running, Some(true)));
    let mut migrate = running_ready(1, 2);
    let mut m = replica(1, 9, ContainerState::Exited(0), None);
    m.0.role = Role::Migrate;
    m.0.replica = None;
    m.0.name = "web-migrate-01op".into();
    migrate.push(m);
    let cases: Vec<(&str, Observed, RepairCheck)> = vec![
        (
            "a removed replica is started again",
            observed(running_ready(1, 1), Some(vec![port(1, 0)])),
            |r| {
                matches!(
                    r,
                    Repair::StartReplica {
                        revision: 1,
                        replica: 1,
                        ..
                    }
                )
            },
        ),
        (
            "a killed replica is replaced",
            observed(dead, both.clone()),
            |r| matches!(r, Repair::ReplaceReplica { replica: 1, why, .. } if why.contains("137")),
        ),
        (
            "a replica failing liveness is replaced",
            observed(unlive, both.clone()),
            |r| matches!(r, Repair::ReplaceReplica { replica: 0, why, .. } if why.contains("liveness")),
        ),
        (
            "a hand-edited upstream file is rewritten",
            observed(running_ready(1, 2), None),
            |r| matches!(r, Repair::SyncTraffic { ports, why } if *ports == vec![port(1, 0), port(1, 1)] && why.contains("by hand")),
        ),
        (
            "traffic to a stale port is corrected",
            observed(running_ready(1, 2), Some(vec![port(1, 0), 29999])),
            |r| matches!(r, Repair::SyncTraffic { .. }),
        ),
        (
            "another revision left running is stopped",
            observed(stray, both.clone()),
            |r| matches!(r, Repair::StopContainer { name, .. } if name == "web-r0-0"),
        ),
        (
            "a finished migration container is removed",
            observed(migrate, both.clone()),
            |r| matches!(r, Repair::RemoveContainer { name, .. } if name == "web-migrate-01op"),
        ),
    ];
    for (name, obs, ok) in cases {
        let a = plan("web", &s, "hash1", &obs, &j, 0);
        match &a {
            Action::Repair(r) if ok(r) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn scaling_up_starts_replicas_and_scaling_down_moves_traffic_before_removing() {
    let j = journal_at(Some(1));
    let three = spec_with(BLUEGREEN_BC, 3);
    let a = plan(
        "web",
        &three,
        "hash1",
        &observed(running_ready(1, 1), Some(vec![port(1, 0)])),
        &j,
        0,
    );
    assert!(
        matches!(a, Action::Repair(Repair::StartReplica { replica: 1, .. })),
        "{a:?}"
    );
    // Scaled up and ready: traffic follows.
    let a = plan(
        "web",
        &three,
        "hash1",
        &observed(running_ready(1, 3), Some(vec![port(1, 0)])),
        &j,
        0,
    );
    assert!(
        matches!(&a, Action::Repair(Repair::SyncTraffic { ports, .. }) if ports.len() == 3),
        "{a:?}"
    );
    let one = spec_with(BLUEGREEN_BC, 1);
    let all = Some(vec![port(1, 0), port(1, 1), port(1, 2)]);
    let a = plan(
        "web",
        &one,
        "hash1",
        &observed(running_ready(1, 3), all),
        &j,
        0,
    );
    assert!(
        matches!(&a, Action::Repair(Repair::SyncTraffic { ports, .. }) if *ports == vec![port(1, 0)]),
        "{a:?}"
    );
    let a = plan(
        "web",
        &one,
        "hash1",
        &observed(running_ready(1, 3), Some(vec![port(1, 0)])),
        &j,
        0,
    );
    assert!(
        matches!(&a, Action::Repair(Repair::RemoveContainer { name, .. }) if name == "web-r1-1"),
        "{a:?}"
    );
}

#[test]
fn with_nothing_ready_traffic_is_left_alone() {
    let s = spec();
    let mut obs = observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)]));
    for c in &mut obs.containers {
        c.1.ready = Some(false);
    }
    let a = plan("web", &s, "hash1", &obs, &journal_at(Some(1)), 0);
    assert!(matches!(a, Action::Idle { .. }), "{a:?}");
}

/// Plans `web` (desired template `hash2`) while `op` rolls out from revision 1, with
/// these containers and no observed traffic.
/// Plans during `op` (revision 1 → 2). Revision 1, which serves, runs healthy unless
/// `containers` has replicas of it: a rollout keeps what serves repaired, and these
/// tests are about the rollout's own steps.
fn during(
    spec: &EnvironmentSpec,
    mut containers: Vec<(ContainerInfo, Health)>,
    op: Operation,
    now: Millis,
) -> Action {
    if !containers.iter().any(|(c, _)| c.revision == 1) {
        containers.extend(running_ready(1, spec.replicas));
    }
    let traffic = serving_ports(spec, &observed(containers.clone(), None), 1);
    plan(
        "web",
        spec,
        "hash2",
        &observed(containers, Some(traffic)),
        &with_op(op, Some(1)),
        now,
    )
}

fn with_op(op: Operation, current: Option<Revision>) -> Journal {
    let mut j = journal_at(current);
    j.revisions.push((op.to, format!("hash{}", op.to)));
    j.active = Some(op);
    j
}

#[test]
fn a_pending_or_interrupted_action_step_is_run_again() {
    let s = spec();
    let op = operation(&s, Some(1), 2, vec![]);
    let a = during(&s, vec![], op, 0);
    assert_eq!(
        a,
        Action::Run {
            phase: Phase::Forward,
            index: 0,
            step: PullImage
        }
    );
    // Started but never finished (a crash): the same step runs again, observing first.
    let log = log_until(&s, Some(1), Migrate, 5);
    let op = operation(&s, Some(1), 2, log);
    let a = during(&s, running_ready(1, 2), op, 10);
    assert_eq!(
        a,
        Action::Run {
            phase: Phase::Forward,
            index: index_of(&s, Some(1), Migrate),
            step: Migrate
        }
    );
}

#[test]
fn a_step_that_keeps_failing_gives_up() {
    let s = spec();
    let mut log = vec![];
    for _ in 0..MAX_ATTEMPTS {
        log.push((
            0,
            Entry::Started {
                phase: Phase::Forward,
                index: 0,
            },
        ));
        log.push((
            0,
            Entry::Failed {
                phase: Phase::Forward,
                index: 0,
                error: "registry down".into(),
                retryable: true,
            },
        ));
    }
    let op = operation(&s, Some(1), 2, log);
    let a = during(&s, vec![], op, 0);
    assert!(
        matches!(&a, Action::Fail { index: 0, error, .. } if error.contains("registry down")),
        "{a:?}"
    );
}

#[test]
fn wait_ready_completes_waits_or_fails_at_the_deadline() {
    let s = spec();
    let wr = index_of(&s, Some(1), WaitReady);
    let op = || operation(&s, Some(1), 2, log_until(&s, Some(1), WaitReady, 1_000));
    let mut old_and_new = running_ready(1, 2);
    old_and_new.extend(running_ready(2, 2));
    let a = during(&s, old_and_new, op(), 2_000);
    assert!(
        matches!(a, Action::Complete { index, .. } if index == wr),
        "{a:?}"
    );
    let mut unready = running_ready(1, 2);
    unready.push(replica(2, 0, ContainerState::Running, Some(true)));
    unready.push(replica(2, 1, ContainerState::Running, Some(false)));
    let a = during(&s, unready.clone(), op(), 30_000);
    assert!(
        matches!(&a, Action::Wait { message, .. } if message.contains("1 of 2")),
        "{a:?}"
    );
    let a = during(&s, unready, op(), 62_000);
    assert!(
        matches!(&a, Action::Fail { error, .. } if error.contains("progress deadline of 1m") && error.contains("HTTP 503: not yet")),
        "{a:?}"
    );
    let mut crashed = running_ready(1, 2);
    crashed.push(replica(2, 0, ContainerState::Exited(1), None));
    crashed.push(replica(2, 1, ContainerState::Running, None));
    let a = during(&s, crashed, op(), 3_000);
    assert!(
        matches!(&a, Action::Fail { error, .. } if error.contains("exited with code 1")),
        "{a:?}"
    );
}

#[test]
fn verify_soaks_then_completes_and_fails_if_the_candidate_falters() {
    let s = spec();
    let op = || operation(&s, Some(1), 2, log_until(&s, Some(1), Verify, 10_000));
    let mut both = running_ready(1, 2);
    both.extend(running_ready(2, 2));
    let a = during(&s, both.clone(), op(), 15_000);
    assert!(matches!(a, Action::Wait { .. }), "{a:?}");
    let a = during(&s, both.clone(), op(), 30_000);
    assert!(matches!(a, Action::Complete { .. }), "{a:?}");
    let mut crashed = both;
    crashed[3].0.state = ContainerState::Exited(1);
    let a = during(&s, crashed, op(), 15_000);
    assert!(
        matches!(&a, Action::Fail { error, .. } if error.contains("during verification")),
        "{a:?}"
    );
}

#[test]
fn the_old_revision_is_retired_only_after_the_drain() {
    let s = spec();
    let mut log = log_until(&s, Some(1), RetireOld, 0);
    log.pop(); // RetireOld not started yet
    let sw = index_of(&s, Some(1), SwitchTraffic);
    // SwitchTraffic succeeded at t=10s.
    for (at, e) in log.iter_mut() {
        if matches!(e, Entry::Succeeded { index, .. } if *index == sw) {
            *at = 10_000;
        }
    }
    let op = || operation(&s, Some(1), 2, log.clone());
    let mut both = running_ready(1, 2);
    both.extend(running_ready(2, 2));
    let a = during(&s, both.clone(), op(), 12_000);
    assert_eq!(
        a,
        Action::Wait {
            recheck: Duration::from_millis(3_000),
            message: "draining the old revision".into()
        }
    );
    let a = during(&s, both, op(), 15_000);
    assert!(
        matches!(
            a,
            Action::Run {
                step: RetireOld,
                ..
            }
        ),
        "{a:?}"
    );
}

#[test]
fn approval_gates_the_rollout() {
    let s = spec_with("  approval: Required\n", 1);
    let op = || {
        operation(
            &s,
            Some(1),
            2,
            vec![(
                0,
                Entry::Started {
                    phase: Phase::Forward,
                    index: 0,
                },
            )],
        )
    };
    let a = during(&s, vec![], op(), 0);
    assert!(
        matches!(&a, Action::Wait { message, .. } if message.contains("berthctl approve web")),
        "{a:?}"
    );
    let mut j = with_op(op(), Some(1));
    j.approved_hash = Some("hash2".into());
    let serving = observed(running_ready(1, 1), Some(vec![port(1, 0)]));
    let a = plan("web", &s, "hash2", &serving, &j, 0);
    assert!(matches!(a, Action::Complete { index: 0, .. }), "{a:?}");
}

fn failed_at(spec: &EnvironmentSpec, step: Step) -> Operation {
    let mut log = log_until(spec, Some(1), step, 0);
    let index = index_of(spec, Some(1), step);
    log.push((
        1,
        Entry::Failed {
            phase: Phase::Forward,
            index,
            error: "boom".into(),
            retryable: false,
        },
    ));
    operation(spec, Some(1), 2, log)
}

#[test]
fn a_failed_step_rolls_back_with_steps_that_undo_what_was_done() {
    let bc = spec();
    let br = spec_with(BREAKING, 2);
    let cases: Vec<(&str, &EnvironmentSpec, Step, Vec<Step>)> = vec![
        (
            "backward compatible, failed before the switch",
            &bc,
            WaitReady,
            vec![StopCandidate],
        ),
        (
            "backward compatible, failed after the switch",
            &bc,
            Verify,
            vec![SwitchBack, StopCandidate],
        ),
        (
            "backward compatible, migration failed",
            &bc,
            Migrate,
            vec![],
        ),
        (
            "breaking, failed after the switch",
            &br,
            Verify,
            vec![
                StopCandidate,
                RestoreDatabase,
                StartOld,
                WaitOldReady,
                SwitchBack,
            ],
        ),
        (
            "breaking, migration failed",
            &br,
            Migrate,
            vec![
                StopCandidate,
                RestoreDatabase,
                StartOld,
                WaitOldReady,
                SwitchBack,
            ],
        ),
        (
            "breaking, backup failed",
            &br,
            Backup,
            vec![StopCandidate, StartOld, WaitOldReady, SwitchBack],
        ),
    ];
    for (name, s, step, want) in cases {
        let op = failed_at(s, step);
        let a = during(s, vec![], op, 5);
        match a {
            Action::BeginRollback { reason, steps } => {
                assert_eq!(steps, want, "{name}");
                assert!(
                    reason.contains(step.name()) && reason.contains("boom"),
                    "{name}: {reason}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn without_automatic_rollback_a_failure_stops_for_an_operator() {
    let s = spec_with("  rollback: {automatic: false}\n", 1);
    let a = during(&s, vec![], failed_at(&s, WaitReady), 5);
    assert!(
        matches!(&a, Action::Finish(Outcome::Failed { reason }) if reason.contains("rollout undo")),
        "{a:?}"
    );
}

#[test]
fn a_failed_prune_does_not_undo_a_healthy_rollout() {
    let s = spec();
    let a = during(&s, vec![], failed_at(&s, Prune), 5);
    assert_eq!(a, Action::Finish(Outcome::Succeeded));
}

#[test]
fn a_failed_retire_does_not_switch_traffic_back_to_the_replicas_it_stopped() {
    // RetireOld may have stopped old replicas before it failed: a rollback (SwitchBack →
    // StopCandidate) would send traffic to stopped replicas and stop the healthy ones.
    let s = spec();
    let a = during(&s, vec![], failed_at(&s, RetireOld), 5);
    assert_eq!(a, Action::Finish(Outcome::Succeeded));
}

#[test]
fn finished_phases_finish_the_operation() {
    let s = spec();
    let n = steps_for(&s, Some(1)).len();
    let mut log = Vec::new();
    for i in 0..n {
        log.push((
            0,
            Entry::Started {
                phase: Phase::Forward,
                index: i,
            },
        ));
        log.push((
            0,
            Entry::Succeeded {
                phase: Phase::Forward,
                index: i,
                output: StepOutput::None,
            },
        ));
    }
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(vec![], None),
        &with_op(operation(&s, Some(1), 2, log), Some(1)),
        0,
    );
    assert_eq!(a, Action::Finish(Outcome::Succeeded));

    let mut op = failed_at(&s, Verify);
    op.log.push(Event {
        at: 2,
        entry: Entry::RollbackBegan {
            reason: "verify failed".into(),
            steps: vec![SwitchBack],
        },
    });
    let j = with_op(op.clone(), Some(1));
    let mut both = running_ready(1, 2);
    both.extend(running_ready(2, 2));
    let a = plan("web", &s, "hash2", &observed(both, None), &j, 3);
    assert_eq!(
        a,
        Action::Run {
            phase: Phase::Rollback,
            index: 0,
            step: SwitchBack
        }
    );
    op.log.push(Event {
        at: 3,
        entry: Entry::Started {
            phase: Phase::Rollback,
            index: 0,
        },
    });
    op.log.push(Event {
        at: 4,
        entry: Entry::Succeeded {
            phase: Phase::Rollback,
            index: 0,
            output: StepOutput::None,
        },
    });
    let a = during(&s, vec![], op.clone(), 5);
    assert_eq!(
        a,
        Action::Finish(Outcome::RolledBack {
            reason: "verify failed".into()
        })
    );
    // A failed rollback step needs an operator.
    op.log.truncate(op.log.len() - 1);
    op.log.push(Event {
        at: 4,
        entry: Entry::Failed {
            phase: Phase::Rollback,
            index: 0,
            error: "nginx -t failed".into(),
            retryable: false,
        },
    });
    let a = during(&s, vec![], op, 5);
    assert!(
        matches!(&a, Action::Finish(Outcome::Failed { reason }) if reason.contains("nginx -t failed") && reason.contains("verify failed")),
        "{a:?}"
    );
}

#[test]
fn waiting_for_the_old_revision_during_a_rollback() {
    let s = spec_with(BREAKING, 1);
    let mut op = failed_at(&s, Verify);
    op.log.push(Event {
        at: 2,
        entry: Entry::RollbackBegan {
            reason: "x".into(),
            steps: vec![StartOld, WaitOldReady],
        },
    });
    for (i, at) in [(0, 3), (0, 4)] {
        let entry = if at == 3 {
            Entry::Started {
                phase: Phase::Rollback,
                index: i,
            }
        } else {
            Entry::Succeeded {
                phase: Phase::Rollback,
                index: i,
                output: StepOutput::None,
            }
        };
        op.log.push(Event { at, entry });
    }
    op.log.push(Event {
        at: 5,
        entry: Entry::Started {
            phase: Phase::Rollback,
            index: 1,
        },
    });
    let a = during(&s, running_ready(1, 1), op, 6);
    assert!(
        matches!(
            a,
            Action::Complete {
                phase: Phase::Rollback,
                index: 1,
                ..
            }
        ),
        "{a:?}"
    );
}

#[test]
fn an_unreplayable_journal_is_reported_not_guessed() {
    let s = spec();
    let op = operation(
        &s,
        Some(1),
        2,
        vec![(
            0,
            Entry::Succeeded {
                phase: Phase::Forward,
                index: 3,
                output: StepOutput::None,
            },
        )],
    );
    let a = during(&s, vec![], op, 0);
    assert!(matches!(a, Action::Broken { .. }), "{a:?}");
}

/// A spec pinned by an operation that began with `pinned`, planned with `manifest`.
fn op_pinned(pinned: &EnvironmentSpec, log: Vec<(u64, Entry)>) -> Operation {
    operation(pinned, Some(1), 2, log)
}

#[test]
fn replicas_changed_from_2_to_3_during_wait_ready_start_a_third_candidate_and_wait_for_it() {
    let pinned = spec_with(BLUEGREEN_BC, 2);
    let manifest = spec_with(BLUEGREEN_BC, 3);
    let op = || op_pinned(&pinned, log_until(&pinned, Some(1), WaitReady, 1_000));
    let mut seen = running_ready(1, 3);
    seen.extend(running_ready(2, 2));
    let a = during(&manifest, seen.clone(), op(), 2_000);
    assert_eq!(
        a,
        Action::Repair(Repair::StartReplica {
            revision: 2,
            replica: 2,
            why: "replica web-r2-2 of the candidate is missing (3 wanted)".into()
        })
    );
    let a = during(&manifest, seen.clone(), op(), 2_000);
    assert!(matches!(a, Action::Repair(_)), "{a:?}");
    seen.push(replica(2, 2, ContainerState::Running, Some(true)));
    let a = during(&manifest, seen, op(), 3_000);
    assert!(
        matches!(&a, Action::Complete { output: StepOutput::Note(n), .. } if n == "3 of 3 replicas ready"),
        "{a:?}"
    );
}

#[test]
fn replicas_changed_during_verify_complete_with_the_new_count() {
    let pinned = spec_with(BLUEGREEN_BC, 2);
    let manifest = spec_with(BLUEGREEN_BC, 3);
    let op = || op_pinned(&pinned, log_until(&pinned, Some(1), Verify, 10_000));
    let mut seen = running_ready(1, 3);
    seen.extend(running_ready(2, 2));
    let a = during(&manifest, seen.clone(), op(), 12_000);
    assert!(
        matches!(
            &a,
            Action::Repair(Repair::StartReplica {
                revision: 2,
                replica: 2,
                ..
            })
        ),
        "{a:?}"
    );
    seen.push(replica(2, 2, ContainerState::Running, Some(true)));
    let a = during(&manifest, seen, op(), 30_000);
    assert!(matches!(a, Action::Complete { .. }), "{a:?}");
}

#[test]
fn a_manifest_edited_during_a_rollout_leaves_the_operation_on_its_pinned_spec() {
    let pinned = spec();
    let edited = spec_with(
        "  traffic: {nginx: {upstreamFile: /u.conf}}\n  migration: {policy: BackwardCompatible, command: [m]}\n  backup: {postgres: {container: db, database: d, user: u}, directory: /b}\n  strategy: {progressDeadline: 1m, verifyFor: 1h, drainFor: 5s}\n",
        2,
    );
    let op = op_pinned(&pinned, log_until(&pinned, Some(1), Verify, 10_000));
    let effective = operation_spec(&edited, &op);
    assert_eq!(effective.strategy.verify_for, pinned.strategy.verify_for);
    assert_eq!(effective.replicas, edited.replicas);
    let mut both = running_ready(1, 2);
    both.extend(running_ready(2, 2));
    // verifyFor is 20 s in the pinned spec, 1 h in the edited manifest.
    let a = during(&edited, both, op, 30_001);
    assert!(matches!(a, Action::Complete { .. }), "{a:?}");
}

#[test]
fn an_operation_from_an_older_journal_without_a_pinned_spec_uses_the_manifest() {
    let s = spec();
    let mut op = op_pinned(&s, vec![]);
    op.spec = serde_json::Value::Null;
    assert_eq!(operation_spec(&s, &op), s);
}

#[test]
fn dropping_approval_required_releases_a_waiting_rollout() {
    let required = spec_with("  approval: Required\n", 2);
    let dropped = spec_with("", 2);
    let started = vec![(
        0,
        Entry::Started {
            phase: Phase::Forward,
            index: 0,
        },
    )];
    let op = || op_pinned(&required, started.clone());
    let a = during(&required, vec![], op(), 0);
    assert!(matches!(a, Action::Wait { .. }), "{a:?}");
    let a = during(&dropped, vec![], op(), 0);
    assert!(
        matches!(&a, Action::Complete { index: 0, output: StepOutput::Note(n), .. } if n.contains("no longer requires approval")),
        "{a:?}"
    );
}

#[test]
fn drift_of_the_serving_revision_is_repaired_while_an_approval_waits() {
    let s = spec_with(
        "  traffic: {nginx: {upstreamFile: /u.conf}}\n  approval: Required\n",
        2,
    );
    let started = vec![(
        0,
        Entry::Started {
            phase: Phase::Forward,
            index: 0,
        },
    )];
    let op = || op_pinned(&s, started.clone());
    let mut killed = running_ready(1, 2);
    killed[1].0.state = ContainerState::Exited(137);
    let a = during(&s, killed, op(), 0);
    assert!(
        matches!(
            &a,
            Action::Repair(Repair::ReplaceReplica {
                revision: 1,
                replica: 1,
                ..
            })
        ),
        "{a:?}"
    );
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(running_ready(1, 2), None),
        &with_op(op(), Some(1)),
        0,
    );
    assert!(
        matches!(&a, Action::Repair(Repair::SyncTraffic { ports, .. }) if *ports == vec![port(1, 0), port(1, 1)]),
        "{a:?}"
    );
}

#[test]
fn drift_of_the_serving_revision_is_repaired_during_verify_but_traffic_stays_on_the_candidate() {
    let s = spec();
    let op = || operation(&s, Some(1), 2, log_until(&s, Some(1), Verify, 10_000));
    let mut seen = running_ready(1, 2);
    seen[0].0.state = ContainerState::Exited(137);
    seen.extend(running_ready(2, 2));
    let a = during(&s, seen, op(), 12_000);
    assert!(
        matches!(
            &a,
            Action::Repair(Repair::ReplaceReplica {
                revision: 1,
                replica: 0,
                ..
            })
        ),
        "{a:?}"
    );
    // The switch points at revision 2 now: that is not drift.
    let mut both = running_ready(1, 2);
    both.extend(running_ready(2, 2));
    let to_candidate = observed(both, Some(vec![port(2, 0), port(2, 1)]));
    let a = plan(
        "web",
        &s,
        "hash2",
        &to_candidate,
        &with_op(op(), Some(1)),
        12_000,
    );
    assert!(matches!(a, Action::Wait { .. }), "{a:?}");
}

#[test]
fn a_revision_the_operation_stopped_on_purpose_is_not_repaired() {
    let s = spec_with(BREAKING, 2);
    let op = operation(&s, Some(1), 2, log_until(&s, Some(1), Migrate, 5));
    let mut stopped = running_ready(1, 2);
    for (c, _) in &mut stopped {
        c.state = ContainerState::Exited(0);
    }
    let a = during(&s, stopped, op, 10);
    assert!(matches!(a, Action::Run { step: Migrate, .. }), "{a:?}");
}

#[test]
fn preflight_waits_for_dependencies_then_refuses_what_cannot_be_done() {
    let s = spec();
    let steps = steps_for(&s, Some(1));
    assert_eq!(preflight(&s, &steps, &Preflight::default()), Gate::Go);
    let facts = Preflight {
        unready_dependencies: vec![("db".into(), "not deployed yet".into())],
        missing: vec![(
            Backup,
            "the backup source, container db, is not running".into(),
        )],
        haproxy_slots: None,
    };
    assert_eq!(
        preflight(&s, &steps, &facts),
        Gate::Wait {
            message: "waiting for db (not deployed yet)".into()
        }
    );
    let facts = Preflight {
        unready_dependencies: vec![],
        ..facts
    };
    assert_eq!(
        preflight(&s, &steps, &facts),
        Gate::Refuse {
            reasons: vec!["Backup: the backup source, container db, is not running".into()]
        }
    );
    // What the operation has no step for does not hold it up.
    let no_backup = spec_with("", 2);
    assert_eq!(
        preflight(&no_backup, &steps_for(&no_backup, Some(1)), &facts),
        Gate::Go
    );
}

#[test]
fn preflight_refuses_an_haproxy_pool_with_fewer_slots_than_twice_the_replicas() {
    let haproxy = spec_with("  traffic: {haproxy: {socket: /s, backend: b}}\n", 2);
    let steps = steps_for(&haproxy, Some(1));
    let slots = |n| Preflight {
        haproxy_slots: Some(n),
        ..Preflight::default()
    };
    assert_eq!(preflight(&haproxy, &steps, &Preflight::default()), Gate::Go);
    assert_eq!(preflight(&haproxy, &steps, &slots(4)), Gate::Go);
    assert_eq!(
        preflight(&haproxy, &steps, &slots(3)),
        Gate::Refuse {
            reasons: vec!["spec.traffic.haproxy: backend b has 3 server(s) named appN, 4 are needed (twice the replicas: old and new revision side by side); declare more with `server-template app 1-4`".into()]
        }
    );
    // An unreachable socket is a missing prerequisite of the switch.
    let facts = Preflight {
        missing: vec![(SwitchTraffic, "HAProxy: host h: /s: cannot connect".into())],
        ..Preflight::default()
    };
    assert!(matches!(
        preflight(&haproxy, &steps, &facts),
        Gate::Refuse { .. }
    ));
}

// ---- Operator verbs: undo (pin) and abort ------------------------------------------

/// Revisions 1 and 2 known, revision `current` serving, held at 1 by an undo made while
/// the manifest asked for revision 2 ("hash2").
fn pinned_at_1(current: Revision) -> Journal {
    let mut j = journal_at(Some(2));
    j.current = Some((current, format!("hash{current}")));
    j.pin = Some(Pin {
        revision: 1,
        hash: "hash1".into(),
        asked_hash: "hash2".into(),
        spec: spec_with(&format!("{BLUEGREEN_BC}  approval: Required\n"), 2),
    });
    j
}

#[test]
fn an_undo_rolls_back_to_the_pinned_revision_without_approval_or_migration() {
    let s = spec();
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(running_ready(2, 2), Some(vec![port(2, 0), port(2, 1)])),
        &pinned_at_1(2),
        0,
    );
    let Action::Begin(new) = a else {
        panic!("expected an undo to begin, got {a:?}");
    };
    assert_eq!((new.kind, new.from, new.to), (OpKind::Undo, Some(2), 1));
    assert!(!new.new_revision);
    assert!(!new.steps.contains(&Step::AwaitApproval), "{:?}", new.steps);
    assert!(!new.steps.contains(&Step::Migrate), "{:?}", new.steps);
    assert_eq!(new.template_hash, "hash1");
}

#[test]
fn a_pinned_environment_stays_on_its_revision_while_the_manifest_asks_for_another() {
    let s = spec();
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)])),
        &pinned_at_1(1),
        0,
    );
    let Action::Idle { message, .. } = a else {
        panic!("expected idle, got {a:?}");
    };
    assert!(
        message.starts_with("pinned to revision 1 by undo; the manifest asks for revision 2"),
        "{message}"
    );
}

#[test]
fn a_changed_template_ends_the_pin_and_rolls_out_the_manifest() {
    let s = spec();
    let a = plan(
        "web",
        &s,
        "hash3",
        &observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)])),
        &pinned_at_1(1),
        0,
    );
    let Action::Begin(new) = a else {
        panic!("expected a rollout, got {a:?}");
    };
    assert_eq!((new.kind, new.from, new.to), (OpKind::Rollout, Some(1), 3));
}

#[test]
fn an_abort_rolls_the_forward_phase_back_at_once_even_while_paused() {
    let s = spec();
    let op = operation(&s, Some(1), 2, log_until(&s, Some(1), Step::WaitReady, 0));
    let mut j = with_op(op, Some(1));
    j.abort = true;
    j.paused = true;
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)])),
        &j,
        1000,
    );
    let Action::BeginRollback { reason, steps } = a else {
        panic!("expected a rollback, got {a:?}");
    };
    assert!(reason.contains("aborted"), "{reason}");
    assert_eq!(steps, [Step::StopCandidate]);
}

#[test]
fn a_paused_rollout_waits_before_its_next_step_and_a_running_one_goes_on() {
    let s = spec();
    let mut log = log_until(&s, Some(1), Step::StartCandidate, 0);
    let i = index_of(&s, Some(1), Step::StartCandidate);
    log.push((
        0,
        Entry::Succeeded {
            phase: Phase::Forward,
            index: i,
            output: StepOutput::None,
        },
    ));
    let op = operation(&s, Some(1), 2, log);
    let mut j = with_op(op, Some(1));
    j.paused = true;
    let containers = [running_ready(1, 2), running_ready(2, 2)].concat();
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(containers, Some(vec![port(1, 0), port(1, 1)])),
        &j,
        0,
    );
    assert!(
        matches!(&a, Action::Wait { message, .. } if message == "paused before WaitReady"),
        "{a:?}"
    );
}

#[test]
fn an_abort_waits_for_a_step_whose_effect_is_in_flight() {
    let s = spec();
    let op = operation(&s, Some(1), 2, log_until(&s, Some(1), Step::Migrate, 0));
    let mut j = with_op(op, Some(1));
    j.abort = true;
    let a = plan(
        "web",
        &s,
        "hash2",
        &observed(running_ready(1, 2), Some(vec![port(1, 0), port(1, 1)])),
        &j,
        1000,
    );
    assert!(
        matches!(
            a,
            Action::Run {
                step: Step::Migrate,
                ..
            }
        ),
        "the migration under way is finished first: {a:?}"
    );
}
