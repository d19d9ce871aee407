//! Operations: a rollout (or an undo) as a journaled list of steps.
//!
//! The journal of an operation is a list of events (`Started`, `Succeeded(output)`,
//! `Failed(error)`, `RollbackBegan`, `Finished`); its status is *derived* by replaying
//! them through one transition function that rejects impossible sequences. Nothing is
//! overwritten in place, so a crash between any two writes leaves a journal that replays
//! to exactly where the work stopped.

use serde::{Deserialize, Serialize};

use crate::model::Revision;

/// Milliseconds since the Unix epoch. Time is passed in, never read, by pure code.
pub type Millis = u64;

/// A ULID, as text.
pub type OpId = String;

/// The steps of a rollout and of its rollback (docs/design.md, "Steps by strategy and
/// migration policy").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Step {
    /// Waits for `berthctl approve` (approval: Required).
    AwaitApproval,
    PullImage,
    Backup,
    /// Breaking migrations: the candidate is created (not started) before the old
    /// revision stops, so a failure to create it costs no downtime.
    CreateCandidate,
    StopOld,
    Migrate,
    StartCandidate,
    WaitReady,
    /// The smoke checks against the candidate's own port.
    SmokeCandidate,
    SwitchTraffic,
    /// Soak for `verifyFor`: the candidate must stay live and ready; smoke checks run
    /// through the proxy.
    Verify,
    /// Stops the old revision once `drainFor` has passed since the switch (its containers
    /// are kept, stopped, for rollback).
    RetireOld,
    /// Removes revisions beyond `revisionHistoryLimit`, and old backups beyond `keep`.
    Prune,
    // Rollback steps.
    SwitchBack,
    StopCandidate,
    RestoreDatabase,
    StartOld,
    WaitOldReady,
}

impl Step {
    /// Every step, forward and rollback (the exhaustive match in `name` and the generic
    /// step tests keep it whole).
    pub const ALL: [Step; 18] = [
        Step::AwaitApproval,
        Step::PullImage,
        Step::Backup,
        Step::CreateCandidate,
        Step::StopOld,
        Step::Migrate,
        Step::StartCandidate,
        Step::WaitReady,
        Step::SmokeCandidate,
        Step::SwitchTraffic,
        Step::Verify,
        Step::RetireOld,
        Step::Prune,
        Step::SwitchBack,
        Step::StopCandidate,
        Step::RestoreDatabase,
        Step::StartOld,
        Step::WaitOldReady,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::AwaitApproval => "AwaitApproval",
            Step::PullImage => "PullImage",
            Step::Backup => "Backup",
            Step::CreateCandidate => "CreateCandidate",
            Step::StopOld => "StopOld",
            Step::Migrate => "Migrate",
            Step::StartCandidate => "StartCandidate",
            Step::WaitReady => "WaitReady",
            Step::SmokeCandidate => "SmokeCandidate",
            Step::SwitchTraffic => "SwitchTraffic",
            Step::Verify => "Verify",
            Step::RetireOld => "RetireOld",
            Step::Prune => "Prune",
            Step::SwitchBack => "SwitchBack",
            Step::StopCandidate => "StopCandidate",
            Step::RestoreDatabase => "RestoreDatabase",
            Step::StartOld => "StartOld",
            Step::WaitOldReady => "WaitOldReady",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Forward,
    Rollback,
}

/// What a finished step leaves for later steps: data passes between steps only through
/// these recorded outputs, never through memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutput {
    None,
    Image {
        id: String,
        /// `repo@sha256:…`: what every container of the revision is created from, so a
        /// tag moved on the registry later changes nothing that runs. Absent from
        /// journals written before it was recorded.
        #[serde(default)]
        repo_digest: Option<String>,
    },
    Backup {
        id: String,
        path: String,
        size: u64,
        sha256: String,
    },
    Migration {
        exit_code: i64,
        log_tail: String,
    },
    Note(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Started {
        phase: Phase,
        index: usize,
    },
    Succeeded {
        phase: Phase,
        index: usize,
        output: StepOutput,
    },
    Failed {
        phase: Phase,
        index: usize,
        error: String,
        retryable: bool,
    },
    /// The forward steps stop here; `steps` undo what was done.
    RollbackBegan {
        reason: String,
        steps: Vec<Step>,
    },
    Finished {
        outcome: Outcome,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Millis,
    pub entry: Entry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    /// Rolled back by itself; the environment runs the old revision again.
    RolledBack {
        reason: String,
    },
    /// Stopped and needs an operator: a rollback failed, or automatic rollback is off.
    Failed {
        reason: String,
    },
    /// Replaced by a newer desired state before it switched traffic.
    Superseded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    Rollout,
    /// `berthctl rollout undo`: a rollout back to an earlier revision.
    Undo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: OpId,
    pub env: String,
    pub kind: OpKind,
    pub from: Option<Revision>,
    pub to: Revision,
    /// What changed, in words: "image app:v1 → app:v2".
    pub reason: String,
    pub created_at: Millis,
    pub steps: Vec<Step>,
    pub log: Vec<Event>,
    /// The manifest's `EnvironmentSpec` (as JSON) when the operation began. Every step and
    /// every decision of the operation works from it (see `plan::operation_spec`), so a
    /// manifest edited meanwhile cannot split the planner from the steps. `Null` in
    /// journals written before operations pinned their spec.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// Where a step stands, derived from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running {
        since: Millis,
        attempts: u32,
    },
    Succeeded {
        at: Millis,
        output: StepOutput,
    },
    /// Failed and may be retried (the previous attempt's error).
    Retrying {
        since: Millis,
        attempts: u32,
        error: String,
    },
    Failed {
        at: Millis,
        error: String,
    },
}

/// The derived status of an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub phase: Phase,
    /// The steps of the current phase, with their states.
    pub steps: Vec<(Step, StepState)>,
    pub rollback_reason: Option<String>,
    pub outcome: Option<Outcome>,
    /// The forward steps' states, kept when the rollback phase began.
    pub forward: Vec<(Step, StepState)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("operation {op}: event {index} ({entry}) is not possible here: {why}")]
