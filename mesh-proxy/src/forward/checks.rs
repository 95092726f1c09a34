//! Downstream checks: what makes a request unfit to route, found before
//! any route is looked at. The codec ([`crate::downstream`]) refuses what
//! does not parse; what is left here needs the proxy's settings or the
//! connection (its scheme).

use http::StatusCode;

use super::Exchange;
use crate::answer::Answer;
use crate::response_flags::Flag;

impl Exchange<'_> {
    /// A path that would not normalize (an invalid or NUL escape) is 400,
    /// as Envoy answers it: routing and authorization must never see a
    /// path the upstream could read another way.
    pub(super) fn check_downstream(&mut self) -> Result<(), Answer> {
        if let Some(e) = self.path_error.take() {
            return Err(self.reply(Flag::DownstreamProtocolError, StatusCode::BAD_REQUEST, &format!("{e}\n")));
        }
        // An absolute-form target names its scheme: it must be the
        // connection's (an `https://` target over plain TCP is no request
        // this proxy can serve as asked).
        if self.head.uri.scheme_str().is_some_and(|s| !s.eq_ignore_ascii_case(self.ingress.scheme)) {
            return Err(self.reply(Flag::DownstreamProtocolError, StatusCode::BAD_REQUEST, "scheme mismatch\n"));
        }
        Ok(())
    }
}
