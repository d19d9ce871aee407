//! What `-o json|yaml` prints: the status files' records as data for programs —
//! camelCase fields like the manifests, times in RFC 3339 (UTC, milliseconds), step
//! outputs as fields (`{"image": {"repoDigest": …}}`), never Rust debug strings.
//!
//! The status files and the journal keep their own encoding (milliseconds, snake_case);
//! these views are built from them when printing, so the printed form can stay stable
//! while the stored one evolves.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use super::state::phase;
use crate::op::{Millis, Outcome, StepOutput};
use crate::reconcile::status::{EnvStatus, OpStatus, RevisionLine, StepLine};
use crate::store::{BackupRecord, EventKind, EventRecord};

/// A time, printed as RFC 3339: `2023-11-14T22:13:20.000Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub Millis);

impl Time {
    /// `None` for 0, which the records use for "not known".
    fn known(at: Millis) -> Option<Time> {
        (at != 0).then_some(Time(at))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        s.collect_str(&humantime::format_rfc3339_millis(t))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentView<'a> {
    pub name: &'a str,
    /// As `get` shows it: `Idle`, `Rolling out Migrate`, `Failed`…
    pub phase: String,
    pub state: StateView<'a>,
    pub operation: Option<OperationView<'a>>,
    pub revisions: Vec<RevisionView<'a>>,
    pub backups: Vec<BackupView<'a>>,
    pub events: Vec<EventView<'a>>,
    /// Who owns the desired state (`directory`, `apply`, `none`) and that source's health;
    /// absent when read from status files (berthd not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<&'a crate::api::types::Owner>,
    /// The desired revision serves and nothing runs; absent from status files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView<'a> {
    pub current: Option<u64>,
    pub active_op: Option<&'a str>,
    pub failed: Option<FailedView<'a>>,
    pub paused: bool,
    pub approved_hash: Option<&'a str>,
    /// The revision `rollout undo` holds the environment at, while the manifest asks for
    /// what it asked then.
    pub pinned_revision: Option<u64>,
    pub commit: Option<&'a str>,
    pub message: &'a str,
    pub updated_at: Option<Time>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedView<'a> {
    pub template_hash: &'a str,
    pub reason: &'a str,
    pub at: Time,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationView<'a> {
    pub id: &'a str,
    /// `Rollout` or `Undo`.
    pub kind: &'a str,
    pub created_at: Option<Time>,
    pub from: Option<u64>,
    pub to: u64,
    pub reason: &'a str,
    pub phase: &'a str,
    pub outcome: Option<OutcomeView<'a>>,
    pub rollback_reason: Option<&'a str>,
    pub steps: Vec<StepView<'a>>,
}

/// `{"type": "RolledBack", "reason": "…"}`.
#[derive(Serialize)]
pub struct OutcomeView<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView<'a> {
    pub step: &'a str,
    pub state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// A step's output, one key naming its kind: `{"image": {…}}`, `{"note": "…"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum OutputView<'a> {
    Image {
        id: &'a str,
        repo_digest: Option<&'a str>,
    },
    Backup {
        id: &'a str,
        path: &'a str,
        size: u64,
        sha256: &'a str,
    },
    Migration {
        exit_code: i64,
        log_tail: &'a str,
    },
    Note(&'a str),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionView<'a> {
    pub revision: u64,
    pub image: &'a str,
    pub repo_digest: Option<&'a str>,
    pub template_hash: &'a str,
    pub commit: Option<&'a str>,
    pub created_at: Option<Time>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupView<'a> {
    pub id: &'a str,
    pub environment: &'a str,
    pub operation: Option<&'a str>,
    pub revision: Option<u64>,
    pub path: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub created_at: Option<Time>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView<'a> {
    pub seq: u64,
    pub at: Option<Time>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub reason: &'a str,
    pub message: &'a str,
    pub operation: Option<&'a str>,
}

pub fn environment(s: &EnvStatus) -> EnvironmentView<'_> {
    let st = &s.state;
    EnvironmentView {
        name: &s.name,
        phase: phase(s),
        state: StateView {
            current: st.current,
            active_op: st.active_op.as_deref(),
            failed: st.failed.as_ref().map(|f| FailedView {
                template_hash: &f.template_hash,
                reason: &f.reason,
                at: Time(f.at),
            }),
            paused: st.paused,
            approved_hash: st.approved_hash.as_deref(),
            pinned_revision: st.pin.as_ref().map(|p| p.revision),
            commit: st.commit.as_deref(),
            message: &st.message,
            updated_at: Time::known(st.updated_at),
        },
        operation: s.operation.as_ref().map(operation),
        revisions: s.revisions.iter().map(revision).collect(),
        backups: s.backups.iter().map(backup).collect(),
        events: s.events.iter().map(event).collect(),
        owner: s.owner.as_ref(),
        in_sync: s.in_sync,
    }
}

pub fn operation(op: &OpStatus) -> OperationView<'_> {
    OperationView {
        id: &op.id,
        kind: &op.kind,
        created_at: Time::known(op.created_at),
        from: op.from,
        to: op.to,
        reason: &op.reason,
        phase: &op.phase,
        outcome: op.outcome.as_ref().map(|o| match o {
            Outcome::Succeeded => OutcomeView {
                kind: "Succeeded",
                reason: None,
            },
            Outcome::Superseded => OutcomeView {
                kind: "Superseded",
                reason: None,
            },
            Outcome::RolledBack { reason } => OutcomeView {
                kind: "RolledBack",
                reason: Some(reason),
            },
            Outcome::Failed { reason } => OutcomeView {
                kind: "Failed",
                reason: Some(reason),
            },
        }),
        rollback_reason: op.rollback_reason.as_deref(),
        steps: op.steps.iter().map(step).collect(),
    }
}

