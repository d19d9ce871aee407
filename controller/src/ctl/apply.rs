//! `berthctl apply -f PATH [--dry-run] [--force] [--wait]`, `berthctl diff -f PATH` and
//! `berthctl delete NAME [--prune]`: environments whose desired state the journal owns.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;

use super::output::{render, Output};
use super::progress::follow;
use super::rollout::Wait;
use super::state::StateArgs;
use super::CtlError;
use crate::api::types::{
    ApplyReply, ApplyRequest, DeleteReply, EnvChange, FieldChange, ManifestFile,
};

#[derive(Args, Clone, Debug)]
pub struct Apply {
    /// A manifest file of Environments (YAML or JSON; Hosts come from berthd's
    /// directory), or a directory of them (applied together: all or none).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub file: PathBuf,
    /// Show what would change and the rollout it would start; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Take over environments the manifest directory owns (recorded as an event).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: Wait,
    #[command(flatten)]
    pub state: StateArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

impl Apply {
    pub fn run(self) -> Result<String, CtlError> {
        let req = request(&self.file, self.force, self.dry_run)?;
        let client = self.state.client();
        let reply: ApplyReply = client.post("/v1/apply", &req)?;
        let text = render(self.output, &reply, || changes_text(&reply))?;
        if !self.wait.wait || self.dry_run {
            return Ok(text);
        }
        eprint!("{text}");
        let mut out = String::new();
        for env in &reply.environments {
            out.push_str(&follow(&client, &env.name, self.wait.timeout.0)?);
        }
        Ok(out)
    }
}

#[derive(Args, Clone, Debug)]
pub struct Diff {
    /// A manifest file of Environments, or a directory of them.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

impl Diff {
    pub fn run(self) -> Result<String, CtlError> {
        // A diff shows what `--force` would take over rather than refusing.
        let req = request(&self.file, true, true)?;
        let reply: ApplyReply = self.state.client().post("/v1/diff", &req)?;
        render(self.output, &reply, || changes_text(&reply))
    }
}

#[derive(Args, Clone, Debug)]
pub struct Delete {
    /// An environment applied with `berthctl apply`.
    pub name: String,
    /// Also remove its containers (without it, they keep running and are listed).
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

impl Delete {
    pub fn run(self) -> Result<String, CtlError> {
        let path = format!(
            "/v1/environments/{}{}",
            self.name,
            if self.prune { "?prune=true" } else { "" }
        );
        let reply: DeleteReply = self.state.client().delete(&path)?;
        let mut out = format!("{}: {}\n", reply.environment, reply.message);
        if !reply.would_prune.is_empty() {
            out.push_str(if reply.pruned {
                "pruning:\n"
            } else {
                "pruning (--prune) would remove:\n"
            });
            for c in &reply.would_prune {
                out.push_str(&format!("  {c}\n"));
            }
        }
        Ok(out)
    }
}

/// The request for a file, or for every manifest file under a directory (applied
/// together: all or none).
fn request(path: &Path, force: bool, dry_run: bool) -> Result<ApplyRequest, CtlError> {
    if !path.exists() {
        return Err(CtlError::NoSuchPath(path.to_owned()));
    }
    let read = |f: &Path| {
        std::fs::read_to_string(f)
            .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", f.display())))
    };
    if !path.is_dir() {
        return Ok(ApplyRequest {
            manifests: read(path)?,
            source: Some(path.display().to_string()),
            force,
            dry_run,
            files: Vec::new(),
        });
    }
    // The same files `validate` and berthd read: *.yaml, *.yml, *.json, hidden skipped.
    let files = berth_api::load_path(path)
        .files
        .iter()
        .map(|f| {
            Ok(ManifestFile {
                source: f.display().to_string(),
                manifests: read(f)?,
            })
        })
        .collect::<Result<Vec<_>, CtlError>>()?;
    if files.is_empty() {
        return Err(CtlError::Usage(format!(
            "{}: no manifest file (*.yaml, *.yml, *.json) in it",
            path.display()
        )));
    }
    Ok(ApplyRequest {
        manifests: String::new(),
        source: Some(path.display().to_string()),
        force,
        dry_run,
        files,
    })
}

/// What changed, field by field, and the rollout it starts; coloured on a TTY.
pub fn changes_text(reply: &ApplyReply) -> String {
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = String::new();
    for env in &reply.environments {
        out.push_str(&env_text(env, colour));
    }
    if reply.dry_run {
        out.push_str("(dry run: nothing was changed)\n");
    }
    out
}

fn env_text(env: &EnvChange, colour: bool) -> String {
    let paint = |code: &str, s: String| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s
        }
    };
    let mut out = format!("environment/{} {}", env.name, env.action);
    if env.took_over {
        out.push_str(" (taken over from the manifest directory)");
    }
    out.push('\n');
    // A new environment's every field is new: the rollout says what matters.
    let fields = if env.action == "created" {
        &[][..]
    } else {
        &env.changes[..]
    };
    for FieldChange { path, from, to } in fields {
        let show = |v: &Option<serde_json::Value>| {
            v.as_ref().map_or("<none>".to_owned(), |v| v.to_string())
        };
        out.push_str(&format!(
            "  {path}: {} → {}\n",
            paint("31", show(from)),
            paint("32", show(to))
        ));
    }
    match &env.rollout {
        None => out.push_str("  rollout: none (the serving revision's template is unchanged)\n"),
        Some(r) => {
            let from = r.from_revision.map_or("first deployment".to_owned(), |f| {
                format!("from revision {f}")
            });
            out.push_str(&format!(
                "  rollout: {from} to {}: {}\n  migration: {}; backup: {}{}\n",
                r.image,
                r.steps.join(" → "),
                r.migration,
                if r.backup { "yes" } else { "no" },
                if r.approval_required {
                    "; waits for `berthctl approve`"
                } else {
                    ""
                }
            ));
        }
    }
    out
}
