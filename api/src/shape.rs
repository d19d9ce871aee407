//! Shapes: one description of what a resource's YAML may hold, used three ways —
//! to check a located document and collect *every* error with its position, to turn it
//! into plain JSON with defaults filled (which serde then reads into typed structs), and
//! to emit the JSON Schema editors validate with.
//!
//! Keeping all three on one description is what stops the error messages, the defaults
//! and the published schema from drifting apart.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::diag::Diagnostic;
use crate::yaml::{key_text, Node, NodeKind, Pos, Scalar};

/// A syntactic check on a string value. The message says what is wrong with it.
pub type Check = fn(&str) -> Result<(), String>;

#[derive(Clone, Copy)]
pub struct StrKind {
    /// Said after "expected": "a duration like 30s, 5m or 1h30m".
    pub expected: &'static str,
    /// For the JSON Schema; the `check` is the real judge.
    pub pattern: Option<&'static str>,
    pub check: Option<Check>,
}

pub const ANY_STRING: StrKind = StrKind {
    expected: "a string",
    pattern: None,
    check: None,
};

pub enum Shape {
    Str(StrKind),
    /// A string, or a number or boolean taken as its text (environment variable values,
    /// where `PORT: 8080` is what everyone writes).
    Text,
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Enum(&'static [&'static str]),
    List(Box<Shape>),
    Map {
        key: StrKind,
        value: Box<Shape>,
    },
    Object(Object),
    /// A bare word naming a unit variant (`none`), or a mapping with exactly one key naming
    /// a variant (`nginx: {...}`). Becomes serde's externally tagged enum.
    Variant {
        units: &'static [&'static str],
        variants: Vec<(&'static str, Shape)>,
    },
    /// A port: a number, or the name of one of the environment's `ports`.
    PortRef,
    /// Anything; used where what is allowed cannot be known (a document of unknown kind).
    Any,
}

pub struct Object {
    pub fields: Vec<Field>,
    /// Groups of mutually exclusive keys that are folded into one tagged value.
    pub groups: Vec<Group>,
    /// Keys accepted and dropped (a resource's controller-owned `status`).
    pub ignored: &'static [&'static str],
    pub doc: &'static str,
}

/// Exactly one (or, when optional, at most one) of `variants` may be written. The typed
/// side reads the group as one enum (`#[serde(flatten)]`), not as several options.
pub struct Group {
    /// Names the group in the typed resource (`action`, `target`); keys the "already
    /// chosen" bookkeeping here.
    pub key: &'static str,
    pub required: bool,
    pub variants: Vec<(&'static str, Shape, &'static str)>,
}

pub struct Field {
    pub name: &'static str,
    pub shape: Shape,
    pub presence: Presence,
    pub doc: &'static str,
}

pub enum Presence {
    Required,
    /// Absent means absent (an `Option` on the typed side).
    Optional,
    /// Absent means this value.
    Default(Value),
    /// Absent means an empty mapping with its own defaults filled.
    DefaultObject,
}

pub fn field(name: &'static str, shape: Shape, presence: Presence, doc: &'static str) -> Field {
    Field {
        name,
        shape,
        presence,
        doc,
    }
}

pub fn object(doc: &'static str, fields: Vec<Field>) -> Shape {
    Shape::Object(Object {
        fields,
        groups: Vec::new(),
        ignored: &[],
        doc,
    })
}

pub fn object_with(doc: &'static str, fields: Vec<Field>, groups: Vec<Group>) -> Shape {
    Shape::Object(Object {
        fields,
        groups,
        ignored: &[],
        doc,
    })
}

/// The state of one conversion: where we are and what went wrong so far.
pub struct Cx<'a> {
    pub file: &'a Path,
    pub diags: Vec<Diagnostic>,
    /// Position of every value converted, by field path, for checks that run later on the
    /// typed resources and still need to point at the source.
    pub index: BTreeMap<String, Pos>,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a Path) -> Self {
        Cx {
            file,
            diags: Vec::new(),
            index: BTreeMap::new(),
        }
    }

    fn error(&mut self, pos: Pos, path: &str, message: String, expected: Option<String>) {
        let mut d = Diagnostic::error(self.file, pos, path, message);
        d.expected = expected;
        self.diags.push(d);
    }
}

pub fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => "nothing here".to_owned(),
        1 => quoted[0].clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

