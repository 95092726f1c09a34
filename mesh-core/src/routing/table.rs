//! A compiled route table. Host lookup is a hash lookup (then wildcards,
//! longest first). Within a virtual host, routes keep Istio's first-match
//! order, but lookup does not test them one by one: each match is indexed
//! by its most selective condition (exact path, path prefix, exact header
//! value, or path regex via one `RegexSet`), so a request only tests the
//! few candidates its path and headers can reach, plus the matches that
//! have nothing to index.

use std::borrow::Cow;
use std::sync::Arc;

use regex::RegexSet;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::matcher::CompiledMatcher;
use super::request::RequestView;
use crate::lb::hash::query_param;
use crate::proxy_config::{Route, RouteConfig, RouteMatch, StringMatcher};

/// The route a request matched.
#[derive(Clone, Copy, Debug)]
pub struct RouteHit<'a> {
    pub virtual_host: &'a str,
    pub route: &'a Route,
    pub route_index: usize,
}

pub struct RouteTable {
    /// What the table indexes: routes are answered from it, not copied.
    config: Arc<RouteConfig>,
    exact_hosts: FxHashMap<String, u32>,
    /// `*.example.com` as (`.example.com`, vhost), longest suffix first.
    suffix_hosts: Vec<(String, u32)>,
    /// `example.*` as (`example.`, vhost), longest prefix first.
    prefix_hosts: Vec<(String, u32)>,
    catch_all: Option<u32>,
    /// One per virtual host of `config`, in its order.
    vhosts: Vec<CompiledVirtualHost>,
}

struct CompiledVirtualHost {
    /// One per (route, match) in order: the entry id order is the match
    /// order.
    entries: Vec<Entry>,
    index: Index,
    /// Some match ignores URI case, so lookups need the lowered path.
    any_ignore_case: bool,
}

struct Entry {
    route: u32,
    matcher: CompiledRouteMatch,
}

struct CompiledRouteMatch {
    uri: Option<CompiledMatcher>,
    ignore_uri_case: bool,
    scheme: Option<CompiledMatcher>,
    method: Option<CompiledMatcher>,
    authority: Option<CompiledMatcher>,
    /// `None`: a name that is no HTTP field name, which nothing matches.
    headers: Vec<(Option<http::HeaderName>, CompiledMatcher, bool)>,
    claims: Vec<(Vec<String>, CompiledMatcher, bool)>,
    query_params: Vec<(String, CompiledMatcher)>,
    port: Option<u16>,
}

type Candidates = SmallVec<[u32; 8]>;

#[derive(Default)]
struct Index {
    exact: FxHashMap<String, Candidates>,
    prefix: FxHashMap<String, Candidates>,
    prefix_lengths: Vec<usize>,
    /// The same for `ignoreUriCase` matches, keyed lower case.
    exact_ci: FxHashMap<String, Candidates>,
    prefix_ci: FxHashMap<String, Candidates>,
    prefix_ci_lengths: Vec<usize>,
    headers: Vec<(http::HeaderName, FxHashMap<String, Candidates>)>,
    regexes: Option<(RegexSet, Vec<u32>)>,
    /// Entries with nothing to index, ascending.
    always: Vec<u32>,
}

/// Why a route table could not be built.
#[derive(Debug, thiserror::Error)]
#[error("route config `{route_config}`, virtual host `{virtual_host}`, route `{route}`: {reason}")]
pub struct RouteTableError {
    pub route_config: String,
    pub virtual_host: String,
    pub route: String,
    pub reason: String,
}

