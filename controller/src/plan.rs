//! `plan`: what to do next for one environment — a pure function of the desired spec, the
//! observed containers and traffic, the journal, and the time (passed in, never read).
//!
//! Level-triggered: the plan never asks "what changed?", only "how does what is there
//! differ from what should be?". The reconciler performs the one action returned,
//! journals it, and asks again.

use std::time::Duration;

use berth_api::environment::{
    BackupWhen, EnvironmentSpec, MigrationPolicy, RestoreDatabase, StrategyType, Traffic,
};

use crate::model::{replica_name, ContainerInfo, ContainerState, Revision, Role};
use crate::op::{Millis, OpKind, Operation, Outcome, Phase, Status, Step, StepOutput, StepState};

/// How often an idle, healthy environment is looked at again without a trigger.
pub const RESYNC: Duration = Duration::from_secs(30);
/// A step failing this many times in a row (retryable errors) fails for good.
pub const MAX_ATTEMPTS: u32 = 5;

/// Health of one container as the probe monitor last saw it. `None`: not decided yet (or
/// no such probe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub ready: Option<bool>,
    pub live: Option<bool>,
    pub last_output: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub containers: Vec<(ContainerInfo, Health)>,
    /// The host ports traffic is sent to now; `None` when the switch's state is not ours
    /// (missing, or edited by hand). Ignored when the environment has no traffic switch.
    pub traffic: Option<Vec<u16>>,
}

/// What the plan needs from the journal (the store's records, reduced).
#[derive(Clone, Debug, Default)]
pub struct Journal {
    /// The revision serving now (the last successful rollout's target).
    pub current: Option<(Revision, String)>,
    /// Every revision known, with its template hash.
    pub revisions: Vec<(Revision, String)>,
    /// The number a new revision gets.
    pub next_revision: Revision,
    /// A template whose rollout failed: not retried until the spec changes.
    pub failed_hash: Option<(String, String)>,
    pub paused: bool,
    /// The template hash `berthctl approve` was given for.
    pub approved_hash: Option<String>,
    pub active: Option<Operation>,
    /// `berthctl rollout abort` was asked for the active operation: roll it back now.
    pub abort: bool,
    /// `berthctl rollout undo`: the revision the environment is held at while the
    /// manifest still asks for what it asked when the undo was made.
    pub pin: Option<Pin>,
}

/// An environment held at a revision by `rollout undo` (docs/design.md, "Operator
/// verbs"): it holds while the manifest's template hash is `asked_hash`; any change to
/// the spec's template ends it.
#[derive(Clone, Debug)]
pub struct Pin {
    pub revision: Revision,
    /// The pinned revision's template hash.
    pub hash: String,
    /// The manifest's template hash when the undo was asked.
    pub asked_hash: String,
    /// The pinned revision's spec, as recorded with it (the manifest's when unreadable).
    pub spec: EnvironmentSpec,
}

