//! The Docker Engine half of every real host: bollard calls in Berth's vocabulary and errors.
//!
//! The engine speaks to one Docker socket, whichever transport carries it (the local unix
//! socket now, an SSH-tunnelled one later). Files and processes belong to the host, so
//! whatever reads or writes a host file takes a reader or a writer, and env files arrive
//! already read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, EndpointSettings, EventMessage, EventMessageTypeEnum, HostConfig,
    Mount as DockerMount, MountType, NetworkConnectRequest, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ContainerEvent, Created, Host, HostError, Output, Pulled, Result};
use crate::model::{ContainerInfo, ContainerSpec, ContainerState, LABEL_ENV};

/// What a command may print into an [`Output`]; a chatty command must not exhaust memory.
const OUTPUT_LIMIT: usize = 1 << 20;

/// Container actions that change what runs; `exec_*` and health events would only wake
/// the reconciler for nothing (and an exec's action text carries its command line).
const EVENT_ACTIONS: [&str; 11] = [
    "create", "start", "restart", "die", "stop", "kill", "oom", "destroy", "pause", "unpause",
    "rename",
];

/// A host file that a command's stdout or an archive is streamed into.
pub(crate) struct Sink<'a> {
    pub writer: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// For errors only.
    pub path: &'a str,
}

/// A host file streamed into a command's stdin or a container.
pub(crate) struct Source<'a> {
    pub reader: &'a mut (dyn AsyncRead + Unpin + Send),
    pub path: &'a str,
}

pub(crate) struct Engine {
    host: String,
    docker: Docker,
    /// A docker `config.json` on the controller's machine, read at each pull so that
    /// rotated credentials apply without a restart.
    registry_auth: Option<PathBuf>,
}

