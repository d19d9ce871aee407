//! `FakeHost`: an in-memory host for tests of the steps — deterministic, scriptable, and
//! able to fail any call on demand.
//!
//! It keeps the real hosts' rules where steps depend on them: creates are idempotent by
//! name, a container needs its image pulled and its env files present, starting two
//! containers on one host port fails with "port is already allocated", exec needs a
//! running container, and state changes emit the events Docker would.
//!
//! For the tests: everything is recorded ([`FakeHost::calls`], [`FakeHost::mutations`]),
//! the n-th mutating call can fail before or after its effect ([`FakeHost::fail_call`],
//! [`FakeHost::fail_call_after_effect`]), and any op can fail once
//! ([`FakeHost::fail_next`]).
//!
//! ```
//! # use berth_controller::host::{fake::FakeHost, Host, HostError};
//! # tokio_test_block_on(async {
//! let fake = FakeHost::new("vm-a");
//! fake.fail_call(1);
//! assert!(fake.pull("app:v1").await.is_err()); // the first mutating call fails...
//! assert!(fake.pull("app:v1").await.is_ok()); // ...and its retry succeeds
//! assert_eq!(fake.mutations(), ["pull app:v1", "pull app:v1"]);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

mod haproxy;
pub use haproxy::FakeHaproxy;

use super::engine::parse_env_file;
use super::{Conn, ContainerEvent, Created, Host, HostError, Output, Pulled, Result};
use crate::model::{ContainerInfo, ContainerSpec, ContainerState};

/// Answers one request on a port: the request's bytes in, the response's bytes out.
pub type Handler = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A minimal HTTP/1.1 response, for [`FakeHost::serve`] handlers.
pub fn http_response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} Fake\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub struct FakeHost {
    name: String,
    /// Set by [`FakeHost::lose_connection`]: what [`Host::lost`] resolves with.
    lost: tokio::sync::watch::Sender<Option<String>>,
    // A std Mutex: every call holds it for a few map operations and never across an
    // `.await`, which also makes each call atomic, as a test wants.
    state: Mutex<State>,
}

struct State {
    containers: BTreeMap<String, Container>,
    images: BTreeMap<String, String>,
    files: BTreeMap<String, (Vec<u8>, u32)>,
    logs: BTreeMap<String, String>,
    commands: Vec<(String, Output)>,
    execs: Vec<(String, Output)>,
    on_start: Vec<(String, ContainerState)>,
    servers: BTreeMap<u16, Handler>,
    haproxies: BTreeMap<String, FakeHaproxy>,
    fail_next: Vec<(String, HostError)>,
    fail_at: BTreeMap<usize, bool>,
    mutating: usize,
    calls: Vec<(bool, String)>,
    next_id: u64,
    events: broadcast::Sender<ContainerEvent>,
}

struct Container {
    id: String,
    spec: ContainerSpec,
    state: ContainerState,
}

impl Container {
    fn info(&self) -> ContainerInfo {
        let s = &self.spec;
        ContainerInfo {
            id: self.id.clone(),
            name: s.name.clone(),
            env_name: s.env_name.clone(),
            revision: s.revision,
            role: s.role,
            replica: s.replica,
            op: s.op.clone(),
            template_hash: s.template_hash.clone(),
            image: s.template.image.clone(),
            port: s.host_ports.first().copied(),
            state: self.state,
        }
    }
}

impl FakeHost {
    /// Makes [`Host::lost`] resolve, as an SSH host's does when its connection drops.
    pub fn lose_connection(&self, why: &str) {
        self.lost.send_replace(Some(why.to_owned()));
    }

