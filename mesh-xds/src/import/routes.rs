//! RDS -> route tables. Consecutive routes with the same name and action
//! are one Istio route with several matches (how [`crate::envoy`] spells
//! Istio's OR of matches).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route::Action,
    route_action::{hash_policy::PolicySpecifier, ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
    HeaderMatcher as EnvoyHeaderMatcher, RetryPolicy as EnvoyRetryPolicy, Route as EnvoyRoute,
    RouteAction as EnvoyRouteAction, RouteConfiguration, RouteMatch as EnvoyRouteMatch,
    VirtualHost as EnvoyVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher as EnvoyStringMatcher};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use mesh_core::proxy_config::{
    AbortStatus, ClaimMatcher, CorsPolicy, FaultAbort, FaultDelay, FaultPolicy, HashPolicy, HeaderMatcher, HeaderOps,
    MirrorPolicy, QueryParamMatcher, Redirect, RetryPolicy, Rewrite, Route, RouteAction, RouteConfig, RouteMatch,
    StringMatcher, VirtualHost, WeightedCluster,
};
use mesh_core::resilience::retry::RetryOn;

use super::{decode, duration, ImportError, ImportedRoutes};

const KIND: &str = "RouteConfiguration";

pub fn route_config(rc: &RouteConfiguration) -> Result<ImportedRoutes, ImportError> {
    let mut hash_by_cluster = BTreeMap::new();
    let mut virtual_hosts = Vec::new();
    for (v, vh) in rc.virtual_hosts.iter().enumerate() {
        let host_retry = virtual_host_retry(vh, &format!("virtual_hosts[{v}]"), &rc.name)?;
        let mut routes: Vec<Route> = Vec::new();
        let mut last: Option<&EnvoyRoute> = None;
        for (r, er) in vh.routes.iter().enumerate() {
            let at = |field: &str| format!("virtual_hosts[{v}].routes[{r}]{field}");
            let m = route_match(er.r#match.as_ref(), &at(".match"), &rc.name)?;
            // The same Istio route, another of its matches.
            if let (Some(prev), Some(route)) = (last, routes.last_mut()) {
                if prev.name == er.name && !er.name.is_empty() && prev.action == er.action {
                    route.matches.push(m);
                    continue;
                }
            }
            let (mut route, hash) = route(er, &at(""), &rc.name)?;
            route.matches = vec![m];
            if route.retry.is_none() && matches!(route.action, RouteAction::Forward { .. }) {
                route.retry.clone_from(&host_retry);
            }
            if let (Some(hash), RouteAction::Forward { clusters }) = (hash, &route.action) {
                for c in clusters {
                    hash_by_cluster.insert(c.cluster.clone(), hash.clone());
                }
            }
            routes.push(route);
            last = Some(er);
        }
        // A lone catch-all match is Istio's "no match".
        for route in &mut routes {
            if route.matches.len() == 1 && route.matches[0] == RouteMatch::default() {
                route.matches.clear();
            }
        }
        virtual_hosts.push(VirtualHost { name: vh.name.clone(), domains: vh.domains.clone(), routes });
    }
    Ok(ImportedRoutes { config: Arc::new(RouteConfig { name: rc.name.clone(), virtual_hosts }), hash_by_cluster })
}

/// The host's retry policy, for its forwarding routes without one. What
/// else a virtual host can set for all its routes mesh-proxy does not
/// apply: refused, naming the field (the deprecated `cors` too, which
/// Envoy still honours).
#[allow(deprecated)]
fn virtual_host_retry(vh: &EnvoyVirtualHost, at: &str, name: &str) -> Result<Option<Box<RetryPolicy>>, ImportError> {
    let unsupported = [
        ("matcher", vh.matcher.is_some()),
        ("require_tls", vh.require_tls != 0),
        ("rate_limits", !vh.rate_limits.is_empty()),
        ("request_headers_to_add", !vh.request_headers_to_add.is_empty()),
        ("request_headers_to_remove", !vh.request_headers_to_remove.is_empty()),
        ("response_headers_to_add", !vh.response_headers_to_add.is_empty()),
        ("response_headers_to_remove", !vh.response_headers_to_remove.is_empty()),
        ("cors", vh.cors.is_some()),
        ("typed_per_filter_config", !vh.typed_per_filter_config.is_empty()),
        ("retry_policy_typed_config", vh.retry_policy_typed_config.is_some()),
        ("hedge_policy", vh.hedge_policy.is_some()),
        ("request_mirror_policies", !vh.request_mirror_policies.is_empty()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(err(name, format!("{at}.{field}"), "is not supported on a virtual host; set it per route"));
    }
    Ok(vh.retry_policy.as_ref().map(retry_policy))
}

fn err(name: &str, field: String, message: impl Into<String>) -> ImportError {
    ImportError::new(KIND, name, field, message)
}

fn route_match(m: Option<&EnvoyRouteMatch>, at: &str, name: &str) -> Result<RouteMatch, ImportError> {
    let Some(m) = m else { return Err(err(name, at.into(), "a match is required")) };
    let uri = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => StringMatcher::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => StringMatcher::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => StringMatcher::Regex(r.regex.clone()),
        other => return Err(err(name, format!("{at}.path_specifier"), format!("{other:?} is not supported"))),
    };
    let mut out = RouteMatch {
        // Prefix `/` matches every path: Istio leaves such a match out.
        uri: Some(uri).filter(|u| *u != StringMatcher::Prefix("/".into())),
        ignore_uri_case: m.case_sensitive.as_ref().is_some_and(|c| !c.value),
        ..Default::default()
    };
    for (i, h) in m.headers.iter().enumerate() {
        let matcher = header_matcher(h)
            .ok_or_else(|| err(name, format!("{at}.headers[{i}]"), "only string and present matches are supported"))?;
        match h.name.as_str() {
            ":method" => out.method = Some(matcher),
            ":scheme" => out.scheme = Some(matcher),
            ":authority" => out.authority = Some(matcher),
            _ => out.headers.push(HeaderMatcher { name: h.name.to_ascii_lowercase(), matcher, invert: h.invert_match }),
        }
    }
    for (i, d) in m.dynamic_metadata.iter().enumerate() {
        let at = format!("{at}.dynamic_metadata[{i}]");
        out.claims.push(claim(d, &at).map_err(|(field, message)| err(name, field, message))?);
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        let matcher = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => string_matcher(s),
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) => Some(StringMatcher::Present),
            _ => None,
        }
        .ok_or_else(|| {
            err(name, format!("{at}.query_parameters[{i}]"), "only string and present matches are supported")
        })?;
        out.query_params.push(QueryParamMatcher { name: q.name.clone(), matcher });
    }
    Ok(out)
}

