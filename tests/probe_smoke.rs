//! Probes (`exec::probe`) and smoke checks (`exec::smoke`) against the real demo app,
//! through `LocalHost`: readiness follows the schema, liveness, tcp and exec probes say
//! what they saw, and a failing smoke check names itself.
//!
//! Needs the lab (registry with the demo images, network `berth-lab`, database
//! `berth-lab-db`), so it is ignored by default: `hack/lab up && cargo test -p
//! berth-controller --test probe_smoke -- --include-ignored`. It uses a database of its
//! own (the lab's may be migrated past v1 by other tests) and removes it and its
//! containers when done, pass or fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::environment::{PortRef, PortSpec, Probe, ProbeAction, SmokeCheck};
use berth_api::values::Duration as D;
use berth_controller::exec::monitor::{Monitor, ProbeKind, Watch};
use berth_controller::exec::probe::{probe_once, Target};
use berth_controller::exec::smoke::run_smoke;
use berth_controller::redact::Redactor;

#[path = "support/mod.rs"]
mod support;

use support::cmd::{docker, run_ok};
use support::host::local_host;
use support::lab::{Containers, Db, NETWORK};

const IMAGE: &str = "127.0.0.1:5000/berth/demo-app:v1";

/// What this test made, removed on drop whatever happened: its containers first, then
/// its database (the fields drop in this order), then its directory.
struct Scratch {
    containers: Containers,
    db: Db,
    dir: tempfile::TempDir,
    id: String,
}

impl Scratch {
    fn new() -> Scratch {
        let id = support::names::stamp("_");
        let s = Scratch {
            containers: Containers::default(),
            db: Db::create(format!("probe_{id}")),
            dir: tempfile::tempdir().expect("a temporary directory"),
            id,
        };
        // The app's settings in an env file (mode 0600), as Berth passes them.
        std::fs::write(s.env_file(), format!("DATABASE_URL={}\n", s.db.url())).expect("env file");
        s
    }

    fn env_file(&self) -> String {
        format!("{}/app.env", self.dir.path().display())
    }

    fn name(&mut self, role: &str) -> String {
        let name = format!("berth-probe-test-{role}-{}", self.id.replace('_', "-"));
        self.containers.push(name.clone());
        name
    }
}

fn probe(action: ProbeAction) -> Probe {
    Probe {
        action,
        interval: D(Duration::from_millis(200)),
        timeout: D::secs(3),
        success_threshold: 1,
        failure_threshold: 1,
        initial_delay: D::secs(0),
    }
}

fn http(path: &str) -> Probe {
    probe(ProbeAction::Http {
        path: path.into(),
        port: PortRef::Name("http".into()),
    })
}

