//! The sled journal: operations, environment state, revisions, backups and events.
//!
//! # Layout
//! One sled database per state directory, one tree per kind of record, values in JSON.
//! Keys are chosen so that every listing is a prefix scan in the order it is shown:
//!
//! | tree            | key                              | value                   |
//! |-----------------|----------------------------------|-------------------------|
//! | `operations`    | `env \0 op-ulid`                 | [`Operation`]           |
//! | `operation_ids` | `op-ulid`                        | env (index for by-id)   |
//! | `environments`  | `env`                            | [`EnvState`]            |
//! | `revisions`     | `env \0 revision (20 digits)`    | [`RevisionRecord`]      |
//! | `revision_max`  | `env`                            | highest revision, u64 BE|
//! | `backups`       | `env \0 backup-ulid`             | [`BackupRecord`]        |
//! | `backup_ids`    | `backup-ulid`                    | env (index for by-id)   |
//! | `events`        | seq, u64 big-endian              | [`EventRecord`]         |
//! | `applied`       | env                              | [`AppliedRecord`]       |
//! | `notifications` | `op-ulid \0 event`               | [`NotificationRecord`]  |
//!
//! # Guarantees
//! - Every write that can precede a side effect (operations, environment state,
//!   revisions, backups, and removals of them) is flushed before the call returns
//!   (docs/design.md, journal rules 1 and 2). A flush survives a kill of the process;
//!   it is not a promise against power loss (sled issue 1452).
//! - Writes that must agree (an operation and its environment's `active_op`) are one sled
//!   transaction, which sled recovers atomically: after a crash, both or neither.
//! - Bad stored data is an `Err` ([`StoreError::is_corrupt`]), never a panic.
//! - [`Store::record`] does not flush: events are history for humans, not the journal.
//!   An event can be lost in a crash up to sled's background flush (500 ms) unless a
//!   later flushing write (any journal write) carried it.
//!
//! Calls block the thread (a flush is an fsync, milliseconds); on a multi-threaded Tokio
//! runtime a flush first moves the worker's other tasks elsewhere (`block_in_place`), so
//! async callers stall only themselves. Callers may also use `spawn_blocking` for bursts. A sled database is locked by its process: open one
//! [`Store`] per state directory and clone it (clones share everything).

mod applied;
mod error;
mod events;
mod notifications;
mod records;
mod recover;
#[cfg(test)]
mod tests;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
};
use sled::Tree;
use tokio::sync::watch;

use crate::model::Revision;
use crate::op::{Entry, Event, Operation};

pub use applied::{AppliedRecord, TakeOver};
pub use error::StoreError;
pub use events::Subscription;
pub use notifications::{Delivery, NotificationRecord};
pub use records::{
    BackupRecord, EnvState, EventKind, EventRecord, FailedTemplate, NewEvent, PinRecord,
    RevisionRecord,
};
pub use recover::Repair;

/// How many events are kept by default (the newest).
pub const DEFAULT_EVENT_RETENTION: usize = 10_000;

/// The on-disk format this build reads and writes; stored under `berth.format` in sled's
/// default tree so that a future incompatible layout is refused rather than misread.
pub const FORMAT: u32 = 1;
const FORMAT_KEY: &[u8] = b"berth.format";

const OPS: &str = "operations";
const OP_IDS: &str = "operation_ids";
const ENVS: &str = "environments";
const REVISIONS: &str = "revisions";
const REVISION_MAX: &str = "revision_max";
const BACKUPS: &str = "backups";
const BACKUP_IDS: &str = "backup_ids";
const EVENTS: &str = "events";
const APPLIED: &str = "applied";
const NOTIFICATIONS: &str = "notifications";

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The newest this many events are kept; older ones are removed as new ones arrive.
    pub event_retention: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            event_retention: DEFAULT_EVENT_RETENTION,
        }
    }
}

/// The journal. Cheap to clone; all clones are the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Trees {
    db: sled::Db,
    ops: Tree,
    op_ids: Tree,
    envs: Tree,
    revisions: Tree,
    revision_max: Tree,
    backups: Tree,
    backup_ids: Tree,
    events: Tree,
    applied: Tree,
    notifications: Tree,
}

