//! Helpers shared by the integration tests in `tests/*.rs`: one copy of running commands,
//! of the lab's names and cleanup guards, and of small network chores.
//!
//! Each test file is its own crate (a `[[test]]` of `controller/Cargo.toml`) and includes
//! this file with `#[path = "support/mod.rs"] mod support;`. It is not a test target of
//! its own: no `[[test]]` names it, and the workspace root has no package to find it.
//! [`host`] uses `berth-controller`, so only that package's test crates can include it.

// Every test crate compiles all of this but uses only some of it; what one crate leaves
// unused would otherwise be a dead-code warning there, and clippy runs with `-D warnings`.
#![allow(dead_code)]

/// Running commands: panicking with their output when they must succeed, staying quiet
/// when they are cleanup that may find nothing to clean.
pub mod cmd {
    use std::path::Path;
    use std::process::{Command, Output, Stdio};

    /// `docker`, to add arguments to.
    pub fn docker() -> Command {
        Command::new("docker")
    }

    /// The command as one would type it, for messages.
    pub fn describe(cmd: &Command) -> String {
        let mut s = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs `cmd` to its end with no stdin (a test must never wait on a prompt) and
    /// returns what it did, success or not; panics only if it cannot be started.
    pub fn output(cmd: &mut Command) -> Output {
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)))
    }

    /// Runs `cmd`, panics with its stdout and stderr unless it succeeds, returns its stdout.
    pub fn run_ok(cmd: &mut Command) -> String {
        let out = output(cmd);
        assert!(
            out.status.success(),
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` for its effect alone, ignoring its output and whether it worked: for
    /// cleanup in `Drop`, which runs during a panic too and must not panic again.
    pub fn quietly(cmd: &mut Command) {
        let _ = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Runs `script` with `sh -c`: whether it succeeded, and its stdout then stderr,
    /// trimmed (for a message, or for output that needs no care which stream it is on).
    pub fn sh(script: &str) -> (bool, String) {
        let out = output(Command::new("sh").arg("-c").arg(script));
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s.trim().to_owned())
    }

    /// [`sh`] that must succeed: panics with the output unless it does, returns it.
    pub fn must(script: &str) -> String {
        let (ok, out) = sh(script);
        assert!(ok, "`{script}` failed: {out}");
        out
    }

    /// The SHA-256 of the file as `sha256sum` prints it: a digest computed outside Berth
    /// to check Berth's own against.
    pub fn sha256sum(path: impl AsRef<Path>) -> String {
        run_ok(Command::new("sha256sum").arg(path.as_ref()))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Names for what a test creates, so that concurrent test processes and leftovers of
/// earlier runs never meet.
pub mod names {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// `<pid><sep><nanoseconds of the clock, hex>`: differs between processes and runs.
    pub fn stamp(sep: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{}{sep}{nanos:x}", std::process::id())
    }

    /// `<prefix><stamp><sep><n>`, with a counter so that calls within one process differ
    /// too. `sep` lets a database name do without `-`.
    pub fn unique_with(prefix: &str, sep: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{}{sep}{n}", stamp(sep))
    }

    /// `<prefix>-<pid>-<nanos>-<n>`: lowercase, as Docker wants its names.
    pub fn unique(prefix: &str) -> String {
        unique_with(&format!("{prefix}-"), "-")
    }
}

/// The lab (`hack/lab up`): where it lives, what it runs, and guards that remove what a
/// test made in it when dropped, whether the test passed or panicked.
pub mod lab {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::cmd::{docker, quietly, run_ok};

    /// The lab's PostgreSQL container; its superuser and first database are `demo`.
    pub const DB_CONTAINER: &str = "berth-lab-db";
    /// The Docker network the lab database and the demo app share.
    pub const NETWORK: &str = "berth-lab";

    /// The lab directory: `$BERTH_LAB_DIR`, or `<repo>/.lab`, or `/var/lib/berth-lab`
    /// (the lab's stable link, which serves a git worktree that has no `.lab` of its own).
    pub fn lab_dir() -> PathBuf {
        match std::env::var_os("BERTH_LAB_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.lab");
                if in_repo.exists() {
                    in_repo
                } else {
                    PathBuf::from("/var/lib/berth-lab")
                }
            }
        }
    }

    /// Runs `sql` in `database` on the lab's PostgreSQL, stopping at the first error;
    /// panics unless it succeeds, returns its unaligned, tuples-only output, trimmed.
    pub fn psql(database: &str, sql: &str) -> String {
        run_ok(psql_in(database).args(["-v", "ON_ERROR_STOP=1", "-Atc", sql]))
            .trim()
            .to_owned()
    }

    /// `psql` as the `demo` superuser in `database` of the lab's PostgreSQL, to add
    /// arguments to.
    fn psql_in(database: &str) -> Command {
        let mut cmd = docker();
        cmd.args(["exec", DB_CONTAINER, "psql", "-U", "demo", "-d", database]);
        cmd
    }

    /// Creates database `name` on the lab's PostgreSQL; panics if it cannot.
    pub fn create_database(name: &str) {
        psql("demo", &format!("create database \"{name}\""));
    }

    /// Drops database `name` if it is there, closing its connections first; quietly, as
    /// cleanup does.
    pub fn drop_database(name: &str) {
        quietly(psql_in("demo").args([
            "-c",
            &format!("drop database if exists \"{name}\" with (force)"),
        ]));
    }

    /// A database of the test's own on the lab's PostgreSQL, so that it neither depends
    /// on nor disturbs the schema other tests leave in `demo`; dropped when this is.
    pub struct Db {
        pub name: String,
    }

    impl Db {
        pub fn create(name: impl Into<String>) -> Db {
            let db = Db { name: name.into() };
            create_database(&db.name);
            db
        }

        /// Its URL as the demo app reaches it on the lab network.
        pub fn url(&self) -> String {
            format!("postgres://demo:demo@{DB_CONTAINER}:5432/{}", self.name)
        }

        /// [`psql`] in this database.
        pub fn psql(&self, sql: &str) -> String {
            psql(&self.name, sql)
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            drop_database(&self.name);
        }
    }

    /// Containers removed with their anonymous volumes (`docker rm -f -v`) when dropped.
    #[derive(Default)]
    pub struct Containers(pub Vec<String>);

    impl Containers {
        pub fn push(&mut self, name: impl Into<String>) {
            self.0.push(name.into());
        }
    }

    impl Drop for Containers {
        fn drop(&mut self) {
            for name in &self.0 {
                quietly(docker().args(["rm", "-f", "-v", name]));
            }
        }
    }

    /// A named Docker volume removed when dropped (after the containers that use it: a
    /// volume in use is not removed).
    pub struct Volume(pub String);

    impl Drop for Volume {
        fn drop(&mut self) {
            quietly(docker().args(["volume", "rm", "-f", &self.0]));
        }
    }

    /// A Docker network removed when dropped (after the containers on it: a network in use
    /// is not removed).
    pub struct Network(pub String);

    impl Drop for Network {
        fn drop(&mut self) {
            quietly(docker().args(["network", "rm", &self.0]));
        }
    }
}

/// A `LocalHost` for the tests that drive Berth's own host layer.
pub mod host {
    use berth_controller::host::local::LocalHost;

    /// Berth's `LocalHost` on this machine's Docker engine, from a Host manifest as a user
    /// writes it; panics (saying the lab is needed) when the engine does not answer.
    pub async fn local_host() -> LocalHost {
        let text =
            "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: local}\nspec: {address: local}\n";
        let manifests = berth_api::load_texts(vec![("host.yaml".into(), text.into())])
            .into_manifests()
            .unwrap_or_else(|l| panic!("an invalid Host manifest: {:?}", l.diagnostics));
        LocalHost::connect("local", &manifests.hosts["local"].spec)
            .await
            .unwrap_or_else(|e| panic!("the local Docker engine does not answer: {e}"))
    }
}

/// Loopback networking for tests that run servers of their own.
pub mod net {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// A loopback port nobody listens on right now, for a server the test starts.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1")
    }

    /// One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection (`Connection:
    /// close`, 5 s read timeout): (status, body), or `None` on any transport error, so
    /// that a caller can count failures instead of panicking.
    pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let status = buf.split(' ').nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// [`http_request`] with `GET` and no body.
    pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
        http_request(port, "GET", path, "")
    }
}

