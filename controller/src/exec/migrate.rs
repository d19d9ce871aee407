//! The migration: a one-off container of the new image, named after the operation, that
//! runs exactly once (DESIGN.md rule 4).
//!
//! [`migrate`] is called again and again while the `Migrate` step runs (and again after a
//! crash); each call observes the container first and only then acts:
//!
//! | observed                  | action                  | returns                  |
//! | ------------------------- | ----------------------- | ------------------------ |
//! | absent                    | create and start it     | `Running`                |
//! | created, never started    | start it                | `Running`                |
//! | running, within timeout   | nothing                 | `Running`                |
//! | running, past the timeout | stop it                 | `TimedOut` (`Done` if it exited 0) |
//! | exited 0                  | nothing                 | `Done`                   |
//! | exited non-zero           | nothing                 | `Failed`                 |
//!
//! So there is never a second migrate container for one operation, and one that exited
//! is never run again. The caller records the outcome (with the log tail, for events),
//! and only then calls [`cleanup`].

use std::time::Duration;

use crate::exec::ExecError;
use crate::host::{Created, Host};
use crate::model::{ContainerSpec, ContainerState, Role};
use crate::op::Millis;

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
/// migration times out `timeout` after it. `now` is the current time.
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
            log_tail: log_tail(host, name).await?,
        }),
        ContainerState::Exited(exit_code) => Ok(Progress::Failed {
            exit_code,
            log_tail: log_tail(host, name).await?,
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
                    log_tail: log_tail(host, name).await?,
                });
            }
            let mut log_tail = log_tail(host, name).await?;
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

async fn log_tail<H: Host + ?Sized>(host: &H, name: &str) -> Result<String, ExecError> {
    let logs = host.logs(name, LOG_TAIL_LINES).await?;
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
