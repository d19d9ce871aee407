//! The API over a real socket, with a controller that has no host to reach: what needs no
//! Docker (errors, limits, verbs refused, applied objects, the source's health).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::types::{SourceError, SourceHealth};
use super::{server, App, Limits};
use crate::reconcile::Controller;
use crate::source::Snapshot;
use crate::store::Store;

const HOST: &str =
    "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n";

fn env_doc(name: &str, tag: &str) -> String {
    format!("apiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: {name}}}\nspec: {{host: h, image: 'app:{tag}'}}\n")
}

struct Api {
    socket: std::path::PathBuf,
    ctl: Arc<Controller>,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

/// A controller whose directory holds `h` and the environment `dir-env` (never reconciled:
/// its loop is not run), and its API on a socket in a temp dir.
async fn api(limits: Limits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let text = format!("{HOST}---\n{}", env_doc("dir-env", "v1"));
    let manifests = berth_api::load_texts(vec![("dir/all.yaml".into(), text)])
        .into_manifests()
        .map_err(|l| l.diagnostics)
        .unwrap();
    let snapshot = Snapshot {
        manifests: Arc::new(manifests),
        commit: Some("abc123+dirty".into()),
    };
    let ctl = Controller::new(store, snapshot, Duration::from_secs(30));
    ctl.set_source("dir", Ok(Some("abc123+dirty")));
    let socket = dir.path().join("state/berthd.sock");
    let listener = server::bind_unix(&socket, true).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(server::serve_unix(
        listener,
        App::new(ctl.clone(), limits),
        stop_rx,
    ));
    Api {
        socket,
        ctl,
        _dir: dir,
        _stop: stop,
    }
}

impl Api {
    async fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let mut s = UnixStream::connect(&self.socket).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_and_the_api_keeps_answering() {
    let a = api(Limits {
        max_body: 1024,
        ..Limits::default()
    })
    .await;
    let (s, e) = a.request("GET", "/v1/nowhere", b"").await;
    assert_eq!((s, e["error"].is_string()), (404, true));
    let (s, _) = a.request("PUT", "/v1/environments", b"").await;
    assert_eq!(s, 405);
    let (s, e) = a.request("POST", "/v1/apply", &[b'x'; 2048]).await;
    assert_eq!(s, 413, "{e}");
    let (s, e) = a
        .request("POST", "/v1/apply", b"{\"manifests\": \"\", \"force\": 1}")
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = a
        .request("POST", "/v1/environments/nope/approve", b"")
        .await;
    assert_eq!((s, e["field"].as_str()), (404, Some("name")));
    let (s, e) = a
        .request("POST", "/v1/environments/dir-env/approve", b"")
        .await;
    assert_eq!(s, 409, "nothing waits for approval: {e}");
    let (s, e) = a
        .request("POST", "/v1/environments/dir-env/undo", b"{}")
        .await;
    assert_eq!(s, 409, "nothing deployed: {e}");
    let (s, _) = a.request("GET", "/healthz", b"").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_environments_are_owned_by_the_journal_and_the_directory_keeps_its_own() {
    let a = api(Limits::default()).await;
    let apply = |doc: String, force: bool, dry: bool| {
        serde_json::to_vec(&serde_json::json!({
            "manifests": doc, "source": "web.yaml", "force": force, "dryRun": dry
        }))
        .unwrap()
    };
    // A dry run stores nothing.
    let (s, r) = a
        .request(
            "POST",
            "/v1/apply",
            &apply(env_doc("web", "v1"), false, true),
        )
        .await;
    assert_eq!(
        (s, r["environments"][0]["action"].as_str()),
        (200, Some("created")),
        "{r}"
    );
    assert!(a.ctl.store().applied().unwrap().is_empty());
    assert!(!a
        .ctl
        .desired_environment_names()
        .contains(&"web".to_owned()));

    let (s, r) = a
        .request(
            "POST",
            "/v1/apply",
            &apply(env_doc("web", "v1"), false, false),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(a
        .ctl
        .desired_environment_names()
        .contains(&"web".to_owned()));
    let (_, env) = a.request("GET", "/v1/environments/web", b"").await;
    assert_eq!(env["owner"]["by"], "apply");

    // A diff names exactly the changed field.
    let (_, d) = a
        .request(
            "POST",
            "/v1/diff",
            &apply(env_doc("web", "v2"), false, true),
        )
        .await;
    let changes = d["environments"][0]["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{d}");
    assert_eq!(changes[0]["path"], "spec.image");

    // The directory's environment: refused, naming its file and commit, unless forced.
    let (s, e) = a
        .request(
            "POST",
            "/v1/apply",
            &apply(env_doc("dir-env", "v2"), false, false),
        )
        .await;
    assert_eq!(s, 409);
    let why = e["error"].as_str().unwrap();
    assert!(
        why.contains("dir/all.yaml") && why.contains("abc123"),
        "{why}"
    );
    let (s, _) = a
        .request(
            "POST",
            "/v1/apply",
            &apply(env_doc("dir-env", "v2"), true, false),
        )
        .await;
    assert_eq!(s, 200);
    let (_, env) = a.request("GET", "/v1/environments/dir-env", b"").await;
    assert_eq!(env["owner"]["by"], "apply");

    // Hosts come from the directory; an unknown host is an error with its field.
    let (s, e) = a
        .request("POST", "/v1/apply", &apply(HOST.to_owned(), false, false))
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("kind")), "{e}");
    let bad = env_doc("web", "v1").replace("host: h", "host: nowhere");
    let (s, e) = a
        .request("POST", "/v1/apply", &apply(bad, false, false))
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("spec.host")), "{e}");

