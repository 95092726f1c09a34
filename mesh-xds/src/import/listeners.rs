//! LDS -> listeners: HTTP connection managers over RDS, TCP proxies, TLS
//! from files.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType as SocketConfig, TrafficDirection as EnvoyDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, Filter as EnvoyFilter, FilterChain as EnvoyFilterChain,
    Listener as EnvoyListener,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use mesh_core::jwt::JwtProvider;
use mesh_core::model::Protocol;
use mesh_core::proxy_config::{
    ChainAction, FilterChain, HeaderOps, Listener, ServerTls, TrafficDirection, WeightedCluster,
};
use mesh_core::rate_limit::LocalRateLimit;
use mesh_core::rbac::RbacFilter;
use mesh_core::translate::ProxyKind;

use super::{decode, endpoints::socket_address, ImportError};

const KIND: &str = "Listener";

/// `kind` says what Envoy cannot: an outbound listener of a gateway is a
/// gateway listener.
pub fn listener(l: &EnvoyListener, kind: ProxyKind) -> Result<Listener, ImportError> {
    let err = |field: String, msg: &str| ImportError::new(KIND, &l.name, field, msg);
    let (address, port) = socket_address(l.address.as_ref())
        .ok_or_else(|| err("address".into(), "a socket address with a port value is required"))?;
    let direction = match (EnvoyDirection::try_from(l.traffic_direction), kind) {
        (Ok(EnvoyDirection::Inbound), _) => TrafficDirection::Inbound,
        (_, ProxyKind::Gateway) => TrafficDirection::Gateway,
        _ => TrafficDirection::Outbound,
    };
    let filter_chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(c, &format!("filter_chains[{i}]"), &l.name))
        .collect::<Result<Vec<_>, _>>()?;
    chains_alike(&filter_chains)
        .map_err(|(i, what)| err(format!("filter_chains[{i}].filters"), &format!("{what} is not supported")))?;
    Ok(Listener {
        name: l.name.clone(),
        address,
        port,
        direction,
        // Istio's virtualInbound reads the original destination with the
        // listener filter alone; virtualOutbound also hands connections on.
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value)
            || l.listener_filters.iter().any(|f| f.name == ORIGINAL_DST_FILTER),
        bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        filter_chains,
    })
}

/// mesh-proxy keeps one RBAC per destination port and kind (HTTP or TCP)
/// of a listener, and one set of JWT providers, as istiod writes them;
/// the index of a chain that differs, and how.
fn chains_alike(chains: &[FilterChain]) -> Result<(), (usize, &'static str)> {
    let kind = |c: &FilterChain| (c.destination_port, matches!(c.action, ChainAction::Tcp { .. }));
    let jwt = |c: &&FilterChain| !c.request_authentication.is_empty();
    for (i, c) in chains.iter().enumerate() {
        if chains[..i].iter().any(|o| kind(o) == kind(c) && o.rbac != c.rbac) {
            return Err((i, "RBAC differing between chains of one port and kind (by SNI)"));
        }
        if jwt(&c) && chains[..i].iter().filter(jwt).any(|o| o.request_authentication != c.request_authentication) {
            return Err((i, "JWT providers differing between chains"));
        }
    }
    Ok(())
}

const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";

/// HTTP filters mesh-proxy runs from a route's own config (fault, CORS)
/// or not at all (the router is its own); RBAC is taken apart
/// ([`http_rbac`]).
const FOLLOWED_HTTP_FILTERS: &[&str] = &[
    "envoy.filters.http.router",
    "envoy.filters.http.fault",
    "envoy.filters.http.cors",
    RBAC_HTTP_FILTER,
    LOCAL_RATE_LIMIT_FILTER,
    JWT_FILTER,
];

const RBAC_HTTP_FILTER: &str = "envoy.filters.http.rbac";
const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const JWT_FILTER: &str = crate::envoy::jwt::FILTER;
const RBAC_NETWORK_FILTER: &str = "envoy.filters.network.rbac";

/// A security or traffic filter mesh-proxy does not take over xDS:
/// refused, naming it, rather than run without it.
fn refuse_unenforced_filters(hcm: &HttpConnectionManager) -> Result<(), String> {
    match hcm.http_filters.iter().find(|f| !FOLLOWED_HTTP_FILTERS.contains(&f.name.as_str())) {
        Some(f) => Err(format!(
            "HTTP filter {} is not enforced by mesh-proxy over xDS: refused rather than ignored (give mesh-proxy the policies from its config sources)",
            f.name
        )),
        None => Ok(()),
    }
}

