//! A status file per environment (`<state>/status/<env>.json`), rewritten after each
//! reconcile, so `berthctl get` and `describe` can read where things stand while berthd
//! holds the journal's lock (until the HTTP API replaces this).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::op::{Operation, Outcome, StepState};
use crate::store::{BackupRecord, EnvState, EventRecord, Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvStatus {
    pub name: String,
    pub state: EnvState,
    /// The active operation, or the last one.
    pub operation: Option<OpStatus>,
    pub revisions: Vec<RevisionLine>,
    pub backups: Vec<BackupRecord>,
    pub events: Vec<EventRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevisionLine {
    pub revision: u64,
    pub image: String,
    /// `repo@sha256:…`: what the revision's containers run, once pulled.
    #[serde(default)]
    pub repo_digest: Option<String>,
    pub template_hash: String,
    pub commit: Option<String>,
    pub created_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpStatus {
    pub id: String,
    pub from: Option<u64>,
    pub to: u64,
    pub reason: String,
    pub phase: String,
    pub outcome: Option<Outcome>,
    pub rollback_reason: Option<String>,
    /// `(step, state, detail)` of the steps of the current phase, then the forward steps
    /// when rolling back.
    pub steps: Vec<StepLine>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLine {
    pub step: String,
    pub state: String,
    pub detail: String,
}

fn step_lines(steps: &[(crate::op::Step, StepState)]) -> Vec<StepLine> {
    steps
        .iter()
        .map(|(s, st)| {
            let (state, detail) = match st {
                StepState::Pending => ("Pending", String::new()),
                StepState::Running { attempts, .. } => ("Running", format!("attempt {attempts}")),
                StepState::Succeeded { output, .. } => ("Succeeded", format!("{output:?}")),
                StepState::Retrying {
                    attempts, error, ..
                } => ("Retrying", format!("after {attempts} attempts: {error}")),
                StepState::Failed { error, .. } => ("Failed", error.clone()),
            };
            StepLine {
                step: s.name().to_owned(),
                state: state.to_owned(),
                detail,
            }
        })
        .collect()
}

fn op_status(op: &Operation) -> Option<OpStatus> {
    let st = op.status().ok()?;
    let mut steps = step_lines(&st.steps);
    steps.extend(step_lines(&st.forward));
    Some(OpStatus {
        id: op.id.clone(),
        from: op.from,
        to: op.to,
        reason: op.reason.clone(),
        phase: format!("{:?}", st.phase),
        outcome: st.outcome.clone(),
        rollback_reason: st.rollback_reason.clone(),
        steps,
    })
}

pub fn status_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("status")
}

pub fn collect(store: &Store, env: &str) -> Result<EnvStatus, StoreError> {
    let state = store.env_state(env)?;
    let op = match store.active_operation(env)? {
        Some(op) => Some(op),
        None => store.operations(env, 1)?.into_iter().next(),
    };
    let revisions = store
        .revisions(env)?
        .into_iter()
        .map(|r| RevisionLine {
            revision: r.revision,
            image: r.template.image.clone(),
            repo_digest: r.repo_digest,
            template_hash: r.template_hash,
            commit: r.commit,
            created_at: r.created_at,
        })
        .collect();
    let events = store.events(None, Some(env), 20)?;
    Ok(EnvStatus {
        name: env.to_owned(),
        state,
        operation: op.as_ref().and_then(op_status),
        revisions,
        backups: store.backups(env)?,
        events,
    })
}

/// Writes the environment's status file atomically (temporary file, rename).
pub fn write(store: &Store, env: &str) -> std::io::Result<()> {
    let status = collect(store, env).map_err(std::io::Error::other)?;
    let dir = status_dir(store.dir());
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{env}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&status)?)?;
    std::fs::rename(tmp, dir.join(format!("{env}.json")))
}

/// Reads every status file under a state directory.
pub fn read_all(state_dir: &Path) -> std::io::Result<Vec<EnvStatus>> {
    let mut out = Vec::new();
    let dir = status_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) == Some("json")
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            let bytes = std::fs::read(&p)?;
            out.push(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?);
        }
    }
    out.sort_by(|a: &EnvStatus, b| a.name.cmp(&b.name));
    Ok(out)
}
