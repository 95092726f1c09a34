//! Routes: VirtualService `http`, `tcp` and `tls` rules as route tables and
//! weighted clusters, with Istio's defaults where none applies.

use super::*;

impl<'a> Translator<'a> {
    /// Istio's route when no VirtualService covers a host.
    pub(super) fn default_route(&self, host: &str, port: u16) -> Route {
        let mut route = Route::forward("default", &cluster_name("outbound", port, None, host));
        route.retry = Some(Box::new(default_retry_policy()));
        route
    }

    /// Routes from the first VirtualService (sidecar) or all bound
    /// VirtualServices (gateway, merged in order) covering `host`.
    pub(super) fn routes_for_host(&self, host: &str, port: u16, gateway: Option<&str>) -> Option<Vec<Route>> {
        let mut routes = Vec::new();
        let mut found = false;
        let mut candidates: Vec<usize> = self.vs_hosts.covering(host).map(|(_, i)| i).collect();
        candidates.sort_unstable();
        candidates.dedup();
        for i in candidates {
            let (r, vs) = self.virtual_services[i];
            if !self.vs_applies(r, vs, gateway) {
                continue;
            }
            found = true;
            routes.extend(self.http_routes(r, vs, port, gateway));
            if gateway.is_none() {
                break;
            }
        }
        found.then_some(routes)
    }

    pub(super) fn vs_applies(&self, r: &Resource, vs: &VirtualService, gateway: Option<&str>) -> bool {
        if !vs.export_to.is_empty()
            && !vs.export_to.iter().any(|e| {
                e == "*" || (e == "." && r.meta.namespace == self.proxy.namespace) || *e == self.proxy.namespace
            })
        {
            return false;
        }
        let gateways: Vec<String> = vs.gateways.iter().map(|g| qualify_gateway(g, &r.meta.namespace)).collect();
        match gateway {
            None => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Some(gw) => gateways.iter().any(|g| g == gw),
        }
    }

    pub(super) fn http_routes(
        &self,
        r: &Resource,
        vs: &VirtualService,
        port: u16,
        gateway: Option<&str>,
    ) -> Vec<Route> {
        let ns = &r.meta.namespace;
        let mut out = Vec::new();
        for (i, http) in vs.http.iter().enumerate() {
            let matches: Vec<RouteMatch> =
                http.matches.iter().filter(|m| self.match_applies(m, ns, port, gateway)).map(route_match).collect();
            if !http.matches.is_empty() && matches.is_empty() {
                continue;
            }
            let name = http.name.clone().unwrap_or_else(|| format!("{ns}.{}.{i}", r.meta.name));
            let action = if let Some(redirect) = &http.redirect {
                RouteAction::Redirect(Box::new(Redirect {
                    path: redirect.uri.clone(),
                    prefix_rewrite: redirect.prefix_rewrite.clone(),
                    authority: redirect.authority.clone(),
                    scheme: redirect.scheme.clone(),
                    port: redirect.port.and_then(|p| u16::try_from(p).ok()),
                    port_from_request: redirect.derive_port.as_deref() == Some("FROM_REQUEST_PORT"),
                    code: redirect.redirect_code.and_then(|c| u16::try_from(c).ok()).unwrap_or(301),
                }))
            } else if let Some(direct) = &http.direct_response {
                RouteAction::DirectResponse {
                    status: u16::try_from(direct.status).unwrap_or(500),
                    body: direct.body.as_ref().and_then(|b| b.string.clone().or_else(|| b.bytes.clone())),
                }
            } else {
                let single = http.route.len() == 1;
                let clusters = http
                    .route
                    .iter()
                    .map(|d| WeightedCluster {
                        cluster: self.destination_cluster(&d.destination, ns, port),
                        weight: destination_weight(d.weight, single),
                        headers: header_ops(d.headers.as_deref()),
                    })
                    .collect();
                RouteAction::Forward { clusters }
            };
            let rewrite = http.rewrite.as_ref().map(|rw| {
                Box::new(Rewrite {
                    uri_prefix: rw.uri.clone(),
                    uri_regex: rw.uri_regex_rewrite.as_ref().map(|r| (r.pattern.clone(), r.rewrite.clone())),
                    authority: rw.authority.clone(),
                })
            });
            let timeout = http.timeout.as_deref().and_then(|t| duration::parse(t).ok()).filter(|d| !d.is_zero());
            let mut mirrors: Vec<MirrorPolicy> = http
                .mirrors
                .iter()
                .map(|m| MirrorPolicy {
                    cluster: self.destination_cluster(&m.destination, ns, port),
                    percent: m.percentage.as_ref().map_or(100.0, |p| p.value),
                })
                .collect();
            if let Some(m) = &http.mirror {
                let percent = http
                    .mirror_percentage
                    .as_ref()
                    .map(|p| p.value)
                    .or(http.mirror_percent.or(http.mirror_percent_snake).map(f64::from))
                    .unwrap_or(100.0);
                mirrors.push(MirrorPolicy { cluster: self.destination_cluster(m, ns, port), percent });
            }
            out.push(Route {
                name,
                matches,
                action,
                rewrite,
                timeout,
                retry: retry_policy(http.retries.as_deref()).map(Box::new),
                fault: http.fault.as_deref().map(fault_policy),
                mirrors,
                headers: header_ops(http.headers.as_deref()),
                cors: http.cors_policy.as_deref().map(cors_policy).map(Box::new),
            });
        }
        out
    }

