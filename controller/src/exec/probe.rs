//! Health probes: one attempt ([`probe_once`]), the pure threshold logic that turns
//! attempts into a verdict ([`Tracker`]), and the [`Monitor`] that keeps probing every
//! replica at its interval and answers "is it ready, is it live?" without waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_api::environment::{PortRef, PortSpec, Probe, ProbeAction};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::exec::http::{self, human};
use crate::host::Host;
use crate::op::Millis;

/// Probe outputs are cut to this many characters: one line for `describe` and events.
pub const OUTPUT_CAP: usize = 200;

/// The shortest interval a probe runs at, whatever the manifest says (`0s` included).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

// ---- one attempt --------------------------------------------------------------------

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    pub name: String,
    pub container_port: u16,
    /// Where the host reaches it: the publish address (a wildcard becomes loopback).
    pub address: String,
    pub host_port: u16,
}

/// What a probe is aimed at: one container and where its ports are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container: String,
    pub ports: Vec<PublishedPort>,
}

impl Target {
    /// Pairs the environment's `ports` with the host port each one is published on, in
    /// order (as [`ContainerSpec::host_ports`](crate::model::ContainerSpec) lists them).
    /// Ports without a host port are left out: a probe on them fails, saying so.
    pub fn new(container: impl Into<String>, ports: &[PortSpec], host_ports: &[u16]) -> Target {
        Target {
            container: container.into(),
            ports: ports
                .iter()
                .zip(host_ports)
                .map(|(p, &host_port)| PublishedPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    address: reachable(&p.publish).to_owned(),
                    host_port,
                })
                .collect(),
        }
    }

    /// The address and host port of a port named by name or by container port number.
    pub fn resolve(&self, port: &PortRef) -> Option<(&str, u16)> {
        self.ports
            .iter()
            .find(|p| match port {
                PortRef::Name(n) => &p.name == n,
                PortRef::Number(n) => p.container_port == *n,
            })
            .map(|p| (p.address.as_str(), p.host_port))
    }
}

/// A wildcard publish address is reached on loopback.
fn reachable(publish: &str) -> &str {
    match publish {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        a => a,
    }
}

/// One probe's outcome; `output` says why, in one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub ok: bool,
    pub output: String,
}

impl Attempt {
    fn fail(output: impl AsRef<str>) -> Attempt {
        Attempt {
            ok: false,
            output: one_line(output.as_ref()),
        }
    }
}

/// Runs one attempt of `probe` against `target`, bounded by the probe's `timeout`.
///
/// # Guarantees
/// Never fails and never panics: an unreachable port, an error or a timeout is a failed
/// attempt whose output says what happened. An `exec` probe that times out is abandoned,
/// not killed (Docker has no way to kill an exec); a command that hangs keeps running in
/// the container.
pub async fn probe_once(host: &dyn Host, probe: &Probe, target: &Target) -> Attempt {
    let timeout = probe.timeout.0;
    match &probe.action {
        ProbeAction::Http { path, port } => {
            let Some((addr, port)) = target.resolve(port) else {
                return unpublished(target, port);
            };
            match http::request(host, addr, port, &http::Request::get(path), timeout).await {
                Ok(resp) => {
                    let line = one_line(&resp.text());
                    Attempt {
                        ok: (200..400).contains(&resp.status),
                        output: if line.is_empty() {
                            format!("HTTP {}", resp.status)
                        } else {
                            format!("HTTP {}: {line}", resp.status)
                        },
                    }
                }
                Err(e) => Attempt::fail(e.to_string()),
            }
        }
        ProbeAction::Tcp { port } => {
            let Some((addr, port)) = target.resolve(port) else {
                return unpublished(target, port);
            };
            let at = http::authority(addr, port);
            match tokio::time::timeout(timeout, host.connect(addr, port)).await {
                Ok(Ok(_conn)) => Attempt {
                    ok: true,
                    output: format!("connected to {at}"),
                },
                Ok(Err(e)) => Attempt::fail(e.to_string()),
                Err(_) => Attempt::fail(format!("no connection to {at} within {}", human(timeout))),
            }
        }
        ProbeAction::Exec { command } => {
            let c = &target.container;
            match tokio::time::timeout(timeout, host.exec(c, command)).await {
                Ok(Ok(out)) => {
                    // The line that explains: stderr first when it failed, stdout first when not.
                    let (first, second) = if out.success() {
                        (&out.stdout, &out.stderr)
                    } else {
                        (&out.stderr, &out.stdout)
                    };
                    let line = last_line(first).or_else(|| last_line(second)).unwrap_or("");
                    let output = match (out.success(), line.is_empty()) {
                        (true, _) => one_line(line),
                        (false, true) => format!("exit {}", out.exit_code),
                        (false, false) => one_line(&format!("exit {}: {line}", out.exit_code)),
                    };
                    Attempt {
                        ok: out.success(),
                        output,
                    }
                }
                Ok(Err(e)) => Attempt::fail(e.to_string()),
                Err(_) => Attempt::fail(format!(
                    "`{}` in {c} did not finish within {}",
                    command.join(" "),
                    human(timeout)
                )),
            }
        }
    }
}

