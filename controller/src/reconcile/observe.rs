//! Observing an environment on its host: its containers (by label), their health (from
//! the probe monitor, which this also keeps pointed at the right containers), and where
//! its traffic goes.

use std::sync::Arc;

use berth_api::environment::EnvironmentSpec;

use crate::exec::probe::{ProbeKind, Target, Watch};
use crate::exec::steps::observe_traffic;
use crate::model::{ContainerInfo, ContainerState, Role};
use crate::plan::{Health, Observed};
use crate::redact::Redactor;

use super::{Connected, ReconcileError};

pub(super) async fn observe(
    conn: &Connected,
    env: &str,
    spec: &EnvironmentSpec,
    redactor: &Arc<Redactor>,
) -> Result<Observed, ReconcileError> {
    let containers = conn.host.list(env).await?;
    let mut watches = Vec::new();
    for c in &containers {
        if c.role != Role::App || c.state != ContainerState::Running {
            continue;
        }
        // Probes reach the first port, the one recorded on the container; a probe naming
        // another port fails and says so.
        let target = Target::new(
            c.name.clone(),
            &spec.ports,
            &c.port.into_iter().collect::<Vec<_>>(),
        );
        for (kind, probe) in [
            (ProbeKind::Readiness, &spec.health.readiness),
            (ProbeKind::Liveness, &spec.health.liveness),
        ] {
            if let Some(probe) = probe {
                watches.push(Watch {
                    kind,
                    probe: probe.clone(),
                    target: target.clone(),
                    redactor: redactor.clone(),
                });
            }
        }
    }
    conn.monitor.set_targets(env, watches);
    let containers = with_health(conn, containers);
    let traffic = observe_traffic(conn.host.as_ref(), env, spec).await?;
    Ok(Observed {
        containers,
        traffic,
    })
}

/// The containers of `env` with their health as the probe monitor last saw it, without
/// changing what the monitor watches: how one environment looks at another it depends on.
pub(super) async fn observe_other(
    conn: &Connected,
    env: &str,
) -> Result<Vec<(ContainerInfo, Health)>, ReconcileError> {
    let containers = conn.host.list(env).await?;
    Ok(with_health(conn, containers))
}

fn with_health(conn: &Connected, containers: Vec<ContainerInfo>) -> Vec<(ContainerInfo, Health)> {
    containers
        .into_iter()
        .map(|c| {
            let h = conn.monitor.snapshot(&c.name);
            let health = h.map_or_else(Health::default, |h| Health {
                ready: h.ready,
                live: h.live,
                last_output: h.last_output,
            });
            (c, health)
        })
        .collect()
}
