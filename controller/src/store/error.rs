//! The store's one error type.

use std::path::PathBuf;

use crate::model::Revision;
use crate::op::{IllegalTransition, OpId};

/// Everything the store can refuse or fail at. Variants that concern stored data name the
/// tree and the key (keys are shown as `env/id`, `env/00000000000000000004`, or an event's
/// sequence number); [`StoreError::is_corrupt`] tells bad data from refusals and I/O.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the journal in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the journal in {path} has format {found:?}; this build reads format {supported}")]
    Format {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    /// sled failed to read or write (I/O). Corruption that sled detects is reported as
    /// [`StoreError::Corrupt`] instead.
    #[error("{tree} tree, key {key}: storage error: {source}")]
    Storage {
        tree: &'static str,
        key: String,
        source: sled::Error,
    },
    #[error("flushing the journal: {source}")]
    Flush { source: sled::Error },
    /// A stored value does not deserialize, is stored under a key that does not match its
    /// contents, or sled reports corruption.
    #[error("{tree} tree, key {key}: corrupt data: {message}")]
    Corrupt {
        tree: &'static str,
        key: String,
        message: String,
    },
    /// A stored operation's log does not replay: it could not have been written by Berth.
    #[error("operations tree, key {key}: the stored log does not replay: {source}")]
    Replay {
        key: String,
        source: IllegalTransition,
    },
    /// Pointers between records disagree in a way open cannot repair without guessing.
    #[error("environments tree, key {env}: inconsistent journal: {message}")]
    Inconsistent { env: String, message: String },
    /// A value could not be serialised (not expected with these types).
    #[error("{tree} tree, key {key}: cannot encode: {message}")]
    Encode {
        tree: &'static str,
        key: String,
        message: String,
    },
    /// The appended event is not possible after the operation's log; nothing was written.
    #[error(transparent)]
    IllegalTransition(IllegalTransition),
    #[error("environment {env} already has an unfinished operation {active}")]
    Busy { env: String, active: OpId },
    #[error("operation {op} is not in the journal")]
    NoSuchOperation { op: OpId },
    #[error("operation {op} is already in the journal")]
    OperationExists { op: OpId },
    #[error("operation {op} cannot begin: {why}")]
    NotBeginnable { op: OpId, why: String },
    #[error("revision {revision} of {env} is stored with template {stored}, not {given}: revisions never change")]
    RevisionConflict {
        env: String,
        revision: Revision,
        stored: String,
        given: String,
    },
    #[error("revision {revision} of {env} is in use: {why}")]
    RevisionInUse {
        env: String,
        revision: Revision,
        why: String,
    },
    #[error("invalid {what} {name:?}: {why}")]
    InvalidName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("update_env_state for {env} changed active_op; only begin and append of Finished may")]
    ActiveOpIsManaged { env: String },
    /// A subscription outlived its store's notifier (not expected: it holds the store).
    #[error("the store was closed")]
    Closed,
}

impl StoreError {
    /// Whether stored data is bad (as opposed to a refusal, a caller error or I/O): the
    /// operator has to look at the state directory; retrying will not help.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Replay { .. }
                | StoreError::Inconsistent { .. }
        )
    }
}
