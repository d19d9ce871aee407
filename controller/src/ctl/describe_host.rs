//! `berthctl describe host NAME -f PATH`: one host of the manifests — the spec fields
//! that matter to an operator (never `registryAuth`), where berthd stands with it (from
//! its API, else its last status file) and the environments placed on it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::describe::Fields;
use super::output::{self, or_none, parse_utc, when, Table, NONE};
use super::state::{phase, StateArgs};
use super::CtlError;
use crate::op::Millis;
use crate::reconcile::host_status::{HostPhase, HostStatus};
use crate::reconcile::status::EnvStatus;

/// What `-o json|yaml` prints: the spec without secrets, the status berthd reported (none
/// when it has not seen the host) and the environments on the host.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    pub name: String,
    pub spec: SpecView,
    pub status: Option<HostStatus>,
    pub environments: Vec<EnvLine>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    pub address: String,
    pub docker_socket: String,
    pub identity_file: Option<String>,
    pub known_hosts_file: Option<String>,
    pub port_range: String,
    pub max_parallel: u32,
    /// Whether registry credentials are configured; never their value.
    pub registry_auth: bool,
}

/// One environment on the host, as berthd last saw it (`revision`/`phase` are `None`
/// when berthd has no status for it yet).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EnvLine {
    pub name: String,
    pub revision: Option<u64>,
    pub phase: Option<String>,
    pub message: Option<String>,
}

/// The view of host `name` of the manifests at `file`.
///
/// # Errors
/// Those of loading the manifests; [`CtlError::UnknownHost`] (listing the known hosts);
/// the client's or the status files'.
pub fn host_view(name: &str, file: &Path, state: &StateArgs) -> Result<HostView, CtlError> {
    let m = super::get::load_manifests(file)?;
    let Some(host) = m.hosts.get(name) else {
        let known: Vec<&str> = m.hosts.keys().map(String::as_str).collect();
        return Err(CtlError::UnknownHost {
            name: name.to_owned(),
            file: file.to_owned(),
            hint: berth_api::shape::did_you_mean(name, &known),
            known: known.iter().map(|k| (*k).to_owned()).collect(),
        });
    };
    let status = state
        .host_statuses()?
        .and_then(|all| all.into_iter().find(|s| s.name == name));
    // No status directory yet (berthd never ran here) is not an error: the environments
    // are listed from the manifests alone.
    let envs = match state.load() {
        Ok(all) => all,
        Err(CtlError::NoStatus { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let environments = m
        .environments
        .iter()
        .filter(|(_, e)| e.spec.host == name)
        .map(|(env, _)| env_line(env, envs.iter().find(|s| &s.name == env)))
        .collect();
    let s = &host.spec;
    Ok(HostView {
        name: name.to_owned(),
        spec: SpecView {
            address: s.address.to_string(),
            docker_socket: s.docker_socket.clone(),
            identity_file: s.identity_file.clone(),
            known_hosts_file: s.known_hosts_file.clone(),
            port_range: s.port_range.to_string(),
            max_parallel: s.max_parallel,
            registry_auth: s.registry_auth.is_some(),
        },
        status,
        environments,
    })
}

fn env_line(name: &str, status: Option<&EnvStatus>) -> EnvLine {
    EnvLine {
        name: name.to_owned(),
        revision: status.and_then(|s| s.state.current),
        phase: status.map(phase),
        message: status.map(|s| output::one_line(&s.state.message)),
    }
}

/// The description for humans, ending with a newline.
pub fn host(v: &HostView, now: Millis) -> String {
    let mut out = String::new();
    let s = &v.spec;
    Fields::new("")
        .add("Name", v.name.clone())
        .add("Address", s.address.clone())
        .add("Docker socket", s.docker_socket.clone())
        .add("Identity file", or_none(s.identity_file.as_deref()))
        .add(
            "Known hosts",
            match (&s.known_hosts_file, s.address.starts_with("ssh://")) {
                (Some(f), _) => f.clone(),
                (None, true) => "~/.ssh/known_hosts (default)".into(),
                (None, false) => NONE.into(),
            },
        )
        .add("Port range", s.port_range.clone())
        .add("Max parallel", s.max_parallel.to_string())
        .add(
            "Registry auth",
            if s.registry_auth { "configured" } else { NONE },
        )
        .render(&mut out);

    out.push('\n');
    match &v.status {
        None => out.push_str(
            "Connection:  <unknown> (berthd has not reported this host; is it running with this --state?)\n",
        ),
        Some(st) => connection(st, now, &mut out),
    }

    out.push('\n');
    if v.environments.is_empty() {
        let _ = writeln!(out, "Environments:  {NONE}");
    } else {
        let _ = writeln!(out, "Environments:");
        let mut t = Table::new(["NAME", "REVISION", "PHASE", "MESSAGE"]);
        for e in &v.environments {
            t.row([
                e.name.clone(),
                or_none(e.revision),
                e.phase.clone().unwrap_or_else(|| "<no status>".into()),
                e.message.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out
}

fn connection(st: &HostStatus, now: Millis, out: &mut String) {
    out.push_str("Connection:\n");
    let state = match st.state {
        HostPhase::Reachable => "Reachable",
        HostPhase::Connecting => "Connecting (first attempt under way)",
        HostPhase::Unreachable => "Unreachable (retrying with backoff)",
    };
    let last_seen = st
        .last_seen
        .as_deref()
        .map_or_else(|| "never".to_owned(), |at| seen(at, now));
    Fields::new("  ")
        .add("State", state)
        .add(
            "Since",
            or_none(st.since.as_deref().map(|at| seen(at, now))),
        )
        .add("Last seen", last_seen)
        .add(
            "Docker",
            match (&st.docker_version, &st.api_version) {
                (None, _) => NONE.to_owned(),
                (Some(v), None) => v.clone(),
                (Some(v), Some(api)) => format!("{v} (API {api})"),
            },
        )
        .add(
            "Round trip",
            or_none(st.rtt_ms.map(|ms| format!("{ms:.1}ms"))),
        )
        .render(out);
    // In full, not cut: a refused host key names its type, fingerprint and the command
    // that trusts it.
    match &st.last_error {
        None => out.push_str("  Last error:  <none>\n"),
        Some(e) => {
            out.push_str("  Last error:\n");
            for line in e.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
}

/// `2023-11-14T22:13:20Z (3s ago)`, or the text as berthd wrote it if it does not parse.
fn seen(at: &str, now: Millis) -> String {
    parse_utc(at).map_or_else(|| at.to_owned(), |ms| when(now, ms))
}
