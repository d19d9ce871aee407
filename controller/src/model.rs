//! The vocabulary shared by plan, exec, host and store: revisions, container names and
//! labels, what a container is asked to be and what one was observed to be.
//!
//! State on a host is labelled, never guessed: every container Berth creates carries the
//! `berth.*` labels below, so observing an environment is a label query, and its name is
//! derived from (environment, revision, replica) or (environment, operation), so every
//! create is idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use berth_api::environment::{EnvironmentSpec, VolumeSource};

pub type Revision = u64;

pub const LABEL_ENV: &str = "berth.env";
pub const LABEL_REVISION: &str = "berth.revision";
pub const LABEL_TEMPLATE_HASH: &str = "berth.template-hash";
pub const LABEL_ROLE: &str = "berth.role";
pub const LABEL_OP: &str = "berth.op";
pub const LABEL_REPLICA: &str = "berth.replica";
pub const LABEL_PORT: &str = "berth.port";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    App,
    Migrate,
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Migrate => "migrate",
            Role::Backup => "backup",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "app" => Some(Role::App),
            "migrate" => Some(Role::Migrate),
            "backup" => Some(Role::Backup),
            _ => None,
        }
    }
}

/// `<env>-r<revision>-<replica>`
pub fn replica_name(env: &str, rev: Revision, replica: u32) -> String {
    format!("{env}-r{rev}-{replica}")
}

/// `<env>-migrate-<op>`: one per operation, so a resumed rollout finds the migration it
/// already started instead of running it again.
pub fn migrate_name(env: &str, op: &str) -> String {
    format!("{env}-migrate-{}", op.to_ascii_lowercase())
}

/// Everything that shapes a container of an environment. Two specs with the same
/// template are the same revision; scaling or changing probes is not a new revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub env_files: Vec<String>,
    /// Container port and the host address it is published on.
    pub ports: Vec<(u16, String)>,
    pub volumes: Vec<Mount>,
    pub networks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// A named volume, or an absolute host path.
    pub source: String,
    pub is_volume: bool,
    pub target: String,
    pub read_only: bool,
}

impl Template {
    pub fn of(spec: &EnvironmentSpec) -> Template {
        Template {
            image: spec.image.to_string(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            env_files: spec.env_files.clone(),
            ports: spec
                .ports
                .iter()
                .map(|p| (p.container_port, p.publish.clone()))
                .collect(),
            volumes: spec
                .volumes
                .iter()
                .map(|v| {
                    let (source, is_volume) = match &v.source {
                        VolumeSource::Volume(n) => (n.clone(), true),
                        VolumeSource::HostPath(p) => (p.clone(), false),
                    };
                    Mount {
                        source,
                        is_volume,
                        target: v.mount_path.clone(),
                        read_only: v.read_only,
                    }
                })
                .collect(),
            networks: spec.networks.clone(),
        }
    }

    /// A short, stable hash of the template (like a Kubernetes pod-template-hash).
    pub fn hash(&self) -> String {
        // serde_json of these plain structs (BTreeMap keys sorted) is deterministic.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..6])
    }
}

/// What a container is asked to be: the host creates it exactly so, labelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub env_name: String,
    pub revision: Revision,
    pub role: Role,
    pub replica: Option<u32>,
    pub op: Option<String>,
    pub template: Template,
    pub template_hash: String,
    /// For app replicas: the host port each container port is published on (the first is
    /// the one recorded as `berth.port`).
    pub host_ports: Vec<u16>,
    /// Replaces the template's command for one-off containers (`migrate`).
    pub override_args: Option<Vec<String>>,
    /// Network aliases: an environment is reachable by its own name on its networks.
    pub aliases: Vec<String>,
}

