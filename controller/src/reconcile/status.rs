//! A status file per environment (`<state>/status/<env>.json`), rewritten after each
//! reconcile, so `berthctl get` and `describe` can read where things stand while berthd
//! holds the journal's lock (until the HTTP API replaces this).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::op::{Millis, Operation, Outcome, StepOutput, StepState};
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
    /// Who owns its desired state (served by the API; absent from status files).
    #[serde(default)]
    pub owner: Option<crate::api::types::Owner>,
    /// Whether the serving revision is what is desired (the manifest's template, or the
    /// revision an undo holds): served by the API, absent from status files.
    #[serde(default)]
    pub in_sync: Option<bool>,
    /// The template hash that is desired (the manifest's, or the held revision's).
    #[serde(default)]
    pub desired_hash: Option<String>,
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
    /// `Rollout` or `Undo`.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub created_at: Millis,
    pub from: Option<u64>,
    pub to: u64,
    pub reason: String,
    pub phase: String,
    pub outcome: Option<Outcome>,
    pub rollback_reason: Option<String>,
    /// The steps of the current phase, then the forward steps when rolling back.
    pub steps: Vec<StepLine>,
}

/// One step of an operation, as data: what `describe` words for humans and `-o json`
/// prints as fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StepLine {
    pub step: String,
    /// `Pending`, `Running`, `Succeeded`, `Retrying` or `Failed`.
    pub state: String,
    /// Attempts so far (`Running`, `Retrying`).
    pub attempts: Option<u32>,
    /// Since when it runs (`Running`, `Retrying`), or when it ended (`Succeeded`, `Failed`).
    pub at: Option<Millis>,
    /// What a succeeded step left (`None` when it leaves nothing).
    pub output: Option<StepOutput>,
    /// Why it failed (`Failed`), or why the last attempt did (`Retrying`).
    pub error: Option<String>,
}

impl StepLine {
    /// One line for humans: `attempt 2`, `pulled app@sha256:…`, the error.
    pub fn detail(&self) -> String {
        let attempts = self.attempts.unwrap_or(0);
        match (self.state.as_str(), &self.output, &self.error) {
            ("Running", _, _) => format!("attempt {attempts}"),
            ("Retrying", _, e) => format!(
                "after {attempts} attempts: {}",
                e.as_deref().unwrap_or_default()
            ),
            (_, _, Some(e)) => e.clone(),
            (_, Some(o), None) => output_detail(o),
            _ => String::new(),
        }
    }
}

fn output_detail(output: &StepOutput) -> String {
    match output {
        StepOutput::None => String::new(),
        StepOutput::Image { id, repo_digest } => {
            format!("pulled {}", repo_digest.as_deref().unwrap_or(id))
        }
        StepOutput::Backup { path, size, .. } => format!("{path} ({size} bytes)"),
        StepOutput::Migration {
            exit_code,
            log_tail,
        } => {
            let last = log_tail.lines().rev().find(|l| !l.trim().is_empty());
            match last {
                Some(l) => format!("exit {exit_code}: {}", l.trim()),
                None => format!("exit {exit_code}"),
            }
        }
        StepOutput::Note(n) => n.clone(),
    }
}

fn step_lines(steps: &[(crate::op::Step, StepState)]) -> Vec<StepLine> {
    steps
        .iter()
        .map(|(s, st)| {
            let line = StepLine {
                step: s.name().to_owned(),
                ..StepLine::default()
            };
            match st {
                StepState::Pending => StepLine {
                    state: "Pending".into(),
                    ..line
                },
                StepState::Running { since, attempts } => StepLine {
                    state: "Running".into(),
                    attempts: Some(*attempts),
                    at: Some(*since),
                    ..line
                },
                StepState::Succeeded { at, output } => StepLine {
                    state: "Succeeded".into(),
                    at: Some(*at),
                    output: (*output != StepOutput::None).then(|| output.clone()),
                    ..line
                },
                StepState::Retrying {
                    since,
                    attempts,
                    error,
                } => StepLine {
                    state: "Retrying".into(),
                    attempts: Some(*attempts),
                    at: Some(*since),
                    error: Some(error.clone()),
                    ..line
                },
                StepState::Failed { at, error } => StepLine {
                    state: "Failed".into(),
                    at: Some(*at),
                    error: Some(error.clone()),
                    ..line
                },
            }
        })
        .collect()
}

/// An operation as data, `None` when its log does not replay.
pub fn op_status(op: &Operation) -> Option<OpStatus> {
    let st = op.status().ok()?;
    let mut steps = step_lines(&st.steps);
    steps.extend(step_lines(&st.forward));
    Some(OpStatus {
        id: op.id.clone(),
        kind: format!("{:?}", op.kind),
        created_at: op.created_at,
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
        owner: None,
        in_sync: None,
        desired_hash: None,
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

/// Reads every environment's status file under a state directory (hidden files and
/// `_`-files, such as the hosts' status, are not environments).
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
                .is_some_and(|n| n.to_string_lossy().starts_with(['.', '_']))
        {
            let bytes = std::fs::read(&p)?;
            out.push(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?);
        }
    }
    out.sort_by(|a: &EnvStatus, b| a.name.cmp(&b.name));
    Ok(out)
}
