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
}
