//! The host table: one entry per Host of the manifests, each kept connected by a task of
//! its own, so that one unreachable host stalls nothing else.
//!
//! # Guarantees
//! - The table's lock is a std `Mutex` held for map operations only, never across I/O:
//!   [`HostTable::get`] is not even `async`. An environment whose host is not connected
//!   gets [`Unavailable`] at once, never a wait for the connection.
//! - Hosts connect independently and in parallel, retrying with exponential backoff and
//!   jitter ([`super::retry`]); each check is bounded by a timeout, so a socket that
//!   accepts and never answers costs its own task a timeout, nobody else anything.
//! - When a host connects, the controller is told ([`Wake::HostUp`]) and re-enqueues the
//!   environments placed there.
//! - A Host whose spec changes is reconnected: its entry (connection task, probe monitor,
//!   Docker-event watcher) is dropped and a fresh one starts. An entry's tasks carry its
//!   generation, so a task aborted while past its last `.await` cannot write over its
//!   successor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_api::values::Address;
use berth_api::HostSpec;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::act::now_millis;
use super::host_status::{HostPhase, HostStatus};
use super::retry::Backoffs;
use super::Connected;
use crate::exec::probe::{Flip, Monitor};
use crate::host::local::LocalHost;
use crate::host::ssh::SshHost;
use crate::host::{Host, HostError};
use crate::op::Millis;

/// How long one connection attempt (API negotiation and a ping) may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connected host is checked, and how long a check may take.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Before the Docker-event stream is opened again after it ended.
const EVENTS_RETRY: Duration = Duration::from_secs(2);

/// Opens a connection to a host ([`LocalHost::connect`] or [`SshHost::connect`]). A
/// parameter so that tests can connect to fakes that are slow or never answer.
pub(super) type Connector = Arc<
    dyn Fn(String, HostSpec) -> BoxFuture<'static, crate::host::Result<Arc<dyn Host>>>
        + Send
        + Sync,
>;

/// Connects to a host by its address: the local socket or SSH.
pub(super) fn default_connector() -> Connector {
    Arc::new(|name, spec| {
        Box::pin(async move {
            let host: Arc<dyn Host> = match spec.address {
                Address::Local => Arc::new(LocalHost::connect(&name, &spec).await?),
                Address::Ssh { .. } => Arc::new(SshHost::connect(&name, &spec).await?),
            };
            Ok(host)
        })
    })
}

/// What the host table asks of the controller.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// A Docker event concerns this environment.
    Env(String),
    /// This host just connected: its environments can proceed.
    HostUp(String),
}

/// Why an environment's host cannot be used right now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unavailable {
    Connecting {
        host: String,
    },
    Unreachable {
        host: String,
        error: String,
        retry_in: Duration,
    },
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Connecting { host } => {
                write!(f, "host {host}: connecting to the Docker engine")
            }
            Unavailable::Unreachable {
                host,
                error,
                retry_in,
            } => write!(
                f,
                "host {host} unreachable: {error}; retrying in {} s",
                retry_in.as_secs_f64().ceil()
            ),
        }
    }
}

