//! What is due (pure), and the notifier against a real store, a scripted transport and
//! tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use berth_api::environment::{EnvironmentSpec, NotifyEvent};
use tokio::time::Instant;

use super::*;
use crate::op::{Event, OpKind, StepOutput};
use crate::store::{Delivery, Store};

fn spec(notify: &str) -> EnvironmentSpec {
    let text = format!(
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: local}}\nspec: {{address: local}}\n---\napiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: web}}\nspec:\n  host: local\n  image: app:v2\n  notify: {notify}\n"
    );
    let m = berth_api::load_texts(vec![("m.yaml".into(), text)])
        .into_manifests()
        .unwrap_or_else(|l| panic!("{:?}", l.diagnostics));
    m.environments["web"].spec.clone()
}

fn op(ms: u64, steps: Vec<Step>, log: Vec<Entry>, spec: &EnvironmentSpec) -> Operation {
    Operation {
        id: ulid::Ulid::from_parts(ms, 1).to_string(),
        env: "web".into(),
        kind: OpKind::Rollout,
        from: Some(1),
        to: 2,
        reason: "revision 1 → 2 (app:v2)".into(),
        created_at: ms,
        steps,
        log: log
            .into_iter()
            .enumerate()
            .map(|(i, entry)| Event {
                at: ms + 1 + i as u64,
                entry,
            })
            .collect(),
        spec: serde_json::to_value(spec).unwrap(),
    }
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

fn finished(outcome: Outcome) -> Entry {
    Entry::Finished { outcome }
}

fn events(op: &Operation) -> Vec<NotifyEvent> {
    due(op).into_iter().map(|d| d.event).collect()
}

#[test]
fn a_rollout_that_waits_for_approval_and_succeeds_is_due_three_notifications_in_order() {
    let s = spec("{}");
    let steps = vec![Step::AwaitApproval, Step::PullImage];
    let log = vec![
        started(0),
        started(0), // resumed after a crash: still one WaitingForApproval
        succeeded(0),
        started(1),
        succeeded(1),
        finished(Outcome::Succeeded),
    ];
    assert_eq!(
        events(&op(1000, steps, log, &s)),
        [
            NotifyEvent::Started,
            NotifyEvent::WaitingForApproval,
            NotifyEvent::Succeeded
        ]
    );
}

#[test]
fn a_rolled_back_rollout_is_due_its_reason_and_a_superseded_one_nothing_more() {
    let s = spec("{}");
    let rolled = op(
        1000,
        vec![Step::PullImage],
        vec![
            started(0),
            Entry::Failed {
                phase: Phase::Forward,
                index: 0,
                error: "no such image".into(),
                retryable: false,
            },
            Entry::RollbackBegan {
                reason: "PullImage failed".into(),
                steps: vec![],
            },
            finished(Outcome::RolledBack {
                reason: "PullImage failed: no such image".into(),
            }),
        ],
        &s,
    );
    let d = due(&rolled);
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].event, NotifyEvent::RolledBack);
    assert_eq!(
        d[1].failure.as_deref(),
        Some("PullImage failed: no such image")
    );
    let superseded = op(
        1000,
        vec![Step::PullImage],
        vec![finished(Outcome::Superseded)],
        &s,
    );
    assert_eq!(events(&superseded), [NotifyEvent::Started]);
}

#[test]
fn the_body_has_a_slack_text_and_the_revision_it_is_about_and_no_url() {
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/secret-token'}]}");
    let o = op(
        1_700_000_000_000,
        vec![Step::PullImage],
        vec![
            started(0),
            succeeded(0),
            finished(Outcome::Failed {
                reason: "SwitchBack failed".into(),
            }),
        ],
        &s,
    );
    let d = due(&o).pop().unwrap();
    let origin = Origin {
        digest: Some("app@sha256:ab".into()),
        commit: Some("c0ffee".into()),
    };
    let b = serde_json::to_value(body(&o, &s, &d, &origin)).unwrap();
    assert_eq!(
        b["text"],
        "web: rollout to revision 2 (app:v2) failed and needs an operator: SwitchBack failed"
    );
    assert_eq!(b["event"], "Failed");
    assert_eq!(b["environment"], "web");
    assert_eq!(b["from"], 1);
    assert_eq!(b["to"], 2);
    assert_eq!(b["image"], "app:v2");
    assert_eq!(b["digest"], "app@sha256:ab");
    assert_eq!(b["commit"], "c0ffee");
    assert_eq!(b["reason"], "revision 1 → 2 (app:v2)");
    assert_eq!(b["at"], "2023-11-14T22:13:20.003Z");
    assert!(!b.to_string().contains("secret-token"));
}

