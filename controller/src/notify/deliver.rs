//! The notifier: one per berthd. A task watches the journal and queues what is due; a
//! bounded queue feeds a delivery task that posts each notification with retries and
//! backoff, then records in the store that it has ended.
//!
//! # Guarantees
//! - Never blocks the controller loop or a rollout: the loop only writes the journal, as
//!   it always does; reading it, queueing and posting happen on the notifier's own tasks.
//!   The queue is bounded: when it is full the notification is dropped, with a warning
//!   in the log and the events, counted ([`Notifier::dropped`]) and recorded as
//!   [`Delivery::Dropped`].
//! - Once per event: a notification is recorded when it has ended (delivered, given up or
//!   dropped) and is never queued again after that, also across restarts. One whose
//!   delivery a crash interrupted is sent again by the next berthd (at least once; see
//!   [`Store::put_notification`]).
//! - Webhook URLs are secrets: never logged, stored or put in an error. The log names the
//!   environment, the event, the webhook's position in the list and the HTTP status.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use berth_api::environment::{EnvironmentSpec, NotifyEvent, Webhook, WebhookTarget};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use super::{body, due, webhooks_for, Origin};
use crate::op::Millis;
use crate::store::{Delivery, EventKind, NewEvent, NotificationRecord, Store, StoreError};

/// Posts notifications. The real one is [`UreqTransport`]; tests script their own.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Posts `body` (JSON) to `url`: the HTTP status of the answer, or why there was none,
    /// in words that do not contain the URL.
    async fn post(&self, url: &str, body: &str) -> Result<u16, String>;
}

/// HTTP(S) with ureq (rustls), on the blocking pool, 10 s per attempt.
#[derive(Clone, Debug, Default)]
pub struct UreqTransport;

#[async_trait]
impl Transport for UreqTransport {
    async fn post(&self, url: &str, body: &str) -> Result<u16, String> {
        let (url, body) = (url.to_owned(), body.to_owned());
        tokio::task::spawn_blocking(move || {
            let answer = ureq::post(&url)
                .timeout(Duration::from_secs(10))
                .set("Content-Type", "application/json")
                .set("User-Agent", concat!("berthd/", env!("CARGO_PKG_VERSION")))
                .send_string(&body);
            match answer {
                Ok(r) => Ok(r.status()),
                Err(ureq::Error::Status(status, _)) => Ok(status),
                // Only the kind: ureq's own message for a transport error quotes the URL.
                Err(ureq::Error::Transport(t)) => Err(t.kind().to_string()),
            }
        })
        .await
        .map_err(|e| format!("the request did not complete: {e}"))?
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Notifications waiting to be posted; beyond it they are dropped.
    pub capacity: usize,
    /// Notifications posted at once.
    pub concurrency: usize,
    /// Attempts per webhook (the first included).
    pub attempts: u32,
    /// The wait after the first failed attempt; doubled after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How often the journal is read without a write to wake for.
    pub resync: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            capacity: 256,
            concurrency: 4,
            // 1 + 2 + 4 + 8 + 16 s of waits: a receiver restarting is waited for.
            attempts: 6,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(30),
        }
    }
}

/// How many of each environment's newest operations are looked at. A notification is
/// due when its journal entry is written, so only the newest few can have one pending;
/// more would be re-read on every journal write for nothing.
const RECENT_OPERATIONS: usize = 3;

struct Job {
    op: String,
    env: String,
    event: NotifyEvent,
    body: String,
    webhooks: Vec<Webhook>,
}

pub struct Notifier {
    store: Store,
    tx: mpsc::Sender<Job>,
    /// Queued or being posted: not queued again by the next sweep. A std `Mutex`: held
    /// for one set operation, never across an `.await`.
    inflight: Mutex<HashSet<(String, NotifyEvent)>>,
    dropped: AtomicU64,
    options: Options,
}

