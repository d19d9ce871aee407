//! `berthctl`: the command-line client. Each command lives in `berth_controller::ctl`;
//! this is the dispatch.

use std::process::ExitCode;

use berth_controller::ctl::apply::{Apply, Delete, Diff};
use berth_controller::ctl::describe::Describe;
use berth_controller::ctl::docs;
use berth_controller::ctl::events::{Events, Logs};
use berth_controller::ctl::get::Get;
use berth_controller::ctl::output::{emit, now_millis};
use berth_controller::ctl::rollout::{Approve, Rollout};
use berth_controller::ctl::validate::Validate;
use berth_controller::ctl::CtlError;
use clap::{CommandFactory, Parser, Subcommand};

const AFTER_HELP: &str = "\
berthctl finds berthd by itself: --socket PATH, else $BERTH_SOCKET, else
<--state DIR>/berthd.sock (the state directory defaults to .berth, as berthd's does).
get and describe read berthd's last status files when berthd is not running.

Exit codes:
  0  succeeded (with --wait / -w: the desired revision serves)
  1  failed, refused by berthd, or (with --wait / -w) the rollout failed or rolled back
  2  usage error
  3  berthd unreachable
  4  timed out waiting (--timeout)";

#[derive(Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Drive Berth: validate manifests, inspect and steer rollouts",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests (a file or a directory) and report every error at once.
    Validate(Validate),
    /// Print the JSON Schema of a manifest document (for yaml-language-server and editors).
    Schema,
    /// List environments, revisions, backups or hosts.
    #[command(subcommand)]
    Get(Get),
    /// Show one environment in detail: state, owner, operation and steps, revisions,
    /// backups, events.
    #[command(subcommand)]
    Describe(Describe),
    /// Apply Environments from a file: the journal owns them from then on.
    Apply(Apply),
    /// What `apply` would change, field by field, and the rollout it would start.
    Diff(Diff),
    /// Stop owning an applied environment (its containers keep running unless --prune).
    Delete(Delete),
    /// Release a rollout waiting for approval (`approval: Required`).
    Approve(Approve),
    /// Follow, undo, pause, resume, retry or abort rollouts.
    #[command(subcommand)]
    Rollout(Rollout),
    /// Recent events; -w keeps printing them.
    Events(Events),
    /// The replicas' container logs, prefixed by replica (secrets redacted).
    Logs(Logs),
    /// Print a shell completion script.
    ///
    /// bash: `berthctl completion bash > /etc/bash_completion.d/berthctl`; zsh: into a
    /// directory of $fpath as `_berthctl`; fish: `~/.config/fish/completions/berthctl.fish`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (berthctl.1 and one per subcommand) into a directory.
    ///
    /// Such as /usr/local/share/man/man1; `berthd man DIR` writes berthd's.
    Man { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(v) => v.run(),
        Command::Schema => schema(),
        Command::Get(g) => g.run(now_millis()),
        Command::Describe(d) => d.run(now_millis()),
        Command::Apply(a) => a.run(),
        Command::Diff(d) => d.run(),
        Command::Delete(d) => d.run(),
        Command::Approve(a) => a.run(),
        Command::Rollout(r) => r.run(),
        Command::Events(e) => e.run(),
        Command::Logs(l) => l.run(),
        Command::Completion { shell } => Ok(docs::completion(Cli::command(), shell)),
        Command::Man { dir } => docs::man_pages(Cli::command(), &dir),
    };
    match result.and_then(|out| emit(&out).map_err(CtlError::Write)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_reported() {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn schema() -> Result<String, CtlError> {
    serde_json::to_string_pretty(&berth_api::json_schema())
        .map(|s| s + "\n")
        .map_err(|e| CtlError::Encode {
            format: "JSON",
            message: e.to_string(),
        })
}
