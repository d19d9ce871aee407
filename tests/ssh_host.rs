//! `SshHost` against a real sshd (Debian's openssh-server) of each test's own, in front of
//! this machine's Docker engine, as the lab's "VMs" are.
//!
//! They need root, sshd and the lab's images and database: ignored by default
//! (`hack/lab up && cargo test -p berth-controller --test ssh_host -- --include-ignored`).
//! One at a time (a lock), so that the memory measured is this transfer's alone.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::HostSpec;
use berth_controller::host::ssh::SshHost;
use berth_controller::host::{Host, HostError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/mod.rs"]
mod support;

use support::cmd::{run_ok, sha256sum};
use support::lab::DB_CONTAINER;
use support::sshd::Sshd;

/// An async lock: each test holds it across its awaits (and a panic poisons nothing).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Host spec of `sshd`, from a manifest as a user writes it.
fn spec(sshd: &Sshd) -> HostSpec {
    let text = format!(
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: vm}}\nspec: {}\n",
        sshd.host_spec("")
    );
    let m = berth_api::load_texts(vec![("host.yaml".into(), text)])
        .into_manifests()
        .unwrap_or_else(|l| panic!("an invalid Host manifest: {:?}", l.diagnostics));
    m.hosts["vm"].spec.clone()
}

async fn connect(sshd: &Sshd) -> SshHost {
    SshHost::connect("vm", &spec(sshd))
        .await
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()))
}

async fn refusal(sshd: &Sshd) -> String {
    match SshHost::connect("vm", &spec(sshd)).await {
        Ok(_) => panic!("connected to a host whose key is not trusted"),
        Err(e @ HostError::Unreachable { .. }) => e.to_string(),
        Err(e) => panic!("not an unreachable host: {e}"),
    }
}

#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn docker_commands_files_and_tcp_all_go_through_two_ssh_logins() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    let host = connect(&sshd).await;
    let version = host.engine_version().await.expect("docker version");
    assert!(!version.is_empty());
    host.list_all().await.expect("containers listed");

    let out = host
        .run("echo out; echo err >&2; exit 3")
        .await
        .expect("runs");
    assert_eq!(
        (out.exit_code, out.stdout.trim(), out.stderr.trim()),
        (3, "out", "err")
    );

    // Files: written whole with exactly the mode asked for, read, measured, removed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/sub/upstream.conf");
    let p = path.to_str().unwrap();
    host.write_file(p, b"first", 0o640).await.expect("write");
    host.write_file(p, b"server 127.0.0.1:1;\n", 0o640)
        .await
        .expect("overwrite");
    assert_eq!(
        host.read_file(p).await.unwrap().as_deref(),
        Some(&b"server 127.0.0.1:1;\n"[..])
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let (size, digest) = host.file_digest(p).await.unwrap().expect("present");
    assert_eq!((size, digest), (20, sha256sum(&path)));
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
    host.remove_file(p).await.unwrap();
    host.remove_file(p)
        .await
        .expect("removing an absent file succeeds");
    assert_eq!(host.read_file(p).await.unwrap(), None);
    assert_eq!(host.file_digest(p).await.unwrap(), None);

    // A TCP connection as seen from the host.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello through the tunnel").await.unwrap();
    });
    let mut conn = host.connect("127.0.0.1", port).await.expect("direct-tcpip");
    let mut got = String::new();
    conn.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello through the tunnel");
    server.await.unwrap();

    // Many calls, two logins: one for Docker, one for commands and files.
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());
}

#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn an_unknown_host_key_is_refused_with_its_fingerprint_and_no_login() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    sshd.forget();
    let err = refusal(&sshd).await;
    let fp = sshd.fingerprint();
    assert!(
        err.contains(&format!("ssh-ed25519 {fp} offered by")),
        "{err} (expected {fp})"
    );
    assert!(err.contains("host key not trusted"), "{err}");
    assert!(err.contains("berthctl hosts trust vm"), "{err}");
    assert_eq!(sshd.logins(), 0, "{}", sshd.log());
}

#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn a_changed_host_key_is_refused_with_its_fingerprint_and_no_login() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    sshd.trust(false);
    let err = refusal(&sshd).await;
    let fp = sshd.fingerprint();
    assert!(err.contains("HOST KEY CHANGED"), "{err}");
    assert!(
        err.contains(&format!("ssh-ed25519 {fp} offered by")),
        "{err}"
    );
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(sshd.logins(), 0, "{}", sshd.log());
}

