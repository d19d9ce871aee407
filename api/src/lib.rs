//! Berth resource API.