impl RouteTable {
    pub fn new(config: impl Into<Arc<RouteConfig>>) -> Result<RouteTable, RouteTableError> {
        let config = config.into();
        let mut table = RouteTable {
            config: Arc::clone(&config),
            exact_hosts: FxHashMap::default(),
            suffix_hosts: Vec::new(),
            prefix_hosts: Vec::new(),
            catch_all: None,
            vhosts: Vec::new(),
        };
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            let i = i as u32;
            for domain in &vh.domains {
                let d = domain.to_ascii_lowercase();
                if d == "*" {
                    table.catch_all.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    table.suffix_hosts.push((suffix.to_string(), i));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    table.prefix_hosts.push((prefix.to_string(), i));
                } else {
                    table.exact_hosts.entry(d).or_insert(i);
                }
            }
            let compiled = compile_vhost(&vh.routes).map_err(|(route, reason)| RouteTableError {
                route_config: config.name.clone(),
                virtual_host: vh.name.clone(),
                route,
                reason,
            })?;
            table.vhosts.push(compiled);
        }
        table.suffix_hosts.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        table.prefix_hosts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(table)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The first route of the request's virtual host that matches it.
    pub fn find(&self, req: &RequestView<'_>) -> Option<RouteHit<'_>> {
        let i = self.find_virtual_host(req.authority)? as usize;
        let compiled = &self.vhosts[i];
        let entry = compiled.find(req)?;
        let route_index = compiled.entries[entry as usize].route as usize;
        let vh = &self.config.virtual_hosts[i];
        Some(RouteHit { virtual_host: &vh.name, route: &vh.routes[route_index], route_index })
    }

    /// Envoy's domain search: exact, then `*.suffix` longest first, then
    /// `prefix.*`, then `*`; with the port as sent, then without it.
    fn find_virtual_host(&self, authority: &str) -> Option<u32> {
        if self.exact_hosts.is_empty() && self.suffix_hosts.is_empty() && self.prefix_hosts.is_empty() {
            // Only `*` (a gateway's usual table): the authority is not read.
            return self.catch_all;
        }
        let host: Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        let without_port = strip_port(&host);
        for candidate in [&*host, without_port] {
            if let Some(i) = self.exact_hosts.get(candidate) {
                return Some(*i);
            }
        }
        for candidate in [&*host, without_port] {
            if let Some((_, i)) =
                self.suffix_hosts.iter().find(|(s, _)| candidate.len() > s.len() && candidate.ends_with(s.as_str()))
            {
                return Some(*i);
            }
            if let Some((_, i)) =
                self.prefix_hosts.iter().find(|(p, _)| candidate.len() > p.len() && candidate.starts_with(p.as_str()))
            {
                return Some(*i);
            }
        }
        self.catch_all
    }
}

/// The literal text every match of `regex` starts with, when that is easy
/// to see: plain characters up to the first metacharacter, minus one
/// that a quantifier makes optional. `None` for alternations.
fn literal_prefix(regex: &str) -> Option<String> {
    if regex.contains('|') {
        return None;
    }
    let body = regex.strip_prefix('^').unwrap_or(regex);
    let mut prefix = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if "\\.+*?()[]{}^$".contains(c) {
            break;
        }
        if chars.peek().is_some_and(|n| "*?{".contains(*n)) {
            break;
        }
        prefix.push(c);
    }
    Some(prefix)
}

/// `host:port` -> `host`; `[::1]:80` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    // Back over the port's digits to the colon before them: a byte loop,
    // cheaper than a reverse char search on a short string.
    let digits = host.bytes().rev().take_while(u8::is_ascii_digit).count();
    let colon = host.len() - digits;
    match colon.checked_sub(1) {
        Some(c) if digits > 0 && host.as_bytes()[c] == b':' => &host[..c],
        _ => host,
    }
}