/// An sshd of the test's own, in front of this machine's Docker engine as the lab's "VMs"
/// are (hack/lab): its own port on 127.0.0.1, its own host key, client key, config and
/// log in a temp dir, so that stopping it disturbs nobody. Needs root (as the lab).
pub mod sshd {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::cmd::{must, run_ok};
    use super::net::free_port;

    pub struct Sshd {
        pub dir: tempfile::TempDir,
        pub addr: String,
        pub port: u16,
        child: Option<Child>,
    }

    impl Sshd {
        /// Generates its keys and config and starts it; panics unless it listens.
        pub fn start() -> Sshd {
            let dir = tempfile::Builder::new()
                .prefix("berth-sshd")
                .tempdir()
                .expect("a temp dir");
            let d = dir.path().to_path_buf();
            for key in ["host_key", "other_host_key", "id_ed25519"] {
                run_ok(
                    Command::new("ssh-keygen")
                        .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                        .arg(d.join(key)),
                );
            }
            std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))
                .expect("authorized_keys");
            // Without PAM, sshd refuses key logins to an account whose password is locked.
            let (_, shadow) = super::cmd::sh("getent shadow root | cut -d: -f2");
            let use_pam = if shadow.starts_with('!') { "yes" } else { "no" };
            let mut s = Sshd {
                addr: "127.0.0.1".into(),
                port: free_port(),
                dir,
                child: None,
            };
            let config = format!(
                "Port {port}\nListenAddress {addr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM {use_pam}\nStrictModes no\nAllowStreamLocalForwarding yes\nAllowTcpForwarding yes\nX11Forwarding no\nPrintMotd no\nMaxSessions 100\nMaxStartups 100:30:200\nLogLevel VERBOSE\n",
                port = s.port,
                addr = s.addr,
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
            s.trust(true);
            must("mkdir -p /run/sshd && chmod 755 /run/sshd");
            s.run();
            s
        }

