/// The parts of a request that routing looks at, borrowed from the request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host, with the port if the client sent one.
    pub authority: &'a str,
    /// Path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The port the request arrived on.
    pub port: u16,
    /// The request's verified JWT, for claim-based routes.
    pub claims: Option<&'a crate::jwt::VerifiedJwt>,
}

impl<'a> RequestView<'a> {
    /// View an HTTP/1 or HTTP/2 request head: the authority comes from the
    /// URI (HTTP/2, absolute-form) or the Host header.
    pub fn from_parts(head: &'a http::request::Parts, port: u16) -> RequestView<'a> {
        let authority = head
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| head.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        RequestView {
            method: head.method.as_str(),
            scheme: head.uri.scheme_str().unwrap_or("http"),
            authority,
            path: head.uri.path(),
            query: head.uri.query(),
            headers: &head.headers,
            port,
            claims: None,
        }
    }
}
