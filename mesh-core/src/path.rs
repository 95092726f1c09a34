//! Request path normalization before routing and authorization, as Istio's
//! `meshConfig.pathNormalization` sets Envoy's connection manager
//! (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`).
//!
//! Without it an AuthorizationPolicy that denies `/admin*` is passed by
//! `/./admin`, `/a/../admin` or `/%61dmin`, which the upstream serves as
//! `/admin`. The normalized path is also what goes upstream, so the proxy
//! and the upstream see the same resource.
//!
//! | mode | does |
//! |---|---|
//! | `NONE` | nothing |
//! | `BASE` (default) | RFC 3986: removes `.` and `..` segments, decodes escaped unreserved characters (`%61` -> `a`, `%2E` -> `.`), reads `\` as `/`; keeps `%2F` and `%5C` as they are |
//! | `MERGE_SLASHES` | `BASE`, then `//` -> `/` |
//! | `DECODE_AND_MERGE_SLASHES` | decodes `%2F` and `%5C` first, then `MERGE_SLASHES` |
//!
//! A path with an invalid escape (`%zz`, a lone `%`) or an escaped NUL is
//! refused (Envoy answers 400). The query is left as it came.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Istio's `ProxyPathNormalization.NormalizationType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    None,
    /// Istio's `DEFAULT` is `BASE`.
    #[default]
    #[serde(alias = "DEFAULT")]
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl std::str::FromStr for PathNormalization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Ok(PathNormalization::None),
            "BASE" | "DEFAULT" => Ok(PathNormalization::Base),
            "MERGE_SLASHES" => Ok(PathNormalization::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Ok(PathNormalization::DecodeAndMergeSlashes),
            _ => Err(format!("unknown path normalization `{s}` (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)")),
        }
    }
}

/// A path normalization refused (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid request path: {0}")]
pub struct InvalidPath(pub &'static str);

/// The normalized form of `path_and_query` (origin form: path, then an
/// optional `?query`); borrowed when nothing changes, as for most paths.
pub fn normalize(path_and_query: &str, mode: PathNormalization) -> Result<Cow<'_, str>, InvalidPath> {
    if mode == PathNormalization::None {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    let merge = mode != PathNormalization::Base;
    if is_normal(path.as_bytes(), merge) {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let decoded = decode(path.as_bytes(), mode == PathNormalization::DecodeAndMergeSlashes)?;
    let mut out = remove_dot_segments(&decoded);
    if merge {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    let mut normal = String::with_capacity(out.len() + query.len());
    // Only ASCII is written: escapes stay escapes, other bytes are escaped.
    normal.extend(out.iter().map(|&b| char::from(b)));
    normal.push_str(query);
    Ok(Cow::Owned(normal))
}

/// Nothing to do: an absolute path with no escape, backslash, dot segment
/// or (when merging) empty segment. One pass over the bytes.
fn is_normal(path: &[u8], merge: bool) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut previous = b'/';
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'%' | b'\\' => return false,
            b'/' if merge && previous == b'/' => return false,
            b'.' if previous == b'/' => {
                let rest = &path[i..];
                if rest == b"." || rest == b".." || rest.starts_with(b"./") || rest.starts_with(b"../") {
                    return false;
                }
            }
            _ if !b.is_ascii_graphic() => return false,
            _ => {}
        }
        previous = b;
    }
    true
}

