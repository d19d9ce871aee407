//! Unit tests of the journal against a real sled database in a temporary directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::*;
use crate::model::Template;
use crate::op::{OpKind, Outcome, Phase, Step, StepOutput};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn reopen(dir: &tempfile::TempDir, store: Store) -> Result<Store, StoreError> {
    store.flush().unwrap();
    drop(store);
    Store::open(dir.path())
}

/// An operation whose id sorts by `ms` (ULIDs order by their time part).
fn op_at(env: &str, ms: u64) -> Operation {
    Operation {
        id: ulid::Ulid::from_parts(ms, 7).to_string(),
        env: env.into(),
        kind: OpKind::Rollout,
        from: Some(1),
        to: 2,
        reason: "image app:v1 → app:v2".into(),
        created_at: ms,
        steps: vec![Step::PullImage, Step::StartCandidate],
        log: vec![],
        spec: serde_json::Value::Null,
    }
}

fn ev(at: u64, entry: Entry) -> Event {
    Event { at, entry }
}

fn started(index: usize) -> Entry {
    Entry::Started {
        phase: Phase::Forward,
        index,
    }
}

fn succeeded(index: usize) -> Entry {
    Entry::Succeeded {
        phase: Phase::Forward,
        index,
        output: StepOutput::None,
    }
}

/// Finishes an operation wherever it stands (a failure may end it at any step).
fn finished() -> Entry {
    Entry::Finished {
        outcome: Outcome::Failed {
            reason: "stopped by the test".into(),
        },
    }
}

fn template(image: &str) -> Template {
    Template {
        image: image.into(),
        command: None,
        args: None,
        env: BTreeMap::new(),
        env_files: vec!["/etc/app/app.env".into()],
        ports: vec![(8080, "127.0.0.1".into())],
        volumes: vec![],
        networks: vec![],
    }
}

fn revision(env: &str, revision: Revision, image: &str) -> RevisionRecord {
    let template = template(image);
    RevisionRecord {
        env: env.into(),
        revision,
        template_hash: template.hash(),
        template,
        spec: serde_json::json!({ "image": image }),
        image_id: None,
        repo_digest: None,
        commit: Some("abc123".into()),
        created_at: revision * 1000,
    }
}

fn backup(env: &str, ms: u64) -> BackupRecord {
    BackupRecord {
        id: ulid::Ulid::from_parts(ms, 1).to_string(),
        env: env.into(),
        op: None,
        revision: Some(1),
        path: format!("/var/backups/{env}/{ms}.sql"),
        size: 42,
        sha256: "ab".repeat(32),
        created_at: ms,
    }
}

fn event(env: &str, reason: &str) -> NewEvent {
    NewEvent {
        at: 1,
        env: env.into(),
        kind: EventKind::Normal,
        reason: reason.into(),
        message: format!("{reason} in {env}"),
        op: None,
    }
}

// ---- Operations --------------------------------------------------------------------------

