//! `berthctl get environments|backups|hosts`: one line per record, or `-o json|yaml`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output::{self, age, or_none, parse_utc, render, short, truncate, Output, Table, NONE};
use super::state::{phase, StateArgs};
use super::view;
use super::CtlError;
use crate::op::Millis;
use crate::reconcile::host_status::{HostPhase, HostStatus};
use crate::reconcile::status::EnvStatus;
use crate::store::BackupRecord;

/// How wide the MESSAGE column may get before it is cut.
const MESSAGE_WIDTH: usize = 60;
/// A host's last error is wider: a refused host key shows its type and fingerprint.
const HOST_ERROR_WIDTH: usize = 120;

#[derive(Subcommand, Clone, Debug)]
pub enum Get {
    /// Environments as berthd last saw them: revision, phase, last change, message.
    #[command(visible_aliases = ["environment", "env", "envs"])]
    Environments {
        /// Only these environments (all by default).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        state: StateArgs,
        /// How to print the records.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// The catalogued database backups of every environment (or of the ones named).
    #[command(visible_alias = "backup")]
    Backups {
        /// Only the backups of these environments.
        #[arg(value_name = "ENVIRONMENT")]
        names: Vec<String>,
        #[command(flatten)]
        state: StateArgs,
        /// How to print the records.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// The revisions of one environment (the serving one marked), newest last.
    #[command(visible_alias = "revision")]
    Revisions {
        /// The environment.
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// How to print the records.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// The hosts declared in manifests, with what berthd last saw of each (reachable,
    /// Docker version, last error, last seen, round trip) when it has run with --state.
    #[command(visible_alias = "host")]
    Hosts {
        /// A manifest file, or a directory read recursively (*.yaml, *.yml, *.json).
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        file: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// How to print the records.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
}

impl Get {
    /// What to print on stdout. A table with no rows prints nothing; `no_rows` on
    /// stderr says so, as kubectl's "No resources found" does.
    ///
    /// # Errors
    /// See [`StateArgs::select`]; [`CtlError::InvalidManifests`] and
    /// [`CtlError::NoSuchPath`] for `hosts`; [`CtlError::Encode`].
    pub fn run(self, now: Millis) -> Result<String, CtlError> {
        match self {
            Get::Environments {
                names,
                state,
                output,
            } => {
                let envs = state.select(&names)?;
                if envs.is_empty() && output == Output::Table {
                    no_rows(&format!(
                        "No environments found in {}.",
                        state.state.display()
                    ));
                    return Ok(String::new());
                }
                let views: Vec<_> = envs.iter().map(view::environment).collect();
                render(output, &views, || environments_table(&envs, now))
            }
            Get::Backups {
                names,
                state,
                output,
            } => {
                let backups: Vec<BackupRecord> = state
                    .select(&names)?
                    .into_iter()
                    .flat_map(|s| s.backups)
                    .collect();
                if backups.is_empty() && output == Output::Table {
                    no_rows(&format!("No backups found in {}.", state.state.display()));
                    return Ok(String::new());
                }
                let views: Vec<_> = backups.iter().map(view::backup).collect();
                render(output, &views, || backups_table(&backups, now))
            }
            Get::Revisions {
                name,
                state,
                output,
            } => {
                let found = state.select(std::slice::from_ref(&name))?;
                let Some(s) = found.first() else {
                    return Ok(String::new());
                };
                let views = view::environment(s).revisions;
                render(output, &views, || revisions_table(s))
            }
            Get::Hosts {
                file,
                state,
                output,
            } => {
                let m = &load_manifests(&file)?;
                let statuses = state.host_statuses()?;
                match statuses {
                    None => {
                        let hosts: Vec<_> = m.hosts.values().collect();
                        render(output, &hosts, || hosts_table(m))
                    }
                    Some(statuses) => {
                        let hosts = with_status(m, &statuses)?;
                        render(output, &hosts, || hosts_status_table(m, &statuses, now))
                    }
                }
            }
        }
    }
}

/// The manifests at `file`; their errors are printed (with their source lines) first.
///
/// # Errors
/// [`CtlError::NoSuchPath`]; [`CtlError::InvalidManifests`].
pub(super) fn load_manifests(file: &std::path::Path) -> Result<berth_api::Manifests, CtlError> {
    if !file.exists() {
        return Err(CtlError::NoSuchPath(file.to_owned()));
    }
    let loaded = berth_api::load_path(file);
    let errors = loaded.errors().count();
    if errors > 0 {
        eprint!("{}", loaded.sources.render(&loaded.diagnostics, false));
        return Err(CtlError::InvalidManifests {
            path: file.to_owned(),
            errors,
        });
    }
    Ok(loaded.manifests)
}

fn no_rows(message: &str) {
    eprintln!("{message}");
}

/// NAME, REVISION (the serving one), PHASE, UPDATED (age of the last change), MESSAGE.
pub fn environments_table(envs: &[EnvStatus], now: Millis) -> String {
    let mut t = Table::new(["NAME", "REVISION", "PHASE", "UPDATED", "MESSAGE"]);
    for s in envs {
        t.row([
            s.name.clone(),
            or_none(s.state.current),
            phase(s),
            age(now, s.state.updated_at),
            truncate(&output::one_line(&s.state.message), MESSAGE_WIDTH),
        ]);
    }
    t.render()
}

/// REVISION (the serving one marked), IMAGE, HASH, COMMIT, CREATED.
fn revisions_table(s: &EnvStatus) -> String {
    let mut t = Table::new(["REVISION", "IMAGE", "HASH", "COMMIT", "CREATED"]);
    for r in &s.revisions {
        let mark = if s.state.current == Some(r.revision) {
            " (current)"
        } else {
            ""
        };
        t.row([
            format!("{}{mark}", r.revision),
            r.image.clone(),
            short(&r.template_hash, 12).to_owned(),
            or_none(r.commit.as_deref().map(|c| short(c, 12))),
            output::utc(r.created_at),
        ]);
    }
    t.render()
}

/// ENVIRONMENT, ID, REVISION (serving when taken), SIZE, SHA256 (12 digits), AGE, PATH.
pub fn backups_table(backups: &[BackupRecord], now: Millis) -> String {
    let mut t = Table::new([
        "ENVIRONMENT",
        "ID",
        "REVISION",
        "SIZE",
        "SHA256",
        "AGE",
        "PATH",
    ]);
    for b in backups {
        t.row([
            b.env.clone(),
            b.id.clone(),
            or_none(b.revision),
            output::size(b.size),
            short(&b.sha256, 12).to_owned(),
            age(now, b.created_at),
            b.path.clone(),
        ]);
    }
    t.render()
}

/// NAME, ADDRESS, PORTS (the range candidates are published on), MAX-PARALLEL,
/// ENVIRONMENTS (how many the manifests place there).
pub fn hosts_table(m: &berth_api::Manifests) -> String {
    let mut t = Table::new(["NAME", "ADDRESS", "PORTS", "MAX-PARALLEL", "ENVIRONMENTS"]);
    for (name, h) in &m.hosts {
        let envs = m
            .environments
            .values()
            .filter(|e| &e.spec.host == name)
            .count();
        t.row([
            name.clone(),
            h.spec.address.to_string(),
            h.spec.port_range.to_string(),
            h.spec.max_parallel.to_string(),
            envs.to_string(),
        ]);
    }
    t.render()
}

/// The Host resources with a `status` from berthd's file (absent for a host berthd has
/// not seen), for `-o json|yaml`.
fn with_status(
    m: &berth_api::Manifests,
    statuses: &[HostStatus],
) -> Result<Vec<serde_json::Value>, CtlError> {
    let encode = |e: serde_json::Error| CtlError::Encode {
        format: "JSON",
        message: e.to_string(),
    };
    m.hosts
        .iter()
        .map(|(name, h)| {
            let mut v = serde_json::to_value(h).map_err(encode)?;
            if let (Some(obj), Some(st)) =
                (v.as_object_mut(), statuses.iter().find(|s| &s.name == name))
            {
                obj.insert("status".into(), serde_json::to_value(st).map_err(encode)?);
            }
            Ok(v)
        })
        .collect()
}

/// NAME, ADDRESS, REACHABLE, DOCKER (engine version), LAST-SEEN (age), RTT,
/// ENVIRONMENTS, LAST-ERROR — what berthd last saw of each host of the manifests.
pub fn hosts_status_table(
    m: &berth_api::Manifests,
    statuses: &[HostStatus],
    now: Millis,
) -> String {
    let mut t = Table::new([
        "NAME",
        "ADDRESS",
        "REACHABLE",
        "DOCKER",
        "LAST-SEEN",
        "RTT",
        "ENVIRONMENTS",
        "LAST-ERROR",
    ]);
    for (name, h) in &m.hosts {
        let envs = m
            .environments
            .values()
            .filter(|e| &e.spec.host == name)
            .count();
        let st = statuses.iter().find(|s| &s.name == name);
        let reachable = match st.map(|s| s.state) {
            None => "<unknown>".to_owned(),
            Some(HostPhase::Reachable) => "yes".to_owned(),
            Some(HostPhase::Connecting) => "connecting".to_owned(),
            Some(HostPhase::Unreachable) => "no".to_owned(),
        };
        let last_seen = st
            .and_then(|s| s.last_seen.as_deref())
            .and_then(parse_utc)
            .map_or_else(|| NONE.to_owned(), |at| age(now, at));
        t.row([
            name.clone(),
            h.spec.address.to_string(),
            reachable,
            or_none(st.and_then(|s| s.docker_version.clone())),
            last_seen,
            or_none(st.and_then(|s| s.rtt_ms).map(|ms| format!("{ms:.1}ms"))),
            envs.to_string(),
            truncate(
                &output::one_line(st.and_then(|s| s.last_error.as_deref()).unwrap_or(NONE)),
                HOST_ERROR_WIDTH,
            ),
        ]);
    }
    t.render()
}