struct Inner {
    dir: PathBuf,
    t: Trees,
    retention: usize,
    /// Held while an event is numbered, inserted and trimmed, and counts stored events.
    /// A std `Mutex` although it spans sled calls (STYLE.md rule 8 says not to): the
    /// section is a few in-memory sled operations, never an `.await`, a flush or a call
    /// back into our code, and it is what makes events enter the tree in sequence order,
    /// which [`Subscription`] relies on to never skip one.
    event_writer: Mutex<usize>,
    /// The last recorded sequence number (`None` before the first event: sled's ids
    /// start at 0); subscribers wait on it, then read the tree.
    new_events: watch::Sender<Option<u64>>,
    /// Counts journal writes (`begin`, `append`), announced after their flush: the
    /// notifier wakes on it and reads the operations themselves.
    journal_writes: watch::Sender<u64>,
    repairs: Vec<Repair>,
}

impl Store {
    /// Opens (creating, mode 0700) the journal in `dir`, which belongs to the store alone,
    /// with the default options.
    ///
    /// # Guarantees
    /// Before it returns, every stored operation has replayed through
    /// [`Operation::status`] and every `active_op` names an unfinished operation of its
    /// environment. Pointers are *repaired* (and reported by [`Store::repairs`], by a
    /// `Warning` event "JournalRepaired" and in the log) when the fix is unambiguous:
    /// - an `active_op` naming an operation that is not stored (the begin that would
    ///   have written it never completed, so nothing was done under it) is cleared;
    /// - an `active_op` naming a finished operation is cleared;
    /// - an unfinished operation that no `active_op` names, when it is the environment's
    ///   only one and the pointer is empty, becomes the active operation (so the
    ///   interrupted rollout is resumed, not forgotten);
    /// - the by-id indexes, which are derived data, are rebuilt where they disagree.
    ///
    /// # Errors
    /// [`StoreError::Dir`], [`StoreError::Open`] (also when another process has it open),
    /// [`StoreError::Format`]; [`StoreError::Corrupt`] for an operation, environment state,
    /// revision or backup that does not deserialize or sits under the wrong key (events
    /// are checked when read); [`StoreError::Replay`] for an operation whose log does not
    /// replay; [`StoreError::Inconsistent`] when an environment has two unfinished
    /// operations. These refuse to start rather than guess whether a half-done rollout
    /// exists.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// [`Store::open`] with options.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        let db = open_db(dir)?;
        check_format(&db, dir)?;
        let tree = |name: &'static str| {
            db.open_tree(name).map_err(|source| StoreError::Open {
                path: dir.join(name),
                source,
            })
        };
        let t = Trees {
            ops: tree(OPS)?,
            op_ids: tree(OP_IDS)?,
            envs: tree(ENVS)?,
            revisions: tree(REVISIONS)?,
            revision_max: tree(REVISION_MAX)?,
            backups: tree(BACKUPS)?,
            backup_ids: tree(BACKUP_IDS)?,
            events: tree(EVENTS)?,
            applied: tree(APPLIED)?,
            notifications: tree(NOTIFICATIONS)?,
            db: db.clone(),
        };
        let recovered = recover::check_and_repair(&t)?;
        let (new_events, _) = watch::channel(recovered.last_event);
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                t,
                retention: options.event_retention.max(1),
                event_writer: Mutex::new(recovered.event_count),
                new_events,
                journal_writes: watch::channel(0).0,
                repairs: recovered.repairs,
            }),
        };
        for r in &store.inner.repairs {
            tracing::warn!(env = r.env(), "journal repaired on open: {r}");
            store.record(NewEvent {
                at: now_millis(),
                env: r.env().to_owned(),
                kind: EventKind::Warning,
                reason: "JournalRepaired".into(),
                message: r.to_string(),
                op: r.op().map(str::to_owned),
            })?;
        }
        if !store.inner.repairs.is_empty() {
            store.flush()?;
        }
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What [`Store::open`] repaired (empty for a consistent journal).
    pub fn repairs(&self) -> &[Repair] {
        &self.inner.repairs
    }

    fn t(&self) -> &Trees {
        &self.inner.t
    }

    /// Flushes to disk (an fsync). On a multi-threaded Tokio runtime the worker thread
    /// first hands its other tasks to another worker (`block_in_place`), so that a slow
    /// disk stalls only the caller, never probes or the queue; the callers (the reconcile
    /// loop, the steps) keep a sync API, which berthctl and the tests use as well.
    fn flush(&self) -> Result<(), StoreError> {
        let flush = || {
            self.t()
                .db
                .flush()
                .map(drop)
                .map_err(|source| StoreError::Flush { source })
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(flush),
            // A current-thread runtime cannot hand its tasks over, and outside a runtime
            // there are none.
            _ => flush(),
        }
    }

    // ---- Operations ----------------------------------------------------------------

    /// Journals a new operation and makes it its environment's `active_op`.
    ///
    /// # Guarantees
    /// The operation (with its step list) and the pointer are written in one transaction
    /// and flushed before this returns, so the caller may start the first side effect
    /// (docs/design.md, journal rule 1). Nothing is written on error.
    ///
    /// # Errors
    /// [`StoreError::Busy`] when the environment's `active_op` names an unfinished
    /// operation; [`StoreError::OperationExists`] for a reused id;
    /// [`StoreError::NotBeginnable`] when the operation's log does not replay or already
    /// has `Finished`; [`StoreError::InvalidName`] for an id that is not a canonical ULID
    /// (listing order is id order) or a bad environment name; storage errors.
    pub fn begin(&self, op: &Operation) -> Result<(), StoreError> {
        check_env(&op.env)?;
        check_ulid("operation id", &op.id)?;
        let status = op.status().map_err(|e| StoreError::NotBeginnable {
            op: op.id.clone(),
            why: e.to_string(),
        })?;
        if status.outcome.is_some() {
            return Err(StoreError::NotBeginnable {
                op: op.id.clone(),
                why: "its log is already finished".into(),
            });
        }
        let key = under(&op.env, &op.id);
        let value = encode(OPS, &key, op)?;
        let t = self.t();
        (&t.ops, &t.op_ids, &t.envs)
            .transaction(|(ops, op_ids, envs)| {
                if op_ids.get(op.id.as_bytes())?.is_some() || ops.get(&key)?.is_some() {
                    return abort(StoreError::OperationExists { op: op.id.clone() });
                }
                let mut state = match envs.get(op.env.as_bytes())? {
                    Some(b) => decode::<EnvState>(ENVS, op.env.as_bytes(), &b).map_err(Abort)?,
                    None => EnvState::default(),
                };
                if let Some(active) = &state.active_op {
                    let akey = under(&op.env, active);
                    // A pointer to a missing or finished operation is stale (open repairs
                    // those); only an unfinished one blocks.
                    if let Some(b) = ops.get(&akey)? {
                        let a = decode_keyed::<Operation>(OPS, &akey, &b).map_err(Abort)?;
                        if !finished(&a, &akey).map_err(Abort)? {
                            return abort(StoreError::Busy {
                                env: op.env.clone(),
                                active: active.clone(),
                            });
                        }
                    }
                }
                ops.insert(key.as_slice(), value.as_slice())?;
                op_ids.insert(op.id.as_bytes(), op.env.as_bytes())?;
                state.active_op = Some(op.id.clone());
                state.updated_at = op.created_at;
                let sv = encode(ENVS, op.env.as_bytes(), &state).map_err(Abort)?;
                envs.insert(op.env.as_bytes(), sv)?;
                Ok(())
            })
            .map_err(tx_err(OPS, &key))?;
        self.flush()?;
        self.inner.journal_writes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Appends `event` to operation `op_id`'s log and returns the operation as stored.
    ///
    /// # Guarantees
    /// The log with the event replays through [`Operation::status`], or nothing is
    /// written. The write is flushed before this returns (journal rule 2 of docs/design.md:
    /// a step's `Started` is durable before its side effect). `Finished` clears the
    /// environment's `active_op` in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::IllegalTransition`] when the event is not possible here (nothing
    /// written); [`StoreError::NoSuchOperation`]; [`StoreError::Replay`] /
    /// [`StoreError::Corrupt`] when the stored operation is already bad; storage errors.
    pub fn append(&self, op_id: &str, event: Event) -> Result<Operation, StoreError> {
        let env = self
            .operation_env(op_id)?
            .ok_or_else(|| StoreError::NoSuchOperation { op: op_id.into() })?;
        let key = under(&env, op_id);
        let finishes = matches!(event.entry, Entry::Finished { .. });
        let t = self.t();
        let op = (&t.ops, &t.envs)
            .transaction(|(ops, envs)| {
                let Some(b) = ops.get(&key)? else {
                    return abort(StoreError::NoSuchOperation { op: op_id.into() });
                };
                let mut op = decode_keyed::<Operation>(OPS, &key, &b).map_err(Abort)?;
                // Replay what is stored first, so that a bad stored log is reported as
                // such, not blamed on the new event.
                finished(&op, &key).map_err(Abort)?;
                op.log.push(event.clone());
                op.status()
                    .map_err(|e| Abort(StoreError::IllegalTransition(e)))?;
                ops.insert(key.as_slice(), encode(OPS, &key, &op).map_err(Abort)?)?;
                if finishes {
                    if let Some(b) = envs.get(env.as_bytes())? {
                        let mut st = decode::<EnvState>(ENVS, env.as_bytes(), &b).map_err(Abort)?;
                        if st.active_op.as_deref() == Some(op_id) {
                            st.active_op = None;
                            st.updated_at = event.at;
                            let sv = encode(ENVS, env.as_bytes(), &st).map_err(Abort)?;
                            envs.insert(env.as_bytes(), sv)?;
                        }
                    }
                }
                Ok(op)
            })
            .map_err(tx_err(OPS, &key))?;
        self.flush()?;
        self.inner.journal_writes.send_modify(|n| *n += 1);
        Ok(op)
    }

    /// The operation with this id, if stored.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a value that does not deserialize or sits under the
    /// wrong key; storage errors. (The log is not replayed here; `open` did, and every
    /// append does.)
    pub fn operation(&self, op_id: &str) -> Result<Option<Operation>, StoreError> {
        let Some(env) = self.operation_env(op_id)? else {
            return Ok(None);
        };
        let key = under(&env, op_id);
        get_keyed(&self.t().ops, OPS, &key)
    }

    /// The environment's unfinished operation, if any.
    ///
    /// # Errors
    /// [`StoreError::Inconsistent`] if `active_op` names an operation that is not stored
    /// (open repairs that; seeing it later means something wrote around the store);
    /// the errors of [`Store::env_state`] and [`Store::operation`].
    pub fn active_operation(&self, env: &str) -> Result<Option<Operation>, StoreError> {
        let Some(id) = self.env_state(env)?.active_op else {
            return Ok(None);
        };
        let key = under(env, &id);
        match get_keyed(&self.t().ops, OPS, &key)? {
            Some(op) => Ok(Some(op)),
            None => Err(StoreError::Inconsistent {
                env: env.into(),
                message: format!("active_op {id} is not in the operations tree"),
            }),
        }
    }

    /// The environment's newest `limit` operations, newest first.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn operations(&self, env: &str, limit: usize) -> Result<Vec<Operation>, StoreError> {
        check_env(env)?;
        scan_keyed(&self.t().ops, OPS, &prefix(env), true, limit)
    }

    fn operation_env(&self, op_id: &str) -> Result<Option<String>, StoreError> {
        let t = self.t();
        match t
            .op_ids
            .get(op_id.as_bytes())
            .map_err(sled_err(OP_IDS, op_id.as_bytes()))?
        {
            None => Ok(None),
            Some(env) => String::from_utf8(env.to_vec())
                .map(Some)
                .map_err(|e| corrupt(OP_IDS, op_id.as_bytes(), e)),
        }
    }

    // ---- Environment state ---------------------------------------------------------

    /// The environment's state; the default when nothing is stored yet.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; [`StoreError::InvalidName`]; storage errors.
    pub fn env_state(&self, env: &str) -> Result<EnvState, StoreError> {
        check_env(env)?;
        match self
            .t()
            .envs
            .get(env.as_bytes())
            .map_err(sled_err(ENVS, env.as_bytes()))?
        {
            Some(b) => decode(ENVS, env.as_bytes(), &b),
            None => Ok(EnvState::default()),
        }
    }

    /// Read-modify-write of the environment's state; returns the state written.
    ///
    /// # Guarantees
    /// Atomic with respect to every other writer (a compare-and-swap loop: `f` may run
    /// more than once, so it must only modify the state it is given). Flushed before
    /// this returns.
    ///
    /// # Errors
    /// [`StoreError::ActiveOpIsManaged`] if `f` changes `active_op` (only
    /// [`Store::begin`] and [`Store::append`] may, to keep it equal to the operations'
    /// logs; nothing is written); [`StoreError::Corrupt`]; storage errors.
    pub fn update_env_state(
        &self,
        env: &str,
        mut f: impl FnMut(&mut EnvState),
    ) -> Result<EnvState, StoreError> {
        check_env(env)?;
        let envs = &self.t().envs;
        let k = env.as_bytes();
        loop {
            let old = envs.get(k).map_err(sled_err(ENVS, k))?;
            let mut st = match &old {
                Some(b) => decode(ENVS, k, b)?,
                None => EnvState::default(),
            };
            let active = st.active_op.clone();
            f(&mut st);
            if st.active_op != active {
                return Err(StoreError::ActiveOpIsManaged { env: env.into() });
            }
            let new = encode(ENVS, k, &st)?;
            match envs
                .compare_and_swap(k, old, Some(new))
                .map_err(sled_err(ENVS, k))?
            {
                Ok(()) => {
                    self.flush()?;
                    return Ok(st);
                }
                // Someone wrote in between: start again from what they wrote.
                Err(_) => continue,
            }
        }
    }

    /// The names of the environments that have a state record (every environment that
    /// has begun an operation or had its state updated), sorted.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a key that is not UTF-8; storage errors.
    pub fn environments(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        for kv in self.t().envs.iter().keys() {
            let k = kv.map_err(sled_err(ENVS, b""))?;
            names.push(String::from_utf8(k.to_vec()).map_err(|e| corrupt(ENVS, &k, e))?);
        }
        Ok(names)
    }

    // ---- Revisions -----------------------------------------------------------------

    /// The number the environment's next revision gets: one more than the highest ever
    /// stored (starting at 1). Numbers are never reused, even after
    /// [`Store::remove_revision`], because container names and labels carry them.
    ///
    /// Does not reserve the number: the caller (one operation per environment at a time)
    /// stores it with [`Store::put_revision`].
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn next_revision(&self, env: &str) -> Result<Revision, StoreError> {
        check_env(env)?;
        let t = self.t();
        let max = get_u64(&t.revision_max, REVISION_MAX, env.as_bytes())?.unwrap_or(0);
        let last = match t.revisions.scan_prefix(prefix(env)).next_back() {
            None => 0,
            Some(kv) => {
                let (k, v) = kv.map_err(sled_err(REVISIONS, env.as_bytes()))?;
                decode_keyed::<RevisionRecord>(REVISIONS, &k, &v)?.revision
            }
        };
        Ok(max.max(last) + 1)
    }

    /// Stores a revision. Idempotent: storing the same revision again with the same
    /// template hash changes nothing (a retried step may do so).
    ///
    /// # Guarantees
    /// Flushed before this returns (containers are labelled with the revision after).
    ///
    /// # Errors
    /// [`StoreError::RevisionConflict`] when that number is stored with another template
    /// (revisions are immutable); [`StoreError::InvalidName`] for revision 0 or a bad
    /// environment name; storage errors.
    pub fn put_revision(&self, rec: &RevisionRecord) -> Result<(), StoreError> {
        check_env(&rec.env)?;
        if rec.revision == 0 {
            return Err(StoreError::InvalidName {
                what: "revision",
                name: "0".into(),
                why: "revisions start at 1",
            });
        }
        let key = rev_key(&rec.env, rec.revision);
        let value = encode(REVISIONS, &key, rec)?;
        let t = self.t();
        (&t.revisions, &t.revision_max)
            .transaction(|(revs, max)| {
                if let Some(b) = revs.get(&key)? {
                    let stored =
                        decode_keyed::<RevisionRecord>(REVISIONS, &key, &b).map_err(Abort)?;
                    if stored.template_hash == rec.template_hash {
                        return Ok(());
                    }
                    return abort(StoreError::RevisionConflict {
                        env: rec.env.clone(),
                        revision: rec.revision,
                        stored: stored.template_hash,
                        given: rec.template_hash.clone(),
                    });
                }
                revs.insert(key.as_slice(), value.as_slice())?;
                let old = match max.get(rec.env.as_bytes())? {
                    Some(b) => u64_of(REVISION_MAX, rec.env.as_bytes(), &b).map_err(Abort)?,
                    None => 0,
                };
                if rec.revision > old {
                    max.insert(rec.env.as_bytes(), &rec.revision.to_be_bytes())?;
                }
                Ok(())
            })
            .map_err(tx_err(REVISIONS, &key))?;
        self.flush()
    }

    /// Records what the revision's `PullImage` step pulled (its image id and repo digest);
    /// returns whether the revision exists. Only these two fields change: a revision's
    /// template is immutable. Flushed.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn record_pulled_image(
        &self,
        env: &str,
        revision: Revision,
        image_id: &str,
        repo_digest: Option<&str>,
    ) -> Result<bool, StoreError> {
        check_env(env)?;
        let key = rev_key(env, revision);
        let revs = &self.t().revisions;
        loop {
            let Some(old) = revs.get(&key).map_err(sled_err(REVISIONS, &key))? else {
                return Ok(false);
            };
            let mut rec: RevisionRecord = decode_keyed(REVISIONS, &key, &old)?;
            rec.image_id = Some(image_id.to_owned());
            rec.repo_digest = repo_digest.map(str::to_owned);
            let new = encode(REVISIONS, &key, &rec)?;
            match revs
                .compare_and_swap(&key, Some(old), Some(new))
                .map_err(sled_err(REVISIONS, &key))?
            {
                Ok(()) => {
                    self.flush()?;
                    return Ok(true);
                }
                // Pruned or written in between: look again.
                Err(_) => continue,
            }
        }
    }

    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn revision(
        &self,
        env: &str,
        revision: Revision,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        check_env(env)?;
        get_keyed(&self.t().revisions, REVISIONS, &rev_key(env, revision))
    }

    /// The environment's revisions, oldest (lowest) first.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn revisions(&self, env: &str) -> Result<Vec<RevisionRecord>, StoreError> {
        check_env(env)?;
        scan_keyed(
            &self.t().revisions,
            REVISIONS,
            &prefix(env),
            false,
            usize::MAX,
        )
    }

    /// Removes a revision record (pruning); returns whether it existed. Flushed.
    ///
    /// # Errors
    /// [`StoreError::RevisionInUse`] for the environment's current revision or one that
    /// its unfinished operation rolls from or to: those are what a rollback needs.
    /// Storage and corruption errors.
    pub fn remove_revision(&self, env: &str, revision: Revision) -> Result<bool, StoreError> {
        check_env(env)?;
        let key = rev_key(env, revision);
        let t = self.t();
        let in_use = |why: String| {
            abort(StoreError::RevisionInUse {
                env: env.into(),
                revision,
                why,
            })
        };
        let removed = (&t.revisions, &t.envs, &t.ops)
            .transaction(|(revs, envs, ops)| {
                if let Some(b) = envs.get(env.as_bytes())? {
                    let st = decode::<EnvState>(ENVS, env.as_bytes(), &b).map_err(Abort)?;
                    if st.current == Some(revision) {
                        return in_use("it is the current revision".into());
                    }
                    if let Some(id) = &st.active_op {
                        let okey = under(env, id);
                        if let Some(b) = ops.get(&okey)? {
                            let op = decode_keyed::<Operation>(OPS, &okey, &b).map_err(Abort)?;
                            if op.from == Some(revision) || op.to == revision {
                                return in_use(format!("operation {id} rolls from or to it"));
                            }
                        }
                    }
                }
                Ok(revs.remove(key.as_slice())?.is_some())
            })
            .map_err(tx_err(REVISIONS, &key))?;
        self.flush()?;
        Ok(removed)
    }

    // ---- Backups -------------------------------------------------------------------

    /// Catalogues a completed backup (storing the same id again replaces it).
    ///
    /// # Guarantees
    /// Flushed before this returns: once it has, the backup counts as done on resume.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`] for an id that is not a canonical ULID or a bad
    /// environment; [`StoreError::Corrupt`] if the id is catalogued under another
    /// environment; storage errors.
    pub fn put_backup(&self, rec: &BackupRecord) -> Result<(), StoreError> {
        check_env(&rec.env)?;
        check_ulid("backup id", &rec.id)?;
        let key = under(&rec.env, &rec.id);
        let value = encode(BACKUPS, &key, rec)?;
        let t = self.t();
        (&t.backups, &t.backup_ids)
            .transaction(|(backups, ids)| {
                if let Some(env) = ids.get(rec.id.as_bytes())? {
                    if env.as_ref() != rec.env.as_bytes() {
                        return abort(StoreError::Corrupt {
                            tree: BACKUP_IDS,
                            key: rec.id.clone(),
                            message: format!(
                                "already catalogued for environment {}",
                                String::from_utf8_lossy(&env)
                            ),
                        });
                    }
                }
                backups.insert(key.as_slice(), value.as_slice())?;
                ids.insert(rec.id.as_bytes(), rec.env.as_bytes())?;
                Ok(())
            })
            .map_err(tx_err(BACKUPS, &key))?;
        self.flush()
    }

    /// The backup with this id, if catalogued.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        let Some(env) = self.backup_env(id)? else {
            return Ok(None);
        };
        get_keyed(&self.t().backups, BACKUPS, &under(&env, id))
    }

    /// The environment's backups, oldest first (ULID order: creation time to the
    /// millisecond).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn backups(&self, env: &str) -> Result<Vec<BackupRecord>, StoreError> {
        check_env(env)?;
        scan_keyed(&self.t().backups, BACKUPS, &prefix(env), false, usize::MAX)
    }

    /// Removes a backup from the catalogue and returns it (the caller deletes the file
    /// after this returns, so a crash leaves at worst an uncatalogued file, never a
    /// catalogued missing one). Flushed.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn remove_backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        let Some(env) = self.backup_env(id)? else {
            return Ok(None);
        };
        let key = under(&env, id);
        let t = self.t();
        let removed = (&t.backups, &t.backup_ids)
            .transaction(|(backups, ids)| {
                ids.remove(id.as_bytes())?;
                match backups.remove(key.as_slice())? {
                    Some(b) => Ok(Some(
                        decode_keyed::<BackupRecord>(BACKUPS, &key, &b).map_err(Abort)?,
                    )),
                    None => Ok(None),
                }
            })
            .map_err(tx_err(BACKUPS, &key))?;
        self.flush()?;
        Ok(removed)
    }

    fn backup_env(&self, id: &str) -> Result<Option<String>, StoreError> {
        match self
            .t()
            .backup_ids
            .get(id.as_bytes())
            .map_err(sled_err(BACKUP_IDS, id.as_bytes()))?
        {
            None => Ok(None),
            Some(env) => String::from_utf8(env.to_vec())
                .map(Some)
                .map_err(|e| corrupt(BACKUP_IDS, id.as_bytes(), e)),
        }
    }
}

