//! Rate limit, route, route action and fault: the phases that decide where
//! the request goes, or that it goes nowhere.

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use mesh_core::proxy_config::RouteAction;
use mesh_core::routing::{pick_weighted, RequestView};

use super::{local_reply, Exchange};
use crate::answer::Answer;
use crate::response_flags::Flag;

impl<'a> Exchange<'a> {
    /// The listener's local rate limits (429, as Envoy's local rate limit
    /// filter answers).
    pub(super) fn rate_limit(&mut self) -> Result<(), Answer> {
        let live = self.live;
        let limiters = live.rate_limits.get(&self.ingress.listener).into_iter().flatten();
        for limiter in limiters.filter(|l| l.covers(self.ingress.port)) {
            if !limiter.try_acquire() {
                let mut r = self.reply(Flag::RateLimited, StatusCode::TOO_MANY_REQUESTS, "local_rate_limited");
                for (name, value) in &limiter.limit.response_headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                        r.headers_mut().insert(n, v);
                    }
                }
                return Err(r);
            }
        }
        Ok(())
    }

    /// The route table of the listener (of the port the request names, on
    /// an explicit proxy port), and its first route that matches.
    pub(super) fn route(&mut self) -> Result<(), Answer> {
        let live = self.live;
        let ingress = self.ingress;
        // Istio configures no CONNECT routes, and `*` (`OPTIONS *`) is no
        // path a route matches: Envoy answers both 404.
        if self.head.method == http::Method::CONNECT || self.head.uri.path() == "*" {
            return Err(self.reply(Flag::NoRoute, StatusCode::NOT_FOUND, ""));
        }
        let by_authority = ingress.route_by_authority_port.then(|| {
            let authority = RequestView::from_parts(&self.head, ingress.port).authority;
            authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(80).to_string()
        });
        let route_config = by_authority
            .as_deref()
            .or(ingress.route_config.as_deref())
            .or_else(|| live.listener_routes.get(&ingress.listener).map(String::as_str));
        let Some(table) = route_config.and_then(|n| live.routes.get(n)) else {
            return Err(self.reply(Flag::NoRoute, StatusCode::NOT_FOUND, "no route config for this listener\n"));
        };
        let view =
            RequestView { claims: self.request_auth.as_ref(), ..RequestView::from_parts(&self.head, ingress.port) };
        let Some(hit) = table.find(&view) else {
            return Err(self.reply(Flag::NoRoute, StatusCode::NOT_FOUND, ""));
        };
        self.route = Some(hit.route);
        self.record.route = &hit.route.name;
        if let Some(ctx) = &mut self.filter_context {
            ctx.route = Some(hit.route.name.clone());
        }
        Ok(())
    }

    /// The route's action: a direct response or a redirect ends the
    /// exchange here; a forward picks one of its weighted clusters.
    pub(super) fn route_action(&mut self) -> Result<(), Answer> {
        let Some(route) = self.route else { return Ok(()) };
        self.acted = true;
        let clusters = match &route.action {
            RouteAction::DirectResponse { status, body } => return Err(local_reply::direct(*status, body.clone())),
            RouteAction::Redirect(redirect) => {
                return Err(local_reply::redirect(redirect, &self.head, self.ingress.port).into())
            }
            RouteAction::Forward { clusters } => clusters,
        };
        let Some(chosen) = pick_weighted(clusters, fastrand::u64(..)) else {
            return Err(self.reply(Flag::NoCluster, StatusCode::SERVICE_UNAVAILABLE, "no cluster\n"));
        };
        self.cluster = Some(chosen);
        self.record.cluster = &chosen.cluster;
        if let Some(ctx) = &mut self.filter_context {
            ctx.cluster = Some(chosen.cluster.clone());
        }
        Ok(())
    }

    /// The route's fault injection: a delay, then maybe an abort.
    pub(super) async fn inject_fault(&mut self) -> Result<(), Answer> {
        let Some(fault) = self.route.and_then(|r| r.fault.as_ref()) else { return Ok(()) };
        let decision = mesh_core::fault::decide(fault, &mut fastrand::Rng::new());
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
        }
        match decision.abort {
            Some(abort) => {
                self.record.flag = Flag::FaultAbort;
                Err(local_reply::abort(abort))
            }
            None => Ok(()),
        }
    }
}
