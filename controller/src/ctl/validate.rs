//! `berthctl validate -f PATH`: every error in the manifests at once, like a compiler.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::output::{render, Output};
use super::CtlError;

#[derive(Args, Clone, Debug)]
pub struct Validate {
    /// A manifest file, or a directory read recursively (*.yaml, *.yml, *.json).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub file: PathBuf,
    /// `table` renders the errors with their source lines on stderr; `json` and `yaml`
    /// print them as a list on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

impl Validate {
    /// The report goes to stderr as it is made; returns what goes to stdout: the
    /// one-line summary (`-o table`) or the diagnostics (`-o json|yaml`, whose summary
    /// goes to stderr).
    ///
    /// # Errors
    /// [`CtlError::NoSuchPath`]; [`CtlError::Reported`] when the manifests have errors
    /// (the report and its summary are on stderr); [`CtlError::Encode`].
    pub fn run(self) -> Result<String, CtlError> {
        let path = self.file;
        if !path.exists() {
            return Err(CtlError::NoSuchPath(path));
        }
        let loaded = berth_api::load_path(&path);
        let errors = loaded.errors().count();
        let warnings = loaded.diagnostics.len() - errors;
        let mut stdout = render(self.output, &loaded.diagnostics, || {
            let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            eprint!("{}", loaded.sources.render(&loaded.diagnostics, color));
            String::new()
        })?;
        let files = loaded.files.len();
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        if errors > 0 {
            // The diagnostics (JSON or YAML) still go to stdout before the failure.
            super::output::emit(&stdout).map_err(CtlError::Write)?;
            eprintln!(
                "{}: {} found, {} in {}",
                path.display(),
                plural(errors, "error"),
                plural(warnings, "warning"),
                plural(files, "file")
            );
            return Err(CtlError::Reported);
        }
        let m = &loaded.manifests;
        let summary = format!(
            "{}: valid: {}, {} in {}{}",
            path.display(),
            plural(m.hosts.len(), "host"),
            plural(m.environments.len(), "environment"),
            plural(files, "file"),
            if warnings > 0 {
                format!(" ({})", plural(warnings, "warning"))
            } else {
                String::new()
            }
        );
        match self.output {
            Output::Table => stdout.push_str(&format!("{summary}\n")),
            Output::Json | Output::Yaml => eprintln!("{summary}"),
        }
        Ok(stdout)
    }
}
