//! `berthd`: the controller daemon. Keeps what runs on each host equal to the manifests.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use berth_api::values::Duration as BerthDuration;
use berth_controller::api::server::{self, ListenError, Token};
use berth_controller::api::types::SourceError;
use berth_controller::api::{App, Limits};
use berth_controller::ctl::docs;
use berth_controller::notify::{Notifier, NotifierOptions, UreqTransport};
use berth_controller::reconcile::Controller;
use berth_controller::store::Store;
use berth_controller::{source, systemd};
use clap::{CommandFactory, Parser, ValueEnum};
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "The Berth controller daemon",
    long_about = "The Berth controller daemon: keeps what runs on each Docker host equal to the \
manifests, through idempotent, journaled steps; a crash at any instant resumes where it stopped.",
    after_long_help = "Environment: BERTH_LOG filters the log (default info); NOTIFY_SOCKET, set by \
systemd for Type=notify, receives READY=1 once the journal is open and the manifests are loaded \
(examples/berthd.service). Signals: SIGTERM or SIGINT finishes the steps under way and exits 0. \
`berthd completion SHELL` prints a shell completion script, `berthd man DIR` writes this page."
)]
struct Args {
    /// The desired-state directory (or file).
    #[arg(long, value_name = "DIR")]
    manifests: PathBuf,
    /// Reload the manifests when they change (debounced).
    #[arg(long)]
    watch: bool,
    /// Where the journal lives.
    #[arg(long, value_name = "DIR", default_value = ".berth")]
    state: PathBuf,
    /// How often every environment is looked at without a trigger.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    resync: BerthDuration,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Remove the containers of an environment whose manifest leaves the directory
    /// (listed first, as an event). Without it, such an environment keeps running.
    #[arg(long)]
    prune: bool,
    /// The API's unix socket (mode 0600). Default: <state>/berthd.sock.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve the API on TCP at this address (such as 127.0.0.1:7543); needs
    /// --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    listen: Option<String>,
    /// A file holding the bearer token TCP clients must send (never on the command line).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    // `berthd completion SHELL`, `berthd man DIR`: from the definition above.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = docs::answer_docs_request(Args::command(), &argv) {
        return code;
    }
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berthd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Checked before anything else: a TCP API without a token is refused at start.
    let token = match (&args.listen, &args.token_file) {
        (Some(_), Some(f)) => match Token::from_file(f) {
            Ok(t) => Some(std::sync::Arc::new(t)),
            Err(e) => {
                error!("{e}; not starting");
                return ExitCode::FAILURE;
            }
        },
        (Some(_), None) => {
            error!("{}; not starting", ListenError::NoToken);
            return ExitCode::FAILURE;
        }
        (None, _) => None,
    };
    let snapshot = match source::load(&args.manifests) {
        Ok(s) => s,
        Err(loaded) => {
            eprint!("{}", loaded.sources.render(&loaded.diagnostics, false));
            error!(
                "{}: invalid manifests; not starting",
                args.manifests.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let store = match Store::open(&args.state) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot open the state in {}: {e}", args.state.display());
            return ExitCode::FAILURE;
        }
    };
    for r in store.repairs() {
        warn!("journal repaired on open: {r:?}");
    }
    info!(
        manifests = %args.manifests.display(),
        state = %args.state.display(),
        commit = snapshot.commit.as_deref().unwrap_or("-"),
        "berthd starting: {} hosts, {} environments",
        snapshot.manifests.hosts.len(),
        snapshot.manifests.environments.len()
    );
    let resync: Duration = args.resync.0.max(Duration::from_secs(1));
    let manifests_path = args.manifests.display().to_string();
    let commit = snapshot.commit.clone();
    // Webhooks on their own tasks, from the journal: nothing here waits for them.
    let _notifier = Notifier::start(
        store.clone(),
        Arc::new(UreqTransport),
        NotifierOptions::default(),
    );
    let ctl = Controller::new(store, snapshot, resync);
    ctl.set_prune(args.prune);
    ctl.set_source(&manifests_path, Ok(commit.as_deref()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state.join("berthd.sock"));
    let app = App::new(ctl.clone(), Limits::default());
    // The state directory is berthd's alone: made private; a socket elsewhere is not.
    match server::bind_unix(&socket, args.socket.is_none()) {
        Ok(l) => {
            info!(socket = %socket.display(), "API listening on the unix socket");
            tokio::spawn(server::serve_unix(l, app.clone(), stop_rx.clone()));
        }
        Err(e) => {
            error!("{e}; not starting");
            return ExitCode::FAILURE;
        }
    }
    if let (Some(addr), Some(token)) = (&args.listen, token) {
        match server::bind_tcp(addr).await {
            Ok(l) => {
                info!(addr, "API listening on TCP (bearer token required)");
                tokio::spawn(server::serve_tcp(l, app.clone(), token, stop_rx.clone()));
            }
            Err(e) => {
                error!("{e}; not starting");
                return ExitCode::FAILURE;
            }
        }
    }

    let _watch = if args.watch {
        match source::watch(&args.manifests, Duration::from_millis(200)) {
            Ok(w) => {
                let ctl = ctl.clone();
                let dir = args.manifests.clone();
                let path = manifests_path.clone();
                tokio::spawn(async move {
                    // Moved whole: the watcher inside must live as long as this task (a
                    // capture of `w.changes` alone would drop it and end the watch).
                    let mut w = w;
                    while w.changes.recv().await.is_some() {
                        match source::load_off_runtime(dir.clone()).await {
                            Ok(s) => {
                                info!(
                                    commit = s.commit.as_deref().unwrap_or("-"),
                                    "manifests reloaded"
                                );
                                ctl.set_source(&path, Ok(s.commit.as_deref()));
                                ctl.set_desired(s);
                            }
                            Err(loaded) => {
                                // Keep what runs: a broken edit is reported, not applied.
                                let errors: Vec<String> =
                                    loaded.errors().map(|d| d.to_string()).collect();
                                let commit = source::git_commit(&dir);
                                ctl.set_source(
                                    &path,
                                    Err(SourceError {
                                        errors: errors.clone(),
                                        since: berth_controller::reconcile::now_millis(),
                                        commit,
                                    }),
                                );
                                warn!("manifests changed but are invalid; keeping the previous desired state:\n{}", errors.join("\n"));
                            }
                        }
                    }
                });
                Some(())
            }
            Err(e) => {
                error!("cannot watch {}: {e}", args.manifests.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    // Listening for SIGTERM before READY=1 is sent: a stop asked for right after the
    // service manager hears "ready" must find the handler, not the default action.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen for SIGTERM: {e}; not starting");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        }
        let _ = systemd::notify("STOPPING=1");
        let _ = stop_tx.send(true);
    });
    // Under systemd (Type=notify): the journal is open and the manifests are loaded.
    match systemd::notify("READY=1") {
        Ok(true) => info!("told the service manager berthd is ready"),
        Ok(false) => {}
        Err(e) => warn!("cannot tell the service manager berthd is ready: {e}"),
    }
    ctl.run(stop_rx).await;
    let _ = std::fs::remove_file(&socket);
    info!("stopped; the journal is resumable");
    ExitCode::SUCCESS
}
