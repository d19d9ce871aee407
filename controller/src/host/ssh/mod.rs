//! `SshHost`: a VM reached over SSH (`address: ssh://user@host[:port]`), with no `ssh`
//! binary and no Docker TCP port on the VM.
//!
//! Two long-lived russh connections per host ([`session`]): one carries the Docker API
//! over `direct-streamlocal` channels to the host's `dockerSocket` ([`transport`], into
//! the same [`Engine`] a local host uses) and probe connections over `direct-tcpip`; the
//! other carries host commands and files over `exec` channels ([`remote`]).
//!
//! Why two: russh grants a channel more window as soon as data arrives, and its
//! connection task waits for a channel's reader to take each message. A dump streamed
//! from a Docker exec into a host file reads one channel only as fast as it can write the
//! other, so on one connection the writer waited for a window adjustment that the
//! connection task, stuck on the unread Docker channel, never processed: it stopped
//! after 2 MiB. On two connections each side progresses on its own.
//!
//! # Guarantees
//! - The host key is verified against `knownHostsFile` before anything is sent; an
//!   unknown or changed key makes the host unreachable, never trusted.
//! - A lost connection is an [`HostError::Unreachable`] for every call under way, and
//!   [`Host::lost`] resolves, so the host table reconnects (with backoff) at once.
//! - Files written to the host appear whole or not at all (see [`remote`]).

pub(crate) mod remote;
pub mod session;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_api::values::Address;
use berth_api::HostSpec;
use bollard::API_DEFAULT_VERSION;
use futures_util::stream::BoxStream;
use tokio_util::io::StreamReader;

use super::engine::{self, Engine, Sink, Source};
use super::{Conn, ContainerEvent, Created, Host, HostError, Output, Pulled, Result};
use crate::model::{ContainerInfo, ContainerSpec, LABEL_ENV};
use remote::RemoteFile;
use session::{Session, Target};

pub use session::describe_key;

/// Seconds a Docker request may take before its response starts (as for local hosts).
const DOCKER_TIMEOUT: u64 = 120;
/// How long a host command (`run`: nginx reloads, backup commands) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct SshHost {
    /// Commands and files.
    session: Arc<Session>,
    /// Docker API and TCP connections.
    tunnel: Arc<Session>,
    engine: Engine,
}

/// Where the Host's SSH settings point: `(user, host, port)` and the files.
pub fn target(name: &str, spec: &HostSpec) -> std::result::Result<Target, String> {
    let Address::Ssh { user, host, port } = &spec.address else {
        return Err(format!("address {} is not ssh://", spec.address));
    };
    let known_hosts = match &spec.known_hosts_file {
        Some(f) => PathBuf::from(f),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh/known_hosts"))
            .ok_or("no knownHostsFile and no $HOME for ~/.ssh/known_hosts")?,
    };
    Ok(Target {
        name: name.to_owned(),
        user: user.clone(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: *port,
        identity_file: spec.identity_file.as_ref().map(PathBuf::from),
        known_hosts,
    })
}

impl SshHost {
    /// Connects (host key verified, authenticated), then negotiates the Docker API
    /// version through the tunnel and checks the engine answers.
    ///
    /// # Errors
    /// [`HostError::Unreachable`] saying why (see [`Session::connect`]), or the engine's
    /// error through the tunnel.
    pub async fn connect(name: &str, spec: &HostSpec) -> Result<SshHost> {
        let target = target(name, spec).map_err(|message| HostError::Unreachable {
            host: name.to_owned(),
            message,
        })?;
        let tunnel = Arc::new(Session::connect(target.clone()).await?);
        let session = Arc::new(Session::connect(target).await?);
        let docker = transport::docker(
            tunnel.clone(),
            spec.docker_socket.clone(),
            DOCKER_TIMEOUT,
            API_DEFAULT_VERSION,
        )
        .map_err(|e| HostError::Unreachable {
            host: name.to_owned(),
            message: e.to_string(),
        })?;
        let engine =
            Engine::new(name, docker, spec.registry_auth.as_ref().map(PathBuf::from)).await?;
        Ok(SshHost {
            session,
            tunnel,
            engine,
        })
    }

    async fn command(&self, what: &str, script: &str) -> Result<Output> {
        let raw = remote::run(
            &self.session,
            what,
            script,
            None,
            remote::OUTPUT_LIMIT,
            Some(COMMAND_TIMEOUT),
        )
        .await?;
        Ok(raw.into_output())
    }

    /// A host file as a reader, for a command's stdin or an upload.
    async fn reader(
        &self,
        path: &str,
    ) -> Result<BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        remote::stream_file(&self.session, path)
            .await?
            .ok_or_else(|| HostError::File {
                host: self.session.name().to_owned(),
                path: path.to_owned(),
                message: "no such file".into(),
            })
    }
}