// ---- the notifier ------------------------------------------------------------------------

/// Answers each post with the next scripted status (200 once the script is used up), and
/// remembers what was posted when.
#[derive(Default)]
struct Script {
    answers: Mutex<Vec<Result<u16, String>>>,
    posts: Mutex<Vec<(String, serde_json::Value, Instant)>>,
    /// Posts never answer (the queue fills behind them).
    hang: bool,
}

#[async_trait]
impl Transport for Script {
    async fn post(&self, url: &str, body: &str) -> Result<u16, String> {
        let v = serde_json::from_str(body).unwrap();
        self.posts
            .lock()
            .unwrap()
            .push((url.to_owned(), v, Instant::now()));
        if self.hang {
            std::future::pending::<()>().await;
        }
        let mut a = self.answers.lock().unwrap();
        if a.is_empty() {
            Ok(200)
        } else {
            a.remove(0)
        }
    }
}

impl Script {
    fn answering(answers: Vec<Result<u16, String>>) -> Arc<Script> {
        Arc::new(Script {
            answers: Mutex::new(answers),
            ..Script::default()
        })
    }

    fn posted(&self) -> Vec<(String, String, Instant)> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .map(|(u, b, t)| (u.clone(), b["event"].as_str().unwrap().to_owned(), *t))
            .collect()
    }
}

fn options() -> NotifierOptions {
    NotifierOptions {
        capacity: 8,
        concurrency: 2,
        attempts: 3,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        resync: Duration::from_secs(30),
    }
}

/// A finished, successful operation of `web` with `notify`, journaled.
fn journal_success(store: &Store, ms: u64, s: &EnvironmentSpec) -> Operation {
    let o = op(ms, vec![Step::PullImage], vec![], s);
    store.begin(&o).unwrap();
    for (i, e) in [started(0), succeeded(0), finished(Outcome::Succeeded)]
        .into_iter()
        .enumerate()
    {
        store
            .append(
                &o.id,
                Event {
                    at: ms + 1 + i as u64,
                    entry: e,
                },
            )
            .unwrap();
    }
    store.operation(&o.id).unwrap().unwrap()
}

