//! LDS: listeners with their filter chains (HTTP connection manager over
//! RDS, or TCP proxy), and for proxyless gRPC the `api_listener`s its xDS
//! resolver looks up by `host:port`.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection as EnvoyDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, listener_filter::ConfigType as ListenerFilterConfig, ApiListener, Filter,
    FilterChain as EnvoyFilterChain, FilterChainMatch, Listener as EnvoyListener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails},
    http_filter::ConfigType as HttpFilterConfig,
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster},
    TcpProxy,
};
use mesh_core::proxy_config::{
    AuthorizationPolicyRef, ChainAction, FilterChain, Listener, ProxyConfig, TrafficDirection,
    WeightedCluster as MeshWeighted,
};

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent, TokenBucket};
use mesh_core::rate_limit::LocalRateLimit;

use super::jwt::{self, JwksLookup};
use super::rbac;
use super::routes::header_options;
use super::routes::{CORS_FILTER, FAULT_FILTER};
use super::{ads, any, boolean, duration, endpoints::socket_address, uint32};

/// `None` when no chain of the listener can be expressed: Envoy refuses a
/// listener without filter chains, and a connection nothing matches is
/// closed either way.
pub(super) fn listener(
    l: &Listener,
    cfg: &ProxyConfig,
    jwks: &dyn JwksLookup,
    unsupported: &mut Vec<String>,
) -> Option<EnvoyListener> {
    // Authentication and authorization are the workload's: its inbound
    // and gateway traffic.
    let side = Side::of(l.direction);
    let policies = if side == Side::Outbound { &[][..] } else { &cfg.authorization[..] };
    let authn = (side != Side::Outbound)
        .then(|| jwt::authentication(&cfg.request_authentication, jwks, unsupported))
        .flatten()
        .map(|config| HttpFilter {
            name: jwt::FILTER.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&config))),
            ..Default::default()
        });
    let limits: Vec<&LocalRateLimit> = cfg.local_rate_limits.iter().filter(|r| side.takes(&r.context)).collect();
    let telemetry = cfg.telemetry.side(side != Side::Inbound);
    let security = Security { authn, policies, limits: &limits, telemetry: (telemetry, &cfg.telemetry) };
    let chains: Vec<EnvoyFilterChain> =
        l.filter_chains.iter().filter_map(|c| filter_chain(c, l, &security, unsupported)).collect();
    if chains.is_empty() {
        return None;
    }
    let sniffs_tls = l.filter_chains.iter().any(|c| !c.server_names.is_empty() || splits_by_transport(l));
    let mut listener_filters = Vec::new();
    if l.use_original_dst {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(any(&OriginalDst::default()))),
            ..Default::default()
        });
    }
    if sniffs_tls {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(any(&TlsInspector::default()))),
            ..Default::default()
        });
    }
    Some(EnvoyListener {
        name: l.name.clone(),
        address: Some(socket_address(&l.address, l.port)),
        filter_chains: chains,
        listener_filters,
        // Hand-off to the listener of the original destination is for
        // outbound only, as Istio builds it: virtualInbound picks its chain
        // by the original port, and handing off would send inbound
        // connections to the outbound listener of the same port.
        use_original_dst: (l.use_original_dst && l.direction == TrafficDirection::Outbound)
            .then(|| boolean(true))
            .flatten(),
        bind_to_port: (!l.bind_to_port).then(|| boolean(false)).flatten(),
        traffic_direction: match l.direction {
            TrafficDirection::Inbound => EnvoyDirection::Inbound,
            TrafficDirection::Outbound | TrafficDirection::Gateway => EnvoyDirection::Outbound,
        } as i32,
        ..Default::default()
    })
}

/// An inbound port's chains (and the passthrough chains for the ports no
/// Service declares) are told apart by what arrives: mTLS or plaintext
/// (PERMISSIVE has both), as Istio matches `transport_protocol`.
fn splits_by_transport(l: &Listener) -> bool {
    l.direction == TrafficDirection::Inbound
}

