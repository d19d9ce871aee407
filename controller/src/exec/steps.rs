//! The step runner: performs one step of an operation, or one drift repair, against the
//! environment's host. Every step observes first and does only what is missing, so a step
//! re-run after a crash finishes the work instead of repeating it.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_api::environment::{EnvironmentSpec, Traffic};
use berth_api::HostSpec;

use crate::exec::backup::{self, Catalogued, ResolvedSource};
use crate::exec::containers::{allocate_ports, migrate_spec, replica_spec, revisions_to_prune};
use crate::exec::migrate::{self, Progress};
use crate::exec::{haproxy, smoke, traffic, ExecError};
use crate::host::{Created, Host};
use crate::model::{
    replica_name, ContainerInfo, ContainerSpec, ContainerState, Revision, Role, Template,
};
use crate::op::{Millis, Operation, Status, Step, StepOutput, StepState};
use crate::plan::Repair;
use crate::redact::Redactor;
use crate::store::{BackupRecord, Store};

/// How long a replica gets to stop cleanly.
const STOP_GRACE: Duration = Duration::from_secs(10);
const SMOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy may take to serve a new configuration after a switch.
const PROXY_SETTLE: Duration = Duration::from_secs(5);

/// What running a step came to.
#[derive(Debug)]
pub enum StepResult {
    Done(StepOutput),
    /// Started and still going (a migration running, a soak under way): ask again later.
    Pending {
        recheck: Duration,
        message: String,
    },
}

/// Everything a step may need, resolved by the reconciler.
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub host_spec: &'a HostSpec,
    pub store: &'a Store,
    pub env: &'a str,
    /// The spec being rolled out (the desired one; for an undo, the target revision's).
    pub spec: &'a EnvironmentSpec,
    pub template: &'a Template,
    /// The previous revision's template, to start it again on rollback.
    pub old_template: Option<&'a Template>,
    pub op: Option<&'a Operation>,
    pub status: Option<&'a Status>,
    pub now: Millis,
    /// Applied to every output of the app (migration logs, smoke answers) before it is
    /// recorded or quoted.
    pub redactor: &'a Redactor,
}

impl Ctx<'_> {
    fn op(&self) -> Result<(&Operation, &Status), ExecError> {
        match (self.op, self.status) {
            (Some(o), Some(s)) => Ok((o, s)),
            _ => Err(ExecError::failed("step", "no active operation", false)),
        }
    }

    async fn containers(&self) -> Result<Vec<ContainerInfo>, ExecError> {
        Ok(self.host.list(self.env).await?)
    }

    fn failed(&self, what: &str, message: impl Into<String>, retryable: bool) -> ExecError {
        ExecError::failed(format!("{} {what}", self.env), message, retryable)
    }
}