#[test]
fn begin_twice_for_one_environment_is_refused_until_the_first_finishes() {
    let (_d, s) = open();
    let first = op_at("web", 1);
    let second = op_at("web", 2);
    s.begin(&first).unwrap();
    match s.begin(&second) {
        Err(StoreError::Busy { env, active }) => {
            assert_eq!((env, active), ("web".into(), first.id.clone()))
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(
        s.operation(&second.id).unwrap().is_none(),
        "a refused begin writes nothing"
    );
    // Other environments proceed in parallel.
    s.begin(&op_at("api", 3)).unwrap();
    s.append(&first.id, ev(5, finished())).unwrap();
    s.begin(&second).unwrap();
    assert_eq!(s.env_state("web").unwrap().active_op, Some(second.id));
}

#[test]
fn begin_refuses_bad_ids_names_reused_ids_and_finished_logs() {
    let (_d, s) = open();
    let taken = op_at("web", 1);
    s.begin(&taken).unwrap();
    s.append(&taken.id, ev(2, finished())).unwrap();
    let with = |f: &dyn Fn(&mut Operation)| {
        let mut o = op_at("other", 10);
        f(&mut o);
        o
    };
    // (what, operation, the error variant expected)
    let cases: Vec<(&str, Operation, &str)> = vec![
        (
            "an id that is not a ULID",
            with(&|o| o.id = "op-1".into()),
            "InvalidName",
        ),
        (
            "a lower-case ULID",
            with(&|o| o.id = o.id.to_lowercase()),
            "InvalidName",
        ),
        (
            "an empty environment",
            with(&|o| o.env = String::new()),
            "InvalidName",
        ),
        (
            "an environment with a NUL",
            with(&|o| o.env = "we\0b".into()),
            "InvalidName",
        ),
        (
            "a reused id",
            with(&|o| o.id = taken.id.clone()),
            "OperationExists",
        ),
        (
            "a finished log",
            with(&|o| o.log = vec![ev(1, finished())]),
            "NotBeginnable",
        ),
        (
            "a log that does not replay",
            with(&|o| o.log = vec![ev(1, succeeded(0))]),
            "NotBeginnable",
        ),
    ];
    for (what, o, expected) in cases {
        match s.begin(&o) {
            Err(e) => assert!(
                format!("{e:?}").starts_with(expected),
                "{what}: expected {expected}, got {e:?}"
            ),
            Ok(()) => panic!("{what}: begin accepted it"),
        }
    }
    assert_eq!(s.env_state("other").unwrap().active_op, None);
}

#[test]
fn append_refuses_illegal_transitions_and_writes_nothing() {
    let (_d, s) = open();
    let cases: Vec<(&str, Vec<Entry>, Entry)> = vec![
        ("success before start", vec![], succeeded(0)),
        ("a step out of order", vec![], started(1)),
        (
            "a rollback-phase step while going forward",
            vec![started(0)],
            Entry::Started {
                phase: Phase::Rollback,
                index: 0,
            },
        ),
        ("anything after Finished", vec![finished()], started(0)),
        (
            "a second rollback",
            vec![Entry::RollbackBegan {
                reason: "x".into(),
                steps: vec![],
            }],
            Entry::RollbackBegan {
                reason: "y".into(),
                steps: vec![],
            },
        ),
    ];
    for (i, (what, prefix, illegal)) in cases.into_iter().enumerate() {
        let o = op_at(&format!("env{i}"), i as u64 + 1);
        s.begin(&o).unwrap();
        for (t, e) in prefix.into_iter().enumerate() {
            s.append(&o.id, ev(t as u64, e)).unwrap();
        }
        let before_op = s.operation(&o.id).unwrap();
        let before_state = s.env_state(&o.env).unwrap();
        match s.append(&o.id, ev(99, illegal)) {
            Err(StoreError::IllegalTransition(_)) => {}
            other => panic!("{what}: expected IllegalTransition, got {other:?}"),
        }
        assert_eq!(
            s.operation(&o.id).unwrap(),
            before_op,
            "{what}: log changed"
        );
        assert_eq!(
            s.env_state(&o.env).unwrap(),
            before_state,
            "{what}: state changed"
        );
    }
}

#[test]
fn finished_clears_active_op_and_keeps_the_rest_of_the_state() {
    let (_d, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    s.update_env_state("web", |st| {
        st.current = Some(1);
        st.message = "rolling out revision 2".into();
    })
    .unwrap();
    for (t, e) in [started(0), succeeded(0), started(1), succeeded(1)]
        .into_iter()
        .enumerate()
    {
        s.append(&o.id, ev(t as u64 + 10, e)).unwrap();
        assert_eq!(s.active_operation("web").unwrap().unwrap().id, o.id);
    }
    let all_done = Entry::Finished {
        outcome: Outcome::Succeeded,
    };
    let done = s.append(&o.id, ev(50, all_done)).unwrap();
    assert_eq!(done.status().unwrap().outcome, Some(Outcome::Succeeded));
    let st = s.env_state("web").unwrap();
    assert_eq!(st.active_op, None);
    assert_eq!(st.updated_at, 50);
    assert_eq!(
        (st.current, st.message.as_str()),
        (Some(1), "rolling out revision 2")
    );
    assert!(s.active_operation("web").unwrap().is_none());
    assert_eq!(s.operation(&o.id).unwrap().unwrap().log.len(), 5);
}

#[test]
fn append_to_an_unknown_operation_is_an_error() {
    let (_d, s) = open();
    let id = ulid::Ulid::new().to_string();
    assert!(matches!(
        s.append(&id, ev(1, started(0))),
        Err(StoreError::NoSuchOperation { .. })
    ));
    assert!(s.operation(&id).unwrap().is_none());
}

#[test]
fn operations_are_listed_newest_first_per_environment() {
    let (_d, s) = open();
    for ms in [3, 1, 2] {
        let o = op_at("web", ms);
        s.begin(&o).unwrap();
        s.append(&o.id, ev(ms, finished())).unwrap();
    }
    s.begin(&op_at("web-2", 9)).unwrap(); // a name that extends "web" is another environment
    let listed: Vec<u64> = s
        .operations("web", 10)
        .unwrap()
        .iter()
        .map(|o| o.created_at)
        .collect();
    assert_eq!(listed, [3, 2, 1]);
    assert_eq!(s.operations("web", 2).unwrap().len(), 2);
    assert_eq!(s.operations("web-2", 10).unwrap().len(), 1);
    assert!(s.operations("nope", 10).unwrap().is_empty());
}

// ---- Environment state -----------------------------------------------------------------

#[test]
fn env_state_is_default_when_absent_and_environments_lists_names_sorted() {
    let (_d, s) = open();
    assert_eq!(s.env_state("web").unwrap(), EnvState::default());
    assert!(s.environments().unwrap().is_empty());
    s.update_env_state("web", |st| st.paused = true).unwrap();
    s.begin(&op_at("api", 1)).unwrap();
    assert_eq!(s.environments().unwrap(), ["api", "web"]);
    assert!(s.env_state("web").unwrap().paused);
}

#[test]
fn update_env_state_may_not_change_active_op() {
    let (_d, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    let r = s.update_env_state("web", |st| {
        st.active_op = None;
        st.message = "lost".into();
    });
    assert!(matches!(r, Err(StoreError::ActiveOpIsManaged { .. })));
    let st = s.env_state("web").unwrap();
    assert_eq!((st.active_op, st.message), (Some(o.id), String::new()));
}

#[test]
fn update_env_state_loses_no_update_under_concurrent_writers() {
    let (_d, s) = open();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    s.update_env_state("web", |st| st.updated_at += 1).unwrap();
                }
            });
        }
    });
    assert_eq!(s.env_state("web").unwrap().updated_at, 100);
}

