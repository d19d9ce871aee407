//! Checks that need more than one field or more than one document: names that must be
//! unique or must exist, ports referred to by name, canary steps, dependencies between
//! environments (no cycles), the rules that keep a rollback possible (a Breaking migration
//! needs a backup to restore), and a warning for each field the engine does not act on yet.

use std::collections::BTreeMap;

use crate::diag::Diagnostic;
use crate::environment::{
    BackupTarget, BackupWhen, EnvironmentSpec, MigrationPolicy, PortRef, PostgresSource,
    ProbeAction, StrategyType, Traffic,
};
use crate::load::Doc;
use crate::resource::{Kind, Manifests};
use crate::shape::did_you_mean;
use crate::support::{unsupported, unsupported_host, Unsupported};
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
    let mut environments: Vec<&Doc> = Vec::new();
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
                    warn_unsupported(unsupported_host(&h.spec), doc, &mut out);
                }
            }
            Kind::Environment => {
                if let Some(env) = m.environments.get(*name) {
                    environments.push(doc);
                    environment(&env.spec, m, doc, &mut out);
                    warn_unsupported(unsupported(&env.spec), doc, &mut out);
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
    dependency_cycles(m, &environments, &mut out);
    out
}

fn warn_unsupported(fields: Vec<Unsupported>, doc: &Doc, out: &mut Vec<Diagnostic>) {
    out.extend(
        fields
            .into_iter()
            .map(|u| doc.error(u.path, u.message).warning()),
    );
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
        let known: Vec<&str> = m.hosts.keys().map(String::as_str).collect();
        out.push(
            doc.error(
                "spec.host",
                format!(
                    "no Host named `{}`{}",
                    spec.host,
                    did_you_mean(&spec.host, &known)
                ),
            )
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
    depends_on(spec, m, doc, out);

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
                    let known: Vec<&str> = m.environments.keys().map(String::as_str).collect();
                    out.push(
                        doc.error(
                            "spec.backup.postgres.environment",
                            format!("no Environment named `{e}`{}", did_you_mean(e, &known)),
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

/// `spec.dependsOn`: each entry names another Environment of the manifests, once.
fn depends_on(spec: &EnvironmentSpec, m: &Manifests, doc: &Doc, out: &mut Vec<Diagnostic>) {
    let others = || m.environments.keys().filter(|k| **k != doc.name);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let path = format!("spec.dependsOn[{i}]");
        if let Some(j) = seen.get(dep.as_str()) {
            out.push(doc.error(
                &path,
                format!("`{dep}` is already listed as spec.dependsOn[{j}]"),
            ));
            continue;
        }
        seen.insert(dep, i);
        if *dep == doc.name {
            out.push(
                doc.error(&path, format!("environment `{dep}` depends on itself"))
                    .expected(format!(
                        "the name of another Environment ({})",
                        names(others().cloned())
                    )),
            );
        } else if !m.environments.contains_key(dep) {
            let known: Vec<&str> = others().map(String::as_str).collect();
            out.push(
                doc.error(
                    &path,
                    format!("no Environment named `{dep}`{}", did_you_mean(dep, &known)),
                )
                .expected(format!(
                    "the name of an Environment ({})",
                    names(others().cloned())
                )),
            );
        }
    }
}

/// Environments waiting on each other in a circle would never roll out. Each cycle is
/// reported once, named from its member that comes first in the files, at that member's
/// `spec.dependsOn` entry leading into the cycle. (Self-dependence and unknown names are
/// reported by [`depends_on`] and left out here.)
fn dependency_cycles(m: &Manifests, envs: &[&Doc], out: &mut Vec<Diagnostic>) {
    let order: BTreeMap<&str, usize> = envs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    let edges: BTreeMap<&str, Vec<&str>> = envs
        .iter()
        .map(|d| {
            let deps = m.environments[&d.name]
                .spec
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|dep| *dep != d.name && order.contains_key(dep))
                .collect();
            (d.name.as_str(), deps)
        })
        .collect();
    let mut cycles: Vec<Vec<&str>> = Vec::new();
    let mut done: BTreeMap<&str, bool> = BTreeMap::new(); // false: on the current path
    for root in envs {
        let root = root.name.as_str();
        if done.contains_key(root) {
            continue;
        }
        // Depth-first without recursion: (environment, index of its next dependency).
        let mut path: Vec<(&str, usize)> = vec![(root, 0)];
        done.insert(root, false);
        while let Some(&(node, next)) = path.last() {
            let Some(&dep) = edges[node].get(next) else {
                done.insert(node, true);
                path.pop();
                continue;
            };
            if let Some(last) = path.last_mut() {
                last.1 += 1;
            }
            match done.get(dep) {
                None => {
                    done.insert(dep, false);
                    path.push((dep, 0));
                }
                Some(false) => {
                    let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                    let first = (0..cycle.len())
                        .min_by_key(|i| order[cycle[*i]])
                        .unwrap_or(0);
                    cycle.rotate_left(first);
                    if !cycles.contains(&cycle) {
                        cycles.push(cycle);
                    }
                }
                Some(true) => {}
            }
        }
    }
    for cycle in cycles {
        let (head, second) = (cycle[0], cycle[1 % cycle.len()]);
        let doc = envs[order[head]];
        let index = m.environments[head]
            .spec
            .depends_on
            .iter()
            .position(|d| d == second)
            .unwrap_or(0);
        let named: Vec<&str> = cycle.iter().copied().chain([head]).collect();
        out.push(
            doc.error(
                &format!("spec.dependsOn[{index}]"),
                format!(
                    "dependency cycle: {}; none of these environments would ever roll out",
                    named.join(" → ")
                ),
            )
            .expected("dependencies that do not lead back to this environment"),
        );
    }
}
