//! `LocalHost`: the controller's own machine — Docker on its unix socket, commands as local
//! processes, files on the local disk.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_api::values::Address;
use berth_api::HostSpec;
use bollard::{Docker, API_DEFAULT_VERSION};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::engine::{self, Engine, Sink, Source};
use super::{Conn, ContainerEvent, Created, Host, HostError, Output, Pulled, Result};
use crate::model::{ContainerInfo, ContainerSpec, LABEL_ENV};

/// Seconds a Docker request may take before its response starts (stops get their grace
/// period on top).
const DOCKER_TIMEOUT: u64 = 120;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

pub struct LocalHost {
    name: String,
    engine: Engine,
}

impl LocalHost {
    /// Connects to the Docker socket of a Host whose address is `local`, and checks that
    /// the engine answers.
    ///
    /// # Errors
    /// [`HostError::Unreachable`] when the address is not `local`, the socket is missing,
    /// or the engine does not answer a ping.
    pub async fn connect(name: &str, spec: &HostSpec) -> Result<LocalHost> {
        let unreachable = |message: String| HostError::Unreachable {
            host: name.to_owned(),
            message,
        };
        if spec.address != Address::Local {
            return Err(unreachable(format!(
                "address {} is not `local`; an SSH host needs its own connection",
                spec.address
            )));
        }
        let docker =
            Docker::connect_with_unix(&spec.docker_socket, DOCKER_TIMEOUT, API_DEFAULT_VERSION)
                .map_err(|e| unreachable(format!("{}: {e}", spec.docker_socket)))?;
        let engine =
            Engine::new(name, docker, spec.registry_auth.as_ref().map(PathBuf::from)).await?;
        Ok(LocalHost {
            name: name.to_owned(),
            engine,
        })
    }

    fn file_err(&self, path: &str, e: impl std::fmt::Display) -> HostError {
        HostError::File {
            host: self.name.clone(),
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    async fn open(&self, path: &str) -> Result<File> {
        File::open(path).await.map_err(|e| self.file_err(path, e))
    }
}

#[async_trait]
impl Host for LocalHost {
    fn name(&self) -> &str {
        &self.name
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
        let mut file = TempFile::create(path, 0o600)
            .await
            .map_err(|e| self.file_err(path, e))?;
        let sink = Sink {
            writer: &mut file.file,
            path,
        };
        let output = self.engine.exec(container, cmd, None, Some(sink)).await?;
        file.commit().await.map_err(|e| self.file_err(path, e))?;
        Ok(output)
    }

    async fn exec_from_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output> {
        let mut file = self.open(path).await?;
        let source = Source {
            reader: &mut file,
            path,
        };
        self.engine.exec(container, cmd, Some(source), None).await
    }

    async fn archive_to_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let mut out = TempFile::create(file, 0o600)
            .await
            .map_err(|e| self.file_err(file, e))?;
        let sink = Sink {
            writer: &mut out.file,
            path: file,
        };
        self.engine.download(container, path, sink).await?;
        out.commit().await.map_err(|e| self.file_err(file, e))
    }

    async fn archive_from_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let tar = read_chunks(self.open(file).await?);
        self.engine.upload(container, path, tar, file).await
    }

    async fn run(&self, command: &str) -> Result<Output> {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            // A cancelled reconcile must not leave the command running behind it.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| HostError::Command {
                host: self.name.clone(),
                command: command.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Output {
            exit_code: exit_code(&out.status),
            stdout: engine::lossy_capped(&out.stdout),
            stderr: engine::lossy_capped(&out.stderr),
        })
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let write = async {
            let mut tmp = TempFile::create(path, mode).await?;
            tmp.file.write_all(data).await?;
            tmp.commit().await
        };
        write.await.map_err(|e| self.file_err(path, e))
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match tokio::fs::read(path).await {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.file_err(path, e)),
        }
    }

    async fn file_digest(&self, path: &str) -> Result<Option<(u64, String)>> {
        let mut file = match File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.file_err(path, e)),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| self.file_err(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Some((size, hex::encode(hasher.finalize()))))
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        match tokio::fs::remove_file(path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.file_err(path, e)),
        }
    }

    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
        let err = |message: String| HostError::Connect {
            host: self.name.clone(),
            port,
            message,
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((addr, port)),
        )
        .await
        .map_err(|_| err(format!("{addr}: no answer in {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| err(format!("{addr}: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn connect_unix(&self, path: &str) -> Result<Box<dyn Conn>> {
        let err = |message: String| HostError::File {
            host: self.name.clone(),
            path: path.to_owned(),
            message,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| err(format!("no answer in {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        // The engine runs on this machine, so this clock is its clock.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ok(self.engine.events(now - 1))
    }

    async fn engine_version(&self) -> Result<String> {
        self.engine.version().await
    }

    fn engine_api_version(&self) -> Option<String> {
        Some(self.engine.api_version())
    }
}

fn exit_code(status: &std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        // As a shell reports a command killed by a signal.
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => -1,
    }
}

/// A file read as a stream of chunks, for request bodies.
fn read_chunks(file: File) -> BoxStream<'static, std::io::Result<Bytes>> {
    stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// A file being written next to its final path, renamed over it only once complete and
/// on disk: a reader (or a crash) sees the old file or the new one, never half of one.
/// Dropped uncommitted, it deletes itself.
struct TempFile {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Missing parent directories are created, private (0700): backups go to fresh ones.
    async fn create(path: &str, mode: u32) -> std::io::Result<TempFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(path);
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
            _ => {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "not a file path",
                ))
            }
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .await?;
        let tmp = dir.join(format!(
            ".{name}.berth-tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        let this = TempFile {
            file,
            tmp,
            path,
            committed: false,
        };
        // The umask applies at creation; the mode asked for is set exactly.
        this.file
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .await?;
        Ok(this)
    }

    async fn commit(mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.tmp, &self.path).await?;
        self.committed = true;
        // The rename itself is durable only once the directory is synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).await?.sync_all().await?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