fn unpublished(target: &Target, port: &PortRef) -> Attempt {
    let p = match port {
        PortRef::Name(n) => format!("`{n}`"),
        PortRef::Number(n) => n.to_string(),
    };
    Attempt::fail(format!(
        "port {p} of {} is not published on the host",
        target.container
    ))
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The first non-empty line, trimmed, at most [`OUTPUT_CAP`] characters.
pub(crate) fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(OUTPUT_CAP) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

// ---- thresholds (pure) ----------------------------------------------------------------

/// Where a probe stands: `healthy` is `None` until a threshold has been reached once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: Option<bool>,
    pub last_output: String,
}

/// Turns a probe's attempts into a verdict, as Kubernetes does: `successThreshold`
/// consecutive successes make it healthy, `failureThreshold` consecutive failures make it
/// unhealthy, and attempts before `initialDelay` has passed do not count. Time is passed
/// in; nothing here reads a clock.
#[derive(Clone, Debug)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    /// Attempts observed before this instant are ignored.
    not_before: Millis,
    successes: u32,
    failures: u32,
    verdict: Verdict,
}

impl Tracker {
    /// A tracker for a probe whose container was started (or first seen) at `started`.
    pub fn new(probe: &Probe, started: Millis) -> Tracker {
        let delay = u64::try_from(probe.initial_delay.0.as_millis()).unwrap_or(u64::MAX);
        Tracker {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            not_before: started.saturating_add(delay),
            successes: 0,
            failures: 0,
            verdict: Verdict::default(),
        }
    }

    pub fn observe(&mut self, ok: bool, output: &str, now: Millis) -> Verdict {
        if now < self.not_before {
            return self.verdict.clone();
        }
        self.verdict.last_output = output.to_owned();
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.successes >= self.success_threshold {
                self.verdict.healthy = Some(true);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.failure_threshold {
                self.verdict.healthy = Some(false);
            }
        }
        self.verdict.clone()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

// ---- the monitor ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

/// One probe to keep running: a container's readiness or liveness probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Watch {
    pub kind: ProbeKind,
    pub probe: Probe,
    pub target: Target,
}

/// What the monitor knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// `None` until decided, and when the container has no probe of that kind (the caller
    /// knows from the spec which probes exist).
    pub ready: Option<bool>,
    pub live: Option<bool>,
    /// The output that explains the worst state: a liveness probe not (yet) passing, else
    /// a readiness probe not (yet) passing, else the readiness (or liveness) probe's latest.
    pub last_output: String,
    /// When `(ready, live)` last changed, or when the container was first watched.
    pub since: Millis,
}

/// A verdict changed (including the first decision): the reconciler requeues `env`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub env: String,
    pub container: String,
    pub kind: ProbeKind,
    pub healthy: bool,
}

