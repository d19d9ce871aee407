//! Diagnostics: what is wrong, where (file, line, column, field path), and what was
//! expected — rendered like a compiler's, or as JSON for tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor};
use serde::Serialize;

use crate::yaml::Pos;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The field path inside the document, such as `spec.health.readiness.http.port`;
    /// empty for errors about the document or the file itself.
    pub path: String,
    pub message: String,
    /// What would have been accepted, when that can be said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip)]
    pub offset: usize,
}

impl Diagnostic {
    pub fn error(file: &Path, pos: Pos, path: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into(),
            expected: None,
            offset: pos.offset,
        }
    }

    pub fn expected(mut self, what: impl Into<String>) -> Self {
        self.expected = Some(what.into());
        self
    }

    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl std::fmt::Display for Diagnostic {
    /// One line: `file:line:column: error: path: message (expected ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: ",
            self.file.display(),
            self.line,
            self.column
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(e) = &self.expected {
            write!(f, " (expected {e})")?;
        }
        Ok(())
    }
}

/// The texts diagnostics point into, so they can be shown with the offending line.
#[derive(Default)]
pub struct Sources {
    texts: BTreeMap<PathBuf, String>,
}

impl Sources {
    pub fn insert(&mut self, file: &Path, text: String) {
        self.texts.insert(file.to_owned(), text);
    }

    /// Renders every diagnostic with its source line and a caret under the column.
    pub fn render(&self, diags: &[Diagnostic], color: bool) -> String {
        let mut files = SimpleFiles::new();
        let ids: BTreeMap<&Path, usize> = self
            .texts
            .iter()
            .map(|(p, t)| (p.as_path(), files.add(p.display().to_string(), t.as_str())))
            .collect();
        let mut buf = if color {
            termcolor::Buffer::ansi()
        } else {
            termcolor::Buffer::no_color()
        };
        let config = term::Config::default();
        for d in diags {
            let mut report = match d.severity {
                Severity::Error => Report::error(),
                Severity::Warning => Report::warning(),
            }
            .with_message(&d.message);
            let mut label_text = d.path.clone();
            if let Some(e) = &d.expected {
                if !label_text.is_empty() {
                    label_text.push_str(": ");
                }
                label_text.push_str("expected ");
                label_text.push_str(e);
            }
            match ids.get(d.file.as_path()) {
                Some(&id) if d.line > 0 => {
                    let end = next_char_boundary(&self.texts[&d.file], d.offset);
                    report = report.with_labels(vec![
                        Label::primary(id, d.offset..end).with_message(label_text)
                    ]);
                }
                _ => {
                    report =
                        report.with_notes(vec![format!("in {}", d.file.display()), label_text]);
                }
            }
            if term::emit_to_write_style(&mut buf, &config, &files, &report).is_err() {
                // Rendering fell over (an offset outside the text): the one-line form
                // still says everything.
                return diags.iter().map(|d| format!("{d}\n")).collect();
            }
        }
        String::from_utf8_lossy(buf.as_slice()).into_owned()
    }
}

fn next_char_boundary(text: &str, offset: usize) -> usize {
    if offset >= text.len() {
        return text.len();
    }
    let mut end = offset + 1;
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    end
}
