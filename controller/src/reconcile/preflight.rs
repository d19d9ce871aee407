//! Gathering what a preflight needs to know from the host, right before an operation
//! would begin; the decision itself is pure ([`plan::preflight`](crate::plan::preflight)).

use std::sync::Arc;

use berth_api::environment::{BackupTarget, PostgresSource, Traffic};

use crate::exec::haproxy;

use crate::model::{ContainerState, Role};
use crate::op::Step;
use crate::plan::Preflight;

use super::act::Target;
use super::Controller;

/// The facts about `steps` on the environment's host. Never fails: what cannot be
/// found out is reported as missing, with the reason.
pub(super) async fn gather(ctl: &Arc<Controller>, t: &Target<'_>, steps: &[Step]) -> Preflight {
    let mut facts = Preflight {
        unready_dependencies: ctl.unready_dependencies(t.env, t.manifest).await,
        missing: Vec::new(),
        haproxy_slots: None,
    };
    if let (Traffic::Haproxy(cfg), true) =
        (&t.manifest.traffic, steps.contains(&Step::SwitchTraffic))
    {
        match haproxy::observe(t.conn.host.as_ref(), cfg).await {
            Ok(servers) => {
                facts.haproxy_slots = Some(haproxy::pool(&servers, &cfg.server_prefix).len())
            }
            Err(e) => facts
                .missing
                .push((Step::SwitchTraffic, format!("traffic.haproxy: {e}"))),
        }
    }
    if steps.contains(&Step::Backup) {
        if let Some(why) = backup_source_missing(t).await {
            facts.missing.push((Step::Backup, why));
        }
    }
    facts
}

/// Why the backup could not be taken now, if it could not: the database to dump is not
/// running, or has no `pg_dump`.
async fn backup_source_missing(t: &Target<'_>) -> Option<String> {
    let target = t.manifest.backup.as_ref()?.target.as_ref()?;
    let BackupTarget::Postgres(pg) = target else {
        return None;
    };
    let host = t.conn.host.as_ref();
    let container = match &pg.source {
        PostgresSource::Container(name) => name.clone(),
        PostgresSource::Environment(env) => {
            let replicas = match host.list(env).await {
                Ok(r) => r,
                Err(e) => return Some(format!("cannot list environment {env}: {e}")),
            };
            let running = replicas
                .into_iter()
                .filter(|c| c.role == Role::App && c.state == ContainerState::Running)
                .max_by_key(|c| c.revision);
            match running {
                Some(c) => c.name,
                None => {
                    return Some(format!(
                        "the backup source, environment {env}, has no running replica"
                    ))
                }
            }
        }
        PostgresSource::Host(_) => {
            return match host.run("command -v pg_dump").await {
                Ok(o) if o.success() => None,
                Ok(_) => Some("pg_dump is not installed on the host".into()),
                Err(e) => Some(format!("cannot look for pg_dump on the host: {e}")),
            };
        }
    };
    let version = ["pg_dump".to_owned(), "--version".to_owned()];
    match host.exec(&container, &version).await {
        Ok(o) if o.success() => None,
        Ok(o) => Some(format!(
            "pg_dump does not run in container {container}: {}",
            o.stderr.trim()
        )),
        Err(e) => Some(format!(
            "the backup source, container {container}, is not running: {e}"
        )),
    }
}
