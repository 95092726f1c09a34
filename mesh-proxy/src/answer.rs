//! A response on its way downstream, whose upstream header fields may still
//! be the list the HTTP/1.1 client parsed them into.
//!
//! Most answers are only written out again: hashing their fields into a
//! `HeaderMap` and dropping it cost about as much as parsing the head
//! (`benches/README.md`). So the list becomes a map only when something
//! changes the fields by name (header operations, CORS, filters, the
//! hop-by-hop strip when there is one to strip) or the answer leaves as a
//! `Response` (HTTP/2, [`crate::forward::Forwarder::handle`]). Reading a
//! field, or adding one that is not there, works on either form.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Response, StatusCode, Version};

use crate::body::Body;

/// Header fields in the order they came, duplicates where they came.
pub type FieldList = Vec<(HeaderName, HeaderValue)>;

pub struct Answer<B = Body> {
    status: StatusCode,
    version: Version,
    extensions: Extensions,
    fields: Fields,
    body: B,
}

/// A map is boxed: an answer is moved through every await of the request
/// path, and at half a `Response`'s size it is moved without a `memcpy`
/// call each time.
enum Fields {
    Listed(FieldList),
    Mapped(Box<HeaderMap>),
}

impl<B> Answer<B> {
    /// An answer with `fields` kept as they are.
    pub fn with_fields(status: StatusCode, version: Version, fields: FieldList, body: B) -> Answer<B> {
        Answer { status, version, extensions: Extensions::new(), fields: Fields::Listed(fields), body }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// The first value of `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        match &self.fields {
            Fields::Listed(list) => list.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            Fields::Mapped(map) => map.get(name),
        }
    }

    /// The fields, a name once per value; listed ones in the order they
    /// came.
    pub fn fields(&self) -> FieldIter<'_> {
        match &self.fields {
            Fields::Listed(list) => FieldIter::Listed(list.iter()),
            Fields::Mapped(map) => FieldIter::Mapped(map.iter()),
        }
    }

    /// The fields as a map, made one now if they were a list.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        if let Fields::Listed(list) = &mut self.fields {
            let list = std::mem::take(list);
            let mut map = HeaderMap::with_capacity(list.len());
            for (name, value) in list {
                map.append(name, value);
            }
            self.fields = Fields::Mapped(Box::new(map));
        }
        match &mut self.fields {
            Fields::Mapped(map) => map,
            Fields::Listed(_) => unreachable!("made a map above"),
        }
    }

    /// Add `name` unless the answer has it already.
    pub fn add_if_absent(&mut self, name: &HeaderName, value: impl FnOnce() -> HeaderValue) {
        if self.header(name).is_some() {
            return;
        }
        match &mut self.fields {
            Fields::Listed(list) => list.push((name.clone(), value())),
            Fields::Mapped(map) => {
                map.insert(name.clone(), value());
            }
        }
    }

    pub fn map_body<C>(self, f: impl FnOnce(B) -> C) -> Answer<C> {
        let Answer { status, version, extensions, fields, body } = self;
        Answer { status, version, extensions, fields, body: f(body) }
    }

    pub fn body(&self) -> &B {
        &self.body
    }

    pub fn into_body(self) -> B {
        self.body
    }

    pub fn into_response(mut self) -> Response<B> {
        let headers = std::mem::take(self.headers_mut());
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = headers;
        *response.extensions_mut() = self.extensions;
        response
    }
}

pub enum FieldIter<'a> {
    Listed(std::slice::Iter<'a, (HeaderName, HeaderValue)>),
    Mapped(http::header::Iter<'a, HeaderValue>),
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a HeaderName, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldIter::Listed(fields) => fields.next().map(|(n, v)| (n, v)),
            FieldIter::Mapped(fields) => fields.next(),
        }
    }
}

impl<B> From<Response<B>> for Answer<B> {
    fn from(response: Response<B>) -> Answer<B> {
        let (head, body) = response.into_parts();
        let http::response::Parts { status, version, headers, extensions, .. } = head;
        Answer { status, version, extensions, fields: Fields::Mapped(Box::new(headers)), body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_LENGTH, SERVER};

    fn listed() -> Answer<()> {
        let value = HeaderValue::from_static;
        let fields = vec![(SERVER, value("a")), (CONTENT_LENGTH, value("2")), (SERVER, value("b"))];
        Answer::with_fields(StatusCode::OK, Version::HTTP_11, fields, ())
    }

    fn names(answer: &Answer<()>) -> Vec<&str> {
        answer.fields().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_listed_answer_reads_and_adds_without_becoming_a_map() {
        let mut answer = listed();
        assert_eq!(answer.header(&SERVER).map(HeaderValue::as_bytes), Some(&b"a"[..]));
        answer.add_if_absent(&SERVER, || unreachable!("server is there"));
        let id = HeaderName::from_static("x-request-id");
        answer.add_if_absent(&id, || HeaderValue::from_static("7"));
        assert_eq!(names(&answer), ["server", "content-length", "server", "x-request-id"]);
        assert!(matches!(answer.fields, Fields::Listed(_)));
    }

    #[test]
    fn a_listed_answer_becomes_a_map_with_every_field_when_changed() {
        let mut answer = listed();
        answer.headers_mut().insert("x-added", HeaderValue::from_static("1"));
        let id = HeaderName::from_static("x-request-id");
        answer.add_if_absent(&id, || HeaderValue::from_static("7"));
        assert_eq!(names(&answer), ["server", "server", "content-length", "x-added", "x-request-id"]);
        answer.set_version(Version::HTTP_10);
        let response = answer.into_response();
        let servers: Vec<_> = response.headers().get_all(SERVER).iter().collect();
        assert_eq!(servers, ["a", "b"]);
        assert_eq!(response.headers()["x-request-id"], "7");
        assert_eq!(response.version(), Version::HTTP_10);
    }

    #[test]
    fn a_response_stays_a_map() {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        response.headers_mut().insert(SERVER, HeaderValue::from_static("a"));
        let answer = Answer::from(response);
        assert_eq!(answer.header(&SERVER).map(HeaderValue::as_bytes), Some(&b"a"[..]));
        assert_eq!(names(&answer), ["server"]);
        let response = answer.into_response();
        assert_eq!((response.status(), response.headers()[SERVER].as_bytes()), (StatusCode::IM_A_TEAPOT, &b"a"[..]));
    }

    /// An answer is moved through every phase of the request path: a
    /// 152-byte first version cost ~580 instructions of `memcpy` a request.
    /// (http 1.5's `Response` was 128 bytes, 1.6's is 80.)
    #[test]
    fn an_answer_stays_small() {
        let (answer, response) = (std::mem::size_of::<Answer>(), std::mem::size_of::<Response<Body>>());
        assert!(answer <= 56 && answer <= response, "{answer} bytes, a response {response}");
    }
}