/// A JWT claim route (`@request.auth.claims.*`): the claim, as a string or
/// any string of a list, matching one matcher.
fn claim(
    m: &envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher,
    at: &str,
) -> Result<ClaimMatcher, (String, String)> {
    let c = super::jwt::claim_match(m, at)?;
    let same = |t: &mesh_core::rbac::TextMatch| {
        use mesh_core::rbac::TextPattern;
        match (&t.pattern, t.ignore_case) {
            (TextPattern::Exact(v), false) => Some(StringMatcher::Exact(v.clone())),
            (TextPattern::Prefix(v), false) => Some(StringMatcher::Prefix(v.clone())),
            (TextPattern::Regex(r), false) if r == ".+" => Some(StringMatcher::Present),
            (TextPattern::Regex(r), false) => Some(StringMatcher::Regex(r.clone())),
            _ => None,
        }
    };
    match (&c.string, &c.element) {
        (Some(s), Some(e)) if s == e => match same(s) {
            Some(matcher) => Ok(ClaimMatcher { path: c.path, matcher, invert: c.invert }),
            None => Err((format!("{at}.value"), "only exact, prefix and regex claim matches are supported".into())),
        },
        _ => Err((format!("{at}.value"), "a claim must match as a string and as a list alike".into())),
    }
}

fn header_matcher(h: &EnvoyHeaderMatcher) -> Option<StringMatcher> {
    match h.header_match_specifier.as_ref()? {
        HeaderMatchSpecifier::StringMatch(s) => string_matcher(s),
        HeaderMatchSpecifier::PresentMatch(true) => Some(StringMatcher::Present),
        _ => None,
    }
}

