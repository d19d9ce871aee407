//! `apply`, `diff` and `delete`: environments whose desired state the journal owns.
//!
//! Each environment has one owner: the watched directory, or the journal (an applied
//! record). Applying an environment the directory owns is refused, naming its file and
//! commit, unless `force` takes it over (recorded as an event). Deleting an applied
//! environment stops nothing unless pruning is asked; what pruning removes is listed
//! either way.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::environment::{BackupWhen, MigrationPolicy};
use berth_api::Environment;
use serde_json::Value;

use crate::model::Template;
use crate::reconcile::{is_applied, now_millis, Controller};
use crate::store::{AppliedRecord, EventKind, TakeOver};

use super::types::{
    ApplyReply, ApplyRequest, DeleteReply, EnvChange, FieldChange, Owner, RolloutPreview,
};
use super::ApiError;

/// The name the stand-ins of the directory's hosts are read under.
const HOSTS_STANDIN: &str = "<hosts of the manifest directory>";

/// What `apply` would do, without doing it.
pub fn diff(ctl: &Controller, req: ApplyRequest) -> Result<ApplyReply, ApiError> {
    let envs = parse(ctl, &req)?;
    changes(ctl, &envs, req.force, true)
}

fn changes(
    ctl: &Controller,
    envs: &[Environment],
    force: bool,
    dry_run: bool,
) -> Result<ApplyReply, ApiError> {
    Ok(ApplyReply {
        dry_run,
        environments: envs
            .iter()
            .map(|e| change_of(ctl, e, force))
            .collect::<Result<Vec<_>, _>>()?,
    })
}

/// Stores the environments as applied (unless `dry_run`) and wakes the loop.
pub fn apply(ctl: &Controller, req: ApplyRequest) -> Result<ApplyReply, ApiError> {
    let envs = parse(ctl, &req)?;
    // Checked (ownership included) for every environment before any is stored.
    let reply = changes(ctl, &envs, req.force, req.dry_run)?;
    if req.dry_run {
        return Ok(reply);
    }
    let directory = ctl.directory();
    let already: BTreeSet<String> = ctl
        .store()
        .applied()?
        .into_iter()
        .map(|a| a.resource.metadata.name)
        .collect();
    let source = req.source.clone().unwrap_or_else(|| "request".into());
    for env in envs {
        let name = env.name().to_owned();
        let took_over = directory
            .manifests
            .environments
            .get(&name)
            .map(|d| TakeOver {
                file: format!("{}:{}", d.origin.file.display(), d.origin.line),
                commit: directory.commit.clone(),
            });
        if let Some(t) = took_over.as_ref().filter(|_| !already.contains(&name)) {
            ctl.event(
                &name,
                EventKind::Warning,
                "TakenOver",
                format!(
                    "apply --force took {name} over from the manifest directory ({}, commit {}); the directory's manifest is ignored until `berthctl delete {name}`",
                    t.file,
                    t.commit.as_deref().unwrap_or("none")
                ),
                None,
            );
        }
        ctl.store().put_applied(&AppliedRecord {
            resource: env,
            source: source.clone(),
            applied_at: now_millis(),
            took_over,
        })?;
        ctl.event(
            &name,
            EventKind::Normal,
            "Applied",
            format!("applied from {source}"),
            None,
        );
    }
    ctl.refresh_desired();
    Ok(reply)
}

