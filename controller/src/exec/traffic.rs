//! The nginx traffic switch: render an environment's `upstream` file from the observed
//! replicas (pure), and apply it — write, test, reload — only when it differs.

use berth_api::environment::NginxTraffic;

use crate::exec::http::authority;
use crate::exec::probe::one_line;
use crate::exec::ExecError;
use crate::host::{Host, Output};

/// What a rendered file says about itself; also how we recognise our own files.
fn header(env: &str) -> String {
    format!("# managed by Berth for {env}; do not edit")
}

/// The upstream file for `env` sending traffic to `backends` (`(address, host port)`).
///
/// Deterministic: the same set of backends, in any order and with duplicates, renders
/// byte for byte the same file, so "is traffic where it should be" is a string compare.
/// With no backends the block still parses: one server marked `down`, so nginx answers
/// 502 instead of refusing the whole configuration.
pub fn render_upstream(env: &str, backends: &[(String, u16)]) -> String {
    let mut sorted: Vec<&(String, u16)> = backends.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut s = format!("{}\nupstream {env} {{\n", header(env));
    if sorted.is_empty() {
        s.push_str("    # no replica to send traffic to: nginx answers 502\n");
        s.push_str("    server 127.0.0.1:9 down;\n");
    }
    for (addr, port) in sorted {
        // max_fails=0: Berth, not nginx's passive checks, decides which replicas serve.
        s.push_str(&format!(
            "    server {} max_fails=0;\n",
            authority(addr, *port)
        ));
    }
    s.push_str("    keepalive 16;\n}\n");
    s
}

