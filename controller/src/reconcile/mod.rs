//! The controller loop, level-triggered like Kubernetes: every trigger (a manifest change,
//! a Docker event, a probe verdict flipping, the periodic resync) only enqueues an
//! environment's name; reconciling one reads the desired spec, observes the host, asks
//! [`plan`](crate::plan) for the next action, performs it, journals it, and requeues.
//!
//! # Guarantees
//! - One environment is never reconciled twice at once ([`queue::Queue`]); environments
//!   proceed in parallel, bounded per host by `maxParallel`.
//! - A journal write that precedes a side effect is flushed before it (the store's rule).
//! - An error never ends the loop: it is recorded, and the environment is retried with
//!   exponential backoff and jitter.
//! - One dead host stalls nothing else: hosts connect on their own tasks
//!   ([`hosts::HostTable`]); an environment whose host is not connected returns at once
//!   with a status message saying so, and is enqueued again when the host connects.
//! - Nothing blocks the runtime's workers: status files are written on the blocking pool,
//!   and the journal's flushes tell the runtime they block (see [`Store`]).

mod act;
mod files;
pub mod host_status;
mod hosts;
mod inspect;
mod observe;
mod preflight;
pub mod queue;
mod retry;
pub mod status;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_api::environment::EnvironmentSpec;
use berth_api::values::Address;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::exec::probe::{Flip, Monitor};
use crate::host::{Host, HostError};
use crate::source::Snapshot;
use crate::store::{EventKind, NewEvent, Store, StoreError};

pub use act::now_millis;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error("environment {env}: {message}")]
    Config { env: String, message: String },
    /// The environment's host is not connected (yet); the message says why and when the
    /// next attempt is.
    #[error("{message}")]
    HostUnavailable { host: String, message: String },
}

impl From<hosts::Unavailable> for ReconcileError {
    fn from(u: hosts::Unavailable) -> Self {
        match u {
            hosts::Unavailable::Connecting { ref host }
            | hosts::Unavailable::Unreachable { ref host, .. } => ReconcileError::HostUnavailable {
                host: host.clone(),
                message: u.to_string(),
            },
        }
    }
}

/// The directory's snapshot with the applied environments over it: an applied record
/// owns its environment (it was applied where the directory had none, or took it over
/// with `--force`). An unreadable journal leaves the directory's state alone.
fn merge_applied(store: &Store, directory: &Snapshot) -> Snapshot {
    let applied = match store.applied() {
        Ok(a) => a,
        Err(e) => {
            warn!("cannot read the applied environments: {e}");
            return directory.clone();
        }
    };
    if applied.is_empty() {
        return directory.clone();
    }
    let mut manifests = (*directory.manifests).clone();
    for rec in applied {
        let mut res = rec.resource;
        res.origin = berth_api::resource::Origin {
            file: std::path::PathBuf::from(format!("apply:{}", rec.source)),
            line: 1,
        };
        manifests
            .environments
            .insert(res.metadata.name.clone(), res);
    }
    Snapshot {
        manifests: Arc::new(manifests),
        commit: directory.commit.clone(),
    }
}

/// Whether the environment's desired state comes from `berthctl apply` (see
/// [`merge_applied`]) rather than the directory.
pub fn is_applied(res: &berth_api::Environment) -> bool {
    res.origin.file.to_string_lossy().starts_with("apply:")
}

/// A connected host, with the probe monitor watching its containers.
#[derive(Clone)]
struct Connected {
    host: Arc<dyn Host>,
    monitor: Arc<Monitor>,
    limit: Arc<Semaphore>,
}