pub struct IllegalTransition {
    pub op: OpId,
    pub index: usize,
    pub entry: String,
    pub why: String,
}

impl Status {
    /// The first step of the current phase that has not succeeded, with its state.
    pub fn cursor(&self) -> Option<(usize, Step, &StepState)> {
        self.steps
            .iter()
            .enumerate()
            .find(|(_, (_, s))| !matches!(s, StepState::Succeeded { .. }))
            .map(|(i, (step, s))| (i, *step, s))
    }

    /// The output of the first successful `step` in either phase.
    pub fn output_of(&self, step: Step) -> Option<&StepOutput> {
        self.forward
            .iter()
            .chain(self.steps.iter())
            .find_map(|(s, st)| match st {
                StepState::Succeeded { output, .. } if *s == step => Some(output),
                _ => None,
            })
    }

    /// When `step` first succeeded, in either phase.
    pub fn succeeded_at(&self, step: Step) -> Option<Millis> {
        self.forward
            .iter()
            .chain(self.steps.iter())
            .find_map(|(s, st)| match st {
                StepState::Succeeded { at, .. } if *s == step => Some(*at),
                _ => None,
            })
    }

    pub fn did_succeed(&self, step: Step) -> bool {
        self.succeeded_at(step).is_some()
    }

    /// Whether `step` was started (in either phase): its effect may have happened.
    pub fn begun(&self, step: Step) -> bool {
        self.steps
            .iter()
            .chain(self.forward.iter())
            .any(|(s, state)| *s == step && !matches!(state, StepState::Pending))
    }
}

