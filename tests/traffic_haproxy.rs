//! End to end: berthd switches a real HAProxy through its runtime API. A BlueGreen
//! v1 → v2 rollout under keep-alive load through HAProxy loses no request; a reload of
//! HAProxy comes back to the servers Berth set (the server-state file); a hand
//! `set server … state maint` is repaired.
//!
//! Needs the lab (Docker, the registry's demo images, the lab database) and Debian's
//! haproxy: `hack/lab up`. The test runs its own HAProxy from a temporary directory, on
//! free loopback ports, its own berthd, database and environment, and removes all of it
//! when done (pass or fail).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;

use support::cmd::{must, sh};
use support::lab::{create_database, drop_database};
use support::net::free_port;

const REGISTRY: &str = "127.0.0.1:5000/berth/demo-app";
/// Host ports of this test's replicas (no other test uses this range).
const PORT_BASE: u16 = 34100;

struct World {
    env: String,
    dir: tempfile::TempDir,
    port: u16,
    berthd: Option<Child>,
}

impl World {
    fn new() -> World {
        let env = format!("e2e-hx-{}", std::process::id() % 10000);
        let dir = tempfile::Builder::new()
            .prefix("berth-haproxy")
            .tempdir()
            .unwrap();
        let w = World {
            env,
            dir,
            port: free_port(),
            berthd: None,
        };
        for d in ["manifests", "backups", "state"] {
            std::fs::create_dir_all(w.path(d)).unwrap();
        }
        drop_database(&w.env);
        create_database(&w.env);
        std::fs::write(
            w.path("app.env"),
            format!(
                "DATABASE_URL=postgres://demo:demo@berth-lab-db:5432/{}\n",
                w.env
            ),
        )
        .unwrap();
        std::fs::write(w.path("haproxy.cfg"), w.haproxy_cfg()).unwrap();
        must(&format!(
            "haproxy -q -D -p {d}/haproxy.pid -f {d}/haproxy.cfg",
            d = w.dir.path().display()
        ));
        w
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn socket(&self) -> String {
        self.path("admin.sock").display().to_string()
    }

    /// The configuration of docs/traffic.md, with our paths, port and backend.
    fn haproxy_cfg(&self) -> String {
        self.adapt(&doc_block("haproxy"))
    }

    /// docs/traffic.md's example moved into our directory, onto our port, for our
    /// environment, and onto the demo app's port.
    fn adapt(&self, text: &str) -> String {
        let d = self.dir.path().display().to_string();
        text.replace("/run/haproxy/", &format!("{d}/"))
            .replace("/var/lib/haproxy/", &format!("{d}/"))
            .replace("bind :80", &format!("bind 127.0.0.1:{}", self.port))
            .replace("containerPort: 8000", "containerPort: 8080")
            .replace("shop", &self.env)
    }

    /// A graceful reload: a new HAProxy takes over (loading the state file), the old one
    /// finishes its connections.
    fn reload_haproxy(&self) {
        let d = self.dir.path().display();
        must(&format!(
            "haproxy -q -D -p {d}/haproxy.pid -f {d}/haproxy.cfg -sf $(cat {d}/haproxy.pid)"
        ));
    }

    fn runtime(&self, cmd: &str) -> String {
        must(&format!(
            "echo '{cmd}' | socat -t 2 - UNIX-CONNECT:{}",
            self.socket()
        ))
    }

    /// `(slot, port, admin state bits)` of the backend's servers, from the runtime API.
    fn servers(&self) -> Vec<(String, u16, u32)> {
        self.runtime(&format!("show servers state {}", self.env))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 18).then(|| {
                    (
                        f[3].to_owned(),
                        f[18].parse().unwrap(),
                        f[6].parse().unwrap(),
                    )
                })
            })
            .collect()
    }

    /// The ports of the ready slots (admin state 4: `disabled` in the file, made ready).
    fn ready_ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .servers()
            .into_iter()
            .filter(|(_, _, admin)| *admin & !0x04 == 0)
            .map(|(_, port, _)| port)
            .collect();
        p.sort_unstable();
        p
    }

    fn manifest(&self, image: &str) -> String {
        let dir = self.dir.path().display();
        let env = &self.env;
        [
            "apiVersion: berth.dev/v1".to_owned(),
            "kind: Host".to_owned(),
            "metadata: {name: local}".to_owned(),
            format!("spec: {{address: local, portRange: {PORT_BASE}-{}}}", PORT_BASE + 99),
            "---".to_owned(),
            "apiVersion: berth.dev/v1".to_owned(),
            "kind: Environment".to_owned(),
            format!("metadata: {{name: {env}}}"),
            "spec:".to_owned(),
            "  host: local".to_owned(),
            format!("  image: {REGISTRY}:{image}"),
            "  replicas: 2".to_owned(),
            format!("  envFiles: [{dir}/app.env]"),
            // `ports` and `traffic`, as docs/traffic.md writes them.
            self.adapt(doc_block("haproxy-manifest").trim_end()),
            "  networks: [berth-lab]".to_owned(),
            "  health:".to_owned(),
            "    readiness: {http: {path: /ready, port: http}, interval: 500ms, timeout: 1s, failureThreshold: 2}".to_owned(),
            "    liveness: {http: {path: /health, port: http}, interval: 1s, failureThreshold: 2}".to_owned(),
            "  strategy: {type: BlueGreen, progressDeadline: 20s, verifyFor: 2s, drainFor: 2s}".to_owned(),
            "  migration: {policy: BackwardCompatible, command: [/demo-app, migrate], timeout: 2m}".to_owned(),
            format!("  backup: {{postgres: {{container: berth-lab-db, database: {env}, user: demo}}, directory: {dir}/backups, keep: 3}}"),
        ]
        .join("\n")
            + "\n"
    }

    fn write_manifest(&self, image: &str) {
        let tmp = self.path("manifests/.env.yaml.tmp");
        std::fs::write(&tmp, self.manifest(image)).unwrap();
        std::fs::rename(tmp, self.path("manifests/env.yaml")).unwrap();
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.path("berthd.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .args(["--manifests", self.path("manifests").to_str().unwrap()])
            .args(["--state", self.path("state").to_str().unwrap()])
            .args(["--watch", "--resync", "1s"])
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berthd starts");
        self.berthd = Some(child);
    }

    fn status(&self) -> Value {
        std::fs::read(self.path(&format!("state/status/{}.json", self.env)))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("berthd.log")).unwrap_or_default()
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}\nstatus: {s:#}\nservers: {:?}\nberthd log (tail):\n{}",
                self.servers(),
                tail(&self.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_serving(&self, rev: u64) {
        self.wait(
            &format!("revision {rev} serving"),
            Duration::from_secs(90),
            |s| s["state"]["current"] == rev && s["state"]["active_op"].is_null(),
        );
    }

    /// The host ports of the running replicas of revision `rev`.
    fn replica_ports(&self, rev: u64) -> Vec<u16> {
        let out = must(&format!(
            "docker ps --filter label=berth.env={} --filter label=berth.revision={rev} --filter label=berth.role=app --format '{{{{.Label \"berth.port\"}}}}'",
            self.env
        ));
        let mut p: Vec<u16> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        p.sort_unstable();
        p
    }

    fn events(&self) -> Vec<String> {
        self.status()["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["reason"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
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
        // Only the HAProxy we started, by the pid it wrote.
        let _ = sh(&format!(
            "kill $(cat {}/haproxy.pid)",
            self.dir.path().display()
        ));
        drop_database(&self.env);
        if std::thread::panicking() {
            eprintln!("berthd log of {}:\n{}", self.env, tail(&self.log(), 80));
        }
    }
}

/// The fenced block right after `<!-- traffic-test: {tag} -->` in docs/traffic.md.
fn doc_block(tag: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/traffic.md");
    let doc = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let marker = format!("<!-- traffic-test: {tag} -->");
    let after = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/traffic.md has no {marker}"))
        .1;
    let body = &after[after.find("```").expect("a fenced block after the marker")..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("the block's end")].to_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One request on a kept-alive connection: the status, the body, and whether the server
/// keeps the connection open.
fn keep_alive_get(conn: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String, bool)> {
    conn.get_mut()
        .write_all(b"GET /version HTTP/1.1\r\nHost: shop\r\n\r\n")?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("closed before an answer"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut open) = (0usize, true);
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower == "connection: close" {
            open = false;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), open))
}

/// Keep-alive clients through HAProxy until stopped (at most two minutes): every request
/// that fails (an error, or not 200) is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    versions: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let mut l = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            connections: Arc::default(),
            versions: Arc::default(),
            failures: Arc::default(),
            threads: Vec::new(),
        };
        for _ in 0..clients {
            let (stop, ok, failed, conns, versions, failures) = (
                l.stop.clone(),
                l.ok.clone(),
                l.failed.clone(),
                l.connections.clone(),
                l.versions.clone(),
                l.failures.clone(),
            );
            l.threads.push(std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(120);
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    if conn.is_none() {
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => {
                                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                conns.fetch_add(1, Ordering::Relaxed);
                                conn = Some(BufReader::new(s));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                failures.lock().unwrap().push(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected above");
                    match keep_alive_get(c) {
                        Ok((200, body, open)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                            let key = v["version"].as_str().unwrap_or("?").to_owned();
                            *versions.lock().unwrap().entry(key).or_default() += 1;
                            if !open {
                                conn = None;
                            }
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut f = failures.lock().unwrap();
                            if f.len() < 5 {
                                f.push(format!("{other:?}"));
                            }
                            conn = None;
                        }
                    }
                }
            }));
        }
        l
    }

    fn stop(
        mut self,
    ) -> (
        u64,
        u64,
        u64,
        std::collections::BTreeMap<String, u64>,
        Vec<String>,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let versions = self.versions.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            versions,
            failures,
        )
    }
}

