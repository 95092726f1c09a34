//! The request hash for consistent-hash balancing, computed as Envoy does:
//! xxHash64 (seed 0) of the header value, cookie value, query parameter
//! value or source IP.

use std::net::IpAddr;

use xxhash_rust::xxh64::xxh64;

use crate::proxy_config::HashPolicy;

/// The hash of a request under `policy`, or `None` when the request lacks
/// the key (Envoy then picks at random; for a cookie with a TTL the proxy
/// sets the cookie).
pub fn request_hash(policy: &HashPolicy, head: &http::request::Parts, source_ip: Option<IpAddr>) -> Option<u64> {
    match policy {
        HashPolicy::Header(name) => {
            let mut values = head.headers.get_all(name.as_str()).iter().peekable();
            values.peek()?;
            // Envoy hashes all values of a repeated header, sorted, joined.
            let mut all: Vec<&[u8]> = values.map(|v| v.as_bytes()).collect();
            if all.len() == 1 {
                return Some(xxh64(all[0], 0));
            }
            all.sort_unstable();
            Some(xxh64(&all.join(&b","[..]), 0))
        }
        HashPolicy::Cookie { name, .. } => cookie(head, name).map(|v| xxh64(v.as_bytes(), 0)),
        HashPolicy::SourceIp => source_ip.map(|ip| xxh64(ip.to_string().as_bytes(), 0)),
        HashPolicy::QueryParameter(name) => query_param(head.uri.query()?, name).map(|v| xxh64(v.as_bytes(), 0)),
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(head: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    head.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The first value of query parameter `name` (not percent-decoded, as Envoy).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').map(|pair| pair.split_once('=').unwrap_or((pair, ""))).find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hashes_each_key_kind() {
        let h = head("/p?user=ann&x=1", &[("x-user", "ann"), ("cookie", "a=1; session=ann")]);
        let expected = xxh64(b"ann", 0);
        assert_eq!(request_hash(&HashPolicy::Header("x-user".into()), &h, None), Some(expected));
        assert_eq!(
            request_hash(&HashPolicy::Cookie { name: "session".into(), path: None, ttl: None }, &h, None),
            Some(expected)
        );
        assert_eq!(request_hash(&HashPolicy::QueryParameter("user".into()), &h, None), Some(expected));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(request_hash(&HashPolicy::SourceIp, &h, Some(ip)), Some(xxh64(b"10.1.2.3", 0)));
        assert_eq!(request_hash(&HashPolicy::Header("missing".into()), &h, None), None);
        assert_eq!(request_hash(&HashPolicy::QueryParameter("nope".into()), &h, None), None);
    }
}
