//! What the Telemetry API asks of metrics and the access log, per side
//! (client: a gateway or a sidecar's outbound; server: a sidecar's
//! inbound), compiled once per config: the request path reads booleans,
//! not metric names, and evaluates compiled expressions, not text.

use mesh_core::expression::Expression;
use mesh_core::telemetry::{SideTelemetry, TelemetryConfig};

use super::tags::TagRules;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SideSwitches {
    /// `None`: no Telemetry resource or MeshConfig default says; the
    /// proxy's own setting (`--access-log`) decides.
    pub access_log: Option<bool>,
    pub requests: bool,
    pub duration: bool,
    pub request_size: bool,
    pub response_size: bool,
    pub tcp_opened: bool,
    pub tcp_closed: bool,
    pub tcp_sent: bool,
    pub tcp_received: bool,
}

impl Default for SideSwitches {
    fn default() -> SideSwitches {
        SideSwitches::ALL_ON
    }
}

impl SideSwitches {
    /// Every metric on; the log as the proxy's setting says.
    pub const ALL_ON: SideSwitches = SideSwitches {
        access_log: None,
        requests: true,
        duration: true,
        request_size: true,
        response_size: true,
        tcp_opened: true,
        tcp_closed: true,
        tcp_sent: true,
        tcp_received: true,
    };

    fn of(side: &SideTelemetry) -> SideSwitches {
        let on = |name: &str| !side.disabled_metrics.iter().any(|d| d == name);
        SideSwitches {
            access_log: side.access_log,
            requests: on("istio_requests_total"),
            duration: on("istio_request_duration_milliseconds"),
            request_size: on("istio_request_bytes"),
            response_size: on("istio_response_bytes"),
            tcp_opened: on("istio_tcp_connections_opened_total"),
            tcp_closed: on("istio_tcp_connections_closed_total"),
            tcp_sent: on("istio_tcp_sent_bytes_total"),
            tcp_received: on("istio_tcp_received_bytes_total"),
        }
    }
}

/// One side's rules.
#[derive(Clone, Debug, Default)]
pub struct SideRules {
    pub on: SideSwitches,
    pub tags: TagRules,
    /// Only exchanges it is true for are logged.
    pub log_filter: Option<Expression>,
    /// Whether the overrides or the filter read the response's fields (a
    /// list of them is then made per exchange).
    pub reads_response: bool,
}

impl SideRules {
    pub const ALL_ON: SideRules =
        SideRules { on: SideSwitches::ALL_ON, tags: TagRules::NONE, log_filter: None, reads_response: false };

    fn of(side: &SideTelemetry, warnings: &mut Vec<String>) -> SideRules {
        let log_filter = side.access_log_filter.as_deref().and_then(|source| {
            Expression::compile(source)
                .map_err(|e| warnings.push(format!("access log filter not applied, every exchange logged: {e}")))
                .ok()
        });
        let tags = TagRules::compile(&side.tag_overrides, warnings);
        let reads = |group| tags.reads(group) || log_filter.as_ref().is_some_and(|f: &Expression| f.reads(group));
        let reads_response = reads("response");
        SideRules { on: SideSwitches::of(side), tags, log_filter, reads_response }
    }

    /// Whether its tag overrides or log filter read attributes of `group`.
    pub fn reads(&self, group: &str) -> bool {
        self.tags.reads(group) || self.log_filter.as_ref().is_some_and(|f| f.reads(group))
    }
}

#[derive(Clone, Debug, Default)]
pub struct TelemetryRules {
    pub client: SideRules,
    pub server: SideRules,
    /// Whether either side reads the request's header fields: the record
    /// then keeps a copy of them.
    pub reads_request: bool,
}

impl TelemetryRules {
    pub const ALL_ON: TelemetryRules =
        TelemetryRules { client: SideRules::ALL_ON, server: SideRules::ALL_ON, reads_request: false };

    /// The rules `t` sets; what cannot be applied is logged as a warning.
    pub fn of(t: &TelemetryConfig) -> TelemetryRules {
        let mut warnings = Vec::new();
        let client = SideRules::of(&t.client, &mut warnings);
        let server = SideRules::of(&t.server, &mut warnings);
        for warning in warnings {
            tracing::warn!("Telemetry: {warning}");
        }
        let reads_request = client.reads("request") || server.reads("request");
        TelemetryRules { client, server, reads_request }
    }

    /// The rules of the side an exchange with `cluster` is on.
    pub fn side(&self, cluster: &str) -> &SideRules {
        if cluster.starts_with("inbound|") {
            &self.server
        } else {
            &self.client
        }
    }
}