/// The configs of the HCM's filters named `name`, in order, each with
/// where it is (`at` locates the HCM).
fn http_filter_configs<M: prost::Message + Default + prost::Name>(
    hcm: &HttpConnectionManager,
    name: &str,
    at: &str,
) -> Result<Vec<(String, M)>, (String, String)> {
    let mut out = Vec::new();
    for (i, f) in hcm.http_filters.iter().enumerate().filter(|(_, f)| f.name == name) {
        let at = format!("{at}.http_filters[{i}].typed_config");
        let Some(HttpFilterConfig::TypedConfig(any)) = &f.config_type else {
            return Err((at, "a typed_config is required".into()));
        };
        let config = decode(any, KIND).map_err(|e| (at.clone(), e.message))?;
        out.push((at, config));
    }
    Ok(out)
}

/// The HCM's RBAC filters, in order (a filter without rules enforces
/// nothing, as in Envoy).
fn http_rbac(hcm: &HttpConnectionManager, at: &str) -> Result<Vec<RbacFilter>, (String, String)> {
    let mut out = Vec::new();
    for (at, config) in http_filter_configs::<HttpRbac>(hcm, RBAC_HTTP_FILTER, at)? {
        if config.matcher.is_some() {
            return Err((format!("{at}.matcher"), "the matcher form of RBAC is not supported".into()));
        }
        if let Some(rules) = &config.rules {
            out.push(super::rbac::filter(rules, &format!("{at}.rules"))?);
        }
    }
    Ok(out)
}

/// The HCM's JWT providers (one jwt_authn filter at most).
fn http_jwt(hcm: &HttpConnectionManager, at: &str) -> Result<Vec<JwtProvider>, (String, String)> {
    match http_filter_configs::<JwtAuthentication>(hcm, JWT_FILTER, at)?.as_slice() {
        [] => Ok(Vec::new()),
        [(at, config)] => super::jwt::providers(config, at),
        [_, (at, _), ..] => Err((at.clone(), "a second JWT filter is not supported".into())),
    }
}

/// The HCM's local rate limits: a token bucket on every request, 429 when
/// empty. A filter Envoy neither enables nor enforces (its default) is
/// left out, as it limits nothing; what mesh-proxy cannot do (descriptors,
/// a share of requests, per-connection buckets, another status) is refused.
fn http_local_rate_limits(hcm: &HttpConnectionManager, at: &str) -> Result<Vec<LocalRateLimit>, (String, String)> {
    let mut out = Vec::new();
    for (at, l) in http_filter_configs::<EnvoyLocalRateLimit>(hcm, LOCAL_RATE_LIMIT_FILTER, at)? {
        let share =
            |p: &Option<RuntimeFractionalPercent>| p.as_ref().and_then(|p| p.default_value).map_or(0.0, percent);
        let refused = |field: &str, what: &str| Err((format!("{at}.{field}"), format!("{what} is not supported")));
        let (enabled, enforced) = (share(&l.filter_enabled), share(&l.filter_enforced));
        if enabled <= 0.0 {
            continue;
        }
        if enabled < 100.0 || enforced < 100.0 {
            return refused("filter_enforced", "limiting a share of requests");
        }
        if !l.descriptors.is_empty() {
            return refused("descriptors", "descriptors");
        }
        if l.local_rate_limit_per_downstream_connection {
            return refused("local_rate_limit_per_downstream_connection", "a bucket per connection");
        }
        if l.status.as_ref().is_some_and(|s| s.code != 429) {
            return refused("status", "a status other than 429");
        }
        let Some(bucket) = &l.token_bucket else { return Err((format!("{at}.token_bucket"), "required".into())) };
        let response_headers = l
            .response_headers_to_add
            .iter()
            .filter_map(|h| h.header.as_ref().map(|h| (h.key.clone(), h.value.clone())))
            .collect();
        out.push(LocalRateLimit {
            max_tokens: bucket.max_tokens,
            tokens_per_fill: bucket.tokens_per_fill.as_ref().map_or(1, |t| t.value),
            fill_interval: bucket.fill_interval.as_ref().map_or(std::time::Duration::ZERO, super::duration),
            context: "ANY".into(),
            response_headers,
        });
    }
    Ok(out)
}

/// A `FractionalPercent` as a percentage.
fn percent(p: FractionalPercent) -> f64 {
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    f64::from(p.numerator) * 100.0 / denominator
}

