//! docs/traffic.md, followed as a new user would, on a fresh nginx of the test's own:
//! the configuration blocks are read out of the document (so it cannot rot), with only
//! the paths, the port, the environment's name and the app's port changed.
//!
//! Needs the lab (Docker, the registry, PostgreSQL): `hack/lab up`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::cmd::{must, quietly, sh};
use support::lab::Db;
use support::net::{free_port, http_get};

fn doc() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/traffic.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fenced block right after `<!-- traffic-test: {tag} -->`.
fn block(doc: &str, tag: &str) -> String {
    let marker = format!("<!-- traffic-test: {tag} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/traffic.md has no {marker}"))
        .1;
    let fence = after.find("```").expect("a fenced block after the marker");
    let body = &after[fence..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("the block's end")].to_owned()
}

/// The document's example, moved into `dir`, onto `port`, for environment `env`.
fn adapt(text: &str, dir: &Path, port: u16, env: &str) -> String {
    let d = dir.display().to_string();
    text.replace("/etc/nginx/nginx.conf", &format!("{d}/nginx.conf"))
        .replace("/etc/nginx/", &format!("{d}/"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:80 ", &format!("127.0.0.1:{port} "))
        .replace("containerPort: 8000", "containerPort: 8080")
        .replace("/run/haproxy/", &format!("{d}/"))
        .replace("/var/lib/haproxy/", &format!("{d}/"))
        .replace("bind :80", &format!("bind 127.0.0.1:{port}"))
        .replace("shop", env)
}

/// The test's nginx: a configuration shaped like Debian's (it includes `conf.d/*.conf`
/// inside `http {}`), in a directory of its own.
fn nginx_conf(d: &Path) -> String {
    let d = d.display();
    format!(
        "user root root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    include {d}/conf.d/*.conf;
}}
"
    )
}

struct World {
    dir: tempfile::TempDir,
    env: String,
    berthd: Option<Child>,
    _db: Db,
}

impl World {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("berthd.log")).unwrap_or_default()
    }

    fn serving(&self) -> bool {
        let p = self.path(&format!("state/status/{}.json", self.env));
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| s["state"]["current"] == 1 && s["state"]["active_op"].is_null())
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn() -> bool) {
        let end = Instant::now() + timeout;
        while !pred() {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}\nberthd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut c) = self.berthd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&format!(
            "docker ps -aq --filter label=berth.env={} | xargs -r docker rm -f",
            self.env
        ));
        quietly(
            Command::new("nginx")
                .arg("-c")
                .arg(self.path("nginx.conf"))
                .args(["-s", "stop"]),
        );
    }
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn the_nginx_setup_of_docs_traffic_md_serves_the_app_after_the_first_rollout() {
    let doc = doc();
    let env = format!("docs-shop-{}", std::process::id() % 10000);
    let dir = tempfile::Builder::new()
        .prefix("berth-docs")
        .tempdir()
        .unwrap();
    let d = dir.path().to_owned();
    let port = free_port();
    support::lab::drop_database(&env);
    let db = Db::create(env.clone());
    let mut w = World {
        dir,
        env: env.clone(),
        berthd: None,
        _db: db,
    };
    for sub in ["conf.d", "tmp", "manifests"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("app.env"), format!("DATABASE_URL={}\n", w._db.url())).unwrap();

    // "nginx must already run": ours, with nothing of the site yet.
    std::fs::write(d.join("nginx.conf"), nginx_conf(&d)).unwrap();
    must(&format!("nginx -c {}/nginx.conf", d.display()));

    // The steps, in the document's order.
    let steps: Vec<String> = adapt(&block(&doc, "steps"), &d, port, &env)
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert!(steps[0].starts_with("mkdir -p "), "{steps:?}");
    must(&steps[0]);

    assert!(steps[1].starts_with("berthd --manifests"), "{steps:?}");
    let manifest = format!(
        "apiVersion: berth.dev/v1
kind: Host
metadata: {{name: local}}
spec: {{address: local, portRange: 33500-33599}}
---
apiVersion: berth.dev/v1
kind: Environment
metadata: {{name: {env}}}
spec:
  host: local
  image: 127.0.0.1:5000/berth/demo-app:v1
  envFiles: [{d}/app.env]
  networks: [berth-lab]
  health:
    readiness: {{http: {{path: /ready, port: http}}, interval: 500ms, timeout: 1s}}
  strategy: {{verifyFor: 1s, drainFor: 1s}}
  migration: {{policy: BackwardCompatible, command: [/demo-app, migrate]}}
{traffic}",
        d = d.display(),
        traffic = adapt(&block(&doc, "manifest"), &d, port, &env),
    );
    std::fs::write(d.join("manifests/env.yaml"), manifest).unwrap();
    let log = std::fs::File::create(d.join("berthd.log")).unwrap();
    w.berthd = Some(
        Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args(["--manifests", d.join("manifests").to_str().unwrap()])
            .args(["--state", d.join("state").to_str().unwrap()])
            .args(["--watch", "--resync", "2s"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berthd starts"),
    );

    // Berth writes the upstream file at once, named after the environment.
    let upstream = d.join(format!("berth/{env}.conf"));
    w.wait("the upstream file", Duration::from_secs(30), || {
        upstream.exists()
    });
    let first = std::fs::read_to_string(&upstream).unwrap();
    assert!(first.contains(&format!("upstream {env} {{")), "{first}");

    // The site goes in, and nginx takes it: the upstream exists, so `nginx -t` passes,
    // even before any replica is ready.
    assert!(steps[2].starts_with("cp "), "{steps:?}");
    let site = adapt(&block(&doc, "nginx-site"), &d, port, &env);
    std::fs::write(d.join(format!("conf.d/{env}.conf")), site).unwrap();
    assert!(steps[3].starts_with("nginx -t"), "{steps:?}");
    must(&steps[3]);

    // The first rollout switches traffic, and the app answers through nginx.
    w.wait("revision 1 serving", Duration::from_secs(90), || {
        w.serving()
    });
    // And says which nginx it tested and reloaded.
    let status = std::fs::read_to_string(w.path(&format!("state/status/{env}.json"))).unwrap();
    let reloaded = format!(
        "reloaded with `nginx -s reload -c {}/nginx.conf`",
        d.display()
    );
    assert!(status.contains(&reloaded), "{status}");
    w.wait(
        "the app through nginx",
        Duration::from_secs(15),
        || matches!(http_get(port, "/version"), Some((200, body)) if body.contains("v1")),
    );
}

#[test]
#[ignore = "needs haproxy: hack/lab up"]
fn the_haproxy_configuration_of_docs_traffic_md_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = adapt(&block(&doc(), "haproxy"), dir.path(), free_port(), "web");
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, cfg).unwrap();
    must(&format!("haproxy -c -q -f {}", file.display()));
}