pub fn did_you_mean(word: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            (
                strsim::jaro_winkler(&word.to_lowercase(), &n.to_lowercase()),
                n,
            )
        })
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

impl Shape {
    /// Converts `node` to JSON, recording every problem in `cx`. Returns `None` when this
    /// node (or something inside it) is wrong; the caller carries on with its siblings.
    pub fn convert(&self, node: &Node, path: &str, cx: &mut Cx) -> Option<Value> {
        cx.index.insert(path.to_owned(), node.pos);
        let found = node.describe();
        let mismatch = |cx: &mut Cx, expected: String| {
            cx.error(node.pos, path, format!("found {found}"), Some(expected));
            None
        };
        match self {
            Shape::Str(kind) => match node.scalar() {
                Some(Scalar::Str(s)) => check_str(kind, s, node.pos, path, cx),
                _ => mismatch(cx, kind.expected.to_owned()),
            },
            Shape::Text => match (&node.kind, node.scalar()) {
                (_, Some(Scalar::Null)) | (_, None) => mismatch(
                    cx,
                    "a string (numbers and booleans are taken as text)".into(),
                ),
                (NodeKind::Scalar { text, .. }, _) => Some(Value::String(text.clone())),
                _ => None,
            },
            Shape::Int { min, max } => match node.scalar() {
                Some(Scalar::Int(i)) if (*min..=*max).contains(&i) => Some(Value::from(i)),
                Some(Scalar::Int(i)) => {
                    cx.error(
                        node.pos,
                        path,
                        format!("{i} is out of range"),
                        Some(format!("an integer from {min} to {max}")),
                    );
                    None
                }
                _ => mismatch(cx, format!("an integer from {min} to {max}")),
            },
            Shape::Bool => match node.scalar() {
                Some(Scalar::Bool(b)) => Some(Value::Bool(b)),
                _ => mismatch(cx, "`true` or `false`".into()),
            },
            Shape::Enum(names) => match node.scalar() {
                Some(Scalar::Str(s)) if names.contains(&s) => Some(Value::String(s.to_owned())),
                Some(Scalar::Str(s)) => {
                    let hint = did_you_mean(s, names);
                    cx.error(
                        node.pos,
                        path,
                        format!("unknown value `{s}`{hint}"),
                        Some(one_of(names)),
                    );
                    None
                }
                _ => mismatch(cx, one_of(names)),
            },
            Shape::PortRef => match node.scalar() {
                Some(Scalar::Int(i)) if (1..=65535).contains(&i) => Some(Value::from(i)),
                Some(Scalar::Str(s)) => check_str(&crate::values::NAME, s, node.pos, path, cx),
                _ => mismatch(
                    cx,
                    "a port number from 1 to 65535 or the name of one of `spec.ports`".into(),
                ),
            },
            Shape::List(item) => {
                let NodeKind::Seq(items) = &node.kind else {
                    return mismatch(cx, "a list".into());
                };
                let mut out = Some(Vec::with_capacity(items.len()));
                for (i, it) in items.iter().enumerate() {
                    let v = item.convert(it, &format!("{path}[{i}]"), cx);
                    out = out.zip(v).map(|(mut o, v)| {
                        o.push(v);
                        o
                    });
                }
                out.map(Value::Array)
            }
            Shape::Map { key, value } => {
                let NodeKind::Map(entries) = &node.kind else {
                    return mismatch(cx, "a mapping".into());
                };
                let mut out = Some(Map::new());
                for (k, v) in entries {
                    let name = key_text(k);
                    let sub = join(path, &name);
                    let key_ok = match k.scalar() {
                        Some(Scalar::Str(s)) => check_str(key, s, k.pos, &sub, cx).is_some(),
                        _ => {
                            cx.error(
                                k.pos,
                                &sub,
                                format!("key is {}", k.describe()),
                                Some(key.expected.into()),
                            );
                            false
                        }
                    };
                    if out.as_ref().is_some_and(|o| o.contains_key(&name)) {
                        cx.error(k.pos, &sub, format!("duplicate key `{name}`"), None);
                        out = None;
                    }
                    let converted = value.convert(v, &sub, cx);
                    match (key_ok, converted, out.as_mut()) {
                        (true, Some(v), Some(o)) => {
                            o.insert(name, v);
                        }
                        _ => out = None,
                    }
                }
                out.map(Value::Object)
            }
            Shape::Object(obj) => obj.convert(node, path, cx),
            Shape::Any => Some(node.to_json()),
            Shape::Variant { units, variants } => {
                let names: Vec<&str> = units
                    .iter()
                    .copied()
                    .chain(variants.iter().map(|(n, _)| *n))
                    .collect();
                match (&node.kind, node.scalar()) {
                    (_, Some(Scalar::Str(s))) if units.contains(&s) => {
                        Some(Value::String(s.to_owned()))
                    }
                    (_, Some(Scalar::Str(s))) => {
                        let hint = did_you_mean(s, &names);
                        let msg = if variants.iter().any(|(n, _)| *n == s) {
                            format!("`{s}` needs settings: write `{s}: {{...}}`")
                        } else {
                            format!("unknown value `{s}`{hint}")
                        };
                        cx.error(node.pos, path, msg, Some(one_of(&names)));
                        None
                    }
                    (NodeKind::Map(entries), _) if entries.len() == 1 => {
                        let (k, v) = &entries[0];
                        let name = key_text(k);
                        let sub = join(path, &name);
                        match variants.iter().find(|(n, _)| *n == name) {
                            Some((_, shape)) => {
                                shape.convert(v, &sub, cx).map(|v| json!({ name: v }))
                            }
                            None => {
                                let hint = did_you_mean(&name, &names);
                                cx.error(
                                    k.pos,
                                    &sub,
                                    format!("unknown kind `{name}`{hint}"),
                                    Some(one_of(&names)),
                                );
                                None
                            }
                        }
                    }
                    (NodeKind::Map(entries), _) if entries.len() > 1 => {
                        cx.error(
                            entries[1].0.pos,
                            path,
                            "only one kind may be given here".into(),
                            Some(one_of(&names)),
                        );
                        None
                    }
                    _ => mismatch(cx, one_of(&names)),
                }
            }
        }
    }
}