    pub fn new(name: &str) -> FakeHost {
        FakeHost {
            name: name.to_owned(),
            lost: tokio::sync::watch::channel(None).0,
            state: Mutex::new(State {
                containers: BTreeMap::new(),
                images: BTreeMap::new(),
                files: BTreeMap::new(),
                logs: BTreeMap::new(),
                commands: Vec::new(),
                execs: Vec::new(),
                on_start: Vec::new(),
                servers: BTreeMap::new(),
                haproxies: BTreeMap::new(),
                fail_next: Vec::new(),
                fail_at: BTreeMap::new(),
                mutating: 0,
                calls: Vec::new(),
                next_id: 0,
                events: broadcast::channel(1024).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its state is
        // still what the next assertion should see.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- set-up, bypassing the call log and fault injection ----

    /// An image already on the host.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_owned(), image_id(image));
    }

    /// A container already on the host (created earlier, or by a previous "run").
    pub fn add_container(&self, spec: &ContainerSpec, state: ContainerState) {
        let mut s = self.lock();
        let id = s.new_id();
        s.containers.insert(
            spec.name.clone(),
            Container {
                id,
                spec: spec.clone(),
                state,
            },
        );
    }

    /// Changes a container's state as Docker would see it change (a crash, an exit);
    /// leaving `Running` emits `die`.
    ///
    /// # Panics
    /// When there is no such container: the test is wrong.
    pub fn set_state(&self, name: &str, state: ContainerState) {
        let mut s = self.lock();
        let c = s
            .containers
            .get_mut(name)
            .unwrap_or_else(|| panic!("set_state: no container {name} on the fake host"));
        let was = std::mem::replace(&mut c.state, state);
        let env = c.spec.env_name.clone();
        if was == ContainerState::Running && state != ContainerState::Running {
            s.emit(&env, name, "die");
        }
    }

    /// Removes a container behind Berth's back (drift), emitting `destroy`.
    pub fn delete_container(&self, name: &str) {
        let mut s = self.lock();
        if let Some(c) = s.containers.remove(name) {
            s.emit(&c.spec.env_name, name, "destroy");
        }
    }

    /// A file already on the host (an env file, a backup), mode 0600.
    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.lock()
            .files
            .insert(path.to_owned(), (data.to_vec(), 0o600));
    }

    pub fn set_logs(&self, container: &str, text: &str) {
        self.lock()
            .logs
            .insert(container.to_owned(), text.to_owned());
    }

    /// What `run` answers for a command starting with `prefix` (the longest matching
    /// prefix wins; unscripted commands succeed with no output).
    pub fn on_command(&self, prefix: &str, output: Output) {
        self.lock().commands.push((prefix.to_owned(), output));
    }

    /// What exec answers for a command (its words joined by spaces) starting with
    /// `prefix`. `exec_to_file` writes the scripted stdout into the file.
    pub fn on_exec(&self, prefix: &str, output: Output) {
        self.lock().execs.push((prefix.to_owned(), output));
    }

    /// The state a container whose name starts with `prefix` is in right after `start`:
    /// `Exited(0)` makes a one-off (migrate) container that has already finished.
    pub fn on_start(&self, prefix: &str, state: ContainerState) {
        self.lock().on_start.push((prefix.to_owned(), state));
    }

    /// Serves host port `port`: each connection's request goes to `handler`. If a
    /// container publishes that port, it answers only while the container runs.
    pub fn serve(&self, port: u16, handler: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) {
        self.lock().servers.insert(port, Arc::new(handler));
    }

    /// An HAProxy whose admin socket is `path` on the host.
    pub fn add_haproxy(&self, path: &str, haproxy: FakeHaproxy) {
        self.lock().haproxies.insert(path.to_owned(), haproxy);
    }

    /// An event, as if Docker reported it.
    pub fn push_event(&self, event: ContainerEvent) {
        let _ = self.lock().events.send(event);
    }

    /// Ends every event stream handed out so far, as a dropped connection does.
    pub fn end_events(&self) {
        self.lock().events = broadcast::channel(1024).0;
    }

    // ---- fault injection ----

    /// The next call of `op` (a trait method's name: "create", "start", "pull", ...) fails
    /// with `err`, with no effect.
    pub fn fail_next(&self, op: &str, err: HostError) {
        self.lock().fail_next.push((op.to_owned(), err));
    }

    /// The `n`-th mutating call (1-based, counted from the fake's creation; see
    /// [`FakeHost::mutating_calls`]) fails, retryably, with no effect.
    pub fn fail_call(&self, n: usize) {
        self.lock().fail_at.insert(n, false);
    }

    /// The `n`-th mutating call takes effect and then reports a failure, as when the
    /// connection drops before the answer: the retry must find the effect done.
    pub fn fail_call_after_effect(&self, n: usize) {
        self.lock().fail_at.insert(n, true);
    }

    // ---- observation ----

    /// How many mutating calls were made so far.
    pub fn mutating_calls(&self) -> usize {
        self.lock().mutating
    }

    /// Every call, in order, as `"<op> <target>"`: `"create web-r1-0"`,
    /// `"exec berth-lab-db pg_dump -Fc demo"`, `"write_file /etc/nginx/up.conf"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The calls that change something (not list, inspect, logs, reads, connect, events).
    pub fn mutations(&self) -> Vec<String> {
        let s = self.lock();
        s.calls
            .iter()
            .filter(|(mutating, _)| *mutating)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// How many times exactly this call (`"<op> <target>"`) was made.
    pub fn count(&self, call: &str) -> usize {
        self.lock().calls.iter().filter(|(_, c)| c == call).count()
    }

    pub fn container(&self, name: &str) -> Option<ContainerInfo> {
        self.lock().containers.get(name).map(Container::info)
    }

    /// The spec a container was created from.
    pub fn spec_of(&self, name: &str) -> Option<ContainerSpec> {
        self.lock().containers.get(name).map(|c| c.spec.clone())
    }

    pub fn has_image(&self, image: &str) -> bool {
        self.lock().images.contains_key(image)
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|(data, _)| data.clone())
    }

    pub fn file_mode(&self, path: &str) -> Option<u32> {
        self.lock().files.get(path).map(|(_, mode)| *mode)
    }

    /// Every file on the host with its contents, by path: for comparing end states.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let s = self.lock();
        s.files
            .iter()
            .map(|(p, (data, _))| (p.clone(), data.clone()))
            .collect()
    }

    /// Every image reference on the host.
    pub fn images(&self) -> BTreeSet<String> {
        self.lock().images.keys().cloned().collect()
    }
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("fake{:060}", self.next_id)
    }

