//! Clusters: outbound per service, port and subset under the DestinationRule
//! that applies (its traffic policies merged as Istio merges them), and a
//! sidecar's inbound ones to the local app.

use super::*;

impl<'a> Translator<'a> {
    /// The DestinationRule for a host, by Istio's precedence: the proxy's
    /// namespace, then the service's, then the root namespace; an exact host
    /// before a wildcard.
    pub(super) fn destination_rule(&self, host: &str, service_ns: &str) -> Option<&'a DestinationRule> {
        let mut best: Option<(u8, u8, &'a DestinationRule)> = None;
        for (dr_host, (r, dr)) in self.destination_rules.covering(host) {
            if let Some(sel) = &dr.workload_selector {
                if r.meta.namespace != self.proxy.namespace || !labels_match(&sel.match_labels, &self.proxy.labels) {
                    continue;
                }
            }
            let ns_rank = if r.meta.namespace == self.proxy.namespace {
                0
            } else if r.meta.namespace == service_ns {
                1
            } else if r.meta.namespace == self.mesh_config.root_namespace {
                2
            } else {
                3
            };
            let host_rank = u8::from(dr_host != host);
            if best.is_none_or(|(n, h, _)| (ns_rank, host_rank) < (n, h)) {
                best = Some((ns_rank, host_rank, dr));
            }
        }
        best.map(|(_, _, dr)| dr)
    }

    /// Outbound clusters and their endpoints, for the visible services
    /// `wanted` accepts.
    pub(super) fn outbound_clusters(
        &self,
        wanted: impl Fn(&str) -> bool,
    ) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
        let mut clusters = Vec::new();
        let mut assignments = Vec::new();
        for state in self.services.iter().filter(|s| wanted(&s.service.hostname)) {
            let svc = &state.service;
            let dr = self.destination_rule(&svc.hostname, &svc.namespace);
            for port in &svc.ports {
                let base_policy = dr.and_then(|d| d.traffic_policy.as_ref());
                let mut variants: Vec<(Option<&str>, Option<&Labels>, Option<&TrafficPolicy>)> =
                    vec![(None, None, base_policy)];
                for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                    variants.push((Some(&subset.name), Some(&subset.labels), subset.traffic_policy.as_ref()));
                }
                for (subset, labels, subset_policy) in variants {
                    let policy = effective_policy(base_policy, subset_policy.filter(|_| subset.is_some()), port.port);
                    let name = cluster_name("outbound", port.port, subset, &svc.hostname);
                    let tls = self.upstream_tls(state, port, subset, policy.tls.as_ref());
                    let cluster = build_cluster(&name, svc, port, subset, &policy, tls);
                    let failover = self.failover(&cluster).map(<[_]>::to_vec);
                    clusters.push(cluster);
                    if svc.resolution != Resolution::Passthrough {
                        let mut endpoints: Vec<LbEndpoint> = state
                            .endpoints
                            .iter()
                            .filter(|e| labels.is_none_or(|l| labels_match(l, &e.labels)))
                            .map(|e| LbEndpoint {
                                address: e.address.clone(),
                                port: e.port_for(port),
                                weight: e.weight.max(1),
                                locality: e.locality.clone(),
                                health: e.health,
                                mtls_ready: mtls::endpoint_mtls_ready(e),
                                priority: 0,
                                workload: WorkloadMeta::of_endpoint(e, &svc.namespace),
                            })
                            .collect();
                        if let Some(rules) = &failover {
                            crate::lb::locality::assign_priorities(&mut endpoints, &self.proxy.locality, rules);
                        }
                        assignments.push(ClusterLoadAssignment { cluster_name: name, endpoints });
                    }
                }
            }
        }
        (clusters, assignments)
    }

    /// The failover rules when endpoints are to be ranked by locality, as
    /// Istio ranks them: locality balancing on (the mesh default), no
    /// `distribute` or `failoverPriority`, outlier detection set (without
    /// it a dead endpoint would never fail over), and the proxy's
    /// locality known.
    pub(super) fn failover<'c>(&self, cluster: &'c Cluster) -> Option<&'c [(String, String)]> {
        let setting = cluster.locality_lb.as_ref()?;
        let by_locality = setting.distribute.is_empty() && setting.failover_priority.is_empty();
        let applies = by_locality && cluster.outlier_detection.is_some() && !self.proxy.locality.region.is_empty();
        applies.then_some(setting.failover.as_slice())
    }

    /// A cluster's TLS: the DestinationRule's, or auto mTLS.
    pub(super) fn upstream_tls(
        &self,
        state: &ServiceState,
        port: &ServicePort,
        subset: Option<&str>,
        rule: Option<&istio::ClientTlsSettings>,
    ) -> Option<UpstreamTls> {
        let svc = &state.service;
        let root = &self.mesh_config.root_namespace;
        let destination = mtls::Destination {
            service: svc,
            port: port.port,
            subset,
            http2: matches!(port.protocol, Protocol::Http2 | Protocol::Grpc),
            identities: mtls::service_identities(&self.mesh_config.trust_domain, svc, &state.endpoints),
            namespace_mode: peer_authentication::effective(
                root,
                &svc.namespace,
                &Labels::new(),
                &self.peer_authentications,
            )
            .mode,
        };
        mtls::upstream_tls(rule, &destination, self.mesh_config)
    }

    pub(super) fn clusters(&self) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
        let (mut clusters, mut assignments) = self.outbound_clusters(|_| true);
        if self.proxy.kind == ProxyKind::Sidecar {
            for (port, svc) in self.inbound_ports() {
                let name = cluster_name("inbound", port.port, None, "");
                let target = port.target_port.unwrap_or(port.port);
                clusters.push(Cluster {
                    name: name.clone(),
                    // The service the port serves, for the server's metrics.
                    service: svc.hostname.clone(),
                    port: target,
                    subset: None,
                    discovery: DiscoveryType::Static,
                    protocol: port.protocol,
                    lb: LbPolicy::RoundRobin,
                    locality_lb: None,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    circuit_breakers: CircuitBreakerThresholds::default(),
                    max_requests_per_connection: None,
                    idle_timeout: None,
                    outlier_detection: None,
                    tls: None,
                    retry_budget: None,
                });
                let mut local = crate::model::Endpoint::new("127.0.0.1");
                local.weight = 1;
                assignments.push(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LbEndpoint {
                        address: local.address,
                        port: target,
                        weight: 1,
                        locality: Default::default(),
                        health: Default::default(),
                        mtls_ready: false,
                        priority: 0,
                        workload: None,
                    }],
                });
            }
        }
        (clusters, assignments)
    }

    /// Ports of the services this sidecar's workload serves.
    pub(super) fn inbound_ports(&self) -> Vec<(ServicePort, &'a Service)> {
        let mut ports: BTreeMap<u16, (ServicePort, &'a Service)> = BTreeMap::new();
        for state in self.all_services.values() {
            let serves = state.endpoints.iter().any(|e| {
                self.proxy.ip.as_deref() == Some(e.address.as_str())
                    || (!e.labels.is_empty()
                        && state.service.namespace == self.proxy.namespace
                        && labels_match(&e.labels, &self.proxy.labels))
            });
            if serves {
                for p in &state.service.ports {
                    let e = state.endpoints.iter().find(|e| {
                        self.proxy.ip.as_deref() == Some(e.address.as_str())
                            || labels_match(&e.labels, &self.proxy.labels)
                    });
                    let target = e.map(|e| e.port_for(p)).unwrap_or(p.port);
                    ports.entry(target).or_insert_with(|| {
                        (ServicePort { target_port: Some(target), port: target, ..p.clone() }, &*state.service)
                    });
                }
            }
        }
        ports.into_values().collect()
    }
}