impl Notifier {
    /// Starts the notifier's tasks on the current runtime: one reads the journal (at once,
    /// after every journal write, and every `options.resync`), one posts.
    pub fn start(store: Store, transport: Arc<dyn Transport>, options: Options) -> Arc<Notifier> {
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        let n = Arc::new(Notifier {
            store,
            tx,
            inflight: Mutex::new(HashSet::new()),
            dropped: AtomicU64::new(0),
            options,
        });
        tokio::spawn(watch_journal(n.clone()));
        tokio::spawn(post_all(n.clone(), rx, transport));
        n
    }

    /// Notifications dropped because the queue was full, since this berthd started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues every notification that is due and neither queued nor ended.
    ///
    /// # Errors
    /// Reading the journal; what was queued before the error stays queued.
    pub fn sweep(&self) -> Result<(), StoreError> {
        for env in self.store.environments()? {
            for op in self.store.operations(&env, RECENT_OPERATIONS)? {
                // Operations journaled before their spec was pinned notify nothing.
                let Ok(spec) = serde_json::from_value::<EnvironmentSpec>(op.spec.clone()) else {
                    continue;
                };
                for d in due(&op) {
                    let webhooks = webhooks_for(&spec, d.event);
                    let key = (op.id.clone(), d.event);
                    if webhooks.is_empty()
                        || self.lock().contains(&key)
                        || self.store.notification(&op.id, d.event)?.is_some()
                    {
                        continue;
                    }
                    let origin = self.origin(&env, op.to);
                    let body = body(&op, &spec, &d, &origin);
                    let job = Job {
                        op: op.id.clone(),
                        env: env.clone(),
                        event: d.event,
                        body: serde_json::to_string(&body).unwrap_or_default(),
                        webhooks,
                    };
                    self.queue(key, job)?;
                }
            }
        }
        Ok(())
    }

