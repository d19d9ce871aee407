//! The operator's verbs. Each one checks that it makes sense now (409 otherwise, saying
//! why), writes the wish into the environment's journal state, records an event and
//! wakes the loop; the pure planner turns the wish into steps (docs/design.md,
//! "Operator verbs"). None of them touches a host.

use crate::model::Template;
use crate::op::{Operation, Phase, Step};
use crate::reconcile::Controller;
use crate::store::{EnvState, EventKind, PinRecord};

use super::types::{ActionReply, ApproveRequest, UndoRequest};
use super::ApiError;

fn reply(env: &str, message: String, op: Option<&Operation>) -> ActionReply {
    ActionReply {
        environment: env.to_owned(),
        message,
        operation: op.map(|o| o.id.clone()),
    }
}

/// The environment's state and active operation; 404 for an environment berthd does not
/// know (neither desired nor in the journal).
fn load(ctl: &Controller, env: &str) -> Result<(EnvState, Option<Operation>), ApiError> {
    super::routes::known(ctl, env)?;
    Ok((
        ctl.store().env_state(env)?,
        ctl.store().active_operation(env)?,
    ))
}

fn done(ctl: &Controller, env: &str, reason: &str, message: &str, op: Option<&Operation>) {
    ctl.event(
        env,
        EventKind::Normal,
        reason,
        message.to_owned(),
        op.map(|o| o.id.clone()),
    );
    ctl.enqueue(env);
}

/// `approve`: releases the rollout waiting for approval (its target revision's template).
/// Right after an `apply`, before the loop has begun that rollout, the desired template
/// is approved ahead, so `apply` then `approve` never races the loop.
pub fn approve(ctl: &Controller, env: &str, req: ApproveRequest) -> Result<ActionReply, ApiError> {
    let (state, active) = load(ctl, env)?;
    let Some(op) = active.filter(waits_for_approval) else {
        return approve_ahead(ctl, env, &state, req);
    };
    if let Some(rev) = req.revision.filter(|r| *r != op.to) {
        return Err(ApiError::conflict(format!(
            "{env}: the rollout waiting for approval is to revision {}, not {rev}",
            op.to
        ))
        .at("revision"));
    }
    let hash = ctl
        .store()
        .revision(env, op.to)?
        .map(|r| r.template_hash)
        .ok_or_else(|| ApiError::internal(format!("revision {} has no record", op.to)))?;
    ctl.store()
        .update_env_state(env, |s| s.approved_hash = Some(hash.clone()))?;
    let message = format!("approved revision {}", op.to);
    done(ctl, env, "Approved", &message, Some(&op));
    Ok(reply(env, message, Some(&op)))
}

/// Approves the desired template before its rollout has begun, when it is not serving and
/// needs approval; refused otherwise (nothing to approve).
fn approve_ahead(
    ctl: &Controller,
    env: &str,
    state: &EnvState,
    req: ApproveRequest,
) -> Result<ActionReply, ApiError> {
    let nothing = || ApiError::conflict(format!("{env}: no rollout is waiting for approval"));
    let snapshot = ctl.snapshot();
    let spec = &snapshot
        .manifests
        .environments
        .get(env)
        .ok_or_else(nothing)?
        .spec;
    if spec.approval != berth_api::environment::Approval::Required {
        return Err(nothing());
    }
    let hash = Template::of(spec).hash();
    let revisions = ctl.store().revisions(env)?;
    let serving = state
        .current
        .and_then(|c| revisions.iter().find(|r| r.revision == c))
        .map(|r| r.template_hash.as_str());
    if serving == Some(hash.as_str()) {
        return Err(nothing());
    }
    let known = revisions
        .iter()
        .find(|r| r.template_hash == hash)
        .map(|r| r.revision);
    if let Some(rev) = req.revision.filter(|r| Some(*r) != known) {
        return Err(ApiError::conflict(format!(
            "{env}: the rollout about to begin is of {} ({}), not revision {rev}",
            spec.image,
            known.map_or("a new revision".into(), |k| format!("revision {k}"))
        ))
        .at("revision"));
    }
    ctl.store()
        .update_env_state(env, |s| s.approved_hash = Some(hash.clone()))?;
    let message = format!("approved the rollout of {} (about to begin)", spec.image);
    done(ctl, env, "Approved", &message, None);
    Ok(reply(env, message, None))
}

fn waits_for_approval(op: &Operation) -> bool {
    op.status().ok().is_some_and(|st| {
        st.phase == Phase::Forward
            && st.outcome.is_none()
            && matches!(st.cursor(), Some((_, Step::AwaitApproval, _)))
    })
}

