//! Authorize: the AuthorizationPolicies that apply to this proxy, or the
//! RBAC filters of the chain the request came in on when the config came
//! over xDS (Envoy's RBAC filter), on the normalized path; on inbound and
//! gateway traffic, never on a sidecar's outbound (Istio puts RBAC on
//! inbound chains only).

use http::StatusCode;
use mesh_core::authz::{AuthzRequest, Decision};
use mesh_core::routing::RequestView;

use super::Exchange;
use crate::answer::Answer;
use crate::response_flags::Flag;

impl Exchange<'_> {
    pub(super) fn authorize(&mut self) -> Result<(), Answer> {
        let authorizer = &self.live.authorizer;
        let rbac = self.live.rbac_for(&self.ingress.listener, self.ingress.port, false);
        if self.ingress.outbound || (authorizer.is_empty() && rbac.is_none()) {
            return Ok(());
        }
        let request = AuthzRequest {
            source_ip: Some(self.ingress.peer.ip()),
            remote_ip: None,
            source_principal: self.ingress.peer_identity.as_ref().map(|p| p.principal.as_str()),
            peer_uri: self.ingress.peer_identity.as_ref().map(|p| p.uri.as_str()),
            request_auth: self.request_auth.as_ref(),
            host: RequestView::from_parts(&self.head, self.ingress.port).authority,
            method: self.head.method.as_str(),
            path: self.head.uri.path(),
            port: self.ingress.port,
            headers: &self.head.headers,
            destination_ip: None,
            sni: None,
        };
        let mut decision = authorizer.evaluate(&request);
        if let (Decision::Allow, Some(rbac)) = (&decision, rbac) {
            decision = rbac.evaluate(&request);
        }
        match decision {
            Decision::Deny { .. } => Err(self.reply(Flag::Denied, StatusCode::FORBIDDEN, "RBAC: access denied")),
            _ => Ok(()),
        }
    }
}