impl Operation {
    /// Replays the log. A log that could not have been written by Berth is an error, not
    /// a guess (bad data loaded from storage is an `Err`).
    pub fn status(&self) -> Result<Status, IllegalTransition> {
        let fresh = |steps: &[Step]| {
            steps
                .iter()
                .map(|s| (*s, StepState::Pending))
                .collect::<Vec<_>>()
        };
        let mut st = Status {
            phase: Phase::Forward,
            steps: fresh(&self.steps),
            rollback_reason: None,
            outcome: None,
            forward: Vec::new(),
        };
        for (i, ev) in self.log.iter().enumerate() {
            let bad = |why: &str| IllegalTransition {
                op: self.id.clone(),
                index: i,
                entry: format!("{:?}", ev.entry),
                why: why.to_owned(),
            };
            if st.outcome.is_some() {
                return Err(bad("the operation already finished"));
            }
            match &ev.entry {
                Entry::Started { phase, index }
                | Entry::Succeeded { phase, index, .. }
                | Entry::Failed { phase, index, .. } => {
                    if *phase != st.phase {
                        return Err(bad("event for a phase that is not current"));
                    }
                    let cursor = st.cursor().map(|(c, _, _)| c);
                    if cursor != Some(*index) {
                        return Err(bad("not the current step"));
                    }
                    let slot = &mut st.steps[*index].1;
                    *slot = match (&ev.entry, &*slot) {
                        (Entry::Started { .. }, StepState::Pending) => StepState::Running {
                            since: ev.at,
                            attempts: 1,
                        },
                        // Started again: the step is being re-run after a crash or an error.
                        (Entry::Started { .. }, StepState::Running { since, attempts }) => {
                            StepState::Running {
                                since: *since,
                                attempts: attempts + 1,
                            }
                        }
                        (
                            Entry::Started { .. },
                            StepState::Retrying {
                                since, attempts, ..
                            },
                        ) => StepState::Running {
                            since: *since,
                            attempts: attempts + 1,
                        },
                        (Entry::Succeeded { output, .. }, StepState::Running { .. }) => {
                            StepState::Succeeded {
                                at: ev.at,
                                output: output.clone(),
                            }
                        }
                        (
                            Entry::Failed {
                                error,
                                retryable: true,
                                ..
                            },
                            StepState::Running { since, attempts },
                        ) => StepState::Retrying {
                            since: *since,
                            attempts: *attempts,
                            error: error.clone(),
                        },
                        (
                            Entry::Failed {
                                error,
                                retryable: false,
                                ..
                            },
                            // Giving up on a step that kept failing: no new attempt is made.
                            StepState::Running { .. } | StepState::Retrying { .. },
                        ) => StepState::Failed {
                            at: ev.at,
                            error: error.clone(),
                        },
                        _ => return Err(bad("the step is not running")),
                    };
                }
                Entry::RollbackBegan { reason, steps } => {
                    if st.phase == Phase::Rollback {
                        return Err(bad("already rolling back"));
                    }
                    st.forward = std::mem::replace(&mut st.steps, fresh(steps));
                    st.phase = Phase::Rollback;
                    st.rollback_reason = Some(reason.clone());
                }
                Entry::Finished { outcome } => {
                    let all_done = |steps: &[(Step, StepState)]| {
                        steps.iter().all(|(s, state)| match state {
                            StepState::Succeeded { .. } => true,
                            // A failed prune does not undo a healthy rollout.
                            StepState::Failed { .. } => *s == Step::Prune,
                            _ => false,
                        })
                    };
                    let possible = match outcome {
                        Outcome::Succeeded => st.phase == Phase::Forward && all_done(&st.steps),
                        Outcome::RolledBack { .. } => {
                            st.phase == Phase::Rollback && all_done(&st.steps)
                        }
                        Outcome::Superseded => st.phase == Phase::Forward,
                        Outcome::Failed { .. } => true,
                    };
                    if !possible {
                        return Err(bad("the outcome does not match the steps"));
                    }
                    st.outcome = Some(outcome.clone());
                }
            }
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(log: Vec<Entry>) -> Operation {
        Operation {
            id: "01TEST".into(),
            env: "web".into(),
            kind: OpKind::Rollout,
            from: Some(1),
            to: 2,
            reason: "image".into(),
            created_at: 0,
            steps: vec![Step::PullImage, Step::Migrate, Step::StartCandidate],
            spec: serde_json::Value::Null,
            log: log
                .into_iter()
                .enumerate()
                .map(|(i, entry)| Event {
                    at: i as u64 * 10,
                    entry,
                })
                .collect(),
        }
    }

    use Entry::*;
    use Phase::Forward;

    #[test]
    fn a_step_started_twice_counts_two_attempts_and_the_cursor_stays_on_it() {
        let s = op(vec![
            Started {
                phase: Forward,
                index: 0,
            },
            Succeeded {
                phase: Forward,
                index: 0,
                output: StepOutput::None,
            },
            Started {
                phase: Forward,
                index: 1,
            },
            Started {
                phase: Forward,
                index: 1,
            },
        ])
        .status()
        .unwrap();
        let (i, step, state) = s.cursor().unwrap();
        assert_eq!((i, step), (1, Step::Migrate));
        assert_eq!(
            *state,
            StepState::Running {
                since: 20,
                attempts: 2
            }
        );
    }

    #[test]
    fn a_retryable_failure_is_retried_and_a_terminal_one_is_final() {
        let s = op(vec![
            Started {
                phase: Forward,
                index: 0,
            },
            Failed {
                phase: Forward,
                index: 0,
                error: "timeout".into(),
                retryable: true,
            },
        ])
        .status()
        .unwrap();
        assert!(matches!(
            s.cursor().unwrap().2,
            StepState::Retrying { attempts: 1, .. }
        ));
        let s = op(vec![
            Started {
                phase: Forward,
                index: 0,
            },
            Failed {
                phase: Forward,
                index: 0,
                error: "no such image".into(),
                retryable: false,
            },
        ])
        .status()
        .unwrap();
        assert!(matches!(s.cursor().unwrap().2, StepState::Failed { .. }));
    }

    #[test]
    fn impossible_logs_are_rejected() {
        for log in [
            vec![Succeeded {
                phase: Forward,
                index: 0,
                output: StepOutput::None,
            }],
            vec![Started {
                phase: Forward,
                index: 1,
            }],
            vec![Started {
                phase: Phase::Rollback,
                index: 0,
            }],
            vec![
                Finished {
                    outcome: Outcome::Succeeded,
                },
                Started {
                    phase: Forward,
                    index: 0,
                },
            ],
            // Succeeded with steps left, rolled back without a rollback.
            vec![Finished {
                outcome: Outcome::Succeeded,
            }],
            vec![Finished {
                outcome: Outcome::RolledBack { reason: "x".into() },
            }],
            vec![
                RollbackBegan {
                    reason: "x".into(),
                    steps: vec![],
                },
                RollbackBegan {
                    reason: "y".into(),
                    steps: vec![],
                },
            ],
        ] {
            assert!(op(log.clone()).status().is_err(), "{log:?}");
        }
    }

    #[test]
    fn rollback_keeps_the_forward_outputs_for_the_undo_steps() {
        let backup = StepOutput::Backup {
            id: "b1".into(),
            path: "/b/1".into(),
            size: 3,
            sha256: "ab".into(),
        };
        let s = op(vec![
            Started {
                phase: Forward,
                index: 0,
            },
            Succeeded {
                phase: Forward,
                index: 0,
                output: backup.clone(),
            },
            Started {
                phase: Forward,
                index: 1,
            },
            Failed {
                phase: Forward,
                index: 1,
                error: "exit 1".into(),
                retryable: false,
            },
            RollbackBegan {
                reason: "migration failed".into(),
                steps: vec![Step::RestoreDatabase],
            },
            Started {
                phase: Phase::Rollback,
                index: 0,
            },
        ])
        .status()
        .unwrap();
        assert_eq!(s.phase, Phase::Rollback);
        assert_eq!(s.output_of(Step::PullImage), Some(&backup));
        assert_eq!(s.cursor().unwrap().1, Step::RestoreDatabase);
    }

    #[test]
    fn every_truncation_of_a_valid_log_replays() {
        // A crash may cut the journal after any write: every prefix must still replay.
        let full = [
            Started {
                phase: Forward,
                index: 0,
            },
            Succeeded {
                phase: Forward,
                index: 0,
                output: StepOutput::None,
            },
            Started {
                phase: Forward,
                index: 1,
            },
            Failed {
                phase: Forward,
                index: 1,
                error: "boom".into(),
                retryable: false,
            },
            RollbackBegan {
                reason: "boom".into(),
                steps: vec![Step::StopCandidate],
            },
            Started {
                phase: Phase::Rollback,
                index: 0,
            },
            Succeeded {
                phase: Phase::Rollback,
                index: 0,
                output: StepOutput::None,
            },
            Finished {
                outcome: Outcome::RolledBack {
                    reason: "boom".into(),
                },
            },
        ];
        for k in 0..=full.len() {
            assert!(op(full[..k].to_vec()).status().is_ok(), "prefix {k}");
        }
    }
}