struct Entry {
    spec: HostSpec,
    generation: u64,
    conn: Option<Connected>,
    phase: HostPhase,
    docker_version: Option<String>,
    api_version: Option<String>,
    last_error: Option<String>,
    last_seen: Option<Millis>,
    rtt: Option<Duration>,
    /// When `phase` last changed.
    since: Millis,
    retry_at: Option<Instant>,
    /// The task that connects and checks the host.
    keeper: Option<AbortHandle>,
    /// The task that turns Docker events into [`Wake::Env`], while connected.
    events: Option<AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The monitor inside `conn` stops its probes when its last clone goes.
        for task in [self.keeper.take(), self.events.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl Entry {
    fn status(&self, name: &str) -> HostStatus {
        HostStatus {
            name: name.to_owned(),
            address: self.spec.address.to_string(),
            state: self.phase,
            reachable: self.phase == HostPhase::Reachable,
            docker_version: self.docker_version.clone(),
            api_version: self.api_version.clone(),
            last_error: self.last_error.clone(),
            last_seen: self.last_seen.map(crate::ctl::output::utc),
            rtt_ms: self.rtt.map(|d| d.as_secs_f64() * 1000.0),
            since: Some(crate::ctl::output::utc(self.since)),
        }
    }

    /// Moves to `phase`, noting when if it is a change.
    fn set_phase(&mut self, phase: HostPhase) {
        if self.phase != phase {
            self.phase = phase;
            self.since = now_millis();
        }
    }
}

pub(super) struct HostTable {
    entries: Mutex<Inner>,
    connector: Connector,
    flips: UnboundedSender<Flip>,
    wake: UnboundedSender<Wake>,
    /// Notified on every change of what the status file shows.
    pub(super) changed: Notify,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Entry>,
    next_generation: u64,
}

impl HostTable {
    pub(super) fn new(
        connector: Connector,
        flips: UnboundedSender<Flip>,
        wake: UnboundedSender<Wake>,
    ) -> Arc<HostTable> {
        Arc::new(HostTable {
            entries: Mutex::new(Inner::default()),
            connector,
            flips,
            wake,
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is a few map operations: nothing is left half-done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the table match the manifests' hosts: new or changed hosts (re)connect,
    /// removed ones are dropped. Must be called inside the runtime.
    pub(super) fn sync<'a>(
        self: &Arc<Self>,
        hosts: impl IntoIterator<Item = (&'a str, &'a HostSpec)>,
    ) {
        let mut inner = self.lock();
        let mut keep = Vec::new();
        for (name, spec) in hosts {
            keep.push(name.to_owned());
            self.ensure(&mut inner, name, spec);
        }
        inner.by_name.retain(|name, _| keep.contains(name));
        drop(inner);
        self.changed.notify_one();
    }

    /// The connected host `name`, or why not, at once. A host not in the table yet, or
    /// whose spec differs from `spec`, starts (re)connecting.
    pub(super) fn get(
        self: &Arc<Self>,
        name: &str,
        spec: &HostSpec,
    ) -> Result<Connected, Unavailable> {
        let mut inner = self.lock();
        let started = self.ensure(&mut inner, name, spec);
        let e = &inner.by_name[name];
        let answer = match (&e.conn, e.phase) {
            (Some(c), _) => Ok(c.clone()),
            (None, _) => match (&e.last_error, e.retry_at) {
                (Some(error), Some(at)) => Err(Unavailable::Unreachable {
                    host: name.to_owned(),
                    error: error.clone(),
                    retry_in: at.saturating_duration_since(Instant::now()),
                }),
                _ => Err(Unavailable::Connecting {
                    host: name.to_owned(),
                }),
            },
        };
        drop(inner);
        if started {
            self.changed.notify_one();
        }
        answer
    }

    /// Every host's status, sorted by name.
    pub(super) fn statuses(&self) -> Vec<HostStatus> {
        let inner = self.lock();
        let mut out: Vec<HostStatus> = inner.by_name.iter().map(|(n, e)| e.status(n)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Starts an entry for `name` unless one with the same spec exists; true if started.
    fn ensure(self: &Arc<Self>, inner: &mut Inner, name: &str, spec: &HostSpec) -> bool {
        if inner.by_name.get(name).is_some_and(|e| e.spec == *spec) {
            return false;
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let me = self.clone();
        let keeper = tokio::spawn(me.keep_connected(name.to_owned(), spec.clone(), generation))
            .abort_handle();
        if inner.by_name.contains_key(name) {
            info!(host = name, "host spec changed: reconnecting");
        }
        // Replacing the entry drops the old one: its tasks are aborted.
        inner.by_name.insert(
            name.to_owned(),
            Entry {
                spec: spec.clone(),
                generation,
                conn: None,
                phase: HostPhase::Connecting,
                docker_version: None,
                api_version: None,
                last_error: None,
                last_seen: None,
                rtt: None,
                since: now_millis(),
                retry_at: None,
                keeper: Some(keeper),
                events: None,
            },
        );
        true
    }

    /// Applies `f` to the entry of `name` if it is still generation `generation`.
    fn update(&self, name: &str, generation: u64, f: impl FnOnce(&mut Entry)) -> bool {
        let mut inner = self.lock();
        let current = match inner.by_name.get_mut(name) {
            Some(e) if e.generation == generation => {
                f(e);
                true
            }
            _ => false,
        };
        drop(inner);
        if current {
            self.changed.notify_one();
        }
        current
    }

    /// Connects, then checks the host every [`CHECK_EVERY`]; on any failure, waits its
    /// backoff and starts over. Runs until its entry is dropped (which aborts it).
    async fn keep_connected(self: Arc<Self>, name: String, spec: HostSpec, generation: u64) {
        let mut backoff = Backoffs::default();
        loop {
            let failure = match self.connect(&name, &spec).await {
                Ok((host, version, rtt)) => {
                    if !self.connected(&name, &spec, generation, host.clone(), version, rtt) {
                        return;
                    }
                    backoff.reset(&name);
                    info!(host = %name, "connected to the Docker engine");
                    let _ = self.wake.send(Wake::HostUp(name.clone()));
                    loop {
                        // A connection known lost (SSH) is reconnected at once, not at
                        // the next check.
                        tokio::select! {
                            () = tokio::time::sleep(CHECK_EVERY) => {}
                            why = host.lost() => break why,
                        }
                        match check(host.as_ref()).await {
                            Ok((version, rtt)) => {
                                let seen = self.update(&name, generation, |e| {
                                    e.docker_version = Some(version);
                                    e.last_seen = Some(now_millis());
                                    e.rtt = Some(rtt);
                                });
                                if !seen {
                                    return;
                                }
                            }
                            Err(message) => break message,
                        }
                    }
                }
                Err(message) => message,
            };
            let delay = backoff.next(&name);
            warn!(host = %name, "unreachable (retry in {delay:?}): {failure}");
            let current = self.update(&name, generation, |e| {
                // Environments stop using the lost connection at once; the monitor's
                // probes stop with its last clone, the event watcher now.
                e.conn = None;
                if let Some(events) = e.events.take() {
                    events.abort();
                }
                e.set_phase(HostPhase::Unreachable);
                e.last_error = Some(failure);
                e.retry_at = Some(Instant::now() + delay);
            });
            if !current {
                return;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection attempt and a first check, bounded by [`CONNECT_TIMEOUT`].
    async fn connect(
        &self,
        name: &str,
        spec: &HostSpec,
    ) -> Result<(Arc<dyn Host>, String, Duration), String> {
        let host = tokio::time::timeout(
            CONNECT_TIMEOUT,
            (self.connector)(name.to_owned(), spec.clone()),
        )
        .await
        .map_err(|_| {
            format!(
                "the Docker engine did not answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| reason(&e))?;
        let (version, rtt) = check(host.as_ref()).await?;
        Ok((host, version, rtt))
    }

    /// Records a new connection (with its probe monitor and event watcher); false if the
    /// entry was replaced meanwhile.
    fn connected(
        self: &Arc<Self>,
        name: &str,
        spec: &HostSpec,
        generation: u64,
        host: Arc<dyn Host>,
        version: String,
        rtt: Duration,
    ) -> bool {
        let api_version = host.engine_api_version();
        let conn = Connected {
            host: host.clone(),
            monitor: Arc::new(Monitor::with_notify(host.clone(), self.flips.clone())),
            limit: Arc::new(Semaphore::new(spec.max_parallel as usize)),
        };
        let events = tokio::spawn(watch_docker_events(
            name.to_owned(),
            host,
            self.wake.clone(),
        ));
        let events = events.abort_handle();
        let abort_if_stale = events.clone();
        let current = self.update(name, generation, move |e| {
            e.conn = Some(conn);
            e.events = Some(events);
            e.set_phase(HostPhase::Reachable);
            e.docker_version = Some(version);
            e.api_version = api_version;
            e.last_error = None;
            e.last_seen = Some(now_millis());
            e.rtt = Some(rtt);
            e.retry_at = None;
        });
        if !current {
            abort_if_stale.abort();
        }
        current
    }
}

/// Asks the engine its version; the version and the round-trip time.
async fn check(host: &dyn Host) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let version = tokio::time::timeout(CHECK_TIMEOUT, host.engine_version())
        .await
        .map_err(|_| {
            format!(
                "the Docker engine did not answer within {}s",
                CHECK_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| reason(&e))?;
    Ok((version, started.elapsed()))
}

/// The error without the "host X:" prefix the status already carries.
fn reason(e: &HostError) -> String {
    match e {
        HostError::Unreachable { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Docker events of Berth's containers wake their environment: a replica that dies is
/// noticed at once, not at the next resync.
async fn watch_docker_events(name: String, host: Arc<dyn Host>, wake: UnboundedSender<Wake>) {
    loop {
        match host.events().await {
            Ok(mut stream) => {
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(ev) => {
                            debug!(host = %name, env = %ev.env_name, container = %ev.container, action = %ev.action, "docker event");
                            if wake.send(Wake::Env(ev.env_name)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(host = %name, "docker events: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(host = %name, "docker events: {e}"),
        }
        tokio::time::sleep(EVENTS_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    fn spec(address: &str, max_parallel: u32) -> HostSpec {
        let yaml = format!(
            "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: h}}\nspec: {{address: '{address}', maxParallel: {max_parallel}}}\n"
        );
        let loaded = berth_api::load_texts(vec![("h.yaml".into(), yaml)]);
        let m = loaded.into_manifests().ok().expect("valid host");
        m.hosts["h"].spec.clone()
    }

    /// A connector whose hosts named `dead*` never answer, and others answer after
    /// `delay`; counts its calls.
    fn connector(delay: Duration, calls: Arc<AtomicUsize>) -> Connector {
        Arc::new(move |name: String, _spec| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if name.starts_with("dead") {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
                let host: Arc<dyn Host> = Arc::new(FakeHost::new(&name));
                Ok(host)
            })
        })
    }

    fn table(
        delay: Duration,
    ) -> (
        Arc<HostTable>,
        mpsc::UnboundedReceiver<Wake>,
        Arc<AtomicUsize>,
    ) {
        let (flips, _) = mpsc::unbounded_channel();
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let calls = Arc::new(AtomicUsize::new(0));
        (
            HostTable::new(connector(delay, calls.clone()), flips, wake),
            wake_rx,
            calls,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn two_slow_hosts_connect_concurrently_and_lookups_never_wait() {
        let (t, mut wake, _) = table(Duration::from_secs(5));
        let local = spec("local", 2);
        let t0 = Instant::now();
        // `get` is not async: it cannot wait for a connection. Both start connecting.
        assert_eq!(
            t.get("a", &local).err(),
            Some(Unavailable::Connecting { host: "a".into() })
        );
        assert!(t.get("b", &local).is_err());
        let mut up = vec![wake.recv().await.unwrap(), wake.recv().await.unwrap()];
        up.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(up, [Wake::HostUp("a".into()), Wake::HostUp("b".into())]);
        // In parallel: 5 s for both, not 10.
        assert_eq!(Instant::now() - t0, Duration::from_secs(5));
        assert!(t.get("a", &local).is_ok() && t.get("b", &local).is_ok());
        let st = t.statuses();
        assert!(st
            .iter()
            .all(|s| s.reachable && s.docker_version.as_deref() == Some("fake")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_never_answers_is_unreachable_and_delays_no_other() {
        let (t, mut wake, calls) = table(Duration::from_millis(100));
        let local = spec("local", 2);
        let t0 = Instant::now();
        t.sync([("dead", &local), ("ok", &local)]);
        assert_eq!(wake.recv().await, Some(Wake::HostUp("ok".into())));
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(t.get("ok", &local).is_ok());
        tokio::time::sleep(CONNECT_TIMEOUT + Duration::from_millis(10)).await;
        match t.get("dead", &local) {
            Err(Unavailable::Unreachable {
                error, retry_in, ..
            }) => {
                assert!(error.contains("did not answer within 10s"), "{error}");
                assert!(retry_in <= Duration::from_secs(1), "{retry_in:?}");
                let msg = t.get("dead", &local).err().unwrap().to_string();
                assert!(
                    msg.starts_with("host dead unreachable: the Docker engine did not answer"),
                    "{msg}"
                );
                assert!(msg.contains("; retrying in "), "{msg}");
            }
            other => panic!("{:?}", other.err()),
        }
        let dead = t.statuses().into_iter().find(|s| s.name == "dead").unwrap();
        assert_eq!(dead.state, HostPhase::Unreachable);
        assert!(!dead.reachable && dead.last_error.is_some() && dead.last_seen.is_none());
        // It keeps retrying, with backoff.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            calls.load(Ordering::SeqCst) >= 4,
            "{}",
            calls.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_host_spec_is_reconnected_and_a_removed_host_dropped() {
        let (t, mut wake, calls) = table(Duration::from_millis(100));
        let two = spec("local", 2);
        t.sync([("a", &two)]);
        assert_eq!(wake.recv().await, Some(Wake::HostUp("a".into())));
        let old = t.get("a", &two).ok().unwrap();
        assert_eq!(old.limit.available_permits(), 2);
        let five = spec("local", 5);
        t.sync([("a", &five)]);
        assert!(matches!(
            t.get("a", &five),
            Err(Unavailable::Connecting { .. })
        ));
        assert_eq!(wake.recv().await, Some(Wake::HostUp("a".into())));
        let new = t.get("a", &five).ok().unwrap();
        assert_eq!(new.limit.available_permits(), 5);
        assert!(!Arc::ptr_eq(&old.host, &new.host));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        t.sync(std::iter::empty());
        assert!(t.statuses().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ssh_host_connects_like_a_local_one() {
        let (t, mut wake, calls) = table(Duration::from_millis(100));
        let ssh = spec("ssh://root@127.0.0.2:2222", 2);
        assert!(matches!(
            t.get("vm", &ssh),
            Err(Unavailable::Connecting { .. })
        ));
        assert_eq!(wake.recv().await, Some(Wake::HostUp("vm".into())));
        assert!(t.get("vm", &ssh).is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_is_reconnected_without_waiting_for_the_next_check() {
        let (flips, _) = mpsc::unbounded_channel();
        let (wake, mut wake_rx) = mpsc::unbounded_channel();
        let made: Arc<Mutex<Vec<Arc<FakeHost>>>> = Arc::default();
        let seen = made.clone();
        let connector: Connector = Arc::new(move |name: String, _spec| {
            let seen = seen.clone();
            Box::pin(async move {
                let host = Arc::new(FakeHost::new(&name));
                seen.lock().unwrap().push(host.clone());
                let host: Arc<dyn Host> = host;
                Ok(host)
            })
        });
        let t = HostTable::new(connector, flips, wake);
        let ssh = spec("ssh://root@127.0.0.2:2222", 2);
        t.sync([("vm", &ssh)]);
        assert_eq!(wake_rx.recv().await, Some(Wake::HostUp("vm".into())));
        let t0 = Instant::now();
        let first = made.lock().unwrap()[0].clone();
        first.lose_connection("the SSH connection was lost: reset");
        tokio::task::yield_now().await;
        let st = t.statuses().remove(0);
        assert_eq!(st.state, HostPhase::Unreachable);
        assert_eq!(
            st.last_error.as_deref(),
            Some("the SSH connection was lost: reset")
        );
        assert!(
            t.get("vm", &ssh).is_err(),
            "the lost connection is not handed out"
        );
        assert_eq!(wake_rx.recv().await, Some(Wake::HostUp("vm".into())));
        // The first backoff, well before the 10 s check would have noticed.
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(made.lock().unwrap().len(), 2);
    }
}
