//! How an exchange ended, when not with the upstream's own answer: Envoy's
//! response flags, as the access log, the metrics and filters show them.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    None,
    NoRoute,
    NoCluster,
    NoHealthyUpstream,
    Overflow,
    ConnectFailure,
    UpstreamReset,
    UpstreamProtocolError,
    /// The client's request was malformed past its head (Envoy's `DPE`).
    DownstreamProtocolError,
    /// The client went away before its exchange was over (`DC`).
    DownstreamTermination,
    /// The client's request came too slowly (`SI`: stream idle timeout).
    StreamIdleTimeout,
    Timeout,
    FaultAbort,
    Denied,
    RateLimited,
}

impl Flag {
    pub fn code(self) -> &'static str {
        match self {
            Flag::None => "-",
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::Overflow => "UO",
            Flag::ConnectFailure => "UF",
            Flag::UpstreamReset => "UC",
            Flag::UpstreamProtocolError => "UPE",
            Flag::DownstreamProtocolError => "DPE",
            Flag::DownstreamTermination => "DC",
            Flag::StreamIdleTimeout => "SI",
            Flag::Timeout => "UT",
            Flag::FaultAbort => "FI",
            Flag::Denied => "RBAC",
            Flag::RateLimited => "RL",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for an exchange that ended with
    /// this flag; `answered_upstream`: the response came from an upstream.
    pub fn details(self, answered_upstream: bool) -> &'static str {
        match self {
            Flag::None if answered_upstream => "via_upstream",
            Flag::None => "direct_response",
            Flag::NoRoute => "route_not_found",
            Flag::NoCluster => "cluster_not_found",
            Flag::NoHealthyUpstream => "no_healthy_upstream",
            Flag::Overflow => "upstream_reset_before_response_started{overflow}",
            Flag::ConnectFailure => "upstream_reset_before_response_started{connection_failure}",
            Flag::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
            Flag::UpstreamProtocolError => "upstream_reset_before_response_started{protocol_error}",
            Flag::DownstreamProtocolError => "codec_error",
            Flag::DownstreamTermination => "downstream_remote_disconnect",
            Flag::StreamIdleTimeout => "stream_idle_timeout",
            Flag::Timeout => "response_timeout",
            Flag::FaultAbort => "fault_filter_abort",
            Flag::Denied => "rbac_access_denied_matched_policy[none]",
            Flag::RateLimited => "local_rate_limited",
        }
    }
}
