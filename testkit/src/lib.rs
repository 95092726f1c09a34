//! Test support for the workspace's tests, as a dev-dependency of every
//! crate: what several crates' tests did each for themselves.
//!
//! - [`process`]: child processes killed and reaped on drop, servers that
//!   announce their address on stdout, binaries built beside the tests.
//! - [`wait`]: polling a condition up to a deadline (no fixed sleeps).
//! - [`net`]: free ports on 127.0.0.1.
//! - [`http`]: a raw HTTP/1.1 client (bytes in, the whole answer out).
//! - [`envoy`]: Envoy 1.40 found and started as a peer.
//! - [`peers`]: the other peers (Python modules, commands), checked with an
//!   install hint when missing.
//! - [`jwt`]: JWT signing keys of every algorithm, their JWKS, tokens,
//!   and a JWKS server.
//! - [`fixtures`]: the repository's Istio-format fixture files.
//! - [`collector`]: in-process trace collectors (Zipkin, OTLP over HTTP
//!   and gRPC).
//!
//! A missing peer or fixture fails the test with a message naming it and
//! how to get it, never a panic deep in a helper.

pub mod collector;
pub mod envoy;
pub mod fixtures;
pub mod http;
pub mod jwt;
pub mod net;
pub mod netns;
pub mod peers;
pub mod process;
pub mod tls;
pub mod wait;

pub use net::free_port;
pub use process::Proc;
pub use wait::{eventually, wait_until};
