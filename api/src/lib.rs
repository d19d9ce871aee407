//! Berth's resource API: the `Host` and `Environment` resources, reading them from YAML or
//! JSON with every error located exactly, and their JSON Schema.
//!
//! # Layout
//! - [`yaml`]: a YAML/JSON document tree that keeps line and column of every node.
//! - [`shape`]: one description per resource of what its fields may hold; checks a
//!   document against it (collecting every error), fills defaults, emits JSON Schema.
//! - [`host`], [`environment`], [`resource`]: the typed resources and their shapes.
//! - [`values`]: durations, image references, port ranges, addresses.
//! - `check`: rules across fields and documents (names that must exist, ports, canary
//!   steps, a backup for every Breaking migration, `dependsOn` without cycles).
//! - [`support`]: what a manifest can say that the engine does not do yet ([`unsupported`]),
//!   reported by `validate` as warnings and refused or noted by the engine's preflight.
//! - [`load`]: files and directories in, [`Manifests`] and [`Diagnostic`]s out.
//! - [`diag`]: diagnostics and their compiler-like rendering.
//!
//! No I/O beyond reading the manifest files.

mod check;
pub mod diag;
pub mod environment;
pub mod host;
pub mod load;
pub mod resource;
pub mod shape;
pub mod support;
pub mod values;
pub mod yaml;

pub use diag::{Diagnostic, Severity, Sources};
pub use environment::EnvironmentSpec;
pub use host::HostSpec;
pub use load::{load_path, load_texts, Loaded};
pub use resource::{json_schema, Environment, Host, Kind, Manifests, API_VERSION};
pub use support::{unsupported, unsupported_host, Effect, Unsupported};
