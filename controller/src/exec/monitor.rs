//! The [`Monitor`]: keeps probing every watched replica at its probe's interval, each
//! probe in its own task, and answers "is it ready, is it live?" without waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_api::environment::Probe;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::exec::probe::{probe_once, Target, Tracker, Verdict};
use crate::host::Host;
use crate::op::Millis;
use crate::redact::Redactor;

/// The shortest interval a probe runs at, whatever the manifest says (`0s` included).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Applied to every output before the monitor keeps it.
    pub redactor: Arc<Redactor>,
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

    /// Replaces the probes watched for `env` by `watches`. A probe that is unchanged keeps
    /// running with its history; a changed one starts afresh (its `initialDelay` counted
    /// from now); containers no longer listed are forgotten, and an empty list forgets
    /// the environment. Other environments are untouched.
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
        let attempt = probe_once(
            shared.host.as_ref(),
            &watch.probe,
            &watch.target,
            &watch.redactor,
        )
        .await;
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

    use berth_api::environment::PortRef;
    use berth_api::values::Duration as D;
    use tokio::time::Instant;

    use super::*;
    use crate::exec::test_host::fixtures::*;
    use crate::exec::test_host::SlowHost;
    use crate::host::fake::{http_response, FakeHost};
    use crate::model::ContainerState;

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
            redactor: Arc::new(Redactor::none()),
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