    fn emit(&self, env: &str, container: &str, action: &str) {
        // No subscriber is fine: nobody listens yet.
        let _ = self.events.send(ContainerEvent {
            env_name: env.to_owned(),
            container: container.to_owned(),
            action: action.to_owned(),
        });
    }

    /// Records the call and applies injected faults. `Ok(Some(err))`: do the effect, then
    /// fail with `err`.
    fn begin(
        &mut self,
        host: &str,
        op: &'static str,
        target: &str,
        mutating: bool,
    ) -> Result<Option<HostError>> {
        self.calls.push((mutating, format!("{op} {target}")));
        if mutating {
            self.mutating += 1;
        }
        if let Some(i) = self.fail_next.iter().position(|(o, _)| o == op) {
            return Err(self.fail_next.remove(i).1);
        }
        if !mutating {
            return Ok(None);
        }
        let injected = || HostError::Docker {
            host: host.to_owned(),
            op,
            object: target.to_owned(),
            message: format!("injected fault at mutating call {}", self.mutating),
            retryable: true,
        };
        match self.fail_at.remove(&self.mutating) {
            Some(false) => Err(injected()),
            Some(true) => Ok(Some(injected())),
            None => Ok(None),
        }
    }

    fn scripted(scripts: &[(String, Output)], text: &str) -> Output {
        scripts
            .iter()
            .filter(|(prefix, _)| text.starts_with(prefix.as_str()))
            // The longest prefix wins; among equals, the latest.
            .fold(None::<&(String, Output)>, |best, s| match best {
                Some(b) if b.0.len() > s.0.len() => Some(b),
                _ => Some(s),
            })
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }
}

/// The effect's result, or the error injected after it.
fn finish<T>(after: Option<HostError>, result: Result<T>) -> Result<T> {
    match after {
        Some(err) => result.and(Err(err)),
        None => result,
    }
}

fn image_id(image: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(image.as_bytes())))
}

impl FakeHost {
    fn docker_err(
        &self,
        op: &'static str,
        object: &str,
        message: String,
        retryable: bool,
    ) -> HostError {
        HostError::Docker {
            host: self.name.clone(),
            op,
            object: object.to_owned(),
            message,
            retryable,
        }
    }

    fn no_container(&self, op: &'static str, name: &str) -> HostError {
        self.docker_err(op, name, format!("No such container: {name}"), false)
    }

    fn file_err(&self, path: &str, message: &str) -> HostError {
        HostError::File {
            host: self.name.clone(),
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }

    /// The container must exist and run, as for a Docker exec.
    fn exec_in(
        &self,
        s: &State,
        op: &'static str,
        container: &str,
        cmd: &[String],
    ) -> Result<Output> {
        match s.containers.get(container) {
            None => Err(self.no_container(op, container)),
            Some(c) if c.state != ContainerState::Running => Err(self.docker_err(
                op,
                container,
                format!("Container {container} is not running"),
                true,
            )),
            Some(_) => Ok(State::scripted(&s.execs, &cmd.join(" "))),
        }
    }
}

#[async_trait]
impl Host for FakeHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn list(&self, env: &str) -> Result<Vec<ContainerInfo>> {
        let mut s = self.lock();
        s.begin(&self.name, "list", env, false)?;
        Ok(s.containers
            .values()
            .filter(|c| c.spec.env_name == env)
            .map(Container::info)
            .collect())
    }

