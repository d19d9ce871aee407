//! The migration: a one-off container of the new image, named after the operation, that
//! runs exactly once (docs/design.md, journal rule 4).
//!
//! [`migrate`] is called again and again while the `Migrate` step runs (and again after a
//! crash); each call observes the container first and only then acts:
//!
//! | observed                  | action              | returns                            |
//! | ------------------------- | ------------------- | ---------------------------------- |
//! | absent                    | create and start it | `Running`                          |
//! | created, never started    | start it            | `Running`                          |
//! | running (or paused...)    | nothing             | `Running`                          |
//! | running, past the timeout | stop it             | `TimedOut` (`Done` if it exited 0) |
//! | exited 0                  | nothing             | `Done`                             |
//! | exited non-zero           | nothing             | `Failed`                           |
//!
//! So there is never a second migrate container for one operation, and one that exited
//! is never run again. The caller records the outcome (with the log tail, for events),
//! and only then calls [`cleanup`].

use std::time::Duration;

use crate::exec::ExecError;
use crate::host::{Created, Host};
use crate::model::{ContainerSpec, ContainerState, Role};
use crate::op::Millis;
use crate::redact::Redactor;

/// How many lines of the container's output an outcome carries.
pub const LOG_TAIL_LINES: usize = 40;

/// At most this many bytes of those lines (the end of them), to keep the journal small.
pub const LOG_TAIL_BYTES: usize = 8 * 1024;

/// SIGTERM, then SIGKILL after this, when a migration times out.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a migration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Exited 0.
    Done { log_tail: String },
    /// Started at `since` (the step's start) and not finished yet: call again later.
    Running { since: Millis },
    /// Exited non-zero. It is not run again.
    Failed { exit_code: i64, log_tail: String },
    /// Ran past its timeout and was stopped (and did not exit 0); the caller fails the
    /// step. Observed again, the stopped container is `Failed` (it is not run again either).
    TimedOut { log_tail: String },
}