/// Lets the notifier's tasks run until `cond` holds (the clock is paused: sleeps end at
/// once when nothing else can run).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_500_is_retried_after_a_second_and_the_success_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/hook', events: [Succeeded]}]}");
    let o = journal_success(&store, 1000, &s);
    let t = Script::answering(vec![Ok(500)]);
    let n = Notifier::start(store.clone(), t.clone(), options());
    until("delivered", || {
        store
            .notification(&o.id, NotifyEvent::Succeeded)
            .unwrap()
            .is_some()
    })
    .await;
    let posts = t.posted();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts.iter().all(|p| p.1 == "Succeeded"));
    assert_eq!(posts[1].2 - posts[0].2, Duration::from_secs(1));
    let rec = store
        .notification(&o.id, NotifyEvent::Succeeded)
        .unwrap()
        .unwrap();
    assert_eq!(rec.delivery, Delivery::Delivered);
    // Later sweeps (a journal write, the resync) send nothing again.
    n.sweep().unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(t.posted().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_notifier_sends_what_was_not_recorded_and_nothing_that_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/hook'}]}");
    let o = journal_success(&store, 1000, &s);
    // As if an earlier berthd delivered Started and died before recording Succeeded.
    store
        .put_notification(&crate::store::NotificationRecord {
            op: o.id.clone(),
            env: "web".into(),
            event: NotifyEvent::Started,
            delivery: Delivery::Delivered,
            webhooks: 1,
            at: 1,
        })
        .unwrap();
    let t = Script::answering(vec![]);
    let _n = Notifier::start(store.clone(), t.clone(), options());
    until("delivered", || {
        store
            .notification(&o.id, NotifyEvent::Succeeded)
            .unwrap()
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let events: Vec<String> = t.posted().into_iter().map(|p| p.1).collect();
    assert_eq!(events, ["Succeeded"]);
}

#[tokio::test(start_paused = true)]
async fn a_webhook_that_refuses_with_a_4xx_is_not_retried_and_is_recorded_as_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/hook', events: [Succeeded]}]}");
    let o = journal_success(&store, 1000, &s);
    let t = Script::answering(vec![Ok(404)]);
    let _n = Notifier::start(store.clone(), t.clone(), options());
    until("ended", || {
        store
            .notification(&o.id, NotifyEvent::Succeeded)
            .unwrap()
            .is_some()
    })
    .await;
    assert_eq!(t.posted().len(), 1);
    let rec = store
        .notification(&o.id, NotifyEvent::Succeeded)
        .unwrap()
        .unwrap();
    assert_eq!(rec.delivery, Delivery::GaveUp { failed: 1 });
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_webhook_is_tried_its_attempts_with_doubling_waits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/hook', events: [Succeeded]}]}");
    let o = journal_success(&store, 1000, &s);
    let t = Script::answering(vec![
        Err("Connection Failed".into()),
        Err("Connection Failed".into()),
        Err("Connection Failed".into()),
    ]);
    let _n = Notifier::start(store.clone(), t.clone(), options());
    until("ended", || {
        store
            .notification(&o.id, NotifyEvent::Succeeded)
            .unwrap()
            .is_some()
    })
    .await;
    let at: Vec<Instant> = t.posted().into_iter().map(|p| p.2).collect();
    assert_eq!(at.len(), 3);
    assert_eq!(at[1] - at[0], Duration::from_secs(1));
    assert_eq!(at[2] - at[1], Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_url_file_is_read_at_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("state").as_path()).unwrap();
    let file = dir.path().join("hook-url");
    std::fs::write(&file, "  http://127.0.0.1:9/from-file\n").unwrap();
    let s = spec(&format!(
        "{{webhooks: [{{urlFile: '{}', events: [Succeeded]}}]}}",
        file.display()
    ));
    journal_success(&store, 1000, &s);
    let t = Script::answering(vec![]);
    let _n = Notifier::start(store.clone(), t.clone(), options());
    until("posted", || !t.posted().is_empty()).await;
    assert_eq!(t.posted()[0].0, "http://127.0.0.1:9/from-file");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_the_notification_counts_it_and_does_not_send_it_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = spec("{webhooks: [{url: 'http://127.0.0.1:9/hook', events: [Succeeded]}]}");
    // Posts hang: one is taken by the single slot, one waits in the poster, one in the
    // queue of one; the fourth finds the queue full.
    let t = Arc::new(Script {
        hang: true,
        ..Script::default()
    });
    let n = Notifier::start(
        store.clone(),
        t.clone(),
        NotifierOptions {
            capacity: 1,
            concurrency: 1,
            ..options()
        },
    );
    let mut ops = Vec::new();
    for i in 0..4u64 {
        // Different environments: only each one's newest operations are looked at.
        let mut o = op(1000 + i, vec![Step::PullImage], vec![], &s);
        o.env = format!("web{i}");
        store.begin(&o).unwrap();
        for e in [started(0), succeeded(0), finished(Outcome::Succeeded)] {
            store.append(&o.id, Event { at: 2000, entry: e }).unwrap();
        }
        ops.push(o.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until("a drop", || n.dropped() == 1).await;
    let dropped: Vec<&String> = ops
        .iter()
        .filter(|id| {
            store
                .notification(id, NotifyEvent::Succeeded)
                .unwrap()
                .is_some_and(|r| r.delivery == Delivery::Dropped)
        })
        .collect();
    assert_eq!(dropped.len(), 1);
    let warned = store.events(None, None, 100).unwrap();
    assert!(warned.iter().any(|e| e.reason == "NotificationDropped"));
}

#[test]
fn a_first_rollout_says_so_instead_of_naming_a_revision_none() {
    let s = spec("{}");
    let mut o = op(1000, vec![Step::PullImage], vec![], &s);
    o.from = None;
    o.to = 1;
    let d = due(&o).remove(0);
    let b = body(&o, &s, &d, &Origin::default());
    assert_eq!(b.text, "web: first rollout started, revision 1 (app:v2)");
    assert_eq!(b.from, None);
}

#[test]
fn a_spec_pinned_before_webhooks_existed_still_reads_and_notifies_nothing() {
    let mut old = serde_json::to_value(spec("{}")).unwrap();
    old["notify"] = serde_json::json!({"success": [], "failure": [], "rollback": []});
    let read: EnvironmentSpec = serde_json::from_value(old).unwrap();
    assert!(read.notify.webhooks.is_empty());
}