fn smoke(name: Option<&str>, expect_status: u16) -> SmokeCheck {
    SmokeCheck {
        name: name.map(str::to_owned),
        method: "POST".into(),
        path: "/rows".into(),
        body: Some("written by the probe_smoke test".into()),
        headers: BTreeMap::from([("Content-Type".into(), "text/plain".into())]),
        expect_status,
        expect_body: Some("\"id\"".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the lab: hack/lab up"]
async fn probes_and_smoke_checks_against_the_demo_app() {
    let host = Arc::new(local_host().await);
    let mut scratch = Scratch::new();
    let app = scratch.name("app");
    let env_file = scratch.env_file();
    run_ok(docker().args([
        "run",
        "-d",
        "--name",
        &app,
        "--network",
        NETWORK,
        "-p",
        "127.0.0.1::8080",
        "--env-file",
        &env_file,
        IMAGE,
    ]));
    let published = run_ok(docker().args(["port", &app, "8080/tcp"]));
    let port: u16 = published
        .lines()
        .next()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no published port in {published:?}"));
    let ports = [PortSpec {
        name: "http".into(),
        container_port: 8080,
        publish: "127.0.0.1".into(),
    }];
    let target = Target::new(&app, &ports, &[port]);

    // Liveness: /health answers as soon as the process serves.
    let deadline = Instant::now() + Duration::from_secs(15);
    let live = loop {
        let a = probe_once(host.as_ref(), &http("/health"), &target, &Redactor::none()).await;
        if a.ok || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(live.ok, "liveness: {}", live.output);
    assert_eq!(live.output, "HTTP 200: ok");

    // Readiness fails, saying why, before the migration...
    let (tx, mut flips) = tokio::sync::mpsc::unbounded_channel();
    let monitor = Monitor::with_notify(host.clone(), tx);
    monitor.set_targets(
        "probe-test",
        vec![Watch {
            kind: ProbeKind::Readiness,
            probe: http("/ready"),
            target: target.clone(),
            redactor: Arc::new(Redactor::none()),
        }],
    );
    let not_ready = probe_once(host.as_ref(), &http("/ready"), &target, &Redactor::none()).await;
    assert!(!not_ready.ok);
    assert_eq!(
        not_ready.output,
        "HTTP 503: schema not migrated yet, this build needs 1..=2"
    );
    let flip = tokio::time::timeout(Duration::from_secs(10), flips.recv())
        .await
        .expect("a verdict within 10 s")
        .expect("the monitor is alive");
    assert!(!flip.healthy);

    // ...and passes after it.
    let migrate = scratch.name("migrate");
    run_ok(docker().args([
        "run",
        "--rm",
        "--name",
        &migrate,
        "--network",
        NETWORK,
        "--env-file",
        &env_file,
        IMAGE,
        "migrate",
    ]));
    let ready = probe_once(host.as_ref(), &http("/ready"), &target, &Redactor::none()).await;
    assert_eq!((ready.ok, ready.output.as_str()), (true, "HTTP 200: ready"));
    let flip = tokio::time::timeout(Duration::from_secs(10), flips.recv())
        .await
        .expect("the monitor sees it within 10 s")
        .expect("the monitor is alive");
    assert!(flip.healthy);
    let health = monitor.snapshot(&app).expect("watched");
    assert_eq!(
        (health.ready, health.last_output.as_str()),
        (Some(true), "HTTP 200: ready")
    );
    drop(monitor);

    // TCP.
    let tcp = probe(ProbeAction::Tcp {
        port: PortRef::Number(8080),
    });
    let a = probe_once(host.as_ref(), &tcp, &target, &Redactor::none()).await;
    assert_eq!(
        (a.ok, a.output.clone()),
        (true, format!("connected to 127.0.0.1:{port}"))
    );

    // Exec in a FROM scratch image: there is no shell, and the output says so.
    let exec = probe(ProbeAction::Exec {
        command: vec!["sh".into(), "-c".into(), "exit 0".into()],
    });
    let a = probe_once(host.as_ref(), &exec, &target, &Redactor::none()).await;
    assert!(!a.ok, "{}", a.output);
    assert!(
        a.output.contains("sh") && a.output.contains("not found"),
        "the output explains: {}",
        a.output
    );

    // Smoke: a write that answers 201 passes; expecting 200 fails, naming the check.
    run_smoke(
        host.as_ref(),
        &[smoke(None, 201)],
        "127.0.0.1",
        port,
        Duration::from_secs(5),
        &Redactor::none(),
    )
    .await
    .expect("POST /rows answers 201");
    let err = run_smoke(
        host.as_ref(),
        &[smoke(Some("write a row"), 200)],
        "127.0.0.1",
        port,
        Duration::from_secs(5),
        &Redactor::none(),
    )
    .await
    .expect_err("201 is not 200");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "smoke check `write a row`: expected HTTP 200 with a body containing \"\\\"id\\\"\", got HTTP 201: \"{\\\"id\\\":"
        ),
        "{msg}"
    );
    let unnamed = run_smoke(
        host.as_ref(),
        &[smoke(None, 200)],
        "127.0.0.1",
        port,
        Duration::from_secs(5),
        &Redactor::none(),
    )
    .await
    .expect_err("201 is not 200");
    assert!(
        unnamed
            .to_string()
            .starts_with("smoke check `POST /rows`: "),
        "{unnamed}"
    );
}
