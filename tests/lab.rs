//! Checks the lab (`hack/lab up`) against what Berth's end-to-end tests rely on: the
//! registry and its images, the demo app on the lab database, the sshd "VMs" with strict
//! host-key checking and a tunnelled Docker socket, and the traffic switches.
//!
//! Every test needs the running lab, so all are ignored by default:
//! `hack/lab up && cargo test -p berth-controller --test lab -- --include-ignored`.
//! The lab directory is `$BERTH_LAB_DIR`, or `<repo>/.lab`, or `/var/lib/berth-lab`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use support::cmd::{docker, output, run_ok};
use support::lab::{lab_dir, Containers, Db, NETWORK};
use support::names::unique;

const REGISTRY: &str = "http://127.0.0.1:5000";
const DEMO_IMAGE: &str = "127.0.0.1:5000/berth/demo-app";
const DEMO_TAGS: [&str; 6] = [
    "v1",
    "v2",
    "v3",
    "bad-never-ready",
    "bad-migration",
    "bad-crash",
];
const SSH_PORT: &str = "2222";
/// (name, address) of each sshd "VM".
const VMS: [(&str, &str); 2] = [("vm-a", "127.0.0.2"), ("vm-b", "127.0.0.3")];
/// (instance, address) of each nginx.
const NGINXES: [(&str, &str); 2] = [("local", "127.0.0.1:8081"), ("vm-a", "127.0.0.2:8080")];
const HAPROXY_VM: &str = "vm-b";
const HAPROXY_ADDR: &str = "127.0.0.3:8080";
const NEEDS_LAB: &str = "needs the lab: hack/lab up";

fn http() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
}

/// GET `url`, whatever its status: (status, `Server` header, body).
fn get(url: &str) -> Result<(u16, Option<String>, String), String> {
    let resp = match http().get(url).call() {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => return Err(format!("GET {url}: {e}")),
    };
    let status = resp.status();
    let server = resp.header("server").map(str::to_string);
    let body = resp
        .into_string()
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    Ok((status, server, body))
}

