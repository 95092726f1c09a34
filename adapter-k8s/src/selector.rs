//! Label selectors in kubectl's syntax (`app=web,tier in (a,b),!canary`),
//! for Istio's discovery selectors: which namespaces the mesh sees.

use std::fmt;

use mesh_core::model::Labels;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector: every requirement must hold. The empty selector
/// matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let error = |reason: String| SelectorError { selector: text.to_string(), reason };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(label_key(key).map_err(error)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(label_key(key).map_err(error)?, value.trim().to_string())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(label_key(key).map_err(error)?, value.trim().to_string())
            } else if let Some((key, values)) = set_term(term, " notin ") {
                Requirement::NotIn(label_key(key).map_err(error)?, values.map_err(error)?)
            } else if let Some((key, values)) = set_term(term, " in ") {
                Requirement::In(label_key(key).map_err(error)?, values.map_err(error)?)
            } else {
                Requirement::Exists(label_key(term).map_err(error)?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector { requirements, text: text.trim().to_string() })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Commas separate terms, except inside a set's parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn set_term<'a>(term: &'a str, operator: &str) -> Option<(&'a str, Result<Vec<String>, String>)> {
    let (key, rest) = term.split_once(operator)?;
    let values = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
        .ok_or_else(|| format!("{operator:?} needs a list in parentheses"));
    Some((key, values))
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1;
    if valid {
        Ok(key.to_string())
    } else {
        Err(format!("{key:?} is not a label key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kubectl_syntax() {
        let s = LabelSelector::parse("istio-discovery=enabled, env in (prod, staging),!legacy,team").unwrap();
        assert!(s.matches(&labels(&[("istio-discovery", "enabled"), ("env", "prod"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("istio-discovery", "enabled"), ("env", "dev"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("istio-discovery", "enabled"), ("env", "prod"), ("team", "a"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("istio-discovery", "enabled"), ("env", "prod")])));
        let s = LabelSelector::parse("tier notin (cache),app!=web").unwrap();
        assert!(s.matches(&labels(&[("app", "api")])));
        assert!(!s.matches(&labels(&[("tier", "cache")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(LabelSelector::parse("").unwrap().matches(&Labels::new()));
    }

    #[test]
    fn bad_selectors_are_named() {
        let e = LabelSelector::parse("env in prod").unwrap_err();
        assert!(e.to_string().contains("needs a list"), "{e}");
        assert!(LabelSelector::parse("a b=c").is_err());
    }
}
