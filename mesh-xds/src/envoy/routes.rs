//! RDS: route tables, with Istio's per-route policies (retries, timeouts,
//! mirrors, rewrites, header operations) on the route and fault injection
//! and CORS as per-route filter config.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, header_value_option::HeaderAppendAction, DataSource, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::{retry_host_predicate, RetryBackOff, RetryHostPredicate},
    route::Action,
    route_action::{
        hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter},
        ClusterSpecifier, HashPolicy as EnvoyHashPolicy, HostRewriteSpecifier, RequestMirrorPolicy,
    },
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    DirectResponseAction, HeaderMatcher as EnvoyHeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as EnvoyRetryPolicy, Route as EnvoyRoute, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyRouteMatch, VirtualHost as EnvoyVirtualHost, WeightedCluster as EnvoyWeightedClusters,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay::FaultDelaySecifier, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher as EnvoyStringMatcher,
};
use mesh_core::proxy_config::{
    AbortStatus, CorsPolicy, FaultPolicy, HashPolicy, LbPolicy, ProxyConfig, RetryPolicy, Route,
    RouteAction as MeshAction, RouteConfig, RouteMatch, StringMatcher, VirtualHost,
};
use prost::Message;

use super::{any, boolean, duration, percent, uint32, Flavor};

pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub(super) const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A route table, encoded one virtual host at a time: a 1,000-host
/// table's message tree is several times its encoding, and this way only
/// one host's tree is alive at once. (Repeated message fields are just
/// concatenated on the wire, so the bytes decode as the whole message.)
pub(super) fn encoded_route_configuration(rc: &RouteConfig, cfg: &ProxyConfig, flavor: Flavor) -> Vec<u8> {
    let table = RouteConfiguration {
        name: rc.name.clone(),
        // Istio's default: a route to an unknown cluster is not a reason
        // to reject the whole table.
        validate_clusters: boolean(false),
        ..Default::default()
    };
    let mut encoded = table.encode_to_vec();
    for vh in &rc.virtual_hosts {
        prost::encoding::message::encode(VIRTUAL_HOSTS_FIELD, &virtual_host(vh, cfg, flavor), &mut encoded);
    }
    encoded
}

/// `RouteConfiguration.virtual_hosts`.
const VIRTUAL_HOSTS_FIELD: u32 = 2;

fn virtual_host(vh: &VirtualHost, cfg: &ProxyConfig, flavor: Flavor) -> EnvoyVirtualHost {
    let mut routes: Vec<EnvoyRoute> = vh
        .routes
        .iter()
        // Proxyless gRPC has no JWT filter: a claim route could only match
        // by ignoring its claims, so it is left out.
        .filter(|r| flavor == Flavor::Envoy || r.matches.iter().all(|m| m.claims.is_empty()))
        .flat_map(|r| route(r, cfg, flavor))
        .collect();
    let retry_policy = hoist_retry_policy(&mut routes);
    EnvoyVirtualHost { name: vh.name.clone(), domains: vh.domains.clone(), routes, retry_policy, ..Default::default() }
}

/// The retry policy every forwarding route of a host shares, moved from
/// the routes to the host, where Envoy and gRPC take it for each route
/// without one of its own. Istio repeats it in every route: a third of a
/// route table's bytes with its default policy.
fn hoist_retry_policy(routes: &mut [EnvoyRoute]) -> Option<EnvoyRetryPolicy> {
    let forwarding = || {
        routes.iter().filter_map(|r| match &r.action {
            Some(Action::Route(a)) => Some(a),
            _ => None,
        })
    };
    let shared = forwarding().next()?.retry_policy.clone()?;
    if !forwarding().all(|a| a.retry_policy.as_ref() == Some(&shared)) {
        return None;
    }
    for r in routes.iter_mut() {
        if let Some(Action::Route(a)) = &mut r.action {
            a.retry_policy = None;
        }
    }
    Some(shared)
}

/// Istio's `match` list is an OR; Envoy's route has one match, so a route
/// with several matches becomes several routes with the same action.
fn route(r: &Route, cfg: &ProxyConfig, flavor: Flavor) -> Vec<EnvoyRoute> {
    let action = action(r, cfg);
    let mut per_filter = HashMap::new();
    if let Some(fault) = &r.fault {
        per_filter.insert(FAULT_FILTER.to_string(), any(&http_fault(fault)));
    }
    // gRPC has no CORS filter, and rejects config for filters it lacks.
    if let Some(cors) = r.cors.as_ref().filter(|_| flavor == Flavor::Envoy) {
        per_filter.insert(CORS_FILTER.to_string(), any(&cors_policy(cors)));
    }
    let matches: Vec<EnvoyRouteMatch> =
        if r.matches.is_empty() { vec![prefix_match("/")] } else { r.matches.iter().map(route_match).collect() };
    matches
        .into_iter()
        .map(|m| EnvoyRoute {
            name: r.name.clone(),
            r#match: Some(m),
            action: Some(action.clone()),
            request_headers_to_add: header_options(&r.headers.request_set, &r.headers.request_add),
            request_headers_to_remove: r.headers.request_remove.clone(),
            response_headers_to_add: header_options(&r.headers.response_set, &r.headers.response_add),
            response_headers_to_remove: r.headers.response_remove.clone(),
            typed_per_filter_config: per_filter.clone(),
            decorator: decorator(r, flavor),
            ..Default::default()
        })
        .collect()
}

