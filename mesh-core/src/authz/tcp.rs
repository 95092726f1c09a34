//! AuthorizationPolicy on TCP traffic, narrowed as istiod narrows it for
//! Envoy's network RBAC filter: a field only HTTP has (hosts, methods,
//! paths, request principals, `request.*` conditions) cannot be checked
//! on a connection. An ALLOW rule holding one is dropped (it allows
//! less); a DENY, CUSTOM or AUDIT rule loses just that field (it denies
//! more). Either way the connection is judged fail-closed.

use crate::config::security::{AuthorizationAction, Condition, Operation, Rule, Source};

/// The rule names a field only HTTP has: it is narrowed on connections.
pub(super) fn names_http(rule: &Rule) -> bool {
    rule.from.iter().any(|f| source_is_http(&f.source))
        || rule.to.iter().any(|t| operation_is_http(&t.operation))
        || rule.when.iter().any(condition_is_http)
}

/// The rule as it applies to a connection, or `None` when it cannot.
pub(super) fn narrow(rule: &Rule, action: AuthorizationAction) -> Option<Rule> {
    if !names_http(rule) {
        return Some(rule.clone());
    }
    if action == AuthorizationAction::Allow {
        return None;
    }
    let mut rule = rule.clone();
    for from in &mut rule.from {
        from.source.request_principals.clear();
        from.source.not_request_principals.clear();
    }
    for to in &mut rule.to {
        let o = &mut to.operation;
        for field in
            [&mut o.hosts, &mut o.not_hosts, &mut o.methods, &mut o.not_methods, &mut o.paths, &mut o.not_paths]
        {
            field.clear();
        }
    }
    rule.when.retain(|c| !condition_is_http(c));
    Some(rule)
}

fn source_is_http(s: &Source) -> bool {
    !s.request_principals.is_empty() || !s.not_request_principals.is_empty()
}

fn operation_is_http(o: &Operation) -> bool {
    [&o.hosts, &o.not_hosts, &o.methods, &o.not_methods, &o.paths, &o.not_paths].iter().any(|f| !f.is_empty())
}

fn condition_is_http(c: &Condition) -> bool {
    c.key.starts_with("request.")
}