// ---- Revisions ---------------------------------------------------------------------------

#[test]
fn revisions_are_numbered_from_one_in_numeric_order_and_never_reused() {
    let (d, s) = open();
    assert_eq!(s.next_revision("web").unwrap(), 1);
    for (rev, image) in [(1, "app:v1"), (2, "app:v2"), (10, "app:v10"), (9, "app:v9")] {
        s.put_revision(&revision("web", rev, image)).unwrap();
    }
    let numbers = |s: &Store| -> Vec<Revision> {
        s.revisions("web")
            .unwrap()
            .iter()
            .map(|r| r.revision)
            .collect()
    };
    assert_eq!(numbers(&s), [1, 2, 9, 10]);
    assert_eq!(s.next_revision("web").unwrap(), 11);
    assert_eq!(s.next_revision("web-2").unwrap(), 1);
    assert!(s.remove_revision("web", 10).unwrap());
    assert!(!s.remove_revision("web", 10).unwrap());
    assert_eq!(numbers(&s), [1, 2, 9]);
    assert_eq!(s.next_revision("web").unwrap(), 11, "10 was used once");
    let s = reopen(&d, s).unwrap();
    assert_eq!(s.next_revision("web").unwrap(), 11);
    assert_eq!(
        s.revision("web", 2).unwrap().unwrap().template.image,
        "app:v2"
    );
    assert!(s.revision("web", 3).unwrap().is_none());
}

