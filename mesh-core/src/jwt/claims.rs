//! A verified token, as authorization (`requestPrincipals`,
//! `request.auth.*` conditions) and claim-based routing
//! (`@request.auth.claims.*`) read it.

use serde_json::{Map, Value};

/// The claims of a token whose signature, issuer, times and audience
/// were checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifiedJwt {
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The whole payload, with space-delimited claims split into lists (as
    /// Envoy normalizes the payload it hands to RBAC).
    pub payload: Map<String, Value>,
}

impl VerifiedJwt {
    /// From a payload that passed verification; `space_delimited` claims
    /// holding a string become lists of its words.
    pub fn from_payload(mut payload: Map<String, Value>, space_delimited: &[String]) -> VerifiedJwt {
        for claim in space_delimited {
            if let Some(Value::String(s)) = payload.get(claim) {
                let words = s.split(' ').filter(|w| !w.is_empty()).map(|w| Value::String(w.into())).collect();
                payload.insert(claim.clone(), Value::Array(words));
            }
        }
        let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_string);
        let audiences = match payload.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        VerifiedJwt {
            issuer: text("iss").unwrap_or_default(),
            subject: text("sub").unwrap_or_default(),
            presenter: text("azp"),
            audiences,
            payload,
        }
    }

    /// Istio's request principal: `<iss>/<sub>`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// The claim at `path` (nested objects), if any.
    pub fn claim(&self, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut value = self.payload.get(first.as_ref())?;
        for key in rest {
            value = value.as_object()?.get(key.as_ref())?;
        }
        Some(value)
    }

    /// The strings a claim matches as: itself, or each string of a list
    /// (Istio matches a claim as a string or as a list of strings; other
    /// values match nothing).
    pub fn claim_strings(&self, path: &[impl AsRef<str>]) -> Vec<&str> {
        match self.claim(path) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// A claim as a header value (`outputClaimToHeaders`), as Envoy writes
/// it: strings as they are, integers without a fraction, booleans as
/// `true`/`false`; other values are not written.
pub fn claim_header_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 => format!("{f:.0}"),
            (None, Some(f)) => format!("{f:.6}"),
            (None, None) => n.to_string(),
        }),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> VerifiedJwt {
        let Value::Object(map) = payload else { panic!("an object") };
        VerifiedJwt::from_payload(map, &["scope".into()])
    }

    #[test]
    fn claims_nest_and_lists_match_by_element() {
        let t = jwt(serde_json::json!({
            "iss": "https://issuer.example", "sub": "alice", "aud": ["a", "b"], "azp": "web",
            "scope": "read write", "groups": ["dev", "ops"], "org": {"team": {"name": "blue"}}, "level": 3
        }));
        assert_eq!(t.principal(), "https://issuer.example/alice");
        assert_eq!(
            (t.audiences.as_slice(), t.presenter.as_deref()),
            (&["a".to_string(), "b".to_string()][..], Some("web"))
        );
        assert_eq!(t.claim_strings(&["scope"]), ["read", "write"]);
        assert_eq!(t.claim_strings(&["groups"]), ["dev", "ops"]);
        assert_eq!(t.claim_strings(&["org", "team", "name"]), ["blue"]);
        assert!(t.claim_strings(&["level"]).is_empty(), "a number is not a string");
        assert!(t.claim_strings(&["org", "missing"]).is_empty());
        assert_eq!(claim_header_value(t.claim(&["level"]).unwrap()).as_deref(), Some("3"));
        assert_eq!(claim_header_value(&Value::Bool(true)).as_deref(), Some("true"));
        assert_eq!(claim_header_value(t.claim(&["groups"]).unwrap()), None);
    }
}
