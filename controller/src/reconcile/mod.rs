//! The controller loop: level-triggered reconciliation of environments.

pub mod queue;
