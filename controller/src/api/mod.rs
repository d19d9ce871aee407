//! berthd's HTTP/JSON API: what berthctl (and scripts) use while berthd holds the journal.
//!
//! # Layout
//! - [`server`]: the unix socket and TCP listeners, limits, the bearer token.
//! - `routes`: paths to handlers (the `/v1/…` paths, `/healthz`, `/readyz`, `/metrics`).
//! - `actions`: the operator's verbs (approve, pause, resume, retry, abort, undo). Each
//!   writes the operator's wish into the journal and wakes the loop; the pure planner
//!   acts on it, so nothing here races the reconciler.
//! - `apply`: objects applied through the API, their owner and their diff.
//! - [`metrics`]: the Prometheus text exposition, derived from the journal and the loop.
//! - [`openapi`]: the OpenAPI document of these paths.
//! - [`types`]: request and response bodies, shared with berthctl.
//!
//! # Errors
//! Every error is JSON `{"error": "...", "field": "..."}` (`field` when one field of the
//! request is at fault) with a 4xx status for the client's mistakes and 5xx for berthd's.

mod actions;
pub mod apply;
pub mod metrics;
pub mod openapi;
mod routes;
pub mod server;
#[cfg(test)]
mod tests;
pub mod types;

use std::sync::Arc;

use crate::reconcile::Controller;
use crate::store::StoreError;

pub use server::Limits;

/// What the handlers share.
pub struct App {
    pub ctl: Arc<Controller>,
    pub limits: Limits,
}

impl App {
    pub fn new(ctl: Arc<Controller>, limits: Limits) -> Arc<App> {
        Arc::new(App { ctl, limits })
    }
}

/// A successful answer.
pub enum Reply {
    Json(u16, serde_json::Value),
    /// Status, content type, body.
    Text(u16, &'static str, String),
}

impl Reply {
    pub fn ok(v: impl serde::Serialize) -> Result<Reply, ApiError> {
        serde_json::to_value(v)
            .map(|v| Reply::Json(200, v))
            .map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
    }
}

/// A refused or failed request: its status and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(400, error)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            401,
            "a valid bearer token is required (Authorization: Bearer …)",
        )
    }

    pub fn not_found(error: impl Into<String>) -> ApiError {
        ApiError::new(404, error)
    }

    pub fn conflict(error: impl Into<String>) -> ApiError {
        ApiError::new(409, error)
    }

    pub fn too_large(max: usize) -> ApiError {
        ApiError::new(413, format!("the request body is larger than {max} bytes"))
    }

    pub fn timeout(after: std::time::Duration) -> ApiError {
        ApiError::new(408, format!("the request took longer than {after:?}"))
    }

    pub fn internal(error: impl Into<String>) -> ApiError {
        ApiError::new(500, error)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.error, "field": self.field})
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(format!("journal: {e}"))
    }
}
