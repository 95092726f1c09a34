//! The checks Istio's admission webhook makes, reported all at once with the
//! field path of each problem.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::duration;
use super::networking::*;
use super::security::*;
use super::{Resource, ResourceKey, Spec, ValidationError};

/// `retryOn` conditions Envoy understands (HTTP and gRPC), plus numeric codes.
pub(crate) const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Every problem with `resource`; empty when it is valid.
pub fn validate(resource: &Resource) -> Vec<ValidationError> {
    let mut v = Validator { key: resource.key(), errors: Vec::new() };
    if !is_dns1123_subdomain(&resource.meta.name) {
        v.err("metadata.name", format!("`{}` is not a valid DNS-1123 name", resource.meta.name));
    }
    match &resource.spec {
        Spec::VirtualService(vs) => v.virtual_service(vs),
        Spec::DestinationRule(dr) => v.destination_rule(dr),
        Spec::Gateway(gw) => v.gateway(gw),
        Spec::ServiceEntry(se) => v.service_entry(se),
        Spec::WorkloadEntry(we) => v.workload_entry("spec", we, true),
        Spec::Sidecar(sc) => v.sidecar(sc),
        Spec::AuthorizationPolicy(ap) => v.authorization_policy(ap),
        Spec::PeerAuthentication(pa) => v.peer_authentication(pa),
        Spec::RequestAuthentication(ra) => v.request_authentication(ra),
        Spec::EnvoyFilter(ef) => v.envoy_filter(ef),
        Spec::Telemetry(t) => v.telemetry(t),
    }
    v.errors
}

struct Validator {
    key: ResourceKey,
    errors: Vec<ValidationError>,
}