fn compile_vhost(routes: &[Route]) -> Result<CompiledVirtualHost, (String, String)> {
    let mut entries = Vec::new();
    let mut index = Index::default();
    let mut regex_patterns = Vec::new();
    let mut regex_entries = Vec::new();
    let push = |map: &mut FxHashMap<String, Candidates>, key: String, id: u32| map.entry(key).or_default().push(id);
    let catch_all = RouteMatch::default();
    for (ri, route) in routes.iter().enumerate() {
        let matches: Vec<&RouteMatch> =
            if route.matches.is_empty() { vec![&catch_all] } else { route.matches.iter().collect() };
        for m in matches {
            let id = entries.len() as u32;
            let matcher = compile_match(m).map_err(|e| (route.name.clone(), format!("invalid regex: {e}")))?;
            let ci = m.ignore_uri_case;
            let fold = |s: &String| if ci { s.to_ascii_lowercase() } else { s.clone() };
            match &m.uri {
                Some(StringMatcher::Exact(p)) => {
                    push(if ci { &mut index.exact_ci } else { &mut index.exact }, fold(p), id)
                }
                Some(StringMatcher::Prefix(p)) => {
                    let (map, lengths) = if ci {
                        (&mut index.prefix_ci, &mut index.prefix_ci_lengths)
                    } else {
                        (&mut index.prefix, &mut index.prefix_lengths)
                    };
                    push(map, fold(p), id);
                    if !lengths.contains(&p.len()) {
                        lengths.push(p.len());
                    }
                }
                Some(StringMatcher::Regex(r)) => match literal_prefix(r).filter(|p| !ci && !p.is_empty()) {
                    // Any path this regex matches starts with its literal
                    // prefix, so the prefix index yields the candidates.
                    Some(p) => {
                        if !index.prefix_lengths.contains(&p.len()) {
                            index.prefix_lengths.push(p.len());
                        }
                        push(&mut index.prefix, p, id);
                    }
                    None => {
                        regex_patterns.push(format!("{}^(?:{r})$", if ci { "(?i)" } else { "" }));
                        regex_entries.push(id);
                    }
                },
                _ => match m.headers.iter().find(|h| !h.invert && matches!(h.matcher, StringMatcher::Exact(_))) {
                    Some(h) => {
                        let StringMatcher::Exact(value) = &h.matcher else { unreachable!("filtered above") };
                        let name = http::HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|e| (route.name.clone(), e.to_string()))?;
                        let slot = match index.headers.iter().position(|(n, _)| *n == name) {
                            Some(p) => p,
                            None => {
                                index.headers.push((name, FxHashMap::default()));
                                index.headers.len() - 1
                            }
                        };
                        push(&mut index.headers[slot].1, value.clone(), id);
                    }
                    None => index.always.push(id),
                },
            }
            entries.push(Entry { route: ri as u32, matcher });
        }
    }
    index.prefix_lengths.sort_unstable();
    index.prefix_ci_lengths.sort_unstable();
    if !regex_patterns.is_empty() {
        let set = RegexSet::new(&regex_patterns).map_err(|e| (String::new(), format!("invalid regex: {e}")))?;
        index.regexes = Some((set, regex_entries));
    }
    let any_ignore_case = entries.iter().any(|e| e.matcher.ignore_uri_case);
    Ok(CompiledVirtualHost { entries, index, any_ignore_case })
}

fn compile_match(m: &RouteMatch) -> Result<CompiledRouteMatch, regex::Error> {
    let opt = |m: &Option<StringMatcher>, ci: bool| m.as_ref().map(|m| CompiledMatcher::new(m, ci)).transpose();
    Ok(CompiledRouteMatch {
        uri: opt(&m.uri, m.ignore_uri_case)?,
        ignore_uri_case: m.ignore_uri_case,
        scheme: opt(&m.scheme, false)?,
        method: opt(&m.method, false)?,
        authority: opt(&m.authority, false)?,
        headers: m
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok();
                CompiledMatcher::new(&h.matcher, false).map(|c| (name, c, h.invert))
            })
            .collect::<Result<_, _>>()?,
        claims: m
            .claims
            .iter()
            .map(|c| CompiledMatcher::new(&c.matcher, false).map(|m| (c.path.clone(), m, c.invert)))
            .collect::<Result<_, _>>()?,
        query_params: m
            .query_params
            .iter()
            .map(|q| CompiledMatcher::new(&q.matcher, false).map(|c| (q.name.clone(), c)))
            .collect::<Result<_, _>>()?,
        port: m.port,
    })
}

impl CompiledVirtualHost {
    fn find(&self, req: &RequestView<'_>) -> Option<u32> {
        let idx = &self.index;
        let lower = self.any_ignore_case.then(|| req.path.to_ascii_lowercase());
        let mut candidates = Candidates::new();
        if let Some(ids) = idx.exact.get(req.path) {
            candidates.extend_from_slice(ids);
        }
        for &len in idx.prefix_lengths.iter().take_while(|l| **l <= req.path.len()) {
            if let Some(ids) = req.path.get(..len).and_then(|p| idx.prefix.get(p)) {
                candidates.extend_from_slice(ids);
            }
        }
        if let Some(lower) = &lower {
            if let Some(ids) = idx.exact_ci.get(lower.as_str()) {
                candidates.extend_from_slice(ids);
            }
            for &len in idx.prefix_ci_lengths.iter().take_while(|l| **l <= lower.len()) {
                if let Some(ids) = lower.get(..len).and_then(|p| idx.prefix_ci.get(p)) {
                    candidates.extend_from_slice(ids);
                }
            }
        }
        for (name, values) in &idx.headers {
            if let Some(ids) = req.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| values.get(v)) {
                candidates.extend_from_slice(ids);
            }
        }
        if let Some((set, ids)) = &idx.regexes {
            candidates.extend(set.matches(req.path).iter().map(|i| ids[i]));
        }
        candidates.sort_unstable();
        candidates.dedup();
        // Walk indexed candidates and unindexed entries together, in match
        // order; the first that fully matches wins.
        let (mut a, mut b) = (candidates.iter().peekable(), idx.always.iter().peekable());
        let path = lower.as_deref();
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x <= y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => return None,
            };
            let id = *next?;
            if self.entries[id as usize].matcher.matches(req, path) {
                return Some(id);
            }
        }
    }
}

