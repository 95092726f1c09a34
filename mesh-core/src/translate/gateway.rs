//! A gateway's listeners: the servers of the Gateways that select it, with
//! their TLS, and the VirtualServices bound to them.

use super::*;

impl<'a> Translator<'a> {
    pub(super) fn gateway_listeners(&self, cfg: &mut ProxyConfig) {
        // Servers by port, from every Gateway that selects this proxy.
        let mut by_port: BTreeMap<u16, Vec<(String, &'a istio::Server)>> = BTreeMap::new();
        for r in of_kind(self.config, Kind::Gateway) {
            let Spec::Gateway(gw) = &r.spec else { continue };
            if !gateway_selects(gw, &self.proxy.labels) {
                continue;
            }
            let gw_name = format!("{}/{}", r.meta.namespace, r.meta.name);
            for server in &gw.servers {
                if let Ok(port) = u16::try_from(server.port.number) {
                    by_port.entry(port).or_default().push((gw_name.clone(), server));
                }
            }
        }
        for (port, servers) in by_port {
            let mut chains = Vec::new();
            let mut http_vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
            let mut plain_http = false;
            for (gw_name, server) in &servers {
                let protocol = Protocol::parse(&server.port.protocol);
                let tls_mode = server.tls.as_ref().and_then(|t| t.mode.clone()).unwrap_or_else(|| "SIMPLE".into());
                let terminates_tls = protocol == Protocol::Https
                    || (protocol == Protocol::Tls && tls_mode != "PASSTHROUGH" && tls_mode != "AUTO_PASSTHROUGH");
                let hosts: Vec<String> =
                    server.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_string()).collect();
                if protocol.is_http() || protocol == Protocol::Https {
                    let vhosts = self.gateway_virtual_hosts(gw_name, &hosts, port, server);
                    if terminates_tls {
                        let route_name = format!(
                            "https.{port}.{}.{}",
                            server.name.as_deref().unwrap_or(&server.port.name),
                            gw_name.replace('/', ".")
                        );
                        cfg.route_configs.push(Arc::new(RouteConfig {
                            name: route_name.clone(),
                            virtual_hosts: vhosts.into_values().collect(),
                        }));
                        chains.push(FilterChain {
                            server_names: hosts.iter().filter(|h| *h != "*").cloned().collect(),
                            tls: server.tls.as_ref().map(|t| server_tls(t, &tls_mode, self.mesh_config)),
                            ..FilterChain::new(ChainAction::Http { route_config: route_name, protocol: Protocol::Http })
                        });
                    } else {
                        plain_http = true;
                        for (name, vh) in vhosts {
                            match http_vhosts.get_mut(&name) {
                                Some(existing) => existing.routes.extend(vh.routes),
                                None => {
                                    http_vhosts.insert(name, vh);
                                }
                            }
                        }
                    }
                } else {
                    // TCP, or TLS passed through by SNI.
                    let routes =
                        self.gateway_l4_routes(gw_name, port, &hosts, protocol == Protocol::Tls && !terminates_tls);
                    for (sni, clusters) in routes {
                        chains.push(FilterChain {
                            server_names: sni,
                            tls: terminates_tls
                                .then(|| server.tls.as_ref().map(|t| server_tls(t, &tls_mode, self.mesh_config)))
                                .flatten(),
                            ..FilterChain::new(ChainAction::Tcp { clusters })
                        });
                    }
                }
            }
            if plain_http {
                let route_name = format!("http.{port}");
                cfg.route_configs.push(Arc::new(RouteConfig {
                    name: route_name.clone(),
                    virtual_hosts: http_vhosts.into_values().collect(),
                }));
                chains.push(FilterChain::new(ChainAction::Http { route_config: route_name, protocol: Protocol::Http }));
            }
            cfg.listeners.push(port_listener("0.0.0.0", port, TrafficDirection::Gateway, chains));
        }
    }

    pub(super) fn gateway_virtual_hosts(
        &self,
        gw_name: &str,
        server_hosts: &[String],
        port: u16,
        server: &istio::Server,
    ) -> BTreeMap<String, VirtualHost> {
        let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
        let https_redirect = server.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false);
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, Some(gw_name)) {
                continue;
            }
            for vs_host in &vs.hosts {
                let host = resolve_host(vs_host, &r.meta.namespace);
                let Some(server_host) = server_hosts.iter().find(|sh| hosts_intersect(sh, &host)) else { continue };
                // The narrower of the two names the virtual host.
                let name = if host_matches(server_host, &host) { host.clone() } else { server_host.clone() };
                let routes = if https_redirect {
                    vec![https_redirect_route()]
                } else {
                    self.http_routes(r, vs, port, Some(gw_name))
                };
                match vhosts.get_mut(&name) {
                    Some(vh) if !https_redirect => vh.routes.extend(routes),
                    Some(_) => {}
                    None => {
                        let domains =
                            if name == "*" { vec!["*".into()] } else { vec![name.clone(), format!("{name}:{port}")] };
                        vhosts.insert(name.clone(), VirtualHost { name: format!("{name}:{port}"), domains, routes });
                    }
                }
            }
        }
        vhosts
    }

    pub(super) fn gateway_l4_routes(
        &self,
        gw_name: &str,
        port: u16,
        server_hosts: &[String],
        by_sni: bool,
    ) -> Vec<(Vec<String>, Vec<WeightedCluster>)> {
        let mut out = Vec::new();
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, Some(gw_name)) {
                continue;
            }
            let ns = &r.meta.namespace;
            if by_sni {
                for tls in &vs.tls {
                    for m in &tls.matches {
                        if m.port.is_some_and(|p| p != u32::from(port)) {
                            continue;
                        }
                        let sni: Vec<String> = m
                            .sni_hosts
                            .iter()
                            .filter(|s| server_hosts.iter().any(|h| hosts_intersect(h, s)))
                            .cloned()
                            .collect();
                        if sni.is_empty() {
                            continue;
                        }
                        let clusters = self.l4_clusters(&tls.route, ns, port);
                        out.push((sni, clusters));
                    }
                }
            } else if !vs.tcp.is_empty()
                && vs.hosts.iter().any(|h| server_hosts.iter().any(|s| hosts_intersect(s, &resolve_host(h, ns))))
            {
                let dummy = Service {
                    hostname: String::new(),
                    namespace: ns.clone(),
                    ports: vec![],
                    labels: Labels::new(),
                    addresses: vec![],
                    resolution: Resolution::Static,
                    mesh_external: false,
                    subject_alt_names: Vec::new(),
                };
                out.push((vec![], self.tcp_destinations(&dummy, port, Some(gw_name))));
                break;
            }
        }
        out
    }
}

pub(super) fn qualify_gateway(g: &str, namespace: &str) -> String {
    if g == "mesh" || g.contains('/') {
        g.to_string()
    } else {
        format!("{namespace}/{g}")
    }
}

pub(super) fn gateway_selects(gw: &Gateway, labels: &Labels) -> bool {
    labels_match(&gw.selector, labels)
}

pub(super) fn server_tls(t: &istio::ServerTlsSettings, mode: &str, mesh: &MeshConfig) -> ServerTls {
    ServerTls {
        mode: mode.to_string(),
        certificate_chain: t.server_certificate.clone(),
        private_key: t.private_key.clone(),
        ca_certificates: t.ca_certificates.clone(),
        credential_name: t.credential_name.clone().or_else(|| t.credential_names.first().cloned()),
        alpn: vec!["h2".into(), "http/1.1".into()],
        peer_trust_domains: if mode == mtls::ISTIO_MUTUAL { mtls::peer_trust_domains(mesh) } else { Vec::new() },
    }
}