#[async_trait]
impl Host for SshHost {
    fn name(&self) -> &str {
        self.session.name()
    }

    async fn list(&self, env: &str) -> Result<Vec<ContainerInfo>> {
        self.engine.list(&format!("{LABEL_ENV}={env}")).await
    }

    async fn list_all(&self) -> Result<Vec<ContainerInfo>> {
        self.engine.list(LABEL_ENV).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        self.engine.inspect(name).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Created> {
        let env = engine::container_env(self, spec).await?;
        self.engine.create(spec, env).await
    }

    async fn start(&self, name: &str) -> Result<()> {
        self.engine.start(name).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        self.engine.stop(name, grace).await
    }

    async fn remove(&self, name: &str) -> Result<()> {
        self.engine.remove(name).await
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String> {
        self.engine.logs(name, tail).await
    }

    async fn pull(&self, image: &str) -> Result<Pulled> {
        self.engine.pull(image).await
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.engine.remove_image(image).await
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<Output> {
        self.engine.exec(container, cmd, None, None).await
    }

    async fn exec_to_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output> {
        let mut file = RemoteFile::create(&self.session, path, 0o600).await?;
        let sink = Sink {
            writer: &mut *file.writer,
            path,
        };
        match self.engine.exec(container, cmd, None, Some(sink)).await {
            Ok(output) => {
                file.commit(&self.session).await?;
                Ok(output)
            }
            Err(e) => {
                file.abandon(&self.session).await;
                Err(e)
            }
        }
    }

    async fn exec_from_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output> {
        let mut reader = StreamReader::new(self.reader(path).await?);
        let source = Source {
            reader: &mut reader,
            path,
        };
        self.engine.exec(container, cmd, Some(source), None).await
    }

    async fn archive_to_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let mut out = RemoteFile::create(&self.session, file, 0o600).await?;
        let sink = Sink {
            writer: &mut *out.writer,
            path: file,
        };
        match self.engine.download(container, path, sink).await {
            Ok(()) => out.commit(&self.session).await,
            Err(e) => {
                out.abandon(&self.session).await;
                Err(e)
            }
        }
    }

    async fn archive_from_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let tar = self.reader(file).await?;
        self.engine.upload(container, path, tar, file).await
    }

    async fn run(&self, command: &str) -> Result<Output> {
        self.command(command, command).await
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        remote::write_file(&self.session, path, data, mode).await
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        remote::read_file(&self.session, path).await
    }

    async fn file_digest(&self, path: &str) -> Result<Option<(u64, String)>> {
        remote::file_digest(&self.session, path).await
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        remote::remove_file(&self.session, path).await
    }

    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
        let channel =
            tokio::time::timeout(Duration::from_secs(10), self.tunnel.open_tcp(addr, port))
                .await
                .map_err(|_| HostError::Connect {
                    host: self.session.name().to_owned(),
                    port,
                    message: format!("{addr}: no answer in 10 s"),
                })??;
        Ok(Box::new(transport::tcp_stream(channel)))
    }

    async fn connect_unix(&self, path: &str) -> Result<Box<dyn Conn>> {
        // A unix socket on the VM (HAProxy's admin socket), through `direct-streamlocal`
        // like the Docker socket; sshd must allow stream-local forwarding.
        let channel = tokio::time::timeout(Duration::from_secs(10), self.tunnel.open_socket(path))
            .await
            .map_err(|_| HostError::File {
                host: self.session.name().to_owned(),
                path: path.to_owned(),
                message: "no answer in 10 s".into(),
            })??;
        Ok(Box::new(transport::tcp_stream(channel)))
    }

    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        // From a moment ago on the engine's clock, which may differ from this one.
        let since = match self.engine.clock().await {
            Some(t) => t,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        Ok(self.engine.events(since - 1))
    }

    async fn engine_version(&self) -> Result<String> {
        self.engine.version().await
    }

    fn engine_api_version(&self) -> Option<String> {
        Some(self.engine.api_version())
    }

    async fn lost(&self) -> String {
        tokio::select! {
            why = self.session.lost() => why,
            why = self.tunnel.lost() => why,
        }
    }
}
