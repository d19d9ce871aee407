//! `Host`: a VM (or the controller's own machine) running a Docker engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::shape::{field, object, Presence, Shape};
use crate::values::{self, Address, PortRange};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSpec {
    pub address: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<String>,
    pub docker_socket: String,
    pub labels: BTreeMap<String, String>,
    pub port_range: PortRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<String>,
    pub max_parallel: u32,
}

pub fn spec_shape() -> Shape {
    use Presence::*;
    object(
        "A Docker host Berth deploys to.",
        vec![
            field(
                "address",
                Shape::Str(values::ADDRESS),
                Required,
                "`local` for the controller's own Docker socket, or ssh://user@host[:port]: the Docker socket is reached through the SSH connection (no Docker TCP port on the host) and host commands run over it.",
            ),
            field(
                "identityFile",
                Shape::Str(values::LOCAL_PATH),
                Optional,
                "Private key for SSH (ed25519, ECDSA or RSA), on the controller's machine. A key with a passphrase is used through ssh-agent (SSH_AUTH_SOCK).",
            ),
            field(
                "knownHostsFile",
                Shape::Str(values::LOCAL_PATH),
                Optional,
                "known_hosts file the host key is verified against (default ~/.ssh/known_hosts). Keys are always verified.",
            ),
            field(
                "dockerSocket",
                Shape::Str(values::ABS_PATH),
                Default(json!("/var/run/docker.sock")),
                "Docker socket on the host.",
            ),
            field(
                "labels",
                Shape::Map {
                    key: values::LABEL_KEY,
                    value: Box::new(Shape::Text),
                },
                Default(json!({})),
                "Free-form labels.",
            ),
            field(
                "portRange",
                Shape::Str(values::PORT_RANGE),
                Default(json!("20000-29999")),
                "Host ports Berth may publish candidate replicas on.",
            ),
            field(
                "registryAuth",
                Shape::Str(values::LOCAL_PATH),
                Optional,
                "A docker config.json-style credentials file on the controller's machine.",
            ),
            field(
                "maxParallel",
                Shape::Int { min: 1, max: 64 },
                Default(json!(2)),
                "Rollouts that may proceed at once on this host.",
            ),
        ],
    )
}
