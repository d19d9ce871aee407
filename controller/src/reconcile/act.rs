//! Performing what the planner decided: journal first, then the effect, then the record
//! of how it went — and events for people.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_api::environment::EnvironmentSpec;
use berth_api::HostSpec;

use crate::exec::steps::{self, Ctx, StepResult};
use crate::exec::ExecError;
use crate::model::Template;
use crate::op::{Entry, Event, Millis, OpKind, Operation, Outcome, StepOutput, StepState};
use crate::plan::{self, Action, Journal, Repair};
use crate::redact::Redactor;
use crate::store::{EventKind, FailedTemplate, RevisionRecord};

use super::observe::observe;
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

/// Reconciles `env` until it has to wait; returns when to look again.
pub(super) async fn reconcile_env(
    ctl: &Arc<Controller>,
    conn: &Connected,
    env: &str,
    spec: &EnvironmentSpec,
    host_spec: &HostSpec,
    commit: Option<&str>,
) -> Result<Duration, ReconcileError> {
    let store = &ctl.store;
    let desired_template = Template::of(spec);
    let desired_hash = desired_template.hash();
    // Every revision's env and env files: an operation may run an older revision's.
    let known = store.revisions(env)?;
    let redactor = Arc::new(
        Redactor::load(
            conn.host.as_ref(),
            known.iter().map(|r| &r.template).chain([&desired_template]),
        )
        .await?,
    );
    for _ in 0..BURST {
        let observed = observe(conn, env, spec, &redactor).await?;
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
            active: active.clone(),
        };
        let now = now_millis();
        let action = plan::plan(env, spec, &desired_hash, &observed, &journal, now);
        tracing::debug!(env, ?action, "planned");

        // The templates steps work from: an operation keeps to the revision it began
        // with, even if the manifest changes again meanwhile.
        let template_of = |rev| {
            records
                .iter()
                .find(|r| r.revision == rev)
                .map(|r| &r.template)
        };
        let op_spec: Option<EnvironmentSpec> = active
            .as_ref()
            .and_then(|op| records.iter().find(|r| r.revision == op.to))
            .and_then(|r| serde_json::from_value(r.spec.clone()).ok());
        let status = active.as_ref().and_then(|op| op.status().ok());
        let cx = Ctx {
            host: conn.host.as_ref(),
            host_spec,
            store,
            env,
            spec: op_spec.as_ref().unwrap_or(spec),
            template: match (&active, journal.current.as_ref()) {
                (Some(op), _) => template_of(op.to).unwrap_or(&desired_template),
                (None, Some((cur, _))) => template_of(*cur).unwrap_or(&desired_template),
                (None, None) => &desired_template,
            },
            old_template: active.as_ref().and_then(|op| op.from).and_then(template_of),
            op: active.as_ref(),
            status: status.as_ref(),
            now,
            redactor: &redactor,
        };

        match action {
            Action::Idle { recheck, message } | Action::Wait { recheck, message } => {
                if state.message != message || state.commit.as_deref() != commit {
                    store.update_env_state(env, |s| {
                        s.message = message.clone();
                        s.commit = commit.map(str::to_owned);
                        s.updated_at = now;
                    })?;
                }
                return Ok(recheck);
            }
            Action::Broken { message } => {
                ctl.event(
                    env,
                    EventKind::Warning,
                    "JournalBroken",
                    message.clone(),
                    active.map(|o| o.id),
                );
                store.update_env_state(env, |s| {
                    s.message = format!("needs an operator: {message}")
                })?;
                return Ok(plan::RESYNC);
            }
            Action::Begin(new) => {
                if new.new_revision {
                    store.put_revision(&RevisionRecord {
                        env: env.to_owned(),
                        revision: new.to,
                        template_hash: new.template_hash.clone(),
                        template: desired_template.clone(),
                        spec: serde_json::to_value(spec).unwrap_or_default(),
                        // Filled in when its PullImage step succeeds.
                        image_id: None,
                        repo_digest: None,
                        commit: commit.map(str::to_owned),
                        created_at: now,
                    })?;
                }
                let op = Operation {
                    id: ulid::Ulid::new().to_string(),
                    env: env.to_owned(),
                    kind: OpKind::Rollout,
                    from: new.from,
                    to: new.to,
                    reason: new.reason.clone(),
                    created_at: now,
                    steps: new.steps.clone(),
                    log: Vec::new(),
                };
                store.begin(&op)?;
                let steps: Vec<&str> = new.steps.iter().map(|s| s.name()).collect();
                ctl.event(
                    env,
                    EventKind::Normal,
                    "RolloutStarted",
                    format!("{}: {}", new.reason, steps.join(" → ")),
                    Some(op.id),
                );
                // Back through the queue at once: the status file shows the new rollout
                // before its first step (a pull may take a while) begins.
                return Ok(Duration::ZERO);
            }
            Action::Run { phase, index, step } => {
                let op = active
                    .as_ref()
                    .ok_or_else(|| config(env, "a step to run without an operation"))?;
                let already = matches!(
                    status
                        .as_ref()
                        .and_then(|s| s.cursor())
                        .map(|c| c.2.clone()),
                    Some(StepState::Running { .. })
                );
                if !already {
                    // Durable before the effect: a crash from here on re-runs the step,
                    // which observes before it acts.
                    store.append(&op.id, ev(now, Entry::Started { phase, index }))?;
                }
                match steps::run_step(&cx, step).await {
                    Ok(StepResult::Done(output)) => {
                        announce(ctl, &redactor, env, &op.id, &output);
                        let pulled = match &output {
                            StepOutput::Image { id, repo_digest } => {
                                Some((id.clone(), repo_digest.clone()))
                            }
                            _ => None,
                        };
                        store.append(
                            &op.id,
                            ev(
                                now_millis(),
                                Entry::Succeeded {
                                    phase,
                                    index,
                                    output,
                                },
                            ),
                        )?;
                        // What was pulled is what the revision runs from now on, also
                        // after this operation (drift repairs, an undo to it).
                        if let Some((id, digest)) = pulled {
                            store.record_pulled_image(env, op.to, &id, digest.as_deref())?;
                        }
                    }
                    Ok(StepResult::Pending { recheck, message }) => {
                        if state.message != message {
                            store.update_env_state(env, |s| s.message = message.clone())?;
                        }
                        return Ok(recheck);
                    }
                    Err(e) => {
                        let retryable = e.is_retryable();
                        let message = redactor.redact(&e.to_string());
                        store.append(
                            &op.id,
                            ev(
                                now_millis(),
                                Entry::Failed {
                                    phase,
                                    index,
                                    error: message.clone(),
                                    retryable,
                                },
                            ),
                        )?;
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
                    }
                }
            }
            Action::Complete {
                phase,
                index,
                output,
            } => {
                let op = active
                    .as_ref()
                    .ok_or_else(|| config(env, "a step to complete without an operation"))?;
                store.append(
                    &op.id,
                    ev(
                        now,
                        Entry::Succeeded {
                            phase,
                            index,
                            output,
                        },
                    ),
                )?;
            }
            Action::Fail {
                phase,
                index,
                error,
            } => {
                let error = redactor.redact(&error);
                let op = active
                    .as_ref()
                    .ok_or_else(|| config(env, "a step to fail without an operation"))?;
                let step = op
                    .status()
                    .ok()
                    .and_then(|s| s.cursor().map(|c| c.1.name()))
                    .unwrap_or("step");
                ctl.event(
                    env,
                    EventKind::Warning,
                    "StepFailed",
                    format!("{step}: {error}"),
                    Some(op.id.clone()),
                );
                store.append(
                    &op.id,
                    ev(
                        now,
                        Entry::Failed {
                            phase,
                            index,
                            error,
                            retryable: false,
                        },
                    ),
                )?;
            }
            Action::BeginRollback { reason, steps } => {
                let op = active
                    .as_ref()
                    .ok_or_else(|| config(env, "a rollback without an operation"))?;
                let names: Vec<&str> = steps.iter().map(|s| s.name()).collect();
                ctl.event(
                    env,
                    EventKind::Warning,
                    "RollbackStarted",
                    format!("{reason}; undoing with {}", names.join(" → ")),
                    Some(op.id.clone()),
                );
                store.append(&op.id, ev(now, Entry::RollbackBegan { reason, steps }))?;
            }
            Action::Finish(outcome) => {
                let op = active
                    .as_ref()
                    .ok_or_else(|| config(env, "nothing to finish"))?;
                store.append(
                    &op.id,
                    ev(
                        now,
                        Entry::Finished {
                            outcome: outcome.clone(),
                        },
                    ),
                )?;
                let to_hash = records
                    .iter()
                    .find(|r| r.revision == op.to)
                    .map(|r| r.template_hash.clone())
                    .unwrap_or_default();
                let (reason, message) = match &outcome {
                    Outcome::Succeeded => {
                        ("RolloutSucceeded", format!("revision {} is serving", op.to))
                    }
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
                store.update_env_state(env, |s| {
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
                    s.commit = commit.map(str::to_owned);
                    s.updated_at = now;
                })?;
                ctl.event(
                    env,
                    event_kind(&outcome),
                    reason,
                    message,
                    Some(op.id.clone()),
                );
            }
            Action::Repair(r) => {
                let (reason, why) = match &r {
                    Repair::StartReplica { why, .. } | Repair::ReplaceReplica { why, .. } => {
                        ("ReplicaRepaired", why)
                    }
                    Repair::StopContainer { why, .. } | Repair::RemoveContainer { why, .. } => {
                        ("ContainerCleaned", why)
                    }
                    Repair::SyncTraffic { why, .. } => ("TrafficRepaired", why),
                };
                steps::repair(&cx, &r).await?;
                ctl.event(env, EventKind::Normal, reason, why.clone(), None);
            }
        }
    }
    Ok(Duration::ZERO)
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
