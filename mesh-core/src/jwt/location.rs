//! Where a request carries its tokens, read as Envoy's `jwt_authn`
//! extractor reads them: every value of a header (after its prefix, found
//! anywhere in the value), the first value of a query parameter, a cookie.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenLocation {
    /// `name` is lower case; an empty `prefix` takes the whole value.
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// Characters a token may start with (base64url, and the dot).
fn starts_token(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl TokenLocation {
    /// Envoy's and Istio's default: `Authorization: Bearer <token>` and
    /// `?access_token=<token>`.
    pub fn defaults() -> Vec<TokenLocation> {
        vec![
            TokenLocation::Header { name: "authorization".into(), prefix: "Bearer ".into() },
            TokenLocation::Param("access_token".into()),
        ]
    }

    /// The tokens at this location of a request with `headers` and `query`.
    pub fn find<'r>(&self, headers: &'r http::HeaderMap, query: Option<&'r str>) -> Vec<Cow<'r, str>> {
        match self {
            // Envoy keeps `authorization` as one field, its repeated lines
            // joined with commas; other headers it reads line by line.
            TokenLocation::Header { name, prefix } if name == "authorization" => {
                let values: Vec<&str> = headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
                match values.as_slice() {
                    [one] => after_prefix(one, prefix).map(Cow::Borrowed).into_iter().collect(),
                    [] => Vec::new(),
                    many => {
                        let joined = many.join(",");
                        after_prefix(&joined, prefix).map(|t| Cow::Owned(t.to_string())).into_iter().collect()
                    }
                }
            }
            TokenLocation::Header { name, prefix } => headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(|value| after_prefix(value, prefix))
                .map(Cow::Borrowed)
                .collect(),
            TokenLocation::Param(param) => query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key) == param.as_str()).then(|| percent_decode(value))
                })
                .into_iter()
                .collect(),
            TokenLocation::Cookie(cookie) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    (key == cookie).then(|| Cow::Borrowed(value.trim_matches('"')))
                })
                .into_iter()
                .collect(),
        }
    }

    /// Removes a verified token from the request sent upstream, as Envoy
    /// does when the token is not forwarded: the whole header, or the
    /// parameter from the query. A cookie stays, as in Envoy.
    pub fn remove(&self, headers: &mut http::HeaderMap, query: Option<&str>) -> Option<Option<String>> {
        match self {
            TokenLocation::Header { name, .. } => {
                headers.remove(name.as_str());
                None
            }
            TokenLocation::Param(param) => {
                let kept: Vec<&str> = query?
                    .split('&')
                    .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != param.as_str())
                    .collect();
                Some((!kept.is_empty()).then(|| kept.join("&")))
            }
            TokenLocation::Cookie(_) => None,
        }
    }
}

/// The token in a header value: after `prefix` (found anywhere), from
/// the first token character on; with no such character Envoy keeps the
/// value whole. An empty prefix takes the value.
fn after_prefix<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    if prefix.is_empty() {
        return Some(value);
    }
    let after = &value[value.find(prefix)? + prefix.len()..];
    Some(after.find(starts_token).map_or(value, |at| &after[at..]))
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_come_from_every_authorization_value() {
        let bearer = &TokenLocation::defaults()[0];
        let h = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Basic xyz"),
            ("authorization", "x Bearer   d.e.f"),
        ]);
        assert_eq!(bearer.find(&h, None), ["a.b.c,Basic xyz,x Bearer   d.e.f"], "one field, as Envoy joins it");
        assert_eq!(bearer.find(&headers(&[("authorization", "x Bearer   d.e.f")]), None), ["d.e.f"]);
        let custom = TokenLocation::Header { name: "x-jwt".into(), prefix: String::new() };
        assert_eq!(custom.find(&headers(&[("x-jwt", "g.h.i")]), None), ["g.h.i"]);
    }

    #[test]
    fn params_are_decoded_and_the_first_wins() {
        let param = &TokenLocation::defaults()[1];
        assert_eq!(param.find(&headers(&[]), Some("x=1&access_token=a%2Eb.c&access_token=z")), ["a.b.c"]);
        assert!(param.find(&headers(&[]), Some("token=a.b.c")).is_empty());
        assert_eq!(param.remove(&mut headers(&[]), Some("x=1&access_token=a.b.c")), Some(Some("x=1".into())));
        assert_eq!(param.remove(&mut headers(&[]), Some("access_token=a.b.c")), Some(None));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let cookie = TokenLocation::Cookie("session".into());
        let h = headers(&[("cookie", "a=1; session=\"t.o.k\""), ("cookie", "session=later")]);
        assert_eq!(cookie.find(&h, None), ["t.o.k"]);
    }
}
