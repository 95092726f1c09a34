//! Downstream checks: what makes a request unfit to route, found before
//! any route is looked at. The codec ([`crate::downstream`]) refuses what
//! does not parse; what is left here is what needs the proxy's settings.

use http::StatusCode;

use super::Exchange;
use crate::answer::Answer;
use crate::response_flags::Flag;

impl Exchange<'_> {
    /// A path that would not normalize (an invalid or NUL escape) is 400,
    /// as Envoy answers it: routing and authorization must never see a
    /// path the upstream could read another way.
    pub(super) fn check_downstream(&mut self) -> Result<(), Answer> {
        match self.path_error.take() {
            Some(e) => Err(self.reply(Flag::DownstreamProtocolError, StatusCode::BAD_REQUEST, &format!("{e}\n"))),
            None => Ok(()),
        }
    }
}
