//! Environments applied through the API (`berthctl apply`): the journal owns their
//! desired state, as the watched directory owns the others'.

use berth_api::Environment;
use serde::{Deserialize, Serialize};

use super::{check_env, decode, encode, sled_err, Store, StoreError, APPLIED};
use crate::op::Millis;

/// One applied environment. Like every record, it holds no secret: specs name env files,
/// whose contents stay on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRecord {
    pub resource: Environment,
    /// Where the client read it (a file name), for people.
    pub source: String,
    pub applied_at: Millis,
    /// Set when `apply --force` took the environment over from the directory.
    pub took_over: Option<TakeOver>,
}

/// The directory's claim an `apply --force` overrode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TakeOver {
    pub file: String,
    pub commit: Option<String>,
}

impl Store {
    /// Stores (replacing) an applied environment; flushed before this returns.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`]; storage errors.
    pub fn put_applied(&self, rec: &AppliedRecord) -> Result<(), StoreError> {
        let name = rec.resource.name();
        check_env(name)?;
        let k = name.as_bytes();
        self.t()
            .applied
            .insert(k, encode(APPLIED, k, rec)?)
            .map_err(sled_err(APPLIED, k))?;
        self.flush()
    }

    /// Every applied environment, by name.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`]; storage errors.
    pub fn applied(&self) -> Result<Vec<AppliedRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.t().applied.iter() {
            let (k, v) = kv.map_err(sled_err(APPLIED, b""))?;
            out.push(decode(APPLIED, &k, &v)?);
        }
        Ok(out)
    }

    /// Removes an applied environment; whether there was one.
    ///
    /// # Errors
    /// [`StoreError::InvalidName`]; storage errors.
    pub fn remove_applied(&self, env: &str) -> Result<bool, StoreError> {
        check_env(env)?;
        let k = env.as_bytes();
        let old = self.t().applied.remove(k).map_err(sled_err(APPLIED, k))?;
        self.flush()?;
        Ok(old.is_some())
    }
}
