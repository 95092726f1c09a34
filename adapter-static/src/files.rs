//! Finding and reading the config files under the configured paths.
//!
//! Directories are walked recursively in name order; entries whose names
//! start with `.` are skipped, which also skips the `..data` and
//! `..2024_...` entries of a Kubernetes ConfigMap mount (its visible files
//! are symlinks through `..data`, and are followed). Directory symlinks are
//! followed with loop detection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::problem::Problem;

/// Extensions read as config.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One file's content, or why it could not be used.
pub struct FileText {
    pub path: PathBuf,
    pub text: Result<String, Problem>,
}

/// The config files under `roots`, in a stable order, each with what it
/// looked like when found, plus problems with paths that could not be
/// walked.
pub fn discover(roots: &[PathBuf]) -> (Vec<(PathBuf, Option<Fingerprint>)>, Vec<Problem>) {
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    for root in roots {
        let mut visited = BTreeSet::new();
        match std::fs::metadata(root) {
            Err(e) => problems.push(Problem::for_path(root.clone(), format!("cannot read: {e}"))),
            Ok(m) if m.is_dir() => walk(root, &mut visited, &mut files, &mut problems),
            Ok(m) => {
                files.insert(root.clone(), Fingerprint::of(&m));
            }
        }
    }
    (files.into_iter().collect(), problems)
}

fn walk(
    dir: &Path,
    visited: &mut BTreeSet<PathBuf>,
    files: &mut BTreeMap<PathBuf, Option<Fingerprint>>,
    problems: &mut Vec<Problem>,
) {
    let canonical = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::for_path(dir.to_path_buf(), format!("cannot resolve: {e}")));
            return;
        }
    };
    if !visited.insert(canonical.clone()) {
        problems.push(
            Problem::warning(None, format!("symlink loop: {} leads back to {}", dir.display(), canonical.display()))
                .with_path(dir),
        );
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            problems.push(Problem::for_path(dir.to_path_buf(), format!("cannot list: {e}")));
            return;
        }
    };
    entries.sort();
    for path in entries {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // `metadata` follows symlinks: a dangling one is reported.
        match std::fs::metadata(&path) {
            Err(e) => problems.push(Problem::for_path(path.clone(), format!("cannot read: {e}"))),
            Ok(m) if m.is_dir() => walk(&path, visited, files, problems),
            Ok(m) if has_config_extension(&path) => {
                let fingerprint = Fingerprint::of(&m);
                files.insert(path, fingerprint);
            }
            Ok(_) => {}
        }
    }
    visited.remove(&canonical);
}

fn has_config_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What a file looked like on disk: when it is the same, the content is
/// taken to be the same and the file is not read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Fingerprint {
    /// File times can be as coarse as a kernel tick, so two same-size
    /// writes in one tick look alike. Like git's "racily clean" rule, a
    /// fingerprint is trusted only once the file is a little older.
    pub fn is_settled(&self) -> bool {
        self.modified.and_then(|m| m.elapsed().ok()).is_some_and(|age| age > std::time::Duration::from_secs(2))
    }
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Option<Fingerprint> {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(m);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Fingerprint { len: m.len(), modified: m.modified().ok(), inode })
    }
}

/// Read a file as UTF-8 text, refusing files over `max_bytes` and files
/// with NUL bytes (binary, or a file caught half-written).
pub fn read(path: &Path, max_bytes: u64) -> FileText {
    let fail = |message: String| FileText {
        path: path.to_path_buf(),
        text: Err(Problem::for_path(path.to_path_buf(), message)),
    };
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    if size > max_bytes {
        return fail(format!("file is {size} bytes, over the {max_bytes}-byte limit; it is not loaded"));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
        return fail(format!("contains a NUL byte (line {line}, byte {at}): not a text file"));
    }
    match String::from_utf8(bytes) {
        Ok(text) => FileText { path: path.to_path_buf(), text: Ok(text) },
        Err(e) => fail(format!("is not UTF-8 (byte {})", e.utf8_error().valid_up_to())),
    }
}

impl Problem {
    fn with_path(mut self, path: &Path) -> Problem {
        self.path = Some(path.to_path_buf());
        self
    }
}