/// `rollout pause`: no step starts and no operation begins until `resume`. A step under
/// way finishes (the pause is at a step boundary); nothing is held but the flag.
pub fn pause(ctl: &Controller, env: &str) -> Result<ActionReply, ApiError> {
    let (state, active) = load(ctl, env)?;
    if state.paused {
        return Ok(reply(env, "already paused".into(), active.as_ref()));
    }
    ctl.store().update_env_state(env, |s| s.paused = true)?;
    let message = match &active {
        Some(op) => format!(
            "paused: the rollout to revision {} stops at the next step boundary",
            op.to
        ),
        None => "paused: no rollout begins until resumed".to_owned(),
    };
    done(ctl, env, "Paused", &message, active.as_ref());
    Ok(reply(env, message, active.as_ref()))
}

pub fn resume(ctl: &Controller, env: &str) -> Result<ActionReply, ApiError> {
    let (state, active) = load(ctl, env)?;
    if !state.paused {
        return Ok(reply(env, "not paused".into(), active.as_ref()));
    }
    ctl.store().update_env_state(env, |s| s.paused = false)?;
    let message = "resumed".to_owned();
    done(ctl, env, "Resumed", &message, active.as_ref());
    Ok(reply(env, message, active.as_ref()))
}

/// `rollout retry`: forgets that the current template failed, so it is rolled out again
/// (after the cause was fixed outside the spec).
pub fn retry(ctl: &Controller, env: &str) -> Result<ActionReply, ApiError> {
    let (state, active) = load(ctl, env)?;
    if let Some(op) = &active {
        return Err(ApiError::conflict(format!(
            "{env}: the operation to revision {} is under way",
            op.to
        )));
    }
    let Some(failed) = state.failed else {
        return Err(ApiError::conflict(format!(
            "{env}: no failed rollout to retry"
        )));
    };
    ctl.store().update_env_state(env, |s| s.failed = None)?;
    let message = format!(
        "retrying template {} (it failed: {})",
        failed.template_hash, failed.reason
    );
    done(ctl, env, "RetryRequested", &message, None);
    Ok(reply(env, message, None))
}

/// `rollout abort`: the active rollout rolls back now, at the planner's next look.
pub fn abort(ctl: &Controller, env: &str) -> Result<ActionReply, ApiError> {
    let (_, active) = load(ctl, env)?;
    let Some(op) = active else {
        return Err(ApiError::conflict(format!(
            "{env}: no rollout is under way"
        )));
    };
    let rolling_back = op.status().is_ok_and(|st| st.phase == Phase::Rollback);
    if rolling_back {
        return Err(ApiError::conflict(format!(
            "{env}: the rollout to revision {} is already rolling back",
            op.to
        )));
    }
    ctl.store()
        .update_env_state(env, |s| s.abort_op = Some(op.id.clone()))?;
    let message = format!("aborting the rollout to revision {}: rolling back", op.to);
    done(ctl, env, "AbortRequested", &message, Some(&op));
    Ok(reply(env, message, Some(&op)))
}

/// `rollout undo`: goes back to an earlier revision (the previous one by default) and
/// holds there while the manifest asks for what it asks now. Needs no approval.
pub fn undo(ctl: &Controller, env: &str, req: UndoRequest) -> Result<ActionReply, ApiError> {
    let (state, active) = load(ctl, env)?;
    if let Some(op) = &active {
        return Err(ApiError::conflict(format!(
            "{env}: the operation to revision {} is under way; `berthctl rollout abort {env}` rolls it back",
            op.to
        )));
    }
    let snapshot = ctl.snapshot();
    let Some(resource) = snapshot.manifests.environments.get(env) else {
        return Err(ApiError::conflict(format!(
            "{env}: not in the desired state; nothing reconciles it"
        )));
    };
    let Some(current) = state.current else {
        return Err(ApiError::conflict(format!(
            "{env}: nothing is deployed yet"
        )));
    };
    let revisions = ctl.store().revisions(env)?;
    let to = match req.to_revision {
        Some(r) => r,
        None => revisions
            .iter()
            .map(|r| r.revision)
            .filter(|r| *r < current)
            .max()
            .ok_or_else(|| {
                ApiError::conflict(format!("{env}: no revision before {current} to go back to"))
            })?,
    };
    if !revisions.iter().any(|r| r.revision == to) {
        let known: Vec<String> = revisions.iter().map(|r| r.revision.to_string()).collect();
        return Err(ApiError::not_found(format!(
            "{env}: no revision {to} (known: {})",
            known.join(", ")
        ))
        .at("toRevision"));
    }
    if to == current {
        return Err(
            ApiError::conflict(format!("{env}: revision {to} is already serving")).at("toRevision"),
        );
    }
    let asked_hash = Template::of(&resource.spec).hash();
    let at = crate::reconcile::now_millis();
    ctl.store().update_env_state(env, |s| {
        s.pin = Some(PinRecord {
            revision: to,
            asked_hash: asked_hash.clone(),
            at,
        });
        // Going back to a template that failed once is the operator's explicit choice.
        if s.failed.is_some() {
            s.failed = None;
        }
    })?;
    let message = format!(
        "undo to revision {to}: held there until the spec changes (from revision {current})"
    );
    done(ctl, env, "UndoRequested", &message, None);
    Ok(reply(env, message, None))
}