/// The backends a file rendered by [`render_upstream`] sends traffic to (servers marked
/// `down` are not). Lines it does not understand are skipped.
pub fn backends_in(file: &str) -> Vec<(String, u16)> {
    file.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim().trim_end_matches(';');
            let mut words = line.split_whitespace();
            if words.next()? != "server" {
                return None;
            }
            let at = words.next()?;
            if words.any(|w| w == "down") {
                return None;
            }
            let (addr, port) = at.rsplit_once(':')?;
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            Some((addr.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// The upstream file as it is on the host now; `None` when there is none.
pub async fn current_upstream(
    host: &dyn Host,
    cfg: &NginxTraffic,
) -> Result<Option<String>, ExecError> {
    let bytes = host.read_file(&cfg.upstream_file).await?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Writes the upstream file with no server to send traffic to ([`render_upstream`] of no
/// backends), when there is no file yet: from then on nginx can include it, and
/// `proxy_pass http://<env>` passes `nginx -t`, before any replica is ready. Returns
/// whether it wrote one.
///
/// Neither tests nor reloads nginx, which may not be set up to include it yet; an existing
/// file is left to the switch and the drift repairs. So it runs before any `nginx -t` of
/// Berth's, the first time Berth sees the environment (and again if the file is deleted).
///
/// # Errors
/// Reading or writing the file (its directory must exist): retryable.
pub async fn ensure_upstream(
    host: &dyn Host,
    env: &str,
    cfg: &NginxTraffic,
) -> Result<bool, ExecError> {
    if current_upstream(host, cfg).await?.is_some() {
        return Ok(false);
    }
    let empty = render_upstream(env, &[]);
    host.write_file(&cfg.upstream_file, empty.as_bytes(), 0o644)
        .await?;
    Ok(true)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The file was rewritten and nginx reloaded.
    pub changed: bool,
    /// What the file held before (`None`: there was no file).
    pub previous: Option<String>,
}

/// Makes nginx send traffic as `desired` (a file from [`render_upstream`]) says.
///
/// Observes first: when the file already holds `desired`, nothing is written or reloaded.
/// Otherwise the file is written atomically (mode 0644), `cfg.test` is run, and then
/// `cfg.reload`.
///
/// # Guarantees
/// - A configuration nginx rejects never stays on disk: the previous file is put back (or
///   the new one removed, if there was none) before the error is returned, so the next
///   reload of anything else still works.
/// - A failed reload also puts the previous file back, so that a retry writes and reloads
///   again instead of finding the file "already right".
/// - Not covered: a crash between the write and the reload leaves the file right and
///   nginx not reloaded, and a retry then sees nothing to do. A step resumed after a
///   crash should call [`reload_nginx`] when this returns `changed: false`.
///
/// # Errors
/// Rejected by `cfg.test`: not retryable, with nginx's own message. Reading, writing or
/// running commands on the host, and a failed reload: retryable.
pub async fn apply_nginx(
    host: &dyn Host,
    cfg: &NginxTraffic,
    desired: &str,
) -> Result<Applied, ExecError> {
    let path = &cfg.upstream_file;
    let previous = current_upstream(host, cfg).await?;
    if previous.as_deref() == Some(desired) {
        return Ok(Applied {
            changed: false,
            previous,
        });
    }
    host.write_file(path, desired.as_bytes(), 0o644).await?;

    let what = format!("nginx test of {path}");
    let tested = match host.run(&cfg.test).await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(ExecError::failed(
            &what,
            format!("`{}` rejected it: {}", cfg.test, said(&out)),
            false,
        )),
        Err(e) => Err(ExecError::failed(&what, e.to_string(), true)),
    };
    if let Err(e) = tested {
        return Err(restore(host, path, previous.as_deref(), e).await);
    }
    if let Err(e) = reload_nginx(host, cfg).await {
        return Err(restore(host, path, previous.as_deref(), e).await);
    }
    Ok(Applied {
        changed: true,
        previous,
    })
}

/// Runs `cfg.reload`. Errors are retryable and carry its output.
pub async fn reload_nginx(host: &dyn Host, cfg: &NginxTraffic) -> Result<(), ExecError> {
    let what = format!("nginx reload for {}", cfg.upstream_file);
    match host.run(&cfg.reload).await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(ExecError::failed(
            what,
            format!("`{}` failed: {}", cfg.reload, said(&out)),
            true,
        )),
        Err(e) => Err(ExecError::failed(what, e.to_string(), true)),
    }
}

/// Puts `previous` back at `path` (or removes it), and returns `cause` saying so.
async fn restore(
    host: &dyn Host,
    path: &str,
    previous: Option<&str>,
    cause: ExecError,
) -> ExecError {
    let put_back = match previous {
        Some(p) => host.write_file(path, p.as_bytes(), 0o644).await,
        None => host.remove_file(path).await,
    };
    let note = match (&put_back, previous) {
        (Ok(()), Some(_)) => "the previous file was put back".to_owned(),
        (Ok(()), None) => "the new file was removed".to_owned(),
        (Err(e), _) => format!("AND restoring the previous file failed: {e}"),
    };
    match cause {
        ExecError::Failed {
            what,
            message,
            retryable,
        } => ExecError::Failed {
            what,
            message: format!("{message}; {note}"),
            // A file we could not put back needs a person, not a retry.
            retryable: retryable && put_back.is_ok(),
        },
        other => other,
    }
}

/// What a command said: exit code and its last lines (nginx writes to stderr).
fn said(out: &Output) -> String {
    let text = if out.stderr.trim().is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    let tail = if tail.chars().count() > 1000 {
        one_line(&tail) // cut to one short line
    } else {
        tail
    };
    if tail.is_empty() {
        format!("exit {} (no output)", out.exit_code)
    } else {
        format!("exit {}: {tail}", out.exit_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    const FILE: &str = "/etc/nginx/upstreams/web.conf";

    fn cfg() -> NginxTraffic {
        NginxTraffic {
            upstream_file: FILE.into(),
            reload: "nginx -s reload".into(),
            test: "nginx -t".into(),
            port: None,
            listen: None,
        }
    }

    fn b(addr: &str, port: u16) -> (String, u16) {
        (addr.to_owned(), port)
    }

    fn file(fake: &FakeHost) -> Option<String> {
        fake.file(FILE)
            .map(|f| String::from_utf8_lossy(&f).into_owned())
    }

    fn failing(stderr: &str) -> Output {
        Output {
            exit_code: 1,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn the_rendered_file_is_exact_and_independent_of_order() {
        let file = render_upstream("web", &[b("127.0.0.1", 20002), b("127.0.0.1", 20001)]);
        assert_eq!(
            file,
            "# managed by Berth for web; do not edit\n\
             upstream web {\n\
             \x20   server 127.0.0.1:20001 max_fails=0;\n\
             \x20   server 127.0.0.1:20002 max_fails=0;\n\
             \x20   keepalive 16;\n\
             }\n"
        );
        let again = render_upstream(
            "web",
            &[
                b("127.0.0.1", 20001),
                b("127.0.0.1", 20002),
                b("127.0.0.1", 20001),
            ],
        );
        assert_eq!(file, again);
    }

    #[test]
    fn with_no_backends_the_upstream_is_still_valid_and_points_nowhere() {
        let file = render_upstream("web", &[]);
        assert!(file.contains("upstream web {\n"));
        assert!(file.contains("    server 127.0.0.1:9 down;\n"));
        assert_eq!(backends_in(&file), vec![]);
    }

    #[test]
    fn backends_read_back_from_a_rendered_file() {
        let set = vec![b("10.0.0.5", 8080), b("127.0.0.1", 20001), b("::1", 20003)];
        let file = render_upstream("web", &set);
        assert!(file.contains("server [::1]:20003 max_fails=0;"), "{file}");
        assert_eq!(backends_in(&file), set);
        // Hand-written files parse too, as far as they go.
        let hand = "upstream web {\n  server 127.0.0.1:1;  # first\n  server 127.0.0.1:2 down;\n  server x:y;\n}\n";
        assert_eq!(backends_in(hand), vec![b("127.0.0.1", 1)]);
    }

    #[tokio::test]
    async fn the_empty_upstream_is_written_without_testing_or_reloading_and_only_when_missing() {
        let fake = FakeHost::new("h");
        assert!(ensure_upstream(&fake, "web", &cfg()).await.unwrap());
        assert_eq!(file(&fake), Some(render_upstream("web", &[])));
        assert_eq!(
            fake.mutations(),
            ["write_file /etc/nginx/upstreams/web.conf"]
        );
        // A file there already, Berth's or not, is left to the switch and the repairs.
        fake.put_file(FILE, b"upstream web { server 127.0.0.1:1; }\n");
        assert!(!ensure_upstream(&fake, "web", &cfg()).await.unwrap());
        assert_eq!(
            file(&fake).as_deref(),
            Some("upstream web { server 127.0.0.1:1; }\n")
        );
    }

    #[tokio::test]
    async fn a_new_file_is_written_tested_and_reloaded_once() {
        let fake = FakeHost::new("h");
        let desired = render_upstream("web", &[b("127.0.0.1", 20001)]);
        let a = apply_nginx(&fake, &cfg(), &desired).await.unwrap();
        assert_eq!(
            a,
            Applied {
                changed: true,
                previous: None
            }
        );
        assert_eq!(file(&fake).as_deref(), Some(desired.as_str()));
        assert_eq!(fake.file_mode(FILE), Some(0o644));
        assert_eq!(
            fake.mutations(),
            [
                "write_file /etc/nginx/upstreams/web.conf",
                "run nginx -t",
                "run nginx -s reload"
            ]
        );

        let again = apply_nginx(&fake, &cfg(), &desired).await.unwrap();
        assert!(!again.changed);
        assert_eq!(again.previous.as_deref(), Some(desired.as_str()));
        assert_eq!(
            fake.mutations().len(),
            3,
            "the same content is not written again"
        );
        assert_eq!(
            current_upstream(&fake, &cfg()).await.unwrap(),
            Some(desired)
        );
    }

    #[tokio::test]
    async fn a_rejected_file_is_rolled_back_and_the_error_quotes_nginx() {
        let fake = FakeHost::new("h");
        fake.on_command(
            "nginx -t",
            failing("nginx: [emerg] unexpected end of file, expecting \"}\" in /etc/nginx/upstreams/web.conf:3\nnginx: configuration file /etc/nginx/nginx.conf test failed\n"),
        );
        let old = render_upstream("web", &[b("127.0.0.1", 20001)]);
        fake.put_file(FILE, old.as_bytes());
        let err = apply_nginx(&fake, &cfg(), "upstream web {\n  server")
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "nginx test of /etc/nginx/upstreams/web.conf: `nginx -t` rejected it: exit 1: \
             nginx: [emerg] unexpected end of file, expecting \"}\" in /etc/nginx/upstreams/web.conf:3 | \
             nginx: configuration file /etc/nginx/nginx.conf test failed; the previous file was put back"
        );
        assert_eq!(file(&fake), Some(old));
        assert_eq!(fake.count("run nginx -s reload"), 0, "never reloaded");
    }

    #[tokio::test]
    async fn a_rejected_first_file_is_removed() {
        let fake = FakeHost::new("h");
        fake.on_command("nginx -t", failing(""));
        let err = apply_nginx(&fake, &cfg(), "bad").await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with("exit 1 (no output); the new file was removed"),
            "{err}"
        );
        assert_eq!(file(&fake), None);
    }

    #[tokio::test]
    async fn a_failed_reload_puts_the_old_file_back_so_a_retry_reloads() {
        let fake = FakeHost::new("h");
        fake.on_command(
            "nginx -s reload",
            failing("nginx: [error] invalid PID number \"\" in \"/run/nginx.pid\""),
        );
        let old = render_upstream("web", &[b("127.0.0.1", 20001)]);
        fake.put_file(FILE, old.as_bytes());
        let new = render_upstream("web", &[b("127.0.0.1", 20002)]);
        let err = apply_nginx(&fake, &cfg(), &new).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "nginx reload for /etc/nginx/upstreams/web.conf: `nginx -s reload` failed: exit 1: \
             nginx: [error] invalid PID number \"\" in \"/run/nginx.pid\"; the previous file was put back"
        );
        assert_eq!(file(&fake), Some(old));

        fake.on_command("nginx -s reload", Output::default());
        assert!(apply_nginx(&fake, &cfg(), &new).await.unwrap().changed);
        assert_eq!(fake.count("run nginx -s reload"), 2);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_put_back_is_not_retried() {
        let fake = FakeHost::new("h");
        fake.on_command("nginx -s reload", failing("nginx: [error] no pid"));
        // Calls: write the new file, test, reload, put the old file back (fails).
        fake.fail_call(4);
        fake.put_file(FILE, b"old");
        let err = apply_nginx(&fake, &cfg(), "new").await.unwrap_err();
        assert!(
            !err.is_retryable(),
            "a reload alone would be retried, not this"
        );
        assert!(
            err.to_string().contains(
                "exit 1: nginx: [error] no pid; AND restoring the previous file failed: "
            ),
            "{err}"
        );
    }
}
