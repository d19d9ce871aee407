//! The control plane end to end: berthctl against a running berthd, through its API.