/// Kills the child (an `ssh -N -L ...`) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ssh` to a lab VM as root with the lab key, host key checked strictly against `known_hosts`.
fn ssh(addr: &str, known_hosts: &Path) -> Command {
    let lab = lab_dir();
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "none", "-i"])
        .arg(lab.join("ssh/id_ed25519"))
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5"])
        .args(["-p", SSH_PORT])
        .arg(format!("root@{addr}"));
    cmd
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn registry_serves_every_demo_app_tag_and_the_postgres_image() {
    let tags = |repo: &str| -> Vec<String> {
        let url = format!("{REGISTRY}/v2/{repo}/tags/list");
        let (status, _, body) = get(&url).unwrap_or_else(|e| panic!("{e} ({NEEDS_LAB})"));
        assert_eq!(status, 200, "GET {url}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"));
        json["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {url}: no tags array in {body}"))
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect()
    };
    let demo = tags("berth/demo-app");
    for tag in DEMO_TAGS {
        assert!(
            demo.iter().any(|t| t == tag),
            "berth/demo-app:{tag} is not in the registry (has {demo:?}); hack/build-images pushes it"
        );
    }
    let postgres = tags("berth/postgres");
    assert!(
        postgres.iter().any(|t| t == "15"),
        "berth/postgres:15 is not in the registry (has {postgres:?})"
    );
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn demo_app_v1_migrates_and_then_answers_ready_on_the_lab_database() {
    let lab = lab_dir();
    let env_file = lab.join("env/demo.env");
    let meta = std::fs::metadata(&env_file)
        .unwrap_or_else(|e| panic!("{}: {e} ({NEEDS_LAB})", env_file.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} holds a password: it must be 0600",
        env_file.display()
    );
    let contents = std::fs::read_to_string(&env_file).unwrap();
    let url = contents
        .lines()
        .find_map(|l| l.strip_prefix("DATABASE_URL="))
        .unwrap_or_else(|| panic!("no DATABASE_URL in {}", env_file.display()));
    let base = "postgres://demo:demo@berth-lab-db:5432/";
    assert_eq!(
        url,
        format!("{base}demo"),
        "DATABASE_URL in {}",
        env_file.display()
    );

    // The env file as the lab wrote it, with only the database name swapped for our own
    // (a later -e wins over --env-file).
    let name = unique("berth-labtest");
    let db = Db::create(name.replace('-', "_"));
    let own_url = format!("DATABASE_URL={base}{}", db.name);
    let image = format!("{DEMO_IMAGE}:v1");
    let common = |cmd: &mut Command| {
        cmd.args([
            "--label",
            "berth.lab-test=1",
            "--network",
            NETWORK,
            "--env-file",
        ])
        .arg(&env_file)
        .args(["-e", &own_url]);
    };

    let migrate = format!("{name}-migrate");
    let _migrate_guard = Containers(vec![migrate.clone()]);
    let mut cmd = docker();
    cmd.args(["run", "--rm", "--name", &migrate]);
    common(&mut cmd);
    cmd.args([&image, "migrate"]);
    run_ok(&mut cmd);

    let _app_guard = Containers(vec![name.clone()]);
    let mut cmd = docker();
    cmd.args(["run", "-d", "--name", &name, "-p", "127.0.0.1::8080"]);
    common(&mut cmd);
    cmd.arg(&image);
    run_ok(&mut cmd);

    let ports = run_ok(docker().args(["port", &name, "8080/tcp"]));
    let addr = ports
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("{name} is not published on 127.0.0.1: {ports:?}"))
        .to_string();

    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let last = get(&format!("http://{addr}/ready"));
        if let Ok((200, _, _)) = last {
            break last;
        }
        if Instant::now() > deadline {
            let logs = output(docker().args(["logs", "--tail", "30", &name]));
            panic!(
                "demo-app v1 on {addr} did not answer /ready 200 within 20 s; last answer: {last:?}\n\
                 logs:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        sleep(Duration::from_millis(250));
    };
    assert!(matches!(last, Ok((200, _, _))));

    let (status, _, body) = get(&format!("http://{addr}/version")).unwrap();
    assert_eq!(status, 200, "/version: {body}");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["version"], "v1", "/version: {body}");
    assert_eq!(version["schema"], 1, "/version after v1's migrate: {body}");
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn each_sshd_vm_runs_docker_for_the_lab_key_with_strict_host_key_checking() {
    let known_hosts = lab_dir().join("ssh/known_hosts");
    for (vm, addr) in VMS {
        let out = output(ssh(addr, &known_hosts).args([
            "docker",
            "version",
            "--format",
            "{{.Server.Version}}",
        ]));
        assert!(
            out.status.success(),
            "ssh {vm} ({addr}:{SSH_PORT}) docker version failed ({NEEDS_LAB}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            !version.trim().is_empty(),
            "{vm}: docker version printed no server version"
        );
    }
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn sshd_vm_is_refused_when_its_host_key_is_not_the_known_one() {
    // A known_hosts that lists vm-b's key under vm-a's address: strict checking must refuse
    // vm-a, which shows the checks above are real.
    let lab = lab_dir();
    let real = std::fs::read_to_string(lab.join("ssh/known_hosts")).unwrap();
    let vm_b_key = real
        .lines()
        .find_map(|l| l.strip_prefix(&format!("[{}]:{SSH_PORT} ", VMS[1].1)))
        .unwrap_or_else(|| panic!("no entry for {} in known_hosts:\n{real}", VMS[1].0))
        .to_string();
    let dir = std::env::temp_dir().join(unique("berth-labtest-known-hosts"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("known_hosts");
    std::fs::write(&wrong, format!("[{}]:{SSH_PORT} {vm_b_key}\n", VMS[0].1)).unwrap();
    let out = output(ssh(VMS[0].1, &wrong).arg("true"));
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "ssh accepted vm-a although known_hosts has another key for it"
    );
    assert!(
        stderr.contains("Host key verification failed")
            || stderr.contains("HOST IDENTIFICATION HAS CHANGED"),
        "ssh failed, but not on the host key: {stderr}"
    );
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn each_sshd_vm_forwards_the_docker_socket_over_a_unix_socket_channel() {
    // What Berth does with russh's direct-streamlocal, done with OpenSSH's -L.
    let known_hosts = lab_dir().join("ssh/known_hosts");
    for (vm, addr) in VMS {
        let dir = std::env::temp_dir().join(unique("berth-labtest-fwd"));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("docker.sock");
        let child = ssh(addr, &known_hosts)
            .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
            .arg(format!("{}:/var/run/docker.sock", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ssh");
        let mut child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Ok(Some(status)) = child.0.try_wait() {
                let mut err = String::new();
                let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
                panic!("ssh -L to {vm} exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "ssh -L to {vm} made no socket in 10 s"
            );
            sleep(Duration::from_millis(50));
        }
        let mut stream = UnixStream::connect(&sock).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // dockerd answers 400 without a Host header.
        stream
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        drop(child);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("OK"),
            "{vm}: /_ping through the tunnel answered {answer:?}"
        );
    }
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn each_nginx_answers_on_its_address() {
    // 502 is expected until Berth renders an upstream; the point is that nginx answers.
    for (vm, addr) in NGINXES {
        let (status, server, body) = get(&format!("http://{addr}/"))
            .unwrap_or_else(|e| panic!("nginx {vm}: {e} ({NEEDS_LAB})"));
        assert!(
            server.as_deref().is_some_and(|s| s.starts_with("nginx")),
            "nginx {vm} on {addr}: answer {status} with Server {server:?} is not nginx's: {body}"
        );
    }
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn haproxy_answers_on_its_address() {
    // 503 (no server ready) is expected until Berth enables one.
    let (status, _, body) = get(&format!("http://{HAPROXY_ADDR}/"))
        .unwrap_or_else(|e| panic!("haproxy {HAPROXY_VM}: {e} ({NEEDS_LAB})"));
    assert!(
        status == 200 || status == 503 || status == 404,
        "haproxy {HAPROXY_VM} on {HAPROXY_ADDR}: unexpected {status}: {body}"
    );
}

#[test]
#[ignore = "needs the lab: hack/lab up"]
fn haproxy_admin_socket_shows_the_state_of_the_demo_prod_servers() {
    let sock = lab_dir().join(format!("haproxy/{HAPROXY_VM}/admin.sock"));
    let mut stream = UnixStream::connect(&sock)
        .unwrap_or_else(|e| panic!("{}: {e} ({NEEDS_LAB})", sock.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"show servers state demo-prod\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let mut lines = answer.lines();
    assert_eq!(
        lines.next(),
        Some("1"),
        "state file format version: {answer}"
    );
    let servers: Vec<&str> = lines
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&"demo-prod")).then(|| fields.get(3).copied())?
        })
        .collect();
    let expected: Vec<String> = (1..=8).map(|i| format!("app{i}")).collect();
    assert_eq!(servers, expected, "servers of demo-prod:\n{answer}");
}
