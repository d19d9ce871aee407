//! `berthctl`: the command-line client.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    Validate {
        /// A manifest file, or a directory read recursively (*.yaml, *.yml, *.json).
        #[arg(short = 'f', long = "filename", value_name = "PATH")]
        file: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the JSON Schema of a manifest document (for yaml-language-server and editors).
    Schema,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file, output } => validate(file, output),
        Command::Schema => {
            let schema = berth_api::json_schema();
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate(path: PathBuf, output: Output) -> ExitCode {
    if !path.exists() {
        eprintln!("error: {}: no such file or directory", path.display());
        return ExitCode::from(2);
    }
    let loaded = berth_api::load_path(&path);
    let errors = loaded.errors().count();
    let warnings = loaded.diagnostics.len() - errors;
    match output {
        Output::Json => match serde_json::to_string_pretty(&loaded.diagnostics) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Output::Table => {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            eprint!("{}", loaded.sources.render(&loaded.diagnostics, color));
        }
    }
    let files = loaded.files.len();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    if errors > 0 {
        eprintln!(
            "{}: {} found, {} in {}",
            path.display(),
            plural(errors, "error"),
            plural(warnings, "warning"),
            plural(files, "file")
        );
        return ExitCode::FAILURE;
    }
    let m = &loaded.manifests;
    let summary = format!(
        "{}: valid: {}, {} in {}{}",
        path.display(),
        plural(m.hosts.len(), "host"),
        plural(m.environments.len(), "environment"),
        plural(files, "file"),
        if warnings > 0 {
            format!(" ({})", plural(warnings, "warning"))
        } else {
            String::new()
        }
    );
    match output {
        Output::Json => eprintln!("{summary}"),
        Output::Table => println!("{summary}"),
    }
    ExitCode::SUCCESS
}
