//! Performing what the planner decided: journal first, then the effect, then the record
//! of how it went — and events for people.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::environment::EnvironmentSpec;
use berth_api::HostSpec;

use crate::crash::{self, Moment};
use crate::exec::steps::{self, Ctx, StepResult};
use crate::exec::{traffic, ExecError};
use crate::model::{Revision, Template};
use crate::op::{
    Entry, Event, Millis, OpKind, Operation, Outcome, Phase, Status, Step, StepOutput, StepState,
};
use crate::plan::{self, Action, Gate, Journal, NewOperation, Repair};
use crate::redact::Redactor;
use crate::store::{EnvState, EventKind, FailedTemplate, RevisionRecord, Store};

use super::observe::observe;
use super::preflight;
use super::{Connected, Controller, ReconcileError};

/// Actions taken back to back in one reconcile before yielding to other environments.
const BURST: usize = 16;

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn event_kind(outcome: &Outcome) -> EventKind {
    match outcome {
        Outcome::Succeeded | Outcome::Superseded => EventKind::Normal,
        Outcome::RolledBack { .. } | Outcome::Failed { .. } => EventKind::Warning,
    }
}

/// What the journal says about one environment, read once per action.
struct View {
    state: EnvState,
    active: Option<Operation>,
    status: Option<Status>,
    records: Vec<RevisionRecord>,
    journal: Journal,
}

impl View {
    fn load(store: &Store, env: &str, manifest: &EnvironmentSpec) -> Result<View, ReconcileError> {
        let state = store.env_state(env)?;
        let active = store.active_operation(env)?;
        let records = store.revisions(env)?;
        let journal = Journal {
            current: state.current.and_then(|r| {
                records
                    .iter()
                    .find(|x| x.revision == r)
                    .map(|x| (r, x.template_hash.clone()))
            }),
            revisions: records
                .iter()
                .map(|r| (r.revision, r.template_hash.clone()))
                .collect(),
            next_revision: store.next_revision(env)?,
            failed_hash: state
                .failed
                .as_ref()
                .map(|f| (f.template_hash.clone(), f.reason.clone())),
            paused: state.paused,
            approved_hash: state.approved_hash.clone(),
            abort: active
                .as_ref()
                .is_some_and(|op| state.abort_op.as_deref() == Some(op.id.as_str())),
            pin: state.pin.as_ref().and_then(|p| {
                let rec = records.iter().find(|r| r.revision == p.revision)?;
                Some(plan::Pin {
                    revision: p.revision,
                    hash: rec.template_hash.clone(),
                    asked_hash: p.asked_hash.clone(),
                    spec: serde_json::from_value(rec.spec.clone())
                        .unwrap_or_else(|_| manifest.clone()),
                })
            }),
            active: active.clone(),
        };
        let status = active.as_ref().and_then(|op| op.status().ok());
        Ok(View {
            state,
            active,
            status,
            records,
            journal,
        })
    }

    fn template_of(&self, rev: Revision) -> Option<&Template> {
        self.records
            .iter()
            .find(|r| r.revision == rev)
            .map(|r| &r.template)
    }

    /// The spec that observing, planning and every step work from: the active
    /// operation's (its pinned spec with the manifest's live fields), else the manifest.
    fn spec(&self, manifest: &EnvironmentSpec) -> EnvironmentSpec {
        match &self.active {
            Some(op) => plan::operation_spec(manifest, op),
            None => manifest.clone(),
        }
    }

    /// The template steps create containers from: an operation keeps to the revision it
    /// began with; outside one, the current revision's.
    fn template<'a>(&'a self, desired: &'a Template) -> &'a Template {
        let rev = match (&self.active, self.journal.current.as_ref()) {
            (Some(op), _) => Some(op.to),
            (None, Some((cur, _))) => Some(*cur),
            (None, None) => None,
        };
        rev.and_then(|r| self.template_of(r)).unwrap_or(desired)
    }
}

/// The environment being reconciled, and what it is being reconciled against.
pub(super) struct Target<'a> {
    pub conn: &'a Connected,
    pub env: &'a str,
    /// The manifest's spec, as loaded now.
    pub manifest: &'a EnvironmentSpec,
    pub host_spec: &'a HostSpec,
    pub commit: Option<&'a str>,
}

/// Whether to go on with the next action, or stop and look again after a while.
type Next = Option<Duration>;

