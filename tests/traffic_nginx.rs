//! The nginx switch (`exec::traffic`) against a real nginx, through `LocalHost`: traffic
//! follows the rendered upstream, a rejected file is rolled back while traffic keeps
//! flowing, and the same content twice does not reload.
//!
//! Needs nginx and a Docker engine (LocalHost checks the engine when it connects), so it
//! is ignored by default: `hack/lab up && cargo test -p berth-controller --test
//! traffic_nginx -- --include-ignored`. It never touches the lab's own nginx instances:
//! it runs its own nginx, from a temporary directory, on a free loopback port, and stops
//! it when done (pass or fail).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_api::environment::NginxTraffic;
use berth_controller::exec::http::{request, Request};
use berth_controller::exec::traffic::{
    apply_nginx, backends_in, current_upstream, render_upstream,
};
use berth_controller::host::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/mod.rs"]
mod support;

use support::cmd::{must, quietly};
use support::host::local_host;
use support::net::free_port;

const ENV: &str = "berth-traffic-test";

/// Our own nginx, shaped like the lab's (`hack/lab`, `nginx/<vm>/nginx.conf`), stopped on
/// drop.
struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    /// `-p` and `-e` keep everything nginx opens, even before it reads the config, in
    /// our directory.
    fn args(&self) -> String {
        let d = self.dir.path().display();
        format!("-p {d} -e {d}/logs/error.log -c {d}/nginx.conf")
    }

    fn upstream_file(&self) -> String {
        format!("{}/upstreams/{ENV}.conf", self.dir.path().display())
    }

    fn reloads(&self) -> PathBuf {
        self.dir.path().join("reloads")
    }

    fn traffic(&self) -> NginxTraffic {
        NginxTraffic {
            upstream_file: self.upstream_file(),
            test: format!("nginx -q -t {}", self.args()),
            // Each reload leaves a line, so a test can count them.
            reload: format!(
                "nginx {} -s reload && echo reload >> {}",
                self.args(),
                self.reloads().display()
            ),
            port: None,
            listen: None,
        }
    }

    fn reload_count(&self) -> usize {
        std::fs::read_to_string(self.reloads())
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn start() -> Nginx {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path().to_owned();
        for sub in ["upstreams", "logs", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("nginx directories");
        }
        let port = free_port();
        let n = Nginx { dir, port };
        // nginx refuses `proxy_pass http://<env>` until the upstream exists: start with
        // the empty one, which is also what Berth writes before any replica is ready.
        std::fs::write(n.upstream_file(), render_upstream(ENV, &[])).expect("upstream file");
        std::fs::write(d.join("nginx.conf"), conf(&d, port)).expect("nginx.conf");
        must(&format!("nginx {}", n.args()));
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master we started, by the pid it wrote: TERM is nginx's fast shutdown.
        let pid_file = self.dir.path().join("nginx.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            quietly(Command::new("kill").args(["-TERM", &pid.to_string()]));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn conf(d: &Path, port: u16) -> String {
    let d = d.display();
    format!(
        "# the traffic_nginx test's own nginx, shaped like the lab's
user root root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/upstreams/*.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{ENV};
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_connect_timeout 2s;
        }}
    }}
}}
"
    )
}

/// A backend on 127.0.0.1:0 answering every request with `body`; its port.
async fn backend(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let port = listener.local_addr().expect("backend address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// What nginx answers on `/`: `"<status> <body>"`.
async fn via_nginx(host: &dyn Host, port: u16) -> String {
    match request(
        host,
        "127.0.0.1",
        port,
        &Request::get("/"),
        Duration::from_secs(5),
    )
    .await
    {
        Ok(r) => format!("{} {}", r.status, r.text()),
        Err(e) => format!("error: {e}"),
    }
}

/// Waits (a reload takes effect a moment after the signal) until ten answers in a row are
/// `want`; panics with the last answer after 10 s.
async fn settles_on(host: &dyn Host, port: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    let mut last = String::new();
    while in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "nginx never settled on {want:?}; last answer {last:?}"
        );
        last = via_nginx(host, port).await;
        if last == want {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the lab: hack/lab up"]
async fn nginx_traffic_follows_the_upstream_and_survives_a_rejected_file() {
    let host = local_host().await;
    let a = backend("a").await;
    let b = backend("b").await;
    let nginx = Nginx::start();
    let cfg = nginx.traffic();
    let at = |port| vec![("127.0.0.1".to_owned(), port)];

    // The empty upstream is valid: nginx started on it and answers 502.
    let first = via_nginx(&host, nginx.port).await;
    assert!(first.starts_with("502 "), "{first}");

    let applied = apply_nginx(&host, &cfg, &render_upstream(ENV, &at(a)))
        .await
        .expect("switch to a");
    assert!(applied.changed);
    assert_eq!(applied.previous, Some(render_upstream(ENV, &[])));
    settles_on(&host, nginx.port, "200 a").await;

    let to_b = render_upstream(ENV, &at(b));
    assert!(
        apply_nginx(&host, &cfg, &to_b)
            .await
            .expect("switch to b")
            .changed
    );
    settles_on(&host, nginx.port, "200 b").await;
    assert_eq!(nginx.reload_count(), 2);

    // The same content again: nothing written, no reload.
    let again = apply_nginx(&host, &cfg, &to_b).await.expect("apply again");
    assert!(!again.changed);
    assert_eq!(nginx.reload_count(), 2);

    // A file nginx rejects is put back, and traffic never stops.
    let broken = format!("upstream {ENV} {{\n    server 127.0.0.1:{a}\n");
    let err = apply_nginx(&host, &cfg, &broken)
        .await
        .expect_err("nginx rejects a broken upstream");
    let msg = err.to_string();
    assert!(!err.is_retryable(), "{msg}");
    assert!(
        msg.contains("[emerg]"),
        "nginx's own message is quoted: {msg}"
    );
    assert!(msg.ends_with("the previous file was put back"), "{msg}");
    assert_eq!(
        current_upstream(&host, &cfg).await.expect("read back"),
        Some(to_b.clone())
    );
    assert_eq!(nginx.reload_count(), 2);
    settles_on(&host, nginx.port, "200 b").await;

    // A rejected file where there was none is removed, and nginx still reloads after it.
    let stray = NginxTraffic {
        upstream_file: format!("{}/upstreams/stray.conf", nginx.dir.path().display()),
        ..cfg.clone()
    };
    apply_nginx(&host, &stray, "upstream stray {")
        .await
        .expect_err("rejected");
    assert!(!Path::new(&stray.upstream_file).exists());
    let back_to_a = render_upstream(ENV, &at(a));
    assert!(
        apply_nginx(&host, &cfg, &back_to_a)
            .await
            .expect("to a")
            .changed
    );
    settles_on(&host, nginx.port, "200 a").await;

    // What traffic points at, read back from the file on the host.
    let now = current_upstream(&host, &cfg).await.expect("read back");
    assert_eq!(backends_in(&now.unwrap_or_default()), at(a));
}
