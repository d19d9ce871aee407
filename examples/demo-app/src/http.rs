//! `demo-app serve`: the HTTP endpoints tests probe and load.
//!
//! Plain hyper with a hand-written router: six routes do not justify a framework in a
//! binary that is rebuilt statically on small machines.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::config::{range_str, Config, Fault};
use crate::db;

type Resp = Response<Full<Bytes>>;

/// Bound on any one request's database work, so a stalled database shows up as a fast 503
/// rather than as requests piling up behind it.
const DB_TIMEOUT: Duration = Duration::from_secs(3);
/// How long in-flight requests get to finish after SIGTERM before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ROW_BYTES: usize = 64 * 1024;

struct App {
    cfg: Config,
    /// The parsed `DATABASE_URL`, or why there is none (reported by /ready).
    pg: Result<tokio_postgres::Config, String>,
    /// One shared connection (tokio-postgres pipelines concurrent queries on it), made on
    /// first use and remade after it breaks, so the app rides out a database restart.
    client: Mutex<Option<Arc<Client>>>,
}

/// Why a request could not be served: the database is away (503) or refused the query (500).
enum DbFail {
    Unavailable(String),
    Query(String),
}

impl DbFail {
    fn response(self) -> Resp {
        match self {
            Self::Unavailable(m) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unreachable: {m}"),
            ),
            Self::Query(m) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("database error: {m}"),
            ),
        }
    }
}

impl From<tokio_postgres::Error> for DbFail {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(_) => Self::Query(db::describe(&e)),
            // No message from the server: the connection itself failed (closed, reset).
            None => Self::Unavailable(db::describe(&e)),
        }
    }
}