/// Istio merges traffic policies section by section: port-level settings
/// override the top level for their port, and a subset's policy overrides
/// both.
pub(super) fn effective_policy(
    base: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> TrafficPolicy {
    let mut out = TrafficPolicy::default();
    for layer in [base, subset].into_iter().flatten() {
        overlay(&mut out, layer);
        if let Some(pl) =
            layer.port_level_settings.iter().find(|p| p.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)))
        {
            overlay(&mut out, &pl.as_policy());
        }
    }
    out
}

pub(super) fn overlay(out: &mut TrafficPolicy, layer: &TrafficPolicy) {
    if layer.load_balancer.is_some() {
        out.load_balancer.clone_from(&layer.load_balancer);
    }
    if layer.connection_pool.is_some() {
        out.connection_pool.clone_from(&layer.connection_pool);
    }
    if layer.outlier_detection.is_some() {
        out.outlier_detection.clone_from(&layer.outlier_detection);
    }
    if layer.tls.is_some() {
        out.tls.clone_from(&layer.tls);
    }
    if layer.retry_budget.is_some() {
        out.retry_budget.clone_from(&layer.retry_budget);
    }
}

pub(super) fn build_cluster(
    name: &str,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&str>,
    policy: &TrafficPolicy,
    tls: Option<UpstreamTls>,
) -> Cluster {
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| duration::parse(t).ok());
    let positive = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    let lb_settings = policy.load_balancer.as_ref();
    let lb = lb_policy(lb_settings, svc);
    let pool = policy.connection_pool.as_ref();
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let mut breakers = CircuitBreakerThresholds::default();
    if let Some(n) = positive(tcp.and_then(|t| t.max_connections)) {
        breakers.max_connections = n;
    }
    if let Some(n) = positive(http.and_then(|h| h.http1_max_pending_requests)) {
        breakers.max_pending_requests = n;
    }
    if let Some(n) = positive(http.and_then(|h| h.http2_max_requests)) {
        breakers.max_requests = n;
    }
    if let Some(n) = http.and_then(|h| h.max_retries).and_then(|v| u32::try_from(v).ok()) {
        breakers.max_retries = n;
    }
    let outlier = policy.outlier_detection.as_ref().map(|od| {
        let consecutive_5xx =
            od.consecutive_5xx_errors.or(od.consecutive_errors.and_then(|n| u32::try_from(n).ok())).unwrap_or(5);
        OutlierDetectionConfig {
            consecutive_5xx: (consecutive_5xx > 0).then_some(consecutive_5xx),
            consecutive_gateway_errors: od.consecutive_gateway_errors.filter(|n| *n > 0),
            consecutive_local_origin_failures: od.consecutive_local_origin_failures.filter(|n| *n > 0),
            split_external_local_origin_errors: od.split_external_local_origin_errors.unwrap_or(false),
            interval: parse(&od.interval).unwrap_or(Duration::from_secs(10)),
            base_ejection_time: parse(&od.base_ejection_time).unwrap_or(Duration::from_secs(30)),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: od.max_ejection_percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(10),
            min_health_percent: od.min_health_percent.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        }
    });
    Cluster {
        name: name.to_string(),
        service: svc.hostname.clone(),
        port: port.port,
        subset: subset.map(str::to_string),
        discovery: match svc.resolution {
            Resolution::Static => DiscoveryType::Eds,
            Resolution::Dns => DiscoveryType::Dns,
            Resolution::Passthrough => DiscoveryType::OriginalDst,
        },
        protocol: port.protocol,
        lb,
        // Istio's mesh default: locality balancing on, with no rules.
        locality_lb: match lb_settings.and_then(|l| l.locality_lb_setting.as_ref()) {
            None => Some(LocalityLbConfig::default()),
            Some(l) => Some(l).filter(|l| l.enabled != Some(false)).map(|l| LocalityLbConfig {
                distribute: l
                    .distribute
                    .iter()
                    .map(|d| (d.from.clone(), d.to.iter().map(|(k, v)| (k.clone(), *v)).collect()))
                    .collect(),
                failover: l.failover.iter().map(|f| (f.from.clone(), f.to.clone())).collect(),
                failover_priority: l.failover_priority.clone(),
            }),
        },
        connect_timeout: parse(&tcp.and_then(|t| t.connect_timeout.clone())).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        circuit_breakers: breakers,
        max_requests_per_connection: positive(http.and_then(|h| h.max_requests_per_connection)),
        idle_timeout: parse(&http.and_then(|h| h.idle_timeout.clone())),
        outlier_detection: outlier,
        tls,
        retry_budget: policy.retry_budget.as_ref().map(|b| RetryBudgetConfig {
            percent: b.percent.unwrap_or(20.0),
            min_retry_concurrency: b.min_retry_concurrency.unwrap_or(3),
        }),
    }
}

