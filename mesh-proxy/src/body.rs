//! Body types. Requests stream through unless a retry or a mirror may need
//! to send them again; then a body up to [`REPLAY_LIMIT`] is buffered.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of everything the proxy sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Bodies larger than this are streamed and not retried.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
