//! `berthctl get` and `describe` as a user runs them against the status files berthd
//! writes: the journal is made with a real `Store` in a temporary state directory, its
//! status written by `reconcile::status::write`, and the real binary reads it back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_controller::model::Template;
use berth_controller::op::{Entry, Event, OpKind, Operation, Outcome, Phase, Step, StepOutput};
use berth_controller::reconcile::status;
use berth_controller::store::{
    BackupRecord, EventKind, FailedTemplate, NewEvent, RevisionRecord, Store,
};

/// 2023-11-14T22:13:20Z: the fixed times the descriptions print.
const T0: u64 = 1_700_000_000_000;
const OP_WEB: &str = "01HF8Z0000000000000000WEB1";
const OP_DB: &str = "01HF8Z00000000000000000DB1";
const BACKUP: &str = "01HF8Z000000000000000BKP01";
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn berthctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("berthctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

fn ev(at: u64, entry: Entry) -> Event {
    Event { at, entry }
}

fn template(image: &str) -> Template {
    Template {
        image: image.into(),
        command: None,
        args: None,
        env: BTreeMap::new(),
        env_files: vec![],
        ports: vec![(8080, "127.0.0.1".into())],
        volumes: vec![],
        networks: vec![],
    }
}

fn revision(env: &str, revision: u64, image: &str, hash: &str) -> RevisionRecord {
    RevisionRecord {
        env: env.into(),
        revision,
        template_hash: hash.into(),
        template: template(image),
        spec: serde_json::json!({}),
        image_id: None,
        repo_digest: None,
        commit: Some("3f2a9c1".into()),
        created_at: T0,
    }
}

fn event(store: &Store, env: &str, at: u64, kind: EventKind, reason: &str, message: &str) {
    store
        .record(NewEvent {
            at,
            env: env.into(),
            kind,
            reason: reason.into(),
            message: message.into(),
            op: None,
        })
        .unwrap();
}

/// A state directory with three environments, whose last change was three hours ago:
/// - `api`: idle on revision 1, no operation;
/// - `web`: rolling back from a failed migration (revision 1 → 2), restoring its backup;
/// - `db`: its first rollout failed to pull and needs an operator.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let updated = now() - 3 * 3600 * 1000;

    // api
    store
        .put_revision(&revision("api", 1, "app:v1", "aaaa1111bbbb2222cccc"))
        .unwrap();
    store
        .update_env_state("api", |s| {
            s.current = Some(1);
            s.message = "revision 1 is serving".into();
            s.updated_at = updated;
        })
        .unwrap();

    // web
    store
        .put_revision(&revision("web", 1, "app:v1", "1111aaaa2222bbbb3333"))
        .unwrap();
    store
        .put_revision(&RevisionRecord {
            repo_digest: Some(format!("app@sha256:{}", "d".repeat(64))),
            ..revision("web", 2, "app:v2", "4444cccc5555dddd6666")
        })
        .unwrap();
    store
        .update_env_state("web", |s| {
            s.current = Some(1);
            s.commit = Some("3f2a9c1".into());
        })
        .unwrap();
    store
        .begin(&Operation {
            id: OP_WEB.into(),
            env: "web".into(),
            kind: OpKind::Rollout,
            from: Some(1),
            to: 2,
            reason: "image app:v1 → app:v2".into(),
            created_at: T0,
            steps: vec![
                Step::PullImage,
                Step::Backup,
                Step::Migrate,
                Step::StartCandidate,
            ],
            log: vec![],
            spec: serde_json::Value::Null,
        })
        .unwrap();
    let f = Phase::Forward;
    for e in [
        Entry::Started { phase: f, index: 0 },
        Entry::Succeeded {
            phase: f,
            index: 0,
            output: StepOutput::Image {
                id: "sha256:abc".into(),
                repo_digest: Some(format!("app@sha256:{}", "d".repeat(64))),
            },
        },
        Entry::Started { phase: f, index: 1 },
        Entry::Succeeded {
            phase: f,
            index: 1,
            output: StepOutput::Backup {
                id: BACKUP.into(),
                path: "/backups/web/01.sql.gz".into(),
                size: 1536,
                sha256: SHA.into(),
            },
        },
        Entry::Started { phase: f, index: 2 },
        Entry::Failed {
            phase: f,
            index: 2,
            error: "migration 0003 failed: exit 1".into(),
            retryable: false,
        },
        Entry::RollbackBegan {
            reason: "Migrate: migration 0003 failed: exit 1".into(),
            steps: vec![Step::RestoreDatabase, Step::StartOld],
        },
        Entry::Started {
            phase: Phase::Rollback,
            index: 0,
        },
    ] {
        store.append(OP_WEB, ev(T0 + 1000, e)).unwrap();
    }
    store
        .put_backup(&BackupRecord {
            id: BACKUP.into(),
            env: "web".into(),
            op: Some(OP_WEB.into()),
            revision: Some(1),
            path: "/backups/web/01.sql.gz".into(),
            size: 1536,
            sha256: SHA.into(),
            created_at: T0 + 2000,
        })
        .unwrap();
    store
        .update_env_state("web", |s| {
            s.message = "rolling back: restoring the database from backup 01HF8Z…".into();
            s.updated_at = updated;
        })
        .unwrap();
    event(
        &store,
        "web",
        T0,
        EventKind::Normal,
        "RolloutStarted",
        "revision 1 → 2",
    );
    event(
        &store,
        "web",
        T0 + 5000,
        EventKind::Warning,
        "StepFailed",
        "Migrate: migration 0003 failed: exit 1",
    );

    // db
    store
        .put_revision(&revision("db", 1, "postgres:15", "7777eeee8888ffff9999"))
        .unwrap();
    store
        .begin(&Operation {
            id: OP_DB.into(),
            env: "db".into(),
            kind: OpKind::Rollout,
            from: None,
            to: 1,
            reason: "first rollout".into(),
            created_at: T0,
            steps: vec![Step::PullImage],
            log: vec![],
            spec: serde_json::Value::Null,
        })
        .unwrap();
    for e in [
        Entry::Started { phase: f, index: 0 },
        Entry::Failed {
            phase: f,
            index: 0,
            error: "no such image".into(),
            retryable: false,
        },
        Entry::Finished {
            outcome: Outcome::Failed {
                reason: "PullImage: no such image".into(),
            },
        },
    ] {
        store.append(OP_DB, ev(T0 + 1000, e)).unwrap();
    }
    store
        .update_env_state("db", |s| {
            s.failed = Some(FailedTemplate {
                template_hash: "7777eeee8888ffff9999".into(),
                reason: "PullImage: no such image".into(),
                at: T0 + 1000,
            });
            s.message = "rollout to revision 1 failed: PullImage: no such image".into();
            s.updated_at = updated;
        })
        .unwrap();

    for env in ["api", "web", "db"] {
        status::write(&store, env).unwrap();
    }
    // The store stays open (as berthd keeps it) until here: berthctl never needs it.
    drop(store);
    dir
}