/// Opens sled, waiting a little for its file lock.
///
/// Why wait: dropping a sled 0.34 `Db` does not release its lock at once — background
/// threads and deferred (epoch-based) frees hold the file a moment longer — so a reopen
/// in the same process right after a drop can fail with "could not acquire lock". A
/// lock held by another live process still fails, after `LOCK_WAIT`.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

fn check_format(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Open {
        path: dir.to_owned(),
        source,
    };
    match db.get(FORMAT_KEY).map_err(err)? {
        Some(v) if v.as_ref() == FORMAT.to_string().as_bytes() => Ok(()),
        Some(v) => Err(StoreError::Format {
            path: dir.to_owned(),
            found: String::from_utf8_lossy(&v).into_owned(),
            supported: FORMAT,
        }),
        None => {
            db.insert(FORMAT_KEY, FORMAT.to_string().as_bytes())
                .map_err(err)?;
            Ok(())
        }
    }
}

// ---- Keys ----------------------------------------------------------------------------

/// Environment names are keys and key prefixes: `\0` separates them from ids, so it (and
/// every other control character) is refused. The manifest reader allows far less.
fn check_env(env: &str) -> Result<(), StoreError> {
    let why = if env.is_empty() {
        "empty"
    } else if env.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidName {
        what: "environment name",
        name: env.into(),
        why,
    })
}