/// Reconciles `env` until it has to wait; returns when to look again.
pub(super) async fn reconcile_env(
    ctl: &Arc<Controller>,
    t: &Target<'_>,
) -> Result<Duration, ReconcileError> {
    let desired_template = Template::of(t.manifest);
    let desired_hash = desired_template.hash();
    // Every revision's env and env files: an operation may run an older revision's.
    let known = ctl.store.revisions(t.env)?;
    let redactor = Arc::new(
        Redactor::load(
            t.conn.host.as_ref(),
            known.iter().map(|r| &r.template).chain([&desired_template]),
        )
        .await?,
    );
    release_stale_pin(ctl, t.env, &desired_hash)?;
    prepare_switch(ctl, t).await;
    for _ in 0..BURST {
        let view = View::load(&ctl.store, t.env, t.manifest)?;
        let spec = view.spec(t.manifest);
        let observed = observe(t.conn, t.env, &spec, &redactor).await?;
        let now = now_millis();
        let action = plan::plan(
            t.env,
            t.manifest,
            &desired_hash,
            &observed,
            &view.journal,
            now,
        );
        tracing::debug!(env = t.env, ?action, "planned");
        let cx = Ctx {
            host: t.conn.host.as_ref(),
            host_spec: t.host_spec,
            store: &ctl.store,
            env: t.env,
            spec: &spec,
            template: view.template(&desired_template),
            old_template: view
                .active
                .as_ref()
                .and_then(|op| op.from)
                .and_then(|r| view.template_of(r)),
            op: view.active.as_ref(),
            status: view.status.as_ref(),
            now,
            redactor: &redactor,
        };
        let next = match action {
            Action::Idle { recheck, message } | Action::Wait { recheck, message } => {
                show(ctl, t, &view.state, &message, now)?;
                Some(recheck)
            }
            Action::Broken { message } => broken(ctl, t.env, &view, message)?,
            Action::Begin(new) => {
                begin(ctl, t, &view, &observed, &desired_template, new, &cx).await?
            }
            Action::Run { phase, index, step } => {
                run(ctl, t.env, &view, &cx, (phase, index, step)).await?
            }
            Action::Complete {
                phase,
                index,
                output,
            } => {
                let op = active(&view, t.env)?;
                let entry = Entry::Succeeded {
                    phase,
                    index,
                    output,
                };
                ctl.store.append(&op.id, ev(now, entry))?;
                None
            }
            Action::Fail {
                phase,
                index,
                error,
            } => {
                let error = redactor.redact(&error);
                fail(ctl, t.env, &view, (phase, index), error, now)?
            }
            Action::BeginRollback { reason, steps } => {
                let op = active(&view, t.env)?;
                let names: Vec<&str> = steps.iter().map(|s| s.name()).collect();
                ctl.event(
                    t.env,
                    EventKind::Warning,
                    "RollbackStarted",
                    format!("{reason}; undoing with {}", names.join(" → ")),
                    Some(op.id.clone()),
                );
                ctl.store
                    .append(&op.id, ev(now, Entry::RollbackBegan { reason, steps }))?;
                None
            }
            Action::Finish(outcome) => finish(ctl, t, &view, outcome, now)?,
            Action::Repair(r) => {
                repair(ctl, &view, &cx, &r).await?;
                None
            }
        };
        if let Some(recheck) = next {
            return Ok(recheck);
        }
    }
    Ok(Duration::ZERO)
}

/// An undo holds only while the manifest asks for what it asked then: once the template
/// changes, the pin goes (and an event says so), so a later revert cannot revive it.
fn release_stale_pin(
    ctl: &Controller,
    env: &str,
    desired_hash: &str,
) -> Result<(), ReconcileError> {
    let state = ctl.store.env_state(env)?;
    let Some(pin) = state.pin.filter(|p| p.asked_hash != desired_hash) else {
        return Ok(());
    };
    ctl.store.update_env_state(env, |s| s.pin = None)?;
    ctl.event(
        env,
        EventKind::Normal,
        "PinReleased",
        format!(
            "the spec changed: no longer held at revision {} (undo)",
            pin.revision
        ),
        None,
    );
    Ok(())
}

