//! CDS -> clusters.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType as EnvoyDiscovery, LbConfig, LbPolicy as EnvoyLb},
    Cluster as EnvoyCluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_core::model::Protocol;
use mesh_core::proxy_config::{
    CircuitBreakerThresholds, Cluster, ClusterLoadAssignment, DiscoveryType, HashPolicy, LbPolicy,
    OutlierDetectionConfig, RetryBudgetConfig, UpstreamTls,
};

use super::{decode, duration, endpoints::load_assignment, ImportError};

const KIND: &str = "Cluster";

/// A cluster, and its endpoints when they come inline (DNS and static).
/// The first of Istio's `istio.services` (an inbound cluster's service).
fn metadata_service(c: &EnvoyCluster) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let istio = c.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Some(Kind::ListValue(services)) = istio.fields.get("services")?.kind.as_ref() else { return None };
    let Some(Kind::StructValue(first)) = services.values.first()?.kind.as_ref() else { return None };
    match first.fields.get("host")?.kind.as_ref() {
        Some(Kind::StringValue(host)) => Some(host.clone()),
        _ => None,
    }
}

pub fn cluster(c: &EnvoyCluster) -> Result<(Cluster, Option<ClusterLoadAssignment>), ImportError> {
    let err = |field: &str, msg: String| ImportError::new(KIND, &c.name, field, msg);
    let discovery = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => match EnvoyDiscovery::try_from(t) {
            Ok(EnvoyDiscovery::Eds) => DiscoveryType::Eds,
            Ok(EnvoyDiscovery::StrictDns | EnvoyDiscovery::LogicalDns) => DiscoveryType::Dns,
            Ok(EnvoyDiscovery::Static) => DiscoveryType::Static,
            Ok(EnvoyDiscovery::OriginalDst) => DiscoveryType::OriginalDst,
            Err(_) => return Err(err("type", format!("unknown discovery type {t}"))),
        },
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(err("cluster_type", "custom cluster types are not supported".into()))
        }
    };
    let (mut service, port, subset) = istio_name(&c.name);
    if service.is_empty() {
        service = metadata_service(c).unwrap_or_default();
    }
    let (protocol, idle_timeout, max_requests_per_connection) = protocol_options(c)?;
    let thresholds = c.circuit_breakers.as_ref().and_then(|cb| cb.thresholds.first());
    // Unset thresholds take Envoy's defaults: 1024 connections, pending and
    // requests, 3 retries.
    let limit = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, d: u32| v.map_or(d, |v| v.value);
    let inline = match discovery {
        DiscoveryType::Dns | DiscoveryType::Static => {
            c.load_assignment.as_ref().map(load_assignment).transpose()?.map(|mut la| {
                la.cluster_name = c.name.clone();
                la
            })
        }
        _ => None,
    };
    let cluster = Cluster {
        name: c.name.clone(),
        service,
        port,
        subset,
        discovery,
        protocol,
        lb: lb_policy(c)?,
        locality_lb: None,
        connect_timeout: c.connect_timeout.as_ref().map_or(std::time::Duration::from_secs(5), duration),
        circuit_breakers: CircuitBreakerThresholds {
            max_connections: limit(thresholds.and_then(|t| t.max_connections.as_ref()), 1024),
            max_pending_requests: limit(thresholds.and_then(|t| t.max_pending_requests.as_ref()), 1024),
            max_requests: limit(thresholds.and_then(|t| t.max_requests.as_ref()), 1024),
            max_retries: limit(thresholds.and_then(|t| t.max_retries.as_ref()), 3),
        },
        max_requests_per_connection,
        idle_timeout,
        outlier_detection: c.outlier_detection.as_ref().map(|od| outlier_detection(od, c)),
        tls: upstream_tls(c)?,
        retry_budget: thresholds.and_then(|t| t.retry_budget.as_ref()).map(|b| RetryBudgetConfig {
            percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
            min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
        }),
    };
    Ok((cluster, inline))
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local` -> service, port,
/// subset; other names are their own service.
fn istio_name(name: &str) -> (String, u16, Option<String>) {
    let parts: Vec<&str> = name.split('|').collect();
    match parts.as_slice() {
        [_, port, subset, host] => {
            (host.to_string(), port.parse().unwrap_or(0), (!subset.is_empty()).then(|| subset.to_string()))
        }
        _ => (name.to_string(), 0, None),
    }
}

fn protocol_options(c: &EnvoyCluster) -> Result<(Protocol, Option<std::time::Duration>, Option<u32>), ImportError> {
    let Some(any) = c.typed_extension_protocol_options.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    else {
        return Ok((Protocol::Tcp, None, None));
    };
    let options: HttpProtocolOptions = decode(any, KIND).map_err(|e| ImportError { name: c.name.clone(), ..e })?;
    let protocol = match &options.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => Protocol::Http2,
            _ => Protocol::Http,
        },
        _ => Protocol::Http,
    };
    let common = options.common_http_protocol_options.as_ref();
    Ok((
        protocol,
        common.and_then(|o| o.idle_timeout.as_ref()).map(duration),
        common.and_then(|o| o.max_requests_per_connection.as_ref()).map(|v| v.value),
    ))
}

/// The hash key comes from the routes (see `assemble`); source IP until then.
fn lb_policy(c: &EnvoyCluster) -> Result<LbPolicy, ImportError> {
    let policy = EnvoyLb::try_from(c.lb_policy)
        .map_err(|_| ImportError::new(KIND, &c.name, "lb_policy", format!("unknown policy {}", c.lb_policy)))?;
    Ok(match policy {
        EnvoyLb::RoundRobin => LbPolicy::RoundRobin,
        EnvoyLb::Random => LbPolicy::Random,
        EnvoyLb::LeastRequest => LbPolicy::LeastRequest {
            choice_count: match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => l.choice_count.as_ref().map_or(2, |v| v.value),
                _ => 2,
            },
        },
        EnvoyLb::RingHash => LbPolicy::RingHash {
            minimum_ring_size: match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.as_ref().map_or(1024, |v| v.value),
                _ => 1024,
            },
            hash: HashPolicy::SourceIp,
        },
        EnvoyLb::Maglev => LbPolicy::Maglev {
            table_size: match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map_or(65537, |v| v.value),
                _ => 65537,
            },
            hash: HashPolicy::SourceIp,
        },
        EnvoyLb::ClusterProvided => LbPolicy::Passthrough,
        other => return Err(ImportError::new(KIND, &c.name, "lb_policy", format!("{other:?} is not supported"))),
    })
}

fn outlier_detection(od: &OutlierDetection, c: &EnvoyCluster) -> OutlierDetectionConfig {
    // A threshold enforced at 0% is off (Istio's encoding of "not set").
    let enforced = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
                    e: Option<&envoy_types::pb::google::protobuf::UInt32Value>| {
        v.map(|v| v.value).filter(|_| e.is_none_or(|e| e.value > 0))
    };
    let d = |v: Option<&envoy_types::pb::google::protobuf::Duration>, default: u64| {
        v.map_or(std::time::Duration::from_secs(default), duration)
    };
    OutlierDetectionConfig {
        consecutive_5xx: enforced(od.consecutive_5xx.as_ref(), od.enforcing_consecutive_5xx.as_ref()),
        consecutive_gateway_errors: enforced(
            od.consecutive_gateway_failure.as_ref(),
            od.enforcing_consecutive_gateway_failure.as_ref(),
        ),
        consecutive_local_origin_failures: enforced(
            od.consecutive_local_origin_failure.as_ref(),
            od.enforcing_consecutive_local_origin_failure.as_ref(),
        ),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        interval: d(od.interval.as_ref(), 10),
        base_ejection_time: d(od.base_ejection_time.as_ref(), 30),
        max_ejection_time: d(od.max_ejection_time.as_ref(), 300),
        max_ejection_percent: od.max_ejection_percent.as_ref().map_or(10, |v| v.value),
        min_health_percent: c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(50, |p| p.value as u32),
    }
}

/// The cluster's TLS: its transport socket, or Istio's auto mTLS (the
/// `tlsMode: istio` socket match beside a plaintext one).
fn upstream_tls(c: &EnvoyCluster) -> Result<Option<UpstreamTls>, ImportError> {
    let err = |field: &str, msg: String| ImportError::new(KIND, &c.name, field, msg);
    let (socket, auto, field) = match (&c.transport_socket, c.transport_socket_matches.as_slice()) {
        (socket, []) => (socket.as_ref(), false, "transport_socket"),
        (None, matches) => {
            let istio = matches.iter().position(|m| {
                m.r#match.as_ref().is_some_and(|s| {
                    s.fields.len() == 1
                        && matches!(s.fields.get("tlsMode").and_then(|v| v.kind.as_ref()), Some(Kind::StringValue(v)) if v == "istio")
                })
            });
            let plain = |m: &TransportSocketMatch| {
                m.r#match.as_ref().is_none_or(|s| s.fields.is_empty())
                    && m.transport_socket.as_ref().is_none_or(|t| t.name == "envoy.transport_sockets.raw_buffer")
            };
            // Istio's layout: `tlsMode: istio`, and plaintext for the rest,
            // spelled out or left to the cluster's (absent) socket.
            match (istio, matches.len()) {
                (Some(i), 2) if plain(&matches[1 - i]) => {
                    (matches[i].transport_socket.as_ref(), true, "transport_socket_matches")
                }
                (Some(i), 1) => (matches[i].transport_socket.as_ref(), true, "transport_socket_matches"),
                _ => {
                    let msg = "only Istio's auto mTLS (`tlsMode: istio`, else plaintext) is supported".to_string();
                    return Err(err("transport_socket_matches", msg));
                }
            }
        }
        (Some(_), _) => {
            return Err(err("transport_socket_matches", "beside a transport_socket is not supported".into()))
        }
    };
    let Some(socket) = socket else { return Ok(None) };
    match &socket.config_type {
        Some(SocketConfig::TypedConfig(any)) if socket.name != "envoy.transport_sockets.raw_buffer" => {
            let ctx: UpstreamTlsContext =
                decode(any, KIND).map_err(|e| ImportError { name: c.name.clone(), field: field.into(), ..e })?;
            super::tls::upstream(ctx, auto).map(Some).map_err(|e| err(field, e))
        }
        _ => Ok(None),
    }
}