    /// Istio evaluates these match fields per proxy when it builds the
    /// config, not per request.
    pub(super) fn match_applies(
        &self,
        m: &istio::HttpMatchRequest,
        vs_ns: &str,
        port: u16,
        gateway: Option<&str>,
    ) -> bool {
        if m.port.is_some_and(|p| p != u32::from(port)) {
            return false;
        }
        if !m.gateways.is_empty() {
            let here = gateway.unwrap_or("mesh");
            if !m.gateways.iter().any(|g| qualify_gateway(g, vs_ns) == here) {
                return false;
            }
        }
        if gateway.is_none() {
            if !m.source_labels.is_empty() && !labels_match(&m.source_labels, &self.proxy.labels) {
                return false;
            }
            if m.source_namespace.as_ref().is_some_and(|ns| *ns != self.proxy.namespace) {
                return false;
            }
        }
        true
    }

    /// The cluster a destination names. The port is the destination's, or
    /// the service's only port, or the port the request came in on.
    pub(super) fn destination_cluster(&self, d: &istio::Destination, vs_ns: &str, listener_port: u16) -> String {
        let host = resolve_host(&d.host, vs_ns);
        let service = self.all_services.get(&host).map(|s| &s.service);
        let port = d
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok())
            .or_else(|| match service.map(|s| s.ports.as_slice()) {
                Some([only]) => Some(only.port),
                Some(ports) if ports.iter().any(|p| p.port == listener_port) => Some(listener_port),
                Some([first, ..]) => Some(first.port),
                _ => None,
            })
            .unwrap_or(listener_port);
        cluster_name("outbound", port, d.subset.as_deref(), &host)
    }

    pub(super) fn l4_clusters(&self, route: &[istio::RouteDestination], ns: &str, port: u16) -> Vec<WeightedCluster> {
        route
            .iter()
            .map(|d| WeightedCluster {
                cluster: self.destination_cluster(&d.destination, ns, port),
                weight: destination_weight(d.weight, route.len() == 1),
                headers: HeaderOps::default(),
            })
            .collect()
    }

    pub(super) fn tcp_destinations(&self, svc: &Service, port: u16, gateway: Option<&str>) -> Vec<WeightedCluster> {
        for (r, vs) in &self.virtual_services {
            if !self.vs_applies(r, vs, gateway) {
                continue;
            }
            let covers = gateway.is_some()
                || vs.hosts.iter().any(|h| host_matches(&resolve_host(h, &r.meta.namespace), &svc.hostname));
            if !covers {
                continue;
            }
            for tcp in &vs.tcp {
                let applies = tcp.matches.is_empty()
                    || tcp.matches.iter().any(|m| {
                        m.port.is_none_or(|p| p == u32::from(port))
                            && (gateway.is_some() || labels_match(&m.source_labels, &self.proxy.labels))
                            && (m.gateways.is_empty()
                                || m.gateways
                                    .iter()
                                    .any(|g| qualify_gateway(g, &r.meta.namespace) == gateway.unwrap_or("mesh")))
                    });
                if applies {
                    return self.l4_clusters(&tcp.route, &r.meta.namespace, port);
                }
            }
        }
        vec![WeightedCluster {
            cluster: cluster_name("outbound", port, None, &svc.hostname),
            weight: 100,
            headers: HeaderOps::default(),
        }]
    }
}

/// Istio's weights: a lone destination without a weight takes all the
/// traffic; among several, an unset weight is 0.
pub(super) fn destination_weight(weight: Option<i32>, single: bool) -> u32 {
    match weight {
        Some(w) => u32::try_from(w).unwrap_or(0),
        None if single => 100,
        None => 0,
    }
}

pub(super) fn https_redirect_route() -> Route {
    Route {
        action: RouteAction::Redirect(Box::new(Redirect {
            path: None,
            prefix_rewrite: None,
            authority: None,
            scheme: Some("https".into()),
            port: None,
            port_from_request: false,
            code: 301,
        })),
        ..Route::forward("https_redirect", "")
    }
}

pub(super) fn string_matcher(m: &istio::StringMatch) -> StringMatcher {
    if let Some(e) = &m.exact {
        StringMatcher::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        StringMatcher::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        StringMatcher::Regex(r.clone())
    } else {
        StringMatcher::Present
    }
}

