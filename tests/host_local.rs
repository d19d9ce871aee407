//! `LocalHost` against the real Docker engine, registry and database of the lab.
//!
//! Every test needs the running lab, so all are ignored by default:
//! `hack/lab up && cargo test -p berth-controller --test host_local -- --include-ignored`.
//! Each test names what it creates uniquely and removes it when dropped, pass or fail.
//! The lab directory is `$BERTH_LAB_DIR`, or `<repo>/.lab`, or `/var/lib/berth-lab`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_api::values::Address;
use berth_api::HostSpec;
use berth_controller::host::local::LocalHost;
use berth_controller::host::{Created, Host, HostError, Output};
use berth_controller::model::{
    replica_name, ContainerInfo, ContainerSpec, ContainerState, Mount, Role, Template,
};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/mod.rs"]
mod support;

use support::cmd::{docker, run_ok, sha256sum};
use support::lab::{lab_dir, Containers, Db, Network, Volume, DB_CONTAINER, NETWORK};
use support::names::{unique, unique_with};
use support::net::free_port;

const IMAGE: &str = "127.0.0.1:5000/berth/demo-app:v1";
const NEEDS_LAB: &str = "needs the lab: hack/lab up";

/// What a test made in Docker, removed when dropped, including when the test panics:
/// the fields drop in this order, containers before the volumes and networks they use.
#[derive(Default)]
struct Cleanup {
    containers: Containers,
    volumes: Vec<Volume>,
    networks: Vec<Network>,
}

fn host_spec(registry_auth: Option<&Path>) -> HostSpec {
    HostSpec {
        address: Address::Local,
        identity_file: None,
        known_hosts_file: None,
        docker_socket: "/var/run/docker.sock".into(),
        labels: BTreeMap::new(),
        port_range: "20000-29999".parse().expect("a port range"),
        registry_auth: registry_auth.map(|p| p.display().to_string()),
        max_parallel: 2,
    }
}

async fn local() -> LocalHost {
    LocalHost::connect("local", &host_spec(None))
        .await
        .unwrap_or_else(|e| panic!("{e} ({NEEDS_LAB})"))
}

/// Replica 0 of revision 1 of the demo app in environment `env`, on the lab network,
/// publishing 8080 on `host_port` (if any), registered for cleanup.
fn demo_replica(env: &str, host_port: Option<u16>, cleanup: &mut Cleanup) -> ContainerSpec {
    let template = Template {
        image: IMAGE.into(),
        command: None,
        args: None,
        env: BTreeMap::from([("DEMO_CRASH_AFTER".into(), "600".into())]),
        env_files: vec![],
        ports: vec![(8080, "127.0.0.1".into())],
        volumes: vec![],
        networks: vec![NETWORK.into()],
    };
    let name = replica_name(env, 1, 0);
    cleanup.containers.push(name.clone());
    ContainerSpec {
        name,
        env_name: env.into(),
        revision: 1,
        role: Role::App,
        replica: Some(0),
        op: None,
        template_hash: template.hash(),
        template,
        host_ports: host_port.into_iter().collect(),
        override_args: None,
        aliases: vec![env.into()],
    }
}

