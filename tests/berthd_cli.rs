//! berthd as a process: what it writes where a person or a log collector reads it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// berthd on a manifest directory with one Host and no environment, its stderr a pipe: the log lines it writes
/// until it is stopped.
fn log_of_berthd_into_a_pipe() -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("the manifest dir");
    // A valid desired state with nothing to deploy: berthd starts, logs, and idles.
    std::fs::write(
        manifests.join("hosts.yaml"),
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n",
    )
    .expect("a Host manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berthd"))
        .arg("--manifests")
        .arg(&manifests)
        .arg("--state")
        .arg(dir.path().join("state"))
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berthd starts");
    // It logs its start at once; give it a moment, then stop it the way an operator does.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("reading the log");
    let _ = child.wait();
    log
}

#[test]
fn logs_written_to_a_pipe_carry_no_ansi_colour_codes() {
    let log = log_of_berthd_into_a_pipe();
    assert!(log.contains("berthd starting"), "{log}");
    assert!(!log.contains('\u{1b}'), "an escape code in: {log:?}");
}