/// Ids are ULIDs in canonical (upper-case) text, so that key order is creation order.
fn check_ulid(what: &'static str, id: &str) -> Result<(), StoreError> {
    match ulid::Ulid::from_string(id) {
        Ok(u) if u.to_string() == id => Ok(()),
        _ => Err(StoreError::InvalidName {
            what,
            name: id.into(),
            why: "not a canonical ULID",
        }),
    }
}

fn prefix(env: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(env.len() + 1);
    k.extend_from_slice(env.as_bytes());
    k.push(0);
    k
}

fn under(env: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(env);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Fixed-width decimal, so that byte order is numeric order and keys stay readable.
fn rev_key(env: &str, revision: Revision) -> Vec<u8> {
    under(env, &format!("{revision:020}"))
}

/// A key for messages: `env/id`, or an event's sequence number.
fn show_key(tree: &str, key: &[u8]) -> String {
    if tree == EVENTS {
        if let Ok(b) = <[u8; 8]>::try_from(key) {
            return u64::from_be_bytes(b).to_string();
        }
    }
    String::from_utf8_lossy(key).replace('\0', "/")
}

/// Records that know the key they are stored under, so a value found under another key
/// (a bug, or bytes moved by hand) is reported instead of silently served.
trait Keyed {
    fn key(&self) -> Vec<u8>;
}

impl Keyed for Operation {
    fn key(&self) -> Vec<u8> {
        under(&self.env, &self.id)
    }
}

impl Keyed for RevisionRecord {
    fn key(&self) -> Vec<u8> {
        rev_key(&self.env, self.revision)
    }
}

impl Keyed for BackupRecord {
    fn key(&self) -> Vec<u8> {
        under(&self.env, &self.id)
    }
}

impl Keyed for EventRecord {
    fn key(&self) -> Vec<u8> {
        self.seq.to_be_bytes().to_vec()
    }
}

// ---- Values and errors -----------------------------------------------------------------

use ConflictableTransactionError::Abort;

fn abort<T>(e: StoreError) -> ConflictableTransactionResult<T, StoreError> {
    Err(Abort(e))
}

fn encode<T: Serialize>(tree: &'static str, key: &[u8], v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode {
        tree,
        key: show_key(tree, key),
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(tree, key, e))
}

