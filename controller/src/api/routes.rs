//! Paths to handlers. Reads come from the journal (as the status files do) and the
//! controller's memory; writes go through [`super::actions`] and [`super::apply`].

use bytes::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;

use crate::reconcile::status::{self, EnvStatus};
use crate::reconcile::Controller;
use crate::store::StoreError;

use super::types::{ApproveRequest, Readiness, UndoRequest};
use super::{actions, apply, metrics, openapi, ApiError, App, Reply};

/// The most events one request returns.
const EVENTS_MAX: usize = 1000;

pub async fn route(
    app: &App,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let ctl = &app.ctl;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = Query(query.unwrap_or_default());
    match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Reply::ok(serde_json::json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => readyz(ctl),
        (&Method::GET, ["metrics"]) => Ok(Reply::Text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(ctl),
        )),
        (&Method::GET, ["v1", "openapi.json"]) => Ok(Reply::Json(200, openapi::document())),
        (&Method::GET, ["v1", "environments"]) => Reply::ok(environments(ctl)?),
        (&Method::GET, ["v1", "environments", name]) => Reply::ok(environment(ctl, name)?),
        (&Method::GET, ["v1", "environments", name, "history"]) => {
            known(ctl, name)?;
            let limit = q.number("limit")?.unwrap_or(20).min(1000) as usize;
            let ops = ctl.store().operations(name, limit)?;
            Reply::ok(ops.iter().filter_map(status::op_status).collect::<Vec<_>>())
        }
        (&Method::GET, ["v1", "environments", name, "logs"]) => {
            known(ctl, name)?;
            let tail = q.number("tail")?.unwrap_or(100).min(10_000) as usize;
            let revision = q.number("revision")?;
            let lines = ctl
                .replica_logs(name, revision, tail)
                .await
                .map_err(|e| ApiError::new(502, e))?;
            Reply::ok(lines)
        }
        (&Method::GET, ["v1", "hosts"]) => Reply::ok(ctl.host_statuses()),
        (&Method::GET, ["v1", "backups"]) => {
            let mut all = Vec::new();
            for env in environment_names(ctl)? {
                all.extend(ctl.store().backups(&env)?);
            }
            Reply::ok(all)
        }
        (&Method::GET, ["v1", "events"]) => {
            let env = q.get("environment");
            if let Some(env) = env {
                check_name(env).map_err(|e| e.at("environment"))?;
            }
            let limit = q.number("limit")?.unwrap_or(100).min(EVENTS_MAX as u64) as usize;
            let since = q.number("since")?;
            Reply::ok(ctl.store().events(since, env, limit)?)
        }
        (&Method::GET, ["v1", "source"]) => Reply::ok(ctl.source_health()),
        (&Method::POST, ["v1", "environments", name, verb]) => {
            check_name(name)?;
            let reply = match *verb {
                "approve" => actions::approve(ctl, name, json::<ApproveRequest>(&body)?)?,
                "undo" => actions::undo(ctl, name, json::<UndoRequest>(&body)?)?,
                "pause" => actions::pause(ctl, name)?,
                "resume" => actions::resume(ctl, name)?,
                "retry" => actions::retry(ctl, name)?,
                "abort" => actions::abort(ctl, name)?,
                other => {
                    return Err(ApiError::not_found(format!("no verb {other:?}")));
                }
            };
            Reply::ok(reply)
        }
        (&Method::POST, ["v1", "apply"]) => Reply::ok(apply::apply(ctl, json(&body)?)?),
        (&Method::POST, ["v1", "diff"]) => Reply::ok(apply::diff(ctl, json(&body)?)?),
        (&Method::DELETE, ["v1", "environments", name]) => {
            check_name(name)?;
            let prune = q.get("prune").is_some_and(|v| v == "true" || v == "1");
            Reply::ok(apply::delete(ctl, name, prune).await?)
        }
        (_, ["healthz" | "readyz" | "metrics"])
        | (
            _,
            ["v1", "openapi.json" | "environments" | "hosts" | "backups" | "events" | "source"],
        )
        | (_, ["v1", "environments", _, ..])
        | (_, ["v1", "apply" | "diff"]) => Err(ApiError::new(
            405,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found(format!(
            "no such path: {path} (see GET /v1/openapi.json)"
        ))),
    }
}

/// A JSON request body (an empty body is `{}`), refusing unknown fields.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        // serde names the field only in these two messages: "unknown field `x`, …" and
        // "missing field `x`"; elsewhere backticks quote values.
        let text = e.to_string();
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        ApiError {
            status: 400,
            error: format!("malformed request body: {e}"),
            field,
        }
    })
}

struct Query<'a>(&'a str);

impl<'a> Query<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("{key}: expected a number, got {v:?}")).at(key)
                })
            })
            .transpose()
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{name:?} is not an environment name (a DNS label: a-z, 0-9, -)"
        ))
        .at("name"))
    }
}

/// Every environment berthd knows: desired now, or with a journal.
pub fn environment_names(ctl: &Controller) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = ctl.desired_environment_names();
    names.extend(ctl.store().environments()?);
    names.sort();
    names.dedup();
    Ok(names)
}

/// 404 unless berthd knows the environment.
pub fn known(ctl: &Controller, name: &str) -> Result<(), ApiError> {
    check_name(name)?;
    if environment_names(ctl)?.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no environment {name:?}")).at("name"))
    }
}

fn environments(ctl: &Controller) -> Result<Vec<EnvStatus>, ApiError> {
    environment_names(ctl)?
        .iter()
        .map(|n| ctl.env_status(n).map_err(ApiError::from))
        .collect()
}

fn environment(ctl: &Controller, name: &str) -> Result<EnvStatus, ApiError> {
    known(ctl, name)?;
    Ok(ctl.env_status(name)?)
}

fn readyz(ctl: &Controller) -> Result<Reply, ApiError> {
    let hosts_pending: Vec<String> = ctl
        .host_statuses()
        .into_iter()
        .filter(|h| h.state == crate::reconcile::host_status::HostPhase::Connecting)
        .map(|h| h.name)
        .collect();
    let r = Readiness {
        ready: hosts_pending.is_empty(),
        // The store is opened before the API listens, and stays open.
        store_open: true,
        // berthd does not start without a valid desired state.
        manifests_loaded: true,
        hosts_pending,
    };
    let status = if r.ready { 200 } else { 503 };
    serde_json::to_value(r)
        .map(|v| Reply::Json(status, v))
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_body_is_a_400_naming_the_unknown_field() {
        let e = json::<UndoRequest>(b"{\"toRevison\": 1}").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.field.as_deref(), Some("toRevison"));
        let e = json::<UndoRequest>(b"{not json").unwrap_err();
        assert_eq!(e.status, 400);
        let e = json::<UndoRequest>(b"{\"toRevision\": \"x\"}").unwrap_err();
        assert_eq!((e.status, e.field), (400, None));
        assert!(json::<UndoRequest>(b"").is_ok());
    }

    #[test]
    fn query_numbers_are_checked() {
        let q = Query("tail=10&revision=x&flag");
        assert_eq!(q.number("tail").unwrap(), Some(10));
        assert_eq!(q.number("revision").unwrap_err().status, 400);
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.number("none").unwrap(), None);
    }
}
