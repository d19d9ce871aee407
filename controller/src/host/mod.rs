//! The ways to reach a Docker host, behind one trait: the local socket (`local`), SSH
//! (`ssh`), and an in-memory fake for tests of the steps.
//!
//! The trait speaks Berth's language (containers by name and label, files, commands on
//! the host), not Docker's, so every step is written once for every kind of host.
//!
//! # Guarantees
//! - Every mutating call is idempotent: creating a container whose name exists returns
//!   [`Created::Existed`] with what is there; starting a running one, stopping a stopped
//!   one and removing an absent one succeed.
//! - Nothing here retries: errors say whether a retry may help ([`HostError::is_retryable`]),
//!   and the reconciler decides.

pub(crate) mod engine;
pub mod fake;
pub mod local;
pub mod ssh;

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::model::{ContainerInfo, ContainerSpec};

/// A byte stream to a port on the host (HTTP and TCP probes, smoke checks).
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

#[derive(Debug)]
pub enum Created {
    Created,
    /// A container of that name was already there; the caller compares its template hash.
    Existed(ContainerInfo),
}

/// The outcome of a command (on the host, or inside a container).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// What a pull brought: the image's id, and the registry's digest of it as a reference
/// (`repo@sha256:…`), which names those bytes for good whatever the tag does later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    pub id: String,
    /// `None` for an image the registry gave no digest for (one built on the host).
    pub repo_digest: Option<String>,
}

/// A container event that should wake the reconciler for its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub env_name: String,
    pub container: String,
    /// Docker's action: `die`, `destroy`, `stop`, `start`, `oom`, ...
    pub action: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host {host}: cannot reach the Docker engine: {message}")]
    Unreachable { host: String, message: String },
    #[error("host {host}: docker {op} {object}: {message}")]
    Docker {
        host: String,
        op: &'static str,
        object: String,
        message: String,
        /// Conflicts and server errors may pass; a bad request or a missing image will not.
        retryable: bool,
    },
    #[error("host {host}: `{command}`: {message}")]
    Command {
        host: String,
        command: String,
        message: String,
    },
    #[error("host {host}: {path}: {message}")]
    File {
        host: String,
        path: String,
        message: String,
    },
    #[error("host {host}: port {port}: {message}")]
    Connect {
        host: String,
        port: u16,
        message: String,
    },
}

impl HostError {
    /// The engine could not publish a host port another process or container holds: the
    /// caller picks another port and recreates the container.
    pub fn is_port_taken(&self) -> bool {
        match self {
            HostError::Docker { message, .. } => {
                message.contains("port is already allocated")
                    || message.contains("address already in use")
            }
            _ => false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            HostError::Unreachable { .. } | HostError::Connect { .. } => true,
            HostError::Docker { retryable, .. } => *retryable,
            HostError::Command { .. } | HostError::File { .. } => true,
        }
    }
}

pub type Result<T> = std::result::Result<T, HostError>;

#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// The Host resource's name, for errors and events.
    fn name(&self) -> &str;

    /// Every container labelled `berth.env=<env>`, any role, any state.
    async fn list(&self, env: &str) -> Result<Vec<ContainerInfo>>;

    /// Every Berth container on the host (to know which host ports are taken).
    async fn list_all(&self) -> Result<Vec<ContainerInfo>>;

    /// One container by name, Berth's or not (`None` when absent or not Berth's).
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>>;

    /// Creates (does not start) the container, labelled from `spec.labels()`, publishing
    /// `spec.host_ports` on the template's addresses, joining its networks with
    /// `spec.aliases`. An existing container of that name is returned, not replaced.
    async fn create(&self, spec: &ContainerSpec) -> Result<Created>;

    async fn start(&self, name: &str) -> Result<()>;

    /// Stops with SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, name: &str, grace: Duration) -> Result<()>;

    /// Removes the container (stopping it first if needed).
    async fn remove(&self, name: &str) -> Result<()>;

    /// The last `tail` lines of stdout and stderr.
    async fn logs(&self, name: &str, tail: usize) -> Result<String>;

    /// Pulls the image (with the host's registry credentials, if any) and returns its id
    /// and repo digest.
    async fn pull(&self, image: &str) -> Result<Pulled>;

    /// Removes an image no container uses; absent or still used is not an error.
    async fn remove_image(&self, image: &str) -> Result<()>;

    /// Runs a command inside a running container.
    async fn exec(&self, container: &str, cmd: &[String]) -> Result<Output>;

    /// Runs a command inside a running container with its stdout written to `path` on the
    /// host (created with mode 0600). Used for database dumps. `path` appears only once
    /// the output is complete (written aside, then renamed), whatever the exit code.
    /// Missing parent directories are created (mode 0700), as for every file written.
    async fn exec_to_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output>;

    /// Runs a command inside a running container with the host file `path` as its stdin.
    async fn exec_from_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output>;

    /// Writes a tar of `path` inside a container (running or not) to `file` on the host
    /// (mode 0600, complete or absent). With a volume mounted there, this backs the
    /// volume up.
    async fn archive_to_file(&self, container: &str, path: &str, file: &str) -> Result<()>;

    /// Unpacks the tar `file` on the host into `path` inside a container.
    async fn archive_from_file(&self, container: &str, path: &str, file: &str) -> Result<()>;

    /// Runs `sh -c <command>` on the host (nginx reloads, backup commands).
    async fn run(&self, command: &str) -> Result<Output>;

    /// Writes a file on the host atomically (temporary file, fsync, rename), with exactly
    /// `mode` (not filtered by the umask), creating missing parent directories (0700).
    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()>;

    /// Reads a file on the host; `None` when it does not exist.
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// Size and sha256 (hex) of a file on the host; `None` when it does not exist.
    async fn file_digest(&self, path: &str) -> Result<Option<(u64, String)>>;

    async fn remove_file(&self, path: &str) -> Result<()>;

    /// A TCP connection to `addr:port` as seen from the host (`addr` is usually
    /// 127.0.0.1, where replicas are published).
    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>>;

    /// A stream to the unix socket at `path` on the host (HAProxy's admin socket).
    /// Errors are [`HostError::File`] naming the path.
    async fn connect_unix(&self, path: &str) -> Result<Box<dyn Conn>>;

    /// Container events of Berth's containers, until the connection drops.
    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>>;

    /// The Docker engine's version (`docker version`'s server version). One round trip
    /// to the engine: the controller also uses it to check the host is still reachable.
    async fn engine_version(&self) -> Result<String>;

    /// The Docker API version negotiated when connecting, for the host's status; `None`
    /// for a host that does not speak to a real engine.
    fn engine_api_version(&self) -> Option<String> {
        None
    }

    /// Resolves, with why, once the connection to the host is known to be gone (an SSH
    /// host's connection closing), so the controller reconnects without waiting for its
    /// next check. A host that cannot tell never resolves.
    async fn lost(&self) -> String {
        std::future::pending().await
    }
}
