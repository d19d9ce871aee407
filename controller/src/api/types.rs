//! Request and response bodies of the API, shared by berthd and berthctl. Requests are
//! camelCase JSON and refuse unknown fields; responses are documented in the OpenAPI
//! document (`GET /v1/openapi.json`).

use serde::{Deserialize, Serialize};

use crate::op::Millis;

/// `POST /v1/environments/{name}/approve`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproveRequest {
    /// The revision being approved; the one waiting when absent. Approving a revision
    /// that is not the one waiting is refused (409), so an approval is never for a
    /// rollout the operator did not see.
    pub revision: Option<u64>,
}

/// `POST /v1/environments/{name}/undo`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UndoRequest {
    /// The revision to go back to; the one before the serving revision when absent.
    pub to_revision: Option<u64>,
}

/// What an operator verb did.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionReply {
    pub environment: String,
    /// One line for humans: "approved revision 2".
    pub message: String,
    /// The operation the verb acted on, if any.
    pub operation: Option<String>,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    pub store_open: bool,
    pub manifests_loaded: bool,
    /// Hosts not observed once yet (still connecting).
    pub hosts_pending: Vec<String>,
}

/// The health of the manifest directory berthd watches: the status of the source itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SourceHealth {
    /// The directory (or file).
    pub path: String,
    /// The git commit acted on (`+dirty` stripped; see `dirty`).
    pub commit: Option<String>,
    /// The work tree had uncommitted changes when it was loaded.
    pub dirty: bool,
    /// When the acted-on state was loaded.
    pub loaded_at: Millis,
    /// The directory holds invalid manifests: the first errors (file:line: message), and
    /// the previous valid state is still acted on.
    pub error: Option<SourceError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SourceError {
    /// `file:line:column: message`, one per error.
    pub errors: Vec<String>,
    /// Since when the directory has been invalid.
    pub since: Millis,
    /// The commit the invalid tree is at, if known.
    pub commit: Option<String>,
}

/// One log line of a replica (`GET /v1/environments/{name}/logs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub replica: String,
    pub line: String,
}

/// `POST /v1/apply` and `POST /v1/diff`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRequest {
    /// YAML or JSON documents, as in a manifest file (Environments only: Hosts come from
    /// the manifest directory).
    #[serde(default)]
    pub manifests: String,
    /// The file they were read from, for error messages and the record.
    #[serde(default)]
    pub source: Option<String>,
    /// More files, applied together with `manifests` (`apply -f DIR`): all or none.
    #[serde(default)]
    pub files: Vec<ManifestFile>,
    /// Take over environments the directory owns (recorded as an event).
    #[serde(default)]
    pub force: bool,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// One file of an [`ApplyRequest`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestFile {
    pub source: String,
    pub manifests: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReply {
    pub dry_run: bool,
    pub environments: Vec<EnvChange>,
}

/// What applying did (or would do) to one environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvChange {
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
    /// Field by field, against the desired state berthd acts on now.
    pub changes: Vec<FieldChange>,
    /// The rollout it starts, if its template differs from the serving revision's.
    pub rollout: Option<RolloutPreview>,
    /// It was owned by the manifest directory and `--force` takes it over.
    pub took_over: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// `spec.image`, `spec.health.readiness.interval`, `metadata.labels.team`.
    pub path: String,
    pub from: Option<serde_json::Value>,
    pub to: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPreview {
    pub from_revision: Option<u64>,
    pub image: String,
    pub steps: Vec<String>,
    /// The migration policy (`None`, `BackwardCompatible`, `Breaking`).
    pub migration: String,
    pub backup: bool,
    pub approval_required: bool,
}

/// `DELETE /v1/environments/{name}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteReply {
    pub environment: String,
    pub message: String,
    /// The containers pruning removes (listed whether or not it was asked).
    pub would_prune: Vec<String>,
    pub pruned: bool,
}

/// Who owns an environment's desired state, and the health of that source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Owner {
    /// `directory`, `apply`, or `none` (no longer desired).
    pub by: String,
    /// The file (and line) it comes from: a manifest file, or what `apply -f` read.
    pub file: Option<String>,
    /// The directory's commit acted on, and whether its tree was dirty.
    pub commit: Option<String>,
    pub dirty: bool,
    /// `apply --force` took it over from this file of the directory.
    pub took_over_from: Option<String>,
    /// What people must know: the directory is invalid, the manifest was removed…
    pub note: Option<String>,
}
