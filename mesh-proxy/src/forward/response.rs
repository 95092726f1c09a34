//! Response: what every answer goes through on its way to the client, the
//! upstream's and local replies alike, in one order: the route's and the
//! cluster's header operations, CORS, then the user filters' `on_response`
//! (last filter first), then `x-request-id`.

use http::Response;

use super::cors::add_cors_headers;
use super::exchange::X_REQUEST_ID;
use super::Exchange;
use crate::answer::Answer;

impl Exchange<'_> {
    pub(super) async fn response_phase(&mut self, mut response: Answer) -> Answer {
        self.response_header_ops(&mut response);
        if let (Some(cors), Some(origin)) = (self.route.and_then(|r| r.cors.as_ref()), self.cors_origin.take()) {
            add_cors_headers(response.headers_mut(), cors, origin);
        }
        if self.filter_context.is_some() {
            response = self.response_filters(response).await;
        }
        let id = &self.record.request_id;
        response.add_if_absent(&X_REQUEST_ID, || id.clone());
        response
    }

    async fn response_filters(&mut self, response: Answer) -> Answer {
        self.note_flag_for_filters();
        let Some(ctx) = &mut self.filter_context else { return response };
        let (mut parts, body) = response.into_response().into_parts();
        if let Err(e) = self.forwarder.filters.on_response(&mut parts, ctx).await {
            tracing::warn!("{e}");
        }
        Response::from_parts(parts, body).into()
    }
}
