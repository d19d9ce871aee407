//! Smoke checks: the environment's "critical workflow" requests, run against a candidate
//! before the switch and through the proxy after it.

use std::time::Duration;

use berth_api::environment::SmokeCheck;

use crate::exec::http::{self, Request};
use crate::exec::ExecError;
use crate::host::Host;
use crate::redact::Redactor;

/// How much of an unexpected body an error quotes.
const QUOTE: usize = 200;

/// Runs `checks` in order against `addr:port` as seen from `host`; each request may take
/// up to `timeout`. Stops at the first check that fails (later checks may build on it).
///
/// # Errors
/// `Failed { what: "smoke check <name>" }`: the name is the check's `name`, or
/// `METHOD path`. A wrong answer says what was expected and what came back (status and
/// the first 200 characters of the body, redacted) and is not retryable; a request that could not
/// be made at all (refused, timed out) is retryable.
pub async fn run_smoke(
    host: &dyn Host,
    checks: &[SmokeCheck],
    addr: &str,
    port: u16,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<(), ExecError> {
    for check in checks {
        run_one(host, check, addr, port, timeout, redactor).await?;
    }
    Ok(())
}

/// How errors name a check.
pub fn check_name(check: &SmokeCheck) -> String {
    match &check.name {
        Some(n) => n.clone(),
        None => format!("{} {}", check.method, check.path),
    }
}

async fn run_one(
    host: &dyn Host,
    check: &SmokeCheck,
    addr: &str,
    port: u16,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<(), ExecError> {
    let what = format!("smoke check `{}`", check_name(check));
    let headers: Vec<(&str, &str)> = check
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = Request {
        method: &check.method,
        path: &check.path,
        headers: &headers,
        body: check.body.as_deref(),
    };
    let resp = http::request(host, addr, port, &req, timeout)
        .await
        .map_err(|e| ExecError::failed(&what, e.to_string(), e.is_retryable()))?;
    // Redacted before anything is compared or quoted: a quote cut at 200 characters
    // could otherwise keep half a secret.
    let body = redactor.redact(&resp.text());
    let status_ok = resp.status == check.expect_status;
    let body_ok = check
        .expect_body
        .as_deref()
        .is_none_or(|want| body.contains(want));
    if status_ok && body_ok {
        return Ok(());
    }
    let expected = match &check.expect_body {
        Some(b) => format!("HTTP {} with a body containing {b:?}", check.expect_status),
        None => format!("HTTP {}", check.expect_status),
    };
    Err(ExecError::failed(
        what,
        format!(
            "expected {expected}, got HTTP {}: {:?}",
            resp.status,
            quote(&body)
        ),
        false,
    ))
}

fn quote(body: &str) -> String {
    match body.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::host::fake::{http_response, FakeHost};

    const T: Duration = Duration::from_secs(5);
    const PORT: u16 = 20001;

    fn check(method: &str, path: &str, expect_status: u16) -> SmokeCheck {
        SmokeCheck {
            name: None,
            method: method.into(),
            path: path.into(),
            body: None,
            headers: BTreeMap::new(),
            expect_status,
            expect_body: None,
        }
    }

    /// A fake host whose port [`PORT`] answers like the demo app.
    fn app() -> FakeHost {
        let fake = FakeHost::new("h");
        fake.serve(PORT, |req| {
            let req = String::from_utf8_lossy(req);
            if req.starts_with("POST /rows ") {
                match req.split("\r\n\r\n").nth(1) {
                    Some(body) if !body.is_empty() => http_response(201, "{\"id\":7}"),
                    _ => http_response(400, "empty row"),
                }
            } else if req.starts_with("GET /version ") {
                let v2 = req.to_ascii_lowercase().contains("x-want: v2\r\n");
                http_response(
                    200,
                    if v2 {
                        "{\"version\":\"v2\"}"
                    } else {
                        "{\"version\":\"v1\"}"
                    },
                )
            } else {
                http_response(404, &format!("no route {}", "x".repeat(500)))
            }
        });
        fake
    }

    #[tokio::test]
    async fn passing_checks_send_method_body_and_headers() {
        let fake = app();
        let mut post = check("POST", "/rows", 201);
        post.body = Some("hello".into());
        post.expect_body = Some("\"id\"".into());
        let mut version = check("GET", "/version", 200);
        version.headers.insert("X-Want".into(), "v2".into());
        version.expect_body = Some("\"v2\"".into());
        run_smoke(
            &fake,
            &[post, version],
            "127.0.0.1",
            PORT,
            T,
            &Redactor::none(),
        )
        .await
        .unwrap();
        assert_eq!(fake.count("connect 127.0.0.1:20001"), 2);
    }

    #[tokio::test]
    async fn a_wrong_status_names_the_check_and_quotes_the_answer() {
        let mut named = check("POST", "/rows", 200);
        named.name = Some("write a row".into());
        named.body = Some("x".into());
        let err = run_smoke(&app(), &[named], "127.0.0.1", PORT, T, &Redactor::none())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "smoke check `write a row`: expected HTTP 200, got HTTP 201: \"{\\\"id\\\":7}\""
        );
    }

    #[tokio::test]
    async fn a_missing_substring_fails_and_a_long_body_is_quoted_in_part() {
        let fake = app();
        let mut missing = check("GET", "/nowhere", 404);
        missing.expect_body = Some("found it".into());
        let first = check("GET", "/version", 200);
        let never = check("GET", "/never-run", 200);
        let err = run_smoke(
            &fake,
            &[first, missing, never],
            "127.0.0.1",
            PORT,
            T,
            &Redactor::none(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "smoke check `GET /nowhere`: expected HTTP 404 with a body containing \"found it\", got HTTP 404: \"no route xxx"
            ),
            "{err}"
        );
        assert!(err.ends_with("x…\""), "{err}");
        assert!(err.len() < 400, "{err}");
        assert_eq!(
            fake.count("connect 127.0.0.1:20001"),
            2,
            "stops at the first failure"
        );
    }

    #[tokio::test]
    async fn an_unreachable_candidate_is_a_retryable_failure_naming_the_check() {
        let err = run_smoke(
            &FakeHost::new("h"),
            &[check("GET", "/", 200)],
            "127.0.0.1",
            PORT,
            T,
            &Redactor::none(),
        )
        .await
        .unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "smoke check `GET /`: host h: port 20001: 127.0.0.1: Connection refused"
        );
    }
}
