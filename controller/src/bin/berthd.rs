//! `berthd`: the controller daemon.
//!
//! The reconciliation engine is not built yet. Until it is, berthd checks its manifests
//! and refuses to start, rather than pretend to reconcile.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "berthd", version, about = "The Berth controller daemon")]
struct Args {
    /// The desired-state directory (or file).
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let loaded = berth_api::load_path(&args.manifests);
    if loaded.has_errors() {
        eprint!("{}", loaded.sources.render(&loaded.diagnostics, false));
        return ExitCode::FAILURE;
    }
    eprintln!(
        "berthd: {} is valid, but the reconciliation engine is not built yet; not starting",
        args.manifests.display()
    );
    ExitCode::from(2)
}
