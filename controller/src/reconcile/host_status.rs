//! The hosts' status file (`<state>/status/_hosts.json`): where berthd stands with each
//! Host of the manifests — reachable or not, the engine's version, the last error, when
//! the engine last answered and how fast — for `berthctl get hosts`.
//!
//! The name starts with `_`, which no environment's name can (DNS labels), so it never
//! collides with an environment's status file beside it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::status::status_dir;

/// The file's name inside the status directory.
pub const FILE: &str = "_hosts.json";

/// Where the controller stands with a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostPhase {
    /// The first connection attempt is under way.
    Connecting,
    /// The engine answered the last check.
    Reachable,
    /// The last attempt or check failed; another follows (see `last_error`).
    Unreachable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub state: HostPhase,
    /// `state == Reachable`, for readers that only ask that.
    pub reachable: bool,
    pub docker_version: Option<String>,
    /// The Docker API version negotiated with the engine; absent in files written by an
    /// older berthd.
    #[serde(default)]
    pub api_version: Option<String>,
    pub last_error: Option<String>,
    /// When the engine last answered (RFC 3339, UTC).
    pub last_seen: Option<String>,
    /// Round-trip time of the last check, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Since when the host has been in `state` (RFC 3339, UTC); absent in files written
    /// by an older berthd.
    #[serde(default)]
    pub since: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    status_dir(state_dir).join(FILE)
}

/// Writes the file atomically (temporary file, rename), like the environments' files.
/// Blocking: async callers run it with `spawn_blocking`.
pub fn write(state_dir: &Path, hosts: &[HostStatus]) -> std::io::Result<()> {
    let dir = status_dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(hosts)?)?;
    std::fs::rename(tmp, path(state_dir))
}

/// The hosts' statuses, `None` when berthd has not written the file.
pub fn read(state_dir: &Path) -> std::io::Result<Option<Vec<HostStatus>>> {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_is_absent_before_berthd_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let hosts = vec![HostStatus {
            name: "local".into(),
            address: "local".into(),
            state: HostPhase::Reachable,
            reachable: true,
            docker_version: Some("24.0.7".into()),
            api_version: Some("1.43".into()),
            last_error: None,
            last_seen: Some("2024-05-01T10:00:00Z".into()),
            rtt_ms: Some(1.5),
            since: Some("2024-05-01T09:00:00Z".into()),
        }];
        write(dir.path(), &hosts).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(hosts));
        // Environments' status readers skip it.
        assert!(super::super::status::read_all(dir.path())
            .unwrap()
            .is_empty());
    }
}
