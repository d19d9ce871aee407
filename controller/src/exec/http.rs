//! A small HTTP/1.1 client over [`Host::connect`], so probes and smoke checks reach a port
//! as the host sees it (the local machine today, the far end of an SSH connection later).
//!
//! One request per connection (`Connection: close`): probes and smoke checks are rare,
//! and a fresh connection per request means nothing stale is ever reused.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::Method;
use hyper_util::rt::TokioIo;

use crate::exec::ExecError;
use crate::host::Host;

/// The most of a response body that is kept; the rest is not read.
pub const BODY_CAP: usize = 64 * 1024;

/// What to send. `headers` may include `Host`, which then replaces the default `addr:port`.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Request {
            method: "GET",
            path,
            headers: &[],
            body: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// At most [`BODY_CAP`] bytes of the body.
    pub body: Bytes,
    /// The body was longer than [`BODY_CAP`] and was cut.
    pub truncated: bool,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Sends one request to `addr:port` as seen from `host` and reads the answer.
///
/// # Errors
/// - the connection cannot be made: [`ExecError::Host`] (retryable);
/// - the request cannot be built (bad method, path or header): `Failed`, not retryable;
/// - the exchange fails or does not finish within `timeout` (which bounds everything:
///   connect, send, and reading the body): `Failed`, retryable.
///
/// Any status is a successful exchange; judging it is the caller's business.
pub async fn request(
    host: &dyn Host,
    addr: &str,
    port: u16,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, ExecError> {
    let authority = authority(addr, port);
    let what = format!("HTTP {} http://{authority}{}", req.method, req.path);
    let built = build(req, &authority).map_err(|m| ExecError::failed(&what, m, false))?;
    match tokio::time::timeout(timeout, exchange(host, addr, port, built)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(Fail::Host(e))) => Err(ExecError::Host(e)),
        Ok(Err(Fail::Http(m))) => Err(ExecError::failed(what, m, true)),
        Err(_) => Err(ExecError::failed(
            what,
            format!("no complete answer within {}", human(timeout)),
            true,
        )),
    }
}

/// `addr:port`, with an IPv6 address in brackets.
pub fn authority(addr: &str, port: u16) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `1.5s`, `300ms`: durations in messages.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

enum Fail {
    Host(crate::host::HostError),
    Http(String),
}

