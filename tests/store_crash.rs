//! A real crash of the journal: a child process appends to operations in a loop and is
//! SIGKILLed at a random moment; the journal it leaves must open without repairs, replay,
//! and hold every append the child saw flushed (docs/design.md: a flush survives a kill).
//!
//! The child is this test binary itself, re-executed with a filter that runs only
//! [`crash_child_helper`] and an environment variable that tells it where the store is.

use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_controller::op::{
    Entry, Event, OpKind, Operation, Outcome, Phase, Step, StepOutput, StepState,
};
use berth_controller::store::{EventKind, NewEvent, Store};

const CHILD_DIR_VAR: &str = "BERTH_STORE_CRASH_CHILD_DIR";
const ENV: &str = "web";
const ROUNDS: usize = 6;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Not a test by itself: the child's body. Without the variable it returns at once.
#[test]
fn crash_child_helper() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).expect("the child opens the journal");
    // Straight to the pipe (not print!, which the test harness may capture), one line per
    // flushed append, flushed before the next append begins.
    // The harness has already written "test crash_child_helper ... " without a newline:
    // start a line of our own.
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nREADY").unwrap();
    out.flush().unwrap();
    let mut flushed = 0u64;
    // The first step after a restart is re-run, as the engine does after a crash.
    let mut resumed = true;
    loop {
        let op = match store.active_operation(ENV).unwrap() {
            Some(op) => op,
            None => {
                let n = store.operations(ENV, usize::MAX).unwrap().len();
                let op = new_operation(n);
                store.begin(&op).unwrap();
                resumed = false;
                op
            }
        };
        let entry = next_entry(&op, resumed);
        resumed = false;
        let finishes = matches!(entry, Entry::Finished { .. });
        store.append(&op.id, Event { at: now(), entry }).unwrap();
        flushed += 1;
        writeln!(out, "FLUSHED {flushed}").unwrap();
        out.flush().unwrap();
        if finishes {
            store
                .record(NewEvent {
                    at: now(),
                    env: ENV.into(),
                    kind: EventKind::Normal,
                    reason: "RolloutFinished".into(),
                    message: format!("operation {} finished", op.id),
                    op: Some(op.id.clone()),
                })
                .unwrap();
        }
    }
}

/// Every other operation fails at its second step and rolls back, so the journal sees
/// every kind of entry: retried and re-run steps, failures, rollbacks, finishes.
fn new_operation(n: usize) -> Operation {
    Operation {
        id: ulid::Ulid::new().to_string(),
        env: ENV.into(),
        kind: OpKind::Rollout,
        from: Some(n as u64),
        to: n as u64 + 1,
        reason: if n % 2 == 1 { "fails" } else { "succeeds" }.into(),
        created_at: now(),
        steps: vec![
            Step::PullImage,
            Step::Backup,
            Step::Migrate,
            Step::StartCandidate,
            Step::SwitchTraffic,
        ],
        log: vec![],
        spec: serde_json::Value::Null,
    }
}

fn next_entry(op: &Operation, resumed: bool) -> Entry {
    let st = op.status().expect("the stored log replays");
    let phase = st.phase;
    match st.cursor() {
        None => Entry::Finished {
            outcome: match &st.rollback_reason {
                Some(reason) => Outcome::RolledBack {
                    reason: reason.clone(),
                },
                None => Outcome::Succeeded,
            },
        },
        Some((_, _, StepState::Failed { error, .. })) => Entry::RollbackBegan {
            reason: error.clone(),
            steps: vec![Step::SwitchBack, Step::StartOld],
        },
        Some((index, _, StepState::Running { attempts, .. })) => {
            if resumed {
                Entry::Started { phase, index }
            } else if phase == Phase::Forward && index == 1 && op.reason == "fails" {
                Entry::Failed {
                    phase,
                    index,
                    error: "backup failed".into(),
                    retryable: false,
                }
            } else if phase == Phase::Forward && index == 2 && *attempts == 1 {
                Entry::Failed {
                    phase,
                    index,
                    error: "timed out".into(),
                    retryable: true,
                }
            } else {
                Entry::Succeeded {
                    phase,
                    index,
                    output: StepOutput::Note(format!("done after {attempts} attempts")),
                }
            }
        }
        Some((index, _, _)) => Entry::Started { phase, index },
    }
}

/// Opens the journal as the controller would after the crash, checks it, and returns
/// the number of entries in all operation logs.
fn check_journal(dir: &Path) -> u64 {
    let store = Store::open(dir).expect("the journal opens after a kill");
    assert!(
        store.repairs().is_empty(),
        "a kill never needs a repair (writes that must agree are one transaction): {:?}",
        store.repairs()
    );
    let ops = store.operations(ENV, usize::MAX).unwrap();
    let mut unfinished = Vec::new();
    for op in &ops {
        let st = op.status().expect("every operation replays");
        if st.outcome.is_none() {
            unfinished.push(op.id.clone());
        }
    }
    assert!(unfinished.len() <= 1, "unfinished: {unfinished:?}");
    assert_eq!(
        store.env_state(ENV).unwrap().active_op,
        unfinished.first().cloned(),
        "active_op names the unfinished operation"
    );
    store
        .events(None, None, usize::MAX)
        .expect("recorded events read back");
    ops.iter().map(|o| o.log.len() as u64).sum()
}

fn random_below(n: u64) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % n
}

#[test]
fn a_journal_killed_mid_append_keeps_every_flushed_append() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut total_flushed = 0;
    for round in 0..ROUNDS {
        let before = check_journal(dir.path());
        let mut child = Command::new(&exe)
            .args([
                "crash_child_helper",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let ready = std::iter::from_fn(|| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .ok()
        })
        .any(|l| l == "READY");
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!("round {round}: the child did not become ready within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20 + random_below(250)));
        child.kill().unwrap(); // SIGKILL: no destructor, no sled flush on drop
        child.wait().unwrap();
        reader.join().unwrap();
        // The pipe keeps what the child wrote before it died.
        let flushed = rx
            .try_iter()
            .filter_map(|l| l.strip_prefix("FLUSHED ")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let after = check_journal(dir.path());
        assert!(
            after >= before + flushed,
            "round {round}: {flushed} appends were flushed, but the journal grew from {before} to {after}"
        );
        assert!(
            after <= before + flushed + 1,
            "round {round}: at most the one append in flight may have landed unreported \
             ({before} + {flushed} reported, {after} found)"
        );
        total_flushed += flushed;
        eprintln!("round {round}: killed after {flushed} flushed appends; journal has {after}");
    }
    assert!(total_flushed > 0, "the child never got to append");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the crash test is meant to stay under 10 s, took {:?}",
        started.elapsed()
    );
}