fn check_str(kind: &StrKind, s: &str, pos: Pos, path: &str, cx: &mut Cx) -> Option<Value> {
    if let Some(check) = kind.check {
        if let Err(message) = check(s) {
            cx.error(pos, path, message, Some(kind.expected.to_owned()));
            return None;
        }
    }
    Some(Value::String(s.to_owned()))
}

impl Object {
    fn convert(&self, node: &Node, path: &str, cx: &mut Cx) -> Option<Value> {
        let empty = Vec::new();
        let entries = match (&node.kind, node.scalar()) {
            (NodeKind::Map(entries), _) => entries,
            // `health:` with nothing after it reads as null; treat it as an empty mapping
            // like Kubernetes does, and let required fields complain.
            (_, Some(Scalar::Null)) => &empty,
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("found {}", node.describe()),
                    Some("a mapping".into()),
                );
                return None;
            }
        };
        let mut out = Map::new();
        let mut ok = true;
        let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
        let mut chosen: BTreeMap<&str, (&str, Pos)> = BTreeMap::new();
        let mut given: Vec<&str> = Vec::new();
        let known: Vec<&str> = self
            .fields
            .iter()
            .map(|f| f.name)
            .chain(
                self.groups
                    .iter()
                    .flat_map(|g| g.variants.iter().map(|v| v.0)),
            )
            .collect();
        for (k, v) in entries {
            let name = key_text(k);
            let sub = join(path, &name);
            if let Some(first) = seen.get(&name) {
                cx.error(
                    k.pos,
                    &sub,
                    format!(
                        "duplicate field `{name}` (first given at line {})",
                        first.line
                    ),
                    None,
                );
                ok = false;
                continue;
            }
            seen.insert(name.clone(), k.pos);
            if self.ignored.contains(&name.as_str()) {
                continue;
            }
            if let Some(f) = self.fields.iter().find(|f| f.name == name) {
                // `field:` with nothing after it means "not given" unless it must be given.
                let absent = matches!(v.scalar(), Some(Scalar::Null))
                    && !matches!(f.presence, Presence::Required);
                if absent {
                    continue;
                }
                given.push(f.name);
                match f.shape.convert(v, &sub, cx) {
                    Some(value) => {
                        out.insert(name, value);
                    }
                    None => ok = false,
                }
                continue;
            }
            let group = self.groups.iter().find_map(|g| {
                g.variants
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(n, shape, _)| (g, *n, shape))
            });
            if let Some((g, variant, shape)) = group {
                if let Some((other, _)) = chosen.get(g.key) {
                    let names: Vec<&str> = g.variants.iter().map(|v| v.0).collect();
                    cx.error(
                        k.pos,
                        &sub,
                        format!("`{variant}` cannot be combined with `{other}`"),
                        Some(format!("exactly {}", one_of(&names))),
                    );
                    ok = false;
                    continue;
                }
                chosen.insert(g.key, (variant, k.pos));
                match shape.convert(v, &sub, cx) {
                    Some(value) => {
                        out.insert(variant.to_owned(), value);
                    }
                    None => ok = false,
                }
                continue;
            }
            let hint = did_you_mean(&name, &known);
            cx.error(
                k.pos,
                &sub,
                format!("unknown field `{name}`{hint}"),
                Some(one_of(&known)),
            );
            ok = false;
        }
        for g in &self.groups {
            if g.required && !chosen.contains_key(g.key) {
                let names: Vec<&str> = g.variants.iter().map(|v| v.0).collect();
                cx.error(
                    node.pos,
                    path,
                    format!("missing {}", one_of(&names)),
                    Some(format!("exactly {}", one_of(&names))),
                );
                ok = false;
            }
        }
        for f in &self.fields {
            if given.contains(&f.name) {
                continue;
            }
            match &f.presence {
                Presence::Required => {
                    cx.error(
                        node.pos,
                        &join(path, f.name),
                        format!("missing required field `{}`", f.name),
                        Some(f.shape.expected()),
                    );
                    ok = false;
                }
                Presence::Optional => {}
                Presence::Default(v) => {
                    out.insert(f.name.to_owned(), v.clone());
                }
                Presence::DefaultObject => {
                    let empty = Node {
                        pos: node.pos,
                        kind: NodeKind::Map(Vec::new()),
                    };
                    match f.shape.convert(&empty, &join(path, f.name), cx) {
                        Some(v) => {
                            out.insert(f.name.to_owned(), v);
                        }
                        None => ok = false,
                    }
                }
            }
        }
        ok.then_some(Value::Object(out))
    }
}