    fn queue(&self, key: (String, NotifyEvent), job: Job) -> Result<(), StoreError> {
        self.lock().insert(key.clone());
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(
                    env = %job.env,
                    event = job.event.as_str(),
                    dropped = n,
                    "notification dropped: the queue is full"
                );
                self.event(
                    &job.env,
                    &job.op,
                    "NotificationDropped",
                    format!(
                        "{} notification not sent: the notifier's queue is full",
                        job.event.as_str()
                    ),
                );
                let r = self.end(&job, Delivery::Dropped);
                self.lock().remove(&key);
                r
            }
            // The posting task is gone (the runtime is shutting down): the next berthd
            // finds it due and sends it.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.lock().remove(&key);
                Ok(())
            }
        }
    }

    /// The digest and commit the journal recorded for the revision, as far as known.
    fn origin(&self, env: &str, revision: crate::model::Revision) -> Origin {
        match self.store.revision(env, revision) {
            Ok(Some(r)) => Origin {
                digest: r.repo_digest,
                commit: r.commit,
            },
            _ => Origin::default(),
        }
    }

    /// Posts `job` to each of its webhooks, then records that it ended.
    async fn post(&self, job: Job, transport: &dyn Transport) {
        let mut failed = 0;
        for (i, hook) in job.webhooks.iter().enumerate() {
            if !self.post_one(&job, i + 1, hook, transport).await {
                failed += 1;
            }
        }
        let delivery = if failed == 0 {
            Delivery::Delivered
        } else {
            self.event(
                &job.env,
                &job.op,
                "NotificationFailed",
                format!(
                    "{} notification: {failed} of {} webhooks did not take it (see berthd's log)",
                    job.event.as_str(),
                    job.webhooks.len()
                ),
            );
            Delivery::GaveUp { failed }
        };
        if let Err(e) = self.end(&job, delivery) {
            warn!(env = %job.env, event = job.event.as_str(), "cannot record the notification: {e}");
        }
        self.lock().remove(&(job.op.clone(), job.event));
    }

    /// Posts to one webhook, retrying with backoff: whether it took the notification.
    async fn post_one(
        &self,
        job: &Job,
        n: usize,
        hook: &Webhook,
        transport: &dyn Transport,
    ) -> bool {
        let (env, event) = (job.env.as_str(), job.event.as_str());
        let url = match url_of(hook) {
            Ok(u) => u,
            Err(why) => {
                warn!(env, event, webhook = n, "notification not sent: {why}");
                return false;
            }
        };
        let mut wait = self.options.backoff;
        for attempt in 1..=self.options.attempts {
            let last = attempt == self.options.attempts;
            match transport.post(&url, &job.body).await {
                Ok(status) if (200..300).contains(&status) => {
                    info!(env, event, webhook = n, status, "notification delivered");
                    return true;
                }
                Ok(status) if retryable(status) && !last => {
                    warn!(
                        env,
                        event,
                        webhook = n,
                        status,
                        attempt,
                        "webhook answered {status}; retrying in {wait:?}"
                    );
                }
                Ok(status) => {
                    warn!(
                        env,
                        event,
                        webhook = n,
                        status,
                        attempt,
                        "webhook answered {status}; notification not delivered"
                    );
                    return false;
                }
                Err(why) if !last => {
                    warn!(
                        env,
                        event,
                        webhook = n,
                        attempt,
                        "webhook unreachable ({why}); retrying in {wait:?}"
                    );
                }
                Err(why) => {
                    warn!(
                        env,
                        event,
                        webhook = n,
                        attempt,
                        "webhook unreachable ({why}); notification not delivered"
                    );
                    return false;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.options.max_backoff);
        }
        false
    }

    fn end(&self, job: &Job, delivery: Delivery) -> Result<(), StoreError> {
        self.store.put_notification(&NotificationRecord {
            op: job.op.clone(),
            env: job.env.clone(),
            event: job.event,
            delivery,
            webhooks: u32::try_from(job.webhooks.len()).unwrap_or(u32::MAX),
            at: now_millis(),
        })
    }

    fn event(&self, env: &str, op: &str, reason: &str, message: String) {
        let e = NewEvent {
            at: now_millis(),
            env: env.to_owned(),
            kind: EventKind::Warning,
            reason: reason.to_owned(),
            message,
            op: Some(op.to_owned()),
        };
        if let Err(e) = self.store.record(e) {
            warn!(env, "could not record an event: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(String, NotifyEvent)>> {
        // A set of keys: a panic elsewhere cannot leave it in a state worth stopping for.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// 5xx, 408 and 429 are worth another try; another 4xx will say the same again.
fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The webhook's URL, read from its file at each delivery (so a rotated URL applies at
/// once). Errors name the file, never what is in it.
fn url_of(hook: &Webhook) -> Result<String, String> {
    match &hook.target {
        WebhookTarget::Url(u) => Ok(u.clone()),
        WebhookTarget::UrlFile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the URL file {path}: {}", e.kind()))?;
            let url = text.trim();
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url.to_owned())
            } else {
                Err(format!("the URL file {path} does not hold an http(s) URL"))
            }
        }
    }
}

fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Sweeps at once, after every journal write, and every `resync`.
async fn watch_journal(n: Arc<Notifier>) {
    let mut writes = n.store.journal_writes();
    loop {
        writes.borrow_and_update();
        if let Err(e) = n.sweep() {
            warn!("notifications: cannot read the journal: {e}");
        }
        tokio::select! {
            changed = writes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(n.options.resync) => {}
        }
    }
}

/// Takes queued notifications and posts up to `concurrency` at once, each on its own
/// task, so that a webhook retrying for a minute holds up no other.
async fn post_all(n: Arc<Notifier>, mut rx: mpsc::Receiver<Job>, transport: Arc<dyn Transport>) {
    let slots = Arc::new(Semaphore::new(n.options.concurrency.max(1)));
    while let Some(job) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (n, transport) = (n.clone(), transport.clone());
        tokio::spawn(async move {
            n.post(job, transport.as_ref()).await;
            drop(slot);
        });
    }
}