impl App {
    async fn client(&self) -> Result<Arc<Client>, DbFail> {
        let pg = self
            .pg
            .as_ref()
            .map_err(|e| DbFail::Unavailable(e.clone()))?;
        // Held across the connect so that a burst of requests during an outage makes one
        // connection attempt, not one each.
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Arc::new(db::connect(pg).await.map_err(DbFail::Unavailable)?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `work` against the database within `DB_TIMEOUT`.
    async fn with_db<T, F, Fut>(&self, work: F) -> Result<T, DbFail>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, DbFail>>,
    {
        let attempt = async { work(self.client().await?).await };
        tokio::time::timeout(DB_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(DbFail::Unavailable(format!(
                    "no answer within {}s",
                    DB_TIMEOUT.as_secs()
                )))
            })
    }

    async fn schema(&self) -> Result<Option<i32>, DbFail> {
        self.with_db(|c| async move { Ok(db::schema_version(&c).await?) })
            .await
    }

    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/health") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/ready") => self.ready().await,
            (&Method::GET, "/version") => self.version().await,
            (&Method::POST, "/rows") => self.insert_row(req).await,
            (&Method::GET, "/rows/count") => self.count_rows().await,
            (&Method::GET, p) if p.starts_with("/rows/") => match p["/rows/".len()..].parse() {
                Ok(id) => self.get_row(id).await,
                Err(_) => not_found(),
            },
            (_, "/health" | "/ready" | "/version" | "/rows" | "/rows/count") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => not_found(),
        }
    }

    async fn ready(&self) -> Resp {
        if self.cfg.fault == Fault::NeverReady {
            return text(StatusCode::SERVICE_UNAVAILABLE, "deliberately never ready");
        }
        let compatible = self.cfg.version.compatible();
        match self.schema().await {
            Ok(Some(v)) if compatible.contains(&v) => text(StatusCode::OK, "ready"),
            Ok(Some(v)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "schema version {v}, this build needs {}",
                    range_str(&compatible)
                ),
            ),
            Ok(None) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "schema not migrated yet, this build needs {}",
                    range_str(&compatible)
                ),
            ),
            Err(e) => {
                let mut resp = e.response();
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp
            }
        }
    }

    async fn version(&self) -> Resp {
        // Best effort: /version must answer even while the database is away.
        let schema = self.schema().await.ok().flatten();
        json_resp(
            StatusCode::OK,
            json!({
                "version": self.cfg.version.as_str(),
                "fault": self.cfg.fault.as_str(),
                "schema": schema,
                "pid": std::process::id(),
            }),
        )
    }

    async fn insert_row(&self, req: Request<Incoming>) -> Resp {
        let body = match Limited::new(req.into_body(), MAX_ROW_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a row holds at most {MAX_ROW_BYTES} bytes"),
                )
            }
        };
        let Ok(body) = String::from_utf8(body.to_vec()) else {
            return text(StatusCode::BAD_REQUEST, "the body must be UTF-8 text");
        };
        // The column name comes from a fixed list (config.rs), never from the request.
        let sql = format!(
            "INSERT INTO demo_rows ({}) VALUES ($1) RETURNING id",
            self.cfg.version.row_column()
        );
        let inserted = self
            .with_db(
                |c| async move { Ok(c.query_one(sql.as_str(), &[&body]).await?.get::<_, i64>(0)) },
            )
            .await;
        match inserted {
            Ok(id) => json_resp(StatusCode::CREATED, json!({ "id": id })),
            Err(e) => e.response(),
        }
    }

    async fn count_rows(&self) -> Resp {
        let counted = self
            .with_db(|c| async move {
                Ok(c.query_one("SELECT count(*) FROM demo_rows", &[])
                    .await?
                    .get::<_, i64>(0))
            })
            .await;
        match counted {
            Ok(n) => json_resp(StatusCode::OK, json!({ "count": n })),
            Err(e) => e.response(),
        }
    }

    async fn get_row(&self, id: i64) -> Resp {
        let sql = format!(
            "SELECT {}, created_at::text FROM demo_rows WHERE id = $1",
            self.cfg.version.row_column()
        );
        let found = self
            .with_db(|c| async move {
                Ok(c.query_opt(sql.as_str(), &[&id])
                    .await?
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))))
            })
            .await;
        match found {
            Ok(Some((body, created_at))) => json_resp(
                StatusCode::OK,
                json!({ "id": id, "body": body, "created_at": created_at }),
            ),
            Ok(None) => not_found(),
            Err(e) => e.response(),
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_resp(status: StatusCode, value: serde_json::Value) -> Resp {
    let mut resp = text(status, value.to_string());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn not_found() -> Resp {
    text(StatusCode::NOT_FOUND, "not found")
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests finish.
pub async fn serve(cfg: Config) -> Result<(), String> {
    let build = cfg.build();
    let listener = TcpListener::bind(("0.0.0.0", cfg.port))
        .await
        .map_err(|e| format!("cannot listen on 0.0.0.0:{}: {e}", cfg.port))?;
    let pg = match cfg.database_url.as_deref() {
        None => Err("DATABASE_URL is not set".to_string()),
        Some(url) => db::pg_config(url, &format!("demo-app {build}")),
    };
    if let Err(e) = &pg {
        eprintln!("demo-app: {e}; /ready will answer 503");
    }
    println!(
        "demo-app {build} (pid {}) listening on 0.0.0.0:{}, needs schema {}",
        std::process::id(),
        cfg.port,
        range_str(&cfg.version.compatible())
    );
    if cfg.fault == Fault::CrashAfter {
        let after = cfg.crash_after;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            println!(
                "demo-app: crashing on purpose after {}s (DEMO_FAULT=crash-after)",
                after.as_secs()
            );
            std::process::exit(1);
        });
    }
    let app = Arc::new(App {
        cfg,
        pg,
        client: Mutex::new(None),
    });

    // Connection tasks watch this flag to close gracefully (finish the request in flight,
    // drop idle keep-alive connections) once a stop signal arrives.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        eprintln!("demo-app: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let mut stop_rx = stop_rx.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop_rx.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "demo-app: {} connections still open after {}s, exiting anyway",
            conns.len(),
            DRAIN_TIMEOUT.as_secs()
        );
    }
    println!("demo-app {build} stopped");
    Ok(())
}

/// Resolves on SIGTERM (`docker stop`) or SIGINT. As PID 1 in a container the process gets
/// no default handling for these, so without this `docker stop` would wait for SIGKILL.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
