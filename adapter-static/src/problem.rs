//! What went wrong where: every problem names the file, the document (its
//! index and first line), the resource and the field, and says what is
//! wrong.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource (or file) was not applied; the last good version, if
    /// any, keeps serving.
    Error,
    /// Applied, but probably not what was meant (an unknown field, a kind
    /// this mesh skips).
    Warning,
}

/// Where in the file set something is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    pub file: PathBuf,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// For items of a `kind: List` document: the item index.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} (document {}", self.file.display(), self.line, self.document + 1)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        f.write_str(")")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `None` for problems with a whole path (unreadable, a symlink loop).
    pub location: Option<Location>,
    /// `File` when the problem is about a path rather than a document.
    pub path: Option<PathBuf>,
    /// `VirtualService default/reviews`, when known.
    pub resource: Option<String>,
    /// `spec.http[0].route[1].weight`, when known.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn error(location: Option<Location>, message: impl Into<String>) -> Problem {
        Problem {
            severity: Severity::Error,
            location,
            path: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn warning(location: Option<Location>, message: impl Into<String>) -> Problem {
        Problem { severity: Severity::Warning, ..Problem::error(location, message) }
    }

    pub fn for_path(path: PathBuf, message: impl Into<String>) -> Problem {
        Problem { path: Some(path), ..Problem::error(None, message) }
    }

    pub fn resource(mut self, resource: impl Into<String>) -> Problem {
        self.resource = Some(resource.into());
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Problem {
        self.field = Some(field.into());
        self
    }

    /// As a store's rejection: where, then what.
    pub fn rejected(&self) -> mesh_core::store::Rejected {
        let mut source = match (&self.location, &self.path) {
            (Some(l), _) => l.to_string(),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => String::new(),
        };
        if let Some(r) = &self.resource {
            source.push(' ');
            source.push_str(r);
        }
        let error = match &self.field {
            Some(f) => format!("{f}: {}", self.message),
            None => self.message.clone(),
        };
        mesh_core::store::Rejected { source, error }
    }

    /// The file this problem is about.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.location.as_ref().map(|l| l.file.as_path()).or(self.path.as_deref())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (&self.location, &self.path) {
            (Some(l), _) => write!(f, "{l}: {severity}")?,
            (None, Some(p)) => write!(f, "{}: {severity}", p.display())?,
            (None, None) => f.write_str(severity)?,
        }
        if let Some(r) = &self.resource {
            write!(f, ": {r}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}
