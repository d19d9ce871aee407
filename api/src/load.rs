//! Reading manifests: files or whole directories, YAML or JSON, several documents per
//! file. Every problem in every file is collected; nothing stops at the first one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::check;
use crate::diag::{Diagnostic, Sources};
use crate::resource::{document_shape, Kind, Manifests, Origin, Resource};
use crate::shape::Cx;
use crate::yaml::{self, key_text, Node, NodeKind, Pos, Scalar};

/// The outcome of loading: the resources that were read, every diagnostic (errors and
/// warnings), and the source texts the diagnostics point into. With any error, the
/// manifests are not a desired state to act on: use [`Loaded::into_manifests`].
pub struct Loaded {
    pub manifests: Manifests,
    pub diagnostics: Vec<Diagnostic>,
    pub sources: Sources,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The manifests, only if there was no error at all.
    pub fn into_manifests(self) -> Result<Manifests, Loaded> {
        if self.has_errors() {
            Err(self)
        } else {
            Ok(self.manifests)
        }
    }
}

/// A document that passed its own checks, with the positions of its fields for the
/// checks across documents.
pub(crate) struct Doc {
    pub file: PathBuf,
    pub kind: Kind,
    pub name: String,
    pub index: BTreeMap<String, Pos>,
    pub pos: Pos,
}

impl Doc {
    /// Where `path` was written, or its nearest written parent.
    pub fn at(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.index.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.pos,
            }
        }
    }

    pub fn error(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(&self.file, self.at(path), path, message)
    }
}

/// Loads a file, or every `*.yaml`, `*.yml` and `*.json` file under a directory
/// (recursively, hidden files and directories skipped, in name order).
pub fn load_path(path: &Path) -> Loaded {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    if path.is_dir() {
        collect(path, &mut files, &mut diags);
        if files.is_empty() && diags.is_empty() {
            diags.push(file_error(
                path,
                "no *.yaml, *.yml or *.json files in this directory",
            ));
        }
    } else {
        files.push(path.to_owned());
    }
    let mut inputs = Vec::new();
    for f in &files {
        match std::fs::read(f) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => inputs.push((f.clone(), text)),
                Err(e) => diags.push(file_error(
                    f,
                    format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )),
            },
            Err(e) => diags.push(file_error(f, format!("cannot read: {e}"))),
        }
    }
    let mut loaded = load_texts(inputs);
    diags.append(&mut loaded.diagnostics);
    loaded.diagnostics = diags;
    loaded.files = files;
    loaded
}

fn file_error(file: &Path, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error(
        file,
        Pos {
            line: 0,
            column: 0,
            offset: 0,
        },
        "",
        message,
    )
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>, diags: &mut Vec<Diagnostic>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            diags.push(file_error(dir, format!("cannot read directory: {e}")));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect(&p, files, diags);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(p);
        }
    }
}

/// Loads manifests from texts already in memory (named for the diagnostics), such as a
/// request body. Relative file paths in them are taken from each name's folder.
pub fn load_texts(inputs: Vec<(PathBuf, String)>) -> Loaded {
    let mut sources = Sources::default();
    let mut diags = Vec::new();
    let mut docs = Vec::new();
    let mut manifests = Manifests::default();
    let mut files = Vec::new();
    for (file, text) in inputs {
        match yaml::parse_documents(&text) {
            Ok(nodes) => {
                for node in &nodes {
                    load_document(&file, node, &mut manifests, &mut docs, &mut diags);
                }
            }
            Err(e) => diags.push(Diagnostic::error(
                &file,
                e.pos,
                "",
                format!("invalid YAML: {}", e.message),
            )),
        }
        sources.insert(&file, text);
        files.push(file);
    }
    diags.extend(check::across(&manifests, &docs));
    Loaded {
        manifests,
        diagnostics: diags,
        sources,
        files,
    }
}

fn load_document(
    file: &Path,
    node: &Node,
    manifests: &mut Manifests,
    docs: &mut Vec<Doc>,
    diags: &mut Vec<Diagnostic>,
) {
    let kind = peek_kind(node);
    let mut cx = Cx::new(file);
    let value = document_shape(kind).convert(node, "", &mut cx);
    diags.append(&mut cx.diags);
    let (Some(value), Some(kind)) = (value, kind) else {
        return;
    };
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let origin = Origin {
        file: file.to_owned(),
        line: node.pos.line,
    };
    let doc = Doc {
        file: file.to_owned(),
        kind,
        name: name.clone(),
        index: cx.index,
        pos: node.pos,
    };
    let base = file.parent().unwrap_or(Path::new("."));
    match kind {
        Kind::Host => {
            if let Some(mut host) = typed::<crate::host::HostSpec>(value, &doc, diags) {
                host.origin = origin;
                for p in [
                    &mut host.spec.identity_file,
                    &mut host.spec.known_hosts_file,
                    &mut host.spec.registry_auth,
                ]
                .into_iter()
                .flatten()
                {
                    *p = resolve(base, p);
                }
                manifests.hosts.entry(name).or_insert(host);
            }
        }
        Kind::Environment => {
            if let Some(mut env) = typed::<crate::environment::EnvironmentSpec>(value, &doc, diags)
            {
                env.origin = origin;
                for hook in &mut env.spec.notify.webhooks {
                    if let crate::environment::WebhookTarget::UrlFile(p) = &mut hook.target {
                        *p = resolve(base, p);
                    }
                }
                manifests.environments.entry(name).or_insert(env);
            }
        }
    }
    docs.push(doc);
}

fn resolve(base: &Path, p: &str) -> String {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return Path::new(&home).join(rest).display().to_string();
        }
    }
    if Path::new(p).is_absolute() {
        p.to_owned()
    } else {
        base.join(p).display().to_string()
    }
}

/// The shapes promise serde will accept what they passed; if it does not, that is a bug
/// in Berth, reported as an error on the document rather than a panic.
fn typed<S: DeserializeOwned>(
    value: serde_json::Value,
    doc: &Doc,
    diags: &mut Vec<Diagnostic>,
) -> Option<Resource<S>> {
    match serde_json::from_value(value) {
        Ok(r) => Some(r),
        Err(e) => {
            diags.push(doc.error(
                "",
                format!("internal error reading this document (please report): {e}"),
            ));
            None
        }
    }
}

/// The document's `kind`, if it is one Berth knows; errors about it come from the shape.
fn peek_kind(node: &Node) -> Option<Kind> {
    let NodeKind::Map(entries) = &node.kind else {
        return None;
    };
    let (_, v) = entries.iter().find(|(k, _)| key_text(k) == "kind")?;
    match v.scalar() {
        Some(Scalar::Str(s)) => Kind::ALL.into_iter().find(|k| k.as_str() == s),
        _ => None,
    }
}