/// The spec an undo runs with: its revision's, without approval (an undo is the
/// operator's own decision) and without a migration (the database stays as it is, as
/// after an automatic rollback of an expand-only migration; a backup is taken only when
/// `backup.when` is `Always`).
pub fn undo_spec(pinned: &EnvironmentSpec) -> EnvironmentSpec {
    let mut spec = pinned.clone();
    spec.approval = berth_api::environment::Approval::Automatic;
    spec.migration.policy = MigrationPolicy::None;
    spec
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do; look again after `recheck`.
    Idle {
        recheck: Duration,
        message: String,
    },
    /// Journal a new operation (durably, before anything is touched), then ask again.
    Begin(NewOperation),
    /// Perform this step of the active operation: journal `Started`, act, journal the end.
    Run {
        phase: Phase,
        index: usize,
        step: Step,
    },
    /// The running step's condition holds now.
    Complete {
        phase: Phase,
        index: usize,
        output: StepOutput,
    },
    /// The running step failed for good.
    Fail {
        phase: Phase,
        index: usize,
        error: String,
    },
    /// Keep waiting on the running step.
    Wait {
        recheck: Duration,
        message: String,
    },
    BeginRollback {
        reason: String,
        steps: Vec<Step>,
    },
    Finish(Outcome),
    /// Drift outside any operation, repaired in place to the current revision.
    Repair(Repair),
    /// The journal cannot be replayed: stop and show an operator.
    Broken {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOperation {
    /// A rollout of the manifest, or an undo to a pinned revision (with [`undo_spec`]).
    pub kind: OpKind,
    pub from: Option<Revision>,
    pub to: Revision,
    /// True when `to` is a new revision (its record must be written).
    pub new_revision: bool,
    pub template_hash: String,
    pub steps: Vec<Step>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Create (if missing) and start replica `replica` of `revision`.
    StartReplica {
        revision: Revision,
        replica: u32,
        why: String,
    },
    /// Remove the container and create it again.
    ReplaceReplica {
        name: String,
        revision: Revision,
        replica: u32,
        why: String,
    },
    StopContainer {
        name: String,
        why: String,
    },
    RemoveContainer {
        name: String,
        why: String,
    },
    /// Point traffic at exactly these host ports.
    SyncTraffic {
        ports: Vec<u16>,
        why: String,
    },
}

/// The forward steps of a rollout, in order, by strategy and migration policy
/// (docs/design.md, "Steps by strategy and migration policy").
pub fn steps_for(spec: &EnvironmentSpec, from: Option<Revision>) -> Vec<Step> {
    let policy = spec.migration.policy;
    let migrates = policy != MigrationPolicy::None;
    let backs_up = match spec.backup_when() {
        BackupWhen::Always => true,
        BackupWhen::BeforeMigration => migrates,
        BackupWhen::Never => false,
    };
    let traffic = !matches!(spec.traffic, Traffic::None);
    let mut s = Vec::new();
    if spec.approval == berth_api::environment::Approval::Required {
        s.push(Step::AwaitApproval);
    }
    s.push(Step::PullImage);
    let stop_first =
        spec.strategy.kind == StrategyType::Recreate || policy == MigrationPolicy::Breaking;
    if stop_first {
        // Nothing may write while the database is backed up and migrated.
        if spec.strategy.kind != StrategyType::Recreate {
            s.push(Step::CreateCandidate);
        }
        if from.is_some() {
            s.push(Step::StopOld);
        }
    }
    if backs_up {
        s.push(Step::Backup);
    }
    if migrates {
        s.push(Step::Migrate);
    }
    s.push(Step::StartCandidate);
    s.push(Step::WaitReady);
    if !spec.smoke.is_empty() {
        s.push(Step::SmokeCandidate);
    }
    if traffic {
        s.push(Step::SwitchTraffic);
    }
    s.push(Step::Verify);
    if from.is_some() && !stop_first {
        s.push(Step::RetireOld);
    }
    s.push(Step::Prune);
    s
}

/// The steps that undo what a failed rollout did, from what its journal says was begun.
pub fn rollback_steps(spec: &EnvironmentSpec, op: &Operation, st: &Status) -> Vec<Step> {
    let begun = |step: Step| st.begun(step);
    let traffic = !matches!(spec.traffic, Traffic::None);
    let candidate_touched = begun(Step::CreateCandidate) || begun(Step::StartCandidate);
    let mut steps = Vec::new();
    if op.from.is_none() {
        // A first deployment has nothing to go back to.
        if candidate_touched {
            steps.push(Step::StopCandidate);
        }
        return steps;
    }
    if begun(Step::StopOld) {
        steps.push(Step::StopCandidate);
        let restore = spec.migration.policy == MigrationPolicy::Breaking
            && spec.rollback.restore_database == RestoreDatabase::OnBreakingMigration
            && begun(Step::Migrate)
            && st.did_succeed(Step::Backup);
        if restore {
            steps.push(Step::RestoreDatabase);
        }
        steps.push(Step::StartOld);
        steps.push(Step::WaitOldReady);
        if traffic {
            steps.push(Step::SwitchBack);
        }
    } else {
        // The old revision kept running: send traffic back first, then stop the candidate.
        if traffic && begun(Step::SwitchTraffic) {
            steps.push(Step::SwitchBack);
        }
        if candidate_touched {
            steps.push(Step::StopCandidate);
        }
    }
    steps
}

/// What the shell found out, right before an operation would begin, about whether its
/// steps can be done (gathered only then: it costs a few host calls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    /// Environments named in `dependsOn` that have no ready current revision, with why.
    pub unready_dependencies: Vec<(String, String)>,
    /// Prerequisites of a step that the host lacks (a backup source that is not running,
    /// a `pg_dump` that is not there), with why.
    pub missing: Vec<(Step, String)>,
    /// How many slots (`<serverPrefix>N` servers) the HAProxy backend has, when the
    /// environment switches through HAProxy and its admin socket answered.
    pub haproxy_slots: Option<usize>,
}

/// Whether an operation may begin: decided before its first side effect, so a rollout
/// never starts what it cannot finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Not yet, and not a failure: the environment waits, exactly as it is.
    Wait {
        message: String,
    },
    /// A step could not be done: nothing is begun, the status says why, and the check is
    /// made again at the next resync (a fixed host or manifest lets it go).
    Refuse {
        reasons: Vec<String>,
    },
}

