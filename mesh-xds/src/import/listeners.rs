//! LDS -> listeners: HTTP connection managers over RDS, TCP proxies, TLS
//! from files.

use envoy_types::pb::envoy::config::core::v3::{
    transport_socket::ConfigType as SocketConfig, TrafficDirection as EnvoyDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter::ConfigType as FilterConfig, FilterChain as EnvoyFilterChain, Listener as EnvoyListener,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy::ClusterSpecifier, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use mesh_core::model::Protocol;
use mesh_core::proxy_config::{
    ChainAction, FilterChain, HeaderOps, Listener, ServerTls, TrafficDirection, WeightedCluster,
};
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

const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";

/// HTTP filters mesh-proxy runs from a route's own config (fault, CORS)
/// or not at all (the router is its own).
const FOLLOWED_HTTP_FILTERS: &[&str] =
    &["envoy.filters.http.router", "envoy.filters.http.fault", "envoy.filters.http.cors"];

/// A security or traffic filter mesh-proxy does not take over xDS yet
/// (authorization, JWT authentication, local rate limits, anything else):
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

fn filter_chain(c: &EnvoyFilterChain, at: &str, name: &str) -> Result<FilterChain, ImportError> {
    let err = |field: String, msg: String| ImportError::new(KIND, name, field, msg);
    let matching = c.filter_chain_match.clone().unwrap_or_default();
    let [filter] = c.filters.as_slice() else {
        return Err(err(
            format!("{at}.filters"),
            format!("exactly one network filter is supported, got {}", c.filters.len()),
        ));
    };
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        return Err(err(format!("{at}.filters[0]"), "a typed_config is required".into()));
    };
    let located =
        |e: ImportError| ImportError { name: name.into(), field: format!("{at}.filters[0].typed_config"), ..e };
    let action = match filter.name.as_str() {
        "envoy.filters.network.http_connection_manager" => {
            let hcm: HttpConnectionManager = decode(any, KIND).map_err(located)?;
            let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
                return Err(err(format!("{at}.filters[0].route_specifier"), "routes must come from RDS".into()));
            };
            refuse_unenforced_filters(&hcm).map_err(|e| err(format!("{at}.filters[0].http_filters"), e))?;
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
                None => return Err(err(format!("{at}.filters[0].cluster_specifier"), "a cluster is required".into())),
            };
            ChainAction::Tcp { clusters }
        }
        other => return Err(err(format!("{at}.filters[0].name"), format!("network filter {other} is not supported"))),
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
    })
}
