//! Checks that need more than one field or more than one document: names that must be
//! unique or must exist, ports referred to by name, canary steps, and the rules that keep
//! a rollback possible (a Breaking migration needs a backup to restore).

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::environment::{
    BackupTarget, BackupWhen, EnvironmentSpec, MigrationPolicy, PortRef, PostgresSource,
    ProbeAction, StrategyType, Traffic,
};
use crate::load::Doc;
use crate::resource::{Kind, Manifests};
use crate::values::Address;

pub(crate) fn across(m: &Manifests, docs: &[Doc]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut first: BTreeMap<(Kind, &str), &Doc> = BTreeMap::new();
    for doc in docs {
        match first.get(&(doc.kind, doc.name.as_str())) {
            Some(prev) => out.push(doc.error(
                "metadata.name",
                format!(
                    "duplicate {} `{}` (first defined at {}:{})",
                    doc.kind.as_str(),
                    doc.name,
                    prev.file.display(),
                    prev.pos.line
                ),
            )),
            None => {
                first.insert((doc.kind, &doc.name), doc);
            }
        }
    }
    let mut upstreams: BTreeMap<String, &str> = BTreeMap::new();
    // In file order, so an error about a clash lands on the later of the two documents.
    let firsts = docs.iter().filter(|d| {
        first
            .get(&(d.kind, d.name.as_str()))
            .is_some_and(|f| std::ptr::eq(*f, *d))
    });
    for doc in firsts {
        let name = &doc.name.as_str();
        match doc.kind {
            Kind::Host => {
                if let Some(h) = m.hosts.get(*name) {
                    if h.spec.address == Address::Local {
                        for (field, set) in [
                            ("identityFile", h.spec.identity_file.is_some()),
                            ("knownHostsFile", h.spec.known_hosts_file.is_some()),
                        ] {
                            if set {
                                let path = format!("spec.{field}");
                                out.push(
                                    doc.error(&path, "ignored for `address: local`").warning(),
                                );
                            }
                        }
                    }
                }
            }
            Kind::Environment => {
                if let Some(env) = m.environments.get(*name) {
                    environment(&env.spec, m, doc, &mut out);
                    if let Some(key) = traffic_key(&env.spec) {
                        if let Some(other) = upstreams.insert(key, &doc.name) {
                            out.push(doc.error(
                                "spec.traffic",
                                format!("environment `{other}` already switches traffic through this same target on this host"),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Two environments rewriting one upstream file or one backend would undo each other.
fn traffic_key(spec: &EnvironmentSpec) -> Option<String> {
    match &spec.traffic {
        Traffic::None => None,
        Traffic::Nginx(n) => Some(format!("{}|nginx|{}", spec.host, n.upstream_file)),
        Traffic::Haproxy(h) => Some(format!("{}|haproxy|{}|{}", spec.host, h.socket, h.backend)),
    }
}

fn names(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none are defined".to_owned()
    } else {
        v.join(", ")
    }
}

fn environment(spec: &EnvironmentSpec, m: &Manifests, doc: &Doc, out: &mut Vec<Diagnostic>) {
    if !m.hosts.contains_key(&spec.host) {
        out.push(
            doc.error("spec.host", format!("no Host named `{}`", spec.host))
                .expected(format!(
                    "the name of a Host ({})",
                    names(m.hosts.keys().cloned())
                )),
        );
    }

    // Ports: unique, and every reference to one resolves.
    let mut seen_names = BTreeMap::new();
    let mut seen_ports = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if let Some(j) = seen_names.insert(p.name.as_str(), i) {
            out.push(doc.error(
                &format!("spec.ports[{i}].name"),
                format!("port name `{}` is already used by spec.ports[{j}]", p.name),
            ));
        }
        if let Some(j) = seen_ports.insert(p.container_port, i) {
            out.push(doc.error(
                &format!("spec.ports[{i}].containerPort"),
                format!(
                    "container port {} is already listed as spec.ports[{j}]",
                    p.container_port
                ),
            ));
        }
    }
    let port_ok = |r: &PortRef| match r {
        PortRef::Name(n) => spec.ports.iter().any(|p| &p.name == n),
        PortRef::Number(n) => spec.ports.iter().any(|p| p.container_port == *n),
    };
    let port_names = || names(spec.ports.iter().map(|p| p.name.clone()));
    let mut refs: Vec<(String, &PortRef)> = Vec::new();
    for (probe, p) in [
        ("readiness", &spec.health.readiness),
        ("liveness", &spec.health.liveness),
    ] {
        if let Some(p) = p {
            match &p.action {
                ProbeAction::Http { port, .. } => {
                    refs.push((format!("spec.health.{probe}.http.port"), port))
                }
                ProbeAction::Tcp { port } => {
                    refs.push((format!("spec.health.{probe}.tcp.port"), port))
                }
                ProbeAction::Exec { .. } => {}
            }
        }
    }
    match &spec.traffic {
        Traffic::None => {}
        Traffic::Nginx(n) => {
            if let Some(p) = &n.port {
                refs.push(("spec.traffic.nginx.port".into(), p));
            }
        }
        Traffic::Haproxy(h) => {
            if let Some(p) = &h.port {
                refs.push(("spec.traffic.haproxy.port".into(), p));
            }
        }
    }
    for (path, r) in refs {
        if !port_ok(r) {
            let what = match r {
                PortRef::Name(n) => format!("no port named `{n}` in spec.ports"),
                PortRef::Number(n) => format!("container port {n} is not listed in spec.ports"),
            };
            out.push(
                doc.error(&path, what)
                    .expected(format!("one of spec.ports ({})", port_names())),
            );
        }
    }
    if spec.ports.is_empty() {
        if !matches!(spec.traffic, Traffic::None) {
            out.push(doc.error(
                "spec.traffic",
                "traffic needs a port to send to, and spec.ports is empty",
            ));
        }
        if !spec.smoke.is_empty() {
            out.push(doc.error(
                "spec.smoke",
                "smoke checks need a port to call, and spec.ports is empty",
            ));
        }
    }

    strategy(spec, doc, out);
    migration_and_backup(spec, m, doc, out);

    for key in spec.env.keys() {
        let upper = key.to_ascii_uppercase();
        if ["PASSWORD", "SECRET", "TOKEN", "PRIVATE_KEY"]
            .iter()
            .any(|s| upper.contains(s))
        {
            out.push(
                doc.error(
                    &format!("spec.env.{key}"),
                    format!("`{key}` looks like a secret written into the manifest"),
                )
                .expected("secrets in spec.envFiles (files on the host), not in git")
                .warning(),
            );
        }
    }
}

fn strategy(spec: &EnvironmentSpec, doc: &Doc, out: &mut Vec<Diagnostic>) {
    let s = &spec.strategy;
    match s.kind {
        StrategyType::Canary => {
            if s.steps.is_empty() {
                out.push(
                    doc.error("spec.strategy.steps", "a Canary strategy needs steps")
                        .expected("a list of steps like [{weight: 10, pause: 1m}, {weight: 50}]"),
                );
            }
            if matches!(spec.traffic, Traffic::None) {
                out.push(doc.error(
                    "spec.strategy.type",
                    "a Canary strategy needs a traffic switch to weigh (spec.traffic is none)",
                ));
            }
        }
        StrategyType::Recreate | StrategyType::BlueGreen => {
            if !s.steps.is_empty() {
                out.push(doc.error("spec.strategy.steps", "steps are only for `type: Canary`"));
            }
        }
    }
    for (i, pair) in s.steps.windows(2).enumerate() {
        if pair[1].weight <= pair[0].weight {
            out.push(
                doc.error(
                    &format!("spec.strategy.steps[{}].weight", i + 1),
                    format!(
                        "weight {} does not increase on the previous step's {}",
                        pair[1].weight, pair[0].weight
                    ),
                )
                .expected("canary weights increasing step by step, up to 100"),
            );
        }
    }
}

fn migration_and_backup(
    spec: &EnvironmentSpec,
    m: &Manifests,
    doc: &Doc,
    out: &mut Vec<Diagnostic>,
) {
    let mig = &spec.migration;
    match (mig.policy, &mig.command) {
        (MigrationPolicy::None, Some(_)) => out.push(
            doc.error(
                "spec.migration.command",
                "ignored: the migration policy is None",
            )
            .expected("`policy: BackwardCompatible` or `Breaking` to run it")
            .warning(),
        ),
        (MigrationPolicy::BackwardCompatible | MigrationPolicy::Breaking, None) => out.push(
            doc.error(
                "spec.migration.command",
                "a migration policy other than None needs a command",
            )
            .expected("a command run in the new image, like [\"app\", \"migrate\"]"),
        ),
        _ => {}
    }
    if let Some(b) = &spec.backup {
        if b.when != BackupWhen::Never {
            if b.target.is_none() {
                out.push(
                    doc.error(
                        "spec.backup",
                        "backups are on but say nothing of what to back up",
                    )
                    .expected("one of `postgres`, `command`, `volume`"),
                );
            }
            if b.directory.is_none() {
                out.push(
                    doc.error(
                        "spec.backup.directory",
                        "backups are on but have no directory",
                    )
                    .expected("an absolute path on the host"),
                );
            }
        }
        if let Some(BackupTarget::Postgres(p)) = &b.target {
            if let PostgresSource::Environment(e) = &p.source {
                if !m.environments.contains_key(e) {
                    out.push(
                        doc.error(
                            "spec.backup.postgres.environment",
                            format!("no Environment named `{e}`"),
                        )
                        .expected(format!(
                            "the name of an Environment ({})",
                            names(m.environments.keys().cloned())
                        )),
                    );
                }
            }
        }
    }
    let backed_up = spec.backup.as_ref().is_some_and(|b| b.target.is_some())
        && spec.backup_when() != BackupWhen::Never;
    if mig.policy == MigrationPolicy::Breaking && !backed_up && !mig.allow_without_backup {
        out.push(
            doc.error(
                "spec.migration.policy",
                "a Breaking migration without a backup leaves nothing to restore on rollback",
            )
            .expected("spec.backup with `when: BeforeMigration` or `Always` and a target, or `migration.allowWithoutBackup: true`"),
        );
    }
}