    // Deleting gives the directory its environment back.
    let (s, r) = a.request("DELETE", "/v1/environments/dir-env", b"").await;
    assert_eq!(s, 200, "{r}");
    let (_, env) = a.request("GET", "/v1/environments/dir-env", b"").await;
    assert_eq!(env["owner"]["by"], "directory");
    assert_eq!(env["owner"]["commit"], "abc123");
    assert_eq!(env["owner"]["dirty"], true);
}

#[tokio::test]
async fn an_invalid_directory_is_reported_since_its_first_error_until_a_valid_load() {
    let a = api(Limits::default()).await;
    let err = |since| SourceError {
        errors: vec!["dir/bad.yaml:3:1: error: spec.replica: unknown field".into()],
        since,
        commit: Some("def456".into()),
    };
    a.ctl.set_source("dir", Err(err(100)));
    a.ctl.set_source("dir", Err(err(200)));
    let h: SourceHealth = a.ctl.source_health();
    assert_eq!(h.error.as_ref().map(|e| e.since), Some(100));
    assert_eq!(
        h.commit.as_deref(),
        Some("abc123"),
        "the commit still acted on"
    );
    let (_, env) = a.request("GET", "/v1/environments/dir-env", b"").await;
    let note = env["owner"]["note"].as_str().unwrap();
    assert!(
        note.contains("dir/bad.yaml:3:1") && note.contains("abc123"),
        "{note}"
    );
    a.ctl.set_source("dir", Ok(Some("def456")));
    assert!(a.ctl.source_health().error.is_none());
    assert!(!a.ctl.source_health().dirty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_write_the_journal_or_say_why_they_cannot() {
    let a = api(Limits::default()).await;
    let state = || a.ctl.store().env_state("dir-env").unwrap();
    let (s, r) = a
        .request("POST", "/v1/environments/dir-env/pause", b"")
        .await;
    assert_eq!(s, 200, "{r}");
    assert!(state().paused);
    let (s, _) = a
        .request("POST", "/v1/environments/dir-env/resume", b"")
        .await;
    assert_eq!(s, 200);
    assert!(!state().paused);
    for verb in ["retry", "abort"] {
        let (s, e) = a
            .request("POST", &format!("/v1/environments/dir-env/{verb}"), b"")
            .await;
        assert_eq!(s, 409, "{verb}: {e}");
    }
    a.ctl
        .store()
        .update_env_state("dir-env", |s| {
            s.failed = Some(crate::store::FailedTemplate {
                template_hash: "abc".into(),
                reason: "probe".into(),
                at: 1,
            })
        })
        .unwrap();
    let (s, _) = a
        .request("POST", "/v1/environments/dir-env/retry", b"")
        .await;
    assert_eq!(s, 200);
    assert!(state().failed.is_none());
    // Approved ahead: the desired template, before its rollout begins.
    let (s, r) = a
        .request("POST", "/v1/environments/dir-env/approve", b"")
        .await;
    assert_eq!(s, 409, "no approval required by this manifest: {r}");
    let (s, e) = a
        .request(
            "POST",
            "/v1/environments/dir-env/undo",
            b"{\"toRevision\": 9}",
        )
        .await;
    assert_eq!(s, 409, "nothing is deployed yet: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_of_a_directory_are_applied_together_or_not_at_all() {
    let a = api(Limits::default()).await;
    let files = |second: &str| {
        serde_json::to_vec(&serde_json::json!({
            "source": "envs/",
            "files": [
                {"source": "envs/a.yaml", "manifests": env_doc("a", "v1")},
                {"source": "envs/b.yaml", "manifests": second},
            ]
        }))
        .unwrap()
    };
    let bad = env_doc("b", "v1").replace("image:", "imgae:");
    let (s, e) = a.request("POST", "/v1/apply", &files(&bad)).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("envs/b.yaml:4"),
        "{e}"
    );
    assert!(
        a.ctl.store().applied().unwrap().is_empty(),
        "nothing applied"
    );
    let (s, r) = a
        .request("POST", "/v1/apply", &files(&env_doc("b", "v1")))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(a.ctl.store().applied().unwrap().len(), 2);
}