/// Performs `step` of the active operation.
pub async fn run_step(cx: &Ctx<'_>, step: Step) -> Result<StepResult, ExecError> {
    let (op, st) = cx.op()?;
    let done = |o| Ok(StepResult::Done(o));
    match step {
        // Timed steps are decided by the planner; running them only marks their start.
        Step::AwaitApproval | Step::WaitReady | Step::WaitOldReady => Ok(StepResult::Pending {
            recheck: Duration::from_millis(500),
            message: format!("{} started", step.name()),
        }),
        Step::PullImage => {
            let pulled = cx.host.pull(&cx.template.image).await?;
            done(StepOutput::Image {
                id: pulled.id,
                repo_digest: pulled.repo_digest,
            })
        }
        Step::Backup => take_backup(cx, op).await.map(StepResult::Done),
        Step::CreateCandidate => {
            for i in 0..cx.spec.replicas {
                ensure_replica(cx, op.to, i, cx.template, Some(&op.id), false).await?;
            }
            done(StepOutput::None)
        }
        Step::StartCandidate => {
            for i in 0..cx.spec.replicas {
                ensure_replica(cx, op.to, i, cx.template, Some(&op.id), true).await?;
            }
            done(StepOutput::None)
        }
        Step::StopOld | Step::RetireOld => {
            if let Some(from) = op.from {
                stop_revision(cx, from).await?;
            }
            done(StepOutput::None)
        }
        Step::StopCandidate => {
            stop_revision(cx, op.to).await?;
            done(StepOutput::None)
        }
        Step::Migrate => run_migration(cx, op, st).await,
        Step::SmokeCandidate => {
            smoke_revision(cx, op.to).await?;
            done(StepOutput::None)
        }
        Step::SwitchTraffic => {
            switch_to(cx, op.to).await?;
            done(switch_note(cx.spec))
        }
        Step::SwitchBack => {
            switch_to(cx, op.from.unwrap_or(op.to)).await?;
            done(switch_note(cx.spec))
        }
        Step::Verify => {
            // The soak itself is timed by the planner; what runs here is the smoke checks
            // once more: through the proxy when Berth knows where it listens, else against
            // the revision now serving.
            match proxy_listen(cx.spec) {
                Some((addr, port)) if !cx.spec.smoke.is_empty() => {
                    smoke_through_proxy(cx, &addr, port).await?
                }
                _ => smoke_revision(cx, op.to).await?,
            }
            Ok(StepResult::Pending {
                recheck: Duration::from_millis(500),
                message: format!("verifying revision {}", op.to),
            })
        }
        Step::RestoreDatabase => restore_database(cx, st).await.map(StepResult::Done),
        Step::StartOld => {
            let from = op
                .from
                .ok_or_else(|| cx.failed("rollback", "there is no old revision", false))?;
            let template = cx.old_template.ok_or_else(|| {
                cx.failed("rollback", format!("revision {from} has no record"), false)
            })?;
            for i in 0..cx.spec.replicas {
                ensure_replica(cx, from, i, template, None, true).await?;
            }
            done(StepOutput::None)
        }
        Step::Prune => prune(cx, op).await.map(StepResult::Done),
    }
}

/// Runs the smoke checks against each replica of `rev`, on its own published port.
async fn smoke_revision(cx: &Ctx<'_>, rev: Revision) -> Result<(), ExecError> {
    if cx.spec.smoke.is_empty() {
        return Ok(());
    }
    for c in revision_replicas(&cx.containers().await?, rev, cx.spec.replicas) {
        let port = c.port.ok_or_else(|| {
            cx.failed(
                "smoke check",
                format!("{} has no published port", c.name),
                false,
            )
        })?;
        smoke::run_smoke(
            cx.host,
            &cx.spec.smoke,
            publish_addr(cx.spec),
            port,
            SMOKE_TIMEOUT,
            cx.redactor,
        )
        .await?;
    }
    Ok(())
}

