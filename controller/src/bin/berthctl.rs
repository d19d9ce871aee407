//! `berthctl`: the command-line client. Each command lives in `berth_controller::ctl`;
//! this is the dispatch. Exit codes: 0 ok, 1 errors, 2 usage.

use std::process::ExitCode;

use berth_controller::ctl::describe::Describe;
use berth_controller::ctl::get::Get;
use berth_controller::ctl::output::{emit, now_millis};
use berth_controller::ctl::trust::Trust;
use berth_controller::ctl::validate::Validate;
use berth_controller::ctl::CtlError;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Drive Berth: validate manifests, inspect and steer rollouts"
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
    /// List environments, backups or hosts (environments and backups as berthd last wrote
    /// them under --state).
    #[command(subcommand)]
    Get(Get),
    /// Show one environment in detail: state, operation and steps, revisions, backups,
    /// events.
    #[command(subcommand)]
    Describe(Describe),
    /// SSH hosts: `trust NAME -f MANIFESTS [--yes]` records the key the host offers in its
    /// knownHostsFile, after showing its fingerprint and only when confirmed.
    #[command(subcommand)]
    Hosts(Hosts),
}

#[derive(Subcommand)]
enum Hosts {
    /// Fetch the host's key, show its fingerprint, record it when confirmed.
    Trust(Trust),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(v) => v.run(),
        Command::Schema => schema(),
        Command::Get(g) => g.run(now_millis()),
        Command::Describe(d) => d.run(now_millis()),
        Command::Hosts(Hosts::Trust(t)) => t.run(),
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