impl Validator {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ValidationError { resource: self.key.clone(), field: field.into(), reason: reason.into() });
    }

    fn duration(&mut self, field: &str, text: &Option<String>) -> Option<std::time::Duration> {
        let text = text.as_ref()?;
        match duration::parse(text) {
            Ok(d) if d < std::time::Duration::from_millis(1) && !d.is_zero() => {
                self.err(field, format!("duration `{text}` must be at least 1ms"));
                None
            }
            Ok(d) => Some(d),
            Err(reason) => {
                self.err(field, reason);
                None
            }
        }
    }

    fn regex(&mut self, field: &str, pattern: &str) {
        if let Err(e) = regex::Regex::new(pattern) {
            let reason = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
            self.err(field, format!("invalid regex `{pattern}`: {reason}"));
        }
    }

    fn string_match(&mut self, field: &str, m: &StringMatch, allow_empty: bool) {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()].iter().filter(|b| **b).count();
        if set > 1 {
            self.err(field, "only one of exact, prefix or regex may be set");
        }
        if set == 0 && !allow_empty {
            self.err(field, "one of exact, prefix or regex is required");
        }
        if let Some(r) = &m.regex {
            self.regex(&format!("{field}.regex"), r);
        }
    }

    fn percent(&mut self, field: &str, p: &Option<Percent>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
                self.err(format!("{field}.value"), format!("percentage {} must be between 0 and 100", p.value));
            }
        }
    }

    fn port_number(&mut self, field: &str, number: u32) {
        if number == 0 || number > 65535 {
            self.err(field, format!("port {number} must be between 1 and 65535"));
        }
    }

    fn host(&mut self, field: &str, host: &str) {
        if let Err(reason) = check_host(host) {
            self.err(field, reason);
        }
    }

    fn namespaced_hosts(&mut self, field: &str, hosts: &[String]) {
        if hosts.is_empty() {
            self.err(field, "at least one host is required");
        }
        for (i, h) in hosts.iter().enumerate() {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h));
            if ns.is_empty() || (ns != "*" && ns != "." && ns != "~" && !is_dns1123_label(ns)) {
                self.err(
                    format!("{field}[{i}]"),
                    format!("`{h}`: namespace part must be `*`, `.`, `~` or a namespace name"),
                );
            } else if host != "*" {
                self.host(&format!("{field}[{i}]"), host);
            }
        }
    }

    fn labels(&mut self, field: &str, labels: &Labels) {
        for (k, val) in labels {
            if k.is_empty() || k.contains('*') {
                self.err(format!("{field}.{k}"), "label keys must be non-empty and must not contain `*`");
            }
            if val.contains('*') {
                self.err(format!("{field}.{k}"), "label values must not contain `*`");
            }
        }
    }

    // ------------------------------------------------------------ VirtualService

    fn virtual_service(&mut self, vs: &VirtualService) {
        let is_delegate = vs.hosts.is_empty();
        if is_delegate && !vs.gateways.is_empty() {
            self.err(
                "spec.hosts",
                "at least one host is required (a delegate VirtualService has no hosts and no gateways)",
            );
        }
        for (i, h) in vs.hosts.iter().enumerate() {
            if h != "*" || vs.gateways.is_empty() {
                self.host(&format!("spec.hosts[{i}]"), h);
            }
        }
        if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
            self.err("spec", "a VirtualService needs at least one http, tcp or tls route");
        }
        let mut names = HashSet::new();
        for (i, route) in vs.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            if let Some(name) = &route.name {
                if !names.insert(name) {
                    self.err(format!("{at}.name"), format!("route name `{name}` is used twice"));
                }
            }
            self.http_route(&at, route);
        }
        for (i, route) in vs.tcp.iter().enumerate() {
            let at = format!("spec.tcp[{i}]");
            for (j, m) in route.matches.iter().enumerate() {
                if let Some(p) = m.port {
                    self.port_number(&format!("{at}.match[{j}].port"), p);
                }
                for (k, subnet) in m.destination_subnets.iter().enumerate() {
                    self.cidr(&format!("{at}.match[{j}].destinationSubnets[{k}]"), subnet);
                }
            }
            self.l4_destinations(&at, &route.route);
        }
        for (i, route) in vs.tls.iter().enumerate() {
            let at = format!("spec.tls[{i}]");
            if route.matches.is_empty() {
                self.err(format!("{at}.match"), "a tls route needs at least one match");
            }
            for (j, m) in route.matches.iter().enumerate() {
                if m.sni_hosts.is_empty() {
                    self.err(format!("{at}.match[{j}].sniHosts"), "at least one SNI host is required");
                }
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    self.host(&format!("{at}.match[{j}].sniHosts[{k}]"), sni);
                }
            }
            self.l4_destinations(&at, &route.route);
        }
    }

    fn http_route(&mut self, at: &str, route: &HttpRoute) {
        let actions = [
            !route.route.is_empty(),
            route.redirect.is_some(),
            route.direct_response.is_some(),
            route.delegate.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => self.err(
                format!("{at}.route"),
                "an HTTP route needs a route destination, a redirect, a direct response or a delegate",
            ),
            1 => {}
            _ => self.err(at, "only one of route, redirect, directResponse or delegate may be set"),
        }
        if route.redirect.is_some() && route.rewrite.is_some() {
            self.err(format!("{at}.rewrite"), "rewrite cannot be combined with redirect");
        }
        for (j, m) in route.matches.iter().enumerate() {
            self.http_match(&format!("{at}.match[{j}]"), m);
        }
        let mut total: i64 = 0;
        for (j, dest) in route.route.iter().enumerate() {
            let dat = format!("{at}.route[{j}]");
            self.destination(&format!("{dat}.destination"), &dest.destination);
            if let Some(w) = dest.weight {
                if w < 0 {
                    self.err(format!("{dat}.weight"), format!("weight {w} must not be negative"));
                }
                total += i64::from(w.max(0));
            }
            if let Some(h) = &dest.headers {
                self.headers(&format!("{dat}.headers"), h);
            }
        }
        if route.route.len() > 1 && total == 0 {
            self.err(format!("{at}.route"), "the destinations' weights total 0: at least one must be positive");
        }
        if let Some(r) = &route.redirect {
            if let Some(code) = r.redirect_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    self.err(
                        format!("{at}.redirect.redirectCode"),
                        format!("{code} is not a redirect code (301, 302, 303, 307 or 308)"),
                    );
                }
            }
            if r.port.is_some() && r.derive_port.is_some() {
                self.err(format!("{at}.redirect"), "only one of port or derivePort may be set");
            }
            if r.uri.is_some() && r.prefix_rewrite.is_some() {
                self.err(format!("{at}.redirect"), "only one of uri or prefixRewrite may be set");
            }
            if let Some(p) = r.port {
                self.port_number(&format!("{at}.redirect.port"), p);
            }
        }
        if let Some(d) = &route.direct_response {
            if !(200..=599).contains(&d.status) {
                self.err(
                    format!("{at}.directResponse.status"),
                    format!("status {} must be between 200 and 599", d.status),
                );
            }
        }
        if let Some(rw) = &route.rewrite {
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                self.err(format!("{at}.rewrite"), "only one of uri or uriRegexRewrite may be set");
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                self.regex(&format!("{at}.rewrite.uriRegexRewrite.match"), &rr.pattern);
            }
            let header_sets_authority = |h: Option<&Headers>| {
                h.and_then(|h| h.request.as_ref()).is_some_and(|r| {
                    r.set.keys().chain(r.add.keys()).any(|k| k.eq_ignore_ascii_case("host") || k == ":authority")
                })
            };
            if rw.authority.is_some()
                && (header_sets_authority(route.headers.as_deref())
                    || route.route.iter().any(|d| header_sets_authority(d.headers.as_deref())))
            {
                self.err(format!("{at}.rewrite.authority"), "the authority is rewritten twice: by rewrite.authority and by a request header operation on host/:authority");
            }
        }
        let timeout = self.duration(&format!("{at}.timeout"), &route.timeout);
        if let Some(r) = &route.retries {
            let rat = format!("{at}.retries");
            if let Some(a) = r.attempts {
                if a < 0 {
                    self.err(format!("{rat}.attempts"), format!("attempts {a} must not be negative"));
                }
            }
            let per_try = self.duration(&format!("{rat}.perTryTimeout"), &r.per_try_timeout);
            if let (Some(p), Some(t)) = (per_try, timeout) {
                if !t.is_zero() && p > t {
                    self.err(
                        format!("{rat}.perTryTimeout"),
                        "perTryTimeout is longer than the route timeout, so no retry could happen",
                    );
                }
            }
            self.duration(&format!("{rat}.backoff"), &r.backoff);
            if let Some(on) = &r.retry_on {
                for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let numeric_ok = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                    if !numeric_ok && !RETRY_ON.contains(&cond) {
                        self.err(
                            format!("{rat}.retryOn"),
                            format!(
                                "`{cond}` is not a retry condition (one of {} or an HTTP status code)",
                                RETRY_ON.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        if let Some(f) = &route.fault {
            let fat = format!("{at}.fault");
            if f.delay.is_none() && f.abort.is_none() {
                self.err(&fat, "a fault needs a delay or an abort");
            }
            if let Some(d) = &f.delay {
                if d.fixed_delay.is_none() && d.exponential_delay.is_none() {
                    self.err(format!("{fat}.delay.fixedDelay"), "a delay needs fixedDelay");
                }
                self.duration(&format!("{fat}.delay.fixedDelay"), &d.fixed_delay);
                self.percent(&format!("{fat}.delay.percentage"), &d.percentage);
                if let Some(p) = d.percent {
                    if !(0..=100).contains(&p) {
                        self.err(format!("{fat}.delay.percent"), format!("percent {p} must be between 0 and 100"));
                    }
                }
            }
            if let Some(a) = &f.abort {
                match (a.http_status, &a.grpc_status, &a.http2_error) {
                    (Some(s), None, None) if !(200..=599).contains(&s) => {
                        self.err(format!("{fat}.abort.httpStatus"), format!("status {s} must be between 200 and 599"))
                    }
                    (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => {}
                    (None, None, None) => self.err(format!("{fat}.abort"), "an abort needs httpStatus or grpcStatus"),
                    _ => {
                        self.err(format!("{fat}.abort"), "only one of httpStatus, grpcStatus or http2Error may be set")
                    }
                }
                if let Some(g) = &a.grpc_status {
                    if crate::fault::grpc_status_code(g).is_none() {
                        self.err(format!("{fat}.abort.grpcStatus"), format!("`{g}` is not a gRPC status name"));
                    }
                }
                self.percent(&format!("{fat}.abort.percentage"), &a.percentage);
            }
        }
        if let Some(m) = &route.mirror {
            self.destination(&format!("{at}.mirror"), m);
        }
        if route.mirror.is_some() && !route.mirrors.is_empty() {
            self.err(format!("{at}.mirrors"), "only one of mirror or mirrors may be set");
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            self.destination(&format!("{at}.mirrors[{j}].destination"), &m.destination);
            self.percent(&format!("{at}.mirrors[{j}].percentage"), &m.percentage);
        }
        if let Some(p) = &route.mirror_percentage {
            if p.value > 100.0 || p.value < 0.0 || p.value.is_nan() {
                self.err(
                    format!("{at}.mirrorPercentage.value"),
                    format!("mirror percentage {} must be between 0 and 100", p.value),
                );
            }
        }
        for (field, p) in [("mirrorPercent", route.mirror_percent), ("mirror_percent", route.mirror_percent_snake)] {
            if p.is_some_and(|p| p > 100) {
                self.err(format!("{at}.{field}"), "mirror percentage must have a max value of 100");
            }
        }
        if let Some(c) = &route.cors_policy {
            for (j, o) in c.allow_origins.iter().enumerate() {
                self.string_match(&format!("{at}.corsPolicy.allowOrigins[{j}]"), o, false);
            }
            self.duration(&format!("{at}.corsPolicy.maxAge"), &c.max_age);
            for (j, m) in c.allow_methods.iter().enumerate() {
                if http::Method::from_bytes(m.as_bytes()).is_err() {
                    self.err(format!("{at}.corsPolicy.allowMethods[{j}]"), format!("`{m}` is not an HTTP method"));
                }
            }
        }
        if let Some(h) = &route.headers {
            self.headers(&format!("{at}.headers"), h);
        }
    }

    fn http_match(&mut self, at: &str, m: &HttpMatchRequest) {
        for (field, sm) in [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)]
        {
            if let Some(sm) = sm {
                self.string_match(&format!("{at}.{field}"), sm, false);
            }
        }
        for (field, map) in
            [("headers", &m.headers), ("withoutHeaders", &m.without_headers), ("queryParams", &m.query_params)]
        {
            for (name, sm) in map {
                if name.is_empty() {
                    self.err(format!("{at}.{field}"), "header and query parameter names must not be empty");
                } else if field != "queryParams"
                    && crate::jwt::routing_claim(name).is_none()
                    && http::HeaderName::from_bytes(name.as_bytes()).is_err()
                {
                    self.err(
                        format!("{at}.{field}.{name}"),
                        "not an HTTP header name, nor a JWT claim (`@request.auth.claims.NAME`)",
                    );
                }
                self.string_match(&format!("{at}.{field}.{name}"), sm, true);
            }
        }
        if let Some(p) = m.port {
            self.port_number(&format!("{at}.port"), p);
        }
        self.labels(&format!("{at}.sourceLabels"), &m.source_labels);
    }

    fn destination(&mut self, at: &str, d: &Destination) {
        if d.host.is_empty() {
            self.err(format!("{at}.host"), "destination host is required");
        } else {
            self.host(&format!("{at}.host"), &d.host);
        }
        if let Some(s) = &d.subset {
            if !is_dns1123_label(s) {
                self.err(format!("{at}.subset"), format!("subset `{s}` is not a valid DNS-1123 label"));
            }
        }
        if let Some(n) = d.port.as_ref().and_then(|p| p.number) {
            self.port_number(&format!("{at}.port.number"), n);
        }
    }

    fn l4_destinations(&mut self, at: &str, route: &[RouteDestination]) {
        if route.is_empty() {
            self.err(format!("{at}.route"), "at least one route destination is required");
        }
        let mut total: i64 = 0;
        for (j, dest) in route.iter().enumerate() {
            self.destination(&format!("{at}.route[{j}].destination"), &dest.destination);
            if let Some(w) = dest.weight {
                if w < 0 {
                    self.err(format!("{at}.route[{j}].weight"), format!("weight {w} must not be negative"));
                }
                total += i64::from(w.max(0));
            }
        }
        if route.len() > 1 && total == 0 {
            self.err(format!("{at}.route"), "the destinations' weights total 0: at least one must be positive");
        }
    }

    fn headers(&mut self, at: &str, h: &Headers) {
        for (side, ops) in [("request", &h.request), ("response", &h.response)] {
            let Some(ops) = ops else { continue };
            for name in ops.set.keys().chain(ops.add.keys()).chain(ops.remove.iter()) {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() && !name.starts_with(':') {
                    self.err(format!("{at}.{side}"), format!("`{name}` is not a valid header name"));
                }
            }
            for (name, value) in ops.set.iter().chain(ops.add.iter()) {
                if http::HeaderValue::from_str(value).is_err() {
                    self.err(
                        format!("{at}.{side}.{name}"),
                        "header value contains characters not allowed in HTTP headers",
                    );
                }
            }
        }
    }

    fn cidr(&mut self, at: &str, text: &str) {
        if text.parse::<ipnet::IpNet>().is_err() && text.parse::<IpAddr>().is_err() {
            self.err(at, format!("`{text}` is not an IP address or CIDR block"));
        }
    }

    // ------------------------------------------------------------ DestinationRule

    fn destination_rule(&mut self, dr: &DestinationRule) {
        if dr.host.is_empty() {
            self.err("spec.host", "host is required");
        } else {
            self.host("spec.host", &dr.host);
        }
        if let Some(tp) = &dr.traffic_policy {
            self.traffic_policy("spec.trafficPolicy", tp, true);
        }
        let mut seen = HashSet::new();
        for (i, s) in dr.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                self.err(format!("{at}.name"), "subset name is required");
            } else if !is_dns1123_label(&s.name) {
                self.err(format!("{at}.name"), format!("subset name `{}` is not a valid DNS-1123 label", s.name));
            }
            if !seen.insert(&s.name) {
                self.err(format!("{at}.name"), format!("duplicate subset name `{}`", s.name));
            }
            self.labels(&format!("{at}.labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                self.traffic_policy(&format!("{at}.trafficPolicy"), tp, true);
            }
        }
    }

    fn traffic_policy(&mut self, at: &str, tp: &TrafficPolicy, allow_port_level: bool) {
        self.policy_sections(at, tp);
        if !allow_port_level && !tp.port_level_settings.is_empty() {
            self.err(format!("{at}.portLevelSettings"), "not allowed here");
        }
        let mut ports = HashSet::new();
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            let pat = format!("{at}.portLevelSettings[{i}]");
            match p.port.as_ref().and_then(|p| p.number) {
                None => self.err(format!("{pat}.port"), "port number is required"),
                Some(n) => {
                    self.port_number(&format!("{pat}.port.number"), n);
                    if !ports.insert(n) {
                        self.err(format!("{pat}.port.number"), format!("port {n} has two portLevelSettings"));
                    }
                }
            }
            self.policy_sections(&pat, &p.as_policy());
        }
        if let Some(rb) = &tp.retry_budget {
            if rb.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                self.err(format!("{at}.retryBudget.percent"), "must be between 0 and 100");
            }
            self.duration(&format!("{at}.retryBudget.budgetInterval"), &rb.budget_interval);
        }
    }

    /// The sections both a policy and a port-level setting have.
    fn policy_sections(&mut self, at: &str, tp: &TrafficPolicy) {
        if let Some(lb) = &tp.load_balancer {
            self.load_balancer(&format!("{at}.loadBalancer"), lb);
        }
        if let Some(cp) = &tp.connection_pool {
            self.connection_pool(&format!("{at}.connectionPool"), cp);
        }
        if let Some(od) = &tp.outlier_detection {
            self.outlier_detection(&format!("{at}.outlierDetection"), od);
        }
        if let Some(tls) = &tp.tls {
            self.client_tls(&format!("{at}.tls"), tls);
        }
    }

    fn load_balancer(&mut self, at: &str, lb: &LoadBalancerSettings) {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            self.err(at, "only one of simple or consistentHash may be set");
        }
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.unwrap_or(false),
                ch.http_query_parameter_name.is_some(),
            ];
            match keys.iter().filter(|k| **k).count() {
                0 => self.err(
                    format!("{at}.consistentHash"),
                    "a hash key is required: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
                ),
                1 => {}
                _ => self.err(format!("{at}.consistentHash"), "only one hash key may be set"),
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    self.err(format!("{at}.consistentHash.httpCookie.name"), "cookie name is required");
                }
                self.duration(&format!("{at}.consistentHash.httpCookie.ttl"), &c.ttl);
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                self.err(format!("{at}.consistentHash"), "only one of ringHash or maglev may be set");
            }
            if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size) {
                if !is_prime(size) {
                    self.err(
                        format!("{at}.consistentHash.maglev.tableSize"),
                        format!("table size {size} must be a prime number"),
                    );
                }
            }
        }
        if let Some(l) = &lb.locality_lb_setting {
            if !l.distribute.is_empty() && !l.failover.is_empty() {
                self.err(format!("{at}.localityLbSetting"), "only one of distribute or failover may be set");
            }
            for (i, d) in l.distribute.iter().enumerate() {
                let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
                if total != 100 {
                    self.err(
                        format!("{at}.localityLbSetting.distribute[{i}].to"),
                        format!("weights total {total}, they must total 100"),
                    );
                }
            }
            for (i, f) in l.failover.iter().enumerate() {
                if f.from == f.to {
                    self.err(format!("{at}.localityLbSetting.failover[{i}]"), "from and to must be different regions");
                }
            }
        }
        self.duration(&format!("{at}.warmupDurationSecs"), &lb.warmup_duration_secs);
    }

    fn connection_pool(&mut self, at: &str, cp: &ConnectionPoolSettings) {
        if let Some(tcp) = &cp.tcp {
            if tcp.max_connections.is_some_and(|n| n < 0) {
                self.err(format!("{at}.tcp.maxConnections"), "must not be negative");
            }
            self.duration(&format!("{at}.tcp.connectTimeout"), &tcp.connect_timeout);
            self.duration(&format!("{at}.tcp.idleTimeout"), &tcp.idle_timeout);
            self.duration(&format!("{at}.tcp.maxConnectionDuration"), &tcp.max_connection_duration);
        }
        if let Some(h) = &cp.http {
            for (field, v) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
                ("maxConcurrentStreams", h.max_concurrent_streams),
            ] {
                if v.is_some_and(|n| n < 0) {
                    self.err(format!("{at}.http.{field}"), "must not be negative");
                }
            }
            self.duration(&format!("{at}.http.idleTimeout"), &h.idle_timeout);
        }
    }

    fn outlier_detection(&mut self, at: &str, od: &OutlierDetection) {
        for (field, v) in [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)]
        {
            if v.is_some_and(|p| !(0..=100).contains(&p)) {
                self.err(format!("{at}.{field}"), "must be between 0 and 100");
            }
        }
        if od.consecutive_errors.is_some_and(|n| n < 0) {
            self.err(format!("{at}.consecutiveErrors"), "must not be negative");
        }
        self.duration(&format!("{at}.interval"), &od.interval);
        self.duration(&format!("{at}.baseEjectionTime"), &od.base_ejection_time);
        for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                self.err(
                    format!("{at}.outlierDetectionHttpErrorCodes[{i}]"),
                    format!("{code} is not an HTTP status code"),
                );
            }
        }
    }

    fn client_tls(&mut self, at: &str, tls: &ClientTlsSettings) {
        match tls.mode.as_deref() {
            None | Some("DISABLE") | Some("SIMPLE") | Some("ISTIO_MUTUAL") => {}
            Some("MUTUAL") => {
                if tls.credential_name.is_none() && (tls.client_certificate.is_none() || tls.private_key.is_none()) {
                    self.err(
                        format!("{at}.clientCertificate"),
                        "MUTUAL mode needs clientCertificate and privateKey (or credentialName)",
                    );
                }
            }
            Some(other) => {
                self.err(format!("{at}.mode"), format!("`{other}` is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"))
            }
        }
    }

    // ------------------------------------------------------------ Gateway

    fn gateway(&mut self, gw: &Gateway) {
        if gw.servers.is_empty() {
            self.err("spec.servers", "at least one server is required");
        }
        self.labels("spec.selector", &gw.selector);
        let mut names = HashSet::new();
        for (i, s) in gw.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            self.port_number(&format!("{at}.port.number"), s.port.number);
            let protocol = s.port.protocol.to_ascii_uppercase();
            if !["HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL", "GRPC-WEB", "HBONE"]
                .contains(&protocol.as_str())
            {
                self.err(format!("{at}.port.protocol"), format!("`{}` is not a protocol Istio knows", s.port.protocol));
            }
            if s.port.name.is_empty() {
                self.err(format!("{at}.port.name"), "port name is required");
            }
            if let Some(name) = &s.name {
                if !names.insert(name) {
                    self.err(format!("{at}.name"), format!("server name `{name}` is used twice"));
                }
            }
            self.namespaced_hosts(&format!("{at}.hosts"), &s.hosts);
            let needs_tls = protocol == "HTTPS" || protocol == "TLS";
            match &s.tls {
                None if needs_tls => self.err(format!("{at}.tls"), format!("a {protocol} server needs tls settings")),
                // As Istio validates it: on a plaintext port, tls may only
                // redirect to HTTPS (its mode is then PASSTHROUGH, the
                // default); anything else would be served without TLS.
                Some(tls) if !needs_tls => {
                    let passthrough = matches!(tls.mode.as_deref(), None | Some("PASSTHROUGH" | "AUTO_PASSTHROUGH"));
                    let certificates =
                        tls.server_certificate.is_some() || tls.private_key.is_some() || tls.ca_certificates.is_some();
                    let http = ["HTTP", "HTTP2", "GRPC", "GRPC-WEB"].contains(&protocol.as_str());
                    if !http {
                        self.err(
                            format!("{at}.tls"),
                            "a server cannot have TLS settings on a port that is not HTTPS or TLS",
                        );
                    } else if !passthrough || certificates {
                        self.err(
                            format!("{at}.tls"),
                            format!("a plaintext {protocol} port cannot terminate TLS (only httpsRedirect): use protocol HTTPS"),
                        );
                    }
                }
                Some(tls) => {
                    let mode = tls.mode.as_deref().unwrap_or("SIMPLE");
                    if !["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]
                        .contains(&mode)
                    {
                        self.err(format!("{at}.tls.mode"), format!("`{mode}` is not a server TLS mode"));
                    }
                    let terminates = needs_tls && matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
                    let has_cert = tls.credential_name.is_some()
                        || !tls.credential_names.is_empty()
                        || !tls.tls_certificates.is_empty()
                        || (tls.server_certificate.is_some() && tls.private_key.is_some());
                    if terminates && !has_cert {
                        self.err(
                            format!("{at}.tls"),
                            format!("{mode} TLS needs credentialName or serverCertificate and privateKey"),
                        );
                    }
                }
                None => {}
            }
        }
    }

    // ------------------------------------------------------------ ServiceEntry

    fn service_entry(&mut self, se: &ServiceEntry) {
        if se.hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, h) in se.hosts.iter().enumerate() {
            if h == "*" {
                self.err(format!("spec.hosts[{i}]"), "`*` is not allowed in a ServiceEntry");
            } else {
                self.host(&format!("spec.hosts[{i}]"), h);
            }
        }
        for (i, a) in se.addresses.iter().enumerate() {
            self.cidr(&format!("spec.addresses[{i}]"), a);
        }
        let resolution = se.resolution.as_deref().unwrap_or("NONE");
        if !["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"].contains(&resolution) {
            self.err(
                "spec.resolution",
                format!("`{resolution}` is not NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS"),
            );
        }
        if let Some(loc) = &se.location {
            if loc != "MESH_EXTERNAL" && loc != "MESH_INTERNAL" {
                self.err("spec.location", format!("`{loc}` is not MESH_EXTERNAL or MESH_INTERNAL"));
            }
        }
        let mut numbers = HashSet::new();
        let mut names = HashSet::new();
        for (i, p) in se.ports.iter().enumerate() {
            self.port_number(&format!("spec.ports[{i}].number"), p.number);
            if !numbers.insert(p.number) {
                self.err(format!("spec.ports[{i}].number"), format!("port {} is declared twice", p.number));
            }
            if p.name.is_empty() {
                self.err(format!("spec.ports[{i}].name"), "port name is required");
            } else if !names.insert(&p.name) {
                self.err(format!("spec.ports[{i}].name"), format!("port name `{}` is used twice", p.name));
            }
            if let Some(t) = p.target_port {
                self.port_number(&format!("spec.ports[{i}].targetPort"), t);
            }
        }
        if se.workload_selector.is_some() && !se.endpoints.is_empty() {
            self.err("spec.workloadSelector", "only one of workloadSelector or endpoints may be set");
        }
        if resolution == "STATIC" && se.endpoints.is_empty() && se.workload_selector.is_none() {
            self.err("spec.endpoints", "STATIC resolution needs endpoints or a workloadSelector");
        }
        if resolution != "NONE" && se.addresses.iter().any(|a| a.contains('/')) {
            self.err("spec.addresses", "CIDR addresses are allowed only with resolution NONE");
        }
        for (i, ep) in se.endpoints.iter().enumerate() {
            let at = format!("spec.endpoints[{i}]");
            self.workload_entry(&at, ep, false);
            if resolution == "STATIC" {
                if let Some(addr) = &ep.address {
                    if !addr.starts_with("unix://") && addr.parse::<IpAddr>().is_err() {
                        self.err(
                            format!("{at}.address"),
                            format!("`{addr}` must be an IP address with STATIC resolution"),
                        );
                    }
                }
            }
            for name in ep.ports.keys() {
                if !se.ports.iter().any(|p| &p.name == name) {
                    self.err(format!("{at}.ports.{name}"), format!("no port named `{name}` in spec.ports"));
                }
            }
        }
    }

    fn workload_entry(&mut self, at: &str, we: &WorkloadEntry, standalone: bool) {
        match &we.address {
            None if we.network.is_none() => self.err(format!("{at}.address"), "address is required (or network)"),
            Some(a) if a.is_empty() => self.err(format!("{at}.address"), "address must not be empty"),
            Some(a) if a.starts_with("unix://") && !we.ports.is_empty() => {
                self.err(format!("{at}.ports"), "a unix socket address takes no ports")
            }
            Some(a)
                if !a.starts_with("unix://")
                    && (standalone || a.parse::<IpAddr>().is_err())
                    && a.parse::<IpAddr>().is_err() =>
            {
                self.host(&format!("{at}.address"), a)
            }
            _ => {}
        }
        for (name, port) in &we.ports {
            self.port_number(&format!("{at}.ports.{name}"), *port);
        }
        self.labels(&format!("{at}.labels"), &we.labels);
    }

    // ------------------------------------------------------------ Sidecar

    fn sidecar(&mut self, sc: &Sidecar) {
        for (i, e) in sc.egress.iter().enumerate() {
            self.namespaced_hosts(&format!("spec.egress[{i}].hosts"), &e.hosts);
            if let Some(n) = e.port.as_ref().and_then(|p| p.number) {
                self.port_number(&format!("spec.egress[{i}].port.number"), n);
            }
        }
        for (i, ing) in sc.ingress.iter().enumerate() {
            match ing.port.as_ref().and_then(|p| p.number) {
                Some(n) => self.port_number(&format!("spec.ingress[{i}].port.number"), n),
                None => self.err(format!("spec.ingress[{i}].port"), "port number is required"),
            }
        }
        if let Some(mode) = sc.outbound_traffic_policy.as_ref().and_then(|o| o.mode.as_ref()) {
            if mode != "REGISTRY_ONLY" && mode != "ALLOW_ANY" {
                self.err("spec.outboundTrafficPolicy.mode", format!("`{mode}` is not REGISTRY_ONLY or ALLOW_ANY"));
            }
        }
    }

    // ------------------------------------------------------------ security

    fn authorization_policy(&mut self, ap: &AuthorizationPolicy) {
        if ap.selector.is_some() && (ap.target_ref.is_some() || !ap.target_refs.is_empty()) {
            self.err("spec.selector", "only one of selector, targetRef or targetRefs may be set");
        }
        if let Some(sel) = &ap.selector {
            self.labels("spec.selector.matchLabels", &sel.match_labels);
        }
        match (ap.action, &ap.provider) {
            (AuthorizationAction::Custom, None) => self.err("spec.provider", "CUSTOM action needs a provider"),
            (a, Some(_)) if a != AuthorizationAction::Custom => {
                self.err("spec.provider", "a provider is only allowed with CUSTOM action")
            }
            _ => {}
        }
        for (i, rule) in ap.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            for (j, from) in rule.from.iter().enumerate() {
                let s = &from.source;
                let sat = format!("{at}.from[{j}].source");
                for (field, list) in [
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ] {
                    for (k, b) in list.iter().enumerate() {
                        self.cidr(&format!("{sat}.{field}[{k}]"), b);
                    }
                }
                for (field, list) in [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                ] {
                    self.auth_values(&format!("{sat}.{field}"), list);
                }
                let empty = s == &Source::default();
                if empty {
                    self.err(&sat, "a source needs at least one field");
                }
            }
            for (j, to) in rule.to.iter().enumerate() {
                let o = &to.operation;
                let oat = format!("{at}.to[{j}].operation");
                for (field, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                    for (k, p) in list.iter().enumerate() {
                        if p.parse::<u16>().map_or(true, |p| p == 0) {
                            self.err(format!("{oat}.{field}[{k}]"), format!("`{p}` is not a port number"));
                        }
                    }
                }
                for (field, list) in [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                ] {
                    self.auth_values(&format!("{oat}.{field}"), list);
                }
                if o == &Operation::default() {
                    self.err(&oat, "an operation needs at least one field");
                }
            }
            for (j, cond) in rule.when.iter().enumerate() {
                let cat = format!("{at}.when[{j}]");
                if !crate::authz::is_known_condition_key(&cond.key) {
                    self.err(format!("{cat}.key"), format!("`{}` is not a supported condition key", cond.key));
                }
                if cond.values.is_empty() && cond.not_values.is_empty() {
                    self.err(&cat, "a condition needs values or notValues");
                }
                if cond.key == "source.ip" || cond.key == "remote.ip" || cond.key == "destination.ip" {
                    for (k, b) in cond.values.iter().chain(cond.not_values.iter()).enumerate() {
                        self.cidr(&format!("{cat}.values[{k}]"), b);
                    }
                }
            }
        }
    }

    /// Istio allows `*` only as a whole value, a prefix or a suffix.
    fn auth_values(&mut self, at: &str, values: &[String]) {
        for (k, v) in values.iter().enumerate() {
            let inner = v.trim_start_matches('*').trim_end_matches('*');
            if v.is_empty() {
                self.err(format!("{at}[{k}]"), "empty value");
            } else if inner.contains('*') || (v.starts_with('*') && v.ends_with('*') && v.len() > 1) {
                self.err(format!("{at}[{k}]"), format!("`{v}`: `*` is allowed only as a prefix or a suffix"));
            }
        }
    }

    /// Only the local rate limit filter is read; other patches are not
    /// errors (Istio accepts them) but are reported as unsupported when
    /// translated.
    fn envoy_filter(&mut self, ef: &EnvoyFilter) {
        for (i, p) in ef.config_patches.iter().enumerate() {
            if let Some(Err(reason)) = crate::rate_limit::local_rate_limit_of(p) {
                self.err(format!("spec.configPatches[{i}].patch.value"), reason);
            }
        }
    }

    fn peer_authentication(&mut self, pa: &PeerAuthentication) {
        let has_selector = pa.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        if !pa.port_level_mtls.is_empty() && !has_selector {
            self.err("spec.portLevelMtls", "portLevelMtls needs a workload selector");
        }
        let modes = pa
            .mtls
            .iter()
            .map(|m| ("spec.mtls.mode".to_string(), m))
            .chain(pa.port_level_mtls.iter().map(|(p, m)| (format!("spec.portLevelMtls.{p}.mode"), m)));
        let mut bad = BTreeMap::new();
        for (at, m) in modes {
            if let Some(mode) = &m.mode {
                if !["UNSET", "DISABLE", "PERMISSIVE", "STRICT"].contains(&mode.as_str()) {
                    bad.insert(at, format!("`{mode}` is not UNSET, DISABLE, PERMISSIVE or STRICT"));
                }
            }
        }
        for port in pa.port_level_mtls.keys() {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                bad.insert(format!("spec.portLevelMtls.{port}"), format!("`{port}` is not a port number"));
            }
        }
        for (at, reason) in bad {
            self.err(at, reason);
        }
    }

    fn request_authentication(&mut self, ra: &RequestAuthentication) {
        let mut issuers = HashSet::new();
        for (i, rule) in ra.jwt_rules.iter().enumerate() {
            let at = format!("spec.jwtRules[{i}]");
            if rule.issuer.is_empty() {
                self.err(format!("{at}.issuer"), "issuer is required");
            } else if !issuers.insert(&rule.issuer) {
                self.err(format!("{at}.issuer"), format!("issuer `{}` has two rules", rule.issuer));
            }
            let sources = [rule.jwks_uri.is_some(), rule.jwks_uri_snake.is_some(), rule.jwks.is_some()];
            if sources.iter().filter(|s| **s).count() > 1 {
                self.err(&at, "only one of jwksUri or jwks may be set");
            }
            for uri in rule.jwks_uri.iter().chain(rule.jwks_uri_snake.iter()) {
                if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                    self.err(format!("{at}.jwksUri"), format!("`{uri}` must be an http or https URL"));
                }
            }
            self.duration(&format!("{at}.timeout"), &rule.timeout);
        }
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A host as VirtualService, DestinationRule and ServiceEntry accept it: a
/// DNS name, optionally starting with `*.` (or `*` alone), or an IP.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host == "*" || host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_prefix("*.").or_else(|| host.strip_prefix('*')).unwrap_or(host);
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 253 {
        return Err(format!("host `{host}` is longer than 253 characters"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("host `{host}` is not a valid DNS name (bad label `{label}`)"));
        }
    }
    if host.contains('*') && !host.starts_with('*') {
        return Err(format!("host `{host}`: a wildcard is allowed only as the first label"));
    }
    Ok(())
}
impl Validator {
    /// Istio's Telemetry validation: sampling percentages in range, one
    /// source per custom tag, known metric names and tag operations.
    fn telemetry(&mut self, t: &super::telemetry::Telemetry) {
        use super::telemetry::{METRICS, OTHER_METRIC_NAMES};
        for (i, tracing) in t.tracing.iter().enumerate() {
            let at = format!("spec.tracing[{i}]");
            if let Some(p) = tracing.random_sampling_percentage.filter(|p| !(0.0..=100.0).contains(p)) {
                self.err(format!("{at}.randomSamplingPercentage"), format!("{p} is not between 0 and 100"));
            }
            for (name, tag) in &tracing.custom_tags {
                let sources = [tag.literal.is_some(), tag.environment.is_some(), tag.header.is_some()];
                if sources.iter().filter(|s| **s).count() != 1 {
                    self.err(format!("{at}.customTags.{name}"), "needs exactly one of literal, environment, header");
                }
            }
        }
        for (i, logging) in t.access_logging.iter().enumerate() {
            let filter = logging.filter.as_ref().map(|f| crate::expression::Expression::compile(&f.expression));
            if let Some(Err(e)) = filter {
                self.err(format!("spec.accessLogging[{i}].filter.expression"), e);
            }
        }
        for (i, metrics) in t.metrics.iter().enumerate() {
            for (j, o) in metrics.overrides.iter().enumerate() {
                let at = format!("spec.metrics[{i}].overrides[{j}]");
                let metric = o.match_.as_ref().and_then(|m| m.metric.as_deref());
                if let Some(name) =
                    metric.filter(|m| !METRICS.iter().any(|(n, _)| n == m) && !OTHER_METRIC_NAMES.contains(m))
                {
                    self.err(format!("{at}.match.metric"), format!("`{name}` is not one of Istio's metrics"));
                }
                for (tag, op) in &o.tag_overrides {
                    let at = format!("{at}.tagOverrides.{tag}");
                    match (op.operation.as_deref().unwrap_or("UPSERT"), op.value.as_deref()) {
                        ("UPSERT", None | Some("")) => {
                            self.err(format!("{at}.value"), "must be set when operation is UPSERT")
                        }
                        ("UPSERT", Some(value)) => {
                            if let Err(e) = crate::expression::Expression::compile(value) {
                                self.err(format!("{at}.value"), e);
                            }
                        }
                        ("REMOVE", Some(v)) if !v.is_empty() => {
                            self.err(format!("{at}.value"), "may only be set when operation is UPSERT")
                        }
                        ("REMOVE", _) => {}
                        (other, _) => self.err(format!("{at}.operation"), format!("`{other}` is not UPSERT or REMOVE")),
                    }
                }
            }
        }
    }
}