#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn ecdsa_and_rsa_keys_log_in_and_a_passphrase_without_an_agent_names_the_file() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    let mut authorized = String::new();
    for (name, args) in [
        ("id_ecdsa", vec!["-t", "ecdsa", "-N", ""]),
        ("id_rsa", vec!["-t", "rsa", "-b", "2048", "-N", ""]),
        ("id_locked", vec!["-t", "ed25519", "-N", "secret words"]),
    ] {
        run_ok(
            std::process::Command::new("ssh-keygen")
                .arg("-q")
                .args(args)
                .arg("-f")
                .arg(sshd.path(name)),
        );
        authorized.push_str(&std::fs::read_to_string(sshd.path(&format!("{name}.pub"))).unwrap());
    }
    std::fs::write(sshd.path("authorized_keys"), authorized).unwrap();
    for name in ["id_ecdsa", "id_rsa"] {
        let mut s = spec(&sshd);
        s.identity_file = Some(sshd.path(name).display().to_string());
        let host = SshHost::connect("vm", &s)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(host.engine_version().await.is_ok(), "{name}");
    }
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        eprintln!("SSH_AUTH_SOCK is set: the passphrase case needs no agent, skipped");
        return;
    }
    let mut s = spec(&sshd);
    let locked = sshd.path("id_locked").display().to_string();
    s.identity_file = Some(locked.clone());
    let err = match SshHost::connect("vm", &s).await {
        Ok(_) => panic!("logged in with a key whose passphrase nobody gave"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!(
            "identityFile {locked} is protected by a passphrase"
        )),
        "{err}"
    );
    assert!(err.contains("ssh-agent"), "{err}");
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn a_200_mb_dump_streams_through_the_host_both_ways_without_growing_memory() {
    let _g = SERIAL.lock().await;
    const SIZE: u64 = 200 << 20;
    let sshd = Sshd::start();
    let host = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.bin");
    let f = file.to_str().unwrap();
    let cmd = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];

    // Warm up (buffers, the connection's first channels) before the baseline.
    let out = host
        .exec_to_file(DB_CONTAINER, &cmd("head -c 1048576 /dev/urandom"), f)
        .await
        .expect("a small dump");
    assert!(out.success(), "{out:?}");

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let base = rss_kib();
    let t0 = Instant::now();
    let out = host
        .exec_to_file(
            DB_CONTAINER,
            &cmd(&format!("head -c {SIZE} /dev/urandom")),
            f,
        )
        .await
        .expect("the dump");
    let out_time = t0.elapsed();
    assert!(out.success(), "{out:?}");
    let t1 = Instant::now();
    let back = host
        .exec_from_file(DB_CONTAINER, &cmd("sha256sum | cut -d' ' -f1"), f)
        .await
        .expect("the restore");
    let in_time = t1.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let growth = peak.load(Ordering::Relaxed).saturating_sub(base);
    eprintln!(
        "200 MB through SSH: to the host file in {out_time:?}, back into a command in {in_time:?}; RSS {base} KiB, peak +{growth} KiB"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), SIZE);
    let digest = sha256sum(&file);
    assert_eq!(back.stdout.trim(), digest, "{back:?}");
    assert!(
        growth < 16 * 1024,
        "memory grew by {growth} KiB while streaming {SIZE} bytes"
    );
}

#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn hosts_trust_shows_the_fingerprint_and_records_the_key_only_when_confirmed() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    sshd.forget();
    let manifest = sshd.path("host.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: vm}}\nspec: {}\n",
            sshd.host_spec("")
        ),
    )
    .unwrap();
    let trust = |extra: &[&str], answer: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berthctl"))
            .args(["hosts", "trust", "vm", "-f"])
            .arg(&manifest)
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("berthctl runs");
        let mut stdin = child.stdin.take().unwrap();
        let _ = std::io::Write::write_all(&mut stdin, answer.as_bytes());
        drop(stdin);
        child.wait_with_output().expect("berthctl ends")
    };
    let fp = sshd.fingerprint();
    let refused = trust(&[], "n\n");
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("offers ssh-ed25519 {fp}")), "{err}");
    assert_eq!(
        std::fs::read_to_string(sshd.path("known_hosts")).unwrap(),
        "",
        "recorded without a yes"
    );
    let _ = refusal(&sshd).await;

    let yes = trust(&["--yes"], "");
    let out = String::from_utf8_lossy(&yes.stdout).into_owned();
    assert!(
        yes.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&yes.stderr)
    );
    assert!(out.contains(&format!("recorded ssh-ed25519 {fp}")), "{out}");
    let host = connect(&sshd).await;
    assert!(host.engine_version().await.is_ok());
    let again = trust(&[], "");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already trusted"),
        "{again:?}"
    );
}

/// Figures for `hack/bench/ssh` (printed, never asserted): a Docker API round trip
/// through the SSH tunnel against one on the local socket.
#[tokio::test]
#[ignore = "needs root, sshd and the lab: hack/lab up"]
async fn bench_docker_round_trips_through_the_tunnel_and_on_the_local_socket() {
    let _g = SERIAL.lock().await;
    let sshd = Sshd::start();
    let ssh = connect(&sshd).await;
    let local = support::host::local_host().await;
    async fn median(host: &dyn Host) -> Duration {
        let mut times = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            host.engine_version().await.expect("docker version");
            times.push(t.elapsed());
        }
        times.sort();
        times[times.len() / 2]
    }
    let (l, s) = (median(&local).await, median(&ssh).await);
    eprintln!(
        "BENCH docker round trip (median of 100 GET /version): local {l:?}, ssh {s:?}, ratio {:.2}",
        s.as_secs_f64() / l.as_secs_f64()
    );
}