/// Decides whether an operation of `steps` may begin, from the spec and the facts.
/// Dependencies come first: what they provide (a database to back up) is often what a
/// later check would find missing.
pub fn preflight(spec: &EnvironmentSpec, steps: &[Step], facts: &Preflight) -> Gate {
    if !facts.unready_dependencies.is_empty() {
        let waits: Vec<String> = facts
            .unready_dependencies
            .iter()
            .map(|(env, why)| format!("{env} ({why})"))
            .collect();
        return Gate::Wait {
            message: format!("waiting for {}", waits.join(", ")),
        };
    }
    // The same list `berthctl validate` warns from: what it says is refused, is.
    let mut reasons: Vec<String> = berth_api::support::unsupported(spec)
        .into_iter()
        .filter(|u| u.effect == berth_api::support::Effect::Refused)
        .map(|u| format!("{}: {}", u.path, u.message))
        .collect();
    if let (Traffic::Haproxy(h), Some(slots)) = (&spec.traffic, facts.haproxy_slots) {
        // Old and new revision serve side by side during a switch, each replica on a slot.
        let needed = 2 * spec.replicas as usize;
        if steps.contains(&Step::SwitchTraffic) && slots < needed {
            reasons.push(format!(
                "spec.traffic.haproxy: backend {} has {slots} server(s) named {}N, {needed} are needed (twice the replicas: old and new revision side by side); declare more with `server-template {} 1-{needed}`",
                h.backend, h.server_prefix, h.server_prefix
            ));
        }
    }
    for (step, why) in &facts.missing {
        if steps.contains(step) {
            reasons.push(format!("{}: {why}", step.name()));
        }
    }
    if reasons.is_empty() {
        Gate::Go
    } else {
        Gate::Refuse { reasons }
    }
}

/// The one spec an operation works from, in the planner and in every step alike: the
/// manifest's spec pinned when the operation began, with two fields taken live from the
/// manifest — `replicas` (scaling is never a new revision, so it applies at once, also to
/// a rollout under way) and `approval` (dropping `approval: Required` releases a rollout
/// that waits for one). A journal from before operations pinned their spec falls back to
/// the manifest.
pub fn operation_spec(manifest: &EnvironmentSpec, op: &Operation) -> EnvironmentSpec {
    let mut spec = serde_json::from_value::<EnvironmentSpec>(op.spec.clone())
        .unwrap_or_else(|_| manifest.clone());
    spec.replicas = manifest.replicas;
    spec.approval = manifest.approval;
    spec
}

/// Decides the next action. See the module docs.
pub fn plan(
    name: &str,
    spec: &EnvironmentSpec,
    desired_hash: &str,
    observed: &Observed,
    journal: &Journal,
    now: Millis,
) -> Action {
    match &journal.active {
        Some(op) => match op.status() {
            Ok(st) => {
                let spec = operation_spec(spec, op);
                plan_operation(name, &spec, observed, journal, op, &st, now)
            }
            Err(e) => Action::Broken {
                message: e.to_string(),
            },
        },
        None => plan_idle(name, spec, desired_hash, observed, journal),
    }
}

