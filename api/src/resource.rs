//! The resources as typed values, in Kubernetes shape: `apiVersion`, `kind`, `metadata`,
//! `spec`. A controller-owned `status` in input is accepted and ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::environment::{self, EnvironmentSpec};
use crate::host::{self, HostSpec};
use crate::shape::{field, Object, Presence, Shape};
use crate::values;

pub const API_VERSION: &str = "berth.dev/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Host,
    Environment,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Host, Kind::Environment];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "Host",
            Kind::Environment => "Environment",
        }
    }

    pub fn spec_shape(self) -> Shape {
        match self {
            Kind::Host => host::spec_shape(),
            Kind::Environment => environment::spec_shape(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Where a resource was read from, so later errors and status can point back at it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: S,
    #[serde(skip)]
    pub origin: Origin,
}

pub type Host = Resource<HostSpec>;
pub type Environment = Resource<EnvironmentSpec>;

impl<S> Resource<S> {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// A complete, valid desired state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub hosts: BTreeMap<String, Host>,
    pub environments: BTreeMap<String, Environment>,
}

/// The shape of a whole document of `kind`; with no (valid) kind, the spec is not
/// checked, since which fields it may have is unknown.
pub fn document_shape(kind: Option<Kind>) -> Shape {
    use Presence::*;
    let metadata = crate::shape::object(
        "",
        vec![
            field(
                "name",
                Shape::Str(values::NAME),
                Required,
                "Unique among resources of this kind.",
            ),
            field(
                "labels",
                Shape::Map {
                    key: values::LABEL_KEY,
                    value: Box::new(Shape::Text),
                },
                Default(json!({})),
                "",
            ),
        ],
    );
    let spec = match kind {
        Some(k) => k.spec_shape(),
        None => Shape::Any,
    };
    Shape::Object(Object {
        fields: vec![
            field("apiVersion", Shape::Enum(&[API_VERSION]), Required, ""),
            field("kind", Shape::Enum(&["Host", "Environment"]), Required, ""),
            field("metadata", metadata, Required, ""),
            field("spec", spec, Required, ""),
        ],
        groups: Vec::new(),
        ignored: &["status"],
        doc: "",
    })
}

/// The JSON Schema of a Berth manifest document (one YAML document), for editors
/// (yaml-language-server) and tools.
pub fn json_schema() -> serde_json::Value {
    let variants: Vec<serde_json::Value> = Kind::ALL
        .iter()
        .map(|k| {
            let mut s = document_shape(Some(*k)).schema();
            s["properties"]["kind"] = json!({"const": k.as_str()});
            s["title"] = json!(k.as_str());
            s
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://berth.dev/schemas/v1/manifest.json",
        "title": "Berth manifest",
        "description": "One document of a Berth desired-state file: a Host or an Environment.",
        "oneOf": variants,
    })
}
