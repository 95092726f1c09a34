//! What the Telemetry API turns on and off, per side (client: a gateway or
//! a sidecar's outbound; server: a sidecar's inbound), compiled once per
//! config so the request path reads booleans, not metric names.

use mesh_core::telemetry::{SideTelemetry, TelemetryConfig};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switches {
    pub client: SideSwitches,
    pub server: SideSwitches,
}

impl Default for Switches {
    fn default() -> Switches {
        Switches::ALL_ON
    }
}

impl Switches {
    pub const ALL_ON: Switches = Switches { client: SideSwitches::ALL_ON, server: SideSwitches::ALL_ON };

    pub fn of(t: &TelemetryConfig) -> Switches {
        Switches { client: SideSwitches::of(&t.client), server: SideSwitches::of(&t.server) }
    }

    /// The switches of the side an exchange with `cluster` is on.
    pub fn side(&self, cluster: &str) -> &SideSwitches {
        if cluster.starts_with("inbound|") {
            &self.server
        } else {
            &self.client
        }
    }
}
