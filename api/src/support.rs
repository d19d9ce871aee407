//! What a manifest can say that the engine does not do yet. One list, read by both
//! `berthctl validate` (a warning per entry) and the engine's preflight, so the two
//! cannot disagree. An entry leaves this file when the issue that builds it lands.

use serde::Serialize;

use crate::environment::{EnvironmentSpec, PortRef, StrategyType, Traffic};
use crate::host::HostSpec;

/// What the engine does with a manifest that uses an unsupported field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    /// Nothing is rolled out: the engine refuses before any side effect.
    Refused,
    /// The rollout runs, but not as the field asks; the message says how.
    Differs,
}

/// One field the engine does not act on as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    /// The field path inside the document, such as `spec.traffic.haproxy`.
    pub path: &'static str,
    /// What happens instead, said to the user.
    pub message: &'static str,
    pub effect: Effect,
}

const HAPROXY_PORT: Unsupported = Unsupported {
    path: "spec.traffic.haproxy.port",
    message: "not supported yet: traffic goes to the first of spec.ports; this port is ignored",
    effect: Effect::Differs,
};

const CANARY: Unsupported = Unsupported {
    path: "spec.strategy.type",
    message: "not supported yet: Canary runs as BlueGreen — the whole switch happens at once after the checks; steps are ignored",
    effect: Effect::Differs,
};

const NGINX_PORT: Unsupported = Unsupported {
    path: "spec.traffic.nginx.port",
    message: "not supported yet: traffic goes to the first of spec.ports; this port is ignored",
    effect: Effect::Differs,
};

/// The fields of an environment's spec the engine does not act on as written, each with
/// its path, what happens instead, and whether the engine refuses the rollout
/// ([`Effect::Refused`]: its preflight must stop before any side effect) or runs it
/// differently ([`Effect::Differs`]). Empty when the engine does everything the spec says.
/// `berthctl validate` reports each entry as a warning at its path.
pub fn unsupported(env: &EnvironmentSpec) -> Vec<Unsupported> {
    let mut out = Vec::new();
    match &env.traffic {
        Traffic::None => {}
        Traffic::Nginx(n) => {
            if names_a_later_port(env, n.port.as_ref()) {
                out.push(NGINX_PORT);
            }
        }
        Traffic::Haproxy(h) => {
            if names_a_later_port(env, h.port.as_ref()) {
                out.push(HAPROXY_PORT);
            }
        }
    }
    match env.strategy.kind {
        StrategyType::Canary => out.push(CANARY),
        StrategyType::Recreate | StrategyType::BlueGreen => {}
    }
    out
}

/// The switch targets the host port of the first container port: naming that port is
/// honoured, naming another is not (naming none is an error already).
fn names_a_later_port(env: &EnvironmentSpec, port: Option<&PortRef>) -> bool {
    let index = port.and_then(|r| {
        env.ports.iter().position(|p| match r {
            PortRef::Name(name) => &p.name == name,
            PortRef::Number(num) => p.container_port == *num,
        })
    });
    index.is_some_and(|i| i > 0)
}

/// Like [`unsupported`], for a Host. Empty: the engine acts on every field of a Host,
/// `local` and `ssh://` alike (kept so that a future field has its place).
pub fn unsupported_host(_host: &HostSpec) -> Vec<Unsupported> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_texts;

    const HOSTS: &str =
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n";

    fn env(extra: &str) -> EnvironmentSpec {
        let text = format!(
            "{HOSTS}---\napiVersion: berth.dev/v1\nkind: Environment\nmetadata: {{name: web}}\nspec:\n  host: h\n  image: app:v1\n  ports: [{{name: http, containerPort: 8080}}, {{name: admin, containerPort: 9090}}]\n{extra}"
        );
        let loaded = load_texts(vec![("t.yaml".into(), text)]);
        let m = loaded.into_manifests().map_err(|l| l.diagnostics).unwrap();
        m.environments["web"].spec.clone()
    }

    fn paths(spec: &EnvironmentSpec) -> Vec<(&'static str, Effect)> {
        unsupported(spec)
            .iter()
            .map(|u| (u.path, u.effect))
            .collect()
    }

    #[test]
    fn an_environment_the_engine_fully_supports_has_nothing_unsupported() {
        let spec = env("  traffic: {nginx: {upstreamFile: /u.conf, port: http}}\n  strategy: {type: Recreate}\n  notify: {webhooks: [{urlFile: /etc/berth/hook}]}\n");
        assert_eq!(paths(&spec), []);
    }

    #[test]
    fn canary_runs_differently_while_haproxy_approval_and_notify_are_supported() {
        let spec = env("  traffic: {haproxy: {socket: /s.sock, backend: web}}\n  strategy: {type: Canary, steps: [{weight: 50}]}\n  approval: Required\n  notify: {webhooks: [{url: http://127.0.0.1:9/x}]}\n");
        assert_eq!(paths(&spec), [("spec.strategy.type", Effect::Differs)]);
        let spec = env("  traffic: {haproxy: {socket: /s.sock, backend: web, port: admin}}\n");
        assert_eq!(
            paths(&spec),
            [("spec.traffic.haproxy.port", Effect::Differs)]
        );
    }

    #[test]
    fn an_nginx_port_other_than_the_first_is_not_honoured() {
        for port in ["admin", "9090"] {
            let spec = env(&format!(
                "  traffic: {{nginx: {{upstreamFile: /u.conf, port: {port}}}}}\n"
            ));
            assert_eq!(
                paths(&spec),
                [("spec.traffic.nginx.port", Effect::Differs)],
                "{port}"
            );
        }
        let spec = env("  traffic: {nginx: {upstreamFile: /u.conf, port: 8080}}\n");
        assert_eq!(paths(&spec), []);
    }

    #[test]
    fn an_ssh_host_is_supported_like_a_local_one() {
        let text = format!("{HOSTS}---\napiVersion: berth.dev/v1\nkind: Host\nmetadata: {{name: vm}}\nspec: {{address: 'ssh://root@127.0.0.2:2222'}}\n");
        let m = load_texts(vec![("h.yaml".into(), text)])
            .into_manifests()
            .map_err(|l| l.diagnostics)
            .unwrap();
        assert_eq!(unsupported_host(&m.hosts["h"].spec), []);
        assert_eq!(unsupported_host(&m.hosts["vm"].spec), []);
    }
}