fn step(l: &StepLine) -> StepView<'_> {
    StepView {
        step: &l.step,
        state: &l.state,
        attempts: l.attempts,
        at: l.at.and_then(Time::known),
        output: l.output.as_ref().and_then(output),
        error: l.error.as_deref(),
    }
}

fn output(o: &StepOutput) -> Option<OutputView<'_>> {
    Some(match o {
        StepOutput::None => return None,
        StepOutput::Image { id, repo_digest } => OutputView::Image {
            id,
            repo_digest: repo_digest.as_deref(),
        },
        StepOutput::Backup {
            id,
            path,
            size,
            sha256,
        } => OutputView::Backup {
            id,
            path,
            size: *size,
            sha256,
        },
        StepOutput::Migration {
            exit_code,
            log_tail,
        } => OutputView::Migration {
            exit_code: *exit_code,
            log_tail,
        },
        StepOutput::Note(n) => OutputView::Note(n),
    })
}

fn revision(r: &RevisionLine) -> RevisionView<'_> {
    RevisionView {
        revision: r.revision,
        image: &r.image,
        repo_digest: r.repo_digest.as_deref(),
        template_hash: &r.template_hash,
        commit: r.commit.as_deref(),
        created_at: Time::known(r.created_at),
    }
}

pub fn backup(b: &BackupRecord) -> BackupView<'_> {
    BackupView {
        id: &b.id,
        environment: &b.env,
        operation: b.op.as_deref(),
        revision: b.revision,
        path: &b.path,
        size: b.size,
        sha256: &b.sha256,
        created_at: Time::known(b.created_at),
    }
}

pub fn event(e: &EventRecord) -> EventView<'_> {
    EventView {
        seq: e.seq,
        at: Time::known(e.at),
        kind: match e.kind {
            EventKind::Normal => "Normal",
            EventKind::Warning => "Warning",
        },
        reason: &e.reason,
        message: &e.message,
        operation: e.op.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds() {
        let json = serde_json::to_value(Time(1_700_000_000_123)).unwrap();
        assert_eq!(json, "2023-11-14T22:13:20.123Z");
        assert_eq!(Time::known(0), None);
    }

    #[test]
    fn step_outputs_are_one_key_naming_their_kind() {
        let image = StepOutput::Image {
            id: "sha256:1d".into(),
            repo_digest: Some("app@sha256:aa".into()),
        };
        assert_eq!(
            serde_json::to_value(output(&image)).unwrap(),
            serde_json::json!({"image": {"id": "sha256:1d", "repoDigest": "app@sha256:aa"}})
        );
        let migration = StepOutput::Migration {
            exit_code: 0,
            log_tail: "applied".into(),
        };
        assert_eq!(
            serde_json::to_value(output(&migration)).unwrap(),
            serde_json::json!({"migration": {"exitCode": 0, "logTail": "applied"}})
        );
        assert_eq!(
            serde_json::to_value(output(&StepOutput::Note("n".into()))).unwrap(),
            serde_json::json!({"note": "n"})
        );
        assert!(output(&StepOutput::None).is_none());
    }
}