fn plan_idle(
    name: &str,
    spec: &EnvironmentSpec,
    desired_hash: &str,
    observed: &Observed,
    journal: &Journal,
) -> Action {
    if let Some(pin) = journal
        .pin
        .as_ref()
        .filter(|p| p.asked_hash == desired_hash)
    {
        return plan_pinned(name, spec, desired_hash, observed, journal, pin);
    }
    let current = journal.current.as_ref();
    if current.map(|(_, h)| h.as_str()) != Some(desired_hash) {
        if let Some((hash, reason)) = &journal.failed_hash {
            if hash == desired_hash {
                // Fall through to keeping the current revision healthy.
                if let Some(a) = current.and_then(|(rev, _)| repair(name, spec, *rev, observed)) {
                    return a;
                }
                return Action::Idle {
                    recheck: RESYNC,
                    message: format!(
                        "rollout of template {hash} failed: {reason}; change the spec to try again"
                    ),
                };
            }
        }
        if journal.paused {
            return Action::Idle {
                recheck: RESYNC,
                message: "rollouts are paused (berthctl rollout resume)".into(),
            };
        }
        let from = current.map(|(r, _)| *r);
        // A template seen before (a revert) gets its old revision back: its stopped
        // containers and image may still be there.
        let (to, new_revision) = match journal.revisions.iter().find(|(_, h)| h == desired_hash) {
            Some((rev, _)) if Some(*rev) != from => (*rev, false),
            _ => (journal.next_revision, true),
        };
        let reason = match from {
            None => format!("first deployment of {}", spec.image),
            Some(r) => format!("revision {r} → {to} ({})", spec.image),
        };
        return Action::Begin(NewOperation {
            kind: OpKind::Rollout,
            from,
            to,
            new_revision,
            template_hash: desired_hash.to_owned(),
            steps: steps_for(spec, from),
            reason,
        });
    }
    let Some((rev, _)) = current else {
        unreachable!("a current revision exists when its hash matched");
    };
    if let Some(a) = repair(name, spec, *rev, observed) {
        return a;
    }
    Action::Idle {
        recheck: RESYNC,
        message: format!(
            "revision {rev}: {} of {} replicas ready",
            ready_count(observed, *rev, spec),
            spec.replicas
        ),
    }
}

/// An environment held by `rollout undo` at `pin.revision`: the undo is rolled out if
/// it is not serving yet, then the revision is kept healthy, whatever the manifest asks,
/// until the manifest's template changes.
fn plan_pinned(
    name: &str,
    spec: &EnvironmentSpec,
    desired_hash: &str,
    observed: &Observed,
    journal: &Journal,
    pin: &Pin,
) -> Action {
    let asks = journal
        .revisions
        .iter()
        .find(|(_, h)| h == desired_hash)
        .map_or("a new revision".to_owned(), |(r, _)| {
            format!("revision {r}")
        });
    let current = journal.current.as_ref().map(|(r, _)| *r);
    if current == Some(pin.revision) {
        if let Some(a) = repair(name, spec, pin.revision, observed) {
            return a;
        }
        return Action::Idle {
            recheck: RESYNC,
            message: format!(
                "pinned to revision {} by undo; the manifest asks for {asks} ({} of {} replicas ready)",
                pin.revision,
                ready_count(observed, pin.revision, spec),
                spec.replicas
            ),
        };
    }
    if let Some((hash, reason)) = &journal.failed_hash {
        if *hash == pin.hash {
            if let Some(a) = current.and_then(|rev| repair(name, spec, rev, observed)) {
                return a;
            }
            return Action::Idle {
                recheck: RESYNC,
                message: format!(
                    "undo to revision {} failed: {reason}; change the spec or berthctl rollout retry",
                    pin.revision
                ),
            };
        }
    }
    if journal.paused {
        return Action::Idle {
            recheck: RESYNC,
            message: "rollouts are paused (berthctl rollout resume)".into(),
        };
    }
    let undo = undo_spec(&pin.spec);
    Action::Begin(NewOperation {
        kind: OpKind::Undo,
        from: current,
        to: pin.revision,
        new_revision: false,
        template_hash: pin.hash.clone(),
        steps: steps_for(&undo, current),
        reason: format!(
            "undo: revision {} → {} ({})",
            current.map_or("none".into(), |r| r.to_string()),
            pin.revision,
            undo.image
        ),
    })
}

