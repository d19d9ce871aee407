//! The operations kit: shell completions and man pages generated from the binaries' own
//! clap definitions, the systemd unit in examples/, and berthd's readiness notification.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const BERTHCTL: &str = env!("CARGO_BIN_EXE_berthctl");
const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// The subcommands `berthctl --help` lists (whatever they are by now).
fn subcommands() -> Vec<String> {
    let help = text(&run(BERTHCTL, &["--help"]).stdout);
    help.split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn berthctl_prints_completions_for_bash_zsh_and_fish_naming_every_subcommand() {
    let subs = subcommands();
    assert!(subs.contains(&"validate".to_owned()), "{subs:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = run(BERTHCTL, &["completion", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in &subs {
            assert!(script.contains(sub.as_str()), "{shell} misses {sub}");
        }
    }
    let bad = run(BERTHCTL, &["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn berthctl_and_berthd_write_a_man_page_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(BERTHCTL, &["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for sub in subcommands() {
        let page = dir.path().join(format!("berthctl-{sub}.1"));
        assert!(page.exists(), "no page for {sub}: {}", text(&out.stdout));
    }
    let nested = std::fs::read_to_string(dir.path().join("berthctl-get-environments.1")).unwrap();
    assert!(nested.contains(".SH NAME"), "{nested}");

    let out = run(BERTHD, &["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("berthd.1")).unwrap();
    assert!(page.contains("NOTIFY_SOCKET"), "{page}");
    assert!(page.contains("\\-\\-manifests"), "{page}");
    let out = run(BERTHD, &["completion", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--manifests"));
}

#[test]
fn berthd_tells_the_socket_in_notify_socket_it_is_ready_and_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("hosts.yaml"),
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n",
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BERTHD)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("berthd starts");
    let mut buf = [0u8; 256];
    let got = socket.recv(&mut buf).map(|n| text(&buf[..n]));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = socket.recv(&mut buf).map(|n| text(&buf[..n]));
    let status = child.wait().unwrap();
    assert_eq!(got.expect("a datagram from berthd"), "READY=1");
    assert_eq!(stopping.expect("a second datagram"), "STOPPING=1");
    assert!(status.success(), "{status}");
}

#[test]
#[ignore = "needs systemd-analyze: hack/lab up installs systemd"]
fn the_systemd_unit_in_examples_passes_systemd_analyze_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unit = std::fs::read_to_string(root.join("examples/berthd.service")).unwrap();
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    // Every flag the unit passes is one berthd has.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let help = text(&run(BERTHD, &["--help"]).stdout);
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "berthd has no {flag}");
    }
    // systemd checks the unit itself, with the binary and the man page it names in place.
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    assert!(run(BERTHD, &["man", man.to_str().unwrap()])
        .status
        .success());
    let file = dir.path().join("berthd.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/berthd", BERTHD)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze runs");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