/// Stops owning an applied environment. With `prune`, its containers are removed too;
/// without, nothing running changes and the reply lists what pruning would remove.
pub async fn delete(
    ctl: &Arc<Controller>,
    name: &str,
    prune: bool,
) -> Result<DeleteReply, ApiError> {
    let applied = ctl
        .store()
        .applied()?
        .into_iter()
        .find(|a| a.resource.name() == name);
    let directory = ctl.directory();
    let in_directory = directory.manifests.environments.get(name);
    let Some(rec) = applied else {
        return Err(match in_directory {
            Some(d) => ApiError::conflict(format!(
                "{name} is owned by the manifest directory ({}:{}); remove it there",
                d.origin.file.display(),
                d.origin.line
            )),
            None => ApiError::not_found(format!("{name} was not applied")),
        });
    };
    // Listed for the operator; a host that cannot be asked now does not stop the delete.
    let (would_prune, unlisted) = match ctl.container_names(name, &rec.resource.spec.host).await {
        Ok(names) => (names, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    ctl.store().remove_applied(name)?;
    let message = match (in_directory, prune) {
        (Some(d), _) => format!(
            "deleted the applied {name}; the manifest directory owns it again ({}:{})",
            d.origin.file.display(),
            d.origin.line
        ),
        (None, false) => format!(
            "deleted {name} from the desired state; its {} containers keep running because pruning was not asked (--prune)",
            would_prune.len()
        ),
        (None, true) => format!("deleted {name}; pruning its {} containers", would_prune.len()),
    };
    let message = match unlisted {
        Some(e) => format!("{message} (its containers could not be listed: {e})"),
        None => message,
    };
    ctl.event(name, EventKind::Normal, "Deleted", message.clone(), None);
    ctl.refresh_desired();
    let pruned = prune && in_directory.is_none();
    if pruned {
        let ctl = ctl.clone();
        let (env, host) = (name.to_owned(), rec.resource.spec.host.clone());
        tokio::spawn(async move { ctl.prune_environment(&env, &host).await });
    }
    Ok(DeleteReply {
        environment: name.to_owned(),
        message,
        would_prune,
        pruned,
    })
}

/// The environments of the request, checked like manifests (every error at once) against
/// the directory's hosts and the desired environments.
fn parse(ctl: &Controller, req: &ApplyRequest) -> Result<Vec<Environment>, ApiError> {
    let source = req.source.clone().unwrap_or_else(|| "request".into());
    let mut inputs: Vec<(PathBuf, String)> = req
        .files
        .iter()
        .map(|f| (PathBuf::from(&f.source), f.manifests.clone()))
        .collect();
    if !req.manifests.trim().is_empty() || inputs.is_empty() {
        inputs.insert(0, (PathBuf::from(&source), req.manifests.clone()));
    }
    // Hosts come from the directory alone: a Host in the request is refused first (read
    // on its own, so the refusal points at the request, not at a duplicate).
    let alone = berth_api::load_texts(inputs.clone());
    if let Some(h) = alone.manifests.hosts.values().next() {
        return Err(ApiError::bad_request(format!(
            "Host {} at {}:{}: hosts come from the manifest directory; apply applies Environments",
            h.name(),
            h.origin.file.display(),
            h.origin.line
        ))
        .at("kind"));
    }
    let directory = ctl.directory();
    // The hosts come from the directory: stand-ins satisfy the check that an
    // environment's host is defined; their specs are not used.
    let standins: String = directory
        .manifests
        .hosts
        .keys()
        .map(|h| format!("---\napiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: {h}}}\nspec: {{address: local}}\n"))
        .collect();
    inputs.push((PathBuf::from(HOSTS_STANDIN), standins));
    let loaded = berth_api::load_texts(inputs);
    // dependsOn may name environments that are desired but not in this request.
    let errors: Vec<_> = loaded
        .errors()
        .filter(|d| !d.path.starts_with("spec.dependsOn"))
        .collect();
    if let Some(first) = errors.first() {
        let all: Vec<String> = errors
            .iter()
            .map(|d| {
                format!(
                    "{}:{}:{}: {}: {}",
                    d.file.display(),
                    d.line,
                    d.column,
                    d.path,
                    d.message
                )
            })
            .collect();
        return Err(ApiError::bad_request(format!(
            "invalid manifests ({} errors):\n{}",
            errors.len(),
            all.join("\n")
        ))
        .at(first.path.clone()));
    }
    let envs: Vec<Environment> = loaded.manifests.environments.into_values().collect();
    if envs.is_empty() {
        return Err(ApiError::bad_request("no Environment in the request").at("manifests"));
    }
    let mut names: BTreeSet<String> = ctl.desired_environment_names().into_iter().collect();
    names.extend(envs.iter().map(|e| e.name().to_owned()));
    for e in &envs {
        if let Some(dep) = e.spec.depends_on.iter().find(|d| !names.contains(*d)) {
            return Err(ApiError::bad_request(format!(
                "{}: dependsOn names {dep}, which is not a desired environment",
                e.name()
            ))
            .at("spec.dependsOn"));
        }
    }
    Ok(envs)
}

/// How `env` compares with what is desired now, and the ownership check.
fn change_of(ctl: &Controller, env: &Environment, force: bool) -> Result<EnvChange, ApiError> {
    let name = env.name();
    let desired = ctl.snapshot();
    let current = desired.manifests.environments.get(name);
    let owned_by_directory = current.is_some_and(|c| !is_applied(c));
    if owned_by_directory && !force {
        let c = current.expect("checked above");
        return Err(ApiError::conflict(format!(
            "{name} is owned by the manifest directory ({}:{}, commit {}); `apply --force` takes it over",
            c.origin.file.display(),
            c.origin.line,
            desired.commit.as_deref().unwrap_or("none")
        ))
        .at("metadata.name"));
    }
    let new = serde_json::to_value(env).unwrap_or(Value::Null);
    let (action, changes) = match current {
        None => ("created", field_changes(&Value::Null, &new, "")),
        Some(c) => {
            let old = serde_json::to_value(c).unwrap_or(Value::Null);
            let changes = field_changes(&old, &new, "");
            let action = if changes.is_empty() {
                "unchanged"
            } else {
                "configured"
            };
            (action, changes)
        }
    };
    Ok(EnvChange {
        name: name.to_owned(),
        action: action.into(),
        changes,
        rollout: rollout_of(ctl, env)?,
        took_over: owned_by_directory,
    })
}

/// The rollout the spec would start: none when its template is the serving revision's.
fn rollout_of(ctl: &Controller, env: &Environment) -> Result<Option<RolloutPreview>, ApiError> {
    let state = ctl.store().env_state(env.name())?;
    let hash = Template::of(&env.spec).hash();
    let serving = match state.current {
        Some(rev) => ctl
            .store()
            .revision(env.name(), rev)?
            .map(|r| r.template_hash),
        None => None,
    };
    if serving.as_deref() == Some(hash.as_str()) {
        return Ok(None);
    }
    let spec = &env.spec;
    let policy = spec.migration.policy;
    Ok(Some(RolloutPreview {
        from_revision: state.current,
        image: spec.image.to_string(),
        steps: crate::plan::steps_for(spec, state.current)
            .iter()
            .map(|s| s.name().to_owned())
            .collect(),
        migration: format!("{policy:?}"),
        backup: match spec.backup_when() {
            BackupWhen::Always => true,
            BackupWhen::BeforeMigration => policy != MigrationPolicy::None,
            BackupWhen::Never => false,
        },
        approval_required: spec.approval == berth_api::environment::Approval::Required,
    }))
}

/// Leaf-level differences between two JSON trees, in path order.
pub fn field_changes(old: &Value, new: &Value, path: &str) -> Vec<FieldChange> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    field_changes(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &join(k),
                    )
                })
                .collect()
        }
        (Value::Null, Value::Object(b)) => b
            .iter()
            .flat_map(|(k, v)| field_changes(&Value::Null, v, &join(k)))
            .collect(),
        (Value::Object(a), Value::Null) => a
            .iter()
            .flat_map(|(k, v)| field_changes(v, &Value::Null, &join(k)))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![FieldChange {
            path: path.to_owned(),
            from: (!a.is_null()).then(|| a.clone()),
            to: (!b.is_null()).then(|| b.clone()),
        }],
    }
}