fn app_replicas(
    observed: &Observed,
    rev: Revision,
) -> impl Iterator<Item = &(ContainerInfo, Health)> {
    observed
        .containers
        .iter()
        .filter(move |(c, _)| c.role == Role::App && c.revision == rev)
}

/// Ready: running, and its readiness probe says so (or it has none).
fn is_ready(spec: &EnvironmentSpec, c: &ContainerInfo, h: &Health) -> bool {
    c.state == ContainerState::Running && (spec.health.readiness.is_none() || h.ready == Some(true))
}

/// How many of the replicas `rev` should have are ready.
pub fn ready_count(observed: &Observed, rev: Revision, spec: &EnvironmentSpec) -> usize {
    app_replicas(observed, rev)
        .filter(|(c, h)| c.replica.is_some_and(|r| r < spec.replicas) && is_ready(spec, c, h))
        .count()
}

/// Ports of the ready replicas of `rev` that traffic should go to.
pub fn serving_ports(spec: &EnvironmentSpec, observed: &Observed, rev: Revision) -> Vec<u16> {
    let mut ports: Vec<u16> = app_replicas(observed, rev)
        .filter(|(c, h)| c.replica.is_some_and(|r| r < spec.replicas) && is_ready(spec, c, h))
        .filter_map(|(c, _)| c.port)
        .collect();
    ports.sort_unstable();
    ports
}

/// Drift of the current revision, when there is one: for an environment whose next
/// operation cannot begin yet, which still keeps what serves healthy. While its
/// preflight waits (for a dependency) everything is repaired; while it refuses, only the
/// replicas: the refused spec's traffic switch may be the very thing that cannot work.
pub fn repair_current(
    name: &str,
    spec: &EnvironmentSpec,
    observed: &Observed,
    journal: &Journal,
    gate: &Gate,
) -> Option<Action> {
    let (rev, _) = journal.current.as_ref()?;
    match gate {
        Gate::Refuse { .. } => repair_replicas(name, spec, *rev, observed),
        Gate::Go | Gate::Wait { .. } => repair(name, spec, *rev, observed),
    }
}

/// Drift of the current revision: missing, dead or unhealthy replicas, extra replicas,
/// other revisions left running, and traffic that points elsewhere.
fn repair(
    name: &str,
    spec: &EnvironmentSpec,
    rev: Revision,
    observed: &Observed,
) -> Option<Action> {
    repair_replicas(name, spec, rev, observed)
        .or_else(|| repair_traffic(spec, rev, observed))
        .or_else(|| repair_leftovers(spec, rev, observed))
}

/// A replica of `rev` that is missing, exited, not started or failing its liveness probe.
fn repair_replicas(
    name: &str,
    spec: &EnvironmentSpec,
    rev: Revision,
    observed: &Observed,
) -> Option<Action> {
    for replica in 0..spec.replicas {
        let want = replica_name(name, rev, replica);
        let found = observed.containers.iter().find(|(c, _)| c.name == want);
        let why = match found {
            None => Some(("missing".to_owned(), false)),
            Some((c, h)) => match c.state {
                ContainerState::Running if h.live == Some(false) => {
                    Some((format!("liveness probe failed: {}", h.last_output), true))
                }
                ContainerState::Running => None,
                ContainerState::Exited(code) => Some((format!("exited with code {code}"), true)),
                ContainerState::Created => Some(("created but not running".to_owned(), false)),
                ContainerState::Other => None,
            },
        };
        if let Some((why, replace)) = why {
            let why = format!("replica {want} {why}");
            return Some(Action::Repair(if replace {
                Repair::ReplaceReplica {
                    name: want,
                    revision: rev,
                    replica,
                    why,
                }
            } else {
                Repair::StartReplica {
                    revision: rev,
                    replica,
                    why,
                }
            }));
        }
    }
    None
}

