//! `berthctl`'s commands: one module per command, each parsed by clap and run by
//! `run`, so that the binary is only the dispatch.
//!
//! # Layout
//! - [`validate`]: `berthctl validate -f PATH` (manifests, all errors at once).
//! - [`get`]: `berthctl get environments|backups|hosts` — tables, or `-o json|yaml`.
//! - [`describe`]: `berthctl describe environment NAME` — everything known, in sections.
//! - [`client`]: berthd's API on its unix socket (found by `--socket`, `$BERTH_SOCKET`
//!   or the state directory).
//! - [`rollout`]: `approve` and `rollout status|history|undo|pause|resume|retry|abort`.
//! - [`apply`]: `apply`, `diff`, `delete` (environments the journal owns).
//! - [`events`]: `events [-w]` and `logs`.
//! - [`progress`]: following an operation to its outcome (`-w`, `--wait`).
//! - [`docs`]: `completion SHELL` and `man DIR`, from the clap definitions.
//! - [`state`]: reading the status files berthd writes (`<state>/status/<env>.json`,
//!   see [`crate::reconcile::status`]) and what they mean for humans (the phase).
//! - [`output`]: `-o table|json|yaml`, aligned tables, times and sizes for humans.
//! - [`view`]: what `-o json|yaml` prints (camelCase, RFC 3339 times, outputs as fields).
//!
//! Every `run` returns text for stdout (printed by the binary) or a [`CtlError`], whose
//! [`CtlError::exit_code`] is what berthctl exits with: 1 for errors, 2 for usage.
//! berthd holds the journal's lock while it runs, so nothing here opens the
//! [`Store`](crate::store::Store): status comes from berthd's API, or, when berthd is not
//! running, from the status files it wrote last (`get`, `describe`).

pub mod apply;
pub mod client;
pub mod describe;
pub mod describe_host;
pub mod docs;
pub mod events;
pub mod get;
pub mod output;
pub mod progress;
pub mod rollout;
pub mod state;
pub mod trust;
pub mod validate;
pub mod view;

use std::path::PathBuf;

/// Why a berthctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A path given on the command line does not exist (a usage error: exit 2).
    #[error("{}: no such file or directory", .0.display())]
    NoSuchPath(PathBuf),
    /// The state directory has no `status/` directory.
    #[error(
        "no status in {}: berthd has not run with --state {} (status files are written after \
         its first reconcile)",
        .status_dir.display(),
        .state.display()
    )]
    NoStatus { state: PathBuf, status_dir: PathBuf },
    #[error(
        "environment {name:?} not found in {}; known environments: {}",
        .status_dir.display(),
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    UnknownEnvironment {
        name: String,
        status_dir: PathBuf,
        known: Vec<String>,
    },
    #[error(
        "host {name:?} is not declared in {}; known hosts: {}{hint}",
        .file.display(),
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    UnknownHost {
        name: String,
        file: PathBuf,
        known: Vec<String>,
        /// `; did you mean `vm-a`?` when a known name is close.
        hint: String,
    },
    #[error("cannot read the status files in {}: {source}", .status_dir.display())]
    ReadStatus {
        status_dir: PathBuf,
        source: std::io::Error,
    },
    /// The manifests have errors (already printed, rendered with their source lines).
    #[error("{}: invalid manifests ({errors} errors); see `berthctl validate -f {}`", .path.display(), .path.display())]
    InvalidManifests { path: PathBuf, errors: usize },
    /// What went wrong was already printed in full (validate's report).
    #[error("errors were reported above")]
    Reported,
    /// `hosts trust` could not (or was told not to) record the key.
    #[error("host {host}: {message}")]
    Trust { host: String, message: String },
    #[error("cannot write the output: {0}")]
    Write(std::io::Error),
    #[error("cannot write {}: {source}", .path.display())]
    Docs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the output as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    /// Nothing answers on berthd's socket (exit 3).
    #[error(
        "berthd is unreachable on {}: {source} (start berthd, or name its socket with --socket or $BERTH_SOCKET)",
        .socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// berthd's answer was cut or garbled (exit 3).
    #[error("talking to berthd: {0}")]
    Transport(String),
    /// berthd refused the request.
    #[error("{error}{}", .field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api {
        status: u16,
        error: String,
        field: Option<String>,
    },
    /// A watched rollout failed or rolled back (exit 1); the outcome was printed.
    #[error("{0}")]
    RolloutFailed(String),
    /// Waiting ended before the outcome (exit 4).
    #[error("timed out after {0:?} waiting for the outcome")]
    TimedOut(std::time::Duration),
    /// A command line that does not make sense (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    /// What berthctl exits with: 2 for usage errors (as clap does), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NoSuchPath(_) | CtlError::Usage(_) => 2,
            CtlError::Unreachable { .. } | CtlError::Transport(_) => 3,
            CtlError::TimedOut(_) => 4,
            _ => 1,
        }
    }

    /// Whether the message still needs printing (`Reported` errors were printed).
    pub fn is_reported(&self) -> bool {
        matches!(self, CtlError::Reported)
    }
}