impl Shape {
    /// What this shape accepts, in words, for "missing field" messages.
    pub fn expected(&self) -> String {
        match self {
            Shape::Str(k) => k.expected.to_owned(),
            Shape::Text => "a string".into(),
            Shape::Int { min, max } => format!("an integer from {min} to {max}"),
            Shape::Bool => "`true` or `false`".into(),
            Shape::Enum(names) => one_of(names),
            Shape::List(_) => "a list".into(),
            Shape::Map { .. } | Shape::Object(_) => "a mapping".into(),
            Shape::Variant { units, variants } => {
                let names: Vec<&str> = units
                    .iter()
                    .copied()
                    .chain(variants.iter().map(|v| v.0))
                    .collect();
                one_of(&names)
            }
            Shape::PortRef => "a port number or a port name".into(),
            Shape::Any => "anything".into(),
        }
    }

    /// This shape as a JSON Schema (draft 2020-12) fragment.
    pub fn schema(&self) -> Value {
        match self {
            Shape::Str(k) => {
                let mut s = json!({"type": "string", "description": k.expected});
                if let Some(p) = k.pattern {
                    s["pattern"] = json!(p);
                }
                s
            }
            Shape::Text => json!({"type": ["string", "number", "boolean"]}),
            Shape::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
            Shape::Bool => json!({"type": "boolean"}),
            Shape::Enum(names) => json!({"enum": names}),
            Shape::PortRef => json!({"oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                Shape::Str(crate::values::NAME).schema(),
            ]}),
            Shape::List(item) => json!({"type": "array", "items": item.schema()}),
            Shape::Map { key, value } => {
                let mut s = json!({"type": "object", "additionalProperties": value.schema()});
                if let Some(p) = key.pattern {
                    s["propertyNames"] = json!({"pattern": p});
                }
                s
            }
            Shape::Variant { units, variants } => {
                let mut alts: Vec<Value> = Vec::new();
                if !units.is_empty() {
                    alts.push(json!({"enum": units}));
                }
                for (name, shape) in variants {
                    alts.push(json!({
                        "type": "object",
                        "properties": { *name: shape.schema() },
                        "required": [name],
                        "additionalProperties": false,
                    }));
                }
                json!({"oneOf": alts})
            }
            Shape::Object(obj) => obj.schema(),
            Shape::Any => json!({}),
        }
    }
}