fn decode_keyed<T: DeserializeOwned + Keyed>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let v: T = decode(tree, key, bytes)?;
    let own = v.key();
    if own != key {
        return Err(corrupt(
            tree,
            key,
            format!("the value belongs under key {}", show_key(tree, &own)),
        ));
    }
    Ok(v)
}

fn get_keyed<T: DeserializeOwned + Keyed>(
    tree: &Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key).map_err(sled_err(name, key))? {
        Some(b) => decode_keyed(name, key, &b).map(Some),
        None => Ok(None),
    }
}

fn scan_keyed<T: DeserializeOwned + Keyed>(
    tree: &Tree,
    name: &'static str,
    prefix: &[u8],
    newest_first: bool,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let iter = tree.scan_prefix(prefix);
    let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if newest_first {
        Box::new(iter.rev())
    } else {
        Box::new(iter)
    };
    iter.take(limit)
        .map(|kv| {
            let (k, v) = kv.map_err(sled_err(name, prefix))?;
            decode_keyed(name, &k, &v)
        })
        .collect()
}

fn u64_of(tree: &'static str, key: &[u8], b: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(tree, key, format!("expected 8 bytes, found {}", b.len())))
}

fn get_u64(tree: &Tree, name: &'static str, key: &[u8]) -> Result<Option<u64>, StoreError> {
    match tree.get(key).map_err(sled_err(name, key))? {
        Some(b) => u64_of(name, key, &b).map(Some),
        None => Ok(None),
    }
}

/// Whether a stored operation has finished, replaying its log.
fn finished(op: &Operation, key: &[u8]) -> Result<bool, StoreError> {
    op.status()
        .map(|s| s.outcome.is_some())
        .map_err(|source| StoreError::Replay {
            key: show_key(OPS, key),
            source,
        })
}

fn corrupt(tree: &'static str, key: &[u8], message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        tree,
        key: show_key(tree, key),
        message: message.to_string(),
    }
}

fn sled_err(tree: &'static str, key: &[u8]) -> impl FnOnce(sled::Error) -> StoreError {
    let key = show_key(tree, key);
    move |source| match source {
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            tree,
            key,
            message: format!("sled reports corruption at {at:?}"),
        },
        source => StoreError::Storage { tree, key, source },
    }
}

fn tx_err(
    tree: &'static str,
    key: &[u8],
) -> impl FnOnce(TransactionError<StoreError>) -> StoreError {
    let key = key.to_vec();
    move |e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => sled_err(tree, &key)(source),
    }
}

/// Wall-clock time for what the store itself records (repair events at open).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
