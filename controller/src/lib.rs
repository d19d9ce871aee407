//! Berth's controller: it keeps what runs on Docker hosts equal to the manifests, through
//! idempotent, journaled steps.
//!
//! # Layout
//! - [`model`]: the shared vocabulary — revisions, container names and labels, templates.
//! - [`host`]: the ways to reach a Docker host (trait; local socket; a fake for tests).
//! - [`op`]: an operation (a rollout) as journaled events, its status derived by replay.
//! - [`plan`] (pure): desired spec + observed state + journal + now → the next action.
//! - [`exec`]: performs one step against a host: observe, act only if missing, verify.
//! - [`store`]: the sled journal — operations, environment state, revisions, backups, events.
//! - [`reconcile`]: the loop — work queue, triggers, observe/plan/act, backoff, status files.
//! - [`notify`]: rollout webhooks, derived from the journal, posted off the loop.
//! - [`redact`]: secrets out of every output before Berth stores or logs it.
//! - [`source`]: where desired state comes from (a watched directory).
//! - [`systemd`]: `Type=notify` readiness (`READY=1` to `$NOTIFY_SOCKET`).
//! - [`ctl`]: berthctl's commands (the binary only dispatches to them).
//! - [`api`]: berthd's HTTP/JSON API (unix socket, TCP with a token), which berthctl uses.

pub mod api;
pub mod crash;
pub mod ctl;
pub mod exec;
pub mod host;
pub mod model;
pub mod notify;
pub mod op;
pub mod plan;
pub mod reconcile;
pub mod redact;
pub mod source;
pub mod store;
pub mod systemd;