fn state_arg(dir: &Path) -> String {
    dir.display().to_string()
}

/// The line of `out` whose first words are `first`, split into words.
fn row<'a>(out: &'a str, first: &[&str]) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.starts_with(first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{out}"))
}

#[test]
fn get_environments_prints_one_aligned_row_per_environment_under_a_kubectl_like_header() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "get",
        "environments",
        "--state",
        &state_arg(dir.path()),
    ]));
    assert_eq!(
        out,
        "\
NAME   REVISION   PHASE                          UPDATED   MESSAGE
api    1          Idle                           3h        revision 1 is serving
db     <none>     Failed                         3h        rollout to revision 1 failed: PullImage: no such image
web    1          Rolling back RestoreDatabase   3h        rolling back: restoring the database from backup 01HF8Z…
"
    );
}

#[test]
fn get_environments_as_json_prints_steps_outputs_and_times_as_data() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "get",
        "envs",
        "-o",
        "json",
        "--state",
        &state_arg(dir.path()),
    ]));
    let printed: serde_json::Value = serde_json::from_str(&out).expect("a JSON array");
    let names: Vec<&str> = printed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "db", "web"]);
    let web = &printed[2];
    assert_eq!(web["phase"], "Rolling back RestoreDatabase");
    assert_eq!(web["state"]["current"], 1);
    assert_eq!(web["state"]["activeOp"], OP_WEB);
    let op = &web["operation"];
    assert_eq!(op["id"], OP_WEB);
    assert_eq!(
        op["rollbackReason"],
        "Migrate: migration 0003 failed: exit 1"
    );
    let step = |name: &str| {
        op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {op}"))
            .clone()
    };
    // Outputs are fields, one key naming their kind; no Rust debug text anywhere.
    assert_eq!(
        step("PullImage"),
        serde_json::json!({
            "step": "PullImage",
            "state": "Succeeded",
            "at": "2023-11-14T22:13:21.000Z",
            "output": {"image": {
                "id": "sha256:abc",
                "repoDigest": format!("app@sha256:{}", "d".repeat(64)),
            }},
        })
    );
    assert_eq!(
        step("Backup")["output"],
        serde_json::json!({"backup": {
            "id": BACKUP, "path": "/backups/web/01.sql.gz", "size": 1536, "sha256": SHA,
        }})
    );
    assert_eq!(
        step("Migrate"),
        serde_json::json!({
            "step": "Migrate",
            "state": "Failed",
            "at": "2023-11-14T22:13:21.000Z",
            "error": "migration 0003 failed: exit 1",
        })
    );
    assert_eq!(step("RestoreDatabase")["attempts"], 1);
    assert_eq!(
        step("StartOld"),
        serde_json::json!({"step": "StartOld", "state": "Pending"})
    );
    assert!(
        !out.contains("Image {") && !out.contains("Backup {"),
        "{out}"
    );
    // Times are RFC 3339.
    assert_eq!(web["revisions"][0]["createdAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(web["backups"][0]["createdAt"], "2023-11-14T22:13:22.000Z");
    assert_eq!(web["backups"][0]["sha256"], SHA);
    let started = web["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "RolloutStarted")
        .unwrap();
    assert_eq!(started["at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(started["type"], "Normal");
    let db = &printed[1];
    assert_eq!(db["operation"]["outcome"]["type"], "Failed");
    assert_eq!(
        db["operation"]["outcome"]["reason"],
        "PullImage: no such image"
    );
    assert_eq!(db["state"]["failed"]["at"], "2023-11-14T22:13:21.000Z");

    // describe -o json prints the same record for one environment.
    let described = ok(&berthctl(&[
        "describe",
        "env",
        "web",
        "-o",
        "json",
        "--state",
        &state_arg(dir.path()),
    ]));
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(&described, web);
}

#[test]
fn get_environments_as_yaml_lists_the_same_records() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "get",
        "environments",
        "web",
        "-o",
        "yaml",
        "--state",
        &state_arg(dir.path()),
    ]));
    assert!(out.starts_with("- name: web\n"), "{out}");
    assert!(out.contains(&format!("id: {OP_WEB}")), "{out}");
    assert!(out.contains("phase: Rollback"), "{out}");
    assert!(out.contains("step: RestoreDatabase"), "{out}");
    assert!(out.contains("repoDigest: app@sha256:"), "{out}");
    assert!(
        out.contains("createdAt: \"2023-11-14T22:13:20.000Z\""),
        "{out}"
    );
    assert!(!out.contains("Image {"), "{out}");
}

