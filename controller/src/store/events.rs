//! Events: numbered, trimmed to the newest N, and watched by subscribers.

use std::collections::VecDeque;
use std::sync::PoisonError;

use tokio::sync::watch;

use super::EventRecord;
use super::{decode_keyed, encode, sled_err, NewEvent, Store, StoreError, EVENTS};

impl Store {
    /// Records an event and returns its sequence number.
    ///
    /// # Guarantees
    /// Sequence numbers increase, also across restarts (sled's `generate_id`), and events
    /// enter the tree in sequence order. Once more than the retention limit are stored,
    /// the oldest are removed here (one `pop_min` per event: cheap and exact).
    /// Not flushed: see the module's Guarantees.
    ///
    /// # Errors
    /// Storage errors.
    pub fn record(&self, event: NewEvent) -> Result<u64, StoreError> {
        let t = self.t();
        let mut count = self
            .inner
            .event_writer
            .lock()
            // The guarded count is only a cache of the tree's length; a panic elsewhere
            // cannot leave it in a state worth refusing to record events over.
            .unwrap_or_else(PoisonError::into_inner);
        let seq =
            t.db.generate_id()
                .map_err(sled_err(EVENTS, b"generate_id"))?;
        let key = seq.to_be_bytes();
        let rec = EventRecord::new(seq, event);
        t.events
            .insert(key, encode(EVENTS, &key, &rec)?)
            .map_err(sled_err(EVENTS, &key))?;
        *count += 1;
        while *count > self.inner.retention {
            match t.events.pop_min().map_err(sled_err(EVENTS, b"oldest"))? {
                Some(_) => *count -= 1,
                None => *count = 0,
            }
        }
        self.inner.new_events.send_replace(seq);
        Ok(seq)
    }

    /// Stored events, oldest first.
    ///
    /// With `since_seq: Some(s)`, the first `limit` events after `s` (for paging and for
    /// resuming a watch); with `None`, the newest `limit` events (like `tail -n`). `env`
    /// filters by environment.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for an event that does not deserialize; storage errors.
    pub fn events(
        &self,
        since_seq: Option<u64>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        match since_seq {
            Some(s) => Ok(self.events_after(Some(s), env, limit)?.0),
            None => {
                let mut out = Vec::new();
                for kv in self.t().events.iter().rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = kv.map_err(sled_err(EVENTS, b"newest"))?;
                    let e: EventRecord = decode_keyed(EVENTS, &k, &v)?;
                    if env.is_none_or(|env| e.env == env) {
                        out.push(e);
                    }
                }
                out.reverse();
                Ok(out)
            }
        }
    }

    /// Up to `limit` matching events after `after`, and the last sequence number looked
    /// at (matching or not), so a filtered reader does not scan the same events again.
    fn events_after(
        &self,
        after: Option<u64>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, Option<u64>), StoreError> {
        let start = match after {
            None => 0,
            Some(u64::MAX) => return Ok((Vec::new(), after)),
            Some(s) => s + 1,
        };
        let mut out = Vec::new();
        let mut last = after;
        for kv in self.t().events.range(start.to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(sled_err(EVENTS, &start.to_be_bytes()))?;
            let e: EventRecord = match decode_keyed(EVENTS, &k, &v) {
                Ok(e) => e,
                // Hand out the good events before a bad one; the next call reports it.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            last = Some(e.seq);
            if env.is_none_or(|env| e.env == env) {
                out.push(e);
            }
        }
        Ok((out, last))
    }

    /// Watches for events recorded from now on (all environments).
    pub fn subscribe(&self) -> Subscription {
        let last = self
            .inner
            .t
            .events
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok().map(u64::from_be_bytes));
        self.subscribe_since(last, None)
    }

    /// Watches for events after `since_seq` (all stored ones for `None`), of one
    /// environment or all: `berthctl events -w` resumes from the last one it showed.
    pub fn subscribe_since(&self, since_seq: Option<u64>, env: Option<&str>) -> Subscription {
        Subscription {
            store: self.clone(),
            rx: self.inner.new_events.subscribe(),
            after: since_seq,
            env: env.map(str::to_owned),
            buf: VecDeque::new(),
        }
    }
}

/// A watch on the event tree: [`Subscription::next`] waits for the next event.
///
/// Why not sled's own `watch_prefix` `Subscriber`: in sled 0.34 every subscriber has a
/// bounded channel (1024) that the *writer* blocks on when full, so a stalled
/// `events -w` client would stall the controller's journal; its `Future` can also miss a
/// wake-up (it registers the waker after checking the channel, outside the lock the
/// writer holds). Here writers only bump a `tokio::sync::watch` value, and readers read
/// the tree itself from the last sequence number they saw, so nothing is lost to a
/// slow reader except events older than the retention limit.
///
/// A subscription holds its store open.
pub struct Subscription {
    store: Store,
    rx: watch::Receiver<u64>,
    after: Option<u64>,
    env: Option<String>,
    buf: VecDeque<EventRecord>,
}

impl Subscription {
    /// The next event, waiting for one to be recorded if need be. Cancel-safe: dropping
    /// the future loses nothing.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for an event that does not deserialize (the subscription
    /// stays usable and continues after it); storage errors.
    pub async fn next(&mut self) -> Result<EventRecord, StoreError> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Ok(e);
            }
            // Mark the current value seen *before* reading the tree: an event inserted
            // after the read is announced after this mark, so `changed` returns for it.
            self.rx.borrow_and_update();
            let (batch, last) = match self
                .store
                .events_after(self.after, self.env.as_deref(), 256)
            {
                Ok(r) => r,
                Err(e) => {
                    self.skip_bad_event(&e);
                    return Err(e);
                }
            };
            self.after = last;
            if batch.is_empty() {
                if self.rx.changed().await.is_err() {
                    return Err(StoreError::Closed);
                }
            } else {
                self.buf.extend(batch);
            }
        }
    }

    /// Turns the subscription into a `Stream` (for server-sent events and the like).
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<EventRecord, StoreError>> + Send {
        futures_util::stream::unfold(self, |mut s| async move {
            let r = s.next().await;
            Some((r, s))
        })
    }

    /// After a corrupt event, move past it so the next call does not fail forever.
    fn skip_bad_event(&mut self, e: &StoreError) {
        if let StoreError::Corrupt { tree, key, .. } = e {
            if *tree == EVENTS {
                if let Ok(seq) = key.parse::<u64>() {
                    self.after = Some(seq);
                }
            }
        }
    }
}