/// Polls `inspect` until `done` holds (10 s at most).
async fn wait_for(
    host: &LocalHost,
    name: &str,
    what: &str,
    done: impl Fn(&Option<ContainerInfo>) -> bool,
) -> Option<ContainerInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = host.inspect(name).await.expect("inspect");
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "{name}: never {what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn docker_env(container: &str) -> Vec<String> {
    let json = run_ok(docker().args(["inspect", "-f", "{{json .Config.Env}}", container]));
    serde_json::from_str(&json).expect("a JSON list")
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn pulling_by_tag_and_by_digest_with_registry_credentials_gives_the_engine_s_image_id() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // The lab registry asks for no credentials; this checks that sending them works.
    let auth = dir.path().join("config.json");
    std::fs::write(
        &auth,
        r#"{"auths": {"127.0.0.1:5000": {"auth": "YmVydGg6bm90LWEtc2VjcmV0"}}}"#,
    )
    .expect("writing config.json");
    let host = LocalHost::connect("local", &host_spec(Some(&auth)))
        .await
        .unwrap_or_else(|e| panic!("{e} ({NEEDS_LAB})"));

    let pulled = host.pull(IMAGE).await.expect("pull by tag");
    let engine_id = run_ok(docker().args(["image", "inspect", "-f", "{{.Id}}", IMAGE]));
    assert_eq!(pulled.id, engine_id.trim());

    let digest_ref =
        run_ok(docker().args(["image", "inspect", "-f", "{{index .RepoDigests 0}}", IMAGE]));
    assert!(digest_ref.contains("@sha256:"), "{digest_ref}");
    // The pull says which digest it brought: the registry's, under the pulled repository.
    assert_eq!(pulled.repo_digest.as_deref(), Some(digest_ref.trim()));
    assert_eq!(
        host.pull(digest_ref.trim()).await.expect("pull by digest"),
        pulled
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn pulling_a_tag_the_registry_lacks_fails_for_good() {
    let host = local().await;
    let err = host
        .pull("127.0.0.1:5000/berth/demo-app:no-such-tag")
        .await
        .expect_err("a missing tag");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("no-such-tag"), "{err}");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn creating_from_an_image_not_on_the_host_fails_for_good_and_says_to_pull() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let mut spec = demo_replica(&unique("hosttest"), None, &mut cleanup);
    spec.template.image = "127.0.0.1:5000/berth/never-pulled:v1".into();
    let err = host.create(&spec).await.expect_err("no such image");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("pull it first"), "{err}");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn creating_twice_returns_the_existing_container_with_its_template_hash() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let spec = demo_replica(&unique("hosttest"), None, &mut cleanup);
    assert!(matches!(
        host.create(&spec).await.expect("create"),
        Created::Created
    ));
    match host.create(&spec).await.expect("create again") {
        Created::Existed(info) => {
            assert_eq!(info.template_hash, spec.template_hash);
            assert_eq!(info.state, ContainerState::Created);
        }
        Created::Created => panic!("created twice"),
    }
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn start_stop_and_remove_are_idempotent() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let spec = demo_replica(&unique("hosttest"), None, &mut cleanup);
    let name = spec.name.as_str();
    host.create(&spec).await.expect("create");
    host.start(name).await.expect("start");
    host.start(name).await.expect("start a running container");
    let running = host.inspect(name).await.expect("inspect");
    assert_eq!(running.map(|i| i.state), Some(ContainerState::Running));
    let grace = Duration::from_secs(5);
    host.stop(name, grace).await.expect("stop");
    host.stop(name, grace)
        .await
        .expect("stop a stopped container");
    let stopped = host.inspect(name).await.expect("inspect");
    assert!(
        matches!(stopped.map(|i| i.state), Some(ContainerState::Exited(_))),
        "stopped"
    );
    host.remove(name).await.expect("remove");
    host.remove(name).await.expect("remove an absent container");
    host.stop(name, grace)
        .await
        .expect("stop an absent container");
    assert_eq!(host.inspect(name).await.expect("inspect"), None);
    assert!(
        host.start(name).await.is_err(),
        "starting an absent container"
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_started_replica_is_listed_by_its_labels_and_answers_health_on_its_published_port() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let env = unique("hosttest");
    let port = free_port();
    let spec = demo_replica(&env, Some(port), &mut cleanup);
    host.create(&spec).await.expect("create");
    host.start(&spec.name).await.expect("start");

    let listed = host.list(&env).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let info = &listed[0];
    assert_eq!(info.name, spec.name);
    assert_eq!(
        (info.revision, info.replica, info.port, info.role),
        (1, Some(0), Some(port), Role::App)
    );
    assert_eq!(info.state, ContainerState::Running);
    assert_eq!(info.template_hash, spec.template_hash);
    assert_eq!(info.image, IMAGE);
    let all = host.list_all().await.expect("list_all");
    assert!(all.iter().any(|c| c.name == spec.name));

    // The app needs a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let attempt = async {
            let mut conn = host.connect("127.0.0.1", port).await.ok()?;
            let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            conn.write_all(request).await.ok()?;
            let mut response = String::new();
            conn.read_to_string(&mut response).await.ok()?;
            Some(response).filter(|r| !r.is_empty())
        };
        match attempt.await {
            Some(r) => break r,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => panic!("port {port} never answered"),
        }
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn an_exited_container_shows_its_exit_code() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let env = unique("hosttest");
    let mut spec = demo_replica(&env, None, &mut cleanup);
    // The demo app exits 2 on arguments it does not know.
    spec.override_args = Some(strings(&["no-such-subcommand"]));
    host.create(&spec).await.expect("create");
    host.start(&spec.name).await.expect("start");
    let exited = |i: &Option<ContainerInfo>| {
        matches!(i.as_ref().map(|i| i.state), Some(ContainerState::Exited(_)))
    };
    let info = wait_for(&host, &spec.name, "exited", exited).await;
    assert_eq!(info.map(|i| i.state), Some(ContainerState::Exited(2)));
    let listed = host.list(&env).await.expect("list");
    assert_eq!(listed[0].state, ContainerState::Exited(2));
    assert!(host
        .logs(&spec.name, 50)
        .await
        .expect("logs")
        .contains("unexpected arguments"));
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn env_files_are_read_on_the_host_and_the_manifest_env_wins() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let dir = tempfile::tempdir().expect("a temp dir");
    let own = dir.path().join("own.env");
    std::fs::write(&own, "# ours\n\nFROM_FILE=file\nDEMO_CRASH_AFTER=1\n").expect("env file");
    let mut spec = demo_replica(&unique("hosttest"), None, &mut cleanup);
    let lab_env = lab_dir().join("env/demo.env");
    spec.template.env_files = vec![lab_env.display().to_string(), own.display().to_string()];
    host.create(&spec).await.expect("create");
    let env = docker_env(&spec.name);
    let lab_url = std::fs::read_to_string(&lab_env).expect("the lab's demo.env");
    let lab_url = lab_url
        .lines()
        .find(|l| l.starts_with("DATABASE_URL="))
        .expect("DATABASE_URL in demo.env");
    assert!(env.iter().any(|e| e == lab_url), "{env:?}");
    assert!(env.iter().any(|e| e == "FROM_FILE=file"), "{env:?}");
    assert!(env.iter().any(|e| e == "DEMO_CRASH_AFTER=600"), "{env:?}");

    let mut missing = demo_replica(&unique("hosttest"), None, &mut cleanup);
    missing.template.env_files = vec![dir.path().join("absent.env").display().to_string()];
    let err = host.create(&missing).await.expect_err("a missing env file");
    assert!(matches!(err, HostError::File { .. }), "{err}");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn exec_returns_the_exit_code_stdout_and_stderr() {
    let host = local().await;
    let cmd = strings(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let out = host.exec(DB_CONTAINER, &cmd).await.expect("exec");
    assert_eq!(
        out,
        Output {
            exit_code: 3,
            stdout: "out\n".into(),
            stderr: "err\n".into()
        }
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_pg_dump_of_its_own_database_streamed_to_a_file_matches_sha256sum_and_streams_back_into_pg_restore(
) {
    let host = local().await;
    // The test's own database with a table of its own: nothing here depends on what the
    // demo, another test or an earlier run left in the lab.
    let db = Db::create(unique_with("hostdump", "_"));
    db.psql("create table dump_probe_rows (id int primary key); insert into dump_probe_rows values (1), (2)");
    let dir = tempfile::tempdir().expect("a temp dir");
    // A directory that does not exist yet: backups go to fresh ones.
    let dump = dir.path().join("backups/demo.dump");
    let dump_path = dump.display().to_string();
    let cmd = strings(&["pg_dump", "-U", "demo", "-d", &db.name, "-Fc"]);
    let out = host
        .exec_to_file(DB_CONTAINER, &cmd, &dump_path)
        .await
        .expect("exec_to_file");
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, "", "stdout went to the file");
    let meta = std::fs::metadata(&dump).expect("the dump");
    assert!(meta.len() > 0);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let (size, digest) = host
        .file_digest(&dump_path)
        .await
        .expect("digest")
        .expect("the dump exists");
    assert_eq!((size, digest), (meta.len(), sha256sum(&dump)));

    let listing = host
        .exec_from_file(
            DB_CONTAINER,
            &strings(&["pg_restore", "--list"]),
            &dump_path,
        )
        .await
        .expect("exec_from_file");
    assert!(listing.success(), "{listing:?}");
    assert!(
        listing.stdout.contains("dump_probe_rows"),
        "{}",
        listing.stdout
    );

    let sql = dir.path().join("q.sql");
    std::fs::write(&sql, "SELECT 40 + 2;\n").expect("writing SQL");
    let psql = strings(&[
        "psql",
        "-U",
        "demo",
        "-d",
        "demo",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
    ]);
    let answer = host
        .exec_from_file(DB_CONTAINER, &psql, &sql.display().to_string())
        .await
        .expect("psql from a file");
    assert_eq!(
        (answer.exit_code, answer.stdout.trim()),
        (0, "42"),
        "{answer:?}"
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_named_volume_round_trips_through_archives_of_containers_never_started() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let volume = unique("hosttest-vol");
    cleanup.volumes.push(Volume(volume.clone()));
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("hello.txt"), "hello volume\n").expect("a file");
    let tar_in = dir.path().join("in.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar_in)
            .arg("-C")
            .arg(dir.path())
            .arg("hello.txt"),
    );

    let with_volume = |cleanup: &mut Cleanup| {
        let mut spec = demo_replica(&unique("hosttest"), None, cleanup);
        spec.template.volumes = vec![Mount {
            source: volume.clone(),
            is_volume: true,
            target: "/data".into(),
            read_only: false,
        }];
        spec
    };
    let writer = with_volume(&mut cleanup);
    host.create(&writer).await.expect("create");
    host.archive_from_file(&writer.name, "/data", &tar_in.display().to_string())
        .await
        .expect("archive_from_file");
    host.remove(&writer.name).await.expect("remove");

    let reader = with_volume(&mut cleanup);
    host.create(&reader).await.expect("create");
    let tar_out = dir.path().join("out/volume.tar");
    host.archive_to_file(&reader.name, "/data", &tar_out.display().to_string())
        .await
        .expect("archive_to_file");
    let mode = std::fs::metadata(&tar_out)
        .expect("the tar")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&tar_out));
    assert!(listing.lines().any(|l| l == "data/hello.txt"), "{listing}");
    let content = run_ok(
        Command::new("tar")
            .arg("-xOf")
            .arg(&tar_out)
            .arg("data/hello.txt"),
    );
    assert_eq!(content, "hello volume\n");
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn a_container_joins_every_network_with_its_aliases() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let second = unique("hosttest-net");
    run_ok(docker().args(["network", "create", &second]));
    cleanup.networks.push(Network(second.clone()));
    let env = unique("hosttest");
    let mut spec = demo_replica(&env, None, &mut cleanup);
    spec.template.networks.push(second.clone());
    host.create(&spec).await.expect("create");
    let aliases = |net: &str| {
        let format = format!("{{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}");
        run_ok(docker().args(["inspect", "-f", &format, &spec.name]))
    };
    assert!(
        aliases(NETWORK).contains(&format!("\"{env}\"")),
        "{}",
        aliases(NETWORK)
    );
    assert!(
        aliases(&second).contains(&format!("\"{env}\"")),
        "{}",
        aliases(&second)
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn starting_on_a_port_someone_holds_says_so_in_the_error() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = holder.local_addr().expect("an address").port();
    let spec = demo_replica(&unique("hosttest"), Some(port), &mut cleanup);
    host.create(&spec).await.expect("create");
    let err = host.start(&spec.name).await.expect_err("the port is taken");
    assert!(
        matches!(err, HostError::Docker { .. }) && err.is_port_taken(),
        "{err}"
    );
    drop(holder);
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn write_file_replaces_atomically_with_the_mode_asked_for() {
    let host = local().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("conf.d/upstream.conf");
    let p = path.display().to_string();
    assert_eq!(host.read_file(&p).await.expect("read"), None);
    assert_eq!(host.file_digest(&p).await.expect("digest"), None);

    host.write_file(&p, b"server 127.0.0.1:20001;\n", 0o640)
        .await
        .expect("write");
    assert_eq!(
        std::fs::metadata(&path)
            .expect("the file")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    host.write_file(&p, b"server 127.0.0.1:20002;\n", 0o600)
        .await
        .expect("overwrite");
    assert_eq!(
        host.read_file(&p).await.expect("read"),
        Some(b"server 127.0.0.1:20002;\n".to_vec())
    );
    assert_eq!(
        std::fs::metadata(&path)
            .expect("the file")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("a parent"))
        .expect("listing")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(names, ["upstream.conf"], "no temporary file is left behind");
    let (size, digest) = host.file_digest(&p).await.expect("digest").expect("exists");
    assert_eq!((size, digest), (24, sha256sum(&path)));

    host.remove_file(&p).await.expect("remove");
    host.remove_file(&p).await.expect("remove an absent file");
    assert!(!path.exists());
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn run_reports_the_exit_code_and_output_of_a_shell_command() {
    let host = local().await;
    let out = host
        .run("echo hi; echo oops >&2; exit 4")
        .await
        .expect("run");
    assert_eq!(
        out,
        Output {
            exit_code: 4,
            stdout: "hi\n".into(),
            stderr: "oops\n".into()
        }
    );
}

#[tokio::test]
#[ignore = "needs the lab: hack/lab up"]
async fn the_event_stream_reports_die_when_a_container_of_an_environment_is_stopped() {
    let host = local().await;
    let mut cleanup = Cleanup::default();
    let env = unique("hosttest");
    let spec = demo_replica(&env, None, &mut cleanup);
    let mut events = host.events().await.expect("events");
    host.create(&spec).await.expect("create");
    host.start(&spec.name).await.expect("start");
    host.stop(&spec.name, Duration::from_secs(5))
        .await
        .expect("stop");
    let died = async {
        while let Some(event) = events.next().await {
            let event = event.expect("an event");
            if event.env_name == env && event.action == "die" {
                return event;
            }
        }
        panic!("the event stream ended");
    };
    let event = tokio::time::timeout(Duration::from_secs(20), died)
        .await
        .expect("a die event within 20 s");
    assert_eq!(event.container, spec.name);
}
