//! Performing steps against a host: observe first, act only if the effect is missing,
//! verify after. Each module is one kind of effect; the step runner composes them.
//!
//! # Guarantees
//! Every function here may be called again after a crash at any point, and then does
//! only what is still missing (docs/design.md, "Operations and the journal").

pub mod backup;
pub mod containers;
pub mod haproxy;
pub mod http;
pub mod migrate;
pub mod monitor;
pub mod probe;
pub mod smoke;
pub mod steps;
pub mod traffic;

#[cfg(test)]
mod generic_tests;
#[cfg(test)]
mod test_host;

use crate::host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Host(#[from] HostError),
    /// The journal could not be read or written (catalogue of backups, revisions).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{what}: {message}")]
    Failed {
        /// What was being done: "nginx test", "backup demo-prod", "migration".
        what: String,
        message: String,
        retryable: bool,
    },
}

impl ExecError {
    pub fn failed(what: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        ExecError::Failed {
            what: what.into(),
            message: message.into(),
            retryable,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            ExecError::Host(e) => e.is_retryable(),
            ExecError::Store(e) => !e.is_corrupt(),
            ExecError::Failed { retryable, .. } => *retryable,
        }
    }
}
