//! Authenticate: RequestAuthentication's JWTs (Envoy's `jwt_authn` as
//! Istio configures it), before routing so claims can route and
//! authorize. Inbound and gateway traffic only, as authorization.

use http::StatusCode;
use mesh_core::routing::RequestView;

use super::Exchange;
use crate::answer::Answer;
use crate::jwt::{self, Outcome};
use crate::response_flags::Flag;

impl Exchange<'_> {
    pub(super) async fn authenticate(&mut self) -> Result<(), Answer> {
        let authenticator = &self.live.authenticator;
        if authenticator.is_empty() || self.ingress.outbound || self.is_cors_preflight() {
            return Ok(());
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match authenticator.authenticate(&mut self.head, now).await {
            Outcome::Anonymous => Ok(()),
            Outcome::Verified(jwt) => {
                self.request_auth = Some(jwt);
                Ok(())
            }
            Outcome::Refused(error) => {
                self.forwarder.metrics.jwt_refused(error);
                let view = RequestView::from_parts(&self.head, self.ingress.port);
                let challenge = jwt::challenge(self.ingress.scheme, view.authority, view.path);
                // Envoy's codes: a token for another audience is forbidden,
                // any other failure unauthorized.
                let status = match error {
                    jwt::JwtError::AudienceNotAllowed => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                let mut answer = self.reply(Flag::None, status, &error.to_string());
                answer.headers_mut().insert(http::header::WWW_AUTHENTICATE, challenge);
                Err(answer)
            }
        }
    }

    /// Istio's jwt_authn passes CORS preflights (`bypass_cors_preflight`):
    /// browsers send them without credentials.
    fn is_cors_preflight(&self) -> bool {
        self.head.method == http::Method::OPTIONS
            && self.head.headers.contains_key(http::header::ORIGIN)
            && self.head.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    }
}