/// Traffic that does not go to exactly the ready replicas of `rev`.
fn repair_traffic(spec: &EnvironmentSpec, rev: Revision, observed: &Observed) -> Option<Action> {
    if matches!(spec.traffic, Traffic::None) {
        return None;
    }
    let ports = serving_ports(spec, observed, rev);
    let in_sync = observed.traffic.as_ref().map(|t| {
        let mut t = t.clone();
        t.sort_unstable();
        t
    }) == Some(ports.clone());
    // With nothing ready, keep whatever traffic has: pointing at nothing is worse.
    if in_sync || ports.is_empty() {
        return None;
    }
    let why = match &observed.traffic {
        None => "the traffic switch is missing or was edited by hand".to_owned(),
        Some(_) => "traffic does not match the ready replicas".to_owned(),
    };
    Some(Action::Repair(Repair::SyncTraffic { ports, why }))
}

/// Containers no revision needs: replicas beyond the count, other revisions still
/// running, finished migration containers.
fn repair_leftovers(spec: &EnvironmentSpec, rev: Revision, observed: &Observed) -> Option<Action> {
    for (c, _) in &observed.containers {
        let extra = c.role == Role::App
            && c.revision == rev
            && c.replica.is_none_or(|r| r >= spec.replicas);
        if extra {
            return Some(Action::Repair(Repair::RemoveContainer {
                name: c.name.clone(),
                why: format!("scaled down to {} replicas", spec.replicas),
            }));
        }
        let stray = c.revision != rev && c.state == ContainerState::Running;
        if stray {
            return Some(Action::Repair(Repair::StopContainer {
                name: c.name.clone(),
                why: format!("revision {} is not the current revision {rev}", c.revision),
            }));
        }
        if c.role == Role::Migrate && c.state != ContainerState::Running {
            return Some(Action::Repair(Repair::RemoveContainer {
                name: c.name.clone(),
                why: "migration container of a finished operation".into(),
            }));
        }
    }
    None
}

