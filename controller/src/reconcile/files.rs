//! Watches files Berth owns on the local host (nginx upstream files), so a hand edit is
//! repaired at once rather than at the next resync. Files on SSH hosts are left to the
//! resync.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

pub struct FileWatch {
    watcher: Option<notify::RecommendedWatcher>,
    // Shared with the watcher's callback: which environment owns which file. A std
    // Mutex: the callback runs on notify's thread, and each use is one map lookup.
    owners: Arc<Mutex<HashMap<PathBuf, String>>>,
    dirs: Vec<PathBuf>,
}

impl FileWatch {
    /// Changes to watched files send their environment's name on `wake`.
    pub fn new(wake: mpsc::UnboundedSender<String>) -> FileWatch {
        let owners: Arc<Mutex<HashMap<PathBuf, String>>> = Arc::default();
        let map = owners.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if ev.kind.is_access() {
                return;
            }
            let owners = map.lock().unwrap_or_else(|p| p.into_inner());
            for p in &ev.paths {
                if let Some(env) = owners.get(p) {
                    let _ = wake.send(env.clone());
                }
            }
        })
        .map_err(|e| tracing::warn!("cannot watch files (hand edits wait for the resync): {e}"))
        .ok();
        FileWatch {
            watcher,
            owners,
            dirs: Vec::new(),
        }
    }

    /// Watches `file` for `env`. Its folder is watched, not the file: files are replaced
    /// by rename, which a watch on the old inode would miss.
    pub fn watch(&mut self, env: &str, file: &Path) {
        let Some(dir) = file.parent() else { return };
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(file.to_owned(), env.to_owned());
        if self.dirs.iter().any(|d| d == dir) {
            return;
        }
        if let Some(w) = self.watcher.as_mut() {
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(dir.to_owned()),
                Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_edit_of_a_watched_file_wakes_its_environment_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.conf");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut fw = FileWatch::new(tx);
        fw.watch("web", &file);
        std::fs::write(dir.path().join("other.conf"), "x").unwrap();
        std::fs::write(&file, "edited by hand").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.ok().flatten().as_deref(), Some("web"));
    }
}