fn string_matcher(s: &EnvoyStringMatcher) -> Option<StringMatcher> {
    match s.match_pattern.as_ref()? {
        MatchPattern::Exact(v) => Some(StringMatcher::Exact(v.clone())),
        MatchPattern::Prefix(v) => Some(StringMatcher::Prefix(v.clone())),
        MatchPattern::SafeRegex(r) => Some(StringMatcher::Regex(r.regex.clone())),
        _ => None,
    }
}

fn route(er: &EnvoyRoute, at: &str, name: &str) -> Result<(Route, Option<HashPolicy>), ImportError> {
    let mut route = Route::forward(&er.name, "");
    route.headers = header_ops(
        &er.request_headers_to_add,
        &er.request_headers_to_remove,
        &er.response_headers_to_add,
        &er.response_headers_to_remove,
    );
    if let Some(any) = er.typed_per_filter_config.get("envoy.filters.http.fault") {
        let f: HttpFault = decode(any, KIND).map_err(|e| ImportError {
            name: name.into(),
            field: format!("{at}.typed_per_filter_config"),
            ..e
        })?;
        route.fault = Some(fault(&f));
    }
    if let Some(any) = er.typed_per_filter_config.get("envoy.filters.http.cors") {
        let c: EnvoyCors = decode(any, KIND).map_err(|e| ImportError {
            name: name.into(),
            field: format!("{at}.typed_per_filter_config"),
            ..e
        })?;
        route.cors = Some(Box::new(cors(&c)));
    }
    let mut hash = None;
    route.action = match &er.action {
        Some(Action::Route(a)) => {
            hash = a.hash_policy.iter().find_map(|h| {
                Some(match h.policy_specifier.as_ref()? {
                    PolicySpecifier::Header(h) => HashPolicy::Header(h.header_name.to_ascii_lowercase()),
                    PolicySpecifier::Cookie(c) => HashPolicy::Cookie {
                        name: c.name.clone(),
                        path: (!c.path.is_empty()).then(|| c.path.clone()),
                        ttl: c.ttl.as_ref().map(duration),
                    },
                    PolicySpecifier::ConnectionProperties(p) if p.source_ip => HashPolicy::SourceIp,
                    PolicySpecifier::QueryParameter(q) => HashPolicy::QueryParameter(q.name.clone()),
                    _ => return None,
                })
            });
            forward(&mut route, a, at, name)?
        }
        Some(Action::Redirect(r)) => RouteAction::Redirect(Box::new(Redirect {
            path: match &r.path_rewrite_specifier {
                Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
                _ => None,
            },
            prefix_rewrite: match &r.path_rewrite_specifier {
                Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(p.clone()),
                _ => None,
            },
            authority: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
            scheme: match &r.scheme_rewrite_specifier {
                Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
                Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
                _ => None,
            },
            port: u16::try_from(r.port_redirect).ok().filter(|p| *p != 0),
            port_from_request: false,
            code: match RedirectResponseCode::try_from(r.response_code) {
                Ok(RedirectResponseCode::Found) => 302,
                Ok(RedirectResponseCode::SeeOther) => 303,
                Ok(RedirectResponseCode::TemporaryRedirect) => 307,
                Ok(RedirectResponseCode::PermanentRedirect) => 308,
                _ => 301,
            },
        })),
        Some(Action::DirectResponse(d)) => RouteAction::DirectResponse {
            status: u16::try_from(d.status)
                .map_err(|_| err(name, format!("{at}.direct_response.status"), "not an HTTP status"))?,
            body: d.body.as_ref().and_then(|b| match b.specifier.as_ref()? {
                Specifier::InlineString(s) => Some(s.clone()),
                Specifier::InlineBytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }),
        },
        _ => return Err(err(name, format!("{at}.action"), "only route, redirect and direct_response are supported")),
    };
    Ok((route, hash))
}