impl CompiledRouteMatch {
    fn matches(&self, req: &RequestView<'_>, lower_path: Option<&str>) -> bool {
        if let Some(uri) = &self.uri {
            let path = if self.ignore_uri_case { lower_path.unwrap_or(req.path) } else { req.path };
            if !uri.matches(path) {
                return false;
            }
        }
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        let opt = |m: &Option<CompiledMatcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        if !opt(&self.method, req.method) || !opt(&self.scheme, req.scheme) || !opt(&self.authority, req.authority) {
            return false;
        }
        for (name, matcher, invert) in &self.headers {
            let Some(name) = name else { return false };
            let mut values = req.headers.get_all(name).iter();
            let matched = match (values.next(), values.next()) {
                (None, _) => false,
                (Some(v), None) => v.to_str().is_ok_and(|v| matcher.matches(v)),
                // Envoy matches repeated headers joined with a comma.
                (Some(_), Some(_)) => {
                    let joined: Vec<&str> = req.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                    matcher.matches(&joined.join(","))
                }
            };
            if matched == *invert {
                return false;
            }
        }
        for (path, matcher, invert) in &self.claims {
            let values = req.claims.map(|jwt| jwt.claim_strings(path)).unwrap_or_default();
            if values.iter().any(|v| matcher.matches(v)) == *invert {
                return false;
            }
        }
        for (name, matcher) in &self.query_params {
            match req.query.and_then(|q| query_param(q, name)) {
                Some(v) if matcher.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_config::{HeaderMatcher, QueryParamMatcher, VirtualHost};

    #[test]
    fn a_port_is_stripped_only_when_it_is_digits_after_a_colon() {
        for (host, bare) in [
            ("reviews:9080", "reviews"),
            ("a:b:80", "a:b"),
            ("reviews", "reviews"),
            ("reviews:", "reviews:"),
            ("reviews:8a0", "reviews:8a0"),
            ("9080", "9080"),
            (":80", ""),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), bare, "{host}");
        }
    }

    fn route(name: &str, matches: Vec<RouteMatch>) -> Route {
        Route { matches, ..Route::forward(name, name) }
    }

    fn config(domains: &[&[&str]], routes: Vec<Route>) -> RouteConfig {
        RouteConfig {
            name: "test".into(),
            virtual_hosts: domains
                .iter()
                .enumerate()
                .map(|(i, d)| VirtualHost {
                    name: format!("vh{i}"),
                    domains: d.iter().map(|s| s.to_string()).collect(),
                    routes: routes.clone(),
                })
                .collect(),
        }
    }

    fn find<'a>(t: &'a RouteTable, uri: &str, headers: &[(&str, &str)]) -> Option<(&'a str, &'a str)> {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, _) = b.body(()).unwrap().into_parts();
        t.find(&RequestView::from_parts(&head, 80)).map(|h| (h.virtual_host, h.route.name.as_str()))
    }

    fn uri(m: StringMatcher) -> RouteMatch {
        RouteMatch { uri: Some(m), ..Default::default() }
    }

    #[test]
    fn host_lookup_follows_envoy_order() {
        let t = RouteTable::new(config(
            &[&["*"], &["*.example.com"], &["api.example.com", "api.example.com:8080"], &["*.com"], &["api.*"]],
            vec![route("r", vec![])],
        ))
        .unwrap();
        assert_eq!(find(&t, "http://api.example.com/", &[]).unwrap().0, "vh2");
        assert_eq!(find(&t, "http://API.Example.COM:8080/", &[]).unwrap().0, "vh2");
        assert_eq!(find(&t, "http://api.example.com:9999/", &[]).unwrap().0, "vh2", "port stripped as a fallback");
        assert_eq!(find(&t, "http://www.example.com/", &[]).unwrap().0, "vh1", "longest suffix wins");
        assert_eq!(find(&t, "http://foo.com/", &[]).unwrap().0, "vh3");
        assert_eq!(find(&t, "http://api.internal/", &[]).unwrap().0, "vh4");
        assert_eq!(find(&t, "http://other.org/", &[]).unwrap().0, "vh0");
        assert_eq!(find(&t, "http://[::1]:80/", &[]).unwrap().0, "vh0");
    }

    #[test]
    fn first_match_wins_across_index_kinds() {
        let routes = vec![
            route(
                "header",
                vec![RouteMatch {
                    headers: vec![HeaderMatcher {
                        name: "end-user".into(),
                        matcher: StringMatcher::Exact("jason".into()),
                        invert: false,
                    }],
                    ..Default::default()
                }],
            ),
            route("exact", vec![uri(StringMatcher::Exact("/a/b".into()))]),
            route("regex", vec![uri(StringMatcher::Regex("/a/[0-9]+".into()))]),
            route("prefix", vec![uri(StringMatcher::Prefix("/a".into()))]),
            route(
                "ci",
                vec![RouteMatch {
                    uri: Some(StringMatcher::Prefix("/CASE".into())),
                    ignore_uri_case: true,
                    ..Default::default()
                }],
            ),
            route(
                "without",
                vec![RouteMatch {
                    headers: vec![HeaderMatcher {
                        name: "x-debug".into(),
                        matcher: StringMatcher::Present,
                        invert: true,
                    }],
                    uri: Some(StringMatcher::Prefix("/w".into())),
                    ..Default::default()
                }],
            ),
            route(
                "query",
                vec![RouteMatch {
                    query_params: vec![QueryParamMatcher {
                        name: "v".into(),
                        matcher: StringMatcher::Exact("2".into()),
                    }],
                    ..Default::default()
                }],
            ),
            route(
                "method",
                vec![RouteMatch {
                    method: Some(StringMatcher::Exact("GET".into())),
                    uri: Some(StringMatcher::Prefix("/m".into())),
                    ..Default::default()
                }],
            ),
            route("catch-all", vec![]),
        ];
        let t = RouteTable::new(config(&[&["*"]], routes)).unwrap();
        let name = |u: &str, h: &[(&str, &str)]| find(&t, &format!("http://x{u}"), h).unwrap().1.to_string();
        assert_eq!(name("/a/b", &[("end-user", "jason")]), "header");
        assert_eq!(name("/a/b", &[]), "exact");
        assert_eq!(name("/a/12", &[]), "regex");
        assert_eq!(name("/a/12/x", &[]), "prefix", "regex must match the whole path");
        assert_eq!(name("/abc", &[]), "prefix");
        assert_eq!(name("/case/Sensitive", &[]), "ci");
        assert_eq!(name("/w", &[]), "without");
        assert_eq!(name("/w", &[("x-debug", "1")]), "catch-all");
        assert_eq!(name("/q?v=2", &[]), "query");
        assert_eq!(name("/q?v=3", &[]), "catch-all");
        assert_eq!(name("/m", &[]), "method");
        assert_eq!(name("/zzz", &[]), "catch-all");
    }

    #[test]
    fn indexed_lookup_agrees_with_a_linear_scan() {
        // Random routes and requests; the index must pick exactly what a
        // first-match scan over every route picks.
        let mut rng = fastrand::Rng::with_seed(99);
        let words = ["a", "b", "api", "v1", "v2", "x"];
        let path = |rng: &mut fastrand::Rng| {
            let n = rng.usize(1..4);
            (0..n).map(|_| format!("/{}", words[rng.usize(..words.len())])).collect::<String>()
        };
        for round in 0..30 {
            let mut routes = Vec::new();
            for i in 0..40 {
                let p = path(&mut rng);
                let mut m = RouteMatch::default();
                match rng.u8(..6) {
                    0 => m.uri = Some(StringMatcher::Exact(p)),
                    1 => m.uri = Some(StringMatcher::Prefix(p)),
                    2 => m.uri = Some(StringMatcher::Regex(format!("{p}(/.*)?"))),
                    3 => m.headers.push(HeaderMatcher {
                        name: "h".into(),
                        matcher: StringMatcher::Exact(words[rng.usize(..6)].into()),
                        invert: false,
                    }),
                    4 => {
                        m.uri = Some(StringMatcher::Prefix(p.to_uppercase()));
                        m.ignore_uri_case = true;
                    }
                    _ => m.method = Some(StringMatcher::Exact(if rng.bool() { "GET" } else { "POST" }.into())),
                }
                if rng.u8(..4) == 0 {
                    m.headers.push(HeaderMatcher {
                        name: "h2".into(),
                        matcher: StringMatcher::Present,
                        invert: rng.bool(),
                    });
                }
                routes.push(route(&format!("r{i}"), vec![m]));
            }
            let cfg = config(&[&["*"]], routes.clone());
            let t = RouteTable::new(cfg).unwrap();
            let vh = &t.vhosts[0];
            for _ in 0..300 {
                let p = path(&mut rng);
                let mut headers = vec![];
                if rng.bool() {
                    headers.push(("h", words[rng.usize(..6)]));
                }
                if rng.bool() {
                    headers.push(("h2", "1"));
                }
                let mut b = http::Request::builder()
                    .method(if rng.bool() { "GET" } else { "POST" })
                    .uri(format!("http://x{p}"));
                for (k, v) in &headers {
                    b = b.header(*k, *v);
                }
                let (head, _) = b.body(()).unwrap().into_parts();
                let req = RequestView::from_parts(&head, 80);
                let lower = req.path.to_ascii_lowercase();
                let linear =
                    vh.entries.iter().position(|e| e.matcher.matches(&req, Some(&lower))).map(|i| vh.entries[i].route);
                let indexed = t.find(&req).map(|h| h.route_index as u32);
                assert_eq!(indexed, linear, "round {round}, {} {p} {headers:?}", req.method);
            }
        }
    }

    #[test]
    fn literal_prefixes_of_regexes() {
        assert_eq!(literal_prefix("/svc12/v[0-9]+/.*").as_deref(), Some("/svc12/v"));
        assert_eq!(literal_prefix("^/api/(v1|v2)").as_deref(), None);
        assert_eq!(literal_prefix("/items?").as_deref(), Some("/item"));
        assert_eq!(literal_prefix("/a+b").as_deref(), Some("/a"));
        assert_eq!(literal_prefix("/a\\.b").as_deref(), Some("/a"));
        assert_eq!(literal_prefix(".*foo").as_deref(), Some(""));
    }

    #[test]
    fn bad_regex_names_the_route() {
        let err =
            RouteTable::new(config(&[&["*"]], vec![route("broken", vec![uri(StringMatcher::Regex("(".into()))])]))
                .err()
                .unwrap();
        assert!(err.to_string().contains("route `broken`"), "{err}");
    }

    #[test]
    fn claim_routes_read_the_verified_token_never_a_header() {
        use crate::proxy_config::ClaimMatcher;
        let claim = |path: &[&str], value: &str, invert: bool| RouteMatch {
            claims: vec![ClaimMatcher {
                path: path.iter().map(|p| p.to_string()).collect(),
                matcher: StringMatcher::Exact(value.into()),
                invert,
            }],
            ..Default::default()
        };
        let t = RouteTable::new(config(
            &[&["*"]],
            vec![
                route("admins", vec![claim(&["groups"], "admin", false)]),
                route("blue", vec![claim(&["org", "team"], "blue", false)]),
                route("not-dev", vec![claim(&["groups"], "dev", true)]),
                route("rest", vec![]),
            ],
        ))
        .unwrap();
        let jwt = |payload: serde_json::Value| {
            let serde_json::Value::Object(map) = payload else { panic!("an object") };
            crate::jwt::VerifiedJwt::from_payload(map, &[])
        };
        let pick = |claims: Option<&crate::jwt::VerifiedJwt>, headers: &[(&str, &str)]| {
            let mut b = http::Request::get("http://app/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let (head, _) = b.body(()).unwrap().into_parts();
            let view = RequestView { claims, ..RequestView::from_parts(&head, 80) };
            t.find(&view).map(|h| h.route.name.clone())
        };
        let admin = jwt(serde_json::json!({"groups": ["dev", "admin"]}));
        let blue = jwt(serde_json::json!({"groups": ["dev"], "org": {"team": "blue"}}));
        let dev = jwt(serde_json::json!({"groups": "dev"}));
        assert_eq!(pick(Some(&admin), &[]).as_deref(), Some("admins"));
        assert_eq!(pick(Some(&blue), &[]).as_deref(), Some("blue"));
        assert_eq!(pick(Some(&dev), &[]).as_deref(), Some("rest"));
        assert_eq!(
            pick(None, &[("groups", "admin"), ("org", "blue")]).as_deref(),
            Some("not-dev"),
            "headers are no claims"
        );
    }
}