fn build(req: &Request<'_>, authority: &str) -> Result<hyper::Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", req.method))?;
    let mut b = hyper::Request::builder().method(method).uri(req.path);
    let mut has_host = false;
    for (name, value) in req.headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` is not valid in HTTP"))?;
        has_host |= n == HOST;
        b = b.header(n, v);
    }
    if !has_host {
        b = b.header(HOST, authority);
    }
    let body = Full::new(Bytes::from(req.body.unwrap_or("").to_owned()));
    b.header(CONNECTION, "close")
        .body(body)
        .map_err(|e| format!("bad request (path `{}`?): {e}", req.path))
}

async fn exchange(
    host: &dyn Host,
    addr: &str,
    port: u16,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Response, Fail> {
    let stream = host.connect(addr, port).await.map_err(Fail::Host)?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Fail::Http(chain(&e)))?;
    let talk = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Fail::Http(chain(&e)))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut kept = BytesMut::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Fail::Http(chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                let room = BODY_CAP - kept.len();
                if data.len() > room {
                    kept.extend_from_slice(&data[..room]);
                    truncated = true;
                    break; // the rest is never read; dropping the connection ends it
                }
                kept.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            body: kept.freeze(),
            truncated,
        })
    };
    // The connection is driven here, beside the exchange, rather than in a spawned task:
    // when the exchange ends (or the caller's timeout drops this future) the connection
    // goes with it, and nothing outlives the request.
    tokio::pin!(talk);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = &mut talk => r,
        // The connection finished first (the server closed it): what it delivered is still
        // readable, and an error shows up in the exchange itself.
        _ = &mut conn => talk.await,
    }
}

/// An error and its sources, one line: hyper's own message alone is often too terse.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::exec::test_host::SlowHost;
    use crate::host::fake::{http_response, FakeHost};

    const T: Duration = Duration::from_secs(5);
    const PORT: u16 = 20001;

    /// A fake host serving `answer` on [`PORT`], and the requests it received, as text.
    fn serving(answer: Vec<u8>) -> (FakeHost, Arc<Mutex<Vec<String>>>) {
        let fake = FakeHost::new("h");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        fake.serve(PORT, move |req| {
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(req).into_owned());
            answer.clone()
        });
        (fake, seen)
    }

    #[tokio::test]
    async fn a_request_says_host_and_connection_close_and_reads_the_answer() {
        let (fake, seen) = serving(http_response(201, "made"));
        let req = Request {
            method: "POST",
            path: "/rows?x=1",
            headers: &[("X-Test", "yes")],
            body: Some("hello"),
        };
        let resp = request(&fake, "127.0.0.1", PORT, &req, T).await.unwrap();
        assert_eq!((resp.status, resp.text().as_ref()), (201, "made"));
        assert!(!resp.truncated);
        let sent = seen.lock().unwrap().join("").to_ascii_lowercase();
        assert!(sent.starts_with("post /rows?x=1 http/1.1\r\n"), "{sent}");
        assert!(sent.contains("host: 127.0.0.1:20001\r\n"));
        assert!(sent.contains("connection: close\r\n"));
        assert!(sent.contains("x-test: yes\r\n"));
        assert!(sent.ends_with("\r\n\r\nhello"), "{sent}");
        assert_eq!(fake.calls(), ["connect 127.0.0.1:20001"]);
    }

    #[tokio::test]
    async fn a_host_header_given_by_the_caller_replaces_the_default() {
        let (fake, seen) = serving(http_response(200, ""));
        let req = Request {
            headers: &[("Host", "app.example")],
            ..Request::get("/")
        };
        request(&fake, "127.0.0.1", PORT, &req, T).await.unwrap();
        let sent = seen.lock().unwrap().join("").to_ascii_lowercase();
        assert!(sent.contains("host: app.example\r\n"));
        assert_eq!(sent.matches("host:").count(), 1, "{sent}");
    }

    #[tokio::test]
    async fn a_long_body_is_cut_at_64_kib() {
        let (fake, _) = serving(http_response(200, &"x".repeat(200 * 1024)));
        let resp = request(&fake, "127.0.0.1", PORT, &Request::get("/"), T)
            .await
            .unwrap();
        assert_eq!(resp.body.len(), BODY_CAP);
        assert!(resp.truncated);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_retryable_timeout() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let host = SlowHost {
            exec_delay: Duration::ZERO,
        };
        let err = request(
            &host,
            "127.0.0.1",
            port,
            &Request::get("/ready"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            format!("HTTP GET http://127.0.0.1:{port}/ready: no complete answer within 300ms")
        );
    }

    #[tokio::test]
    async fn a_server_that_closes_without_answering_is_a_retryable_error() {
        let (fake, _) = serving(Vec::new());
        let err = request(&fake, "127.0.0.1", PORT, &Request::get("/"), T)
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .starts_with("HTTP GET http://127.0.0.1:20001/: connection closed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_host_error() {
        let err = request(
            &FakeHost::new("h"),
            "127.0.0.1",
            PORT,
            &Request::get("/"),
            T,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ExecError::Host(_)), "{err}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn a_malformed_request_is_not_retryable_and_connects_nowhere() {
        let fake = FakeHost::new("h");
        let req = Request {
            headers: &[("bad header", "x")],
            ..Request::get("/")
        };
        let err = request(&fake, "127.0.0.1", 9, &req, T).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("`bad header` is not a header name"),
            "{err}"
        );
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(authority("::1", 80), "[::1]:80");
        assert_eq!(authority("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(2)), "2s");
    }
}