/// Istio's span name for a route: its first destination's
/// `host:port/*` (`reviews.default.svc.cluster.local:9080/*`).
fn decorator(r: &Route, flavor: Flavor) -> Option<envoy_types::pb::envoy::config::route::v3::Decorator> {
    let mesh_core::proxy_config::RouteAction::Forward { clusters } = &r.action else { return None };
    let mut parts = clusters.first()?.cluster.split('|');
    let (port, host) = (parts.nth(1)?, parts.nth(1)?);
    (flavor == Flavor::Envoy && !host.is_empty()).then(|| envoy_types::pb::envoy::config::route::v3::Decorator {
        operation: format!("{host}:{port}/*"),
        ..Default::default()
    })
}

fn prefix_match(prefix: &str) -> EnvoyRouteMatch {
    EnvoyRouteMatch { path_specifier: Some(PathSpecifier::Prefix(prefix.into())), ..Default::default() }
}

fn route_match(m: &RouteMatch) -> EnvoyRouteMatch {
    let path = match &m.uri {
        None | Some(StringMatcher::Present) => PathSpecifier::Prefix("/".into()),
        Some(StringMatcher::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatcher::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StringMatcher::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
    };
    let mut headers: Vec<EnvoyHeaderMatcher> =
        m.headers.iter().map(|h| header_matcher(&h.name, &h.matcher, h.invert)).collect();
    for (name, matcher) in [(":method", &m.method), (":scheme", &m.scheme), (":authority", &m.authority)] {
        if let Some(matcher) = matcher {
            headers.push(header_matcher(name, matcher, false));
        }
    }
    EnvoyRouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then(|| boolean(false)).flatten(),
        headers,
        // Claims are read from the JWT filter's metadata, never headers.
        dynamic_metadata: m
            .claims
            .iter()
            .map(|c| {
                let value = string_matcher(&c.matcher).unwrap_or_else(|| EnvoyStringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(regex(".+"))),
                    ignore_case: false,
                });
                let mut matcher = super::jwt::claim_matcher(&c.path, value);
                matcher.invert = c.invert;
                matcher
            })
            .collect(),
        query_parameters: m
            .query_params
            .iter()
            .map(|q| QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(match string_matcher(&q.matcher) {
                    Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, matcher: &StringMatcher, invert: bool) -> EnvoyHeaderMatcher {
    EnvoyHeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(match string_matcher(matcher) {
            Some(s) => HeaderMatchSpecifier::StringMatch(s),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        ..Default::default()
    }
}

/// `None` for "present with any value", which Envoy spells separately.
fn string_matcher(m: &StringMatcher) -> Option<EnvoyStringMatcher> {
    let pattern = match m {
        StringMatcher::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatcher::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatcher::Regex(r) => MatchPattern::SafeRegex(regex(r)),
        StringMatcher::Present => return None,
    };
    Some(EnvoyStringMatcher { match_pattern: Some(pattern), ..Default::default() })
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher { regex: r.to_string(), ..Default::default() }
}

fn action(r: &Route, cfg: &ProxyConfig) -> Action {
    match &r.action {
        MeshAction::Forward { clusters } => Action::Route(forward(r, clusters, cfg)),
        MeshAction::Redirect(rd) => Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: rd.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
            host_redirect: rd.authority.clone().unwrap_or_default(),
            port_redirect: rd.port.map(u32::from).unwrap_or_default(),
            path_rewrite_specifier: rd
                .path
                .clone()
                .map(PathRewriteSpecifier::PathRedirect)
                .or_else(|| rd.prefix_rewrite.clone().map(PathRewriteSpecifier::PrefixRewrite)),
            response_code: match rd.code {
                302 => RedirectResponseCode::Found,
                303 => RedirectResponseCode::SeeOther,
                307 => RedirectResponseCode::TemporaryRedirect,
                308 => RedirectResponseCode::PermanentRedirect,
                _ => RedirectResponseCode::MovedPermanently,
            } as i32,
            ..Default::default()
        }),
        MeshAction::DirectResponse { status, body } => Action::DirectResponse(DirectResponseAction {
            status: u32::from(*status),
            body: body
                .clone()
                .map(|b| DataSource { specifier: Some(Specifier::InlineString(b)), ..Default::default() }),
            ..Default::default()
        }),
    }
}

fn forward(r: &Route, clusters: &[mesh_core::proxy_config::WeightedCluster], cfg: &ProxyConfig) -> RouteAction {
    let specifier = match clusters {
        [only] if only.headers.is_empty() => ClusterSpecifier::Cluster(only.cluster.clone()),
        _ => ClusterSpecifier::WeightedClusters(EnvoyWeightedClusters {
            clusters: clusters
                .iter()
                .map(|c| ClusterWeight {
                    name: c.cluster.clone(),
                    weight: uint32(c.weight),
                    request_headers_to_add: header_options(&c.headers.request_set, &c.headers.request_add),
                    request_headers_to_remove: c.headers.request_remove.clone(),
                    response_headers_to_add: header_options(&c.headers.response_set, &c.headers.response_add),
                    response_headers_to_remove: c.headers.response_remove.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let rewrite = r.rewrite.as_ref();
    RouteAction {
        cluster_specifier: Some(specifier),
        // Istio turns Envoy's 15 s default off: no timeout unless the
        // VirtualService sets one.
        timeout: Some(duration(r.timeout.unwrap_or_default())),
        retry_policy: r.retry.as_deref().map(retry_policy),
        request_mirror_policies: r
            .mirrors
            .iter()
            .map(|m| RequestMirrorPolicy {
                cluster: m.cluster.clone(),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(percent(m.percent)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        prefix_rewrite: rewrite.and_then(|w| w.uri_prefix.clone()).unwrap_or_default(),
        regex_rewrite: rewrite.and_then(|w| w.uri_regex.as_ref()).map(|(pattern, substitution)| {
            RegexMatchAndSubstitute { pattern: Some(regex(pattern)), substitution: substitution.clone() }
        }),
        host_rewrite_specifier: rewrite.and_then(|w| w.authority.clone()).map(HostRewriteSpecifier::HostRewriteLiteral),
        hash_policy: clusters
            .first()
            .and_then(|c| cfg.cluster(&c.cluster))
            .map(|c| hash_policy(&c.lb))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Envoy hashes on the route, Istio configures it on the destination's
/// DestinationRule: the route takes the hash of the cluster it sends to.
fn hash_policy(lb: &LbPolicy) -> Vec<EnvoyHashPolicy> {
    let hash = match lb {
        LbPolicy::RingHash { hash, .. } | LbPolicy::Maglev { hash, .. } => hash,
        _ => return Vec::new(),
    };
    let specifier = match hash {
        HashPolicy::Header(name) => PolicySpecifier::Header(Header { header_name: name.clone(), ..Default::default() }),
        HashPolicy::Cookie { name, path, ttl } => PolicySpecifier::Cookie(Cookie {
            name: name.clone(),
            path: path.clone().unwrap_or_default(),
            ttl: ttl.map(duration),
            ..Default::default()
        }),
        HashPolicy::SourceIp => PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
        HashPolicy::QueryParameter(name) => PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() }),
    };
    vec![EnvoyHashPolicy { policy_specifier: Some(specifier), terminal: false }]
}

fn retry_policy(r: &RetryPolicy) -> EnvoyRetryPolicy {
    EnvoyRetryPolicy {
        retry_on: r.retry_on.to_string(),
        num_retries: uint32(r.attempts),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r.retriable_status_codes.iter().map(|c| u32::from(*c)).collect(),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(r.backoff_base)),
            max_interval: Some(duration(r.backoff_max)),
        }),
        retry_host_predicate: if r.retry_other_hosts {
            vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_host_predicate::ConfigType::TypedConfig(any(&PreviousHostsPredicate {}))),
            }]
        } else {
            Vec::new()
        },
        host_selection_retry_max_attempts: if r.retry_other_hosts { 5 } else { 0 },
        ..Default::default()
    }
}

pub(super) fn header_options(set: &[(String, String)], add: &[(String, String)]) -> Vec<HeaderValueOption> {
    let option = |(k, v): &(String, String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    set.iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(add.iter().map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)))
        .collect()
}

fn http_fault(f: &FaultPolicy) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(d.delay))),
            percentage: Some(percent(d.percent)),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: Some(match a.status {
                AbortStatus::Http(code) => ErrorType::HttpStatus(u32::from(code)),
                AbortStatus::Grpc(code) => ErrorType::GrpcStatus(code),
            }),
            percentage: Some(percent(a.percent)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cors_policy(c: &CorsPolicy) -> EnvoyCors {
    EnvoyCors {
        allow_origin_string_match: c.allow_origins.iter().filter_map(string_matcher).collect(),
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c.max_age.map(|d| d.as_secs().to_string()).unwrap_or_default(),
        allow_credentials: c.allow_credentials.then(|| boolean(true)).flatten(),
        ..Default::default()
    }
}