/// Who owns `env`'s desired state, with what people must know about that source.
pub fn owner(ctl: &Controller, env: &str) -> Owner {
    let desired = ctl.snapshot();
    let source = ctl.source_health();
    let applied = ctl
        .store()
        .applied()
        .ok()
        .and_then(|a| a.into_iter().find(|r| r.resource.name() == env));
    if let Some(rec) = applied {
        return Owner {
            by: "apply".into(),
            file: Some(rec.source),
            took_over_from: rec.took_over.map(|t| t.file),
            ..Owner::default()
        };
    }
    let Some(res) = desired.manifests.environments.get(env) else {
        return Owner {
            by: "none".into(),
            note: Some(
                "its manifest was removed: it is no longer reconciled and is kept running because pruning was not asked"
                    .into(),
            ),
            ..Owner::default()
        };
    };
    let note = source.error.as_ref().map(|e| {
        format!(
            "the manifest directory is invalid since {} ({}); still acting on commit {}",
            crate::ctl::output::utc(e.since),
            e.errors.join("; "),
            source.commit.as_deref().unwrap_or("none")
        )
    });
    Owner {
        by: "directory".into(),
        file: Some(format!("{}:{}", res.origin.file.display(), res.origin.line)),
        commit: source.commit.clone(),
        dirty: source.dirty,
        took_over_from: None,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_changes_name_exactly_the_changed_leaves() {
        let old = json!({"spec": {"image": "a:v1", "replicas": 2, "env": {"A": "1"}}});
        let new = json!({"spec": {"image": "a:v2", "replicas": 2, "env": {"A": "1", "B": "2"}}});
        let c = field_changes(&old, &new, "");
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["spec.env.B", "spec.image"]);
        assert_eq!(c[1].from, Some(json!("a:v1")));
        assert_eq!(c[0].from, None);
    }
}