#[test]
fn describe_environment_shows_its_state_the_operation_step_by_step_and_why_it_failed() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "describe",
        "environment",
        "web",
        "--state",
        &state_arg(dir.path()),
    ]));
    for line in [
        "Name:      web",
        "Phase:     Rolling back RestoreDatabase",
        "Revision:  1",
        "Commit:    3f2a9c1",
        "Paused:    false",
        "Approved:  <none>",
        "Failed:    <none>",
        "Operation:",
        &format!("  ID:               {OP_WEB}"),
        "  Revision:         1 → 2",
        "  Reason:           image app:v1 → app:v2",
        "  Phase:            Rollback",
        "  Outcome:          <in progress>",
        "  Rollback reason:  Migrate: migration 0003 failed: exit 1",
        "  Rollback steps:",
        "  Forward steps:",
        "Revisions:",
        "Backups:",
        "Events:",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    // Sections come in this order.
    let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s} in:\n{out}"));
    assert!(at("\nOperation:") < at("\n  Rollback steps:"));
    assert!(at("\n  Rollback steps:") < at("\n  Forward steps:"));
    assert!(at("\n  Forward steps:") < at("\nRevisions:"));
    assert!(at("\nRevisions:") < at("\nBackups:"));
    assert!(at("\nBackups:") < at("\nEvents:"));

    assert_eq!(
        row(&out, &["RestoreDatabase"]),
        ["RestoreDatabase", "Running", "attempt", "1"]
    );
    assert_eq!(row(&out, &["StartOld"]), ["StartOld", "Pending"]);
    assert_eq!(row(&out, &["Backup"])[1], "Succeeded");
    assert_eq!(
        row(&out, &["PullImage"]).join(" "),
        format!("PullImage Succeeded pulled app@sha256:{}", "d".repeat(64))
    );
    assert_eq!(
        row(&out, &["Migrate"]).join(" "),
        "Migrate Failed migration 0003 failed: exit 1"
    );
    assert_eq!(
        row(&out, &["StartCandidate"]),
        ["StartCandidate", "Pending"]
    );
    assert_eq!(
        row(&out, &["1", "(current)"]),
        [
            "1",
            "(current)",
            "app:v1",
            "<none>",
            "1111aaaa2222",
            "3f2a9c1",
            "2023-11-14T22:13:20Z"
        ]
    );
    assert_eq!(
        row(&out, &["2"]),
        [
            "2",
            "app:v2",
            &format!("sha256:{}", "d".repeat(64)),
            "4444cccc5555",
            "3f2a9c1",
            "2023-11-14T22:13:20Z"
        ]
    );
    assert_eq!(
        row(&out, &[BACKUP]),
        [
            BACKUP,
            "1",
            "/backups/web/01.sql.gz",
            "1.5",
            "KiB",
            "9f86d081884c",
            "2023-11-14T22:13:22Z"
        ]
    );
    assert_eq!(
        row(&out, &["2023-11-14T22:13:25Z"]).join(" "),
        "2023-11-14T22:13:25Z Warning StepFailed Migrate: migration 0003 failed: exit 1"
    );
    assert_eq!(
        row(&out, &["2023-11-14T22:13:20Z", "Normal"]).join(" "),
        "2023-11-14T22:13:20Z Normal RolloutStarted revision 1 → 2"
    );
}