    async fn list_all(&self) -> Result<Vec<ContainerInfo>> {
        let mut s = self.lock();
        s.begin(&self.name, "list_all", "", false)?;
        Ok(s.containers.values().map(Container::info).collect())
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
        let mut s = self.lock();
        s.begin(&self.name, "inspect", name, false)?;
        Ok(s.containers.get(name).map(Container::info))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Created> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "create", &spec.name, true)?;
        let result = (|| {
            if let Some(c) = s.containers.get(&spec.name) {
                return Ok(Created::Existed(c.info()));
            }
            if !s.images.contains_key(&spec.template.image) {
                return Err(self.docker_err(
                    "create",
                    &spec.name,
                    format!(
                        "image {} is not on the host (pull it first)",
                        spec.template.image
                    ),
                    false,
                ));
            }
            for path in &spec.template.env_files {
                let (text, _) = s
                    .files
                    .get(path)
                    .ok_or_else(|| self.file_err(path, "env file does not exist"))?;
                parse_env_file(text).map_err(|m| self.file_err(path, &m))?;
            }
            let id = s.new_id();
            s.containers.insert(
                spec.name.clone(),
                Container {
                    id,
                    spec: spec.clone(),
                    state: ContainerState::Created,
                },
            );
            s.emit(&spec.env_name, &spec.name, "create");
            Ok(Created::Created)
        })();
        finish(after, result)
    }

    async fn start(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "start", name, true)?;
        let result = (|| {
            let c = s
                .containers
                .get(name)
                .ok_or_else(|| self.no_container("start", name))?;
            if c.state == ContainerState::Running {
                return Ok(());
            }
            let ports: BTreeSet<u16> = c.spec.host_ports.iter().copied().collect();
            let taken = s.containers.values().find_map(|other| {
                let running = other.state == ContainerState::Running && other.spec.name != name;
                running
                    .then(|| other.spec.host_ports.iter().find(|p| ports.contains(p)))
                    .flatten()
            });
            if let Some(port) = taken {
                return Err(self.docker_err(
                    "start",
                    name,
                    format!("Bind for 127.0.0.1:{port} failed: port is already allocated"),
                    true,
                ));
            }
            let state = s
                .on_start
                .iter()
                .rev()
                .find(|(prefix, _)| name.starts_with(prefix.as_str()))
                .map_or(ContainerState::Running, |(_, st)| *st);
            let env = c.spec.env_name.clone();
            if let Some(c) = s.containers.get_mut(name) {
                c.state = state;
            }
            s.emit(&env, name, "start");
            if state != ContainerState::Running {
                s.emit(&env, name, "die");
            }
            Ok(())
        })();
        finish(after, result)
    }

    async fn stop(&self, name: &str, _grace: Duration) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "stop", name, true)?;
        let stopped = match s.containers.get_mut(name) {
            Some(c) if matches!(c.state, ContainerState::Running | ContainerState::Other) => {
                c.state = ContainerState::Exited(0);
                Some(c.spec.env_name.clone())
            }
            _ => None,
        };
        if let Some(env) = stopped {
            s.emit(&env, name, "die");
            s.emit(&env, name, "stop");
        }
        finish(after, Ok(()))
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "remove", name, true)?;
        if let Some(c) = s.containers.remove(name) {
            if c.state == ContainerState::Running {
                s.emit(&c.spec.env_name, name, "die");
            }
            s.emit(&c.spec.env_name, name, "destroy");
        }
        finish(after, Ok(()))
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String> {
        let mut s = self.lock();
        s.begin(&self.name, "logs", name, false)?;
        if !s.containers.contains_key(name) {
            return Err(self.no_container("logs", name));
        }
        let text = s.logs.get(name).cloned().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(tail);
        Ok(lines[from..].iter().map(|l| format!("{l}\n")).collect())
    }

    async fn pull(&self, image: &str) -> Result<Pulled> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "pull", image, true)?;
        let id = image_id(image);
        s.images.insert(image.to_owned(), id.clone());
        // As a registry would: the content's digest, under the image's repository.
        let repo_digest = image
            .parse::<berth_api::values::ImageRef>()
            .ok()
            .map(|r| format!("{}@{id}", r.repository));
        if let Some(d) = &repo_digest {
            s.images.insert(d.clone(), id.clone());
        }
        finish(after, Ok(Pulled { id, repo_digest }))
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "remove_image", image, true)?;
        if !s
            .containers
            .values()
            .any(|c| c.spec.template.image == image)
        {
            s.images.remove(image);
        }
        finish(after, Ok(()))
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<Output> {
        let mut s = self.lock();
        let after = s.begin(
            &self.name,
            "exec",
            &format!("{container} {}", cmd.join(" ")),
            true,
        )?;
        let result = self.exec_in(&s, "exec", container, cmd);
        finish(after, result)
    }

    async fn exec_to_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output> {
        let mut s = self.lock();
        let target = format!("{container} {} > {path}", cmd.join(" "));
        let after = s.begin(&self.name, "exec_to_file", &target, true)?;
        let result = self
            .exec_in(&s, "exec_to_file", container, cmd)
            .map(|mut out| {
                let data = std::mem::take(&mut out.stdout).into_bytes();
                s.files.insert(path.to_owned(), (data, 0o600));
                out
            });
        finish(after, result)
    }

    async fn exec_from_file(&self, container: &str, cmd: &[String], path: &str) -> Result<Output> {
        let mut s = self.lock();
        let target = format!("{container} {} < {path}", cmd.join(" "));
        let after = s.begin(&self.name, "exec_from_file", &target, true)?;
        let result = if s.files.contains_key(path) {
            self.exec_in(&s, "exec_from_file", container, cmd)
        } else {
            Err(self.file_err(path, "No such file or directory"))
        };
        finish(after, result)
    }

    async fn archive_to_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(
            &self.name,
            "archive_to_file",
            &format!("{container}:{path} > {file}"),
            true,
        )?;
        let result = if s.containers.contains_key(container) {
            let tar = format!("tar of {container}:{path}").into_bytes();
            s.files.insert(file.to_owned(), (tar, 0o600));
            Ok(())
        } else {
            Err(self.no_container("archive_to_file", container))
        };
        finish(after, result)
    }

    async fn archive_from_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(
            &self.name,
            "archive_from_file",
            &format!("{container}:{path} < {file}"),
            true,
        )?;
        let result = if !s.containers.contains_key(container) {
            Err(self.no_container("archive_from_file", container))
        } else if !s.files.contains_key(file) {
            Err(self.file_err(file, "No such file or directory"))
        } else {
            Ok(())
        };
        finish(after, result)
    }

    async fn run(&self, command: &str) -> Result<Output> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "run", command, true)?;
        let output = State::scripted(&s.commands, command);
        finish(after, Ok(output))
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "write_file", path, true)?;
        s.files.insert(path.to_owned(), (data.to_vec(), mode));
        finish(after, Ok(()))
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut s = self.lock();
        s.begin(&self.name, "read_file", path, false)?;
        Ok(s.files.get(path).map(|(data, _)| data.clone()))
    }

    async fn file_digest(&self, path: &str) -> Result<Option<(u64, String)>> {
        let mut s = self.lock();
        s.begin(&self.name, "file_digest", path, false)?;
        Ok(s.files
            .get(path)
            .map(|(data, _)| (data.len() as u64, hex::encode(Sha256::digest(data)))))
    }

    async fn remove_file(&self, path: &str) -> Result<()> {
        let mut s = self.lock();
        let after = s.begin(&self.name, "remove_file", path, true)?;
        s.files.remove(path);
        finish(after, Ok(()))
    }

    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
        let handler = {
            let mut s = self.lock();
            s.begin(&self.name, "connect", &format!("{addr}:{port}"), false)?;
            let publisher_down = s
                .containers
                .values()
                .any(|c| c.spec.host_ports.contains(&port) && c.state != ContainerState::Running);
            s.servers.get(&port).filter(|_| !publisher_down).cloned()
        };
        let handler = handler.ok_or_else(|| HostError::Connect {
            host: self.name.clone(),
            port,
            message: format!("{addr}: Connection refused"),
        })?;
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let request = read_request(&mut server).await;
            if !request.is_empty() {
                let _ = server.write_all(&handler(&request)).await;
            }
            let _ = server.shutdown().await;
        });
        Ok(Box::new(client))
    }

    async fn connect_unix(&self, path: &str) -> Result<Box<dyn Conn>> {
        let haproxy = {
            let mut s = self.lock();
            s.begin(&self.name, "connect_unix", path, false)?;
            s.haproxies.get(path).cloned()
        };
        let haproxy = haproxy.ok_or_else(|| HostError::File {
            host: self.name.clone(),
            path: path.to_owned(),
            message: "cannot connect: No such file or directory".into(),
        })?;
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            // Non-interactive mode, as Berth uses it: one line in, one answer out.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while let Ok(1) = server.read(&mut byte).await {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            let answer = haproxy.answer(String::from_utf8_lossy(&line).trim());
            let _ = server.write_all(answer.as_bytes()).await;
            let _ = server.shutdown().await;
        });
        Ok(Box::new(client))
    }

    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        let mut s = self.lock();
        s.begin(&self.name, "events", "", false)?;
        let rx = s.events.subscribe();
        Ok(stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((Ok(event), rx)),
                    // A slow test reader missed some; the reconciler resyncs anyway.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed())
    }

    async fn engine_version(&self) -> Result<String> {
        let mut s = self.lock();
        s.begin(&self.name, "engine_version", "", false)?;
        Ok("fake".to_owned())
    }

    async fn lost(&self) -> String {
        let mut rx = self.lost.subscribe();
        let why = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|why| why.clone());
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }
}