pub(super) fn route_match(m: &istio::HttpMatchRequest) -> RouteMatch {
    let (mut headers, mut claims) = (Vec::new(), Vec::new());
    let all = m.headers.iter().map(|h| (h, false)).chain(m.without_headers.iter().map(|h| (h, true)));
    for ((name, value), invert) in all {
        let matcher = string_matcher(value);
        match crate::jwt::routing_claim(name) {
            Some(path) => claims.push(ClaimMatcher { path, matcher, invert }),
            None => headers.push(HeaderMatcher { name: name.to_ascii_lowercase(), matcher, invert }),
        }
    }
    RouteMatch {
        uri: m.uri.as_ref().map(string_matcher),
        scheme: m.scheme.as_ref().map(string_matcher),
        method: m.method.as_ref().map(string_matcher),
        authority: m.authority.as_ref().map(string_matcher),
        headers,
        claims,
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParamMatcher {
                name: k.clone(),
                matcher: match string_matcher(v) {
                    StringMatcher::Exact(e) if e.is_empty() => StringMatcher::Present,
                    other => other,
                },
            })
            .collect(),
        port: None,
        ignore_uri_case: m.ignore_uri_case,
    }
}

pub(super) fn header_ops(h: Option<&istio::Headers>) -> HeaderOps {
    let Some(h) = h else { return HeaderOps::default() };
    let pairs = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    let req = h.request.clone().unwrap_or_default();
    let resp = h.response.clone().unwrap_or_default();
    HeaderOps {
        request_set: pairs(&req.set),
        request_add: pairs(&req.add),
        request_remove: req.remove.iter().map(|s| s.to_ascii_lowercase()).collect(),
        response_set: pairs(&resp.set),
        response_add: pairs(&resp.add),
        response_remove: resp.remove.iter().map(|s| s.to_ascii_lowercase()).collect(),
    }
}

/// Istio's default retry policy: 2 retries on connection failures, refused
/// streams, gRPC unavailable/cancelled and HTTP 503, on another host.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetryOn::CONNECT_FAILURE
            | RetryOn::REFUSED_STREAM
            | RetryOn::UNAVAILABLE
            | RetryOn::CANCELLED
            | RetryOn::RETRIABLE_STATUS_CODES,
        retriable_status_codes: vec![503],
        backoff_base: DEFAULT_BACKOFF,
        backoff_max: DEFAULT_BACKOFF * 10,
        retry_other_hosts: true,
    }
}

pub(super) fn retry_policy(r: Option<&istio::HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = r else { return Some(default_retry_policy()) };
    let attempts = u32::try_from(r.attempts.unwrap_or(2)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    let mut policy = default_retry_policy();
    policy.attempts = attempts;
    policy.per_try_timeout = r.per_try_timeout.as_deref().and_then(|t| duration::parse(t).ok());
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let (flags, codes) = RetryOn::parse(on);
        policy.retry_on = flags;
        policy.retriable_status_codes = codes;
    }
    if let Some(base) = r.backoff.as_deref().and_then(|b| duration::parse(b).ok()) {
        policy.backoff_base = base;
        policy.backoff_max = base * 10;
    }
    policy.retry_other_hosts = r.retry_ignore_previous_hosts.unwrap_or(true);
    Some(policy)
}

pub(super) fn fault_policy(f: &istio::HttpFaultInjection) -> FaultPolicy {
    FaultPolicy {
        delay: f.delay.as_ref().and_then(|d| {
            let delay =
                d.fixed_delay.as_deref().or(d.exponential_delay.as_deref()).and_then(|t| duration::parse(t).ok())?;
            let percent = d.percentage.as_ref().map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0);
            Some(FaultDelay { delay, percent })
        }),
        abort: f.abort.as_ref().and_then(|a| {
            let status = match (a.http_status, a.grpc_status.as_deref()) {
                (Some(s), _) => AbortStatus::Http(u16::try_from(s).ok()?),
                (None, Some(g)) => AbortStatus::Grpc(crate::fault::grpc_status_code(g)?),
                _ => return None,
            };
            Some(FaultAbort { status, percent: a.percentage.as_ref().map_or(100.0, |p| p.value) })
        }),
    }
}

pub(super) fn cors_policy(c: &istio::CorsPolicy) -> CorsPolicy {
    let mut origins: Vec<StringMatcher> = c.allow_origins.iter().map(string_matcher).collect();
    origins.extend(c.allow_origin.iter().map(|o| {
        if o == "*" {
            StringMatcher::Prefix(String::new())
        } else {
            StringMatcher::Exact(o.clone())
        }
    }));
    CorsPolicy {
        allow_origins: origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.as_deref().and_then(|t| duration::parse(t).ok()),
        allow_credentials: c.allow_credentials.unwrap_or(false),
    }
}
