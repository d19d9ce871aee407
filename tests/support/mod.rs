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
