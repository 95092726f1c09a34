//! Request filters: the user's `on_request`, on the routed request. Their
//! `on_response` and `on_log` run in the response and log phases, for every
//! exchange.

use http::StatusCode;
use mesh_core::filter::RequestAction;

use super::Exchange;
use crate::answer::Answer;
use crate::body;
use crate::response_flags::Flag;

impl Exchange<'_> {
    pub(super) async fn request_filters(&mut self) -> Result<(), Answer> {
        let Some(ctx) = &mut self.filter_context else { return Ok(()) };
        match self.forwarder.filters.on_request(&mut self.head, ctx).await {
            Ok(RequestAction::Continue) => Ok(()),
            Ok(RequestAction::Respond(r)) => Err(r.map(body::full).into()),
            Err(e) => {
                tracing::warn!("{e}");
                Err(self.reply(Flag::None, StatusCode::INTERNAL_SERVER_ERROR, "filter error\n"))
            }
        }
    }
}
