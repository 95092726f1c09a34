use std::fmt;

use super::{Kind, ResourceKey};

/// Why a document could not become a resource.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("YAML syntax: {0}")]
    Syntax(String),
    #[error("a resource must be a mapping (an object)")]
    NotAnObject,
    #[error("`{field}` {reason}")]
    MissingType { field: &'static str, reason: &'static str },
    #[error("{api_version} {kind} is not an Istio resource kind this mesh reads")]
    NotIstio { api_version: String, kind: String },
    #[error("{kind} {name}: {path}: {reason}")]
    Schema { kind: Kind, name: String, path: String, reason: String },
    #[error("{}", ValidationErrors(.0))]
    Invalid(Vec<ValidationError>),
}

/// A resource that decoded but breaks one of Istio's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub resource: ResourceKey,
    /// Where, as a path from the resource root: `spec.http[0].route[1].weight`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.resource, self.field, self.reason)
    }
}

impl std::error::Error for ValidationError {}

struct ValidationErrors<'a>(&'a [ValidationError]);

impl fmt::Display for ValidationErrors<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