        pub fn path(&self, p: &str) -> PathBuf {
            self.dir.path().join(p)
        }

        /// Writes known_hosts with its real host key (`true`) or with another key for the
        /// same address (`false`: a changed key).
        pub fn trust(&self, real: bool) {
            let key = if real {
                "host_key.pub"
            } else {
                "other_host_key.pub"
            };
            let public = std::fs::read_to_string(self.path(key)).expect("host key");
            let public: Vec<&str> = public.split_whitespace().take(2).collect();
            std::fs::write(
                self.path("known_hosts"),
                format!("[{}]:{} {}\n", self.addr, self.port, public.join(" ")),
            )
            .expect("known_hosts");
        }

        /// An empty known_hosts: the host key is unknown.
        pub fn forget(&self) {
            std::fs::write(self.path("known_hosts"), "").expect("known_hosts");
        }

        /// `SHA256:…` of its host key, as `ssh-keygen -l` prints it.
        pub fn fingerprint(&self) -> String {
            let out = run_ok(
                Command::new("ssh-keygen")
                    .arg("-lf")
                    .arg(self.path("host_key.pub")),
            );
            out.split_whitespace().nth(1).unwrap_or_default().to_owned()
        }

        pub fn address(&self) -> String {
            format!("ssh://root@{}:{}", self.addr, self.port)
        }

        /// The `spec` of a Host manifest for it, in flow style.
        pub fn host_spec(&self, extra: &str) -> String {
            format!(
                "{{address: '{}', identityFile: {}, knownHostsFile: {}{extra}}}",
                self.address(),
                self.path("id_ed25519").display(),
                self.path("known_hosts").display()
            )
        }

        fn run(&mut self) {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path("sshd.log"))
                .expect("sshd.log");
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(self.path("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sshd starts (openssh-server, from hack/lab up)");
            self.child = Some(child);
            let end = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
                assert!(
                    Instant::now() < end,
                    "sshd did not listen within 10 s:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Kills it, and every connection it serves (each is an sshd process of its own,
        /// in a session of its own, so only their parentage finds them). The commands
        /// those run are left alone, as when a VM's sshd dies: they see their pipes close.
        /// (Killing them too could leave e.g. a login shell's lock file behind.)
        pub fn kill(&mut self) {
            let Some(mut child) = self.child.take() else {
                return;
            };
            let mut doomed: Vec<u32> = descendants(child.id())
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "sshd")
                })
                .collect();
            doomed.push(child.id());
            for pid in doomed {
                super::cmd::quietly(Command::new("kill").args(["-KILL", &pid.to_string()]));
            }
            let _ = child.wait();
        }

        /// Starts it again on the same port with the same keys.
        pub fn restart(&mut self) {
            self.kill();
            self.run();
        }

        pub fn log(&self) -> String {
            std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
        }

        /// How many logins it accepted.
        pub fn logins(&self) -> usize {
            self.log().matches("Accepted publickey").count()
        }
    }

    impl Drop for Sshd {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Every process below `pid`, from `/proc/*/stat`.
    fn descendants(pid: u32) -> Vec<u32> {
        let mut parents = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat =
                    std::fs::read_to_string(Path::new("/proc").join(p.to_string()).join("stat"))
                        .unwrap_or_default();
                // `pid (comm) state ppid …`; comm may hold spaces, so split after the ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|w| w.parse::<u32>().ok());
                if let Some(ppid) = ppid {
                    parents.push((p, ppid));
                }
            }
        }
        let mut out = Vec::new();
        let mut frontier = vec![pid];
        while let Some(p) = frontier.pop() {
            for (child, _) in parents.iter().filter(|(_, pp)| *pp == p) {
                out.push(*child);
                frontier.push(*child);
            }
        }
        out
    }
}
