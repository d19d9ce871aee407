//! `berthctl approve` and `berthctl rollout status|history|undo|pause|resume|retry|abort`:
//! the operator's verbs, through berthd's API.

use clap::{Args, Subcommand};

use super::output::{or_none, render, short, utc, Output, Table};
use super::progress::follow;
use super::state::{phase, StateArgs};
use super::view;
use super::CtlError;
use crate::api::types::{ActionReply, ApproveRequest, UndoRequest};
use crate::reconcile::status::{EnvStatus, OpStatus};

/// `--wait` and `--timeout`, for verbs that can follow the rollout they cause.
#[derive(Args, Clone, Debug)]
pub struct Wait {
    /// Follow the rollout to its outcome (exit 0 succeeded, 1 failed or rolled back,
    /// 4 timed out).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait (or -w) waits.
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub timeout: berth_api::values::Duration,
}

/// `berthctl approve NAME [--revision N] [--wait]`.
#[derive(Args, Clone, Debug)]
pub struct Approve {
    /// The environment whose rollout waits for approval.
    pub name: String,
    /// The revision approved; refused unless it is the one waiting.
    #[arg(long, value_name = "N")]
    pub revision: Option<u64>,
    #[command(flatten)]
    pub wait: Wait,
    #[command(flatten)]
    pub state: StateArgs,
}

impl Approve {
    pub fn run(self) -> Result<String, CtlError> {
        let client = self.state.client();
        let reply: ActionReply = client.post(
            &format!("/v1/environments/{}/approve", self.name),
            &ApproveRequest {
                revision: self.revision,
            },
        )?;
        then_wait(&self.state, &self.name, &self.wait, reply)
    }
}

#[derive(Subcommand, Clone, Debug)]
pub enum Rollout {
    /// Where the environment's rollout stands; -w follows it to its outcome.
    Status {
        name: String,
        /// Follow the rollout until the desired revision serves (exit 0) or it fails or
        /// rolls back (exit 1).
        #[arg(short = 'w', long = "watch")]
        watch: bool,
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        timeout: berth_api::values::Duration,
        #[command(flatten)]
        state: StateArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// The environment's operations, newest first.
    History {
        name: String,
        #[command(flatten)]
        state: StateArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Output,
    },
    /// Goes back to an earlier revision (the previous one by default) and holds there
    /// until the spec changes. Needs no approval.
    Undo {
        name: String,
        #[arg(long, value_name = "N")]
        to_revision: Option<u64>,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        state: StateArgs,
    },
    /// No step starts and no rollout begins until resumed; a step under way finishes.
    Pause {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Lifts a pause: the rollout continues from the step it stopped before.
    Resume {
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Rolls out again a template whose rollout failed (after fixing the cause outside
    /// the spec).
    Retry {
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Rolls the rollout under way back now.
    Abort {
        name: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

impl Rollout {
    pub fn run(self) -> Result<String, CtlError> {
        match self {
            Rollout::Status {
                name,
                watch,
                timeout,
                state,
                output,
            } => {
                let client = state.client();
                if watch {
                    return follow(&client, &name, timeout.0);
                }
                let s: EnvStatus = client.get(&format!("/v1/environments/{name}"))?;
                render(output, &view::environment(&s), || status_text(&s))
            }
            Rollout::History {
                name,
                state,
                output,
            } => {
                let ops: Vec<OpStatus> = state
                    .client()
                    .get(&format!("/v1/environments/{name}/history"))?;
                let views: Vec<_> = ops.iter().map(view::operation).collect();
                render(output, &views, || history_table(&ops))
            }
            Rollout::Undo {
                name,
                to_revision,
                wait,
                state,
            } => {
                let reply: ActionReply = state.client().post(
                    &format!("/v1/environments/{name}/undo"),
                    &UndoRequest { to_revision },
                )?;
                then_wait(&state, &name, &wait, reply)
            }
            Rollout::Pause { name, state } => verb(&state, &name, "pause"),
            Rollout::Resume { name, wait, state } => {
                let reply = post_verb(&state, &name, "resume")?;
                then_wait(&state, &name, &wait, reply)
            }
            Rollout::Retry { name, wait, state } => {
                let reply = post_verb(&state, &name, "retry")?;
                then_wait(&state, &name, &wait, reply)
            }
            Rollout::Abort { name, state } => verb(&state, &name, "abort"),
        }
    }
}

fn post_verb(state: &StateArgs, name: &str, verb: &str) -> Result<ActionReply, CtlError> {
    state.client().post(
        &format!("/v1/environments/{name}/{verb}"),
        &serde_json::json!({}),
    )
}

fn verb(state: &StateArgs, name: &str, verb: &str) -> Result<String, CtlError> {
    let reply = post_verb(state, name, verb)?;
    Ok(format!("{}: {}\n", reply.environment, reply.message))
}

/// The reply, then (with --wait) the outcome of the rollout it causes.
fn then_wait(
    state: &StateArgs,
    name: &str,
    wait: &Wait,
    reply: ActionReply,
) -> Result<String, CtlError> {
    let line = format!("{}: {}\n", reply.environment, reply.message);
    if !wait.wait {
        return Ok(line);
    }
    eprint!("{line}");
    follow(&state.client(), name, wait.timeout.0)
}

/// `rollout status NAME`: the phase, the message, and the steps of the operation.
fn status_text(s: &EnvStatus) -> String {
    let mut out = format!(
        "{}: {} — revision {}: {}\n",
        s.name,
        phase(s),
        or_none(s.state.current),
        s.state.message
    );
    if let Some(op) = &s.operation {
        out.push_str(&format!(
            "operation {} ({}): {}\n",
            short(&op.id, 10),
            op.kind,
            op.reason
        ));
        let mut t = Table::new(["STEP", "STATE", "DETAIL"]);
        for l in &op.steps {
            t.row([l.step.clone(), l.state.clone(), l.detail()]);
        }
        out.push_str(&t.render_indented("  "));
    }
    out
}

fn history_table(ops: &[OpStatus]) -> String {
    let mut t = Table::new([
        "OPERATION",
        "KIND",
        "FROM",
        "TO",
        "OUTCOME",
        "CREATED",
        "REASON",
    ]);
    for op in ops {
        let outcome = match &op.outcome {
            None => "Running".to_owned(),
            Some(o) => format!("{o:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        t.row([
            short(&op.id, 10).to_owned(),
            op.kind.clone(),
            or_none(op.from),
            op.to.to_string(),
            outcome,
            utc(op.created_at),
            op.reason.clone(),
        ]);
    }
    t.render()
}