/// Advances the migration container `spec` (role `migrate`, named
/// [`crate::model::migrate_name`]`(env, op)`) by one observation.
///
/// `started_at` is when the `Migrate` step first started (from the journal); the
/// migration times out `timeout` after it. `now` is the current time. Log tails are
/// redacted by `redactor`.
///
/// # Guarantees
/// Creates at most one container (the name is the operation's), never starts a
/// container that has exited, and never removes one (see [`cleanup`]).
///
/// # Errors
/// A host error (retryable as the host says); a spec that is not a migrate container
/// (permanent).
pub async fn migrate<H: Host + ?Sized>(
    host: &H,
    spec: &ContainerSpec,
    started_at: Millis,
    now: Millis,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<Progress, ExecError> {
    let name = &spec.name;
    if spec.role != Role::Migrate {
        return Err(ExecError::failed(
            format!("migration {name}"),
            format!(
                "asked to run a {} container as a migration",
                spec.role.as_str()
            ),
            false,
        ));
    }
    let state = match host.inspect(name).await? {
        Some(c) => c.state,
        None => match host.create(spec).await? {
            Created::Created => ContainerState::Created,
            // Appeared since we looked: observe what is there, never replace it.
            Created::Existed(c) => c.state,
        },
    };
    match state {
        ContainerState::Created => {
            host.start(name).await?;
            Ok(Progress::Running { since: started_at })
        }
        ContainerState::Exited(0) => Ok(Progress::Done {
            log_tail: log_tail(host, name, redactor).await?,
        }),
        ContainerState::Exited(exit_code) => Ok(Progress::Failed {
            exit_code,
            log_tail: log_tail(host, name, redactor).await?,
        }),
        // Running, or paused/restarting: not finished, so it is waited for, within the timeout.
        ContainerState::Running | ContainerState::Other => {
            let deadline = started_at.saturating_add(millis(timeout));
            if now < deadline {
                return Ok(Progress::Running { since: started_at });
            }
            host.stop(name, STOP_GRACE).await?;
            // The observed exit decides, as it will when this is observed again after a
            // crash: a migration that exited 0 as it was stopped did finish.
            let stopped = host.inspect(name).await?.map(|c| c.state);
            if stopped == Some(ContainerState::Exited(0)) {
                return Ok(Progress::Done {
                    log_tail: log_tail(host, name, redactor).await?,
                });
            }
            let mut log_tail = log_tail(host, name, redactor).await?;
            if !log_tail.is_empty() && !log_tail.ends_with('\n') {
                log_tail.push('\n');
            }
            log_tail.push_str(&format!(
                "berth: stopped after the migration timeout of {}s",
                timeout.as_secs()
            ));
            Ok(Progress::TimedOut { log_tail })
        }
    }
}

/// Removes a finished migration container (after the caller recorded its outcome).
/// Absent is success.
///
/// # Errors
/// A container that is still running is not removed (permanent: the caller must not
/// clean up before the outcome); a host error.
pub async fn cleanup<H: Host + ?Sized>(host: &H, name: &str) -> Result<(), ExecError> {
    match host.inspect(name).await? {
        None => Ok(()),
        Some(c) if c.state == ContainerState::Running => Err(ExecError::failed(
            format!("migration {name}"),
            "still running: not removed",
            false,
        )),
        Some(_) => Ok(host.remove(name).await?),
    }
}

/// The end of the container's log, redacted before it is cut (a cut through a secret
/// would leave a part of it that no longer matches).
async fn log_tail<H: Host + ?Sized>(
    host: &H,
    name: &str,
    redactor: &Redactor,
) -> Result<String, ExecError> {
    let logs = redactor.redact(&host.logs(name, LOG_TAIL_LINES).await?);
    Ok(tail_lines(&logs, LOG_TAIL_LINES, LOG_TAIL_BYTES).to_owned())
}

/// The last `lines` lines of `s` (no trailing newline), at most `bytes` bytes of them.
pub fn tail_lines(s: &str, lines: usize, bytes: usize) -> &str {
    let s = s.trim_end_matches(['\n', '\r']);
    let start = if lines == 0 {
        s.len()
    } else {
        s.rmatch_indices('\n')
            .nth(lines - 1)
            .map_or(0, |(i, _)| i + 1)
    };
    super::backup::tail_chars(&s[start..], bytes)
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_last_lines() {
        let text: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let tail = tail_lines(&text, 40, 10_000);
        assert_eq!(tail.lines().count(), 40);
        assert!(tail.starts_with("line 11\n"));
        assert!(tail.ends_with("line 50"));
        assert_eq!(tail_lines("a\nb", 40, 100), "a\nb");
        assert_eq!(tail_lines("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines("", 40, 100), "");
        assert_eq!(tail_lines("abc", 0, 100), "");
    }

    #[test]
    fn tail_lines_caps_the_bytes_at_a_character_boundary() {
        let tail = tail_lines("xxxx\nééé", 40, 5);
        assert_eq!(tail, "éé");
    }
}

#[cfg(test)]
mod fake_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::exec::backup::shell_fake::ShellFake;
    use crate::host::fake::FakeHost;
    use crate::model::{migrate_name, Template};

    const T0: Millis = 1_000_000;
    const TIMEOUT: Duration = Duration::from_secs(600);
    const PAST: Millis = T0 + 600_000;

    fn spec() -> ContainerSpec {
        let template = Template {
            image: "app:v2".into(),
            command: None,
            args: None,
            env: BTreeMap::new(),
            env_files: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
        };
        ContainerSpec {
            name: migrate_name("web", "01JOP"),
            env_name: "web".into(),
            revision: 2,
            role: Role::Migrate,
            replica: None,
            op: Some("01JOP".into()),
            template_hash: template.hash(),
            template,
            host_ports: Vec::new(),
            override_args: Some(vec!["migrate".into()]),
            aliases: Vec::new(),
        }
    }

    fn host() -> ShellFake {
        let fake = FakeHost::new("vm-a");
        fake.add_image("app:v2");
        ShellFake(fake)
    }

    const NAME: &str = "web-migrate-01jop";

    /// (observed state, now, expected progress, expected mutations, state after).
    type Case = (
        Option<ContainerState>,
        Millis,
        Progress,
        &'static [&'static str],
        Option<ContainerState>,
    );

    #[tokio::test]
    async fn each_observed_state_gets_its_one_action() {
        use ContainerState::*;
        let tail = |s: &str| s.to_owned();
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            (None, T0, Progress::Running { since: T0 }, &["create web-migrate-01jop", "start web-migrate-01jop"], Some(Running)),
            (Some(Created), T0, Progress::Running { since: T0 }, &["start web-migrate-01jop"], Some(Running)),
            (Some(Running), PAST - 1, Progress::Running { since: T0 }, &[], Some(Running)),
            (Some(Other), T0, Progress::Running { since: T0 }, &[], Some(Other)),
            (Some(Running), PAST, Progress::TimedOut { log_tail: tail("applying migration 2\nberth: stopped after the migration timeout of 600s") }, &["stop web-migrate-01jop"], Some(Exited(137))),
            (Some(Exited(0)), PAST, Progress::Done { log_tail: tail("applying migration 2") }, &[], Some(Exited(0))),
            (Some(Exited(1)), T0, Progress::Failed { exit_code: 1, log_tail: tail("applying migration 2") }, &[], Some(Exited(1))),
            (Some(Exited(137)), PAST, Progress::Failed { exit_code: 137, log_tail: tail("applying migration 2") }, &[], Some(Exited(137))),
        ];
        for (observed, now, expected, mutations, after) in table {
            let host = host();
            if let Some(state) = observed {
                host.0.add_container(&spec(), state);
            }
            host.0.set_logs(NAME, "applying migration 2\n");
            let got = migrate(&host, &spec(), T0, now, TIMEOUT, &Redactor::none())
                .await
                .unwrap();
            assert_eq!(got, expected, "{observed:?} at {now}");
            assert_eq!(host.0.mutations(), mutations, "{observed:?} at {now}");
            assert_eq!(
                host.0.container(NAME).map(|c| c.state),
                after,
                "{observed:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_migration_observed_again_and_again_is_created_and_started_once() {
        let host = host();
        host.0.on_start(NAME, ContainerState::Running);
        let mut seen = Vec::new();
        for i in 0..5 {
            if i == 3 {
                host.0.set_state(NAME, ContainerState::Exited(0));
            }
            seen.push(
                migrate(&host, &spec(), T0, T0 + i, TIMEOUT, &Redactor::none())
                    .await
                    .unwrap(),
            );
        }
        assert!(matches!(seen[2], Progress::Running { since: T0 }));
        assert!(matches!(seen[3], Progress::Done { .. }));
        assert_eq!(seen[3], seen[4]);
        assert_eq!(host.0.count(&format!("create {NAME}")), 1);
        assert_eq!(host.0.count(&format!("start {NAME}")), 1);
        let mine = host.0.list("web").await.unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].op.as_deref(), Some("01JOP"));
        assert_eq!(mine[0].role, Role::Migrate);
    }

    #[tokio::test]
    async fn the_log_tail_keeps_no_secret_the_migration_printed() {
        let host = host();
        host.0.on_start(NAME, ContainerState::Exited(0));
        host.0.set_logs(
            NAME,
            "connecting to postgres://demo:S3cr3t-db@db/app\ntoken=t0k3n-v4lue\napplied\n",
        );
        let redactor = Redactor::new(["S3cr3t-db"]);
        migrate(&host, &spec(), T0, T0, TIMEOUT, &redactor)
            .await
            .unwrap();
        let p = migrate(&host, &spec(), T0, T0 + 1, TIMEOUT, &redactor)
            .await
            .unwrap();
        assert_eq!(
            p,
            Progress::Done {
                log_tail: "connecting to postgres://demo:***@db/app\ntoken=***\napplied".into()
            }
        );
    }

    #[tokio::test]
    async fn a_migration_that_failed_is_never_run_again() {
        let host = host();
        host.0.on_start(NAME, ContainerState::Exited(3));
        host.0.set_logs(NAME, "relation already exists\n");
        assert!(matches!(
            migrate(&host, &spec(), T0, T0, TIMEOUT, &Redactor::none())
                .await
                .unwrap(),
            Progress::Running { .. }
        ));
        for _ in 0..3 {
            let p = migrate(&host, &spec(), T0, T0 + 1, TIMEOUT, &Redactor::none())
                .await
                .unwrap();
            assert_eq!(
                p,
                Progress::Failed {
                    exit_code: 3,
                    log_tail: "relation already exists".into()
                }
            );
        }
        assert_eq!(host.0.count(&format!("start {NAME}")), 1);
    }

    /// Every mutating call fails in turn, with or without its effect; observing again
    /// still ends with one container, started once.
    #[tokio::test]
    async fn a_migration_recovers_from_a_failure_at_every_call() {
        for n in 1..=2 {
            for after_effect in [false, true] {
                let host = host();
                if after_effect {
                    host.0.fail_call_after_effect(n);
                } else {
                    host.0.fail_call(n);
                }
                let mut last = None;
                for _ in 0..3 {
                    if let Ok(p) = migrate(&host, &spec(), T0, T0, TIMEOUT, &Redactor::none()).await
                    {
                        last = Some(p);
                    }
                }
                let ctx = format!(
                    "call {n}, after effect {after_effect}: {:?}",
                    host.0.mutations()
                );
                assert_eq!(last, Some(Progress::Running { since: T0 }), "{ctx}");
                assert_eq!(host.0.list("web").await.unwrap().len(), 1, "{ctx}");
                // At most the failed start and its retry; never a start after it ran.
                assert!(host.0.count(&format!("start {NAME}")) <= 2, "{ctx}");
                assert_eq!(
                    host.0.container(NAME).map(|c| c.state),
                    Some(ContainerState::Running),
                    "{ctx}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_migration_that_exits_0_as_it_is_stopped_did_finish() {
        // The plain fake's stop ends a container with exit 0, like a graceful SIGTERM.
        let fake = FakeHost::new("vm-a");
        fake.add_container(&spec(), ContainerState::Running);
        let p = migrate(&fake, &spec(), T0, PAST, TIMEOUT, &Redactor::none())
            .await
            .unwrap();
        assert!(matches!(p, Progress::Done { .. }), "{p:?}");
        // And observed again after a crash, the same answer.
        let again = migrate(&fake, &spec(), T0, PAST + 1, TIMEOUT, &Redactor::none())
            .await
            .unwrap();
        assert_eq!(p, again);
    }

    #[tokio::test]
    async fn the_log_tail_is_the_last_40_lines() {
        let host = host();
        host.0.add_container(&spec(), ContainerState::Exited(1));
        let logs: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        host.0.set_logs(NAME, &logs);
        let Progress::Failed { log_tail, .. } =
            migrate(&host, &spec(), T0, T0, TIMEOUT, &Redactor::none())
                .await
                .unwrap()
        else {
            panic!("not failed")
        };
        assert_eq!(log_tail.lines().count(), LOG_TAIL_LINES);
        assert!(log_tail.starts_with("line 61\n") && log_tail.ends_with("line 100"));
    }

    #[tokio::test]
    async fn only_a_migrate_container_is_run_as_a_migration() {
        let host = host();
        let app = ContainerSpec {
            role: Role::App,
            ..spec()
        };
        let err = migrate(&host, &app, T0, T0, TIMEOUT, &Redactor::none())
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(host.0.calls().is_empty());
    }

    #[tokio::test]
    async fn cleanup_removes_a_finished_migration_and_never_a_running_one() {
        let host = host();
        cleanup(&host, NAME).await.unwrap();
        host.0.add_container(&spec(), ContainerState::Running);
        let err = cleanup(&host, NAME).await.unwrap_err();
        assert!(err.to_string().contains("still running"), "{err}");
        assert!(host.0.container(NAME).is_some());
        host.0.set_state(NAME, ContainerState::Exited(0));
        cleanup(&host, NAME).await.unwrap();
        assert_eq!(host.0.container(NAME), None);
        cleanup(&host, NAME).await.unwrap();
    }
}
