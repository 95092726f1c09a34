//! A sidecar's listeners: the capture listeners (15001 outbound, 15006
//! inbound, with the workload's PeerAuthentication), one per outbound HTTP
//! port with its route table, one per TCP service.

use super::*;

impl<'a> Translator<'a> {
    /// Where a sidecar's connections to what the mesh does not know go.
    pub(super) fn unknown_destinations(&self) -> &'static str {
        match self.outbound_mode {
            OutboundMode::AllowAny => OUTBOUND_PASSTHROUGH,
            OutboundMode::RegistryOnly => BLACKHOLE,
        }
    }

    pub(super) fn sidecar_listeners(&self, cfg: &mut ProxyConfig) {
        cfg.listeners.push(Listener {
            name: "virtualOutbound".into(),
            address: "0.0.0.0".into(),
            port: 15001,
            direction: TrafficDirection::Outbound,
            use_original_dst: true,
            bind_to_port: true,
            filter_chains: vec![FilterChain::new(ChainAction::Tcp {
                clusters: vec![WeightedCluster::only(self.unknown_destinations())],
            })],
        });
        // One HTTP listener and route table per HTTP port; TCP ports get a
        // TCP proxy per service.
        let mut http_ports: BTreeMap<u16, Vec<(&'a ServiceState, &'a ServicePort)>> = BTreeMap::new();
        let mut tcp_listeners: BTreeMap<(String, u16), Listener> = BTreeMap::new();
        for state in &self.services {
            for port in &state.service.ports {
                if port.protocol.is_http() || port.protocol == Protocol::Unknown {
                    http_ports.entry(port.port).or_default().push((state, port));
                } else {
                    let address = state.service.addresses.first().cloned().unwrap_or_else(|| "0.0.0.0".into());
                    let key = (address.clone(), port.port);
                    if tcp_listeners.contains_key(&key) {
                        continue;
                    }
                    let clusters = self.tcp_destinations(&state.service, port.port, None);
                    tcp_listeners.insert(
                        key,
                        port_listener(
                            &address,
                            port.port,
                            TrafficDirection::Outbound,
                            vec![FilterChain::new(ChainAction::Tcp { clusters })],
                        ),
                    );
                }
            }
        }
        for (port, services) in http_ports {
            let mut vhosts = Vec::new();
            for (state, svc_port) in services {
                let svc = &state.service;
                let routes = self
                    .routes_for_host(&svc.hostname, port, None)
                    .unwrap_or_else(|| vec![self.default_route(&svc.hostname, svc_port.port)]);
                vhosts.push(VirtualHost {
                    name: format!("{}:{}", svc.hostname, port),
                    domains: sidecar_domains(svc, port, &self.proxy.namespace),
                    routes,
                });
            }
            if self.outbound_mode == OutboundMode::RegistryOnly {
                vhosts.push(block_all());
            }
            let route_name = port.to_string();
            cfg.route_configs.push(Arc::new(RouteConfig { name: route_name.clone(), virtual_hosts: vhosts }));
            cfg.listeners.push(port_listener(
                "0.0.0.0",
                port,
                TrafficDirection::Outbound,
                vec![FilterChain::new(ChainAction::Http { route_config: route_name, protocol: Protocol::Http })],
            ));
        }
        cfg.listeners.extend(tcp_listeners.into_values());

        // Inbound: everything arriving on 15006 goes to the local app, as
        // the workload's PeerAuthentication says (mTLS, plaintext or both).
        let peer_authentication = peer_authentication::effective(
            &self.mesh_config.root_namespace,
            &self.proxy.namespace,
            &self.proxy.labels,
            &self.peer_authentications,
        );
        let mut chains = Vec::new();
        let mut declared = std::collections::BTreeSet::new();
        for (port, _svc) in self.inbound_ports() {
            let cluster = cluster_name("inbound", port.port, None, "");
            let action = if port.protocol.is_http() || port.protocol == Protocol::Unknown {
                let name = format!("inbound|{}||", port.port);
                cfg.route_configs.push(Arc::new(RouteConfig {
                    name: name.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: format!("inbound|http|{}", port.port),
                        domains: vec!["*".into()],
                        routes: vec![Route::forward("default", &cluster)],
                    }],
                }));
                ChainAction::Http { route_config: name, protocol: port.protocol }
            } else {
                ChainAction::Tcp {
                    clusters: vec![WeightedCluster { cluster, weight: 100, headers: HeaderOps::default() }],
                }
            };
            let target = port.target_port.unwrap_or(port.port);
            declared.insert(target);
            for tls in mtls::inbound_chains(peer_authentication.mode_for_port(target), self.mesh_config) {
                chains.push(FilterChain { destination_port: Some(target), tls, ..FilterChain::new(action.clone()) });
            }
        }
        // Ports no Service declares pass through to the app, with mTLS as
        // PeerAuthentication says (its port level, then the workload's).
        let undeclared = peer_authentication.per_port.iter().filter(|(p, _)| !declared.contains(*p));
        let passthrough = undeclared.map(|(p, mode)| (Some(*p), *mode)).chain([(None, peer_authentication.mode)]);
        for (port, mode) in passthrough {
            for tls in mtls::inbound_chains(mode, self.mesh_config) {
                chains.push(FilterChain {
                    destination_port: port,
                    tls,
                    ..FilterChain::new(ChainAction::Tcp { clusters: vec![WeightedCluster::only(INBOUND_PASSTHROUGH)] })
                });
            }
        }
        cfg.listeners.push(Listener {
            name: "virtualInbound".into(),
            address: "0.0.0.0".into(),
            port: 15006,
            direction: TrafficDirection::Inbound,
            use_original_dst: true,
            bind_to_port: true,
            filter_chains: chains,
        });
    }
}

/// The names a sidecar's app may use for a service, as Istio generates them.
pub(super) fn sidecar_domains(svc: &Service, port: u16, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let kube_suffix = format!(".{}.svc.{DOMAIN_SUFFIX}", svc.namespace);
    if let Some(short) = svc.hostname.strip_suffix(&kube_suffix) {
        if svc.namespace == proxy_ns {
            names.push(short.to_string());
        }
        names.push(format!("{short}.{}", svc.namespace));
        names.push(format!("{short}.{}.svc", svc.namespace));
    }
    names.extend(svc.addresses.iter().filter(|a| !a.contains('/')).cloned());
    let mut domains = BTreeSet::new();
    for n in names {
        domains.insert(format!("{n}:{port}"));
        domains.insert(n);
    }
    let mut ordered: Vec<String> = vec![svc.hostname.clone(), format!("{}:{port}", svc.hostname)];
    ordered.extend(domains.into_iter().filter(|d| *d != svc.hostname && *d != format!("{}:{port}", svc.hostname)));
    ordered
}