pub struct Controller {
    store: Store,
    /// What is reconciled: the directory's snapshot with the applied environments over it.
    desired: RwLock<Snapshot>,
    /// The directory's last valid snapshot, as loaded.
    directory: RwLock<Snapshot>,
    hosts: Arc<hosts::HostTable>,
    host_wake_rx: Mutex<Option<mpsc::UnboundedReceiver<hosts::Wake>>>,
    queue: queue::Queue<String>,
    backoff: Mutex<retry::Backoffs>,
    flips_rx: Mutex<Option<mpsc::UnboundedReceiver<Flip>>>,
    files: Mutex<files::FileWatch>,
    files_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    resync: Duration,
    /// The manifest directory's health, for the API.
    source: RwLock<crate::api::types::SourceHealth>,
    metrics: inspect::LoopMetrics,
    /// `berthd --prune`: an environment whose manifest leaves the directory has its
    /// containers removed (listed first, as an event); otherwise it keeps running.
    prune: std::sync::atomic::AtomicBool,
}

pub use inspect::LoopMetrics;

impl Controller {
    pub fn new(store: Store, desired: Snapshot, resync: Duration) -> Arc<Controller> {
        Controller::with_connector(store, desired, resync, hosts::default_connector())
    }

    fn with_connector(
        store: Store,
        desired: Snapshot,
        resync: Duration,
        connector: hosts::Connector,
    ) -> Arc<Controller> {
        let (flips, flips_rx) = mpsc::unbounded_channel();
        let (files_tx, files_rx) = mpsc::unbounded_channel();
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let merged = merge_applied(&store, &desired);
        Arc::new(Controller {
            store,
            desired: RwLock::new(merged),
            directory: RwLock::new(desired),
            hosts: hosts::HostTable::new(connector, flips, wake),
            host_wake_rx: Mutex::new(Some(wake_rx)),
            queue: queue::Queue::default(),
            backoff: Mutex::new(retry::Backoffs::default()),
            flips_rx: Mutex::new(Some(flips_rx)),
            files: Mutex::new(files::FileWatch::new(files_tx)),
            files_rx: Mutex::new(Some(files_rx)),
            resync,
            source: RwLock::default(),
            metrics: inspect::LoopMetrics::default(),
            prune: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn snapshot(&self) -> Snapshot {
        self.desired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The directory's last valid snapshot (without the applied environments).
    pub fn directory(&self) -> Snapshot {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the directory's desired state (a valid reload) and enqueues every
    /// environment. Hosts whose spec changed reconnect. Must be called inside the runtime.
    pub fn set_desired(self: &Arc<Self>, snapshot: Snapshot) {
        let old = std::mem::replace(
            &mut *self.directory.write().unwrap_or_else(|p| p.into_inner()),
            snapshot,
        );
        let before = self.snapshot();
        self.refresh_desired();
        let after = self.snapshot();
        let removed = before
            .manifests
            .environments
            .iter()
            .filter(|(name, _)| !after.manifests.environments.contains_key(*name))
            .filter(|(name, _)| old.manifests.environments.contains_key(*name));
        for (name, res) in removed {
            if self.prune.load(std::sync::atomic::Ordering::Relaxed) {
                let (me, env, host) = (self.clone(), name.clone(), res.spec.host.clone());
                tokio::spawn(async move { me.prune_environment(&env, &host).await });
            } else {
                self.event(
                    name,
                    EventKind::Normal,
                    "ManifestRemoved",
                    "its manifest was removed: no longer reconciled, kept running because pruning was not asked (berthd --prune)".into(),
                    None,
                );
            }
        }
    }

    /// `berthd --prune`: environments whose manifest leaves the directory are pruned.
    pub fn set_prune(&self, prune: bool) {
        self.prune
            .store(prune, std::sync::atomic::Ordering::Relaxed);
    }

    /// Recomputes the desired state from the directory and the applied environments (after
    /// a reload or an apply) and enqueues every environment.
    pub fn refresh_desired(&self) {
        let merged = merge_applied(&self.store, &self.directory());
        let names: Vec<String> = merged.manifests.environments.keys().cloned().collect();
        self.sync_hosts(&merged);
        *self.desired.write().unwrap_or_else(|p| p.into_inner()) = merged;
        for n in names {
            self.queue.schedule_now(n);
        }
    }

    pub fn enqueue(&self, env: &str) {
        self.queue.schedule_now(env.to_owned());
    }

    pub fn event(
        &self,
        env: &str,
        kind: EventKind,
        reason: &str,
        message: String,
        op: Option<String>,
    ) {
        match kind {
            EventKind::Normal => info!(env, reason, "{message}"),
            EventKind::Warning => warn!(env, reason, "{message}"),
        }
        let ev = NewEvent {
            at: now_millis(),
            env: env.to_owned(),
            kind,
            reason: reason.to_owned(),
            message,
            op,
        };
        if let Err(e) = self.store.record(ev) {
            warn!(env, "could not record an event: {e}");
        }
    }

    fn sync_hosts(&self, snapshot: &Snapshot) {
        self.hosts.sync(
            snapshot
                .manifests
                .hosts
                .iter()
                .map(|(name, h)| (name.as_str(), &h.spec)),
        );
    }

    /// The environments `env`'s spec depends on (`dependsOn`) that have no ready current
    /// revision, each with why: its rollout waits for them.
    async fn unready_dependencies(
        self: &Arc<Self>,
        env: &str,
        spec: &EnvironmentSpec,
    ) -> Vec<(String, String)> {
        let snapshot = self.snapshot();
        let mut unready = Vec::new();
        for dep in &spec.depends_on {
            if let Err(why) = self.dependency_ready(&snapshot, dep).await {
                debug!(env, dependency = %dep, "waiting: {why}");
                unready.push((dep.clone(), why));
            }
        }
        unready
    }

    /// Whether `dep` has a current revision whose replicas are all ready.
    async fn dependency_ready(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        dep: &str,
    ) -> Result<(), String> {
        let res = snapshot
            .manifests
            .environments
            .get(dep)
            .ok_or("not in the manifests")?;
        let host = snapshot
            .manifests
            .hosts
            .get(&res.spec.host)
            .ok_or_else(|| format!("its host {} is not defined", res.spec.host))?;
        let state = self
            .store
            .env_state(dep)
            .map_err(|e| format!("its state cannot be read: {e}"))?;
        let rev = state.current.ok_or("not deployed yet")?;
        let conn = self
            .hosts
            .get(&res.spec.host, &host.spec)
            .map_err(|e| format!("its host is unreachable: {e}"))?;
        let containers = observe::observe_other(&conn, dep)
            .await
            .map_err(|e| format!("cannot be observed: {e}"))?;
        let observed = crate::plan::Observed {
            containers,
            traffic: None,
        };
        let ready = crate::plan::ready_count(&observed, rev, &res.spec);
        if ready < res.spec.replicas as usize {
            return Err(format!(
                "{ready} of {} replicas of revision {rev} ready",
                res.spec.replicas
            ));
        }
        Ok(())
    }

    /// The environments the manifests place on `host`.
    fn environments_on(&self, host: &str) -> Vec<String> {
        self.snapshot()
            .manifests
            .environments
            .iter()
            .filter(|(_, e)| e.spec.host == host)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Rewrites the hosts' status file whenever the host table changes (on the blocking
    /// pool; changes during a write are coalesced into the next one).
    fn write_host_status(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.hosts.changed.notified().await;
                let statuses = me.hosts.statuses();
                let dir = me.store.dir().to_owned();
                let written =
                    tokio::task::spawn_blocking(move || host_status::write(&dir, &statuses)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("could not write the hosts' status file: {e}"),
                    Err(e) => warn!("could not write the hosts' status file: {e}"),
                }
            }
        });
    }

    /// Runs until `shutdown` turns true; then finishes the steps under way and returns.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        self.write_host_status();
        self.sync_hosts(&self.snapshot());
        if let Some(mut wakes) = self
            .host_wake_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(w) = wakes.recv().await {
                    match w {
                        hosts::Wake::Env(env) => me.enqueue(&env),
                        hosts::Wake::HostUp(host) => {
                            for env in me.environments_on(&host) {
                                me.enqueue(&env);
                            }
                        }
                    }
                }
            });
        }
        for env in self.snapshot().manifests.environments.keys() {
            self.enqueue(env);
        }
        if let Some(mut flips) = self
            .flips_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(f) = flips.recv().await {
                    me.enqueue(&f.env);
                }
            });
        }
        if let Some(mut edits) = self
            .files_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(env) = edits.recv().await {
                    me.enqueue(&env);
                }
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.resync);
            loop {
                tick.tick().await;
                for env in me.snapshot().manifests.environments.keys() {
                    me.queue.schedule(env.clone(), Instant::now());
                }
            }
        });
        let workers = Arc::new(Semaphore::new(16));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let key = tokio::select! {
                k = self.queue.next() => k,
                _ = shutdown.changed() => break,
            };
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            running.spawn(async move {
                let desired = me.snapshot().manifests.environments.contains_key(&key);
                // A Docker event can name an environment that is not (or no longer) in
                // the manifests: it is looked at once, and not kept in the queue.
                let next = if desired {
                    Some(me.reconcile(&key).await)
                } else {
                    None
                };
                me.queue.done(&key);
                if let Some(next) = next {
                    me.queue.schedule(key, Instant::now() + next);
                }
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
        info!("shutting down: finishing the steps under way");
        while running.join_next().await.is_some() {}
    }

    /// Reconciles one environment; returns when to look at it again. Errors are recorded
    /// and turned into a backoff, never returned.
    async fn reconcile(self: &Arc<Self>, env: &str) -> Duration {
        let began = std::time::Instant::now();
        let next = self.reconcile_outcome(env).await;
        self.metrics
            .reconcile_seconds
            .observe(began.elapsed().as_secs_f64());
        // Off the runtime's workers: a slow disk must not freeze probes and the queue.
        let (store, name) = (self.store.clone(), env.to_owned());
        match tokio::task::spawn_blocking(move || status::write(&store, &name)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(env, "could not write the status file: {e}"),
            Err(e) => warn!(env, "could not write the status file: {e}"),
        }
        next
    }

    async fn reconcile_outcome(self: &Arc<Self>, env: &str) -> Duration {
        match self.reconcile_inner(env).await {
            Ok(next) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reset(env);
                next
            }
            Err(ReconcileError::HostUnavailable { host, message }) => {
                // Not this environment's failure: no backoff of its own. The host's task
                // enqueues it again when the host connects; the resync is a safety net.
                debug!(env, host, "waiting for its host: {message}");
                let _ = self
                    .store
                    .update_env_state(env, |s| s.message = message.clone());
                self.resync
            }
            Err(e) => {
                let delay = self
                    .backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next(env);
                warn!(env, "reconcile failed (retry in {delay:?}): {e}");
                let message = e.to_string();
                let _ = self
                    .store
                    .update_env_state(env, |s| s.message = format!("error: {message}"));
                delay
            }
        }
    }

    async fn reconcile_inner(self: &Arc<Self>, env: &str) -> Result<Duration, ReconcileError> {
        let snapshot = self.snapshot();
        let Some(resource) = snapshot.manifests.environments.get(env) else {
            // Removing a manifest never deletes what runs: nothing to do until it is back.
            return Ok(self.resync);
        };
        let spec: &EnvironmentSpec = &resource.spec;
        let Some(host_res) = snapshot.manifests.hosts.get(&spec.host) else {
            return Err(ReconcileError::Config {
                env: env.into(),
                message: format!("host {} is not defined", spec.host),
            });
        };
        let conn = self.hosts.get(&spec.host, &host_res.spec)?;
        if let (Address::Local, berth_api::environment::Traffic::Nginx(n)) =
            (&host_res.spec.address, &spec.traffic)
        {
            self.files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .watch(env, std::path::Path::new(&n.upstream_file));
        }
        // Bounded per host: at most maxParallel environments of a host act at once.
        let _permit = conn.limit.clone().acquire_owned().await;
        let target = act::Target {
            conn: &conn,
            env,
            manifest: spec,
            host_spec: &host_res.spec,
            // An applied environment reflects no commit of the directory.
            commit: if is_applied(resource) {
                None
            } else {
                snapshot.commit.as_deref()
            },
        };
        act::reconcile_env(self, &target).await
    }
}