fn forward(route: &mut Route, a: &EnvoyRouteAction, at: &str, name: &str) -> Result<RouteAction, ImportError> {
    let clusters = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => vec![WeightedCluster::only(c)],
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| WeightedCluster {
                cluster: c.name.clone(),
                weight: c.weight.as_ref().map_or(0, |w| w.value),
                headers: header_ops(
                    &c.request_headers_to_add,
                    &c.request_headers_to_remove,
                    &c.response_headers_to_add,
                    &c.response_headers_to_remove,
                ),
            })
            .collect(),
        _ => {
            return Err(err(
                name,
                format!("{at}.route.cluster_specifier"),
                "a cluster or weighted clusters are required",
            ))
        }
    };
    route.timeout = a.timeout.as_ref().map(duration).filter(|d| !d.is_zero());
    route.retry = a.retry_policy.as_ref().map(retry_policy);
    route.mirrors = a
        .request_mirror_policies
        .iter()
        .map(|m| MirrorPolicy {
            cluster: m.cluster.clone(),
            percent: m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()).map_or(100.0, percent),
        })
        .collect();
    let rewrite = Rewrite {
        uri_prefix: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        uri_regex: a
            .regex_rewrite
            .as_ref()
            .map(|r| (r.pattern.as_ref().map(|p| p.regex.clone()).unwrap_or_default(), r.substitution.clone())),
        authority: match &a.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
            _ => None,
        },
    };
    route.rewrite = (rewrite.uri_prefix.is_some() || rewrite.uri_regex.is_some() || rewrite.authority.is_some())
        .then(|| Box::new(rewrite));
    Ok(RouteAction::Forward { clusters })
}

fn retry_policy(r: &EnvoyRetryPolicy) -> Box<RetryPolicy> {
    let (retry_on, _) = RetryOn::parse(&r.retry_on);
    let backoff = r.retry_back_off.as_ref();
    Box::new(RetryPolicy {
        attempts: r.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: r.per_try_timeout.as_ref().map(duration),
        retry_on,
        retriable_status_codes: r.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
        backoff_base: backoff
            .and_then(|b| b.base_interval.as_ref())
            .map_or(std::time::Duration::from_millis(25), duration),
        backoff_max: backoff
            .and_then(|b| b.max_interval.as_ref())
            .map_or(std::time::Duration::from_millis(250), duration),
        retry_other_hosts: r
            .retry_host_predicate
            .iter()
            .any(|p| p.name == "envoy.retry_host_predicates.previous_hosts"),
    })
}

fn percent(f: &FractionalPercent) -> f64 {
    let scale = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 1.0,
        Ok(DenominatorType::TenThousand) => 100.0,
        _ => 10_000.0,
    };
    f.numerator as f64 / scale
}

fn header_ops(
    request_add: &[HeaderValueOption],
    request_remove: &[String],
    response_add: &[HeaderValueOption],
    response_remove: &[String],
) -> HeaderOps {
    let split = |options: &[HeaderValueOption]| {
        let mut set = Vec::new();
        let mut add = Vec::new();
        for o in options {
            let Some(h) = &o.header else { continue };
            let pair = (h.key.clone(), h.value.clone());
            match HeaderAppendAction::try_from(o.append_action) {
                Ok(HeaderAppendAction::AppendIfExistsOrAdd) => add.push(pair),
                _ => set.push(pair),
            }
        }
        (set, add)
    };
    let (request_set, request_add) = split(request_add);
    let (response_set, response_add) = split(response_add);
    HeaderOps {
        request_set,
        request_add,
        request_remove: request_remove.to_vec(),
        response_set,
        response_add,
        response_remove: response_remove.to_vec(),
    }
}

fn fault(f: &HttpFault) -> FaultPolicy {
    FaultPolicy {
        delay: f.delay.as_ref().and_then(|d| match d.fault_delay_secifier.as_ref()? {
            FaultDelaySecifier::FixedDelay(fixed) => {
                Some(FaultDelay { delay: duration(fixed), percent: d.percentage.as_ref().map_or(100.0, percent) })
            }
            _ => None,
        }),
        abort: f.abort.as_ref().and_then(|a| {
            let status = match a.error_type.as_ref()? {
                ErrorType::HttpStatus(code) => AbortStatus::Http(u16::try_from(*code).ok()?),
                ErrorType::GrpcStatus(code) => AbortStatus::Grpc(*code),
                _ => return None,
            };
            Some(FaultAbort { status, percent: a.percentage.as_ref().map_or(100.0, percent) })
        }),
    }
}

fn cors(c: &EnvoyCors) -> CorsPolicy {
    let list = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>();
    CorsPolicy {
        allow_origins: c.allow_origin_string_match.iter().filter_map(string_matcher).collect(),
        allow_methods: list(&c.allow_methods),
        allow_headers: list(&c.allow_headers),
        expose_headers: list(&c.expose_headers),
        max_age: c.max_age.parse().ok().map(std::time::Duration::from_secs),
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
    }
}