/// Gives nginx an upstream file to include before Berth's first `nginx -t` (docs/traffic.md).
/// A file that cannot be written stops nothing here: the switch step fails on it, saying
/// why, and drift repairs of the replicas go on meanwhile.
async fn prepare_switch(ctl: &Controller, t: &Target<'_>) {
    if let berth_api::environment::Traffic::Nginx(cfg) = &t.manifest.traffic {
        match traffic::ensure_upstream(t.conn.host.as_ref(), t.env, cfg).await {
            Ok(false) => {}
            Err(e) => tracing::debug!(env = t.env, "no empty upstream written: {e}"),
            Ok(true) => ctl.event(
                t.env,
                EventKind::Normal,
                "UpstreamCreated",
                format!(
                    "wrote {} with no server yet: nginx can include it now",
                    cfg.upstream_file
                ),
                None,
            ),
        }
    }
}

/// Shows `message` (and the manifests' commit) in the environment's status, if new.
fn show(
    ctl: &Controller,
    t: &Target<'_>,
    state: &EnvState,
    message: &str,
    now: Millis,
) -> Result<(), ReconcileError> {
    if state.message != message || state.commit.as_deref() != t.commit {
        ctl.store.update_env_state(t.env, |s| {
            s.message = message.to_owned();
            s.commit = t.commit.map(str::to_owned);
            s.updated_at = now;
        })?;
    }
    Ok(())
}

fn active<'a>(view: &'a View, env: &str) -> Result<&'a Operation, ReconcileError> {
    view.active
        .as_ref()
        .ok_or_else(|| config(env, "a step of an operation, with no active operation"))
}

fn broken(
    ctl: &Controller,
    env: &str,
    view: &View,
    message: String,
) -> Result<Next, ReconcileError> {
    ctl.event(
        env,
        EventKind::Warning,
        "JournalBroken",
        message.clone(),
        view.active.as_ref().map(|o| o.id.clone()),
    );
    ctl.store
        .update_env_state(env, |s| s.message = format!("needs an operator: {message}"))?;
    Ok(Some(plan::RESYNC))
}

/// How soon an environment waiting for its dependencies looks again.
const DEPENDENCY_RECHECK: Duration = Duration::from_secs(2);

/// Begins an operation once its preflight lets it: journaled (durably) before any side
/// effect. A refused or waiting operation leaves the environment exactly as it is, but
/// the revision that serves is still kept healthy.
async fn begin(
    ctl: &Arc<Controller>,
    t: &Target<'_>,
    view: &View,
    observed: &plan::Observed,
    desired_template: &Template,
    new: NewOperation,
    cx: &Ctx<'_>,
) -> Result<Next, ReconcileError> {
    let facts = preflight::gather(ctl, t, &new.steps).await;
    let gate = plan::preflight(t.manifest, &new.steps, &facts);
    let (message, recheck) = match &gate {
        Gate::Go => {
            return start(ctl, t, view, desired_template, new).map(|()| Some(Duration::ZERO))
        }
        Gate::Wait { message } => (message.clone(), DEPENDENCY_RECHECK),
        Gate::Refuse { reasons } => {
            let message = cx.redactor.redact(&format!(
                "not rolled out, nothing was changed: {}",
                reasons.join("; ")
            ));
            if view.state.message != message {
                ctl.event(
                    t.env,
                    EventKind::Warning,
                    "PreflightFailed",
                    message.clone(),
                    None,
                );
            }
            (message, plan::RESYNC)
        }
    };
    if let Some(Action::Repair(r)) =
        plan::repair_current(t.env, t.manifest, observed, &view.journal, &gate)
    {
        repair(ctl, view, cx, &r).await?;
        return Ok(None);
    }
    show(ctl, t, &view.state, &message, cx.now)?;
    Ok(Some(recheck))
}