/// Escapes of unreserved characters decoded (and of `/` and `\` when
/// asked), `\` read as `/`, bytes outside printable ASCII escaped.
fn decode(path: &[u8], slashes: bool) -> Result<Vec<u8>, InvalidPath> {
    let mut out = Vec::with_capacity(path.len() + 1);
    if path.first() != Some(&b'/') && path.first() != Some(&b'\\') {
        out.push(b'/');
    }
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let byte = match (path.get(i + 1).and_then(hex), path.get(i + 2).and_then(hex)) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => return Err(InvalidPath("invalid percent-encoding")),
                };
                match byte {
                    0 => return Err(InvalidPath("escaped NUL")),
                    b'/' | b'\\' if slashes => out.push(b'/'),
                    b if is_unreserved(b) => out.push(b),
                    // Kept as sent, case and all (`%2F` stays `%2F`).
                    _ => out.extend_from_slice(&path[i..i + 3]),
                }
                i += 3;
                continue;
            }
            b'\\' => out.push(b'/'),
            b if b.is_ascii_graphic() => out.push(b),
            b => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
        }
        i += 1;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: &u8) -> Option<u8> {
    char::from(*b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 5.2.4 on an absolute path: `.` segments go, `..` takes the
/// segment before it (never above the root); a path that ended in a dot
/// segment keeps its trailing slash.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut segments = path.split(|&b| b == b'/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"." => {
                if last {
                    out.push(b'/');
                }
            }
            b".." => {
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
                if last {
                    out.push(b'/');
                }
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::{self, Base, DecodeAndMergeSlashes, MergeSlashes, None};
    use super::{normalize, InvalidPath};

    fn norm(path: &str, mode: PathNormalization) -> String {
        normalize(path, mode).unwrap_or_else(|e| panic!("{path}: {e}")).into_owned()
    }

    /// Envoy's own cases for `normalize_path` (Chromium's canonicalizer).
    #[test]
    fn base_removes_dot_segments_and_decodes_unreserved_escapes() {
        for (path, want) in [
            ("/xyz", "/xyz"),
            ("/x/y/z", "/x/y/z"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/%5c%25", "/%5c%25"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/a/b/%2E./c", "/a/c"),
            ("/a/b/%2E/c", "/a/b/c"),
            ("..", "/"),
            ("/../a/b", "/a/b"),
            ("/./a/b", "/a/b"),
            ("/A/B/C", "/A/B/C"),
            ("/a/%2F%2f/c", "/a/%2F%2f/c"),
            // The probes of the issue: each is /admin to an upstream.
            ("/./admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/admin\\x", "/admin/x"),
            // A trailing dot segment leaves a directory.
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            // Dots inside a segment are a name, not a step.
            ("/a/.b/..c/...", "/a/.b/..c/..."),
            ("/a//b", "/a//b"),
            ("/p?q=/../x", "/p?q=/../x"),
            ("/a/../b?x=%2e", "/b?x=%2e"),
        ] {
            assert_eq!(norm(path, Base), want, "{path}");
        }
    }

    #[test]
    fn merge_slashes_collapses_empty_segments_but_not_in_the_query() {
        for (path, want) in [
            ("/a//b/c", "/a/b/c"),
            ("//a/b/c", "/a/b/c"),
            ("/a/b/c//", "/a/b/c/"),
            ("/a////b/c", "/a/b/c"),
            ("/a//b?a=///c", "/a/b?a=///c"),
            ("//a/?b", "/a/?b"),
            ("//admin", "/admin"),
            ("/a/%2F/b", "/a/%2F/b"),
        ] {
            assert_eq!(norm(path, MergeSlashes), want, "{path}");
        }
    }

    #[test]
    fn decode_and_merge_slashes_decodes_escaped_slashes_and_backslashes_first() {
        for (path, want) in [
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/x%2F..%2Fadmin", "/admin"),
            ("/%2F%2Fadmin", "/admin"),
            ("/a/%25", "/a/%25"),
        ] {
            assert_eq!(norm(path, DecodeAndMergeSlashes), want, "{path}");
        }
        assert_eq!(norm("/x%2F..%2Fadmin", Base), "/x%2F..%2Fadmin", "BASE keeps escaped slashes");
    }

    #[test]
    fn none_leaves_every_path_as_it_came() {
        for path in ["/./admin", "/%61dmin", "//a", "/a/%zz"] {
            assert_eq!(norm(path, None), path);
        }
    }

    #[test]
    fn invalid_escapes_and_escaped_nul_are_refused() {
        for path in ["/xyz/.%00../abc", "/xyz/%00.%00./abc", "/xyz/AAAAA%%0000/abc", "/a%", "/a%2", "/a%zz"] {
            for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
                assert!(matches!(normalize(path, mode), Err(InvalidPath(_))), "{path} {mode:?}");
            }
        }
    }

    #[test]
    fn normal_paths_are_borrowed_not_copied() {
        for path in ["/", "/productpage", "/api/v1/items?id=3", "/a.b/c..d/.e"] {
            assert!(matches!(normalize(path, MergeSlashes), Ok(std::borrow::Cow::Borrowed(_))), "{path}");
        }
    }

    #[test]
    fn modes_read_as_istio_writes_them() {
        for (text, mode) in [
            ("NONE", None),
            ("BASE", Base),
            ("DEFAULT", Base),
            ("MERGE_SLASHES", MergeSlashes),
            ("DECODE_AND_MERGE_SLASHES", DecodeAndMergeSlashes),
        ] {
            assert_eq!(text.parse::<PathNormalization>(), Ok(mode));
            let yaml: PathNormalization = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(yaml, mode);
        }
        assert!("SLASHES".parse::<PathNormalization>().is_err());
    }
}