#[test]
fn the_pulled_image_is_recorded_on_its_revision_and_nothing_else_changes() {
    let (_d, s) = open();
    let r = revision("web", 1, "app:v1");
    s.put_revision(&r).unwrap();
    let digest = format!("app@sha256:{}", "a".repeat(64));
    assert!(s
        .record_pulled_image("web", 1, "sha256:1d", Some(&digest))
        .unwrap());
    let stored = s.revision("web", 1).unwrap().unwrap();
    assert_eq!(stored.image_id.as_deref(), Some("sha256:1d"));
    assert_eq!(stored.repo_digest, Some(digest));
    assert_eq!(
        (stored.template, stored.template_hash),
        (r.template, r.template_hash)
    );
    assert!(!s.record_pulled_image("web", 2, "sha256:1d", None).unwrap());
    // A record written before the field existed reads as not pinned.
    let old: RevisionRecord = serde_json::from_value(serde_json::json!({
        "env": "web", "revision": 1, "template_hash": "h", "template": template("app:v1"),
        "spec": {}, "image_id": null, "commit": null, "created_at": 0
    }))
    .unwrap();
    assert_eq!(old.repo_digest, None);
}

#[test]
fn putting_a_revision_again_is_idempotent_but_another_template_conflicts() {
    let (_d, s) = open();
    let r = revision("web", 1, "app:v1");
    s.put_revision(&r).unwrap();
    s.put_revision(&r).unwrap();
    match s.put_revision(&revision("web", 1, "app:v2")) {
        Err(StoreError::RevisionConflict { revision: 1, .. }) => {}
        other => panic!("expected RevisionConflict, got {other:?}"),
    }
    assert_eq!(s.revision("web", 1).unwrap(), Some(r));
    assert!(matches!(
        s.put_revision(&revision("web", 0, "app:v1")),
        Err(StoreError::InvalidName { .. })
    ));
}

#[test]
fn a_revision_a_rollback_needs_cannot_be_removed() {
    let (_d, s) = open();
    for rev in 1..=3 {
        s.put_revision(&revision("web", rev, &format!("app:v{rev}")))
            .unwrap();
    }
    s.update_env_state("web", |st| st.current = Some(1))
        .unwrap();
    let mut o = op_at("web", 1);
    (o.from, o.to) = (Some(2), 3);
    s.begin(&o).unwrap();
    for rev in 1..=3 {
        assert!(
            matches!(
                s.remove_revision("web", rev),
                Err(StoreError::RevisionInUse { .. })
            ),
            "revision {rev}"
        );
    }
    s.append(&o.id, ev(9, finished())).unwrap();
    assert!(s.remove_revision("web", 2).unwrap());
    assert!(
        s.remove_revision("web", 1).is_err(),
        "still the current one"
    );
}

// ---- Backups -----------------------------------------------------------------------------

#[test]
fn backups_are_listed_oldest_first_and_removed_by_id() {
    let (_d, s) = open();
    let (b1, b2, b3) = (backup("db", 20), backup("db", 10), backup("other", 5));
    for b in [&b1, &b2, &b3] {
        s.put_backup(b).unwrap();
    }
    s.put_backup(&b1).unwrap(); // cataloguing again after a retry is harmless
    assert_eq!(s.backups("db").unwrap(), [b2.clone(), b1.clone()]);
    assert_eq!(s.backup(&b3.id).unwrap(), Some(b3.clone()));
    assert_eq!(s.remove_backup(&b2.id).unwrap(), Some(b2.clone()));
    assert_eq!(s.remove_backup(&b2.id).unwrap(), None);
    assert_eq!(s.backups("db").unwrap(), [b1]);
    assert!(s.backup(&b2.id).unwrap().is_none());
    let mut moved = b3.clone();
    moved.env = "db".into();
    assert!(s.put_backup(&moved).unwrap_err().is_corrupt());
}

// ---- Events ------------------------------------------------------------------------------