/// What an HTTP chain runs before routing: JWT authentication, then
/// authorization, then local rate limits.
struct Security<'a> {
    authn: Option<HttpFilter>,
    policies: &'a [AuthorizationPolicyRef],
    limits: &'a [&'a LocalRateLimit],
    /// And what it reports: spans and the access log of its side.
    telemetry: (&'a mesh_core::telemetry::SideTelemetry, &'a mesh_core::telemetry::TelemetryConfig),
}

/// `None` for a TLS chain whose certificate Envoy could not load: its
/// `credentialName` needs SDS, which this server does not serve yet.
fn filter_chain(
    c: &FilterChain,
    l: &Listener,
    security: &Security<'_>,
    unsupported: &mut Vec<String>,
) -> Option<EnvoyFilterChain> {
    let Security { authn, policies, limits, telemetry: (telemetry, all_telemetry) } = security;
    let transport_socket = match &c.tls {
        Some(tls) if tls.mode != "PASSTHROUGH" => Some(super::tls::downstream(tls)?),
        _ => None,
    };
    let tcp = matches!(c.action, ChainAction::Tcp { .. });
    let rbac = rbac::filters(policies, tcp, unsupported);
    let mut filters = Vec::new();
    match &c.action {
        ChainAction::Http { route_config, .. } => {
            let mut hcm = http_connection_manager(&l.name, route_config, Side::of(l.direction), true);
            hcm.tracing = super::telemetry::tracing(telemetry);
            hcm.access_log = super::telemetry::access_logs(telemetry, all_telemetry);
            let authz = rbac.into_iter().map(|(_, rules)| HttpFilter {
                name: rbac::HTTP_FILTER.into(),
                config_type: Some(HttpFilterConfig::TypedConfig(any(&rbac::http_config(rules)))),
                ..Default::default()
            });
            let limited = limits.iter().map(|r| HttpFilter {
                name: LOCAL_RATE_LIMIT.into(),
                config_type: Some(HttpFilterConfig::TypedConfig(any(&local_rate_limit(r)))),
                ..Default::default()
            });
            hcm.http_filters.splice(0..0, authn.iter().cloned().chain(authz).chain(limited));
            filters.push(Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(FilterConfig::TypedConfig(any(&hcm))),
            });
        }
        ChainAction::Tcp { clusters } => {
            for (action, rules) in rbac {
                let prefix = format!("{}.{}.", l.name, action.to_ascii_lowercase());
                filters.push(Filter {
                    name: rbac::NETWORK_FILTER.into(),
                    config_type: Some(FilterConfig::TypedConfig(any(&rbac::network_config(&prefix, rules)))),
                });
            }
            filters.push(Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(FilterConfig::TypedConfig(any(&tcp_proxy(&l.name, clusters)))),
            });
        }
    }
    Some(EnvoyFilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: c.server_names.clone(),
            transport_protocol: match (&c.tls, splits_by_transport(l)) {
                (_, false) => String::new(),
                (Some(_), true) => "tls".into(),
                (None, true) => "raw_buffer".into(),
            },
            destination_port: c.destination_port.and_then(|p| uint32(u32::from(p))),
            ..Default::default()
        }),
        filters,
        transport_socket,
        ..Default::default()
    })
}

fn http_filter<T: prost::Message + prost::Name + Default>(name: &str) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(any(&T::default()))),
        ..Default::default()
    }
}

/// Fault and CORS filters are present but empty: routes turn them on with
/// per-route config. gRPC's xDS client knows only the router and fault.
/// Which side of the mesh a connection manager serves: what Istio sets
/// for `x-forwarded-for` and `x-forwarded-client-cert` follows from it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Outbound,
    /// A sidecar's inbound: the mTLS peer's identity is appended to XFCC.
    Inbound,
    /// A gateway: the client's address is the remote one, and an XFCC
    /// the client sent is replaced by what the gateway saw.
    Gateway,
}

