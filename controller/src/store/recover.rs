//! What `Store::open` checks before anyone reads the journal: every operation replays,
//! every `active_op` names an unfinished operation of its environment, and the by-id
//! indexes match the records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use sled::Tree;

use super::{
    decode, decode_keyed, encode, finished, sled_err, u64_of, BackupRecord, EnvState,
    RevisionRecord, StoreError, Trees, BACKUPS, BACKUP_IDS, ENVS, EVENTS, OPS, OP_IDS, REVISIONS,
    REVISION_MAX,
};
use crate::op::{OpId, Operation};

/// A repair `Store::open` made. Each is also recorded as a `Warning` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// `active_op` named an operation that is not stored: the `begin` that would have
    /// written both did not complete, so nothing ran under it. Cleared.
    DanglingActiveOp { env: String, op: OpId },
    /// `active_op` named a finished operation. Cleared.
    FinishedActiveOp { env: String, op: OpId },
    /// An unfinished operation that `active_op` did not name, the environment's only
    /// one. Made active, so the interrupted rollout resumes instead of being forgotten.
    AdoptedOrphanOp { env: String, op: OpId },
    /// A by-id index entry was missing, stale or wrong (indexes are derived data).
    Index {
        tree: &'static str,
        id: String,
        env: String,
    },
}

impl Repair {
    pub fn env(&self) -> &str {
        match self {
            Repair::DanglingActiveOp { env, .. }
            | Repair::FinishedActiveOp { env, .. }
            | Repair::AdoptedOrphanOp { env, .. }
            | Repair::Index { env, .. } => env,
        }
    }

    pub fn op(&self) -> Option<&str> {
        match self {
            Repair::DanglingActiveOp { op, .. }
            | Repair::FinishedActiveOp { op, .. }
            | Repair::AdoptedOrphanOp { op, .. } => Some(op),
            Repair::Index { .. } => None,
        }
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::DanglingActiveOp { env, op } => write!(
                f,
                "{env}: active operation {op} was never stored; cleared the pointer"
            ),
            Repair::FinishedActiveOp { env, op } => write!(
                f,
                "{env}: active operation {op} had already finished; cleared the pointer"
            ),
            Repair::AdoptedOrphanOp { env, op } => write!(
                f,
                "{env}: unfinished operation {op} was not marked active; marked it, so it resumes"
            ),
            Repair::Index { tree, id, env } => {
                write!(f, "{env}: index {tree} entry for {id} rebuilt")
            }
        }
    }
}

pub(super) struct Recovered {
    pub repairs: Vec<Repair>,
    pub event_count: usize,
    pub last_event: Option<u64>,
}

struct OpInfo {
    env: String,
    finished: bool,
}

pub(super) fn check_and_repair(t: &Trees) -> Result<Recovered, StoreError> {
    let mut repairs = Vec::new();

    // Operations: each deserializes, sits under its own key, and replays.
    let mut ops: HashMap<OpId, OpInfo> = HashMap::new();
    let mut unfinished: BTreeMap<String, Vec<OpId>> = BTreeMap::new();
    for kv in t.ops.iter() {
        let (k, v) = kv.map_err(sled_err(OPS, b""))?;
        let op: Operation = decode_keyed(OPS, &k, &v)?;
        let fin = finished(&op, &k)?;
        if !fin {
            unfinished
                .entry(op.env.clone())
                .or_default()
                .push(op.id.clone());
        }
        ops.insert(
            op.id,
            OpInfo {
                env: op.env,
                finished: fin,
            },
        );
    }
    let op_envs: HashMap<&str, &str> = ops
        .iter()
        .map(|(id, i)| (id.as_str(), i.env.as_str()))
        .collect();
    reindex(&t.op_ids, OP_IDS, &op_envs, &mut repairs)?;

    // Environment state: the active_op pointers.
    let mut seen = BTreeSet::new();
    for kv in t.envs.iter() {
        let (k, v) = kv.map_err(sled_err(ENVS, b""))?;
        let env = String::from_utf8(k.to_vec()).map_err(|e| super::corrupt(ENVS, &k, e))?;
        let mut st: EnvState = decode(ENVS, &k, &v)?;
        let before = st.clone();
        fix_pointer(&env, &mut st, &ops, &unfinished, &mut repairs)?;
        if st != before {
            t.envs
                .insert(&k, encode(ENVS, &k, &st)?)
                .map_err(sled_err(ENVS, &k))?;
        }
        seen.insert(env);
    }
    for env in unfinished.keys().filter(|e| !seen.contains(*e)) {
        let mut st = EnvState::default();
        fix_pointer(env, &mut st, &ops, &unfinished, &mut repairs)?;
        let k = env.as_bytes();
        t.envs
            .insert(k, encode(ENVS, k, &st)?)
            .map_err(sled_err(ENVS, k))?;
    }

    // Revisions and backups: each deserializes under its own key.
    for kv in t.revisions.iter() {
        let (k, v) = kv.map_err(sled_err(REVISIONS, b""))?;
        decode_keyed::<RevisionRecord>(REVISIONS, &k, &v)?;
    }
    for kv in t.revision_max.iter() {
        let (k, v) = kv.map_err(sled_err(REVISION_MAX, b""))?;
        u64_of(REVISION_MAX, &k, &v)?;
    }
    let mut backups: HashMap<String, String> = HashMap::new();
    for kv in t.backups.iter() {
        let (k, v) = kv.map_err(sled_err(BACKUPS, b""))?;
        let b: BackupRecord = decode_keyed(BACKUPS, &k, &v)?;
        backups.insert(b.id, b.env);
    }
    let backup_envs: HashMap<&str, &str> = backups
        .iter()
        .map(|(id, env)| (id.as_str(), env.as_str()))
        .collect();
    reindex(&t.backup_ids, BACKUP_IDS, &backup_envs, &mut repairs)?;

    // Events are not decoded here (they are checked when read, and a bad one must not
    // stop the controller); they are counted once, for retention.
    let mut event_count = 0;
    for k in t.events.iter().keys() {
        k.map_err(sled_err(EVENTS, b""))?;
        event_count += 1;
    }
    let last_event = match t.events.last().map_err(sled_err(EVENTS, b"last"))? {
        Some((k, _)) => Some(u64_of(EVENTS, &k, &k)?),
        None => None,
    };

    Ok(Recovered {
        repairs,
        event_count,
        last_event,
    })
}