#[test]
fn describe_of_a_failed_rollout_names_the_failed_template_and_its_reason() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "describe",
        "env",
        "db",
        "--state",
        &state_arg(dir.path()),
    ]));
    for line in [
        "Phase:     Failed",
        "Revision:  <none>",
        "Failed:    template 7777eeee8888 at 2023-11-14T22:13:21Z: PullImage: no such image",
        "Message:   rollout to revision 1 failed: PullImage: no such image",
        "  Revision:  <none> → 1",
        "  Outcome:   Failed: PullImage: no such image",
        "  Steps:",
        "Backups:  <none>",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    assert_eq!(
        row(&out, &["PullImage"]).join(" "),
        "PullImage Failed no such image"
    );
}

#[test]
fn describe_of_an_unknown_environment_exits_1_and_lists_the_known_ones() {
    let dir = state_dir();
    let out = berthctl(&[
        "describe",
        "environment",
        "shop",
        "--state",
        &state_arg(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: environment \"shop\" not found in "),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("known environments: api, db, web"),
        "{err}"
    );
}

#[test]
fn without_status_files_get_and_describe_exit_1_saying_berthd_has_not_run_there() {
    let dir = tempfile::tempdir().unwrap();
    let state = state_arg(dir.path());
    for args in [
        vec!["get", "environments", "--state", &state],
        vec!["get", "backups", "--state", &state],
        vec!["describe", "environment", "web", "--state", &state],
    ] {
        let out = berthctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("berthd has not run with --state {state}")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn get_backups_lists_every_environments_catalogued_backups() {
    let dir = state_dir();
    let out = ok(&berthctl(&[
        "get",
        "backups",
        "--state",
        &state_arg(dir.path()),
    ]));
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "ENVIRONMENT",
            "ID",
            "REVISION",
            "SIZE",
            "SHA256",
            "AGE",
            "PATH"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..6], ["web", BACKUP, "1", "1.5", "KiB", "9f86d081884c"]);
    assert_eq!(row[7], "/backups/web/01.sql.gz");
    assert_eq!(lines.next(), None);
    let json = ok(&berthctl(&[
        "get",
        "backups",
        "-o",
        "json",
        "--state",
        &state_arg(dir.path()),
    ]));
    let backups: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(backups.as_array().map(Vec::len), Some(1));
    assert_eq!(backups[0]["size"], 1536);
    assert_eq!(backups[0]["environment"], "web");
    assert_eq!(backups[0]["createdAt"], "2023-11-14T22:13:22.000Z");
}

#[test]
fn get_hosts_reads_the_manifests_without_berthd() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(
        &file,
        "\
apiVersion: berth.dev/v1
kind: Host
metadata: {name: vm-a}
spec:
  address: ssh://root@127.0.0.2:2222
  portRange: 25000-26999
---
apiVersion: berth.dev/v1
kind: Host
metadata: {name: local}
spec: {address: local, maxParallel: 4}
",
    )
    .unwrap();
    let out = ok(&berthctl(&[
        "get",
        "hosts",
        "-f",
        &file.display().to_string(),
    ]));
    assert_eq!(
        out,
        "\
NAME    ADDRESS                     PORTS         MAX-PARALLEL   ENVIRONMENTS
local   local                       20000-29999   4              0
vm-a    ssh://root@127.0.0.2:2222   25000-26999   2              0
"
    );
}

