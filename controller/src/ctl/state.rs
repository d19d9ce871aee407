//! The status files berthd writes, read back for `get` and `describe`, and what they
//! mean for humans: the phase of an environment and the steps of its operation.

use std::path::PathBuf;

use clap::Args;

use super::client::{Client, Connect};
use super::CtlError;
use crate::op::Step;
use crate::reconcile::host_status::{self, HostStatus};
use crate::reconcile::status::{self, EnvStatus, OpStatus, StepLine};

/// `--state DIR` and `--socket PATH`: where berthd is. berthctl asks berthd's API; when
/// nothing answers on the socket, it reads the status files berthd wrote last.
#[derive(Args, Clone, Debug)]
pub struct StateArgs {
    /// berthd's state directory (berthd --state): its socket is <state>/berthd.sock, and
    /// its last status files are under <state>/status/.
    #[arg(long, value_name = "DIR", default_value = ".berth")]
    pub state: PathBuf,
    /// berthd's API socket. Default: $BERTH_SOCKET, else <state>/berthd.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl StateArgs {
    /// A client of the berthd these arguments name.
    pub fn client(&self) -> Client {
        Connect {
            socket: self.socket.clone(),
        }
        .client(&self.state)
    }

    /// Every environment's status from berthd's API, `None` when berthd does not answer.
    fn ask_berthd(&self) -> Result<Option<Vec<EnvStatus>>, CtlError> {
        let client = self.client();
        if !client.reachable() {
            return Ok(None);
        }
        client.get("/v1/environments").map(Some)
    }

    /// The hosts' statuses from berthd's API, else from its last status file; `None`
    /// when berthd has never written one.
    ///
    /// # Errors
    /// [`CtlError::ReadStatus`] for a file that cannot be read; the client's.
    pub fn host_statuses(&self) -> Result<Option<Vec<HostStatus>>, CtlError> {
        let client = self.client();
        if client.reachable() {
            return client.get("/v1/hosts").map(Some);
        }
        host_status::read(&self.state).map_err(|source| CtlError::ReadStatus {
            status_dir: status::status_dir(&self.state),
            source,
        })
    }

    /// Every environment's status, sorted by name.
    ///
    /// # Errors
    /// [`CtlError::NoStatus`] when there is no `status/` directory (berthd has not run
    /// with this state directory); [`CtlError::ReadStatus`] for a file that cannot be
    /// read or parsed.
    pub fn load(&self) -> Result<Vec<EnvStatus>, CtlError> {
        if let Some(all) = self.ask_berthd()? {
            return Ok(all);
        }
        let status_dir = status::status_dir(&self.state);
        if !status_dir.is_dir() {
            return Err(CtlError::NoStatus {
                state: self.state.clone(),
                status_dir,
            });
        }
        status::read_all(&self.state).map_err(|source| CtlError::ReadStatus { status_dir, source })
    }

    /// The statuses of `names`, in that order (all of them when `names` is empty).
    ///
    /// # Errors
    /// Those of [`StateArgs::load`]; [`CtlError::UnknownEnvironment`] for a name with no
    /// status file.
    pub fn select(&self, names: &[String]) -> Result<Vec<EnvStatus>, CtlError> {
        let all = self.load()?;
        if names.is_empty() {
            return Ok(all);
        }
        names
            .iter()
            .map(|name| match all.iter().find(|s| &s.name == name) {
                Some(s) => Ok(s.clone()),
                None => Err(CtlError::UnknownEnvironment {
                    name: name.clone(),
                    status_dir: status::status_dir(&self.state),
                    known: all.iter().map(|s| s.name.clone()).collect(),
                }),
            })
            .collect()
    }
}

/// Where an environment stands, in a few words: `Idle`, `Paused`,
/// `Rolling out <step>`, `Rolling back <step>` or `Failed` (its last operation stopped
/// and needs an operator). A rollout that rolled back by itself leaves the environment
/// `Idle` on its old revision (the message says why).
pub fn phase(s: &EnvStatus) -> String {
    match &s.operation {
        Some(op) if op.outcome.is_none() => {
            let (current, _) = split_steps(op);
            let verb = if is_rollback(op) {
                "Rolling back"
            } else {
                "Rolling out"
            };
            match current.iter().find(|l| l.state != "Succeeded") {
                Some(l) => format!("{verb} {}", l.step),
                None => verb.to_owned(),
            }
        }
        Some(OpStatus {
            outcome: Some(crate::op::Outcome::Failed { .. }),
            ..
        }) => "Failed".to_owned(),
        _ if s.state.paused => "Paused".to_owned(),
        _ => "Idle".to_owned(),
    }
}