/// Journals a new operation (and its revision, if new), pinning the manifest's spec.
fn start(
    ctl: &Controller,
    t: &Target<'_>,
    view: &View,
    desired_template: &Template,
    new: NewOperation,
) -> Result<(), ReconcileError> {
    let now = now_millis();
    // An undo runs its revision's recorded spec; a rollout the manifest's.
    let spec = match (&new.kind, &view.journal.pin) {
        (OpKind::Undo, Some(pin)) => serde_json::to_value(plan::undo_spec(&pin.spec)),
        _ => serde_json::to_value(t.manifest),
    }
    .unwrap_or_default();
    if new.new_revision {
        ctl.store.put_revision(&RevisionRecord {
            env: t.env.to_owned(),
            revision: new.to,
            template_hash: new.template_hash.clone(),
            template: desired_template.clone(),
            spec: spec.clone(),
            // Filled in when its PullImage step succeeds.
            image_id: None,
            repo_digest: None,
            commit: t.commit.map(str::to_owned),
            created_at: now,
        })?;
    }
    let op = Operation {
        id: ulid::Ulid::new().to_string(),
        env: t.env.to_owned(),
        kind: new.kind,
        from: new.from,
        to: new.to,
        reason: new.reason.clone(),
        created_at: now,
        steps: new.steps.clone(),
        log: Vec::new(),
        spec,
    };
    crash::operation("Begin:before-flush");
    ctl.store.begin(&op)?;
    crash::operation("Begin:after-flush");
    let steps: Vec<&str> = new.steps.iter().map(|s| s.name()).collect();
    let started = match new.kind {
        OpKind::Rollout => "RolloutStarted",
        OpKind::Undo => "UndoStarted",
    };
    ctl.event(
        t.env,
        EventKind::Normal,
        started,
        format!("{}: {}", new.reason, steps.join(" → ")),
        Some(op.id),
    );
    // Back through the queue at once: the status file shows the new rollout before its
    // first step (a pull may take a while) begins.
    Ok(())
}

/// Runs one step: `Started` is durable before the effect, the outcome after it.
async fn run(
    ctl: &Controller,
    env: &str,
    view: &View,
    cx: &Ctx<'_>,
    (phase, index, step): (Phase, usize, Step),
) -> Result<Next, ReconcileError> {
    let op = active(view, env)?;
    let already = matches!(
        view.status
            .as_ref()
            .and_then(|s| s.cursor())
            .map(|c| c.2.clone()),
        Some(StepState::Running { .. })
    );
    if !already {
        // Durable before the effect: a crash from here on re-runs the step, which
        // observes before it acts.
        crash::step(step, Moment::BeforeStartedFlush);
        ctl.store
            .append(&op.id, ev(cx.now, Entry::Started { phase, index }))?;
    }
    crash::step(step, Moment::BeforeEffect);
    match steps::run_step(cx, step).await {
        Ok(StepResult::Done(output)) => {
            crash::step(step, Moment::AfterEffect);
            announce(ctl, cx.redactor, env, &op.id, &output);
            let pulled = match &output {
                StepOutput::Image { id, repo_digest } => Some((id.clone(), repo_digest.clone())),
                _ => None,
            };
            let entry = Entry::Succeeded {
                phase,
                index,
                output,
            };
            ctl.store.append(&op.id, ev(now_millis(), entry))?;
            // What was pulled is what the revision runs from now on, also after this
            // operation (drift repairs, an undo to it).
            if let Some((id, digest)) = pulled {
                ctl.store
                    .record_pulled_image(env, op.to, &id, digest.as_deref())?;
            }
            crash::step(step, Moment::AfterSucceededFlush);
            Ok(None)
        }
        Ok(StepResult::Pending { recheck, message }) => {
            crash::step(step, Moment::Pending);
            if view.state.message != message {
                ctl.store
                    .update_env_state(env, |s| s.message = message.clone())?;
            }
            Ok(Some(recheck))
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let message = cx.redactor.redact(&e.to_string());
            let entry = Entry::Failed {
                phase,
                index,
                error: message.clone(),
                retryable,
            };
            ctl.store.append(&op.id, ev(now_millis(), entry))?;
            ctl.event(
                env,
                EventKind::Warning,
                "StepFailed",
                format!("{}: {message}", step.name()),
                Some(op.id.clone()),
            );
            if retryable {
                // Logged and shown as the environment's message: redacted too.
                return Err(ExecError::failed(step.name(), message, true).into());
            }
            Ok(None)
        }
    }
}

fn fail(
    ctl: &Controller,
    env: &str,
    view: &View,
    (phase, index): (Phase, usize),
    error: String,
    now: Millis,
) -> Result<Next, ReconcileError> {
    let op = active(view, env)?;
    let step = view
        .status
        .as_ref()
        .and_then(|s| s.cursor().map(|c| c.1.name()))
        .unwrap_or("step");
    ctl.event(
        env,
        EventKind::Warning,
        "StepFailed",
        format!("{step}: {error}"),
        Some(op.id.clone()),
    );
    let entry = Entry::Failed {
        phase,
        index,
        error,
        retryable: false,
    };
    ctl.store.append(&op.id, ev(now, entry))?;
    Ok(None)
}