#[test]
fn get_hosts_shows_what_berthd_last_saw_of_each_host() {
    use berth_controller::reconcile::host_status::{self, HostPhase, HostStatus};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(
        &file,
        "\
apiVersion: berth.dev/v1
kind: Host
metadata: {name: vm-a}
spec: {address: 'ssh://root@127.0.0.2:2222'}
---
apiVersion: berth.dev/v1
kind: Host
metadata: {name: local}
spec: {address: local}
",
    )
    .unwrap();
    let state = dir.path().join("state");
    let seen = berth_controller::ctl::output::utc(now() - 3000);
    host_status::write(
        &state,
        &[
            HostStatus {
                name: "local".into(),
                address: "local".into(),
                state: HostPhase::Reachable,
                reachable: true,
                docker_version: Some("24.0.7".into()),
                api_version: None,
                last_error: None,
                last_seen: Some(seen.clone()),
                rtt_ms: Some(1.25),
                since: None,
            },
            HostStatus {
                name: "vm-a".into(),
                address: "ssh://root@127.0.0.2:2222".into(),
                state: HostPhase::Unreachable,
                reachable: false,
                docker_version: None,
                api_version: None,
                last_error: Some(
                    "host key not trusted: [127.0.0.2]:2222 offered ssh-ed25519 SHA256:abc".into(),
                ),
                last_seen: None,
                rtt_ms: None,
                since: None,
            },
        ],
    )
    .unwrap();
    let args = |o: &str| {
        berthctl(&[
            "get",
            "hosts",
            "-o",
            o,
            "-f",
            &file.display().to_string(),
            "--state",
            &state_arg(&state),
        ])
    };
    let table = ok(&args("table"));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ADDRESS",
            "REACHABLE",
            "DOCKER",
            "LAST-SEEN",
            "RTT",
            "ENVIRONMENTS",
            "LAST-ERROR"
        ]
    );
    let local: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(local[..4], ["local", "local", "yes", "24.0.7"]);
    assert!(local[4] == "3s" || local[4] == "4s", "{table}");
    assert_eq!(local[5..], ["1.2ms", "0", "<none>"]);
    let vm: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        vm[..4],
        ["vm-a", "ssh://root@127.0.0.2:2222", "no", "<none>"]
    );
    assert!(
        table.contains("host key not trusted: [127.0.0.2]:2222 offered ssh-ed25519"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&args("json"))).unwrap();
    assert_eq!(json[0]["metadata"]["name"], "local");
    assert_eq!(json[0]["status"]["docker_version"], "24.0.7");
    assert_eq!(json[0]["status"]["last_seen"], seen.as_str());
    assert_eq!(json[1]["status"]["reachable"], false);
    let yaml = ok(&args("yaml"));
    assert!(yaml.contains("state: Unreachable"), "{yaml}");
}

