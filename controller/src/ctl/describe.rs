//! `berthctl describe environment NAME`: everything berthd's status file says about one
//! environment, in sections for humans (state, operation and its steps, revisions,
//! backups, events). `describe host` is in [`super::describe_host`].

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Subcommand;

use super::output::{self, or_none, render, short, utc, when, Output, Table, NONE};
use super::state::{phase, split_steps, StateArgs};
use super::CtlError;
use super::{describe_host, view};
use crate::op::{Millis, Outcome};
use crate::reconcile::status::{EnvStatus, OpStatus, StepLine};

#[derive(Subcommand, Clone, Debug)]
pub enum Describe {
    /// One environment: its state, its active (or last) operation step by step, its
    /// revisions, backups and recent events.
    #[command(visible_aliases = ["environments", "env", "envs"])]
    Environment {
        /// The environment's name (its `metadata.name`).
        name: String,
        #[command(flatten)]
        state: StateArgs,
        /// How to print it: sections for humans, or the record as JSON or YAML.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// One host of the manifests: its address, socket, key files, ports and parallelism
    /// (never secrets), where berthd stands with it (reachable, last seen, Docker version,
    /// round trip, the last error in full) and each environment on it.
    #[command(visible_alias = "hosts")]
    Host {
        /// The host's name (its `metadata.name`).
        name: String,
        /// A manifest file, or a directory read recursively (*.yaml, *.yml, *.json).
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        file: PathBuf,
        #[command(flatten)]
        state: StateArgs,
        /// How to print it: sections for humans, or the record as JSON or YAML.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
}

impl Describe {
    /// # Errors
    /// See [`StateArgs::select`] (an unknown name lists the known ones) and
    /// [`describe_host::host_view`].
    pub fn run(self, now: Millis) -> Result<String, CtlError> {
        match self {
            Describe::Environment {
                name,
                state,
                output,
            } => {
                let found = state.select(std::slice::from_ref(&name))?;
                // `select` answers one status per name, or an error.
                let Some(s) = found.first() else {
                    return Ok(String::new());
                };
                render(output, &view::environment(s), || environment(s, now))
            }
            Describe::Host {
                name,
                file,
                state,
                output,
            } => {
                let v = describe_host::host_view(&name, &file, &state)?;
                render(output, &v, || describe_host::host(&v, now))
            }
        }
    }
}

/// A `Key:  value` block, values aligned after the longest key.
pub(super) struct Fields {
    indent: &'static str,
    rows: Vec<(&'static str, String)>,
}

impl Fields {
    pub(super) fn new(indent: &'static str) -> Fields {
        Fields {
            indent,
            rows: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.rows.push((key, value.into()));
        self
    }

    pub(super) fn render(&self, out: &mut String) {
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.len() + 1)
            .max()
            .unwrap_or(0);
        for (k, v) in &self.rows {
            let key = format!("{k}:");
            let line = format!("{}{key:<width$}  {}", self.indent, output::one_line(v));
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// The description of one environment, ending with a newline.
pub fn environment(s: &EnvStatus, now: Millis) -> String {
    let st = &s.state;
    let mut out = String::new();
    Fields::new("")
        .add("Name", s.name.clone())
        .add("Phase", phase(s))
        .add("Revision", or_none(st.current))
        .add("Commit", or_none(st.commit.as_deref()))
        .add("Paused", st.paused.to_string())
        .add(
            "Approved",
            or_none(st.approved_hash.as_deref().map(|h| short(h, 12))),
        )
        .add(
            "Failed",
            match &st.failed {
                None => NONE.to_owned(),
                Some(f) => format!(
                    "template {} at {}: {}",
                    short(&f.template_hash, 12),
                    utc(f.at),
                    f.reason
                ),
            },
        )
        .add("Message", st.message.clone())
        .add("Updated", when(now, st.updated_at))
        .add(
            "Pinned",
            or_none(
                st.pin
                    .as_ref()
                    .map(|p| format!("revision {} (rollout undo)", p.revision)),
            ),
        )
        .add("Owner", owner_line(s))
        .render(&mut out);
    if let Some(note) = s.owner.as_ref().and_then(|o| o.note.as_ref()) {
        let _ = writeln!(out, "Source:     {note}");
    }

    out.push('\n');
    match &s.operation {
        None => out.push_str("Operation:  <none>\n"),
        Some(op) => operation(op, &mut out),
    }

    out.push('\n');
    section(&mut out, "Revisions", {
        let mut t = Table::new(["REVISION", "IMAGE", "DIGEST", "HASH", "COMMIT", "CREATED"]);
        for r in &s.revisions {
            let mark = if st.current == Some(r.revision) {
                " (current)"
            } else {
                ""
            };
            t.row([
                format!("{}{mark}", r.revision),
                r.image.clone(),
                // What the containers run: the digest pulled (the tag may have moved).
                or_none(
                    r.repo_digest
                        .as_deref()
                        .and_then(|d| d.split_once('@'))
                        .map(|(_, d)| d),
                ),
                short(&r.template_hash, 12).to_owned(),
                or_none(r.commit.as_deref()),
                utc(r.created_at),
            ]);
        }
        t
    });

    out.push('\n');
    section(&mut out, "Backups", {
        let mut t = Table::new(["ID", "REVISION", "PATH", "SIZE", "SHA256", "CREATED"]);
        for b in &s.backups {
            t.row([
                b.id.clone(),
                or_none(b.revision),
                b.path.clone(),
                output::size(b.size),
                short(&b.sha256, 12).to_owned(),
                utc(b.created_at),
            ]);
        }
        t
    });

    out.push('\n');
    section(&mut out, "Events", {
        let mut t = Table::new(["TIME", "KIND", "REASON", "MESSAGE"]);
        for e in &s.events {
            t.row([
                utc(e.at),
                format!("{:?}", e.kind),
                e.reason.clone(),
                e.message.clone(),
            ]);
        }
        t
    });
    out
}

/// Who owns the desired state: `directory (manifests/env.yaml:3, commit abc+dirty)`.
fn owner_line(s: &EnvStatus) -> String {
    let Some(o) = &s.owner else {
        return "unknown (read from status files: berthd is not running)".into();
    };
    let mut parts = Vec::new();
    if let Some(f) = &o.file {
        parts.push(f.clone());
    }
    if let Some(c) = &o.commit {
        parts.push(format!(
            "commit {}{}",
            short(c, 12),
            if o.dirty { " (dirty tree)" } else { "" }
        ));
    }
    if let Some(f) = &o.took_over_from {
        parts.push(format!("taken over from {f}"));
    }
    if parts.is_empty() {
        o.by.clone()
    } else {
        format!("{} ({})", o.by, parts.join(", "))
    }
}

fn section(out: &mut String, title: &str, table: Table) {
    if table.is_empty() {
        let _ = writeln!(out, "{title}:  {NONE}");
    } else {
        let _ = writeln!(out, "{title}:");
        out.push_str(&table.render_indented("  "));
    }
}

fn operation(op: &OpStatus, out: &mut String) {
    out.push_str("Operation:\n");
    let outcome = match &op.outcome {
        None => "<in progress>".to_owned(),
        Some(Outcome::Succeeded) => "Succeeded".to_owned(),
        Some(Outcome::Superseded) => "Superseded".to_owned(),
        Some(Outcome::RolledBack { reason }) => format!("RolledBack: {reason}"),
        Some(Outcome::Failed { reason }) => format!("Failed: {reason}"),
    };
    let mut f = Fields::new("  ");
    f.add("ID", op.id.clone())
        .add("Revision", format!("{} → {}", or_none(op.from), op.to))
        .add("Reason", op.reason.clone())
        .add("Phase", op.phase.clone())
        .add("Outcome", outcome);
    if let Some(r) = &op.rollback_reason {
        f.add("Rollback reason", r.clone());
    }
    f.render(out);
    let (current, forward) = split_steps(op);
    if forward.is_empty() {
        steps(out, "Steps", current);
    } else {
        steps(out, "Rollback steps", current);
        steps(out, "Forward steps", forward);
    }
}

fn steps(out: &mut String, title: &str, lines: &[StepLine]) {
    let mut t = Table::new(["STEP", "STATE", "DETAIL"]);
    for l in lines {
        t.row([l.step.clone(), l.state.clone(), l.detail()]);
    }
    if t.is_empty() {
        let _ = writeln!(out, "  {title}:  {NONE}");
    } else {
        let _ = writeln!(out, "  {title}:");
        out.push_str(&t.render_indented("    "));
    }
}