#[test]
fn retention_keeps_only_the_newest_events_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { event_retention: 5 };
    let s = Store::open_with(dir.path(), opts.clone()).unwrap();
    let seqs: Vec<u64> = (0..12)
        .map(|i| s.record(event("web", &format!("E{i}"))).unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let kept: Vec<u64> = s
        .events(None, None, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, seqs[7..]);
    drop(s);
    let s = Store::open_with(dir.path(), opts).unwrap();
    let next = s.record(event("web", "After")).unwrap();
    assert!(
        next > seqs[11],
        "sequence numbers keep increasing across restarts"
    );
    let kept = s.events(None, None, 100).unwrap();
    assert_eq!(kept.len(), 5);
    assert_eq!(kept.last().unwrap().reason, "After");
    assert_eq!(kept.first().unwrap().seq, seqs[8]);
}

#[test]
fn events_page_after_a_sequence_number_and_filter_by_environment() {
    let (_d, s) = open();
    let seqs: Vec<u64> = ["web", "api", "web", "web", "api"]
        .iter()
        .enumerate()
        .map(|(i, env)| s.record(event(env, &format!("E{i}"))).unwrap())
        .collect();
    let reasons = |v: Vec<EventRecord>| v.into_iter().map(|e| e.reason).collect::<Vec<_>>();
    struct Case {
        since: Option<u64>,
        env: Option<&'static str>,
        limit: usize,
        want: Vec<&'static str>,
    }
    let case = |since, env, limit, want| Case {
        since,
        env,
        limit,
        want,
    };
    let cases = [
        case(None, None, 100, vec!["E0", "E1", "E2", "E3", "E4"]),
        case(None, None, 2, vec!["E3", "E4"]),
        case(None, Some("web"), 2, vec!["E2", "E3"]),
        case(Some(seqs[1]), None, 2, vec!["E2", "E3"]),
        case(Some(seqs[1]), Some("api"), 10, vec!["E4"]),
        case(Some(seqs[4]), None, 10, vec![]),
        case(Some(u64::MAX), None, 10, vec![]),
    ];
    for Case {
        since,
        env,
        limit,
        want,
    } in cases
    {
        assert_eq!(
            reasons(s.events(since, env, limit).unwrap()),
            want,
            "since {since:?} env {env:?} limit {limit}"
        );
    }
}

#[tokio::test]
async fn subscribe_wakes_on_a_new_event() {
    let (_d, s) = open();
    s.record(event("web", "Before")).unwrap();
    let mut all = s.subscribe();
    let mut api_only = s.subscribe_since(None, Some("api"));
    let writer = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.record(event("web", "RolloutStarted")).unwrap();
        writer.record(event("api", "ReplicaRepaired")).unwrap();
    });
    assert_eq!(next_within(&mut all).await.reason, "RolloutStarted");
    assert_eq!(next_within(&mut all).await.reason, "ReplicaRepaired");
    assert_eq!(next_within(&mut api_only).await.reason, "ReplicaRepaired");
}