fn fix_pointer(
    env: &str,
    st: &mut EnvState,
    ops: &HashMap<OpId, OpInfo>,
    unfinished: &BTreeMap<String, Vec<OpId>>,
    repairs: &mut Vec<Repair>,
) -> Result<(), StoreError> {
    if let Some(id) = st.active_op.clone() {
        match ops.get(&id) {
            Some(i) if i.env == env && !i.finished => {}
            Some(i) if i.env == env => {
                st.active_op = None;
                repairs.push(Repair::FinishedActiveOp {
                    env: env.into(),
                    op: id,
                });
            }
            // Missing, or an operation of another environment: either way nothing of
            // this environment's ran under it.
            _ => {
                st.active_op = None;
                repairs.push(Repair::DanglingActiveOp {
                    env: env.into(),
                    op: id,
                });
            }
        }
    }
    let others: Vec<&OpId> = unfinished
        .get(env)
        .into_iter()
        .flatten()
        .filter(|id| Some(*id) != st.active_op.as_ref())
        .collect();
    match (&st.active_op, others.as_slice()) {
        (_, []) => Ok(()),
        (None, [one]) => {
            st.active_op = Some((*one).clone());
            repairs.push(Repair::AdoptedOrphanOp {
                env: env.into(),
                op: (*one).clone(),
            });
            Ok(())
        }
        // Which one was running, and what did each do? Guessing could run a migration
        // twice; an operator decides.
        (active, others) => Err(StoreError::Inconsistent {
            env: env.into(),
            message: format!(
                "more than one unfinished operation: active {}, and also {}",
                active.as_deref().unwrap_or("none"),
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Makes an id → env index equal to `truth`.
fn reindex(
    index: &Tree,
    name: &'static str,
    truth: &HashMap<&str, &str>,
    repairs: &mut Vec<Repair>,
) -> Result<(), StoreError> {
    for kv in index.iter() {
        let (k, v) = kv.map_err(sled_err(name, b""))?;
        let id = String::from_utf8_lossy(&k).into_owned();
        if !truth.contains_key(id.as_str()) {
            index.remove(&k).map_err(sled_err(name, &k))?;
            repairs.push(Repair::Index {
                tree: name,
                id,
                env: String::from_utf8_lossy(&v).into_owned(),
            });
        }
    }
    for (id, env) in truth {
        let k = id.as_bytes();
        let stored = index.get(k).map_err(sled_err(name, k))?;
        if stored.as_deref() != Some(env.as_bytes()) {
            index.insert(k, env.as_bytes()).map_err(sled_err(name, k))?;
            repairs.push(Repair::Index {
                tree: name,
                id: (*id).to_owned(),
                env: (*env).to_owned(),
            });
        }
    }
    Ok(())
}
