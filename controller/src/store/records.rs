//! The records the journal keeps besides operations: per-environment state, revisions,
//! backups and events.
//!
//! # Secrets never enter the journal
//! No record here may hold env-file contents, passwords, tokens or registry credentials,
//! and no field that could carry one may be added. Records name files (env files, backup
//! dumps) by path, and templates and specs are kept as the manifest states them, whose
//! secrets belong in `envFiles`, on the host (docs/design.md, "Secrets"). The reason is
//! that the state directory is read back verbatim by `berthctl get/describe -o json`,
//! copied by whoever backs up the controller, and sled keeps overwritten values in its
//! log until it compacts: a secret written once would be hard to get out again.

use serde::{Deserialize, Serialize};

use crate::model::{Revision, Template};
use crate::op::{Millis, OpId};

/// What the controller knows about one environment beyond its operations.
///
/// `#[serde(default)]` so that a field added later reads as its default from records
/// written before it existed, instead of making every old record corrupt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvState {
    /// The revision that serves (traffic points at it), once a rollout has succeeded.
    pub current: Option<Revision>,
    /// The unfinished operation of this environment. Written only by
    /// [`Store::begin`](super::Store::begin) (set) and [`Store::append`](super::Store::append)
    /// of `Finished` (cleared), so that it can never disagree with the operation's log.
    pub active_op: Option<OpId>,
    /// The last template that failed to roll out: the planner does not retry the same
    /// template in a loop; a new template (or an explicit retry) clears it.
    pub failed: Option<FailedTemplate>,
    /// `berthctl rollout pause`: no new operation begins while set.
    pub paused: bool,
    /// The template hash `berthctl approve` approved (approval: Required).
    pub approved_hash: Option<String>,
    /// `berthctl rollout abort`: the operation to roll back at once (ignored once it is
    /// not the active one).
    pub abort_op: Option<OpId>,
    /// `berthctl rollout undo`: the revision the environment is held at.
    pub pin: Option<PinRecord>,
    /// The git commit of the manifests this state reflects.
    pub commit: Option<String>,
    /// One line for humans: "rolled out revision 4", "waiting for approval".
    pub message: String,
    /// When this record last changed, as given by the writer: the operation's
    /// `created_at` for `begin`, the event's `at` for `Finished`, the caller's otherwise.
    pub updated_at: Millis,
}

/// An undo's hold on an environment (see `plan::Pin`): revision `revision` serves while
/// the manifest's template hash stays `asked_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    pub revision: Revision,
    pub asked_hash: String,
    pub at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTemplate {
    pub template_hash: String,
    pub reason: String,
    pub at: Millis,
}

/// One revision of an environment: what its containers were created from, kept so that
/// `rollout undo --to-revision N` can return to it exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub env: String,
    pub revision: Revision,
    pub template_hash: String,
    pub template: Template,
    /// The `EnvironmentSpec` as JSON, to roll back to it later (probes, strategy,
    /// migration and so on are not in the template but matter for an undo).
    pub spec: serde_json::Value,
    /// The pulled image's id, once known: an undo runs the same bytes even if the tag moved.
    pub image_id: Option<String>,
    /// The pulled image as `repo@sha256:…`, once its `PullImage` step succeeded: every
    /// container of the revision is created from it, not from the (mutable) tag.
    #[serde(default)]
    pub repo_digest: Option<String>,
    /// The git commit of the manifests it came from.
    pub commit: Option<String>,
    pub created_at: Millis,
}

/// A completed backup (docs/design.md, journal rule 5: catalogued with size and sha256 when
/// complete, so a catalogued, matching file is known to be whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// A ULID.
    pub id: String,
    pub env: String,
    /// The operation whose `Backup` step made it.
    pub op: Option<OpId>,
    /// The revision that was serving when it was taken.
    pub revision: Option<Revision>,
    /// Where the dump is, on the host that took it.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Normal,
    Warning,
}

/// An event to record; the store assigns its sequence number (see [`EventRecord`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub at: Millis,
    pub env: String,
    pub kind: EventKind,
    /// CamelCase, like Kubernetes event reasons: "ReplicaRepaired", "RolloutStarted",
    /// "StepFailed".
    pub reason: String,
    pub message: String,
    pub op: Option<OpId>,
}

/// A recorded event: the human-readable history shown by `berthctl events`. Events are
/// not the journal — nothing decides anything from them — so they are kept only up to
/// the retention limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Increases with every event, also across restarts; not contiguous.
    pub seq: u64,
    pub at: Millis,
    pub env: String,
    pub kind: EventKind,
    pub reason: String,
    pub message: String,
    pub op: Option<OpId>,
}

impl EventRecord {
    pub fn new(seq: u64, e: NewEvent) -> EventRecord {
        EventRecord {
            seq,
            at: e.at,
            env: e.env,
            kind: e.kind,
            reason: e.reason,
            message: e.message,
            op: e.op,
        }
    }
}