async fn next_within(sub: &mut Subscription) -> EventRecord {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the subscription woke within 5 s")
        .unwrap()
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_block_writers() {
    // sled 0.34's own Subscriber blocks writers once 1024 events wait for it.
    let (_d, s) = open();
    let mut idle = s.subscribe();
    let writer = s.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..3000 {
            writer.record(event("web", &format!("E{i}"))).unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(next_within(&mut idle).await.reason, "E0");
}

#[tokio::test]
async fn a_subscription_reports_a_corrupt_event_once_and_continues_after_it() {
    let (_d, s) = open();
    let mut sub = s.subscribe_since(None, None);
    s.record(event("web", "Good")).unwrap();
    let bad = s.record(event("web", "Bad")).unwrap();
    s.inner
        .t
        .events
        .insert(bad.to_be_bytes(), b"{".as_slice())
        .unwrap();
    s.record(event("web", "AlsoGood")).unwrap();
    assert_eq!(sub.next().await.unwrap().reason, "Good");
    match sub.next().await {
        Err(StoreError::Corrupt {
            tree: "events",
            key,
            ..
        }) => assert_eq!(key, bad.to_string()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(sub.next().await.unwrap().reason, "AlsoGood");
}

// ---- Opening: corrupt data, replay, repairs ------------------------------------------------

#[test]
fn corrupt_values_are_corrupt_errors_on_open_not_panics() {
    let op = op_at("web", 1);
    /// A value written straight into a tree, and how the error should name where it is.
    struct Case {
        what: &'static str,
        tree: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
        shown: &'static str,
    }
    let case = |what, tree, key, value, shown| Case {
        what,
        tree,
        key,
        value,
        shown,
    };
    let cases = [
        case(
            "an operation that is not JSON",
            OPS,
            under("web", &op.id),
            b"{not json".to_vec(),
            "web/",
        ),
        case(
            "an operation under another key",
            OPS,
            under("api", &op.id),
            serde_json::to_vec(&op).unwrap(),
            "api/",
        ),
        case(
            "environment state of the wrong shape",
            ENVS,
            b"web".to_vec(),
            b"[1,2]".to_vec(),
            "web",
        ),
        case(
            "a revision that is not UTF-8",
            REVISIONS,
            rev_key("web", 1),
            vec![0xff, 0xfe],
            "web/00000000000000000001",
        ),
        case(
            "a backup missing fields",
            BACKUPS,
            under("db", &op.id),
            b"{}".to_vec(),
            "db/",
        ),
        case(
            "a revision counter of 3 bytes",
            REVISION_MAX,
            b"web".to_vec(),
            b"abc".to_vec(),
            "web",
        ),
    ];
    for Case {
        what,
        tree,
        key,
        value,
        shown,
    } in cases
    {
        let (dir, s) = open();
        let t = &s.inner.t;
        let target = [&t.ops, &t.envs, &t.revisions, &t.backups, &t.revision_max]
            .into_iter()
            .find(|tr| tr.name() == tree.as_bytes())
            .unwrap();
        target.insert(key, value).unwrap();
        match reopen(&dir, s) {
            Err(StoreError::Corrupt {
                tree: t,
                key,
                message,
            }) => {
                assert_eq!(t, tree, "{what}");
                assert!(key.starts_with(shown), "{what}: key {key}");
                assert!(!message.is_empty(), "{what}");
            }
            Err(e) => panic!("{what}: expected Corrupt, got {e}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }
}

#[test]
fn a_corrupt_value_read_after_open_is_a_corrupt_error() {
    let (_d, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    s.inner
        .t
        .ops
        .insert(under("web", &o.id), b"garbage".as_slice())
        .unwrap();
    for r in [
        s.operation(&o.id).map(drop),
        s.active_operation("web").map(drop),
        s.operations("web", 5).map(drop),
        s.append(&o.id, ev(1, started(0))).map(drop),
    ] {
        assert!(
            matches!(
                r,
                Err(StoreError::Corrupt {
                    tree: "operations",
                    ..
                })
            ),
            "{r:?}"
        );
    }
    let seq = s.record(event("web", "X")).unwrap();
    s.inner
        .t
        .events
        .insert(seq.to_be_bytes(), b"\x00".as_slice())
        .unwrap();
    assert!(s.events(None, None, 10).unwrap_err().is_corrupt());
}

#[test]
fn an_operation_whose_log_does_not_replay_fails_open() {
    let (dir, s) = open();
    let mut o = op_at("web", 1);
    o.log = vec![ev(1, succeeded(0))];
    s.inner
        .t
        .ops
        .insert(under("web", &o.id), serde_json::to_vec(&o).unwrap())
        .unwrap();
    match reopen(&dir, s) {
        Err(e @ StoreError::Replay { .. }) => assert!(e.is_corrupt()),
        other => panic!("expected Replay, got {:?}", other.err()),
    }
}

#[test]
fn a_dangling_active_op_is_cleared_on_open_and_reported() {
    let (dir, s) = open();
    let ghost = ulid::Ulid::new().to_string();
    let st = EnvState {
        active_op: Some(ghost.clone()),
        message: "kept".into(),
        ..EnvState::default()
    };
    s.inner
        .t
        .envs
        .insert("web", serde_json::to_vec(&st).unwrap())
        .unwrap();
    let s = reopen(&dir, s).unwrap();
    assert_eq!(
        s.repairs(),
        [Repair::DanglingActiveOp {
            env: "web".into(),
            op: ghost.clone()
        }]
    );
    let st = s.env_state("web").unwrap();
    assert_eq!((st.active_op, st.message.as_str()), (None, "kept"));
    let ev = s.events(None, Some("web"), 10).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].reason.as_str()),
        (EventKind::Warning, "JournalRepaired")
    );
    assert_eq!(ev[0].op, Some(ghost));
    s.begin(&op_at("web", 2)).unwrap();
    // Repaired once, for good.
    assert!(reopen(&dir, s).unwrap().repairs().is_empty());
}

#[test]
fn an_active_op_that_already_finished_is_cleared_on_open() {
    let (dir, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    s.append(&o.id, ev(2, finished())).unwrap();
    let st = EnvState {
        active_op: Some(o.id.clone()),
        ..EnvState::default()
    };
    s.inner
        .t
        .envs
        .insert("web", serde_json::to_vec(&st).unwrap())
        .unwrap();
    let s = reopen(&dir, s).unwrap();
    assert!(matches!(s.repairs(), [Repair::FinishedActiveOp { .. }]));
    assert!(s.active_operation("web").unwrap().is_none());
}

#[test]
fn an_unfinished_operation_no_pointer_names_is_adopted_on_open() {
    let (dir, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    s.append(&o.id, ev(2, started(0))).unwrap();
    s.inner.t.envs.remove("web").unwrap();
    let s = reopen(&dir, s).unwrap();
    assert_eq!(
        s.repairs(),
        [Repair::AdoptedOrphanOp {
            env: "web".into(),
            op: o.id.clone()
        }]
    );
    assert_eq!(s.active_operation("web").unwrap().unwrap().log.len(), 1);
}

#[test]
fn two_unfinished_operations_in_one_environment_fail_open() {
    let (dir, s) = open();
    s.begin(&op_at("web", 1)).unwrap();
    let other = op_at("web", 2);
    s.inner
        .t
        .ops
        .insert(under("web", &other.id), serde_json::to_vec(&other).unwrap())
        .unwrap();
    match reopen(&dir, s) {
        Err(e @ StoreError::Inconsistent { .. }) => assert!(e.to_string().contains(&other.id)),
        other => panic!("expected Inconsistent, got {:?}", other.err()),
    }
}

#[test]
fn by_id_indexes_are_rebuilt_on_open() {
    let (dir, s) = open();
    let o = op_at("web", 1);
    s.begin(&o).unwrap();
    let b = backup("db", 3);
    s.put_backup(&b).unwrap();
    s.inner.t.op_ids.remove(o.id.as_bytes()).unwrap();
    s.inner
        .t
        .backup_ids
        .insert(b.id.as_bytes(), "nope")
        .unwrap();
    s.inner.t.backup_ids.insert("01STALE", "db").unwrap();
    let s = reopen(&dir, s).unwrap();
    assert_eq!(s.repairs().len(), 3, "{:?}", s.repairs());
    assert!(s
        .repairs()
        .iter()
        .all(|r| matches!(r, Repair::Index { .. })));
    assert_eq!(s.operation(&o.id).unwrap().unwrap().id, o.id);
    assert_eq!(s.backup(&b.id).unwrap(), Some(b));
}

#[test]
fn the_state_directory_is_created_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state/journal");
    let _s = Store::open(&dir).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn a_journal_of_another_format_is_refused() {
    let (dir, s) = open();
    s.inner.t.db.insert(FORMAT_KEY, b"2".as_slice()).unwrap();
    assert!(matches!(reopen(&dir, s), Err(StoreError::Format { .. })));
}