/// Runs every watched probe at its interval, each in its own task, and keeps the latest
/// [`Health`] of every watched container.
///
/// # Guarantees
/// - [`Monitor::snapshot`] never waits for a probe: it reads what the tasks last wrote.
/// - A probe's task ends when its watch is removed or changed, or the monitor is dropped;
///   nothing it was running writes afterwards.
pub struct Monitor {
    shared: Arc<Shared>,
}

struct Shared {
    host: Arc<dyn Host>,
    notify: Option<UnboundedSender<Flip>>,
    clock: Clock,
    runtime: tokio::runtime::Handle,
    // A std Mutex, not tokio's: every critical section is a few map operations, it is
    // never held across an `.await` (the probe runs with the lock released, then the
    // result is written under it), and `snapshot` must answer from sync code without
    // waiting behind a probe.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: HashMap<Key, Running>,
    health: HashMap<String, Entry>,
    next_generation: u64,
}

/// (environment, container, kind)
type Key = (String, String, ProbeKind);

struct Running {
    watch: Watch,
    /// Distinguishes this task from an earlier one for the same key, so that a task
    /// aborted while past its last `.await` cannot write over its successor.
    generation: u64,
    task: AbortHandle,
}

struct Entry {
    ready: Option<Verdict>,
    live: Option<Verdict>,
    since: Millis,
}

impl Monitor {
    /// A monitor probing through `host`. Must be created inside a Tokio runtime, whose
    /// tasks then run the probes.
    pub fn new(host: Arc<dyn Host>) -> Monitor {
        Monitor::build(host, None)
    }

    /// Like [`Monitor::new`], and every [`Flip`] is sent to `notify`.
    pub fn with_notify(host: Arc<dyn Host>, notify: UnboundedSender<Flip>) -> Monitor {
        Monitor::build(host, Some(notify))
    }

