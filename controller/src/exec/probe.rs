//! Health probes: one attempt ([`probe_once`]) and the pure threshold logic that turns
//! attempts into a verdict ([`Tracker`]). [`crate::exec::monitor`] runs them at their
//! intervals.

use berth_api::environment::{PortRef, PortSpec, Probe, ProbeAction};

use crate::exec::http::{self, human};
use crate::host::Host;
use crate::op::Millis;
use crate::redact::Redactor;

// The monitor that runs probes lives in its own file; the reconciler names it from here.
pub use crate::exec::monitor::{Flip, Health, Monitor, ProbeKind, Watch};

/// Probe outputs are cut to this many characters: one line for `describe` and events.
pub const OUTPUT_CAP: usize = 200;

// ---- one attempt --------------------------------------------------------------------

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    pub name: String,
    pub container_port: u16,
    /// Where the host reaches it: the publish address (a wildcard becomes loopback).
    pub address: String,
    pub host_port: u16,
}

/// What a probe is aimed at: one container and where its ports are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container: String,
    pub ports: Vec<PublishedPort>,
}

impl Target {
    /// Pairs the environment's `ports` with the host port each one is published on, in
    /// order (as [`ContainerSpec::host_ports`](crate::model::ContainerSpec) lists them).
    /// Ports without a host port are left out: a probe on them fails, saying so.
    pub fn new(container: impl Into<String>, ports: &[PortSpec], host_ports: &[u16]) -> Target {
        Target {
            container: container.into(),
            ports: ports
                .iter()
                .zip(host_ports)
                .map(|(p, &host_port)| PublishedPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    address: reachable(&p.publish).to_owned(),
                    host_port,
                })
                .collect(),
        }
    }

    /// The address and host port of a port named by name or by container port number.
    pub fn resolve(&self, port: &PortRef) -> Option<(&str, u16)> {
        self.ports
            .iter()
            .find(|p| match port {
                PortRef::Name(n) => &p.name == n,
                PortRef::Number(n) => p.container_port == *n,
            })
            .map(|p| (p.address.as_str(), p.host_port))
    }
}

/// A wildcard publish address is reached on loopback.
fn reachable(publish: &str) -> &str {
    match publish {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        a => a,
    }
}

/// One probe's outcome; `output` says why, in one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub ok: bool,
    pub output: String,
}

impl Attempt {
    fn fail(output: impl AsRef<str>) -> Attempt {
        Attempt {
            ok: false,
            output: one_line(output.as_ref()),
        }
    }
}

/// Runs one attempt of `probe` against `target`, bounded by the probe's `timeout`.
///
/// # Guarantees
/// Never fails and never panics: an unreachable port, an error or a timeout is a failed
/// attempt whose output says what happened. An `exec` probe that times out is abandoned,
/// not killed (Docker has no way to kill an exec); a command that hangs keeps running in
/// the container.
/// The output is redacted by `redactor` before it is cut to one line, so that no part of
/// a secret survives the cut.
pub async fn probe_once(
    host: &dyn Host,
    probe: &Probe,
    target: &Target,
    redactor: &Redactor,
) -> Attempt {
    let timeout = probe.timeout.0;
    match &probe.action {
        ProbeAction::Http { path, port } => {
            let Some((addr, port)) = target.resolve(port) else {
                return unpublished(target, port);
            };
            match http::request(host, addr, port, &http::Request::get(path), timeout).await {
                Ok(resp) => {
                    let line = one_line(&redactor.redact(&resp.text()));
                    Attempt {
                        ok: (200..400).contains(&resp.status),
                        output: if line.is_empty() {
                            format!("HTTP {}", resp.status)
                        } else {
                            format!("HTTP {}: {line}", resp.status)
                        },
                    }
                }
                Err(e) => Attempt::fail(e.to_string()),
            }
        }
        ProbeAction::Tcp { port } => {
            let Some((addr, port)) = target.resolve(port) else {
                return unpublished(target, port);
            };
            let at = http::authority(addr, port);
            match tokio::time::timeout(timeout, host.connect(addr, port)).await {
                Ok(Ok(_conn)) => Attempt {
                    ok: true,
                    output: format!("connected to {at}"),
                },
                Ok(Err(e)) => Attempt::fail(e.to_string()),
                Err(_) => Attempt::fail(format!("no connection to {at} within {}", human(timeout))),
            }
        }
        ProbeAction::Exec { command } => {
            let c = &target.container;
            match tokio::time::timeout(timeout, host.exec(c, command)).await {
                Ok(Ok(out)) => {
                    let (stdout, stderr) =
                        (redactor.redact(&out.stdout), redactor.redact(&out.stderr));
                    // The line that explains: stderr first when it failed, stdout first when not.
                    let (first, second) = if out.success() {
                        (&stdout, &stderr)
                    } else {
                        (&stderr, &stdout)
                    };
                    let line = last_line(first).or_else(|| last_line(second)).unwrap_or("");
                    let output = match (out.success(), line.is_empty()) {
                        (true, _) => one_line(line),
                        (false, true) => format!("exit {}", out.exit_code),
                        (false, false) => one_line(&format!("exit {}: {line}", out.exit_code)),
                    };
                    Attempt {
                        ok: out.success(),
                        output,
                    }
                }
                Ok(Err(e)) => Attempt::fail(e.to_string()),
                Err(_) => Attempt::fail(format!(
                    "`{}` in {c} did not finish within {}",
                    command.join(" "),
                    human(timeout)
                )),
            }
        }
    }
}