#[test]
#[ignore = "needs the lab and haproxy: hack/lab up"]
fn a_blue_green_rollout_through_haproxy_loses_no_keep_alive_request_survives_a_reload_and_repairs_a_hand_change(
) {
    let mut w = World::new();
    w.write_manifest("v1");
    w.start();

    // 1. v1 comes up; its two replicas get two slots, ready.
    w.wait_serving(1);
    let v1 = w.replica_ports(1);
    assert_eq!(v1.len(), 2, "{v1:?}");
    assert_eq!(w.ready_ports(), v1);

    // 2. v1 → v2 under keep-alive load: not one request fails.
    let load = Load::start(w.port, 4);
    std::thread::sleep(Duration::from_secs(1));
    w.write_manifest("v2");
    w.wait_serving(2);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, connections, versions, failures) = load.stop();
    eprintln!("load: {ok} ok, {failed} failed, {connections} connections, versions {versions:?}");
    assert_eq!(failed, 0, "requests lost during the switch: {failures:?}");
    assert!(
        versions.contains_key("v1") && versions.contains_key("v2"),
        "{versions:?}"
    );
    assert!(
        ok > 10 * connections,
        "keep-alive was not used: {ok} requests on {connections} connections"
    );

    // The v2 slots serve; the v1 slots went to maintenance once v1 stopped.
    let v2 = w.replica_ports(2);
    assert_eq!(v2.len(), 2, "{v2:?}");
    assert_eq!(w.ready_ports(), v2);
    let maint: Vec<u16> = w
        .servers()
        .into_iter()
        .filter(|(_, _, admin)| admin & 0x01 != 0)
        .map(|(_, port, _)| port)
        .collect();
    assert!(
        v1.iter().all(|p| maint.contains(p)),
        "v1 slots not in maintenance: {:?}",
        w.servers()
    );
    let switched = w.status()["events"].to_string();
    assert!(!switched.contains("TrafficRepaired"), "{switched}");

    // 3. A reload of HAProxy (state file) comes back to what Berth set.
    let before = w.servers();
    w.reload_haproxy();
    let end = Instant::now() + Duration::from_secs(10);
    while w.servers() != before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.servers(), before, "after the reload");
    assert_eq!(w.ready_ports(), v2);

    // 4. A hand `state maint` on a serving slot is drift: repaired.
    let slot = w
        .servers()
        .into_iter()
        .find(|(_, port, _)| *port == v2[0])
        .map(|(name, _, _)| name)
        .unwrap();
    w.runtime(&format!("set server {}/{slot} state maint", w.env));
    assert_eq!(w.ready_ports(), vec![v2[1]]);
    w.wait("the repair", Duration::from_secs(15), |_| {
        w.events().iter().any(|e| e.starts_with("TrafficRepaired"))
    });
    let end = Instant::now() + Duration::from_secs(5);
    while w.ready_ports() != v2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.ready_ports(), v2, "{:?}", w.servers());
}