    fn build(host: Arc<dyn Host>, notify: Option<UnboundedSender<Flip>>) -> Monitor {
        Monitor {
            shared: Arc::new(Shared {
                host,
                notify,
                clock: Clock::start(),
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Replaces the probes watched for `env` by `watches` (container → probe). A probe
    /// that is unchanged keeps running with its history; a changed one starts afresh;
    /// containers no longer listed are forgotten.
    pub fn set_targets(&self, env: &str, watches: Vec<Watch>) {
        let now = self.shared.clock.now();
        let mut st = self.shared.lock();
        let mut wanted: HashMap<Key, Watch> = watches
            .into_iter()
            .map(|w| ((env.to_owned(), w.target.container.clone(), w.kind), w))
            .collect();
        let mine: Vec<Key> = st.running.keys().filter(|k| k.0 == env).cloned().collect();
        for key in mine {
            if wanted.get(&key) == st.running.get(&key).map(|r| &r.watch) {
                wanted.remove(&key);
                continue;
            }
            if let Some(old) = st.running.remove(&key) {
                old.task.abort();
            }
            let emptied = st.health.get_mut(&key.1).is_some_and(|e| {
                *e.slot(key.2) = None;
                e.ready.is_none() && e.live.is_none()
            });
            if emptied && !st.running.keys().any(|k| k.1 == key.1) {
                st.health.remove(&key.1);
            }
        }
        for (key, watch) in wanted {
            st.next_generation += 1;
            let generation = st.next_generation;
            let entry = st.health.entry(key.1.clone()).or_insert(Entry {
                ready: None,
                live: None,
                since: now,
            });
            *entry.slot(key.2) = Some(Verdict::default());
            let task = self
                .shared
                .runtime
                .spawn(run(
                    self.shared.clone(),
                    key.clone(),
                    generation,
                    watch.clone(),
                ))
                .abort_handle();
            st.running.insert(
                key,
                Running {
                    watch,
                    generation,
                    task,
                },
            );
        }
    }

    /// The latest health of a watched container; `None` when it is not watched.
    pub fn snapshot(&self, container: &str) -> Option<Health> {
        self.shared.lock().health.get(container).map(Entry::health)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for r in self.shared.lock().running.values() {
            r.task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain maps behind, still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a task's verdict, if the task is still the current one for its key.
    fn record(&self, key: &Key, generation: u64, v: Verdict, now: Millis) -> Option<Flip> {
        let mut st = self.lock();
        if st.running.get(key).map(|r| r.generation) != Some(generation) {
            return None;
        }
        let entry = st.health.get_mut(&key.1)?;
        let slot = entry.slot(key.2);
        let before = slot.as_ref().and_then(|s| s.healthy);
        let after = v.healthy;
        *slot = Some(v);
        if before == after {
            return None;
        }
        entry.since = now;
        Some(Flip {
            env: key.0.clone(),
            container: key.1.clone(),
            kind: key.2,
            healthy: after?,
        })
    }
}

impl Entry {
    fn slot(&mut self, kind: ProbeKind) -> &mut Option<Verdict> {
        match kind {
            ProbeKind::Readiness => &mut self.ready,
            ProbeKind::Liveness => &mut self.live,
        }
    }

    fn health(&self) -> Health {
        fn failing(v: &Option<Verdict>) -> Option<&Verdict> {
            v.as_ref().filter(|v| v.healthy != Some(true))
        }
        let explains = failing(&self.live)
            .or_else(|| failing(&self.ready))
            .or(self.ready.as_ref())
            .or(self.live.as_ref());
        Health {
            ready: self.ready.as_ref().and_then(|v| v.healthy),
            live: self.live.as_ref().and_then(|v| v.healthy),
            last_output: explains.map(|v| v.last_output.clone()).unwrap_or_default(),
            since: self.since,
        }
    }
}

/// One probe's task: waits `initialDelay`, then probes at `interval` until aborted.
async fn run(shared: Arc<Shared>, key: Key, generation: u64, watch: Watch) {
    let mut tracker = Tracker::new(&watch.probe, shared.clock.now());
    tokio::time::sleep(watch.probe.initial_delay.0).await;
    let mut ticks = tokio::time::interval(watch.probe.interval.0.max(MIN_INTERVAL));
    // A probe slower than its interval delays the next one rather than bunching them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let attempt = probe_once(shared.host.as_ref(), &watch.probe, &watch.target).await;
        let now = shared.clock.now();
        let verdict = tracker.observe(attempt.ok, &attempt.output, now);
        let flip = shared.record(&key, generation, verdict, now);
        if let (Some(flip), Some(tx)) = (flip, &shared.notify) {
            // A receiver that has gone away no longer wants to know.
            let _ = tx.send(flip);
        }
    }
}

/// Milliseconds since the epoch, advanced by Tokio's clock, so that a paused clock in
/// tests moves the monitor's time as it moves the probes' timers.
struct Clock {
    wall_at_start: Millis,
    start: tokio::time::Instant,
}

impl Clock {
    fn start() -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Clock {
            wall_at_start: wall,
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_at_start.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use berth_api::values::Duration as D;
    use tokio::time::Instant;

    use super::*;
    use crate::exec::test_host::SlowHost;
    use crate::host::fake::{http_response, FakeHost};
    use crate::host::Output;
    use crate::model::{ContainerSpec, ContainerState, Role, Template};

    fn probe(action: ProbeAction) -> Probe {
        Probe {
            action,
            interval: D::secs(1),
            timeout: D::secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            initial_delay: D::secs(0),
        }
    }

    fn http(path: &str, port: PortRef) -> Probe {
        probe(ProbeAction::Http {
            path: path.into(),
            port,
        })
    }

    fn ready() -> Probe {
        http("/ready", PortRef::Name("http".into()))
    }

    fn exec(cmd: &[&str]) -> Probe {
        probe(ProbeAction::Exec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// `container` with port `http` (container 8080) published on `host_port`.
    fn target(container: &str, host_port: u16) -> Target {
        let ports = [PortSpec {
            name: "http".into(),
            container_port: 8080,
            publish: "0.0.0.0".into(),
        }];
        Target::new(container, &ports, &[host_port])
    }

    fn output(exit_code: i64, stdout: &str, stderr: &str) -> Output {
        Output {
            exit_code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// A fake host running `web-r1-0`.
    fn with_container(state: ContainerState) -> FakeHost {
        let template = Template {
            image: "app:v1".into(),
            command: None,
            args: None,
            env: Default::default(),
            env_files: vec![],
            ports: vec![(8080, "127.0.0.1".into())],
            volumes: vec![],
            networks: vec![],
        };
        let fake = FakeHost::new("h");
        fake.add_container(
            &ContainerSpec {
                name: "web-r1-0".into(),
                env_name: "web".into(),
                revision: 1,
                role: Role::App,
                replica: Some(0),
                op: None,
                template_hash: template.hash(),
                template,
                host_ports: vec![20001],
                override_args: None,
                aliases: vec![],
            },
            state,
        );
        fake
    }

    // ---- probe_once

    #[tokio::test]
    async fn an_http_probe_reports_status_and_the_first_line_of_the_body() {
        let fake = FakeHost::new("h");
        fake.serve(20001, |req| {
            if req.starts_with(b"GET /ready ") {
                http_response(
                    503,
                    "schema version 1, this build needs 2..=2\nmore detail\n",
                )
            } else if req.starts_with(b"GET /moved ") {
                http_response(302, "")
            } else {
                http_response(200, "  ok  ")
            }
        });
        let t = target("web-r1-0", 20001);
        let a = probe_once(&fake, &ready(), &t).await;
        assert_eq!(
            a,
            Attempt {
                ok: false,
                output: "HTTP 503: schema version 1, this build needs 2..=2".into()
            }
        );
        let a = probe_once(&fake, &http("/health", PortRef::Number(8080)), &t).await;
        assert_eq!((a.ok, a.output.as_str()), (true, "HTTP 200: ok"));
        let a = probe_once(&fake, &http("/moved", PortRef::Number(8080)), &t).await;
        assert_eq!((a.ok, a.output.as_str()), (true, "HTTP 302"));
        assert_eq!(fake.count("connect 127.0.0.1:20001"), 3);
    }

    #[tokio::test]
    async fn a_probe_on_a_port_that_is_not_published_fails_saying_which() {
        let fake = FakeHost::new("h");
        let t = target("web-r1-0", 20001);
        let a = probe_once(&fake, &http("/", PortRef::Name("admin".into())), &t).await;
        assert_eq!(
            a.output,
            "port `admin` of web-r1-0 is not published on the host"
        );
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Number(9090),
        });
        let a = probe_once(&fake, &tcp, &t).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "port 9090 of web-r1-0 is not published on the host")
        );
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_on_connect_and_fails_on_refusal() {
        let fake = FakeHost::new("h");
        fake.serve(20001, |_| Vec::new());
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Name("http".into()),
        });
        let a = probe_once(&fake, &tcp, &target("web-r1-0", 20001)).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (true, "connected to 127.0.0.1:20001")
        );
        let a = probe_once(&fake, &tcp, &target("web-r1-0", 20002)).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "host h: port 20002: 127.0.0.1: Connection refused")
        );
    }

    #[tokio::test]
    async fn an_exec_probe_reports_the_last_line_that_explains() {
        let cases = [
            (output(0, "starting\nall good\n\n", ""), true, "all good"),
            (
                output(1, "", "warming up\nnot ready yet\n"),
                false,
                "exit 1: not ready yet",
            ),
            (output(2, "only stdout\n", ""), false, "exit 2: only stdout"),
            (output(137, "", ""), false, "exit 137"),
        ];
        for (answer, want_ok, want_output) in cases {
            let fake = with_container(ContainerState::Running);
            fake.on_exec("sh -c check", answer);
            let a = probe_once(&fake, &exec(&["sh", "-c", "check"]), &target("web-r1-0", 1)).await;
            assert_eq!((a.ok, a.output.as_str()), (want_ok, want_output));
            assert_eq!(fake.calls(), ["exec web-r1-0 sh -c check"]);
        }
    }

    #[tokio::test]
    async fn an_exec_probe_in_a_stopped_container_fails_saying_so() {
        let fake = with_container(ContainerState::Exited(1));
        let a = probe_once(&fake, &exec(&["check"]), &target("web-r1-0", 1)).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (
                false,
                "host h: docker exec web-r1-0: Container web-r1-0 is not running"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exec_probe_that_hangs_fails_at_its_timeout() {
        let host = SlowHost {
            exec_delay: Duration::from_secs(60),
        };
        let a = probe_once(&host, &exec(&["pg_isready"]), &target("web-r1-0", 1)).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "`pg_isready` in web-r1-0 did not finish within 2s")
        );
    }

    #[test]
    fn outputs_are_one_line_of_at_most_200_characters() {
        assert_eq!(one_line("\n\n  first  \nsecond"), "first");
        let long = "é".repeat(300);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), OUTPUT_CAP + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_wildcard_publish_address_is_probed_on_loopback() {
        let t = target("web-r1-0", 20001);
        assert_eq!(
            t.resolve(&PortRef::Name("http".into())),
            Some(("127.0.0.1", 20001))
        );
        assert_eq!(
            t.resolve(&PortRef::Number(8080)),
            Some(("127.0.0.1", 20001))
        );
        assert_eq!(t.resolve(&PortRef::Number(20001)), None);
    }

    // ---- Tracker

    #[test]
    fn the_tracker_applies_thresholds_and_the_initial_delay() {
        struct Case {
            name: &'static str,
            success: u32,
            failure: u32,
            delay_ms: u64,
            /// (ok, at ms) → the verdict after it
            steps: &'static [(bool, Millis, Option<bool>)],
        }
        const T: bool = true;
        const F: bool = false;
        let cases = [
            Case {
                name: "one success is enough by default",
                success: 1,
                failure: 3,
                delay_ms: 0,
                steps: &[(T, 0, Some(true))],
            },
            Case {
                name: "undecided until the failure threshold",
                success: 1,
                failure: 3,
                delay_ms: 0,
                steps: &[(F, 0, None), (F, 1, None), (F, 2, Some(false))],
            },
            Case {
                name: "a success resets the failure count",
                success: 2,
                failure: 3,
                delay_ms: 0,
                steps: &[
                    (F, 0, None),
                    (F, 1, None),
                    (T, 2, None),
                    (F, 3, None),
                    (F, 4, None),
                    (F, 5, Some(false)),
                ],
            },
            Case {
                name: "healthy needs consecutive successes",
                success: 2,
                failure: 3,
                delay_ms: 0,
                steps: &[(T, 0, None), (F, 1, None), (T, 2, None), (T, 3, Some(true))],
            },
            Case {
                name: "healthy stays healthy until the failure threshold",
                success: 1,
                failure: 2,
                delay_ms: 0,
                steps: &[
                    (T, 0, Some(true)),
                    (F, 1, Some(true)),
                    (T, 2, Some(true)),
                    (F, 3, Some(true)),
                    (F, 4, Some(false)),
                ],
            },
            Case {
                name: "unhealthy needs the success threshold to recover",
                success: 2,
                failure: 1,
                delay_ms: 0,
                steps: &[(F, 0, Some(false)), (T, 1, Some(false)), (T, 2, Some(true))],
            },
            Case {
                name: "attempts before the initial delay do not count",
                success: 1,
                failure: 1,
                delay_ms: 1000,
                steps: &[(F, 0, None), (F, 999, None), (T, 1000, Some(true))],
            },
        ];
        for c in cases {
            let mut p = exec(&["true"]);
            p.success_threshold = c.success;
            p.failure_threshold = c.failure;
            p.initial_delay = D(Duration::from_millis(c.delay_ms));
            let mut t = Tracker::new(&p, 0);
            for (i, &(ok, at, want)) in c.steps.iter().enumerate() {
                let v = t.observe(ok, &format!("attempt {i}"), at);
                assert_eq!(v.healthy, want, "{}: step {i}", c.name);
            }
        }
    }

    #[test]
    fn the_tracker_keeps_the_output_of_the_last_counted_attempt() {
        let mut p = exec(&["true"]);
        p.initial_delay = D::secs(1);
        let mut t = Tracker::new(&p, 10_000);
        t.observe(false, "too early", 10_500);
        assert_eq!(t.verdict().last_output, "");
        t.observe(false, "counted", 11_000);
        assert_eq!(t.verdict().last_output, "counted");
    }

    // ---- Monitor

    /// A fake host serving `/ready` on each of `ports`: 200 while `healthy` is set, else 503.
    fn switchable(ports: &[u16]) -> (Arc<FakeHost>, Arc<AtomicBool>) {
        let healthy = Arc::new(AtomicBool::new(false));
        let fake = FakeHost::new("h");
        for &port in ports {
            let h = healthy.clone();
            fake.serve(port, move |_| {
                if h.load(Ordering::SeqCst) {
                    http_response(200, "ready")
                } else {
                    http_response(503, "schema not migrated yet")
                }
            });
        }
        (Arc::new(fake), healthy)
    }

    fn watch(kind: ProbeKind, p: Probe, container: &str, port: u16) -> Watch {
        Watch {
            kind,
            probe: p,
            target: target(container, port),
        }
    }

    fn probes_made(fake: &FakeHost) -> usize {
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("connect"))
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_reports_flips_at_the_thresholds() {
        let (fake, healthy) = switchable(&[20001]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::with_notify(fake.clone(), tx);
        let t0 = Instant::now();
        monitor.set_targets(
            "web",
            vec![watch(ProbeKind::Readiness, ready(), "web-r1-0", 20001)],
        );
        let first = monitor.snapshot("web-r1-0").unwrap();
        assert_eq!((first.ready, first.live), (None, None));

        // Attempts at 0 s, 1 s, 2 s fail: unhealthy at the third (failureThreshold 3).
        let flip = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert_eq!(
            flip,
            Flip {
                env: "web".into(),
                container: "web-r1-0".into(),
                kind: ProbeKind::Readiness,
                healthy: false
            }
        );
        let h = monitor.snapshot("web-r1-0").unwrap();
        assert_eq!(h.ready, Some(false));
        assert_eq!(h.last_output, "HTTP 503: schema not migrated yet");

        healthy.store(true, Ordering::SeqCst);
        let flip = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert!(flip.healthy);
        let h = monitor.snapshot("web-r1-0").unwrap();
        assert_eq!((h.ready, h.live), (Some(true), None));
        assert_eq!(h.last_output, "HTTP 200: ready");
        assert_eq!(h.since - first.since, 3000);
        assert_eq!(probes_made(&fake), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_runs_exec_probes_in_the_container() {
        let fake = Arc::new(with_container(ContainerState::Running));
        fake.on_exec("pg_isready", output(0, "accepting connections\n", ""));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::with_notify(fake.clone(), tx);
        monitor.set_targets(
            "web",
            vec![watch(
                ProbeKind::Liveness,
                exec(&["pg_isready"]),
                "web-r1-0",
                20001,
            )],
        );
        assert!(rx.recv().await.unwrap().healthy);
        let h = monitor.snapshot("web-r1-0").unwrap();
        assert_eq!((h.ready, h.live), (None, Some(true)));
        assert_eq!(h.last_output, "accepting connections");
        assert_eq!(fake.calls(), ["exec web-r1-0 pg_isready"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_probe_waits_for_the_initial_delay() {
        let (fake, healthy) = switchable(&[20001]);
        healthy.store(true, Ordering::SeqCst);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::with_notify(fake.clone(), tx);
        let mut p = ready();
        p.initial_delay = D::secs(30);
        let t0 = Instant::now();
        monitor.set_targets(
            "web",
            vec![watch(ProbeKind::Readiness, p, "web-r1-0", 20001)],
        );
        let flip = rx.recv().await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
        assert!(flip.healthy);
        assert_eq!(probes_made(&fake), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn removed_targets_stop_probing_and_are_forgotten() {
        let (fake, _) = switchable(&[20001, 20002, 20003]);
        let monitor = Monitor::new(fake.clone());
        let health = http("/health", PortRef::Name("http".into()));
        monitor.set_targets(
            "web",
            vec![
                watch(ProbeKind::Readiness, ready(), "web-r1-0", 20001),
                watch(ProbeKind::Liveness, health, "web-r1-0", 20001),
                watch(ProbeKind::Readiness, ready(), "web-r1-1", 20002),
            ],
        );
        monitor.set_targets(
            "api",
            vec![watch(ProbeKind::Readiness, ready(), "api-r1-0", 20003)],
        );
        tokio::time::sleep(Duration::from_millis(4500)).await;
        // Five attempts each (0..=4 s).
        assert_eq!(probes_made(&fake), 4 * 5);

        monitor.set_targets(
            "web",
            vec![watch(ProbeKind::Readiness, ready(), "web-r1-1", 20002)],
        );
        assert!(monitor.snapshot("web-r1-0").is_none());
        assert!(monitor.snapshot("web-r1-1").is_some());
        assert!(
            monitor.snapshot("api-r1-0").is_some(),
            "another env is untouched"
        );
        let before = fake.calls().len();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after: Vec<String> = fake.calls()[before..].to_vec();
        assert_eq!(after.len(), 2 * 10);
        assert!(after.iter().all(|c| !c.ends_with(":20001")), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_watch_keeps_its_history_and_a_changed_one_starts_afresh() {
        let (fake, _) = switchable(&[20001]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::with_notify(fake.clone(), tx);
        let w = watch(ProbeKind::Readiness, ready(), "web-r1-0", 20001);
        monitor.set_targets("web", vec![w.clone()]);
        tokio::time::sleep(Duration::from_millis(1500)).await; // two failures
        monitor.set_targets("web", vec![w.clone()]);
        assert!(!rx.recv().await.unwrap().healthy); // the third, at 2 s
        assert_eq!(monitor.snapshot("web-r1-0").unwrap().ready, Some(false));

        let mut changed = w.clone();
        changed.probe.failure_threshold = 5;
        monitor.set_targets("web", vec![changed]);
        assert_eq!(monitor.snapshot("web-r1-0").unwrap().ready, None);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_monitor_stops_every_probe() {
        let (fake, _) = switchable(&[20001]);
        let monitor = Monitor::new(fake.clone());
        monitor.set_targets(
            "web",
            vec![watch(ProbeKind::Liveness, ready(), "web-r1-0", 20001)],
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(monitor);
        let n = probes_made(&fake);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(probes_made(&fake), n);
        assert_eq!(Arc::strong_count(&fake), 1, "the tasks let go of the host");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_answers_while_a_probe_hangs() {
        let host = SlowHost {
            exec_delay: Duration::from_secs(3600),
        };
        let monitor = Monitor::new(Arc::new(host));
        let mut p = exec(&["slow"]);
        p.failure_threshold = 1;
        monitor.set_targets("web", vec![watch(ProbeKind::Readiness, p, "web-r1-0", 1)]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(monitor.snapshot("web-r1-0").unwrap().ready, None);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let h = monitor.snapshot("web-r1-0").unwrap();
        assert_eq!(h.ready, Some(false));
        assert_eq!(h.last_output, "`slow` in web-r1-0 did not finish within 2s");
    }

    #[test]
    fn the_worst_state_explains_itself() {
        let v = |healthy, out: &str| {
            Some(Verdict {
                healthy,
                last_output: out.into(),
            })
        };
        let e = Entry {
            ready: v(Some(false), "not ready"),
            live: v(Some(true), "alive"),
            since: 0,
        };
        assert_eq!(e.health().last_output, "not ready");
        let e = Entry {
            ready: v(Some(false), "not ready"),
            live: v(None, "live undecided"),
            since: 0,
        };
        assert_eq!(e.health().last_output, "live undecided");
        let e = Entry {
            ready: v(Some(true), "ready"),
            live: v(Some(true), "alive"),
            since: 0,
        };
        assert_eq!(e.health().last_output, "ready");
    }
}