fn is_rollback(op: &OpStatus) -> bool {
    op.phase == "Rollback"
}

/// The steps of the operation's current phase, and the forward steps when it is rolling
/// back (the status file lists the rollback steps first, then the forward ones).
pub fn split_steps(op: &OpStatus) -> (&[StepLine], &[StepLine]) {
    if !is_rollback(op) {
        return (&op.steps, &[]);
    }
    let n = op
        .steps
        .iter()
        .take_while(|l| is_rollback_step(&l.step))
        .count();
    op.steps.split_at(n)
}

/// Whether `name` is one of the steps of a rollback (unknown names, from a newer berthd,
/// are not).
fn is_rollback_step(name: &str) -> bool {
    let Ok(step) = serde_json::from_value::<Step>(serde_json::Value::String(name.to_owned()))
    else {
        return false;
    };
    // Exhaustive, so that a new step has to be placed on one side.
    match step {
        Step::SwitchBack
        | Step::StopCandidate
        | Step::RestoreDatabase
        | Step::StartOld
        | Step::WaitOldReady => true,
        Step::AwaitApproval
        | Step::PullImage
        | Step::Backup
        | Step::CreateCandidate
        | Step::StopOld
        | Step::Migrate
        | Step::StartCandidate
        | Step::WaitReady
        | Step::SmokeCandidate
        | Step::SwitchTraffic
        | Step::Verify
        | Step::RetireOld
        | Step::Prune => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Outcome;
    use crate::store::EnvState;

    fn line(step: &str, state: &str) -> StepLine {
        StepLine {
            step: step.into(),
            state: state.into(),
            ..StepLine::default()
        }
    }

    fn env(op: Option<OpStatus>, paused: bool) -> EnvStatus {
        EnvStatus {
            name: "web".into(),
            state: EnvState {
                paused,
                ..EnvState::default()
            },
            operation: op,
            revisions: vec![],
            backups: vec![],
            events: vec![],
            owner: None,
            in_sync: None,
            desired_hash: None,
        }
    }

    fn op(phase: &str, outcome: Option<Outcome>, steps: Vec<StepLine>) -> OpStatus {
        OpStatus {
            id: "01TEST".into(),
            kind: "Rollout".into(),
            created_at: 0,
            from: Some(1),
            to: 2,
            reason: "image".into(),
            phase: phase.into(),
            outcome,
            rollback_reason: None,
            steps,
        }
    }

    #[test]
    fn a_rollout_in_progress_shows_its_first_unfinished_step() {
        let o = op(
            "Forward",
            None,
            vec![
                line("PullImage", "Succeeded"),
                line("WaitReady", "Retrying"),
                line("SwitchTraffic", "Pending"),
            ],
        );
        assert_eq!(phase(&env(Some(o), false)), "Rolling out WaitReady");
    }

    #[test]
    fn a_rollback_shows_its_own_step_not_the_failed_forward_one() {
        let o = op(
            "Rollback",
            None,
            vec![
                line("SwitchBack", "Succeeded"),
                line("RestoreDatabase", "Running"),
                line("PullImage", "Succeeded"),
                line("Migrate", "Failed"),
            ],
        );
        let (current, forward) = split_steps(&o);
        assert_eq!(current.len(), 2);
        assert_eq!(forward[1].step, "Migrate");
        assert_eq!(phase(&env(Some(o), false)), "Rolling back RestoreDatabase");
    }

    #[test]
    fn finished_operations_leave_idle_paused_or_failed() {
        assert_eq!(phase(&env(None, false)), "Idle");
        assert_eq!(phase(&env(None, true)), "Paused");
        let done = |outcome| Some(op("Forward", Some(outcome), vec![]));
        assert_eq!(phase(&env(done(Outcome::Succeeded), false)), "Idle");
        let rolled_back = Outcome::RolledBack { reason: "x".into() };
        assert_eq!(phase(&env(done(rolled_back), false)), "Idle");
        let failed = Outcome::Failed { reason: "x".into() };
        assert_eq!(phase(&env(done(failed), false)), "Failed");
    }
}