impl Engine {
    /// Negotiates the API version (engines as old as 20.10 speak 1.41, older than
    /// bollard's default) and checks the engine answers.
    pub async fn new(host: &str, docker: Docker, registry_auth: Option<PathBuf>) -> Result<Engine> {
        let unreachable = |e: DockerError| HostError::Unreachable {
            host: host.to_owned(),
            message: e.to_string(),
        };
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Engine {
            host: host.to_owned(),
            docker,
            registry_auth,
        })
    }

    /// The Docker API version negotiated with the engine (no round trip).
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// The server's version; a round trip, so also a liveness check.
    pub async fn version(&self) -> Result<String> {
        let v = self
            .docker
            .version()
            .await
            .map_err(|e| HostError::Unreachable {
                host: self.host.clone(),
                message: e.to_string(),
            })?;
        Ok(v.version.unwrap_or_else(|| "unknown".to_owned()))
    }

    /// The engine's clock (unix seconds), for asking events from a moment ago on a host
    /// whose clock may differ from the controller's; `None` if it does not say.
    pub async fn clock(&self) -> Option<i64> {
        let info = self.docker.info().await.ok()?;
        let at = humantime::parse_rfc3339_weak(info.system_time.as_deref()?).ok()?;
        at.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64)
    }

    fn err(&self, op: &'static str, object: &str, e: DockerError) -> HostError {
        map_error(&self.host, op, object, e)
    }

    fn file_err(&self, path: &str, e: std::io::Error) -> HostError {
        HostError::File {
            host: self.host.clone(),
            path: path.to_owned(),
            message: e.to_string(),
        }
    }

    /// Containers carrying `label` (`key` or `key=value`), in any state.
    pub async fn list(&self, label: &str) -> Result<Vec<ContainerInfo>> {
        let filters = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("list", label, e))?;
        let mut out = Vec::with_capacity(summaries.len());
        for s in summaries {
            let id = s.id.unwrap_or_default();
            let name = s
                .names
                .as_ref()
                .and_then(|n| n.first())
                .cloned()
                .unwrap_or_default();
            let labels: BTreeMap<String, String> =
                s.labels.unwrap_or_default().into_iter().collect();
            let state = match summary_state(s.state, s.status.as_deref()) {
                Some(state) => state,
                // The summary's status text had no readable exit code: ask the container.
                None => match self.inspect_raw(&id).await? {
                    Some(c) => inspect_state(&c),
                    None => continue, // removed meanwhile
                },
            };
            let image = s.image.unwrap_or_default();
            out.extend(ContainerInfo::from_labels(
                &id, &name, &image, &labels, state,
            ));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn inspect_raw(&self, name: &str) -> Result<Option<ContainerInspectResponse>> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.err("inspect", name, e)),
        }
    }

    pub async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        Ok(self.inspect_raw(name).await?.as_ref().and_then(info_of))
    }

    /// `env` is the container's whole environment, env files already read and merged.
    pub async fn create(&self, spec: &ContainerSpec, env: Vec<String>) -> Result<Created> {
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let config = container_config(spec, env);
        match self.docker.create_container(Some(options), config).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(409) => return self.existed(spec).await,
            // A 404 may also be a missing network; that one keeps the engine's words.
            Err(e) if status_of(&e) == Some(404) && server_message(&e).contains("image") => {
                return Err(HostError::Docker {
                    host: self.host.clone(),
                    op: "create",
                    object: spec.name.clone(),
                    message: format!(
                        "image {} is not on the host (pull it first): {}",
                        spec.template.image,
                        server_message(&e)
                    ),
                    retryable: false,
                })
            }
            Err(e) => return Err(self.err("create", &spec.name, e)),
        }
        // Engines before API 1.44 accept one network at create; the others join before
        // the first start. If joining fails, the half-made container goes, so that the
        // retry creates it whole rather than finding it "existing".
        if let Err(e) = self.join_networks(spec, &[]).await {
            let _ = self.remove(&spec.name).await;
            return Err(e);
        }
        Ok(Created::Created)
    }

    /// A container of that name exists. If it was never started, it may be one whose
    /// creation was interrupted before it joined all its networks: finish that.
    async fn existed(&self, spec: &ContainerSpec) -> Result<Created> {
        let raw = self
            .inspect_raw(&spec.name)
            .await?
            .ok_or_else(|| HostError::Docker {
                host: self.host.clone(),
                op: "create",
                object: spec.name.clone(),
                message: "the name is taken, but by no container (removed meanwhile?)".into(),
                retryable: true,
            })?;
        let Some(info) = info_of(&raw) else {
            return Err(HostError::Docker {
                host: self.host.clone(),
                op: "create",
                object: spec.name.clone(),
                message: "a container of that name exists and is not Berth's".into(),
                retryable: false,
            });
        };
        if info.state == ContainerState::Created && info.template_hash == spec.template_hash {
            let joined: Vec<String> = raw
                .network_settings
                .and_then(|n| n.networks)
                .map(|n| n.into_keys().collect())
                .unwrap_or_default();
            self.join_networks(spec, &joined).await?;
        }
        Ok(Created::Existed(info))
    }

    async fn join_networks(&self, spec: &ContainerSpec, joined: &[String]) -> Result<()> {
        for net in spec.template.networks.iter().skip(1) {
            if joined.contains(net) {
                continue;
            }
            let request = NetworkConnectRequest {
                container: spec.name.clone(),
                endpoint_config: Some(endpoint(&spec.aliases)),
            };
            self.docker
                .connect_network(net, request)
                .await
                .map_err(|e| self.err("network connect", &format!("{} {net}", spec.name), e))?;
        }
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<()> {
        // A running container answers 304, which bollard passes as success.
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| self.err("start", name, e))
    }

    pub async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        // The engine answers only once the container is down, so the request may take the
        // whole grace period.
        let docker = self
            .docker
            .clone()
            .with_timeout(self.docker.timeout() + grace);
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err("stop", name, e)),
        }
    }

    pub async fn remove(&self, name: &str) -> Result<()> {
        // Named volumes outlive their containers: they hold the data.
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.err("remove", name, e)),
        }
    }

    pub async fn logs(&self, name: &str, tail: usize) -> Result<String> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(options));
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err("logs", name, e))?;
            text.extend_from_slice(chunk.as_ref());
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    pub async fn pull(&self, image: &str) -> Result<Pulled> {
        let credentials = match &self.registry_auth {
            Some(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|e| self.file_err(&path.display().to_string(), e))?;
                credentials_for(&text, registry_of(image)).map_err(|message| HostError::File {
                    host: self.host.clone(),
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => None,
        };
        let (from_image, tag, local_ref) = pull_ref(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        let mut progress = self
            .docker
            .create_image(Some(options.build()), None, credentials);
        while let Some(step) = progress.next().await {
            step.map_err(|e| self.err("pull", image, e))?;
        }
        let inspected = self
            .docker
            .inspect_image(&local_ref)
            .await
            .map_err(|e| self.err("inspect image", image, e))?;
        let id = inspected.id.ok_or_else(|| HostError::Docker {
            host: self.host.clone(),
            op: "pull",
            object: image.to_owned(),
            message: "the engine reported no image id".into(),
            retryable: true,
        })?;
        let repo_digest = repo_digest_of(image, &inspected.repo_digests.unwrap_or_default());
        Ok(Pulled { id, repo_digest })
    }

    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let options = RemoveImageOptionsBuilder::new().force(false).build();
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => Ok(()),
            // Absent, or a container (maybe a stopped one kept for rollback) still uses it.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(self.err("remove image", image, e)),
        }
    }

    /// Runs `cmd` in a running container; with `stdin`, the file is streamed in and stdin
    /// closed after it; with `stdout`, stdout goes there instead of into the [`Output`].
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        stdin: Option<Source<'_>>,
        stdout: Option<Sink<'_>>,
    ) -> Result<Output> {
        let object = format!("{container} {}", first_word(cmd));
        let config = CreateExecOptions {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(container, config)
            .await
            .map_err(|e| self.err("exec", &object, e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| self.err("exec", &object, e))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(HostError::Docker {
                host: self.host.clone(),
                op: "exec",
                object,
                message: "the engine did not attach to the command".into(),
                retryable: true,
            });
        };

        let feed = async {
            let Some(source) = stdin else {
                return Ok(());
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = source
                    .reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| self.file_err(source.path, e))?;
                if n == 0 {
                    break;
                }
                // A command that stops reading early (or exits) closes the pipe; what it
                // made of that shows in its exit code, so this is not an error here.
                if input.write_all(&buf[..n]).await.is_err() {
                    return Ok(());
                }
            }
            // End of input: the command sees EOF on its stdin.
            let _ = input.shutdown().await;
            Ok(())
        };

        let drain = async {
            let mut out = Capped::default();
            let mut err = Capped::default();
            let mut sink = stdout;
            while let Some(chunk) = output.next().await {
                match chunk.map_err(|e| self.err("exec", &object, e))? {
                    bollard::container::LogOutput::StdErr { message } => err.push(&message),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => match &mut sink {
                        Some(s) => s
                            .writer
                            .write_all(&message)
                            .await
                            .map_err(|e| self.file_err(s.path, e))?,
                        None => out.push(&message),
                    },
                    bollard::container::LogOutput::StdIn { .. } => {}
                }
            }
            if let Some(s) = &mut sink {
                s.writer
                    .flush()
                    .await
                    .map_err(|e| self.file_err(s.path, e))?;
            }
            Ok::<_, HostError>((out.into_string(), err.into_string()))
        };

        // Whichever side fails first ends both: a sink that cannot take more would
        // otherwise leave the command blocked on its stdout and the feed on its stdin.
        let ((), (stdout, stderr)) = tokio::try_join!(feed, drain)?;
        let exit_code = self.exit_code(&created.id, &object).await?;
        Ok(Output {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// The stream ends when the command does, but the engine may record the exit a moment
    /// later.
    async fn exit_code(&self, exec_id: &str, object: &str) -> Result<i64> {
        for _ in 0..100 {
            let inspected = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|e| self.err("exec inspect", object, e))?;
            if inspected.running != Some(true) {
                if let Some(code) = inspected.exit_code {
                    return Ok(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HostError::Docker {
            host: self.host.clone(),
            op: "exec inspect",
            object: object.to_owned(),
            message: "the command's output ended but it has not exited".into(),
            retryable: true,
        })
    }

    /// A tar of `path` inside the container (running or not, volumes included).
    pub async fn download(&self, container: &str, path: &str, sink: Sink<'_>) -> Result<()> {
        let object = format!("{container}:{path}");
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut tar = self
            .docker
            .download_from_container(container, Some(options));
        while let Some(chunk) = tar.next().await {
            let chunk = chunk.map_err(|e| self.err("archive get", &object, e))?;
            sink.writer
                .write_all(&chunk)
                .await
                .map_err(|e| self.file_err(sink.path, e))?;
        }
        sink.writer
            .flush()
            .await
            .map_err(|e| self.file_err(sink.path, e))
    }

    /// Unpacks a tar, streamed from `file` on the host, into `path` inside the container
    /// (running or not).
    pub async fn upload(
        &self,
        container: &str,
        path: &str,
        tar: BoxStream<'static, std::io::Result<Bytes>>,
        file: &str,
    ) -> Result<()> {
        let object = format!("{container}:{path}");
        let options = UploadToContainerOptionsBuilder::new().path(path).build();
        // A read error ends the request body, and the engine's complaint about the cut
        // tar would hide the cause; keep the cause to report it instead.
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let seen = read_error.clone();
        let tar = tar.inspect(move |chunk| {
            if let Err(e) = chunk {
                if let Ok(mut slot) = seen.lock() {
                    *slot = Some(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
        });
        let sent = self
            .docker
            .upload_to_container(container, Some(options), bollard::body_try_stream(tar))
            .await;
        let read_error = read_error.lock().ok().and_then(|mut slot| slot.take());
        match (sent, read_error) {
            (_, Some(e)) => Err(self.file_err(file, e)),
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(self.err("archive put", &object, e)),
        }
    }

    /// Events of Berth's containers from `since` (unix seconds, the engine's clock) on.
    /// Asking from a moment ago, not from "now", means nothing is lost between this call
    /// and the stream's first poll; a repeated event only enqueues an environment twice.
    pub fn events(&self, since: i64) -> BoxStream<'static, Result<ContainerEvent>> {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("label", vec![LABEL_ENV]),
            ("event", EVENT_ACTIONS.to_vec()),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let host = self.host.clone();
        let events = self.docker.events(Some(options));
        // One error ends the stream: the caller re-subscribes (and resyncs) after backoff.
        stream::unfold(Some(Box::pin(events)), move |events| {
            let host = host.clone();
            async move {
                let mut events = events?;
                loop {
                    match events.next().await? {
                        Ok(message) => {
                            if let Some(event) = container_event(message) {
                                return Some((Ok(event), Some(events)));
                            }
                        }
                        Err(e) => return Some((Err(map_error(&host, "events", "", e)), None)),
                    }
                }
            }
        })
        .boxed()
    }
}

/// Collects a command's output up to [`OUTPUT_LIMIT`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Capped {
    fn push(&mut self, chunk: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }

    fn into_string(self) -> String {
        let mut s = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.truncated {
            s.push_str("\n[output truncated]\n");
        }
        s
    }
}

/// A local command's output as text, within [`OUTPUT_LIMIT`].
pub(crate) fn lossy_capped(bytes: &[u8]) -> String {
    let mut c = Capped::default();
    c.push(bytes);
    c.into_string()
}

/// The container's whole environment: its env files, read on the host through `host`
/// (so every kind of host reads them where the container runs), then the template's env.
///
/// # Errors
/// [`HostError::File`] for a missing or malformed env file, naming the line, never a value.
pub(crate) async fn container_env<H: Host + ?Sized>(
    host: &H,
    spec: &ContainerSpec,
) -> Result<Vec<String>> {
    let mut files = Vec::with_capacity(spec.template.env_files.len());
    for path in &spec.template.env_files {
        let file_err = |message: String| HostError::File {
            host: host.name().to_owned(),
            path: path.clone(),
            message: format!("env file of {}: {message}", spec.name),
        };
        let text = host
            .read_file(path)
            .await?
            .ok_or_else(|| file_err("does not exist".into()))?;
        files.push(parse_env_file(&text).map_err(file_err)?);
    }
    Ok(merge_env(files, &spec.template.env))
}

/// Commands can carry secrets in their arguments; errors name only the program.
fn first_word(cmd: &[String]) -> &str {
    cmd.first().map_or("", String::as_str)
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn server_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Maps a bollard error to a [`HostError`] naming the operation and the object.
///
/// Retryable: conflicts (409: "removal in progress", a name being freed), server errors
/// (5xx, "port is already allocated" among them: the caller picks another port), timeouts
/// and a lost connection. Not retryable: bad requests and what is missing (400, 404),
/// and a registry's "not found" or "denied".
pub(crate) fn map_error(host: &str, op: &'static str, object: &str, e: DockerError) -> HostError {
    let docker = |message: String, retryable: bool| HostError::Docker {
        host: host.to_owned(),
        op,
        object: object.to_owned(),
        message,
        retryable,
    };
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => docker(message, status_code == 409 || status_code >= 500),
        DockerError::DockerStreamError { error } => {
            let lower = error.to_ascii_lowercase();
            let permanent = [
                "not found",
                "manifest unknown",
                "unauthorized",
                "denied",
                "invalid reference",
            ]
            .iter()
            .any(|p| lower.contains(p));
            docker(error, !permanent)
        }
        DockerError::RequestTimeoutError => {
            docker("the engine did not answer in time".into(), true)
        }
        e @ (DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::SocketNotFoundError(_)) => HostError::Unreachable {
            host: host.to_owned(),
            message: format!("docker {op} {object}: {e}"),
        },
        other => docker(other.to_string(), false),
    }
}

/// The state a container summary shows; `None` for an exited container whose status text
/// does not give its exit code.
fn summary_state(
    state: Option<ContainerSummaryStateEnum>,
    status: Option<&str>,
) -> Option<ContainerState> {
    use ContainerSummaryStateEnum as S;
    match state {
        Some(S::RUNNING) => Some(ContainerState::Running),
        Some(S::CREATED) => Some(ContainerState::Created),
        Some(S::EXITED) => status
            .and_then(exit_code_of_status)
            .map(ContainerState::Exited),
        _ => Some(ContainerState::Other),
    }
}

/// `Exited (137) 5 seconds ago` → 137.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

fn inspect_state(c: &ContainerInspectResponse) -> ContainerState {
    use ContainerStateStatusEnum as S;
    let state = c.state.as_ref();
    match state.and_then(|s| s.status) {
        Some(S::RUNNING) => ContainerState::Running,
        Some(S::CREATED) => ContainerState::Created,
        Some(S::EXITED) => ContainerState::Exited(state.and_then(|s| s.exit_code).unwrap_or(0)),
        _ => ContainerState::Other,
    }
}

fn info_of(c: &ContainerInspectResponse) -> Option<ContainerInfo> {
    let config = c.config.as_ref()?;
    let labels: BTreeMap<String, String> = config
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    ContainerInfo::from_labels(
        c.id.as_deref().unwrap_or_default(),
        c.name.as_deref().unwrap_or_default(),
        config.image.as_deref().unwrap_or_default(),
        &labels,
        inspect_state(c),
    )
}

fn container_event(message: EventMessage) -> Option<ContainerEvent> {
    if message.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let attributes = message.actor?.attributes?;
    Some(ContainerEvent {
        env_name: attributes.get(LABEL_ENV)?.clone(),
        container: attributes.get("name")?.clone(),
        action: message.action?,
    })
}

fn endpoint(aliases: &[String]) -> EndpointSettings {
    EndpointSettings {
        aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
        ..Default::default()
    }
}

/// The engine's container config for `spec`; `env` is already merged (see [`merge_env`]).
pub(crate) fn container_config(spec: &ContainerSpec, env: Vec<String>) -> ContainerCreateBody {
    let t = &spec.template;
    let exposed: Vec<String> = t.ports.iter().map(|(p, _)| format!("{p}/tcp")).collect();
    // One-off containers (migrate) get no host ports: `host_ports` is shorter than
    // `ports`, and only the ports with a host port are published.
    let bindings: HashMap<String, Option<Vec<PortBinding>>> = t
        .ports
        .iter()
        .zip(&spec.host_ports)
        .map(|((container_port, address), host_port)| {
            let binding = PortBinding {
                host_ip: Some(address.clone()),
                host_port: Some(host_port.to_string()),
            };
            (format!("{container_port}/tcp"), Some(vec![binding]))
        })
        .collect();
    let mounts: Vec<DockerMount> = t
        .volumes
        .iter()
        .map(|m| DockerMount {
            source: Some(m.source.clone()),
            target: Some(m.target.clone()),
            typ: Some(if m.is_volume {
                MountType::VOLUME
            } else {
                MountType::BIND
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let first_network = t.networks.first();
    ContainerCreateBody {
        image: Some(t.image.clone()),
        entrypoint: t.command.clone(),
        cmd: spec.override_args.clone().or_else(|| t.args.clone()),
        env: Some(env),
        labels: Some(spec.labels().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: first_network.cloned(),
            // Berth repairs what dies, and records it; Docker restarting behind its back
            // would hide crashes from the rollout that caused them.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config: first_network.map(|net| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(net.clone(), endpoint(&spec.aliases))])),
        }),
        ..Default::default()
    }
}

/// Parses an env file: `KEY=VALUE` lines, blank lines and `#` comments ignored, values
/// taken literally (as `docker run --env-file` does: no quotes removed, no expansion).
/// Errors name the line, never its content: it may be a secret.
pub(crate) fn parse_env_file(text: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(text)
        .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))?;
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE", i + 1));
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "line {}: the variable name is empty or has spaces",
                i + 1
            ));
        }
        vars.push((key.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

/// The container's environment: env files in order, then the template's `env`, a later
/// definition of a name replacing an earlier one (as in Compose, where `environment`
/// overrides `env_file`).
pub(crate) fn merge_env(
    files: Vec<Vec<(String, String)>>,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in files.into_iter().flatten() {
        merged.insert(key, value);
    }
    merged.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The registry an image reference names, as keyed in a docker `config.json`.
pub(crate) fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `(fromImage, tag, local reference)` for the pull API: a digest pulls by digest (a tag
/// next to it is ignored, as the engine does); otherwise the tag is passed apart, because
/// a `fromImage` without one would pull every tag of the repository.
fn pull_ref(image: &str) -> (String, Option<String>, String) {
    match image.parse::<berth_api::values::ImageRef>() {
        Ok(r) => match r.digest {
            Some(d) => {
                let by_digest = format!("{}@{d}", r.repository);
                (by_digest.clone(), None, by_digest)
            }
            None => {
                let tag = r.tag.unwrap_or_else(|| "latest".into());
                let local = format!("{}:{tag}", r.repository);
                (r.repository, Some(tag), local)
            }
        },
        // Manifests are validated before they get here; let the engine judge anything else.
        Err(_) => (image.to_owned(), None, image.to_owned()),
    }
}

/// The repo digest (`repo@sha256:…`) of the image pulled as `image`, among the image's
/// `RepoDigests` (one per repository it was pulled from): the one of `image`'s own
/// repository. A reference that names a digest already is its own answer.
pub(crate) fn repo_digest_of(image: &str, repo_digests: &[String]) -> Option<String> {
    let wanted = image.parse::<berth_api::values::ImageRef>().ok()?;
    if let Some(d) = &wanted.digest {
        return Some(format!("{}@{d}", wanted.repository));
    }
    // The engine writes Docker Hub repositories short (`postgres`, `org/app`).
    let short = |repo: &str| {
        let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
        repo.strip_prefix("library/").unwrap_or(repo).to_owned()
    };
    repo_digests
        .iter()
        .find(|d| {
            d.split_once('@')
                .is_some_and(|(repo, _)| short(repo) == short(&wanted.repository))
        })
        .cloned()
}

/// Credentials for `registry` from a docker `config.json` (`auths.<registry>.auth`, the
/// base64 of `user:password`, or `username`/`password`/`identitytoken`). `None` when the
/// file has no entry for it. Errors never quote the file: it holds secrets.
pub(crate) fn credentials_for(
    config_json: &[u8],
    registry: &str,
) -> std::result::Result<Option<DockerCredentials>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let config: Config = serde_json::from_slice(config_json).map_err(|e| {
        format!(
            "not a docker config.json (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let wanted = normalize_registry(registry);
    let Some((key, entry)) = config
        .auths
        .iter()
        .find(|(key, _)| normalize_registry(key) == wanted)
    else {
        return Ok(None);
    };
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
        username = Some(user.to_owned());
        password = Some(pass.to_owned());
    }
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(key.clone()),
        ..Default::default()
    }))
}

/// `https://index.docker.io/v1/`, `docker.io` and `registry-1.docker.io` are one registry;
/// elsewhere a key may carry a scheme or a path.
fn normalize_registry(key: &str) -> &str {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mount, Role, Template};

    fn spec() -> ContainerSpec {
        let template = Template {
            image: "127.0.0.1:5000/berth/demo-app:v1".into(),
            command: Some(vec!["/demo-app".into()]),
            args: Some(vec!["serve".into()]),
            env: BTreeMap::from([("PORT".into(), "8080".into())]),
            env_files: vec!["/etc/app.env".into()],
            ports: vec![(8080, "127.0.0.1".into()), (9090, "0.0.0.0".into())],
            volumes: vec![
                Mount {
                    source: "data".into(),
                    is_volume: true,
                    target: "/data".into(),
                    read_only: false,
                },
                Mount {
                    source: "/etc/app".into(),
                    is_volume: false,
                    target: "/config".into(),
                    read_only: true,
                },
            ],
            networks: vec!["front".into(), "back".into()],
        };
        ContainerSpec {
            name: "web-r2-0".into(),
            env_name: "web".into(),
            revision: 2,
            role: Role::App,
            replica: Some(0),
            op: None,
            template_hash: template.hash(),
            template,
            host_ports: vec![20001, 20002],
            override_args: None,
            aliases: vec!["web".into()],
        }
    }

    #[test]
    fn env_files_skip_blanks_and_comments_and_keep_values_literally() {
        let text = b"# database\n\nDATABASE_URL=postgres://u:p@db/x\n  TOKEN=\"a=b\" \r\nEMPTY=\n";
        let vars = parse_env_file(text).unwrap();
        assert_eq!(
            vars,
            [
                ("DATABASE_URL".into(), "postgres://u:p@db/x".into()),
                ("TOKEN".into(), "\"a=b\" ".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
    }

    #[test]
    fn an_env_file_error_names_the_line_but_never_its_content() {
        let err = parse_env_file(b"A=1\nsecret-value-without-equals\n").unwrap_err();
        assert_eq!(err, "line 2: expected KEY=VALUE");
        let err = parse_env_file(b"=hunter2\n").unwrap_err();
        assert!(
            err.starts_with("line 1:") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(parse_env_file(b"A=\xff\n").is_err());
    }

    #[test]
    fn the_manifest_env_overrides_env_files_and_later_files_override_earlier() {
        let files = vec![
            vec![("A".into(), "file1".into()), ("B".into(), "file1".into())],
            vec![("B".into(), "file2".into())],
        ];
        let env = BTreeMap::from([("A".into(), "manifest".into())]);
        assert_eq!(merge_env(files, &env), ["A=manifest", "B=file2"]);
    }

    #[test]
    fn registry_credentials_are_found_by_host_whatever_the_key_looks_like() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret:with:colons");
        let config = format!(
            r#"{{"auths": {{"https://127.0.0.1:5000/v2/": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}}}}}"#
        );
        let c = credentials_for(
            config.as_bytes(),
            registry_of("127.0.0.1:5000/berth/app:v1"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.username.as_deref(), Some("ci"));
        assert_eq!(c.password.as_deref(), Some("s3cret:with:colons"));
        let hub = credentials_for(config.as_bytes(), registry_of("library/nginx:1"))
            .unwrap()
            .unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert!(credentials_for(config.as_bytes(), "ghcr.io")
            .unwrap()
            .is_none());
        assert!(credentials_for(b"{}", "ghcr.io").unwrap().is_none());
    }

    #[test]
    fn a_broken_credentials_file_is_reported_without_its_secrets() {
        let err = credentials_for(br#"{"auths": {"r:5000": {"auth": "%%hunter2"}}}"#, "r:5000")
            .unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("r:5000"), "{err}");
        let err = credentials_for(b"{\"auths\": hunter2", "r:5000").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_registry_is_the_first_path_part_only_when_it_looks_like_a_host() {
        assert_eq!(
            registry_of("127.0.0.1:5000/berth/demo-app:v1"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_of("localhost/app:v1"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/app@sha256:00"), "ghcr.io");
        assert_eq!(registry_of("library/postgres:15"), "docker.io");
        assert_eq!(registry_of("postgres:15"), "docker.io");
    }

    #[test]
    fn the_repo_digest_is_the_one_of_the_pulled_repository() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let digests = [
            format!("other.example/app@{}", d('b')),
            format!("127.0.0.1:5000/berth/demo-app@{}", d('a')),
        ];
        assert_eq!(
            repo_digest_of("127.0.0.1:5000/berth/demo-app:v1", &digests),
            Some(format!("127.0.0.1:5000/berth/demo-app@{}", d('a')))
        );
        assert_eq!(
            repo_digest_of(
                "docker.io/library/postgres:15",
                &[format!("postgres@{}", d('c'))]
            ),
            Some(format!("postgres@{}", d('c')))
        );
        assert_eq!(repo_digest_of("app:v1", &digests), None);
        assert_eq!(
            repo_digest_of(&format!("app:v1@{}", d('e')), &[]),
            Some(format!("app@{}", d('e')))
        );
    }

    #[test]
    fn a_pull_passes_the_tag_apart_and_a_digest_whole() {
        assert_eq!(
            pull_ref("127.0.0.1:5000/berth/demo-app:v1"),
            (
                "127.0.0.1:5000/berth/demo-app".into(),
                Some("v1".into()),
                "127.0.0.1:5000/berth/demo-app:v1".into()
            )
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let by_digest = format!("127.0.0.1:5000/berth/demo-app@{digest}");
        assert_eq!(
            pull_ref(&format!("127.0.0.1:5000/berth/demo-app:v1@{digest}")),
            (by_digest.clone(), None, by_digest)
        );
    }

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let server = |status_code: u16, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        let retryable = |e| map_error("h", "start", "web-r1-0", e).is_retryable();
        assert!(retryable(server(409, "removal in progress")));
        assert!(retryable(server(
            500,
            "Bind for 127.0.0.1:20001 failed: port is already allocated"
        )));
        assert!(!retryable(server(404, "No such image: app:v9")));
        assert!(!retryable(server(400, "invalid reference format")));
        assert!(retryable(DockerError::RequestTimeoutError));
        assert!(!retryable(DockerError::DockerStreamError {
            error: "manifest for app:v9 not found: manifest unknown".into()
        }));
        assert!(retryable(DockerError::DockerStreamError {
            error: "unexpected EOF".into()
        }));
        let e = map_error(
            "h",
            "start",
            "web-r1-0",
            server(500, "driver failed: port is already allocated"),
        );
        assert!(e.to_string().contains("port is already allocated"), "{e}");
        assert!(e.is_port_taken());
        let proxy = "Error starting userland proxy: listen tcp4 127.0.0.1:20001: bind: address already in use";
        assert!(map_error("h", "start", "web-r1-0", server(500, proxy)).is_port_taken());
        assert!(!map_error("h", "start", "web-r1-0", server(500, "oci runtime")).is_port_taken());
        assert!(e.to_string().contains("start web-r1-0"), "{e}");
        let lost = map_error(
            "h",
            "list",
            "berth.env",
            DockerError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            },
        );
        assert!(matches!(lost, HostError::Unreachable { .. }) && lost.is_retryable());
    }

    #[test]
    fn exit_codes_are_read_from_the_status_text() {
        assert_eq!(exit_code_of_status("Exited (137) 5 seconds ago"), Some(137));
        assert_eq!(
            exit_code_of_status("Exited (0) About a minute ago"),
            Some(0)
        );
        assert_eq!(exit_code_of_status("Up 3 seconds"), None);
        assert_eq!(
            summary_state(
                Some(ContainerSummaryStateEnum::EXITED),
                Some("Exited (2) now")
            ),
            Some(ContainerState::Exited(2))
        );
        assert_eq!(
            summary_state(Some(ContainerSummaryStateEnum::EXITED), Some("odd")),
            None
        );
        assert_eq!(
            summary_state(Some(ContainerSummaryStateEnum::PAUSED), None),
            Some(ContainerState::Other)
        );
    }

    #[test]
    fn the_container_config_follows_the_spec() {
        let s = spec();
        let c = container_config(&s, vec!["PORT=8080".into()]);
        assert_eq!(c.entrypoint, Some(vec!["/demo-app".to_string()]));
        assert_eq!(c.cmd, Some(vec!["serve".to_string()]));
        assert_eq!(c.env, Some(vec!["PORT=8080".to_string()]));
        assert_eq!(c.labels.as_ref().unwrap()["berth.port"], "20001");
        let hc = c.host_config.unwrap();
        let bindings = hc.port_bindings.unwrap();
        let b = bindings["8080/tcp"].as_ref().unwrap();
        assert_eq!(b[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b[0].host_port.as_deref(), Some("20001"));
        assert_eq!(
            bindings["9090/tcp"].as_ref().unwrap()[0]
                .host_port
                .as_deref(),
            Some("20002")
        );
        assert_eq!(hc.network_mode.as_deref(), Some("front"));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts[0].typ, Some(MountType::VOLUME));
        assert_eq!(mounts[1].typ, Some(MountType::BIND));
        assert_eq!(mounts[1].read_only, Some(true));
        let endpoints = c.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(
            endpoints.len(),
            1,
            "further networks are joined after create"
        );
        assert_eq!(endpoints["front"].aliases, Some(vec!["web".to_string()]));
    }

    #[test]
    fn a_one_off_container_replaces_the_args_and_publishes_nothing() {
        let mut s = spec();
        s.override_args = Some(vec!["migrate".into()]);
        s.host_ports.clear();
        let c = container_config(&s, vec![]);
        assert_eq!(c.entrypoint, Some(vec!["/demo-app".to_string()]));
        assert_eq!(c.cmd, Some(vec!["migrate".to_string()]));
        assert_eq!(c.host_config.unwrap().port_bindings, None);
        assert!(!c.labels.unwrap().contains_key("berth.port"));
    }

    #[test]
    fn events_of_berth_containers_become_container_events() {
        let message = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("die".into()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("name".to_string(), "web-r1-0".to_string()),
                    (LABEL_ENV.to_string(), "web".to_string()),
                ])),
            }),
            ..Default::default()
        };
        assert_eq!(
            container_event(message.clone()),
            Some(ContainerEvent {
                env_name: "web".into(),
                container: "web-r1-0".into(),
                action: "die".into()
            })
        );
        let image_event = EventMessage {
            typ: Some(EventMessageTypeEnum::IMAGE),
            ..message
        };
        assert_eq!(container_event(image_event), None);
    }
}
