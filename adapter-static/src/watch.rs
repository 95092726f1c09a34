//! Reloading on file changes. A notify watcher on every configured path
//! feeds a task that waits for the changes to settle (the debounce), then
//! reloads and publishes once. Paths are watched where renames land: a
//! file's directory (editors write a temp file and rename it over; a
//! ConfigMap swaps its `..data` symlink), a directory recursively.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::StaticSource;

/// Keeps reloading while alive; dropping it stops the watch.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A burst is cut off after this long even if changes keep coming.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

impl StaticSource {
    /// Watch the configured paths and reload on change. Needs a Tokio
    /// runtime.
    pub fn watch_files(self: &Arc<Self>) -> Result<FileWatch, notify::Error> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match event {
                // Reading the files (ours included) makes access events;
                // only changes matter.
                Ok(e) => {
                    matches!(
                        e.kind,
                        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) | EventKind::Any
                    ) && !matches!(e.kind, EventKind::Modify(notify::event::ModifyKind::Metadata(_)))
                }
                // A lost event (queue overflow): reload to be safe.
                Err(_) => true,
            };
            if relevant {
                let _ = tx.send(());
            }
        })?;
        for path in &self.options.paths {
            let (target, mode) = watch_target(path);
            watcher.watch(&target, mode)?;
        }
        let source = Arc::clone(self);
        let debounce = self.options.debounce;
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let started = tokio::time::Instant::now();
                loop {
                    let quiet = tokio::time::sleep(debounce);
                    let cap = tokio::time::sleep_until(started + MAX_DEBOUNCE);
                    tokio::select! {
                        more = rx.recv() => if more.is_none() { return },
                        _ = quiet => break,
                        _ = cap => break,
                    }
                }
                let source = Arc::clone(&source);
                // File reads and parsing block: keep them off the runtime's
                // worker threads.
                if tokio::task::spawn_blocking(move || source.reload()).await.is_err() {
                    tracing::error!(target: "adapter_static", "reload panicked; the last good config keeps serving");
                }
            }
        });
        Ok(FileWatch { _watcher: watcher, task })
    }
}

/// Watch a directory itself (recursively); a file through its parent
/// directory, so renames over it and symlink swaps are seen.
fn watch_target(path: &Path) -> (PathBuf, RecursiveMode) {
    if path.is_dir() {
        (path.to_path_buf(), RecursiveMode::Recursive)
    } else {
        let parent =
            path.parent().filter(|p| !p.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), PathBuf::from);
        (parent, RecursiveMode::NonRecursive)
    }
}