/// A network RBAC filter ahead of the chain's proxy filter.
fn network_rbac(filter: &EnvoyFilter, at: &str) -> Result<Option<RbacFilter>, (String, String)> {
    let at = format!("{at}.typed_config");
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        return Err((at, "a typed_config is required".into()));
    };
    let config: NetworkRbac = decode(any, KIND).map_err(|e| (at.clone(), e.message))?;
    if config.matcher.is_some() {
        return Err((format!("{at}.matcher"), "the matcher form of RBAC is not supported".into()));
    }
    config.rules.as_ref().map(|rules| super::rbac::filter(rules, &format!("{at}.rules"))).transpose()
}

fn filter_chain(c: &EnvoyFilterChain, at: &str, name: &str) -> Result<FilterChain, ImportError> {
    let err = |field: String, msg: String| ImportError::new(KIND, name, field, msg);
    let matching = c.filter_chain_match.clone().unwrap_or_default();
    // Network RBAC filters, then the one that proxies.
    let Some((filter, guards)) = c.filters.split_last() else {
        return Err(err(format!("{at}.filters"), "a network filter is required".into()));
    };
    let mut rbac = Vec::new();
    let mut local_rate_limits = Vec::new();
    let mut request_authentication = Vec::new();
    for (i, guard) in guards.iter().enumerate() {
        let field = format!("{at}.filters[{i}]");
        if guard.name != RBAC_NETWORK_FILTER {
            return Err(err(format!("{field}.name"), format!("network filter {} is not supported", guard.name)));
        }
        rbac.extend(network_rbac(guard, &field).map_err(|(field, message)| err(field, message))?);
    }
    let last = c.filters.len() - 1;
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        return Err(err(format!("{at}.filters[{last}]"), "a typed_config is required".into()));
    };
    let located =
        |e: ImportError| ImportError { name: name.into(), field: format!("{at}.filters[{last}].typed_config"), ..e };
    let action = match filter.name.as_str() {
        "envoy.filters.network.http_connection_manager" => {
            let hcm: HttpConnectionManager = decode(any, KIND).map_err(located)?;
            let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
                return Err(err(format!("{at}.filters[{last}].route_specifier"), "routes must come from RDS".into()));
            };
            refuse_unenforced_filters(&hcm).map_err(|e| err(format!("{at}.filters[{last}].http_filters"), e))?;
            let hcm_at = format!("{at}.filters[{last}]");
            rbac.extend(http_rbac(&hcm, &hcm_at).map_err(|(field, message)| err(field, message))?);
            local_rate_limits =
                http_local_rate_limits(&hcm, &hcm_at).map_err(|(field, message)| err(field, message))?;
            request_authentication = http_jwt(&hcm, &hcm_at).map_err(|(field, message)| err(field, message))?;
            let protocol = match CodecType::try_from(hcm.codec_type) {
                Ok(CodecType::Http2) => Protocol::Http2,
                _ => Protocol::Http,
            };
            ChainAction::Http { route_config: rds.route_config_name.clone(), protocol }
        }
        "envoy.filters.network.tcp_proxy" => {
            let tcp: TcpProxy = decode(any, KIND).map_err(located)?;
            let clusters = match &tcp.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => vec![WeightedCluster::only(c)],
                Some(ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| WeightedCluster {
                        cluster: c.name.clone(),
                        weight: c.weight,
                        headers: HeaderOps::default(),
                    })
                    .collect(),
                None => {
                    return Err(err(format!("{at}.filters[{last}].cluster_specifier"), "a cluster is required".into()))
                }
            };
            ChainAction::Tcp { clusters }
        }
        other => {
            return Err(err(format!("{at}.filters[{last}].name"), format!("network filter {other} is not supported")))
        }
    };
    let tls = match &c.transport_socket {
        Some(socket) => match &socket.config_type {
            Some(SocketConfig::TypedConfig(any)) => {
                let ctx = decode::<DownstreamTlsContext>(any, KIND).map_err(located)?;
                Some(super::tls::downstream(&ctx).map_err(|e| err(format!("{at}.transport_socket"), e))?)
            }
            None => None,
        },
        // SNI names without termination: TLS passed through.
        None if !matching.server_names.is_empty() => Some(ServerTls {
            mode: "PASSTHROUGH".into(),
            certificate_chain: None,
            private_key: None,
            ca_certificates: None,
            credential_name: None,
            alpn: Vec::new(),
            peer_trust_domains: Vec::new(),
        }),
        None => None,
    };
    Ok(FilterChain {
        server_names: matching.server_names.clone(),
        destination_port: matching.destination_port.as_ref().and_then(|p| u16::try_from(p.value).ok()),
        tls,
        action,
        rbac,
        local_rate_limits,
        request_authentication,
    })
}
