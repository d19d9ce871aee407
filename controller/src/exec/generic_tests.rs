//! Generic step tests, in the manner of steno's `actions_succeed_idempotently` and
//! `action_failure_can_unwind`: every step of every step list `plan` can produce, forward
//! and rollback, is run against a [`FakeHost`] twice (as if resumed from its `Started`
//! record) and with a failure injected before and after each of its host calls. The step
//! lists are enumerated from [`plan::steps_for`] and [`plan::rollback_steps`] over every
//! strategy × migration policy × backup setting × traffic × approval × first deployment
//! or not, so a new step or a new list cannot be left out.
//!
//! The journal is written here the way `reconcile::act` writes it (`Started` before the
//! step, `Succeeded` with its output after, the pulled image recorded on the revision),
//! on a real [`Store`] in a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use berth_api::environment::EnvironmentSpec;
use berth_api::HostSpec;

use super::backup::shell_fake::ShellFake;
use super::containers::replica_spec;
use super::steps::{run_step, Ctx, StepResult};
use super::ExecError;
use crate::host::fake::{http_response, FakeHost};
use crate::host::{Host, Output};
use crate::model::{ContainerSpec, ContainerState, Revision, Role, Template};
use crate::op::{Entry, Event, OpKind, Operation, Phase, Step, StepOutput};
use crate::plan;
use crate::redact::Redactor;
use crate::store::{RevisionRecord, Store};

const ENV: &str = "web";
const OP_ID: &str = "01J0000000000000000000000A";
const NOW: u64 = 1_000_000;
const REPLICAS: u32 = 2;
const PORTS: std::ops::RangeInclusive<u16> = 21000..=21019;

/// Every step there is: `Step::ALL`, which this match keeps whole (it stops compiling
/// when a step is added, until the step is added there too).
const ALL_STEPS: [Step; 18] = Step::ALL;

fn _every_step_is_in_all_steps(s: Step) {
    match s {
        Step::AwaitApproval
        | Step::PullImage
        | Step::Backup
        | Step::CreateCandidate
        | Step::StopOld
        | Step::Migrate
        | Step::StartCandidate
        | Step::WaitReady
        | Step::SmokeCandidate
        | Step::SwitchTraffic
        | Step::Verify
        | Step::RetireOld
        | Step::Prune
        | Step::SwitchBack
        | Step::StopCandidate
        | Step::RestoreDatabase
        | Step::StartOld
        | Step::WaitOldReady => {}
    }
}

/// Steps the planner times (approval, readiness, the soak): running them only marks their
/// start, so they stay pending here.
fn timed(step: Step) -> bool {
    matches!(
        step,
        Step::AwaitApproval | Step::WaitReady | Step::WaitOldReady | Step::Verify
    )
}

/// Host calls a re-run may repeat because repeating them changes nothing: pulling an
/// image that is there, and reloading nginx (a crash may have come between the write and
/// the reload, so a switch found done reloads once more on purpose).
/// A restore is repeated too: `pg_restore --clean --single-transaction` makes the
/// database the backup again, and nothing writes between the two (the candidate was
/// stopped before RestoreDatabase, the old revision starts after it).
fn harmless_repeat(call: &str) -> bool {
    call.starts_with("pull ")
        || call.starts_with("run nginx -s reload")
        || (call.starts_with("exec_from_file ") && call.contains(" pg_restore "))
}

/// Effects that must not happen twice for one operation, whatever fails: a container
/// created or started, a dump, a restore, an archive. Level effects (the upstream file's
/// contents, nginx tested and reloaded, a stop, a remove) are judged by the end state:
/// a failed `nginx -t`, for one, puts the previous file back, and the retry writes the
/// new one again, on purpose.
fn one_shot(call: &str) -> bool {
    [
        "create ",
        "start ",
        "exec_to_file ",
        "archive_to_file ",
        "archive_from_file ",
    ]
    .iter()
    .any(|p| call.starts_with(p))
        || (call.starts_with("exec_from_file ") && !harmless_repeat(call))
}

struct Variant {
    label: String,
    spec: EnvironmentSpec,
    host: HostSpec,
    from: Option<Revision>,
}

fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for strategy in ["BlueGreen", "Recreate", "Canary"] {
        for policy in ["None", "BackwardCompatible", "Breaking"] {
            for backup in ["none", "Never", "BeforeMigration", "Always"] {
                for traffic in [false, true] {
                    if strategy == "Canary" && !traffic {
                        // Refused by validation: a canary needs a switch to weigh.
                        continue;
                    }
                    for approval in [false, true] {
                        for from in [None, Some(1)] {
                            let label = format!(
                                "{strategy}/{policy}/backup {backup}/{}/{}/{}",
                                if traffic { "nginx" } else { "no traffic" },
                                if approval { "approval" } else { "no approval" },
                                if from.is_some() { "update" } else { "first" },
                            );
                            let (spec, host) = load(strategy, policy, backup, traffic, approval);
                            out.push(Variant {
                                label,
                                spec,
                                host,
                                from,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

fn load(
    strategy: &str,
    policy: &str,
    backup: &str,
    traffic: bool,
    approval: bool,
) -> (EnvironmentSpec, HostSpec) {
    let mut extra = format!(
        "  strategy: {{type: {strategy}, progressDeadline: 1m, verifyFor: 20s{}}}\n  migration: {{policy: {policy}{}}}\n  rollback: {{automatic: true, restoreDatabase: OnBreakingMigration}}\n  smoke: [{{name: up, path: /up}}]\n",
        if strategy == "Canary" {
            ", steps: [{weight: 10}]"
        } else {
            ""
        },
        match policy {
            "None" => "",
            // Allowed here so that a Breaking rollout without a backup is enumerated too.
            "Breaking" => ", command: [m], allowWithoutBackup: true",
            _ => ", command: [m]",
        }
    );
    if backup != "none" {
        extra.push_str(&format!(
            "  backup: {{when: {backup}, postgres: {{container: db, database: d, user: u}}, directory: /b}}\n"
        ));
    }
    if traffic {
        extra.push_str("  traffic: {nginx: {upstreamFile: /u.conf}}\n");
    }
    if approval {
        extra.push_str("  approval: Required\n");
    }
    let text = format!(
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: h}}\nspec: {{address: local, portRange: {}-{}}}\n---\napiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: {ENV}}}\nspec:\n  host: h\n  image: app:v2\n  replicas: {REPLICAS}\n  ports: [{{name: http, containerPort: 8080}}]\n{extra}",
        PORTS.start(),
        PORTS.end()
    );
    let m = berth_api::load_texts(vec![("t.yaml".into(), text)])
        .into_manifests()
        .unwrap_or_else(|l| panic!("test manifest: {:?}", l.diagnostics));
    (m.environments[ENV].spec.clone(), m.hosts["h"].spec.clone())
}

/// What a run of steps leaves behind, compared field by field.
#[derive(Debug, PartialEq, Eq)]
struct EndState {
    /// Name, state, template hash, image, port. An app replica's exit code is left
    /// out: it says how it was stopped (the shell fake kills with 137 unless the stop's
    /// answer was lost), not what was done; a migration's is kept.
    containers: Vec<(String, String, String, String, Option<u16>)>,
    files: BTreeMap<String, Vec<u8>>,
    images: BTreeSet<String>,
    backups: Vec<(String, String, u64, String)>,
    revisions: Vec<(Revision, Option<String>)>,
}

/// One environment on a fake host, with a journal, an operation and (for an update)
/// revision 1 running.
struct World {
    host: ShellFake,
    store: Store,
    _dir: tempfile::TempDir,
    spec: EnvironmentSpec,
    host_spec: HostSpec,
    template: Template,
    old_template: Template,
    from: Option<Revision>,
    redactor: Redactor,
}

impl World {
    fn new(v: &Variant) -> World {
        // The journal flushes every event: on tmpfs, where there is one, that costs
        // nothing, and thousands of worlds run in seconds.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let template = Template::of(&v.spec);
        let old_template = Template {
            image: "app:v1".into(),
            ..template.clone()
        };
        let fake = FakeHost::new("h");
        // The database the backups dump, and what its tools answer.
        fake.add_image("postgres:15");
        let db = ContainerSpec {
            name: "db".into(),
            ..replica_spec("db", 1, 0, &old_template, "postgres:15", vec![20999], None)
        };
        fake.add_container(&db, ContainerState::Running);
        fake.on_exec(
            "pg_dump",
            Output {
                exit_code: 0,
                stdout: "PGDMP dump".into(),
                stderr: String::new(),
            },
        );
        // A migration exits 0 as soon as it starts.
        fake.on_start("web-migrate", ContainerState::Exited(0));
        // Every replica answers its smoke check while it runs.
        for port in PORTS {
            fake.serve(port, |_| http_response(200, "ok"));
        }
        let spec_json = serde_json::to_value(&v.spec).expect("spec as JSON");
        let record = |revision: Revision, template: &Template| RevisionRecord {
            env: ENV.into(),
            revision,
            template_hash: template.hash(),
            template: template.clone(),
            spec: spec_json.clone(),
            image_id: None,
            repo_digest: None,
            commit: None,
            created_at: 0,
        };
        if let Some(from) = v.from {
            fake.add_image("app:v1");
            for i in 0..REPLICAS {
                let spec = replica_spec(
                    ENV,
                    from,
                    i,
                    &old_template,
                    "app:v1",
                    vec![PORTS.start() + i as u16],
                    None,
                );
                fake.add_container(&spec, ContainerState::Running);
            }
            store.put_revision(&record(from, &old_template)).unwrap();
        }
        let to = v.from.map_or(1, |r| r + 1);
        store.put_revision(&record(to, &template)).unwrap();
        store
            .begin(&Operation {
                id: OP_ID.into(),
                env: ENV.into(),
                kind: OpKind::Rollout,
                from: v.from,
                to,
                reason: "test".into(),
                created_at: 0,
                steps: plan::steps_for(&v.spec, v.from),
                log: Vec::new(),
                spec: spec_json,
            })
            .expect("begin");
        World {
            host: ShellFake(fake),
            store,
            _dir: dir,
            spec: v.spec.clone(),
            host_spec: v.host.clone(),
            template,
            old_template,
            from: v.from,
            redactor: Redactor::none(),
        }
    }

    fn fake(&self) -> &FakeHost {
        &self.host.0
    }

    fn op(&self) -> Operation {
        self.store.operation(OP_ID).unwrap().expect("the operation")
    }

    fn append(&self, entry: Entry) {
        self.store
            .append(OP_ID, Event { at: NOW, entry })
            .unwrap_or_else(|e| panic!("journal: {e}"));
    }

    async fn run_once(&self, step: Step) -> Result<StepResult, ExecError> {
        let op = self.op();
        let st = op.status().expect("the log replays");
        let cx = Ctx {
            host: &self.host,
            host_spec: &self.host_spec,
            store: &self.store,
            env: ENV,
            spec: &self.spec,
            template: &self.template,
            old_template: self.from.map(|_| &self.old_template),
            op: Some(&op),
            status: Some(&st),
            now: NOW,
            redactor: &self.redactor,
        };
        run_step(&cx, step).await
    }

    /// Runs `step` until it is done (a migration takes two looks); a timed step stays
    /// pending, which counts as its end here.
    async fn drive(&self, step: Step) -> Result<StepOutput, ExecError> {
        for _ in 0..3 {
            match self.run_once(step).await? {
                StepResult::Done(out) => return Ok(out),
                StepResult::Pending { .. } if timed(step) => return Ok(StepOutput::None),
                StepResult::Pending { .. } => {}
            }
        }
        Err(ExecError::failed(
            step.name(),
            "still pending after 3 runs",
            false,
        ))
    }

    /// What `reconcile::act` journals after a step succeeded.
    fn succeeded(&self, phase: Phase, index: usize, output: StepOutput) {
        if let StepOutput::Image { id, repo_digest } = &output {
            let to = self.op().to;
            self.store
                .record_pulled_image(ENV, to, id, repo_digest.as_deref())
                .unwrap();
        }
        self.append(Entry::Succeeded {
            phase,
            index,
            output,
        });
    }

    async fn end_state(&self) -> EndState {
        let mut containers: Vec<_> = self
            .host
            .list_all()
            .await
            .unwrap()
            .into_iter()
            .map(|c| {
                let state = match c.state {
                    ContainerState::Exited(_) if c.role == Role::App => "exited".to_owned(),
                    s => format!("{s:?}"),
                };
                (c.name, state, c.template_hash, c.image, c.port)
            })
            .collect();
        containers.sort_by(|a, b| a.0.cmp(&b.0));
        EndState {
            containers,
            files: self.fake().files(),
            images: self.fake().images(),
            backups: self
                .store
                .backups(ENV)
                .unwrap()
                .into_iter()
                .map(|b| (b.id, b.path, b.size, b.sha256))
                .collect(),
            revisions: self
                .store
                .revisions(ENV)
                .unwrap()
                .into_iter()
                .map(|r| (r.revision, r.repo_digest))
                .collect(),
        }
    }
}

/// A step under test: the steps run before it (in their phases), and where it fails a
/// forward step first, the rollback that follows.
#[derive(Clone)]
struct Case {
    variant: usize,
    /// The forward list, and the index of the forward step that fails (rollback cases).
    forward: Vec<Step>,
    failed_at: Option<usize>,
    rollback: Vec<Step>,
    phase: Phase,
    index: usize,
    step: Step,
}

impl Case {
    fn label(&self, variants: &[Variant]) -> String {
        let list = |s: &[Step]| s.iter().map(|s| s.name()).collect::<Vec<_>>().join("→");
        match self.failed_at {
            None => format!(
                "{} forward [{}] step {} {}",
                variants[self.variant].label,
                list(&self.forward),
                self.index,
                self.step.name()
            ),
            Some(k) => format!(
                "{} after {} failed: rollback [{}] step {} {}",
                variants[self.variant].label,
                self.forward[k].name(),
                list(&self.rollback),
                self.index,
                self.step.name()
            ),
        }
    }

    /// A world in which everything before the step under test was done and journaled,
    /// and the step's `Started` is durable.
    async fn prepare(&self, variants: &[Variant]) -> World {
        let w = World::new(&variants[self.variant]);
        let forward_done = self.failed_at.unwrap_or(self.index);
        for (i, step) in self.forward.iter().enumerate().take(forward_done) {
            w.append(Entry::Started {
                phase: Phase::Forward,
                index: i,
            });
            let out = w.drive(*step).await.unwrap_or_else(|e| {
                panic!(
                    "{}: forward step {} fails: {e}",
                    self.label(variants),
                    step.name()
                )
            });
            w.succeeded(Phase::Forward, i, out);
        }
        if let Some(k) = self.failed_at {
            w.append(Entry::Started {
                phase: Phase::Forward,
                index: k,
            });
            // The failing step's effect happened (the worst case for the rollback).
            let _ = w.drive(self.forward[k]).await;
            w.append(Entry::Failed {
                phase: Phase::Forward,
                index: k,
                error: "failed on purpose".into(),
                retryable: false,
            });
            w.append(Entry::RollbackBegan {
                reason: "failed on purpose".into(),
                steps: self.rollback.clone(),
            });
            for (i, step) in self.rollback.iter().enumerate().take(self.index) {
                w.append(Entry::Started {
                    phase: Phase::Rollback,
                    index: i,
                });
                let out = w.drive(*step).await.unwrap_or_else(|e| {
                    panic!(
                        "{}: rollback step {} fails: {e}",
                        self.label(variants),
                        step.name()
                    )
                });
                w.succeeded(Phase::Rollback, i, out);
            }
        }
        w.append(Entry::Started {
            phase: self.phase,
            index: self.index,
        });
        w
    }
}

/// The enumeration: every step list `plan` gives over the variants, and each step of
/// each list as a case. A case whose world is the same as one already listed (the same
/// steps before it, on the same kind of environment) is run once: approval adds only a
/// step with no effect, and Canary runs the BlueGreen steps.
struct Enumeration {
    /// Step lists enumerated (forward lists, and rollback lists after each failing step),
    /// over all variants, before deduplication.
    lists: usize,
    distinct_lists: usize,
    cases: Vec<Case>,
}

fn enumerate(variants: &[Variant]) -> Enumeration {
    let mut e = Enumeration {
        lists: 0,
        distinct_lists: 0,
        cases: Vec::new(),
    };
    let mut lists_seen = BTreeSet::new();
    let mut cases_seen = BTreeSet::new();
    for (vi, v) in variants.iter().enumerate() {
        let forward = plan::steps_for(&v.spec, v.from);
        // What, besides the steps run before it, a step's effects depend on. (The
        // policy shows in the steps: Migrate, and RestoreDatabase in a rollback.)
        let world = format!(
            "{:?}/{}/{}",
            v.from,
            !matches!(v.spec.traffic, berth_api::environment::Traffic::None),
            v.spec.backup.is_some(),
        );
        let names = |s: &[Step]| {
            s.iter()
                .filter(|s| **s != Step::AwaitApproval)
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(">")
        };
        let mut add = |case: Case, path: String| {
            if cases_seen.insert(format!("{world}/{path}/{}", case.step.name())) {
                e.cases.push(case);
            }
        };
        e.lists += 1;
        lists_seen.insert(format!("{forward:?}"));
        for (i, step) in forward.iter().enumerate() {
            let case = Case {
                variant: vi,
                forward: forward.clone(),
                failed_at: None,
                rollback: Vec::new(),
                phase: Phase::Forward,
                index: i,
                step: *step,
            };
            add(case, names(&forward[..i]));
        }
        // A failure at each forward step, and the rollback its journal calls for.
        for (k, failed) in forward.iter().enumerate() {
            if !plan::fails_the_rollout(*failed) {
                continue;
            }
            let rollback = rollback_for(v, &forward, k);
            e.lists += 1;
            lists_seen.insert(format!("{forward:?} {k} {rollback:?}"));
            for (i, step) in rollback.iter().enumerate() {
                let case = Case {
                    variant: vi,
                    forward: forward.clone(),
                    failed_at: Some(k),
                    rollback: rollback.clone(),
                    phase: Phase::Rollback,
                    index: i,
                    step: *step,
                };
                let path = format!("{} x {}", names(&forward[..=k]), names(&rollback[..i]));
                add(case, path);
            }
        }
    }
    e.distinct_lists = lists_seen.len();
    e
}

/// The rollback steps `plan` gives after forward step `k` failed.
fn rollback_for(v: &Variant, forward: &[Step], k: usize) -> Vec<Step> {
    let mut log = Vec::new();
    let mut push = |entry| log.push(Event { at: NOW, entry });
    for i in 0..k {
        push(Entry::Started {
            phase: Phase::Forward,
            index: i,
        });
        push(Entry::Succeeded {
            phase: Phase::Forward,
            index: i,
            output: StepOutput::None,
        });
    }
    push(Entry::Started {
        phase: Phase::Forward,
        index: k,
    });
    push(Entry::Failed {
        phase: Phase::Forward,
        index: k,
        error: "failed on purpose".into(),
        retryable: false,
    });
    let op = Operation {
        id: OP_ID.into(),
        env: ENV.into(),
        kind: OpKind::Rollout,
        from: v.from,
        to: v.from.map_or(1, |r| r + 1),
        reason: "test".into(),
        created_at: 0,
        steps: forward.to_vec(),
        log,
        spec: serde_json::Value::Null,
    };
    let st = op.status().expect("the log replays");
    plan::rollback_steps(&v.spec, &op, &st)
}

/// Which steps the cases covered, per phase: printed, and shown on failure.
fn coverage(e: &Enumeration) -> String {
    let mut by_step: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in &e.cases {
        let phase = if c.phase == Phase::Forward {
            "forward"
        } else {
            "rollback"
        };
        *by_step.entry((c.step.name(), phase)).or_default() += 1;
    }
    let mut t = format!(
        "{} step lists enumerated ({} distinct), {} distinct step cases run\n{:<16} {:<9} cases\n",
        e.lists,
        e.distinct_lists,
        e.cases.len(),
        "step",
        "phase"
    );
    for ((step, phase), n) in &by_step {
        let _ = writeln!(t, "{step:<16} {phase:<9} {n}");
    }
    let missing: Vec<&str> = ALL_STEPS
        .iter()
        .filter(|s| !e.cases.iter().any(|c| c.step == **s))
        .map(|s| s.name())
        .collect();
    let _ = writeln!(t, "not covered: {missing:?}");
    t
}

fn report(e: &Enumeration, failures: &[String]) {
    let table = coverage(e);
    println!("{table}");
    assert!(
        ALL_STEPS
            .iter()
            .all(|s| e.cases.iter().any(|c| c.step == *s)),
        "a step is in no enumerated list:\n{table}"
    );
    assert!(
        failures.is_empty(),
        "{} failures over {} cases:\n{}\n\n{table}",
        failures.len(),
        e.cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_step_run_twice_reaches_the_same_end_with_no_second_effect() {
    let variants = variants();
    let e = enumerate(&variants);
    let mut failures = Vec::new();
    for case in &e.cases {
        let label = case.label(&variants);
        let w = case.prepare(&variants).await;
        let first = match w.drive(case.step).await {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{label}: first run failed: {e}"));
                continue;
            }
        };
        let after_first = w.end_state().await;
        let mark = w.fake().mutations().len();
        // Resumed from its `Started` record: the journal still says the step runs.
        let second = match w.drive(case.step).await {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{label}: second run failed: {e}"));
                continue;
            }
        };
        let repeated: Vec<String> = w.fake().mutations()[mark..]
            .iter()
            .filter(|c| !harmless_repeat(c))
            .cloned()
            .collect();
        if !repeated.is_empty() {
            failures.push(format!("{label}: the second run acted again: {repeated:?}"));
        }
        // A note says what was done this time ("nothing to prune"); data must agree.
        if !matches!(second, StepOutput::Note(_)) && second != first {
            failures.push(format!("{label}: outputs differ: {first:?} / {second:?}"));
        }
        let after_second = w.end_state().await;
        if after_second != after_first {
            failures.push(format!(
                "{label}: end states differ:\n  {after_first:?}\n  {after_second:?}"
            ));
        }
    }
    report(&e, &failures);
}

#[tokio::test]
async fn a_failure_before_or_after_any_host_call_of_any_step_is_retried_to_the_same_end() {
    let variants = variants();
    let e = enumerate(&variants);
    let mut failures = Vec::new();
    let mut injected = 0usize;
    for case in &e.cases {
        let label = case.label(&variants);
        let clean = case.prepare(&variants).await;
        let base = clean.fake().mutating_calls();
        if let Err(e) = clean.drive(case.step).await {
            failures.push(format!("{label}: the clean run failed: {e}"));
            continue;
        }
        let clean_calls: Vec<String> = clean.fake().mutations()[base..].to_vec();
        let clean_end = clean.end_state().await;
        let count = |calls: &[String], c: &str| calls.iter().filter(|x| *x == c).count();
        for n in 1..=clean_calls.len() {
            for after_effect in [false, true] {
                injected += 1;
                let ctx = format!(
                    "{label}: call {n} ({}) failing {} its effect",
                    clean_calls[n - 1],
                    if after_effect { "after" } else { "before" }
                );
                let w = case.prepare(&variants).await;
                assert_eq!(w.fake().mutating_calls(), base, "{ctx}: worlds differ");
                if after_effect {
                    w.fake().fail_call_after_effect(base + n);
                } else {
                    w.fake().fail_call(base + n);
                }
                // The reconciler's retry: the failure journaled, the step started again.
                let mut ok = false;
                for _ in 0..5 {
                    match w.drive(case.step).await {
                        Ok(_) => {
                            ok = true;
                            break;
                        }
                        Err(e) if e.is_retryable() => {
                            w.append(Entry::Failed {
                                phase: case.phase,
                                index: case.index,
                                error: e.to_string(),
                                retryable: true,
                            });
                            w.append(Entry::Started {
                                phase: case.phase,
                                index: case.index,
                            });
                        }
                        Err(e) => {
                            failures.push(format!("{ctx}: a permanent error: {e}"));
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                let calls: Vec<String> = w.fake().mutations()[base..].to_vec();
                for c in calls.iter().collect::<BTreeSet<_>>() {
                    if !one_shot(c) {
                        continue;
                    }
                    // The call that failed may be made once more; nothing else may
                    // repeat. A dump, too, when the failure came before it was renamed
                    // into place: the `.partial` is no backup, and it is discarded and
                    // taken again (design rule 5); the end state shows one backup.
                    let retaken = case.step == Step::Backup && c.starts_with("exec_to_file ");
                    let allowed =
                        count(&clean_calls, c) + usize::from(*c == clean_calls[n - 1] || retaken);
                    if count(&calls, c) > allowed {
                        failures.push(format!(
                            "{ctx}: `{c}` made {} times, {allowed} allowed",
                            count(&calls, c)
                        ));
                    }
                }
                let end = w.end_state().await;
                if end != clean_end {
                    failures.push(format!(
                        "{ctx}: end state differs:\n  clean {clean_end:?}\n  here  {end:?}"
                    ));
                }
            }
        }
    }
    println!("{injected} injected failures");
    report(&e, &failures);
}
