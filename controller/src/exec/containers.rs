//! Containers of an environment: what each replica and one-off container is asked to be,
//! which host ports it gets, and which old revisions are past the history limit.

use std::collections::BTreeSet;

use berth_api::values::PortRange;

use crate::model::{migrate_name, replica_name, ContainerSpec, Revision, Role, Template};

/// A replica of `revision`: named `<env>-r<rev>-<replica>`, reachable on its networks
/// under the environment's name (so a database environment is `demo-db` to its apps).
/// It runs `image` (the revision's repo digest, see [`pinned`]) and is labelled with the
/// template's hash.
pub fn replica_spec(
    env: &str,
    revision: Revision,
    replica: u32,
    template: &Template,
    image: &str,
    host_ports: Vec<u16>,
    op: Option<&str>,
) -> ContainerSpec {
    ContainerSpec {
        name: replica_name(env, revision, replica),
        env_name: env.to_owned(),
        revision,
        role: Role::App,
        replica: Some(replica),
        op: op.map(str::to_owned),
        template_hash: template.hash(),
        template: pinned(template, image),
        host_ports,
        override_args: None,
        aliases: vec![env.to_owned()],
    }
}

/// The one-off migration container of an operation: the new image, the template's
/// environment and networks, the migration command instead of the image's, no ports.
pub fn migrate_spec(
    env: &str,
    revision: Revision,
    op: &str,
    template: &Template,
    image: &str,
    command: &[String],
) -> ContainerSpec {
    let mut t = pinned(template, image);
    t.ports.clear();
    // The command replaces the entrypoint too: `[/demo-app, migrate]` must run as written.
    t.command = command.first().map(|c| vec![c.clone()]);
    ContainerSpec {
        name: migrate_name(env, op),
        env_name: env.to_owned(),
        revision,
        role: Role::Migrate,
        replica: None,
        op: Some(op.to_owned()),
        template_hash: template.hash(),
        template: t,
        host_ports: Vec::new(),
        override_args: Some(command.iter().skip(1).cloned().collect()),
        aliases: Vec::new(),
    }
}

/// `template` running `image`: the revision's repo digest in place of its tag. The hash
/// stays the template's (labels name the revision's template, not the reference).
fn pinned(template: &Template, image: &str) -> Template {
    Template {
        image: image.to_owned(),
        ..template.clone()
    }
}

/// Picks `n` free host ports from `range`, lowest first, avoiding `used` (ports Berth's
/// containers already hold, and ports found taken by something else).
pub fn allocate_ports(range: PortRange, used: &BTreeSet<u16>, n: usize) -> Option<Vec<u16>> {
    let ports: Vec<u16> = (range.start..=range.end)
        .filter(|p| !used.contains(p))
        .take(n)
        .collect();
    (ports.len() == n).then_some(ports)
}

/// Revisions to delete: all but the newest `keep` of those that are neither current nor
/// the one being rolled out.
pub fn revisions_to_prune(
    all: &[Revision],
    current: Revision,
    previous: Option<Revision>,
    keep: u32,
) -> Vec<Revision> {
    let mut old: Vec<Revision> = all
        .iter()
        .copied()
        .filter(|r| *r != current && Some(*r) != previous)
        .collect();
    old.sort_unstable_by(|a, b| b.cmp(a));
    // `previous` is always kept for rollback and counts against the limit.
    let keep = keep.saturating_sub(u32::from(previous.is_some())) as usize;
    old.into_iter().skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_the_lowest_free_ones_and_a_full_range_says_so() {
        let range = PortRange {
            start: 100,
            end: 104,
        };
        let used: BTreeSet<u16> = [100, 102].into();
        assert_eq!(allocate_ports(range, &used, 2), Some(vec![101, 103]));
        assert_eq!(allocate_ports(range, &used, 4), None);
    }

    #[test]
    fn pruning_keeps_the_history_limit_counting_the_previous_revision() {
        let all = [1, 2, 3, 4, 5, 6];
        assert_eq!(revisions_to_prune(&all, 6, Some(5), 3), vec![2, 1]);
        assert_eq!(revisions_to_prune(&all, 6, Some(5), 1), vec![4, 3, 2, 1]);
        assert_eq!(revisions_to_prune(&all, 6, None, 0), vec![5, 4, 3, 2, 1]);
        assert_eq!(revisions_to_prune(&[1], 1, None, 5), Vec::<Revision>::new());
    }

    #[test]
    fn the_migration_runs_its_command_in_place_of_the_entrypoint() {
        let t = Template {
            image: "app:v2".into(),
            command: None,
            args: Some(vec!["serve".into()]),
            env: Default::default(),
            env_files: vec!["/e".into()],
            ports: vec![(8080, "127.0.0.1".into())],
            volumes: vec![],
            networks: vec!["n".into()],
        };
        let m = migrate_spec(
            "web",
            2,
            "01ABC",
            &t,
            "app@sha256:0a",
            &["/demo-app".into(), "migrate".into()],
        );
        assert_eq!(m.name, "web-migrate-01abc");
        assert_eq!(m.template.command, Some(vec!["/demo-app".to_owned()]));
        assert_eq!(m.override_args, Some(vec!["migrate".to_owned()]));
        assert!(m.template.ports.is_empty());
        assert_eq!(m.template.env_files, vec!["/e".to_owned()]);
        assert_eq!(m.template.image, "app@sha256:0a");
        assert_eq!(m.template_hash, t.hash());
        let r = replica_spec("web", 2, 1, &t, "app@sha256:0a", vec![20001], None);
        assert_eq!(
            (r.template.image.as_str(), r.template_hash.clone()),
            ("app@sha256:0a", t.hash())
        );
        assert_eq!(
            (r.name.as_str(), r.aliases.clone()),
            ("web-r2-1", vec!["web".to_owned()])
        );
        assert_eq!(r.labels()["berth.port"], "20001");
    }
}