/// One HTTP request (headers, then `Content-Length` bytes of body), or whatever arrived
/// before the client closed its side.
async fn read_request(conn: &mut tokio::io::DuplexStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&request, b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let body_len = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + body_len {
                return request;
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return request,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Role, Template};

    fn spec(name: &str, port: u16) -> ContainerSpec {
        let template = Template {
            image: "app:v1".into(),
            command: None,
            args: None,
            env: BTreeMap::new(),
            env_files: vec![],
            ports: vec![(8080, "127.0.0.1".into())],
            volumes: vec![],
            networks: vec![],
        };
        ContainerSpec {
            name: name.into(),
            env_name: "web".into(),
            revision: 1,
            role: Role::App,
            replica: Some(0),
            op: None,
            template_hash: template.hash(),
            template,
            host_ports: vec![port],
            override_args: None,
            aliases: vec![],
        }
    }

    #[tokio::test]
    async fn creating_twice_creates_once_and_returns_what_exists() {
        let fake = FakeHost::new("h");
        fake.add_image("app:v1");
        let s = spec("web-r1-0", 20000);
        assert!(matches!(fake.create(&s).await.unwrap(), Created::Created));
        match fake.create(&s).await.unwrap() {
            Created::Existed(info) => assert_eq!(info.template_hash, s.template_hash),
            Created::Created => panic!("created twice"),
        }
        assert_eq!(fake.list("web").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_container_needs_its_image_and_its_env_files() {
        let fake = FakeHost::new("h");
        let mut s = spec("web-r1-0", 20000);
        let err = fake.create(&s).await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("pull it first"),
            "{err}"
        );
        fake.add_image("app:v1");
        s.template.env_files = vec!["/env/web".into()];
        assert!(matches!(
            fake.create(&s).await.unwrap_err(),
            HostError::File { .. }
        ));
        fake.put_file("/env/web", b"A=1\n");
        fake.create(&s).await.unwrap();
    }

    #[tokio::test]
    async fn start_stop_and_remove_are_idempotent() {
        let fake = FakeHost::new("h");
        fake.add_container(&spec("web-r1-0", 20000), ContainerState::Created);
        for _ in 0..2 {
            fake.start("web-r1-0").await.unwrap();
        }
        assert_eq!(
            fake.container("web-r1-0").unwrap().state,
            ContainerState::Running
        );
        for _ in 0..2 {
            fake.stop("web-r1-0", Duration::from_secs(1)).await.unwrap();
        }
        assert_eq!(
            fake.container("web-r1-0").unwrap().state,
            ContainerState::Exited(0)
        );
        for _ in 0..2 {
            fake.remove("web-r1-0").await.unwrap();
        }
        fake.stop("web-r1-0", Duration::ZERO).await.unwrap();
        assert!(fake.start("web-r1-0").await.is_err());
        assert_eq!(fake.count("start web-r1-0"), 3);
    }

    #[tokio::test]
    async fn two_running_containers_cannot_share_a_host_port() {
        let fake = FakeHost::new("h");
        fake.add_container(&spec("web-r1-0", 20000), ContainerState::Running);
        fake.add_container(&spec("web-r2-0", 20000), ContainerState::Created);
        let err = fake.start("web-r2-0").await.unwrap_err();
        assert!(
            err.to_string().contains("port is already allocated"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_nth_mutating_call_fails_before_or_after_its_effect() {
        let fake = FakeHost::new("h");
        fake.fail_call(2);
        fake.fail_call_after_effect(3);
        fake.pull("app:v1").await.unwrap();
        let s = spec("web-r1-0", 20000);
        assert!(fake.create(&s).await.unwrap_err().is_retryable());
        assert!(fake.container("web-r1-0").is_none(), "no effect before");
        assert!(fake.create(&s).await.is_err());
        assert!(fake.container("web-r1-0").is_some(), "effect after");
        assert!(matches!(
            fake.create(&s).await.unwrap(),
            Created::Existed(_)
        ));
        assert_eq!(fake.mutating_calls(), 4);
        fake.fail_next(
            "list",
            HostError::Unreachable {
                host: "h".into(),
                message: "gone".into(),
            },
        );
        assert!(fake.list("web").await.is_err());
        assert!(fake.list("web").await.is_ok());
    }

    #[tokio::test]
    async fn scripted_commands_answer_by_longest_prefix_and_are_recorded() {
        let fake = FakeHost::new("h");
        fake.on_command(
            "nginx",
            Output {
                exit_code: 1,
                ..Output::default()
            },
        );
        fake.on_command("nginx -s reload", Output::default());
        assert_eq!(fake.run("nginx -s reload").await.unwrap().exit_code, 0);
        assert_eq!(fake.run("nginx -t").await.unwrap().exit_code, 1);
        assert_eq!(fake.run("true").await.unwrap(), Output::default());
        assert_eq!(
            fake.mutations(),
            ["run nginx -s reload", "run nginx -t", "run true"]
        );
    }

    #[tokio::test]
    async fn exec_to_file_writes_the_scripted_output_privately() {
        let fake = FakeHost::new("h");
        let mut db = spec("db", 5432);
        db.env_name = "db".into();
        fake.add_container(&db, ContainerState::Running);
        let dump = Output {
            stdout: "PGDMP...".into(),
            ..Output::default()
        };
        fake.on_exec("pg_dump", dump);
        let cmd = ["pg_dump".to_string(), "-Fc".into()];
        let out = fake.exec_to_file("db", &cmd, "/b/1.dump").await.unwrap();
        assert_eq!(out, Output::default());
        assert_eq!(fake.file("/b/1.dump").unwrap(), b"PGDMP...");
        assert_eq!(fake.file_mode("/b/1.dump"), Some(0o600));
        let (size, digest) = fake.file_digest("/b/1.dump").await.unwrap().unwrap();
        assert_eq!((size, digest.len()), (8, 64));
        fake.set_state("db", ContainerState::Exited(1));
        assert!(
            fake.exec("db", &cmd).await.is_err(),
            "exec needs a running container"
        );
    }

    #[tokio::test]
    async fn a_served_port_answers_http_only_while_its_container_runs() {
        let fake = FakeHost::new("h");
        fake.add_container(&spec("web-r1-0", 20000), ContainerState::Running);
        fake.serve(20000, |req| {
            let ok = req.starts_with(b"GET /health ");
            http_response(if ok { 200 } else { 404 }, "ok")
        });
        let mut conn = fake.connect("127.0.0.1", 20000).await.unwrap();
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        fake.set_state("web-r1-0", ContainerState::Exited(1));
        assert!(fake.connect("127.0.0.1", 20000).await.is_err());
        assert!(fake.connect("127.0.0.1", 20001).await.is_err());
    }

    #[tokio::test]
    async fn state_changes_reach_the_event_stream() {
        let fake = FakeHost::new("h");
        let mut events = fake.events().await.unwrap();
        fake.add_container(&spec("web-r1-0", 20000), ContainerState::Running);
        fake.set_state("web-r1-0", ContainerState::Exited(137));
        let e = events.next().await.unwrap().unwrap();
        assert_eq!((e.env_name.as_str(), e.action.as_str()), ("web", "die"));
        fake.end_events();
        assert!(events.next().await.is_none());
    }
}
