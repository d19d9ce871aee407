//! What the API reads of the controller besides the journal: the desired state's names,
//! hosts, the source's health, the loop's own measurements, and replicas' logs.

use std::sync::Arc;

use crate::api::metrics::Histogram;
use crate::api::types::{LogLine, SourceError, SourceHealth};
use crate::model::Role;
use crate::redact::Redactor;
use crate::store::{EventKind, StoreError};

use super::host_status::HostStatus;
use super::status::{self, EnvStatus};
use super::Controller;

/// The loop's own measurements, for `/metrics`.
#[derive(Default)]
pub struct LoopMetrics {
    /// Seconds one reconcile of one environment took.
    pub reconcile_seconds: Histogram,
}

impl Controller {
    /// The environments of the desired state, sorted.
    pub fn desired_environment_names(&self) -> Vec<String> {
        self.snapshot()
            .manifests
            .environments
            .keys()
            .cloned()
            .collect()
    }

    /// Every host's status, sorted by name (what `_hosts.json` holds).
    pub fn host_statuses(&self) -> Vec<HostStatus> {
        self.hosts.statuses()
    }

    /// Environments waiting in the work queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    pub fn loop_metrics(&self) -> &LoopMetrics {
        &self.metrics
    }

    /// The status of one environment, as its status file holds it, with its owner.
    pub fn env_status(&self, env: &str) -> Result<EnvStatus, StoreError> {
        let mut s = status::collect(&self.store, env)?;
        s.owner = Some(crate::api::apply::owner(self, env));
        if let Some(target) = self.desired_hash(env, &s)? {
            let serving = s.state.current.and_then(|rev| {
                s.revisions
                    .iter()
                    .find(|r| r.revision == rev)
                    .map(|r| r.template_hash.clone())
            });
            s.in_sync = Some(s.state.active_op.is_none() && serving.as_ref() == Some(&target));
            s.desired_hash = Some(target);
        }
        Ok(s)
    }

    /// The template hash that is desired: the manifest's, or the revision an undo holds
    /// while the manifest asks for the same; `None` when the environment is not desired.
    fn desired_hash(&self, env: &str, s: &EnvStatus) -> Result<Option<String>, StoreError> {
        let snapshot = self.snapshot();
        let Some(res) = snapshot.manifests.environments.get(env) else {
            return Ok(None);
        };
        let asked = crate::model::Template::of(&res.spec).hash();
        let records = self.store.revisions(env)?;
        let hash_of = |rev: u64| {
            records
                .iter()
                .find(|r| r.revision == rev)
                .map(|r| r.template_hash.clone())
        };
        Ok(match &s.state.pin {
            Some(p) if p.asked_hash == asked => hash_of(p.revision),
            _ => Some(asked),
        })
    }

    /// The manifest directory's health: what is acted on, and the invalid edit if any.
    pub fn source_health(&self) -> SourceHealth {
        self.source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a reload of the manifest directory: `Ok` a valid one (acted on from now),
    /// `Err` an invalid one (the previous state is kept; the errors are shown).
    pub fn set_source(&self, path: &str, outcome: Result<Option<&str>, SourceError>) {
        let mut s = self.source.write().unwrap_or_else(|p| p.into_inner());
        s.path = path.to_owned();
        match outcome {
            Ok(commit) => {
                let (commit, dirty) = match commit {
                    Some(c) => match c.strip_suffix("+dirty") {
                        Some(c) => (Some(c.to_owned()), true),
                        None => (Some(c.to_owned()), false),
                    },
                    None => (None, false),
                };
                s.commit = commit;
                s.dirty = dirty;
                s.loaded_at = super::now_millis();
                s.error = None;
            }
            Err(mut e) => {
                // Since the first invalid load, not the latest.
                if let Some(old) = &s.error {
                    e.since = old.since;
                }
                s.error = Some(e);
            }
        }
    }

    /// The names of the environment's containers on `host` (any revision, any role).
    pub async fn container_names(&self, env: &str, host: &str) -> Result<Vec<String>, String> {
        let snapshot = self.snapshot();
        let spec = &snapshot
            .manifests
            .hosts
            .get(host)
            .ok_or_else(|| format!("host {host} is not defined"))?
            .spec;
        let conn = self.hosts.get(host, spec).map_err(|e| e.to_string())?;
        let mut names: Vec<String> = conn
            .host
            .list(env)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes every container of an environment no longer desired (`delete --prune`),
    /// each removal an event. Its journal and backups are kept.
    pub async fn prune_environment(&self, env: &str, host: &str) {
        let names = match self.container_names(env, host).await {
            Ok(n) => n,
            Err(e) => {
                self.event(env, EventKind::Warning, "PruneFailed", e, None);
                return;
            }
        };
        let snapshot = self.snapshot();
        let Some(h) = snapshot.manifests.hosts.get(host) else {
            return;
        };
        let Ok(conn) = self.hosts.get(host, &h.spec) else {
            return;
        };
        self.event(
            env,
            EventKind::Warning,
            "Pruning",
            format!("no longer desired: removing {}", names.join(", ")),
            None,
        );
        for name in names {
            let (reason, message) = match conn.host.remove(&name).await {
                Ok(()) => ("Pruned", format!("removed container {name}")),
                Err(e) => ("PruneFailed", format!("container {name}: {e}")),
            };
            self.event(env, EventKind::Normal, reason, message, None);
        }
        let _ = self
            .store
            .update_env_state(env, |s| s.message = "pruned: no longer desired".into());
    }

    /// The last `tail` log lines of each replica of `revision` (the serving one by
    /// default), prefixed by replica, with secrets redacted.
    pub async fn replica_logs(
        self: &Arc<Self>,
        env: &str,
        revision: Option<u64>,
        tail: usize,
    ) -> Result<Vec<LogLine>, String> {
        let snapshot = self.snapshot();
        let res = snapshot
            .manifests
            .environments
            .get(env)
            .ok_or_else(|| format!("{env} is not in the desired state"))?;
        let host = snapshot
            .manifests
            .hosts
            .get(&res.spec.host)
            .ok_or_else(|| format!("host {} is not defined", res.spec.host))?;
        let conn = self
            .hosts
            .get(&res.spec.host, &host.spec)
            .map_err(|e| e.to_string())?;
        let state = self.store.env_state(env).map_err(|e| e.to_string())?;
        let rev = revision
            .or(state.current)
            .ok_or_else(|| format!("{env} has no serving revision; name one with --revision"))?;
        let records = self.store.revisions(env).map_err(|e| e.to_string())?;
        let redactor = Redactor::load(conn.host.as_ref(), records.iter().map(|r| &r.template))
            .await
            .map_err(|e| e.to_string())?;
        let mut containers = conn.host.list(env).await.map_err(|e| e.to_string())?;
        containers.retain(|c| c.role == Role::App && c.revision == rev);
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        if containers.is_empty() {
            return Err(format!("{env} has no replica of revision {rev}"));
        }
        let mut out = Vec::new();
        for c in containers {
            let text = conn
                .host
                .logs(&c.name, tail)
                .await
                .map_err(|e| e.to_string())?;
            for line in redactor.redact(&text).lines() {
                out.push(LogLine {
                    replica: c.name.clone(),
                    line: line.to_owned(),
                });
            }
        }
        Ok(out)
    }
}
