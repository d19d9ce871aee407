//! `exec::backup` and `exec::migrate` against the real Docker engine and the lab database:
//! migrations of the demo app that run exactly once, a failing and a timed-out one, and
//! PostgreSQL and volume backups restored for real.
//!
//! Every test needs the running lab, so all are ignored by default:
//! `hack/lab up && cargo test -p berth-controller --test backup_migrate -- --include-ignored`.
//! Each test uses its own database (`bm_<random>` on `berth-lab-db`), containers, volume
//! and directory, and removes them when it ends, also when it fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_api::environment::Backup;
use berth_controller::exec::backup::{self, Catalogued, ResolvedSource, Taken};
use berth_controller::exec::migrate::{self, Progress};
use berth_controller::host::local::LocalHost;
use berth_controller::host::Host;
use berth_controller::model::{self, ContainerSpec, ContainerState, Role, Template};
use berth_controller::redact::Redactor;

#[path = "support/mod.rs"]
mod support;

use support::cmd::{docker, run_ok, sha256sum};
use support::host::local_host;
use support::lab::{Containers, Db, Volume, DB_CONTAINER, NETWORK};

const DEMO_IMAGE: &str = "127.0.0.1:5000/berth/demo-app";
const PG_IMAGE: &str = "127.0.0.1:5000/berth/postgres:15";
/// The lab database as published on the host.
const DB_HOST_ADDR: &str = "127.0.0.1:55432";
/// How long a migration of the demo app may take here before the test gives up.
const MIGRATION_LIMIT: Duration = Duration::from_secs(120);

// ---- helpers ----------------------------------------------------------------------------

/// A lowercase name no other test run uses, with no `-` after the prefix so that it also
/// serves as a database name: `<prefix><pid>x<nanos>x<n>`.
fn unique(prefix: &str) -> String {
    support::names::unique_with(prefix, "x")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `backup` section of an environment, read from YAML as a user writes it.
fn backup_section(yaml: &str) -> Backup {
    let text = format!(
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: local}}\nspec: {{address: local}}\n---\n\
         apiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: app}}\nspec:\n  host: local\n  image: {DEMO_IMAGE}:v1\n  backup:\n{yaml}"
    );
    let manifests = berth_api::load_texts(vec![("app.yaml".into(), text)])
        .into_manifests()
        .unwrap_or_else(|l| panic!("{:?}", l.diagnostics));
    manifests.environments["app"]
        .spec
        .backup
        .clone()
        .expect("a backup section")
}

/// The migrate container of operation `op` for environment `env`: `demo-app migrate` of
/// `image` on the lab network, against `database_url`.
fn migrate_spec(env: &str, op: &str, image: &str, database_url: &str) -> ContainerSpec {
    let template = Template {
        image: image.to_owned(),
        command: None,
        args: None,
        env: [("DATABASE_URL".to_owned(), database_url.to_owned())].into(),
        env_files: Vec::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        networks: vec![NETWORK.to_owned()],
    };
    ContainerSpec {
        name: model::migrate_name(env, op),
        env_name: env.to_owned(),
        revision: 2,
        role: Role::Migrate,
        replica: None,
        op: Some(op.to_owned()),
        template_hash: template.hash(),
        template,
        host_ports: Vec::new(),
        override_args: Some(vec!["migrate".to_owned()]),
        aliases: Vec::new(),
    }
}