/// Runs the smoke checks through the proxy. `nginx -s reload` returns before the new
/// workers take over, so the first requests after a switch may still meet the old
/// configuration: the checks get a few seconds to pass before they count as failed.
async fn smoke_through_proxy(cx: &Ctx<'_>, addr: &str, port: u16) -> Result<(), ExecError> {
    let deadline = tokio::time::Instant::now() + PROXY_SETTLE;
    loop {
        let smoke = smoke::run_smoke(
            cx.host,
            &cx.spec.smoke,
            addr,
            port,
            SMOKE_TIMEOUT,
            cx.redactor,
        );
        match smoke.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Where the traffic switch serves the environment, if the manifest says.
fn proxy_listen(spec: &EnvironmentSpec) -> Option<(String, u16)> {
    let Traffic::Nginx(n) = &spec.traffic else {
        return None;
    };
    let addr: std::net::SocketAddr = n.listen.as_deref()?.parse().ok()?;
    Some((addr.ip().to_string(), addr.port()))
}

fn publish_addr(spec: &EnvironmentSpec) -> &str {
    match spec.ports.first().map(|p| p.publish.as_str()) {
        Some("0.0.0.0") | None => "127.0.0.1",
        Some(a) => a,
    }
}

fn revision_replicas(all: &[ContainerInfo], rev: Revision, replicas: u32) -> Vec<&ContainerInfo> {
    all.iter()
        .filter(|c| {
            c.role == Role::App && c.revision == rev && c.replica.is_some_and(|r| r < replicas)
        })
        .collect()
}

/// Makes replica `i` of `rev` exist with `template` (and run, if `start`). A container of
/// that name with another template is replaced; one that cannot bind its port is created
/// again on another port.
pub async fn ensure_replica(
    cx: &Ctx<'_>,
    rev: Revision,
    i: u32,
    template: &Template,
    op: Option<&str>,
    start: bool,
) -> Result<(), ExecError> {
    let name = replica_name(cx.env, rev, i);
    let image = image_of(cx, rev, template)?;
    let mut refused: BTreeSet<u16> = BTreeSet::new();
    for _ in 0..5 {
        let existing = cx.host.inspect(&name).await?;
        let needs_create = match &existing {
            Some(c) if c.template_hash == template.hash() && c.image == image => false,
            Some(_) => {
                cx.host.remove(&name).await?;
                true
            }
            None => true,
        };
        if needs_create {
            let spec = new_replica(cx, rev, i, template, &image, op, &refused).await?;
            if let Created::Existed(c) = cx.host.create(&spec).await? {
                if c.template_hash != spec.template_hash {
                    // Someone raced us with another template: go round again.
                    continue;
                }
            }
        }
        if !start {
            return Ok(());
        }
        let running = matches!(
            existing,
            Some(ContainerInfo {
                state: ContainerState::Running,
                ..
            })
        ) && !needs_create;
        if running {
            return Ok(());
        }
        match cx.host.start(&name).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_port_taken() => {
                // Something outside Berth holds the port: give the replica another one.
                if let Some(c) = cx.host.inspect(&name).await? {
                    if let Some(p) = c.port {
                        refused.insert(p);
                    }
                }
                cx.host.remove(&name).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(cx.failed(
        "replica",
        format!("{name}: could not find a free port to publish on"),
        true,
    ))
}

async fn new_replica(
    cx: &Ctx<'_>,
    rev: Revision,
    i: u32,
    template: &Template,
    image: &str,
    op: Option<&str>,
    refused: &BTreeSet<u16>,
) -> Result<ContainerSpec, ExecError> {
    let mut used: BTreeSet<u16> = cx
        .host
        .list_all()
        .await?
        .iter()
        .filter_map(|c| c.port)
        .collect();
    used.extend(refused);
    let ports =
        allocate_ports(cx.host_spec.port_range, &used, template.ports.len()).ok_or_else(|| {
            cx.failed(
                "replica",
                format!("no free port left in {}", cx.host_spec.port_range),
                true,
            )
        })?;
    Ok(replica_spec(cx.env, rev, i, template, image, ports, op))
}

/// The image reference containers of `rev` are created from: the repo digest its
/// `PullImage` step recorded, so that they run what was pulled and verified even after
/// the tag moved; the template's reference for a revision pulled before digests were
/// recorded.
fn image_of(cx: &Ctx<'_>, rev: Revision, template: &Template) -> Result<String, ExecError> {
    if let Some(d) = cx.store.revision(cx.env, rev)?.and_then(|r| r.repo_digest) {
        return Ok(d);
    }
    // After a crash between the PullImage entry and its record on the revision, the
    // operation's journal still says what was pulled.
    let pulled = match (cx.op, cx.status) {
        (Some(op), Some(st)) if op.to == rev => match st.output_of(Step::PullImage) {
            Some(StepOutput::Image {
                repo_digest: Some(d),
                ..
            }) => Some(d.clone()),
            _ => None,
        },
        _ => None,
    };
    Ok(pulled.unwrap_or_else(|| template.image.clone()))
}

async fn stop_revision(cx: &Ctx<'_>, rev: Revision) -> Result<(), ExecError> {
    if let Traffic::Haproxy(cfg) = &cx.spec.traffic {
        // Its drained slots have nothing left to finish: to maintenance, before the
        // replicas go, so HAProxy never counts them as failing servers.
        let ports: Vec<u16> = cx
            .containers()
            .await?
            .iter()
            .filter(|c| c.role == Role::App && c.revision == rev)
            .filter_map(|c| c.port)
            .collect();
        haproxy::retire(cx.host, cfg, &ports).await?;
    }
    for c in cx.containers().await? {
        if c.role == Role::App && c.revision == rev && c.state == ContainerState::Running {
            cx.host.stop(&c.name, STOP_GRACE).await?;
        }
    }
    Ok(())
}

/// Renders traffic to the replicas of `rev` that run now.
async fn switch_to(cx: &Ctx<'_>, rev: Revision) -> Result<(), ExecError> {
    let all = cx.containers().await?;
    let mut ports: Vec<u16> = revision_replicas(&all, rev, cx.spec.replicas)
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .filter_map(|c| c.port)
        .collect();
    ports.sort_unstable();
    if ports.is_empty() {
        return Err(cx.failed(
            "traffic switch",
            format!("revision {rev} has no running replica to send traffic to"),
            true,
        ));
    }
    sync_traffic(cx, &ports).await
}

/// What a switch did, for `describe`: the file, and the commands that tested and reloaded
/// nginx (the defaults act on the system's nginx, which may not be the one that serves
/// the site: docs/traffic.md).
fn switch_note(spec: &EnvironmentSpec) -> StepOutput {
    match &spec.traffic {
        Traffic::Nginx(cfg) => StepOutput::Note(format!(
            "wrote {}; tested with `{}`, reloaded with `{}`",
            cfg.upstream_file, cfg.test, cfg.reload
        )),
        Traffic::Haproxy(cfg) => StepOutput::Note(format!(
            "set servers {}N of backend {} through {}{}",
            cfg.server_prefix,
            cfg.backend,
            cfg.socket,
            cfg.state_file
                .as_ref()
                .map(|f| format!("; state saved to {f}"))
                .unwrap_or_default()
        )),
        Traffic::None => StepOutput::None,
    }
}

/// Points the environment's traffic switch at exactly `ports`.
pub async fn sync_traffic(cx: &Ctx<'_>, ports: &[u16]) -> Result<(), ExecError> {
    match &cx.spec.traffic {
        Traffic::None => Ok(()),
        Traffic::Nginx(cfg) => {
            let addr = publish_addr(cx.spec).to_owned();
            let backends: Vec<(String, u16)> = ports.iter().map(|p| (addr.clone(), *p)).collect();
            let desired = traffic::render_upstream(cx.env, &backends);
            let applied = traffic::apply_nginx(cx.host, cfg, &desired).await?;
            if !applied.changed {
                // A crash may have come between the write and the reload: reloading
                // again is harmless and makes sure nginx serves what the file says.
                traffic::reload_nginx(cx.host, cfg).await?;
            }
            Ok(())
        }
        Traffic::Haproxy(cfg) => {
            let desired = haproxy_desired(cx.spec, ports);
            haproxy::apply(cx.host, cfg, &desired).await?;
            Ok(())
        }
    }
}

/// What the HAProxy backend should serve for `ports`: one server per port, at the
/// address replicas publish on, all of the same weight.
fn haproxy_desired(spec: &EnvironmentSpec, ports: &[u16]) -> Vec<haproxy::Desired> {
    let addr = publish_addr(spec);
    let mut out: Vec<haproxy::Desired> = ports
        .iter()
        .map(|p| haproxy::Desired {
            addr: addr.to_owned(),
            port: *p,
            weight: haproxy::WEIGHT,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The traffic switch's ports now, if the file is exactly what Berth would write for them
/// (`None`: missing, or edited by hand).
pub async fn observe_traffic(
    host: &dyn Host,
    env: &str,
    spec: &EnvironmentSpec,
) -> Result<Option<Vec<u16>>, ExecError> {
    match &spec.traffic {
        Traffic::None => Ok(None),
        Traffic::Haproxy(cfg) => {
            // An HAProxy that does not answer (not started yet, or the spec's socket
            // is wrong) is traffic in an unknown state, not a failed observation: the
            // repair or the preflight that needs the socket reports why, and the
            // rest of the environment is still reconciled.
            let servers = match haproxy::observe(host, cfg).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(env, "traffic not observed: {e}");
                    return Ok(None);
                }
            };
            let serving = haproxy::serving(&servers, &cfg.server_prefix);
            let ports: Vec<u16> = serving.iter().map(|d| d.port).collect();
            // Ours only if it is exactly what Berth sets for those ports: the replicas'
            // address and weight (a hand-set address or weight is drift).
            if serving != haproxy_desired(spec, &ports) {
                return Ok(None);
            }
            // A state file that would not bring the same switch back after a reload is
            // drift too: the repair rewrites it.
            if !haproxy::state_file_in_sync(host, cfg).await? {
                return Ok(None);
            }
            Ok(Some(ports))
        }
        Traffic::Nginx(cfg) => {
            let Some(text) = traffic::current_upstream(host, cfg).await? else {
                return Ok(None);
            };
            let backends = traffic::backends_in(&text);
            if traffic::render_upstream(env, &backends) != text {
                return Ok(None);
            }
            Ok(Some(backends.into_iter().map(|(_, p)| p).collect()))
        }
    }
}

async fn take_backup(cx: &Ctx<'_>, op: &Operation) -> Result<StepOutput, ExecError> {
    let Some(b) = &cx.spec.backup else {
        return Ok(StepOutput::Note("no backup configured".into()));
    };
    let Some(target) = &b.target else {
        return Ok(StepOutput::Note("no backup target".into()));
    };
    // One backup per operation, named after it: a resumed step finds its own.
    let id = op.id.clone();
    if let Some(rec) = cx.store.backup(&id)? {
        if backup::is_intact(cx.host, &rec.path, &rec.sha256).await? {
            return Ok(backup_output(&rec));
        }
    }
    let source = resolve_source(cx, target).await?;
    let taken = backup::take(cx.host, cx.env, b, &id, &source).await?;
    let rec = BackupRecord {
        id: id.clone(),
        env: cx.env.to_owned(),
        op: Some(op.id.clone()),
        revision: op.from,
        path: taken.path,
        size: taken.size,
        sha256: taken.sha256,
        created_at: cx.now,
    };
    cx.store.put_backup(&rec)?;
    Ok(backup_output(&rec))
}

fn backup_output(rec: &BackupRecord) -> StepOutput {
    StepOutput::Backup {
        id: rec.id.clone(),
        path: rec.path.clone(),
        size: rec.size,
        sha256: rec.sha256.clone(),
    }
}

async fn resolve_source(
    cx: &Ctx<'_>,
    target: &berth_api::environment::BackupTarget,
) -> Result<ResolvedSource, ExecError> {
    // A database environment's current replica: the running app container of the
    // newest revision (its journal is not ours to read here; running is what matters).
    let mut db_replica = None;
    if let berth_api::environment::BackupTarget::Postgres(pg) = target {
        if let berth_api::environment::PostgresSource::Environment(e) = &pg.source {
            db_replica = cx
                .host
                .list(e)
                .await?
                .into_iter()
                .filter(|c| c.role == Role::App && c.state == ContainerState::Running)
                .max_by_key(|c| c.revision)
                .map(|c| c.name);
        }
    }
    let rev = cx.op.map_or(0, |o| o.to);
    ResolvedSource::resolve(target, |_| db_replica, &cx.template.image, rev)
}

async fn restore_database(cx: &Ctx<'_>, st: &Status) -> Result<StepOutput, ExecError> {
    let Some(StepOutput::Backup {
        id, path, sha256, ..
    }) = st.output_of(Step::Backup)
    else {
        return Err(cx.failed("restore", "the rollout took no backup to restore", false));
    };
    let Some(b) = &cx.spec.backup else {
        return Err(cx.failed("restore", "no backup is configured", false));
    };
    let Some(target) = &b.target else {
        return Err(cx.failed("restore", "no backup target is configured", false));
    };
    let source = resolve_source(cx, target).await?;
    let file = Catalogued { id, path, sha256 };
    backup::restore(cx.host, cx.env, b, &file, &source).await?;
    Ok(StepOutput::Note(format!("restored backup {id}")))
}

async fn run_migration(cx: &Ctx<'_>, op: &Operation, st: &Status) -> Result<StepResult, ExecError> {
    let Some(command) = &cx.spec.migration.command else {
        return Ok(StepResult::Done(StepOutput::Note(
            "no migration command".into(),
        )));
    };
    let since = match st.cursor() {
        Some((
            _,
            Step::Migrate,
            StepState::Running { since, .. } | StepState::Retrying { since, .. },
        )) => *since,
        _ => cx.now,
    };
    let image = image_of(cx, op.to, cx.template)?;
    let spec = migrate_spec(cx.env, op.to, &op.id, cx.template, &image, command);
    let timeout = cx.spec.migration.timeout.0;
    match migrate::migrate(cx.host, &spec, since, cx.now, timeout, cx.redactor).await? {
        Progress::Done { log_tail } => Ok(StepResult::Done(StepOutput::Migration {
            exit_code: 0,
            log_tail,
        })),
        Progress::Running { .. } => Ok(StepResult::Pending {
            recheck: Duration::from_millis(500),
            message: format!("migration {} running", spec.name),
        }),
        Progress::Failed {
            exit_code,
            log_tail,
        } => Err(cx.failed(
            "migration",
            format!(
                "{} exited with code {exit_code}: {}",
                spec.name,
                last_line(&log_tail)
            ),
            false,
        )),
        Progress::TimedOut { log_tail } => Err(cx.failed(
            "migration",
            format!(
                "{} ran past its timeout of {} and was stopped: {}",
                spec.name,
                cx.spec.migration.timeout,
                last_line(&log_tail)
            ),
            false,
        )),
    }
}

/// The last few lines of a log, on one line: enough to say why, short enough for status.
fn last_line(s: &str) -> String {
    let lines: Vec<&str> = s
        .trim_end()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

async fn prune(cx: &Ctx<'_>, op: &Operation) -> Result<StepOutput, ExecError> {
    let mut removed = Vec::new();
    let revisions: Vec<Revision> = cx
        .store
        .revisions(cx.env)?
        .iter()
        .map(|r| r.revision)
        .collect();
    let gone = revisions_to_prune(&revisions, op.to, op.from, cx.spec.revision_history_limit);
    let all = cx.containers().await?;
    for rev in &gone {
        let mut images = BTreeSet::new();
        for c in all.iter().filter(|c| c.revision == *rev) {
            cx.host.remove(&c.name).await?;
            images.insert(c.image.clone());
        }
        for image in images {
            cx.host.remove_image(&image).await?;
        }
        cx.store.remove_revision(cx.env, *rev)?;
        removed.push(format!("revision {rev}"));
    }
    // Finished migration containers of this operation are not needed any more.
    for c in all
        .iter()
        .filter(|c| c.role == Role::Migrate && c.state != ContainerState::Running)
    {
        migrate::cleanup(cx.host, &c.name).await?;
    }
    if let Some(b) = &cx.spec.backup {
        let records = cx.store.backups(cx.env)?;
        let files: Vec<Catalogued> = records
            .iter()
            .map(|r| Catalogued {
                id: &r.id,
                path: &r.path,
                sha256: &r.sha256,
            })
            .collect();
        for id in backup::prune(cx.host, &files, b.keep as usize).await? {
            cx.store.remove_backup(&id)?;
            removed.push(format!("backup {id}"));
        }
    }
    Ok(StepOutput::Note(if removed.is_empty() {
        "nothing to prune".into()
    } else {
        format!("removed {}", removed.join(", "))
    }))
}

/// Performs a drift repair.
pub async fn repair(cx: &Ctx<'_>, r: &Repair) -> Result<(), ExecError> {
    match r {
        Repair::StartReplica {
            revision, replica, ..
        } => ensure_replica(cx, *revision, *replica, cx.template, None, true).await,
        Repair::ReplaceReplica {
            name,
            revision,
            replica,
            ..
        } => {
            cx.host.remove(name).await?;
            ensure_replica(cx, *revision, *replica, cx.template, None, true).await
        }
        Repair::StopContainer { name, .. } => Ok(cx.host.stop(name, STOP_GRACE).await?),
        Repair::RemoveContainer { name, .. } => Ok(cx.host.remove(name).await?),
        Repair::SyncTraffic { ports, .. } => sync_traffic(cx, ports).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHaproxy, FakeHost};

    const SOCK: &str = "/run/haproxy/admin.sock";
    const STATE: &str = "/var/lib/haproxy/server-state";

    fn spec() -> EnvironmentSpec {
        let text = format!(
            "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: h}}\nspec: {{address: local}}\n---\napiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: web}}\nspec:\n  host: h\n  image: app:v1\n  ports: [{{name: http, containerPort: 8080}}]\n  traffic: {{haproxy: {{socket: {SOCK}, backend: web, stateFile: {STATE}}}}}\n"
        );
        let m = berth_api::load_texts(vec![("t.yaml".into(), text)])
            .into_manifests()
            .map_err(|l| l.diagnostics)
            .unwrap();
        m.environments["web"].spec.clone()
    }

    #[tokio::test]
    async fn haproxy_traffic_is_ours_only_as_berth_set_it_state_file_included() {
        let host = FakeHost::new("h");
        let ha = FakeHaproxy::new("web", "app", 4);
        host.add_haproxy(SOCK, ha.clone());
        let spec = spec();
        let Traffic::Haproxy(cfg) = &spec.traffic else {
            unreachable!("the spec switches through haproxy")
        };
        // Nothing set yet: no slot serves, the state file is missing.
        assert_eq!(observe_traffic(&host, "web", &spec).await.unwrap(), None);

        let desired = haproxy_desired(&spec, &[20002, 20001]);
        haproxy::apply(&host, cfg, &desired).await.unwrap();
        assert_eq!(
            observe_traffic(&host, "web", &spec).await.unwrap(),
            Some(vec![20001, 20002])
        );

        // Hand changes: another weight or address is not ours; a slot in maintenance
        // serves no more (the planner compares the ports).
        ha.hand("set server web/app1 weight 5");
        assert_eq!(observe_traffic(&host, "web", &spec).await.unwrap(), None);
        ha.hand("set server web/app1 weight 1");
        ha.hand("set server web/app2 addr 127.0.0.9 port 20002");
        assert_eq!(observe_traffic(&host, "web", &spec).await.unwrap(), None);
        haproxy::apply(&host, cfg, &desired).await.unwrap();
        ha.hand("set server web/app1 state maint");
        // The state file still says ready: not what HAProxy would come back to is drift.
        assert_eq!(observe_traffic(&host, "web", &spec).await.unwrap(), None);
        haproxy::apply(&host, cfg, &desired).await.unwrap();
        assert_eq!(
            observe_traffic(&host, "web", &spec).await.unwrap(),
            Some(vec![20001, 20002])
        );

        // A state file deleted or edited is drift too.
        host.put_file(STATE, b"1\n");
        assert_eq!(observe_traffic(&host, "web", &spec).await.unwrap(), None);

        // An HAProxy that does not answer: traffic unknown, not an error of the whole
        // observation.
        let elsewhere = FakeHost::new("h");
        assert_eq!(
            observe_traffic(&elsewhere, "web", &spec).await.unwrap(),
            None
        );
    }
}
