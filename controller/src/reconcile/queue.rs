//! The work queue of environment keys, like kube-runtime's scheduler + runner: a key is
//! scheduled at a time (the earliest request wins), never handed out twice at once, and a
//! request that arrives while its key is being worked on is parked, not lost.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

pub struct Queue<K> {
    // A std Mutex: every critical section is a few map operations and none is held
    // across an `.await` (see `next`).
    inner: Mutex<Inner<K>>,
    wake: Notify,
}

struct Inner<K> {
    scheduled: HashMap<K, Instant>,
    running: HashSet<K>,
    /// Requests for running keys, applied when they are done.
    parked: HashMap<K, Instant>,
}

impl<K: Clone + Eq + Hash> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            inner: Mutex::new(Inner {
                scheduled: HashMap::new(),
                running: HashSet::new(),
                parked: HashMap::new(),
            }),
            wake: Notify::new(),
        }
    }
}

fn earliest<K: Eq + Hash>(map: &mut HashMap<K, Instant>, key: K, at: Instant) {
    let slot = map.entry(key).or_insert(at);
    if at < *slot {
        *slot = at;
    }
}

impl<K: Clone + Eq + Hash> Queue<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        // A panic while holding this lock cannot leave the maps half-updated in a way
        // that matters (each operation is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `key` to be worked on at `at` (or earlier, if already asked).
    pub fn schedule(&self, key: K, at: Instant) {
        let mut inner = self.lock();
        if inner.running.contains(&key) {
            earliest(&mut inner.parked, key, at);
        } else {
            earliest(&mut inner.scheduled, key, at);
        }
        drop(inner);
        self.wake.notify_one();
    }

    pub fn schedule_now(&self, key: K) {
        self.schedule(key, Instant::now());
    }

    /// Waits for the next due key and marks it running. Call [`Queue::done`] after.
    pub async fn next(&self) -> K {
        loop {
            // Registered before looking, so a `schedule` between the look and the wait
            // still wakes us.
            let notified = self.wake.notified();
            let next_due = {
                let mut inner = self.lock();
                let now = Instant::now();
                let due = inner
                    .scheduled
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, at)| (k.clone(), *at));
                match due {
                    Some((key, at)) if at <= now => {
                        inner.scheduled.remove(&key);
                        inner.running.insert(key.clone());
                        return key;
                    }
                    Some((_, at)) => Some(at),
                    None => None,
                }
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` as no longer running; a request parked meanwhile is scheduled.
    pub fn done(&self, key: &K) {
        let mut inner = self.lock();
        inner.running.remove(key);
        if let Some(at) = inner.parked.remove(key) {
            earliest(&mut inner.scheduled, key.clone(), at);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Keys waiting or running (for status and tests).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.scheduled.len() + inner.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_earliest_request_wins_and_duplicates_collapse() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.schedule("a", t0 + Duration::from_secs(10));
        q.schedule("a", t0 + Duration::from_secs(2));
        q.schedule("a", t0 + Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        let k = q.next().await;
        assert_eq!(k, "a");
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_key_is_never_handed_out_twice_and_a_trigger_meanwhile_is_parked() {
        let q = Queue::default();
        q.schedule_now("a");
        assert_eq!(q.next().await, "a");
        q.schedule_now("a");
        q.schedule_now("b");
        // "a" is running: the next key is "b", and "a" is not handed out again yet.
        assert_eq!(q.next().await, "b");
        let again = tokio::time::timeout(Duration::from_secs(60), q.next()).await;
        assert!(again.is_err(), "a running key was handed out twice");
        q.done(&"a");
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_come_out_in_time_order() {
        let q = Queue::default();
        let t0 = Instant::now();
        q.schedule("late", t0 + Duration::from_secs(3));
        q.schedule("early", t0 + Duration::from_secs(1));
        assert_eq!(q.next().await, "early");
        assert_eq!(q.next().await, "late");
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_consumer_wakes_for_a_new_earlier_key() {
        let q = std::sync::Arc::new(Queue::default());
        let t0 = Instant::now();
        q.schedule("slow", t0 + Duration::from_secs(100));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.schedule_now("fast");
        assert_eq!(waiter.await.unwrap(), "fast");
        assert!(Instant::now() - t0 < Duration::from_secs(2));
    }
}