impl Side {
    /// An EnvoyFilter's `context` covers this side.
    fn takes(self, context: &str) -> bool {
        match context {
            "SIDECAR_INBOUND" => self == Side::Inbound,
            "SIDECAR_OUTBOUND" => self == Side::Outbound,
            "GATEWAY" => self == Side::Gateway,
            _ => true,
        }
    }

    fn of(direction: TrafficDirection) -> Side {
        match direction {
            TrafficDirection::Inbound => Side::Inbound,
            TrafficDirection::Outbound => Side::Outbound,
            TrafficDirection::Gateway => Side::Gateway,
        }
    }
}

fn http_connection_manager(stat_prefix: &str, route_config: &str, side: Side, envoy: bool) -> HttpConnectionManager {
    let mut http_filters = vec![http_filter::<HttpFault>(FAULT_FILTER)];
    if envoy {
        http_filters.push(http_filter::<Cors>(CORS_FILTER));
    }
    http_filters.push(http_filter::<Router>("envoy.filters.http.router"));
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_string(),
        })),
        http_filters,
        use_remote_address: (side == Side::Gateway).then(|| boolean(true)).flatten(),
        forward_client_cert_details: match side {
            Side::Inbound => ForwardClientCertDetails::AppendForward,
            Side::Gateway => ForwardClientCertDetails::SanitizeSet,
            Side::Outbound => ForwardClientCertDetails::Sanitize,
        } as i32,
        set_current_client_cert_details: (side != Side::Outbound).then(|| SetCurrentClientCertDetails {
            subject: boolean(true),
            uri: true,
            dns: true,
            ..Default::default()
        }),
        // Istio's default pathNormalization (BASE): paths normalized
        // before routing (and authorization), as mesh-proxy does.
        normalize_path: envoy.then(|| boolean(true)).flatten(),
        ..Default::default()
    }
}

const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";

/// An EnvoyFilter's local rate limit, enforced on every request.
fn local_rate_limit(r: &LocalRateLimit) -> EnvoyLocalRateLimit {
    let all = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent { numerator: 100, denominator: DenominatorType::Hundred as i32 }),
        runtime_key: String::new(),
    };
    EnvoyLocalRateLimit {
        stat_prefix: "http_local_rate_limiter".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: r.max_tokens,
            tokens_per_fill: uint32(r.tokens_per_fill),
            fill_interval: Some(duration(r.fill_interval)),
        }),
        filter_enabled: Some(all()),
        filter_enforced: Some(all()),
        response_headers_to_add: header_options(&[], &r.response_headers),
        ..Default::default()
    }
}

fn tcp_proxy(stat_prefix: &str, clusters: &[MeshWeighted]) -> TcpProxy {
    let specifier = match clusters {
        [only] => ClusterSpecifier::Cluster(only.cluster.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|c| ClusterWeight { name: c.cluster.clone(), weight: c.weight, ..Default::default() })
                .collect(),
        }),
    };
    TcpProxy { stat_prefix: stat_prefix.to_string(), cluster_specifier: Some(specifier), ..Default::default() }
}

/// For gRPC: one `api_listener` per name a client may dial
/// (`reviews.default.svc.cluster.local:9080`, `reviews:9080`, ...), taken
/// from the outbound virtual hosts' domains, each pointing at the route
/// table that serves it.
pub(super) fn api_listeners(cfg: &ProxyConfig) -> Vec<(String, EnvoyListener)> {
    let mut out = std::collections::BTreeMap::new();
    for l in &cfg.listeners {
        for c in &l.filter_chains {
            let ChainAction::Http { route_config, .. } = &c.action else { continue };
            let Some(rc) = cfg.route_config(route_config) else { continue };
            for domain in rc.virtual_hosts.iter().flat_map(|vh| &vh.domains) {
                if domain.contains('*') || !domain.contains(':') {
                    continue;
                }
                out.entry(domain.clone()).or_insert_with(|| EnvoyListener {
                    name: domain.clone(),
                    api_listener: Some(ApiListener {
                        api_listener: Some(any(&http_connection_manager(domain, route_config, Side::Outbound, false))),
                    }),
                    ..Default::default()
                });
            }
        }
    }
    out.into_iter().collect()
}
