//! Where desired state comes from: a manifest directory (usually a git work tree),
//! loaded whole and watched for changes (notify, debounced).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{Loaded, Manifests};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A complete, valid desired state and where it came from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub manifests: Arc<Manifests>,
    /// The git commit the directory reflects, `+dirty` when it has uncommitted changes.
    pub commit: Option<String>,
}

/// Loads the directory. With any error, the diagnostics come back and the caller keeps
/// the state it had: a broken edit never tears down what runs.
pub fn load(dir: &Path) -> Result<Snapshot, Box<Loaded>> {
    let loaded = berth_api::load_path(dir);
    let manifests = loaded.into_manifests().map_err(Box::new)?;
    Ok(Snapshot {
        manifests: Arc::new(manifests),
        commit: git_commit(dir),
    })
}

/// [`load`] on Tokio's blocking pool: reading a large directory and running `git` take
/// a while, and must not freeze the runtime's workers (probes, the queue) meanwhile.
pub async fn load_off_runtime(dir: PathBuf) -> Result<Snapshot, Box<Loaded>> {
    match tokio::task::spawn_blocking(move || load(&dir)).await {
        Ok(loaded) => loaded,
        // A panic in `load` fails the caller's task, as it would have without the pool.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task, and with it the caller.
        Err(e) => panic!("loading the manifests was cancelled: {e}"),
    }
}

/// `git rev-parse HEAD` of the work tree holding `dir`, if it is one.
pub fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(if dir.is_dir() { dir } else { dir.parent()? })
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--", "."]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}+dirty") } else { head })
}

/// A watch on a manifest directory. Each message on the receiver means "it changed and
/// has been quiet for the debounce period": bursts of writes (an editor's save, a
/// `git pull`) become one reload.
pub struct Watch {
    // Dropping the watcher stops the notifications.
    _watcher: notify::RecommendedWatcher,
    pub changes: mpsc::Receiver<()>,
}

pub fn watch(dir: &Path, debounce: Duration) -> notify::Result<Watch> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let root = dir.to_owned();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.kind.is_access() || ev.paths.iter().all(|p| is_hidden(&root, p)) {
                return;
            }
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let (tx, changes) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for quiet, but never longer than four debounce periods in all, so a
            // directory that never stops changing is still reloaded.
            let deadline = tokio::time::Instant::now() + debounce * 4;
            loop {
                let quiet = tokio::time::sleep(debounce);
                tokio::select! {
                    more = raw_rx.recv() => {
                        if more.is_none() { return; }
                        if tokio::time::Instant::now() >= deadline { break; }
                    }
                    _ = quiet => break,
                }
            }
            // A full channel already holds a pending "changed": nothing is lost.
            let _ = tx.try_send(());
        }
    });
    Ok(Watch {
        _watcher: watcher,
        changes,
    })
}

/// Editors' swap files and `.git/` churn are not changes to the desired state; the
/// loader skips hidden files too.
fn is_hidden(root: &Path, p: &Path) -> bool {
    p.strip_prefix(root).is_ok_and(|rel| {
        rel.components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str =
        "apiVersion: berth.dev/v1\nkind: Host\nmetadata: {name: h}\nspec: {address: local}\n";

    #[test]
    fn a_broken_directory_returns_its_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.yaml"), HOST).unwrap();
        assert_eq!(load(dir.path()).ok().unwrap().manifests.hosts.len(), 1);
        std::fs::write(dir.path().join("bad.yaml"), "kind: Nope\n").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.has_errors());
    }

    /// A git work tree of `n` Host manifests: slow enough to load that a blocked runtime
    /// shows.
    fn large_repository(n: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            let host = HOST.replace("name: h}", &format!("name: h{i}}}"));
            std::fs::write(dir.path().join(format!("h{i}.yaml")), host).unwrap();
        }
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-qm", "hosts"]);
        dir
    }

    #[test]
    fn loading_a_large_repository_leaves_a_current_thread_runtime_free() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let repo = large_repository(1500);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let ticks = Arc::new(AtomicU32::new(0));
            let counter = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;

            // On the runtime's only thread, the load freezes every other task...
            let before = ticks.load(Ordering::SeqCst);
            let started = std::time::Instant::now();
            let blocking = load(repo.path()).ok().unwrap();
            let took = started.elapsed();
            assert_eq!(
                ticks.load(Ordering::SeqCst),
                before,
                "nothing ran meanwhile"
            );
            assert!(
                took >= Duration::from_millis(50),
                "the repository loads too fast to tell ({took:?})"
            );

            // ...on the blocking pool, the timer keeps firing.
            let before = ticks.load(Ordering::SeqCst);
            let off = load_off_runtime(repo.path().to_owned()).await.ok().unwrap();
            let fired = ticks.load(Ordering::SeqCst) - before;
            assert!(fired >= 5, "the timer fired {fired} times during the load");
            assert_eq!(off.manifests.hosts.len(), 1500);
            assert_eq!(off.commit, blocking.commit);
            assert!(
                off.commit.is_some_and(|c| c.len() == 40),
                "a clean git commit"
            );
        });
    }

    #[tokio::test]
    async fn a_burst_of_writes_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = watch(dir.path(), Duration::from_millis(150)).unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join("h.yaml"), format!("{HOST}# {i}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = tokio::time::timeout(Duration::from_secs(5), w.changes.recv()).await;
        assert!(matches!(first, Ok(Some(()))), "no change reported");
        let second = tokio::time::timeout(Duration::from_millis(600), w.changes.recv()).await;
        assert!(second.is_err(), "one burst was reported twice");
    }
}