fn unpublished(target: &Target, port: &PortRef) -> Attempt {
    let p = match port {
        PortRef::Name(n) => format!("`{n}`"),
        PortRef::Number(n) => n.to_string(),
    };
    Attempt::fail(format!(
        "port {p} of {} is not published on the host",
        target.container
    ))
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// The first non-empty line, trimmed, at most [`OUTPUT_CAP`] characters.
pub(crate) fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.char_indices().nth(OUTPUT_CAP) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

// ---- thresholds (pure) ----------------------------------------------------------------

/// Where a probe stands: `healthy` is `None` until a threshold has been reached once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: Option<bool>,
    pub last_output: String,
}

/// Turns a probe's attempts into a verdict, as Kubernetes does: `successThreshold`
/// consecutive successes make it healthy, `failureThreshold` consecutive failures make it
/// unhealthy, and attempts before `initialDelay` has passed do not count. Time is passed
/// in; nothing here reads a clock.
#[derive(Clone, Debug)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    /// Attempts observed before this instant are ignored.
    not_before: Millis,
    successes: u32,
    failures: u32,
    verdict: Verdict,
}

impl Tracker {
    /// A tracker for a probe whose container was started (or first seen) at `started`.
    pub fn new(probe: &Probe, started: Millis) -> Tracker {
        let delay = u64::try_from(probe.initial_delay.0.as_millis()).unwrap_or(u64::MAX);
        Tracker {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            not_before: started.saturating_add(delay),
            successes: 0,
            failures: 0,
            verdict: Verdict::default(),
        }
    }

