//! Following an environment until its desired revision serves or its rollout ends
//! (`rollout status -w`, `apply --wait`, `approve --wait`, `rollout undo --wait`).
//!
//! On a TTY one line is redrawn in place (current step, elapsed time, replicas ready of
//! wanted, the last failure's output); otherwise a plain line is printed each time what
//! it says changes. The outcome decides the exit code: 0 succeeded, 1 failed or rolled
//! back, 3 berthd unreachable, 4 timed out.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::client::Client;
use super::state::{phase, split_steps};
use super::CtlError;
use crate::op::Outcome;
use crate::reconcile::status::EnvStatus;

/// How often berthd is asked.
const POLL: Duration = Duration::from_millis(500);

/// Where an environment stands for someone waiting on it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still going: one line saying where.
    Going(String),
    Succeeded(String),
    Failed(String),
}

/// Reads one status. Finished operations count only once nothing runs: success is the
/// desired revision serving (`inSync`), failure is the desired template having failed.
pub fn verdict(s: &EnvStatus) -> Verdict {
    let current = s.state.current.map_or("none".into(), |r| r.to_string());
    if let Some(op) = s.operation.as_ref().filter(|o| o.outcome.is_none()) {
        let (steps, _) = split_steps(op);
        let failed = steps
            .iter()
            .chain(op.steps.iter())
            .find_map(|l| l.error.clone())
            .map(|e| format!(" — last failure: {}", super::output::one_line(&e)))
            .unwrap_or_default();
        let done = steps.iter().filter(|l| l.state == "Succeeded").count();
        return Verdict::Going(format!(
            "{}: {} (step {}/{}) to revision {}: {}{failed}",
            s.name,
            phase(s),
            (done + 1).min(steps.len()),
            steps.len(),
            op.to,
            s.state.message
        ));
    }
    if s.in_sync == Some(true) {
        return Verdict::Succeeded(format!("{}: revision {current} is serving", s.name));
    }
    let failed_desired = s
        .state
        .failed
        .as_ref()
        .is_some_and(|f| Some(&f.template_hash) == s.desired_hash.as_ref());
    if failed_desired {
        let how = match s.operation.as_ref().and_then(|o| o.outcome.as_ref()) {
            Some(Outcome::RolledBack { .. }) => "rolled back",
            _ => "failed",
        };
        return Verdict::Failed(format!(
            "{}: the rollout {how}; revision {current} is serving: {}",
            s.name, s.state.message
        ));
    }
    if s.operation
        .as_ref()
        .is_some_and(|o| matches!(o.outcome, Some(Outcome::Failed { .. })))
        && s.desired_hash.is_none()
    {
        return Verdict::Failed(format!("{}: {}", s.name, s.state.message));
    }
    Verdict::Going(format!(
        "{}: waiting for the rollout to begin: {}",
        s.name, s.state.message
    ))
}

/// Follows `name` until it succeeds, fails or `timeout` passes.
///
/// # Errors
/// [`CtlError::RolloutFailed`] (exit 1), [`CtlError::TimedOut`] (exit 4), the client's.
pub fn follow(client: &Client, name: &str, timeout: Duration) -> Result<String, CtlError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    let path = format!("/v1/environments/{name}");
    loop {
        let s: EnvStatus = client.get(&path)?;
        let secs = started.elapsed().as_secs();
        match verdict(&s) {
            Verdict::Going(line) => {
                if tty {
                    let shown = format!("[{secs:>3}s] {line}");
                    eprint!("\r\x1b[K{}", super::output::truncate(&shown, 160));
                    let _ = std::io::stderr().flush();
                } else if line != last {
                    eprintln!("[{secs:>3}s] {line}");
                }
                last = line;
            }
            Verdict::Succeeded(line) => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Ok(format!("{line}\n"));
            }
            Verdict::Failed(line) => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                return Err(CtlError::RolloutFailed(line));
            }
        }
        if started.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            return Err(CtlError::TimedOut(timeout));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EnvState, FailedTemplate};

    fn status(in_sync: bool, failed: Option<&str>, desired: &str) -> EnvStatus {
        EnvStatus {
            name: "web".into(),
            state: EnvState {
                current: Some(1),
                failed: failed.map(|h| FailedTemplate {
                    template_hash: h.into(),
                    reason: "x".into(),
                    at: 0,
                }),
                message: "m".into(),
                ..EnvState::default()
            },
            operation: None,
            revisions: vec![],
            backups: vec![],
            events: vec![],
            owner: None,
            in_sync: Some(in_sync),
            desired_hash: Some(desired.into()),
        }
    }

    #[test]
    fn success_is_the_desired_revision_serving_and_failure_the_desired_template_failing() {
        assert!(matches!(
            verdict(&status(true, None, "a")),
            Verdict::Succeeded(_)
        ));
        assert!(matches!(
            verdict(&status(false, Some("a"), "a")),
            Verdict::Failed(_)
        ));
        // An older template's failure does not fail a new rollout that has not begun.
        assert!(matches!(
            verdict(&status(false, Some("b"), "a")),
            Verdict::Going(_)
        ));
    }
}
