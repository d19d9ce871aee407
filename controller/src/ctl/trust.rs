//! `berthctl hosts trust NAME -f MANIFESTS [--yes]`: records the host key an SSH host
//! offers in its `knownHostsFile`, after showing its fingerprint and only when confirmed.
//! berthd never trusts a key by itself.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use berth_api::values::Address;

use super::CtlError;
use crate::host::ssh::{describe_key, session::offered_key};

#[derive(clap::Args)]
pub struct Trust {
    /// The Host's name.
    name: String,
    /// The manifests (a file or a directory) that declare the Host.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Record the key without asking (after checking the fingerprint another way).
    #[arg(long)]
    yes: bool,
}

fn fail(host: &str, message: impl Into<String>) -> CtlError {
    CtlError::Trust {
        host: host.to_owned(),
        message: message.into(),
    }
}

impl Trust {
    pub fn run(self) -> Result<String, CtlError> {
        if !self.file.exists() {
            return Err(CtlError::NoSuchPath(self.file));
        }
        let loaded = berth_api::load_path(&self.file);
        let errors = loaded.errors().count();
        if errors > 0 {
            return Err(CtlError::InvalidManifests {
                path: self.file,
                errors,
            });
        }
        let name = &self.name;
        let host = loaded
            .manifests
            .hosts
            .get(name)
            .ok_or_else(|| fail(name, format!("no Host {name} in {}", self.file.display())))?;
        if !matches!(host.spec.address, Address::Ssh { .. }) {
            return Err(fail(
                name,
                "not an ssh:// host: there is no host key to trust",
            ));
        }
        let t = crate::host::ssh::target(name, &host.spec).map_err(|m| fail(name, m))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(name, e.to_string()))?;
        let key = runtime
            .block_on(offered_key(&t.host, t.port))
            .map_err(|m| fail(name, m))?;
        let file = t.known_hosts.display().to_string();
        match russh::keys::check_known_hosts_path(&t.host, t.port, &key, &t.known_hosts) {
            Ok(true) => {
                return Ok(format!(
                    "host {name} ({}): {} is already trusted in {file}\n",
                    t.host_port(),
                    describe_key(&key)
                ))
            }
            Ok(false) => {}
            Err(russh::keys::Error::KeyChanged { line }) => {
                return Err(fail(
                    name,
                    format!(
                        "{} offers {}, but {file} line {line} records another key for it; if the host was reinstalled, remove that line first",
                        t.host_port(),
                        describe_key(&key)
                    ),
                ))
            }
            Err(e) => return Err(fail(name, format!("{file}: {e}"))),
        }
        eprintln!(
            "host {name} ({}) offers {}",
            t.host_port(),
            describe_key(&key)
        );
        if !self.yes && !confirm(&format!("record it in {file}? [y/N] ")) {
            return Err(fail(name, "not recorded"));
        }
        russh::keys::known_hosts::learn_known_hosts_path(&t.host, t.port, &key, &t.known_hosts)
            .map_err(|e| fail(name, format!("{file}: {e}")))?;
        Ok(format!(
            "recorded {} for {} in {file}\n",
            describe_key(&key),
            t.host_port()
        ))
    }
}

/// Asks on stderr, reads a line from stdin: yes only for `y` or `yes`.
fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