    pub fn observe(&mut self, ok: bool, output: &str, now: Millis) -> Verdict {
        if now < self.not_before {
            return self.verdict.clone();
        }
        self.verdict.last_output = output.to_owned();
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.successes >= self.success_threshold {
                self.verdict.healthy = Some(true);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.failure_threshold {
                self.verdict.healthy = Some(false);
            }
        }
        self.verdict.clone()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_api::values::Duration as D;

    use super::*;
    use crate::exec::test_host::fixtures::*;
    use crate::exec::test_host::SlowHost;
    use crate::host::fake::{http_response, FakeHost};
    use crate::model::ContainerState;

    // ---- probe_once

    #[tokio::test]
    async fn an_http_probe_reports_status_and_the_first_line_of_the_body() {
        let fake = FakeHost::new("h");
        fake.serve(20001, |req| {
            if req.starts_with(b"GET /ready ") {
                http_response(
                    503,
                    "schema version 1, this build needs 2..=2\nmore detail\n",
                )
            } else if req.starts_with(b"GET /moved ") {
                http_response(302, "")
            } else {
                http_response(200, "  ok  ")
            }
        });
        let t = target("web-r1-0", 20001);
        let a = probe_once(&fake, &ready(), &t, &Redactor::none()).await;
        assert_eq!(
            a,
            Attempt {
                ok: false,
                output: "HTTP 503: schema version 1, this build needs 2..=2".into()
            }
        );
        let a = probe_once(
            &fake,
            &http("/health", PortRef::Number(8080)),
            &t,
            &Redactor::none(),
        )
        .await;
        assert_eq!((a.ok, a.output.as_str()), (true, "HTTP 200: ok"));
        let a = probe_once(
            &fake,
            &http("/moved", PortRef::Number(8080)),
            &t,
            &Redactor::none(),
        )
        .await;
        assert_eq!((a.ok, a.output.as_str()), (true, "HTTP 302"));
        assert_eq!(fake.count("connect 127.0.0.1:20001"), 3);
    }

    #[tokio::test]
    async fn a_probe_on_a_port_that_is_not_published_fails_saying_which() {
        let fake = FakeHost::new("h");
        let t = target("web-r1-0", 20001);
        let a = probe_once(
            &fake,
            &http("/", PortRef::Name("admin".into())),
            &t,
            &Redactor::none(),
        )
        .await;
        assert_eq!(
            a.output,
            "port `admin` of web-r1-0 is not published on the host"
        );
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Number(9090),
        });
        let a = probe_once(&fake, &tcp, &t, &Redactor::none()).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "port 9090 of web-r1-0 is not published on the host")
        );
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_on_connect_and_fails_on_refusal() {
        let fake = FakeHost::new("h");
        fake.serve(20001, |_| Vec::new());
        let tcp = probe(ProbeAction::Tcp {
            port: PortRef::Name("http".into()),
        });
        let a = probe_once(&fake, &tcp, &target("web-r1-0", 20001), &Redactor::none()).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (true, "connected to 127.0.0.1:20001")
        );
        let a = probe_once(&fake, &tcp, &target("web-r1-0", 20002), &Redactor::none()).await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "host h: port 20002: 127.0.0.1: Connection refused")
        );
    }

    #[tokio::test]
    async fn an_exec_probe_reports_the_last_line_that_explains() {
        let cases = [
            (output(0, "starting\nall good\n\n", ""), true, "all good"),
            (
                output(1, "", "warming up\nnot ready yet\n"),
                false,
                "exit 1: not ready yet",
            ),
            (output(2, "only stdout\n", ""), false, "exit 2: only stdout"),
            (output(137, "", ""), false, "exit 137"),
        ];
        for (answer, want_ok, want_output) in cases {
            let fake = with_container(ContainerState::Running);
            fake.on_exec("sh -c check", answer);
            let a = probe_once(
                &fake,
                &exec(&["sh", "-c", "check"]),
                &target("web-r1-0", 1),
                &Redactor::none(),
            )
            .await;
            assert_eq!((a.ok, a.output.as_str()), (want_ok, want_output));
            assert_eq!(fake.calls(), ["exec web-r1-0 sh -c check"]);
        }
    }

    #[tokio::test]
    async fn a_probe_output_is_redacted_before_it_is_cut_to_one_line() {
        let secret = "S3cr3t-probe";
        let fake = with_container(ContainerState::Running);
        // The secret straddles the 200-character cut: a cut first would keep half of it.
        let padding = "x".repeat(OUTPUT_CAP - "exit 1: ".len() - 6);
        let answer = format!("{padding}{secret} token=abc123\n");
        fake.on_exec("check", output(1, "", &answer));
        let a = probe_once(
            &fake,
            &exec(&["check"]),
            &target("web-r1-0", 1),
            &Redactor::new([secret]),
        )
        .await;
        assert!(!a.output.contains("S3c"), "{}", a.output);
        assert!(a.output.contains(&format!("{padding}***")), "{}", a.output);
    }

    #[tokio::test]
    async fn an_exec_probe_in_a_stopped_container_fails_saying_so() {
        let fake = with_container(ContainerState::Exited(1));
        let a = probe_once(
            &fake,
            &exec(&["check"]),
            &target("web-r1-0", 1),
            &Redactor::none(),
        )
        .await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (
                false,
                "host h: docker exec web-r1-0: Container web-r1-0 is not running"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exec_probe_that_hangs_fails_at_its_timeout() {
        let host = SlowHost {
            exec_delay: Duration::from_secs(60),
        };
        let a = probe_once(
            &host,
            &exec(&["pg_isready"]),
            &target("web-r1-0", 1),
            &Redactor::none(),
        )
        .await;
        assert_eq!(
            (a.ok, a.output.as_str()),
            (false, "`pg_isready` in web-r1-0 did not finish within 2s")
        );
    }

    #[test]
    fn outputs_are_one_line_of_at_most_200_characters() {
        assert_eq!(one_line("\n\n  first  \nsecond"), "first");
        let long = "é".repeat(300);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), OUTPUT_CAP + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_wildcard_publish_address_is_probed_on_loopback() {
        let t = target("web-r1-0", 20001);
        assert_eq!(
            t.resolve(&PortRef::Name("http".into())),
            Some(("127.0.0.1", 20001))
        );
        assert_eq!(
            t.resolve(&PortRef::Number(8080)),
            Some(("127.0.0.1", 20001))
        );
        assert_eq!(t.resolve(&PortRef::Number(20001)), None);
    }

    // ---- Tracker

    #[test]
    fn the_tracker_applies_thresholds_and_the_initial_delay() {
        struct Case {
            name: &'static str,
            success: u32,
            failure: u32,
            delay_ms: u64,
            /// (ok, at ms) → the verdict after it
            steps: &'static [(bool, Millis, Option<bool>)],
        }
        const T: bool = true;
        const F: bool = false;
        let cases = [
            Case {
                name: "one success is enough by default",
                success: 1,
                failure: 3,
                delay_ms: 0,
                steps: &[(T, 0, Some(true))],
            },
            Case {
                name: "undecided until the failure threshold",
                success: 1,
                failure: 3,
                delay_ms: 0,
                steps: &[(F, 0, None), (F, 1, None), (F, 2, Some(false))],
            },
            Case {
                name: "a success resets the failure count",
                success: 2,
                failure: 3,
                delay_ms: 0,
                steps: &[
                    (F, 0, None),
                    (F, 1, None),
                    (T, 2, None),
                    (F, 3, None),
                    (F, 4, None),
                    (F, 5, Some(false)),
                ],
            },
            Case {
                name: "healthy needs consecutive successes",
                success: 2,
                failure: 3,
                delay_ms: 0,
                steps: &[(T, 0, None), (F, 1, None), (T, 2, None), (T, 3, Some(true))],
            },
            Case {
                name: "healthy stays healthy until the failure threshold",
                success: 1,
                failure: 2,
                delay_ms: 0,
                steps: &[
                    (T, 0, Some(true)),
                    (F, 1, Some(true)),
                    (T, 2, Some(true)),
                    (F, 3, Some(true)),
                    (F, 4, Some(false)),
                ],
            },
            Case {
                name: "unhealthy needs the success threshold to recover",
                success: 2,
                failure: 1,
                delay_ms: 0,
                steps: &[(F, 0, Some(false)), (T, 1, Some(false)), (T, 2, Some(true))],
            },
            Case {
                name: "attempts before the initial delay do not count",
                success: 1,
                failure: 1,
                delay_ms: 1000,
                steps: &[(F, 0, None), (F, 999, None), (T, 1000, Some(true))],
            },
        ];
        for c in cases {
            let mut p = exec(&["true"]);
            p.success_threshold = c.success;
            p.failure_threshold = c.failure;
            p.initial_delay = D(Duration::from_millis(c.delay_ms));
            let mut t = Tracker::new(&p, 0);
            for (i, &(ok, at, want)) in c.steps.iter().enumerate() {
                let v = t.observe(ok, &format!("attempt {i}"), at);
                assert_eq!(v.healthy, want, "{}: step {i}", c.name);
            }
        }
    }

    #[test]
    fn the_tracker_keeps_the_output_of_the_last_counted_attempt() {
        let mut p = exec(&["true"]);
        p.initial_delay = D::secs(1);
        let mut t = Tracker::new(&p, 10_000);
        t.observe(false, "too early", 10_500);
        assert_eq!(t.verdict().last_output, "");
        t.observe(false, "counted", 11_000);
        assert_eq!(t.verdict().last_output, "counted");
    }
}
