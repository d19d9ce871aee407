//! Notifications: which of an operation's notifications have been dealt with, so that a
//! restarted berthd does not send one twice (docs/design.md, "Notifications").

use berth_api::environment::NotifyEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{encode, get_keyed, sled_err, under, Keyed, Store, StoreError, NOTIFICATIONS};
use crate::op::{Millis, OpId};

/// How a notification ended. A record exists only once it has ended: a notification that
/// is due and has no record is sent (again, after a crash mid-delivery).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// Every webhook answered 2xx.
    Delivered,
    /// At least one webhook did not take it after all retries (the others did).
    GaveUp { failed: u32 },
    /// The notifier's queue was full: nothing was sent.
    Dropped,
}

/// One notification of one operation, once it has ended. Holds no URL: webhook URLs are
/// secrets (records.rs, "Secrets never enter the journal").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationRecord {
    pub op: OpId,
    pub env: String,
    pub event: NotifyEvent,
    pub delivery: Delivery,
    /// How many webhooks it went to.
    pub webhooks: u32,
    pub at: Millis,
}

impl Keyed for NotificationRecord {
    fn key(&self) -> Vec<u8> {
        under(&self.op, self.event.as_str())
    }
}

impl Store {
    /// The record of notification `event` of operation `op`, once it has ended.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn notification(
        &self,
        op: &str,
        event: NotifyEvent,
    ) -> Result<Option<NotificationRecord>, StoreError> {
        let key = under(op, event.as_str());
        get_keyed(&self.t().notifications, NOTIFICATIONS, &key)
    }

    /// Records that a notification has ended.
    ///
    /// # Guarantees
    /// Flushed before it returns, so a berthd killed afterwards does not send it again.
    /// A kill between the webhook's answer and this flush sends it again on the next start:
    /// delivery is at least once, and exactly once unless berthd dies in that window.
    ///
    /// # Errors
    /// Storage errors.
    pub fn put_notification(&self, rec: &NotificationRecord) -> Result<(), StoreError> {
        let key = rec.key();
        self.t()
            .notifications
            .insert(key.as_slice(), encode(NOTIFICATIONS, &key, rec)?)
            .map_err(sled_err(NOTIFICATIONS, &key))?;
        self.flush()
    }

    /// Changes whenever an operation is begun or appended to (after its flush). A reader
    /// re-reads the operations it cares about: only the latest count is kept.
    pub fn journal_writes(&self) -> watch::Receiver<u64> {
        self.inner.journal_writes.subscribe()
    }
}