#[test]
fn an_output_format_that_does_not_exist_is_a_usage_error() {
    let out = berthctl(&["get", "environments", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: table, json, yaml"));
}

/// Manifests placing `api` and `db` (which have status files in [`state_dir`]) on vm-a,
/// and `shop` (which has none) beside them.
const HOSTS_AND_ENVS: &str = "\
apiVersion: berth.dev/v1
kind: Host
metadata: {name: vm-a}
spec:
  address: ssh://root@127.0.0.2:2222
  identityFile: /etc/berth/id_ed25519
  knownHostsFile: /etc/berth/known_hosts
  registryAuth: /etc/berth/registry.json
  portRange: 25000-26999
---
apiVersion: berth.dev/v1
kind: Host
metadata: {name: local}
spec: {address: local}
---
apiVersion: berth.dev/v1
kind: Environment
metadata: {name: api}
spec: {host: vm-a, image: 'app:v1'}
---
apiVersion: berth.dev/v1
kind: Environment
metadata: {name: db}
spec: {host: vm-a, image: 'app:v1'}
---
apiVersion: berth.dev/v1
kind: Environment
metadata: {name: shop}
spec: {host: vm-a, image: 'app:v1'}
---
apiVersion: berth.dev/v1
kind: Environment
metadata: {name: web}
spec: {host: local, image: 'app:v1'}
";

#[test]
fn describe_host_shows_its_spec_its_connection_with_the_whole_last_error_and_its_environments() {
    use berth_controller::reconcile::host_status::{self, HostPhase, HostStatus};
    let dir = state_dir();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(&file, HOSTS_AND_ENVS).unwrap();
    let refusal = "host key not trusted: [127.0.0.2]:2222 offered ssh-ed25519 \
                   SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU by vm-a, which \
                   /etc/berth/known_hosts does not list; nothing was sent to it; after \
                   checking the fingerprint with the host's owner, run \
                   `berthctl hosts trust vm-a -f <manifests>`";
    host_status::write(
        dir.path(),
        &[HostStatus {
            name: "vm-a".into(),
            address: "ssh://root@127.0.0.2:2222".into(),
            state: HostPhase::Unreachable,
            reachable: false,
            docker_version: Some("24.0.7".into()),
            api_version: Some("1.43".into()),
            last_error: Some(refusal.into()),
            last_seen: Some("2023-11-14T22:13:20Z".into()),
            rtt_ms: Some(3.5),
            since: Some("2023-11-14T22:10:00Z".into()),
        }],
    )
    .unwrap();
    let args = |o: &str| {
        berthctl(&[
            "describe",
            "host",
            "vm-a",
            "-o",
            o,
            "-f",
            &file.display().to_string(),
            "--state",
            &state_arg(dir.path()),
        ])
    };

    let out = ok(&args("table"));
    for line in [
        "Name:           vm-a",
        "Address:        ssh://root@127.0.0.2:2222",
        "Docker socket:  /var/run/docker.sock",
        "Identity file:  /etc/berth/id_ed25519",
        "Known hosts:    /etc/berth/known_hosts",
        "Port range:     25000-26999",
        "Max parallel:   2",
        "Registry auth:  configured",
        "  State:       Unreachable (retrying with backoff)",
        "  Docker:      24.0.7 (API 1.43)",
        "  Round trip:  3.5ms",
        "  Last error:",
        &format!("    {refusal}"),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    assert!(
        out.contains("  Since:       2023-11-14T22:10:00Z ("),
        "{out}"
    );
    assert!(
        out.contains("  Last seen:   2023-11-14T22:13:20Z ("),
        "{out}"
    );
    assert!(!out.contains("registry.json"), "{out}");
    assert_eq!(
        row(&out, &["api"]),
        ["api", "1", "Idle", "revision", "1", "is", "serving"]
    );
    assert_eq!(row(&out, &["db"])[..3], ["db", "<none>", "Failed"]);
    assert_eq!(row(&out, &["shop"]), ["shop", "<none>", "<no", "status>"]);
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("web ")),
        "{out}"
    );

    let json: serde_json::Value = serde_json::from_str(&ok(&args("json"))).unwrap();
    assert_eq!(json["name"], "vm-a");
    assert_eq!(json["spec"]["knownHostsFile"], "/etc/berth/known_hosts");
    assert_eq!(json["spec"]["registryAuth"], true);
    assert_eq!(json["status"]["state"], "Unreachable");
    assert_eq!(json["status"]["last_error"], refusal);
    let envs = json["environments"].as_array().unwrap();
    let names: Vec<_> = envs.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "db", "shop"]);
    assert_eq!(envs[0]["revision"], 1);
    assert_eq!(envs[0]["phase"], "Idle");
    assert!(envs[1]["message"]
        .as_str()
        .unwrap()
        .contains("no such image"));
    assert_eq!(envs[2]["phase"], serde_json::Value::Null);
}

#[test]
fn describe_host_of_a_host_berthd_has_not_seen_says_so_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(&file, HOSTS_AND_ENVS).unwrap();
    let out = ok(&berthctl(&[
        "describe",
        "host",
        "local",
        "-f",
        &file.display().to_string(),
        "--state",
        &state_arg(&dir.path().join("never-ran")),
    ]));
    assert!(
        out.contains("Connection:  <unknown> (berthd has not reported"),
        "{out}"
    );
    assert!(out.contains("Known hosts:    <none>"), "{out}");
    assert_eq!(row(&out, &["web"]), ["web", "<none>", "<no", "status>"]);
}

#[test]
fn describe_host_of_an_unknown_name_exits_1_listing_the_known_hosts_and_the_closest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts.yaml");
    std::fs::write(&file, HOSTS_AND_ENVS).unwrap();
    let out = berthctl(&[
        "describe",
        "host",
        "vm-b",
        "-f",
        &file.display().to_string(),
        "--state",
        &state_arg(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: host \"vm-b\" is not declared in "),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("known hosts: local, vm-a; did you mean `vm-a`?"),
        "{err}"
    );
}
