//! The demo app every Berth test deploys: a small HTTP service over PostgreSQL, with
//! versioned migrations and deliberately bad builds. See `USAGE` below.

mod config;
mod db;
mod http;
mod migrate;

use std::process::ExitCode;

const USAGE: &str = "\
demo-app: the app Berth's tests deploy

usage: demo-app [serve]    serve HTTP on 0.0.0.0:$PORT (the default)
       demo-app migrate    apply this build's migrations to $DATABASE_URL, then exit
       demo-app --help

environment:
  PORT              port to listen on (default 8080)
  DATABASE_URL      postgres://user:pass@host:port/db (host: name or IP)
  DEMO_VERSION      v1 | v2 | v3 (baked into the image)
  DEMO_FAULT        none | never-ready | migration-fails | crash-after (baked into the image)
  DEMO_CRASH_AFTER  seconds of uptime before crash-after exits with status 1 (default 15)

endpoints: GET /health, GET /ready, GET /version, POST /rows, GET /rows/count, GET /rows/{id}
";

enum Command {
    Serve,
    Migrate,
}

// One thread is plenty for a demo service, and keeps the static binary lean.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["serve"] => Command::Serve,
        ["migrate"] => Command::Migrate,
        ["-h" | "--help" | "help"] => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprint!("demo-app: unexpected arguments {args:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = match config::Config::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("demo-app: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Serve => http::serve(cfg).await,
        Command::Migrate => migrate::run(&cfg).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}