impl Object {
    fn schema(&self) -> Value {
        let mut props = Map::new();
        let mut required = Vec::new();
        for f in &self.fields {
            let mut s = f.shape.schema();
            if !f.doc.is_empty() {
                s["description"] = json!(f.doc);
            }
            match &f.presence {
                Presence::Required => required.push(f.name),
                Presence::Default(v) => s["default"] = v.clone(),
                Presence::Optional | Presence::DefaultObject => {}
            }
            props.insert(f.name.to_owned(), s);
        }
        let mut all_of = Vec::new();
        for g in &self.groups {
            for (name, shape, doc) in &g.variants {
                let mut s = shape.schema();
                s["description"] = json!(doc);
                props.insert((*name).to_owned(), s);
            }
            let names: Vec<&str> = g.variants.iter().map(|v| v.0).collect();
            let mut pairs = Vec::new();
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    pairs.push(json!({"required": [a, b]}));
                }
            }
            let mut rule = json!({"not": {"anyOf": pairs}});
            if g.required {
                let any: Vec<Value> = names.iter().map(|n| json!({"required": [n]})).collect();
                rule = json!({"allOf": [rule, {"anyOf": any}]});
            }
            all_of.push(rule);
        }
        for name in self.ignored {
            props.insert(
                (*name).to_owned(),
                json!({"description": "Owned by the controller; ignored on input."}),
            );
        }
        let mut s = json!({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": false,
        });
        if !self.doc.is_empty() {
            s["description"] = json!(self.doc);
        }
        if !all_of.is_empty() {
            s["allOf"] = Value::Array(all_of);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_documents;

    fn shape() -> Shape {
        object_with(
            "",
            vec![
                field("name", Shape::Str(ANY_STRING), Presence::Required, ""),
                field(
                    "count",
                    Shape::Int { min: 1, max: 10 },
                    Presence::Default(json!(1)),
                    "",
                ),
                field(
                    "mode",
                    Shape::Enum(&["Fast", "Slow"]),
                    Presence::Optional,
                    "",
                ),
                field(
                    "inner",
                    object(
                        "",
                        vec![field(
                            "on",
                            Shape::Bool,
                            Presence::Default(json!(false)),
                            "",
                        )],
                    ),
                    Presence::DefaultObject,
                    "",
                ),
            ],
            vec![Group {
                key: "action",
                required: true,
                variants: vec![
                    ("tcp", Shape::Int { min: 1, max: 9 }, ""),
                    ("exec", Shape::List(Box::new(Shape::Str(ANY_STRING))), ""),
                ],
            }],
        )
    }

    fn run(src: &str) -> (Option<Value>, Vec<String>) {
        let doc = parse_documents(src).unwrap().remove(0);
        let file = Path::new("t.yaml");
        let mut cx = Cx::new(file);
        let v = shape().convert(&doc, "", &mut cx);
        let errs = cx
            .diags
            .iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.column, d.path, d.message))
            .collect();
        (v, errs)
    }

    #[test]
    fn defaults_are_filled_and_a_group_keeps_its_chosen_key() {
        let (v, errs) = run("name: x\ntcp: 3\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            v.unwrap(),
            json!({"name": "x", "count": 1, "inner": {"on": false}, "tcp": 3})
        );
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let (v, errs) = run("cont: 3\ncount: 11\nmode: fast\ntcp: 1\nexec: [a]\n");
        assert!(v.is_none());
        assert_eq!(
            errs,
            vec![
                "1:1 cont unknown field `cont`; did you mean `count`?",
                "2:8 count 11 is out of range",
                "3:7 mode unknown value `fast`; did you mean `Fast`?",
                "5:1 exec `exec` cannot be combined with `tcp`",
                "1:1 name missing required field `name`",
            ]
        );
    }

    #[test]
    fn a_missing_group_and_wrong_types_are_errors() {
        let (_, errs) = run("name: [1]\ninner: {on: 1}\n");
        assert_eq!(
            errs,
            vec![
                "1:7 name found a list",
                "2:13 inner.on found an integer",
                "1:1  missing one of `tcp`, `exec`",
            ]
        );
    }
}