/// Calls `migrate` the way the step runner does until it is no longer `Running`.
async fn migrate_to_end(host: &LocalHost, spec: &ContainerSpec, timeout: Duration) -> Progress {
    let started_at = now_ms();
    let give_up = Instant::now() + MIGRATION_LIMIT;
    loop {
        let p = migrate::migrate(host, spec, started_at, now_ms(), timeout, &Redactor::none())
            .await
            .unwrap_or_else(|e| panic!("migrate {}: {e}", spec.name));
        match p {
            Progress::Running { since } => assert_eq!(since, started_at),
            done => return done,
        }
        assert!(Instant::now() < give_up, "{} still running", spec.name);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// When the container last started, as Docker says: a second run would change it.
fn started_at(name: &str) -> String {
    run_ok(docker().args(["inspect", "-f", "{{.State.StartedAt}}", name]))
        .trim()
        .to_owned()
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

/// A file's identity and last change: a second dump would replace it.
fn file_stamp(path: &str) -> (u64, i64, i64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.ino(), m.mtime(), m.mtime_nsec())
}

/// The catalogue entry Berth records for a backup it took.
fn catalogued<'a>(id: &'a str, taken: &'a Taken) -> Catalogued<'a> {
    Catalogued {
        id,
        path: &taken.path,
        sha256: &taken.sha256,
    }
}

fn assert_taken(t: &Taken) {
    assert_eq!(sha256sum(&t.path), t.sha256, "sha256 of {}", t.path);
    assert_eq!(
        std::fs::metadata(&t.path).map(|m| m.len()).ok(),
        Some(t.size)
    );
    assert_eq!(mode(&t.path), 0o600, "mode of {}", t.path);
    assert!(!std::path::Path::new(&backup::partial_path(&t.path)).exists());
}

// ---- migrations -------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_migration_runs_exactly_once_per_operation_even_when_observed_again() {
    let host = local_host().await;
    let db = Db::create(unique("bm_"));
    let env = unique("bm-");
    let mut guard = Containers(Vec::new());
    for (tag, schema) in [("v1", "1"), ("v2", "2")] {
        let image = format!("{DEMO_IMAGE}:{tag}");
        host.pull(&image).await.unwrap_or_else(|e| panic!("{e}"));
        let op = unique("op");
        let spec = migrate_spec(&env, &op, &image, &db.url());
        guard.0.push(spec.name.clone());

        let Progress::Done { log_tail } = migrate_to_end(&host, &spec, MIGRATION_LIMIT).await
        else {
            panic!("migration {tag} did not succeed")
        };
        assert!(log_tail.contains("applying migration"), "{log_tail}");
        let first_start = started_at(&spec.name);

        // Observed again (a resumed step): done, and not run again.
        for _ in 0..2 {
            let again = migrate::migrate(
                &host,
                &spec,
                0,
                now_ms(),
                MIGRATION_LIMIT,
                &Redactor::none(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(again, Progress::Done { .. }), "{again:?}");
        }
        assert_eq!(
            started_at(&spec.name),
            first_start,
            "{tag} was started again"
        );
        assert_eq!(
            db.psql(&format!(
                "select count(*) from demo_migrate_runs where build = '{tag}'"
            )),
            "1",
            "runs of {tag}"
        );
        assert_eq!(
            db.psql("select max(version) from demo_schema_migrations"),
            schema
        );
        let mine = host.list(&env).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            mine.iter().filter(|c| c.op.as_deref() == Some(&op)).count(),
            1,
            "one migrate container for operation {op}"
        );

        migrate::cleanup(&host, &spec.name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(host
            .inspect(&spec.name)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        migrate::cleanup(&host, &spec.name)
            .await
            .unwrap_or_else(|e| panic!("cleanup of an absent container: {e}"));
    }
    assert_eq!(db.psql("select count(*) from demo_migrate_runs"), "2");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_failing_migration_is_failed_with_its_log_and_never_run_again() {
    let host = local_host().await;
    let db = Db::create(unique("bm_"));
    let env = unique("bm-");
    let image = format!("{DEMO_IMAGE}:bad-migration");
    host.pull(&image).await.unwrap_or_else(|e| panic!("{e}"));
    let spec = migrate_spec(&env, &unique("op"), &image, &db.url());
    let _guard = Containers(vec![spec.name.clone()]);

    let Progress::Failed {
        exit_code,
        log_tail,
    } = migrate_to_end(&host, &spec, MIGRATION_LIMIT).await
    else {
        panic!("the bad migration did not fail")
    };
    assert_ne!(exit_code, 0);
    assert!(log_tail.contains("deliberate failure"), "{log_tail}");
    assert!(log_tail.lines().count() <= migrate::LOG_TAIL_LINES);
    let first_start = started_at(&spec.name);

    let again = migrate::migrate(
        &host,
        &spec,
        0,
        now_ms(),
        MIGRATION_LIMIT,
        &Redactor::none(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(again, Progress::Failed { exit_code: c, .. } if c == exit_code),
        "{again:?}"
    );
    assert_eq!(
        started_at(&spec.name),
        first_start,
        "the failed migration ran again"
    );
    // Migration 1 applied and was recorded once; migration 2 rolled back.
    assert_eq!(db.psql("select count(*) from demo_migrate_runs"), "1");
    assert_eq!(
        db.psql("select max(version) from demo_schema_migrations"),
        "1"
    );
    migrate::cleanup(&host, &spec.name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_migration_past_its_timeout_is_stopped_and_not_restarted() {
    let host = local_host().await;
    let env = unique("bm-");
    let image = format!("{DEMO_IMAGE}:v1");
    host.pull(&image).await.unwrap_or_else(|e| panic!("{e}"));
    // Nothing listens there: `migrate` keeps waiting for the database (up to 30 s).
    let url = format!("postgres://demo:demo@{DB_CONTAINER}:5999/none");
    let spec = migrate_spec(&env, &unique("op"), &image, &url);
    let _guard = Containers(vec![spec.name.clone()]);
    let timeout = Duration::from_secs(600);
    let t0 = now_ms();

    let first = migrate::migrate(&host, &spec, t0, t0, timeout, &Redactor::none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, Progress::Running { since: t0 });
    let running = host
        .inspect(&spec.name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(running.map(|c| c.state), Some(ContainerState::Running));

    // Time is passed in: the same call, past the deadline.
    let past = t0 + timeout.as_millis() as u64;
    let stopped = Instant::now();
    let timed_out = migrate::migrate(&host, &spec, t0, past, timeout, &Redactor::none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let Progress::TimedOut { log_tail } = timed_out else {
        panic!("not timed out: {timed_out:?}")
    };
    assert!(log_tail.contains("timeout"), "{log_tail}");
    assert!(stopped.elapsed() <= migrate::STOP_GRACE + Duration::from_secs(20));
    let state = host
        .inspect(&spec.name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|c| c.state);
    assert!(
        matches!(state, Some(ContainerState::Exited(c)) if c != 0),
        "{state:?}"
    );

    // Observed again, the stopped migration is a failure; it is not started again.
    let first_start = started_at(&spec.name);
    let again = migrate::migrate(&host, &spec, t0, past + 1000, timeout, &Redactor::none())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(again, Progress::Failed { .. }), "{again:?}");
    assert_eq!(started_at(&spec.name), first_start);
    migrate::cleanup(&host, &spec.name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---- backups ----------------------------------------------------------------------------

fn rows(db: &Db) -> String {
    db.psql("select string_agg(body, ',' order by id) from t")
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_postgres_backup_from_the_lab_db_restores_to_the_moment_it_was_taken() {
    let host = local_host().await;
    let db = Db::create(unique("bm_"));
    db.psql("create table t (id serial primary key, body text not null); insert into t (body) values ('one'), ('two')");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let directory = format!("{}/backups/app", dir.path().display());
    let backup = backup_section(&format!(
        "    postgres: {{container: {DB_CONTAINER}, database: {}, user: demo}}\n    directory: {directory}\n",
        db.name
    ));
    let target = backup.target.as_ref().expect("a target");
    let source =
        ResolvedSource::resolve(target, |_| None, "unused", 0).unwrap_or_else(|e| panic!("{e}"));
    let env = unique("bm-");
    let id = "01JBACKUP0000000000000000A";

    let taken = backup::take(&host, &env, &backup, id, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(taken.path, format!("{directory}/{env}-{id}.dump"));
    assert_taken(&taken);
    assert_eq!(mode(&directory), 0o700);
    // A second take (a crash before the catalogue write) measures the same file again.
    let stamp = file_stamp(&taken.path);
    let again = backup::take(&host, &env, &backup, id, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, taken);
    assert_eq!(file_stamp(&taken.path), stamp, "the backup was taken twice");

    db.psql("insert into t (body) values ('three'), ('four')");
    assert_eq!(rows(&db), "one,two,three,four");

    // A tampered catalogue entry: refused, and nothing is restored.
    let wrong = "0".repeat(64);
    let err = backup::restore(
        &host,
        &env,
        &backup,
        &Catalogued {
            id,
            path: &taken.path,
            sha256: &wrong,
        },
        &source,
    )
    .await
    .expect_err("a digest mismatch is refused");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&taken.path), "{err}");
    assert_eq!(rows(&db), "one,two,three,four");

    let record = catalogued(id, &taken);
    backup::restore(&host, &env, &backup, &record, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows(&db), "one,two");
    // Restoring is repeatable (a resumed RestoreDatabase step).
    db.psql("insert into t (body) values ('five')");
    backup::restore(&host, &env, &backup, &record, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows(&db), "one,two");

    let removed = backup::prune(&host, &[record], 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(removed.is_empty());
    let removed = backup::prune(&host, &[record], 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(removed, vec![id.to_owned()]);
    assert!(!std::path::Path::new(&taken.path).exists());
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_failed_pg_dump_leaves_no_file_and_says_why() {
    let host = local_host().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let directory = dir.path().display().to_string();
    let backup = backup_section(&format!(
        "    postgres: {{container: {DB_CONTAINER}, database: bm_does_not_exist, user: demo}}\n    directory: {directory}\n"
    ));
    let source = ResolvedSource::PostgresContainer {
        container: DB_CONTAINER.into(),
    };
    let env = unique("bm-");
    let err = backup::take(&host, &env, &backup, "01JFAIL", &source)
        .await
        .expect_err("pg_dump of a missing database fails");
    let text = err.to_string();
    assert!(text.contains("bm_does_not_exist"), "{text}");
    assert!(text.contains(DB_CONTAINER), "{text}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_postgres_backup_over_the_network_reads_the_password_only_on_the_host() {
    let host = local_host().await;
    let db = Db::create(unique("bm_"));
    db.psql("create table t (id serial primary key, body text not null); insert into t (body) values ('one')");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let password_file = dir.path().join("db-password");
    std::fs::write(&password_file, "demo\n").unwrap_or_else(|e| panic!("{e}"));
    let directory = format!("{}/backups", dir.path().display());
    let yaml = |pw: &str| {
        format!(
            "    postgres: {{host: \"{DB_HOST_ADDR}\", database: {}, user: demo, passwordFile: {pw}}}\n    directory: {directory}\n",
            db.name
        )
    };
    let backup = backup_section(&yaml(&password_file.display().to_string()));
    let source = ResolvedSource::resolve(
        backup.target.as_ref().expect("a target"),
        |_| None,
        "unused",
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        source,
        ResolvedSource::PostgresHost {
            host: "127.0.0.1".into(),
            port: 55432
        }
    );
    let env = unique("bm-");
    let taken = backup::take(&host, &env, &backup, "01JNET", &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_taken(&taken);
    db.psql("insert into t (body) values ('two')");
    let record = catalogued("01JNET", &taken);
    backup::restore(&host, &env, &backup, &record, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows(&db), "one");

    // A wrong password: the error is pg_dump's, and the password is not in it.
    let wrong_file = dir.path().join("wrong-password");
    std::fs::write(&wrong_file, "hunter2-not-the-password").unwrap_or_else(|e| panic!("{e}"));
    let wrong = backup_section(&yaml(&wrong_file.display().to_string()));
    let err = backup::take(&host, &env, &wrong, "01JWRONG", &source)
        .await
        .expect_err("a wrong password fails");
    let text = err.to_string();
    assert!(text.contains("pg_dump"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!std::path::Path::new(&format!("{directory}/{env}-01JWRONG.dump")).exists());
}

/// Runs `script` in a throwaway container with `volume` at /data.
fn in_volume(volume: &str, script: &str) -> String {
    run_ok(docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "sh",
        "-v",
        &format!("{volume}:/data"),
        PG_IMAGE,
        "-c",
        script,
    ]))
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_volume_backup_restores_the_files_it_holds() {
    let host = local_host().await;
    let volume = Volume(unique("bm-vol-"));
    run_ok(docker().args(["volume", "create", &volume.0]));
    in_volume(
        &volume.0,
        "echo one > /data/a && mkdir /data/sub && echo two > /data/sub/b",
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let directory = dir.path().display().to_string();
    let backup = backup_section(&format!(
        "    volume: {{name: {}}}\n    directory: {directory}\n",
        volume.0
    ));
    let env = unique("bm-");
    let id = "01JVOLUME";
    // The helper runs the environment's own image, a FROM scratch one: it is never started.
    let image = format!("{DEMO_IMAGE}:v1");
    host.pull(&image).await.unwrap_or_else(|e| panic!("{e}"));
    let source = ResolvedSource::resolve(
        backup.target.as_ref().expect("a target"),
        |_| None,
        &image,
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _guard = Containers(vec![
        backup::helper_name(&env, id),
        backup::restore_helper_name(&env, id),
    ]);

    let taken = backup::take(&host, &env, &backup, id, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(taken.path.ends_with(".tar"));
    assert_taken(&taken);
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&taken.path));
    assert!(listing.contains("berth-volume/sub/b"), "{listing}");
    assert!(
        host.list(&env)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "the helper container was left behind"
    );

    in_volume(&volume.0, "echo changed > /data/a && rm -r /data/sub");
    let record = catalogued(id, &taken);
    backup::restore(&host, &env, &backup, &record, &source)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        in_volume(&volume.0, "cat /data/a /data/sub/b"),
        "one\ntwo\n"
    );
    assert!(host
        .list(&env)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_command_backup_runs_the_users_commands_with_the_file_in_the_environment() {
    let host = local_host().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "before\n").unwrap_or_else(|e| panic!("{e}"));
    let directory = format!("{}/backups", dir.path().display());
    let data = data.display().to_string();
    let backup = backup_section(&format!(
        "    command:\n      backup: cp {data} \"$BERTH_BACKUP_FILE\"\n      restore: cp \"$BERTH_BACKUP_FILE\" {data}\n    directory: {directory}\n"
    ));
    let env = unique("bm-");
    // A partial left by a crash mid-backup: deleted and redone.
    std::fs::create_dir_all(&directory).unwrap_or_else(|e| panic!("{e}"));
    let stale = format!("{directory}/{env}-01JCMD.bak.partial");
    std::fs::write(&stale, "half").unwrap_or_else(|e| panic!("{e}"));
    let taken = backup::take(&host, &env, &backup, "01JCMD", &ResolvedSource::Command)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(taken.path.ends_with(".bak"));
    assert_taken(&taken);
    assert_eq!(
        std::fs::read_to_string(&taken.path).ok().as_deref(),
        Some("before\n")
    );
    std::fs::write(&data, "after\n").unwrap_or_else(|e| panic!("{e}"));
    let record = catalogued("01JCMD", &taken);
    backup::restore(&host, &env, &backup, &record, &ResolvedSource::Command)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(&data).ok().as_deref(),
        Some("before\n")
    );
}
