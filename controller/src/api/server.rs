//! Listening: the unix socket (always) and TCP with a bearer token (only when asked), one
//! HTTP/1.1 connection per task, with every request bounded in size and time.
//!
//! # Guarantees
//! - The socket file is mode 0600 inside a directory of mode 0700: only berthd's user
//!   reaches it. It is bound only after a stale socket (nothing answers on it) is removed;
//!   a socket something answers on is left alone and berthd refuses to start.
//! - TCP is served only with a non-empty token, read from a file; a request's
//!   `Authorization: Bearer …` is compared with it in constant time (digests of both,
//!   compared with `subtle`), and a refusal is logged without the token.
//! - A request body over [`Limits::max_body`] gets 413, a request that takes longer than
//!   [`Limits::request_timeout`] (body included) gets 408, a connection that sends no
//!   complete header within [`Limits::header_timeout`] is closed, and at most
//!   [`Limits::max_connections`] connections are served at once (others wait in the
//!   kernel's backlog). No request reaches the reconcile loop except through the journal
//!   and the queue, so a flood of bad requests costs it nothing but CPU.

use std::convert::Infallible;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use super::{routes, ApiError, App, Reply};

/// Bounds on what one client may cost.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: usize,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// A connection is closed after this long, whatever it does.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            request_timeout: Duration::from_secs(15),
            header_timeout: Duration::from_secs(5),
            max_connections: 64,
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot create {}: {source}", .path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: berthd already answers on this socket (another berthd runs on this state)", .0.display())]
    InUse(PathBuf),
    #[error("cannot listen on {}: {source}", .path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on TCP {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("--listen needs --token-file: the API is not served on TCP without a token")]
    NoToken,
    #[error("cannot read the token file {}: {source}", .path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} is empty", .0.display())]
    EmptyToken(PathBuf),
}

/// Binds the unix socket at `path`: its directory is created mode 0700 if missing (and
/// made 0700 when `private_dir`: the state directory, which is berthd's alone), a stale
/// socket is removed, and the socket is made mode 0600.
pub fn bind_unix(path: &Path, private_dir: bool) -> Result<UnixListener, ListenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let dir_err = |source| ListenError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        if private_dir {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(dir_err)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind = |source| ListenError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    Ok(listener)
}

/// The bearer token TCP clients must send, read from `path` (surrounding whitespace
/// dropped). Kept only as its digest.
pub struct Token([u8; 32]);

impl Token {
    pub fn from_file(path: &Path) -> Result<Token, ListenError> {
        let text = std::fs::read_to_string(path).map_err(|source| ListenError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ListenError::EmptyToken(path.to_owned()));
        }
        Ok(Token(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `header` (an `Authorization` value) carries this token. Constant time in
    /// the token's content: both sides are hashed to 32 bytes and compared with `subtle`.
    fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim_ascii()).into();
        digest.ct_eq(&self.0).into()
    }
}

pub async fn bind_tcp(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Tcp {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves the unix socket until `stop` turns true.
pub async fn serve_unix(listener: UnixListener, app: Arc<App>, stop: watch::Receiver<bool>) {
    let limits = app.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop = stop;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = stop.changed() => return,
        };
        match stream {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    serve_connection(stream, app, None, "unix".into()).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("api: accept on the unix socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves TCP until `stop` turns true; every request must carry `token`.
pub async fn serve_tcp(
    listener: TcpListener,
    app: Arc<App>,
    token: Arc<Token>,
    stop: watch::Receiver<bool>,
) {
    let limits = app.limits;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop = stop;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = stop.changed() => return,
        };
        match stream {
            Ok((stream, peer)) => {
                let app = app.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    serve_connection(stream, app, Some(token), peer.to_string()).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("api: accept on TCP failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<S>(stream: S, app: Arc<App>, token: Option<Arc<Token>>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.limits;
    let svc = service_fn(move |req| {
        let app = app.clone();
        let token = token.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(respond(&app, token.as_deref(), &peer, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    match tokio::time::timeout(limits.connection_lifetime, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("api: connection ended: {e}"),
        Err(_) => debug!("api: connection closed after its lifetime"),
    }
}

async fn respond(
    app: &Arc<App>,
    token: Option<&Token>,
    peer: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Some(token) = token {
        let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        if !token.admits(given) {
            warn!(peer, %method, path, "api: refused a request without the right bearer token");
            return reply(Err(ApiError::unauthorized()));
        }
    }
    let answer = tokio::time::timeout(app.limits.request_timeout, async {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > app.limits.max_body) {
            return Err(ApiError::too_large(app.limits.max_body));
        }
        let body = match Limited::new(body, app.limits.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::too_large(app.limits.max_body))
            }
            Err(e) => return Err(ApiError::bad_request(format!("reading the body: {e}"))),
        };
        routes::route(
            app,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            body,
        )
        .await
    })
    .await
    .unwrap_or_else(|_| Err(ApiError::timeout(app.limits.request_timeout)));
    if let Err(e) = &answer {
        debug!(peer, %method, path, status = e.status, "api: {}", e.error);
    }
    reply(answer)
}

fn reply(answer: Result<Reply, ApiError>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match answer {
        Ok(Reply::Json(status, v)) => (
            status,
            "application/json",
            Bytes::from(serde_json::to_vec_pretty(&v).unwrap_or_default()),
        ),
        Ok(Reply::Text(status, content_type, t)) => (status, content_type, Bytes::from(t)),
        Err(e) => (
            e.status,
            "application/json",
            Bytes::from(serde_json::to_vec(&e.body()).unwrap_or_default()),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_admits_only_itself_as_a_bearer() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret-token\n").unwrap();
        let t = Token::from_file(&f).unwrap();
        assert!(t.admits(Some(b"Bearer s3cret-token")));
        assert!(!t.admits(Some(b"Bearer s3cret-tokeN")));
        assert!(!t.admits(Some(b"s3cret-token")));
        assert!(!t.admits(None));
        std::fs::write(&f, "  \n").unwrap();
        assert!(matches!(
            Token::from_file(&f),
            Err(ListenError::EmptyToken(_))
        ));
    }

    #[tokio::test]
    async fn the_socket_is_mode_0600_in_a_0700_directory_and_a_live_one_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berthd.sock");
        let l = bind_unix(&path, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(matches!(
            bind_unix(&path, false),
            Err(ListenError::InUse(_))
        ));
        drop(l);
        // A stale socket (nothing listens) is replaced; a private directory is made so.
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        bind_unix(&path, true).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }
}