/// Drift while an operation runs. The revision that serves (the operation's `from`) keeps
/// its replicas and its traffic whatever the operation is doing — waiting for approval,
/// migrating, soaking — until the operation itself stops it (`StopOld`, `RetireOld`) or
/// moves traffic away (`SwitchTraffic`, until a `SwitchBack`). The operation's own
/// containers are left to its steps, but for one thing: replicas the candidate lacks
/// because the manifest scaled up after `StartCandidate` are started.
fn repair_during(
    name: &str,
    spec: &EnvironmentSpec,
    observed: &Observed,
    op: &Operation,
    st: &Status,
) -> Option<Action> {
    if st.phase == Phase::Forward && st.did_succeed(Step::StartCandidate) {
        let missing = (0..spec.replicas).find(|i| {
            let want = replica_name(name, op.to, *i);
            !observed.containers.iter().any(|(c, _)| c.name == want)
        });
        if let Some(replica) = missing {
            return Some(Action::Repair(Repair::StartReplica {
                revision: op.to,
                replica,
                why: format!(
                    "replica {} of the candidate is missing ({} wanted)",
                    replica_name(name, op.to, replica),
                    spec.replicas
                ),
            }));
        }
    }
    let from = op.from?;
    if st.begun(Step::StopOld) || st.begun(Step::RetireOld) {
        return None;
    }
    if let Some(a) = repair_replicas(name, spec, from, observed) {
        return Some(a);
    }
    let traffic_on_from = !st.begun(Step::SwitchTraffic) || st.did_succeed(Step::SwitchBack);
    if traffic_on_from {
        return repair_traffic(spec, from, observed);
    }
    None
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn probe_interval(spec: &EnvironmentSpec) -> Duration {
    spec.health
        .readiness
        .as_ref()
        .map_or(Duration::from_secs(1), |p| p.interval.0)
        .min(Duration::from_secs(2))
}

fn plan_operation(
    name: &str,
    spec: &EnvironmentSpec,
    observed: &Observed,
    journal: &Journal,
    op: &Operation,
    st: &Status,
    now: Millis,
) -> Action {
    if let Some(outcome) = &st.outcome {
        return Action::Finish(outcome.clone());
    }
    // An abort rolls back at once, except over a step whose effect is in flight (a
    // migration, a pull): that one ends first, so its journal says what it did.
    let in_flight = matches!(
        st.cursor(),
        Some((_, step, StepState::Running { .. }))
            if !matches!(step, Step::AwaitApproval | Step::WaitReady | Step::Verify)
    );
    if journal.abort && st.phase == Phase::Forward && !in_flight {
        return Action::BeginRollback {
            reason: "aborted by an operator (berthctl rollout abort)".into(),
            steps: rollback_steps(spec, op, st),
        };
    }
    let Some((index, step, state)) = st.cursor() else {
        return Action::Finish(match st.phase {
            Phase::Forward => Outcome::Succeeded,
            Phase::Rollback => Outcome::RolledBack {
                reason: st.rollback_reason.clone().unwrap_or_default(),
            },
        });
    };
    let phase = st.phase;
    match state {
        StepState::Failed { error, .. } => after_failure(spec, op, st, step, error),
        StepState::Retrying {
            attempts, error, ..
        } if *attempts >= MAX_ATTEMPTS => Action::Fail {
            phase,
            index,
            error: format!("gave up after {attempts} attempts: {error}"),
        },
        StepState::Pending | StepState::Retrying { .. } | StepState::Running { .. } => {
            // What serves is kept healthy first, whatever step the operation is at.
            if let Some(repair) = repair_during(name, spec, observed, op, st) {
                return repair;
            }
            match state {
                StepState::Running { since, .. } => running(
                    name,
                    spec,
                    observed,
                    journal,
                    op,
                    (phase, index, step),
                    *since,
                    now,
                ),
                _ => next_step(spec, journal, st, (phase, index, step), now),
            }
        }
        StepState::Succeeded { .. } => unreachable!("the cursor is never on a succeeded step"),
    }
}

/// Whether a forward step that failed for good fails the rollout (and rolls it back).
/// RetireOld and Prune come after the candidate was verified and serves: a failure to
/// stop the old revision (drift repair stops it later) or to prune is not worth undoing a
/// healthy rollout — and a rollback after RetireOld stopped the old replicas would switch
/// traffic back to stopped ones.
pub fn fails_the_rollout(step: Step) -> bool {
    !matches!(step, Step::RetireOld | Step::Prune)
}

/// The step at the cursor failed for good: roll back, or stop for an operator.
fn after_failure(
    spec: &EnvironmentSpec,
    op: &Operation,
    st: &Status,
    step: Step,
    error: &str,
) -> Action {
    let what = format!("{} failed: {error}", step.name());
    match st.phase {
        Phase::Forward if !fails_the_rollout(step) => Action::Finish(Outcome::Succeeded),
        Phase::Forward if spec.rollback.automatic => Action::BeginRollback {
            reason: what,
            steps: rollback_steps(spec, op, st),
        },
        Phase::Forward => Action::Finish(Outcome::Failed {
            reason: format!("{what}; automatic rollback is off (berthctl rollout undo)"),
        }),
        Phase::Rollback => Action::Finish(Outcome::Failed {
            reason: format!(
                "rollback {what} (rolling back because {})",
                st.rollback_reason.clone().unwrap_or_default()
            ),
        }),
    }
}

/// The step at the cursor has not started (or is to be tried again): run it, unless
/// rollouts are paused or the old revision is still draining.
fn next_step(
    spec: &EnvironmentSpec,
    journal: &Journal,
    st: &Status,
    (phase, index, step): (Phase, usize, Step),
    now: Millis,
) -> Action {
    if journal.paused && phase == Phase::Forward {
        return Action::Wait {
            recheck: RESYNC,
            message: format!("paused before {}", step.name()),
        };
    }
    if step == Step::RetireOld {
        if let Some(switched) = st.succeeded_at(Step::SwitchTraffic) {
            let at = switched + millis(spec.strategy.drain_for.0);
            if now < at {
                return Action::Wait {
                    recheck: Duration::from_millis(at - now),
                    message: "draining the old revision".into(),
                };
            }
        }
    }
    Action::Run { phase, index, step }
}

#[allow(clippy::too_many_arguments)]
fn running(
    name: &str,
    spec: &EnvironmentSpec,
    observed: &Observed,
    journal: &Journal,
    op: &Operation,
    (phase, index, step): (Phase, usize, Step),
    since: Millis,
    now: Millis,
) -> Action {
    let elapsed = now.saturating_sub(since);
    match step {
        Step::AwaitApproval => {
            let target = journal
                .revisions
                .iter()
                .find(|(r, _)| *r == op.to)
                .map(|(_, h)| h);
            if target.is_some() && journal.approved_hash.as_ref() == target {
                Action::Complete {
                    phase,
                    index,
                    output: StepOutput::Note("approved".into()),
                }
            } else if spec.approval != berth_api::environment::Approval::Required {
                Action::Complete {
                    phase,
                    index,
                    output: StepOutput::Note(
                        "released: the manifest no longer requires approval".into(),
                    ),
                }
            } else {
                Action::Wait {
                    recheck: RESYNC,
                    message: format!("waiting for approval: berthctl approve {name}"),
                }
            }
        }
        Step::WaitReady | Step::WaitOldReady => {
            let rev = if step == Step::WaitReady {
                op.to
            } else {
                op.from.unwrap_or(op.to)
            };
            let replicas: Vec<&(ContainerInfo, Health)> = (0..spec.replicas)
                .filter_map(|i| {
                    let n = replica_name(name, rev, i);
                    observed.containers.iter().find(|(c, _)| c.name == n)
                })
                .collect();
            if let Some((c, h)) = replicas
                .iter()
                .find(|(c, _)| matches!(c.state, ContainerState::Exited(_)))
            {
                let ContainerState::Exited(code) = c.state else {
                    unreachable!()
                };
                return Action::Fail {
                    phase,
                    index,
                    error: format!(
                        "replica {} exited with code {code} before it was ready {}",
                        c.name,
                        last(h)
                    ),
                };
            }
            let ready = replicas
                .iter()
                .filter(|(c, h)| is_ready(spec, c, h))
                .count();
            if ready == spec.replicas as usize {
                return Action::Complete {
                    phase,
                    index,
                    output: StepOutput::Note(format!(
                        "{ready} of {} replicas ready",
                        spec.replicas
                    )),
                };
            }
            if elapsed > millis(spec.strategy.progress_deadline.0) {
                let output = replicas
                    .iter()
                    .find(|(c, h)| !is_ready(spec, c, h))
                    .map(|(_, h)| last(h))
                    .unwrap_or_default();
                return Action::Fail {
                    phase,
                    index,
                    error: format!(
                        "{ready} of {} replicas ready after the progress deadline of {} {output}",
                        spec.replicas, spec.strategy.progress_deadline
                    ),
                };
            }
            Action::Wait {
                recheck: probe_interval(spec),
                message: format!(
                    "{ready} of {} replicas of revision {rev} ready",
                    spec.replicas
                ),
            }
        }
        Step::Verify => {
            let bad = (0..spec.replicas).find_map(|i| {
                let n = replica_name(name, op.to, i);
                match observed.containers.iter().find(|(c, _)| c.name == n) {
                    None => Some(format!("replica {n} disappeared")),
                    Some((c, _)) if c.state != ContainerState::Running => {
                        Some(format!("replica {n} stopped ({:?})", c.state))
                    }
                    Some((_, h)) if h.live == Some(false) => {
                        Some(format!("replica {n} failed its liveness probe {}", last(h)))
                    }
                    Some((_, h)) if h.ready == Some(false) => {
                        Some(format!("replica {n} stopped being ready {}", last(h)))
                    }
                    Some(_) => None,
                }
            });
            if let Some(error) = bad {
                return Action::Fail {
                    phase,
                    index,
                    error: format!("during verification: {error}"),
                };
            }
            let soak = millis(spec.strategy.verify_for.0);
            if elapsed >= soak {
                Action::Complete {
                    phase,
                    index,
                    output: StepOutput::None,
                }
            } else {
                Action::Wait {
                    recheck: Duration::from_millis((soak - elapsed).min(1000)),
                    message: format!(
                        "verifying revision {} ({}s of {})",
                        op.to,
                        elapsed / 1000,
                        spec.strategy.verify_for
                    ),
                }
            }
        }
        // Every other step is an action: re-running it is safe (it observes first), and
        // is how a step interrupted by a crash is finished.
        _ => Action::Run { phase, index, step },
    }
}

fn last(h: &Health) -> String {
    if h.last_output.is_empty() {
        String::new()
    } else {
        format!("(last probe: {})", h.last_output)
    }
}

#[cfg(test)]
mod tests;
