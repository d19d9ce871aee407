//! Rollout notifications: webhooks posted when a rollout starts, waits for approval,
//! succeeds, fails or rolls back (docs/design.md, "Notifications").
//!
//! What is due is derived from the journal, never from memory: [`due`] reads an
//! operation's log (pure), and the [`Notifier`] sends what is due and not yet recorded
//! as ended in the store. So a restarted berthd sends what a crash interrupted, and not
//! a second success for an operation it already announced.
//!
//! # Layout
//! - this file (pure): which notifications an operation's log makes due, and their body;
//! - [`deliver`]: the notifier — a bounded queue, its task, retries with backoff, the
//!   record of what ended; and the HTTP transport.

pub mod deliver;

use berth_api::environment::{EnvironmentSpec, NotifyEvent, Webhook};
use serde::Serialize;

use crate::model::Revision;
use crate::op::{Entry, Millis, Operation, Outcome, Phase, Step};

pub use deliver::{Notifier, Options as NotifierOptions, Transport, UreqTransport};

/// One notification an operation's log has made due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub event: NotifyEvent,
    /// When its journal entry was recorded.
    pub at: Millis,
    /// Why the rollout failed or was rolled back.
    pub failure: Option<String>,
}

/// The notifications `op`'s log has made due, in the order they happened:
/// `Started` when it was journaled, `WaitingForApproval` when its `AwaitApproval` step
/// started, and one of `Succeeded`, `Failed`, `RolledBack` when it finished (a
/// `Superseded` operation notifies nothing more).
pub fn due(op: &Operation) -> Vec<Due> {
    let mut out = vec![Due {
        event: NotifyEvent::Started,
        at: op.created_at,
        failure: None,
    }];
    for ev in &op.log {
        let (event, failure) = match &ev.entry {
            Entry::Started {
                phase: Phase::Forward,
                index,
            } if op.steps.get(*index) == Some(&Step::AwaitApproval) => {
                (NotifyEvent::WaitingForApproval, None)
            }
            Entry::Finished { outcome } => match outcome {
                Outcome::Succeeded => (NotifyEvent::Succeeded, None),
                Outcome::RolledBack { reason } => (NotifyEvent::RolledBack, Some(reason.clone())),
                Outcome::Failed { reason } => (NotifyEvent::Failed, Some(reason.clone())),
                Outcome::Superseded => continue,
            },
            _ => continue,
        };
        // A step restarted after a crash journals `Started` again: one notification.
        if out.iter().all(|d| d.event != event) {
            out.push(Due {
                event,
                at: ev.at,
                failure,
            });
        }
    }
    out
}

/// The webhooks of `spec` that want `event`.
pub fn webhooks_for(spec: &EnvironmentSpec, event: NotifyEvent) -> Vec<Webhook> {
    spec.notify
        .webhooks
        .iter()
        .filter(|w| w.events.contains(&event))
        .cloned()
        .collect()
}

/// What the revision a notification is about came from, as the journal recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// `repo@sha256:…`, once the rollout's `PullImage` succeeded.
    pub digest: Option<String>,
    /// The manifests' git commit.
    pub commit: Option<String>,
}

/// The JSON body of a notification. `text` makes it a valid Slack (and Mattermost,
/// Discord `/slack`, Google Chat) incoming-webhook message; the other fields are for
/// programs. It carries no links and nothing secret: the reasons are the journal's,
/// which are redacted before they are journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Body {
    pub text: String,
    pub event: NotifyEvent,
    pub environment: String,
    pub operation: String,
    pub from: Option<Revision>,
    pub to: Revision,
    pub image: String,
    pub digest: Option<String>,
    /// Why the rollout ran ("revision 3 → 4 (app:v2)").
    pub reason: String,
    /// Why it failed or was rolled back.
    pub failure: Option<String>,
    pub commit: Option<String>,
    /// When the event was journaled, RFC 3339 in UTC.
    pub at: String,
}

/// The body announcing `due` of `op`, which ran `spec`.
pub fn body(op: &Operation, spec: &EnvironmentSpec, due: &Due, origin: &Origin) -> Body {
    let image = spec.image.to_string();
    let env = &op.env;
    let to = op.to;
    let failure = due.failure.as_deref().unwrap_or("unknown");
    let text = match (due.event, op.from) {
        (NotifyEvent::Started, Some(from)) => {
            format!("{env}: rollout started, revision {from} → {to} ({image})")
        }
        (NotifyEvent::Started, None) => {
            format!("{env}: first rollout started, revision {to} ({image})")
        }
        (NotifyEvent::WaitingForApproval, _) => format!(
            "{env}: rollout to revision {to} ({image}) waits for approval: berthctl approve {env}"
        ),
        (NotifyEvent::Succeeded, _) => format!("{env}: revision {to} ({image}) is serving"),
        (NotifyEvent::Failed, _) => format!(
            "{env}: rollout to revision {to} ({image}) failed and needs an operator: {failure}"
        ),
        (NotifyEvent::RolledBack, Some(from)) => format!(
            "{env}: rollout to revision {to} ({image}) was rolled back to revision {from}: {failure}"
        ),
        (NotifyEvent::RolledBack, None) => format!(
            "{env}: first rollout, revision {to} ({image}), was undone: {failure}"
        ),
    };
    Body {
        text,
        event: due.event,
        environment: env.clone(),
        operation: op.id.clone(),
        from: op.from,
        to,
        image,
        digest: origin.digest.clone(),
        reason: op.reason.clone(),
        failure: due.failure.clone(),
        commit: origin.commit.clone(),
        at: rfc3339(due.at),
    }
}

fn rfc3339(at: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