impl ContainerSpec {
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(LABEL_ENV.into(), self.env_name.clone());
        l.insert(LABEL_REVISION.into(), self.revision.to_string());
        l.insert(LABEL_TEMPLATE_HASH.into(), self.template_hash.clone());
        l.insert(LABEL_ROLE.into(), self.role.as_str().into());
        if let Some(r) = self.replica {
            l.insert(LABEL_REPLICA.into(), r.to_string());
        }
        if let Some(op) = &self.op {
            l.insert(LABEL_OP.into(), op.clone());
        }
        if let Some(p) = self.host_ports.first() {
            l.insert(LABEL_PORT.into(), p.to_string());
        }
        l
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    /// Stopped, with its exit code.
    Exited(i64),
    /// Restarting, paused, dead, removing: not serving, not finished.
    Other,
}

/// A container as observed on a host, read back from its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub env_name: String,
    pub revision: Revision,
    pub role: Role,
    pub replica: Option<u32>,
    pub op: Option<String>,
    pub template_hash: String,
    pub image: String,
    /// `berth.port`: the host port the first container port is published on.
    pub port: Option<u16>,
    pub state: ContainerState,
}

impl ContainerInfo {
    /// Reads a container back from its name and labels; `None` when it is not Berth's.
    pub fn from_labels(
        id: &str,
        name: &str,
        image: &str,
        labels: &BTreeMap<String, String>,
        state: ContainerState,
    ) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            id: id.to_owned(),
            name: name.trim_start_matches('/').to_owned(),
            env_name: labels.get(LABEL_ENV)?.clone(),
            revision: labels.get(LABEL_REVISION)?.parse().ok()?,
            role: Role::parse(labels.get(LABEL_ROLE)?)?,
            replica: labels.get(LABEL_REPLICA).and_then(|r| r.parse().ok()),
            op: labels.get(LABEL_OP).cloned(),
            template_hash: labels.get(LABEL_TEMPLATE_HASH)?.clone(),
            image: image.to_owned(),
            port: labels.get(LABEL_PORT).and_then(|p| p.parse().ok()),
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvironmentSpec {
        let text = "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n---\n\
                    apiVersion: berth.dev/v1\nkind: Environment\nmetadata: {name: web}\nspec:\n  host: h\n  image: app:v1\n  ports: [{name: http, containerPort: 8080}]\n";
        let m = berth_api::load_texts(vec![("t.yaml".into(), text.into())])
            .into_manifests()
            .map_err(|l| l.diagnostics)
            .unwrap();
        m.environments["web"].spec.clone()
    }

    #[test]
    fn the_template_hash_ignores_replicas_and_probes_but_not_the_image() {
        let a = spec();
        let mut b = a.clone();
        b.replicas = 7;
        b.revision_history_limit = 1;
        assert_eq!(Template::of(&a).hash(), Template::of(&b).hash());
        b.image = "app:v2".parse().unwrap();
        assert_ne!(Template::of(&a).hash(), Template::of(&b).hash());
        assert_eq!(Template::of(&a).hash().len(), 12);
    }

    #[test]
    fn labels_read_back_to_the_same_container() {
        let t = Template::of(&spec());
        let cs = ContainerSpec {
            name: replica_name("web", 3, 1),
            env_name: "web".into(),
            revision: 3,
            role: Role::App,
            replica: Some(1),
            op: Some("01J".into()),
            template_hash: t.hash(),
            template: t,
            host_ports: vec![20001],
            override_args: None,
            aliases: vec!["web".into()],
        };
        let info = ContainerInfo::from_labels(
            "id",
            "/web-r3-1",
            "app:v1",
            &cs.labels(),
            ContainerState::Running,
        )
        .unwrap();
        assert_eq!(info.name, "web-r3-1");
        assert_eq!(
            (info.revision, info.replica, info.port),
            (3, Some(1), Some(20001))
        );
        assert_eq!(info.role, Role::App);
        assert!(ContainerInfo::from_labels(
            "id",
            "x",
            "i",
            &BTreeMap::new(),
            ContainerState::Running
        )
        .is_none());
    }
}