/// Journals the outcome, and what it means for the environment's state.
fn finish(
    ctl: &Controller,
    t: &Target<'_>,
    view: &View,
    outcome: Outcome,
    now: Millis,
) -> Result<Next, ReconcileError> {
    let op = active(view, t.env)?;
    let to_hash = view
        .records
        .iter()
        .find(|r| r.revision == op.to)
        .map(|r| r.template_hash.clone())
        .unwrap_or_default();
    let (reason, message) = match &outcome {
        Outcome::Succeeded => ("RolloutSucceeded", format!("revision {} is serving", op.to)),
        Outcome::RolledBack { reason } => (
            "RolledBack",
            format!(
                "rolled back to revision {}: {reason}",
                op.from.map_or("none".into(), |r| r.to_string())
            ),
        ),
        Outcome::Failed { reason } => (
            "RolloutFailed",
            format!("rollout to revision {} failed: {reason}", op.to),
        ),
        Outcome::Superseded => (
            "RolloutSuperseded",
            format!("rollout to revision {} superseded", op.to),
        ),
    };
    ctl.store.update_env_state(t.env, |s| {
        // An approval is for one rollout: once it ends, the template needs a new one.
        if s.approved_hash.as_deref() == Some(to_hash.as_str()) {
            s.approved_hash = None;
        }
        match &outcome {
            Outcome::Succeeded => {
                s.current = Some(op.to);
                s.failed = None;
            }
            Outcome::RolledBack { reason } | Outcome::Failed { reason } => {
                s.failed = Some(FailedTemplate {
                    template_hash: to_hash.clone(),
                    reason: reason.clone(),
                    at: now,
                });
            }
            Outcome::Superseded => {}
        }
        s.message = message.clone();
        s.commit = t.commit.map(str::to_owned);
        s.updated_at = now;
    })?;
    // The environment's state first, then `Finished`: a crash between the two resumes the
    // unfinished operation, which finishes again (the state update above is idempotent).
    // The other order let a crash leave a finished operation with `current` not moved,
    // and the same revision was rolled out a second time (backup and migration again).
    let entry = Entry::Finished {
        outcome: outcome.clone(),
    };
    crash::operation("Finish:before-flush");
    ctl.store.append(&op.id, ev(now, entry))?;
    crash::operation("Finish:after-flush");
    ctl.event(
        t.env,
        event_kind(&outcome),
        reason,
        message,
        Some(op.id.clone()),
    );
    Ok(None)
}

/// Performs a drift repair, with the template of the revision it repairs (the one that
/// serves, or the candidate of the operation under way).
async fn repair(
    ctl: &Controller,
    view: &View,
    cx: &Ctx<'_>,
    r: &Repair,
) -> Result<(), ReconcileError> {
    let (reason, why) = match r {
        Repair::StartReplica { why, .. } | Repair::ReplaceReplica { why, .. } => {
            ("ReplicaRepaired", why)
        }
        Repair::StopContainer { why, .. } | Repair::RemoveContainer { why, .. } => {
            ("ContainerCleaned", why)
        }
        Repair::SyncTraffic { why, .. } => ("TrafficRepaired", why),
    };
    let template = match r {
        Repair::StartReplica { revision, .. } | Repair::ReplaceReplica { revision, .. } => {
            view.template_of(*revision).unwrap_or(cx.template)
        }
        _ => cx.template,
    };
    let cx = Ctx { template, ..*cx };
    steps::repair(&cx, r).await?;
    ctl.event(cx.env, EventKind::Normal, reason, why.clone(), None);
    Ok(())
}

/// What a step leaves that people want to see: a migration's output, a backup's file.
fn announce(ctl: &Controller, redactor: &Redactor, env: &str, op: &str, output: &StepOutput) {
    let (reason, message) = match output {
        StepOutput::Migration { log_tail, .. } => (
            "MigrationSucceeded",
            format!("migration output:\n{log_tail}"),
        ),
        StepOutput::Backup {
            path, size, sha256, ..
        } => (
            "BackupTaken",
            format!("{path} ({size} bytes, sha256 {sha256})"),
        ),
        _ => return,
    };
    let message = redactor.redact(&message);
    ctl.event(env, EventKind::Normal, reason, message, Some(op.to_owned()));
}

fn ev(at: Millis, entry: Entry) -> Event {
    Event { at, entry }
}

fn config(env: &str, message: &str) -> ReconcileError {
    ReconcileError::Config {
        env: env.to_owned(),
        message: message.to_owned(),
    }
}