pub(super) fn lb_policy(lb: Option<&istio::LoadBalancerSettings>, svc: &Service) -> LbPolicy {
    if svc.resolution == Resolution::Passthrough {
        return LbPolicy::Passthrough;
    }
    let Some(lb) = lb else { return LbPolicy::LeastRequest { choice_count: 2 } };
    if let Some(ch) = &lb.consistent_hash {
        let hash = if let Some(h) = &ch.http_header_name {
            HashPolicy::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashPolicy::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.as_deref().and_then(|t| duration::parse(t).ok()),
            }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashPolicy::QueryParameter(q.clone())
        } else {
            HashPolicy::SourceIp
        };
        return match &ch.maglev {
            Some(m) => {
                LbPolicy::Maglev { table_size: m.table_size.unwrap_or(crate::lb::maglev::DEFAULT_TABLE_SIZE), hash }
            }
            None => LbPolicy::RingHash {
                minimum_ring_size: ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024),
                hash,
            },
        };
    }
    match lb.simple {
        Some(istio::SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(istio::SimpleLb::Random) => LbPolicy::Random,
        Some(istio::SimpleLb::Passthrough) => LbPolicy::Passthrough,
        // Istio's default (UNSPECIFIED) is LEAST_REQUEST; LEAST_CONN is its
        // deprecated alias.
        _ => LbPolicy::LeastRequest { choice_count: 2 },
    }
}
