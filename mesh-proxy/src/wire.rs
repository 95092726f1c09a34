//! HTTP/1.1 message syntax shared by both directions (RFC 9112): header
//! blocks turned into `HeaderMap`s or field lists, how a body is framed,
//! and a body decoded out of a connection's read buffer. Pure functions
//! over bytes; the upstream client ([`crate::http1`]) and the downstream
//! server ([`crate::downstream`]) own the sockets.

use std::io;
use std::sync::OnceLock;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use smallvec::SmallVec;

use crate::answer::FieldList;

/// Heads larger than this are refused (Envoy's default
/// `max_request_headers_kb` and `max_response_headers_kb`: 60).
pub(crate) const MAX_HEAD: usize = 60 * 1024;
pub(crate) const MAX_HEADERS: usize = 100;
/// How much is read at a time.
pub(crate) const READ_SIZE: usize = 8 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The header names the proxy's connections saw: peers send the same ones
/// every time, and a name seen before is then neither validated nor
/// allocated again. Direct-mapped, and shared by all threads: a name's slot
/// is found without a search or a lock, and the first name to land on a
/// slot keeps it for the process's life (its text is kept for good, so
/// that handing it out copies a pointer, not a reference count). At most
/// `KNOWN_SLOTS` names of at most `KNOWN_NAME_MAX` bytes are ever kept; a
/// name whose slot is taken is only validated each time, as without this.
static KNOWN: [OnceLock<KnownName>; KNOWN_SLOTS] = [const { OnceLock::new() }; KNOWN_SLOTS];

/// Room enough that the common names (those of browsers, curl, Envoy,
/// gRPC) each have a slot of their own.
const KNOWN_SLOTS: usize = 128;
const KNOWN_NAME_MAX: usize = 64;

struct KnownName {
    name: HeaderName,
    /// Which framing field it is, worked out once.
    seen: Seen,
}

/// The slot of a raw name: its length and three of its bytes (which tell
/// apart `x-backend-version` and `x-backend-instance`), Fibonacci-hashed.
fn known_slot(raw: &[u8]) -> usize {
    let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else { return 0 };
    let middle = raw[raw.len() / 2];
    let key = u32::from_le_bytes([raw.len() as u8, first, middle, last]);
    (key.wrapping_mul(0x9E37_79B1) >> (32 - KNOWN_SLOTS.trailing_zeros())) as usize
}

/// The header name for `raw`, validated (and lower-cased) unless it was
/// seen before, with the framing field it is.
pub(crate) fn header_name(raw: &[u8]) -> Result<(HeaderName, Seen), http::header::InvalidHeaderName> {
    let slot = &KNOWN[known_slot(raw)];
    if let Some(k) = slot.get().filter(|k| k.name.as_str().as_bytes() == raw) {
        return Ok((k.name.clone(), k.seen));
    }
    let name = HeaderName::from_bytes(raw)?;
    let seen = Seen::of(&name);
    // Only names sent in lower case would ever match again.
    if slot.get().is_none() && raw.len() <= KNOWN_NAME_MAX && name.as_str().as_bytes() == raw {
        slot.get_or_init(|| {
            let text: &'static str = Box::leak(name.as_str().into());
            KnownName { name: HeaderName::from_static(text), seen }
        });
    }
    Ok((name, seen))
}

#[cfg(test)]
pub(crate) fn known_names() -> Vec<String> {
    KNOWN.iter().filter_map(OnceLock::get).map(|k| k.name.as_str().to_string()).collect()
}

/// The header fields httparse found, as offsets into the head's bytes,
/// and which of the fields that shape the message were among them.
#[derive(Default)]
pub(crate) struct RawHeaders {
    located: SmallVec<[(HeaderName, usize, usize); 16]>,
    pub(crate) seen: Seen,
}

/// Which framing and connection fields a head has: when it has none, the
/// questions about them are answered without a lookup.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seen {
    pub(crate) content_length: bool,
    pub(crate) transfer_encoding: bool,
    pub(crate) connection: bool,
    pub(crate) expect: bool,
    pub(crate) upgrade: bool,
}

impl Seen {
    /// The field `name` is, if it is one of these.
    fn of(name: &HeaderName) -> Seen {
        Seen {
            content_length: name == CONTENT_LENGTH,
            transfer_encoding: name == TRANSFER_ENCODING,
            connection: name == CONNECTION,
            expect: name == EXPECT,
            upgrade: name == UPGRADE,
        }
    }

    fn or(self, other: Seen) -> Seen {
        Seen {
            content_length: self.content_length | other.content_length,
            transfer_encoding: self.transfer_encoding | other.transfer_encoding,
            connection: self.connection | other.connection,
            expect: self.expect | other.expect,
            upgrade: self.upgrade | other.upgrade,
        }
    }
}

/// Room in a request's map for the fields the proxy adds to every one
/// (`x-request-id`, `x-forwarded-for`, `x-forwarded-proto`) and, where it
/// traces, the trace context (`x-b3-traceid`, `x-b3-spanid`,
/// `x-b3-sampled`), so that it is not grown and rehashed for them (a
/// `realloc` and a rehash a request, seen in callgrind).
pub(crate) const REQUEST_ROOM: usize = 6;
/// ... and in an answer's field list (`x-request-id`).
pub(crate) const RESPONSE_ROOM: usize = 1;

impl RawHeaders {
    /// Note where each value starts in `buf` (whose first `used` bytes are
    /// the head), so that the values can be sliced out of the head once it
    /// is split off, not copied.
    pub(crate) fn locate(
        &mut self,
        parsed: &[httparse::Header<'_>],
        buf: &[u8],
        used: usize,
    ) -> Result<(), &'static str> {
        let base = buf.as_ptr() as usize;
        for h in parsed {
            let (name, seen) = header_name(h.name.as_bytes()).map_err(|_| "header name")?;
            self.seen = self.seen.or(seen);
            let start = (h.value.as_ptr() as usize).wrapping_sub(base);
            if start.checked_add(h.value.len()).is_none_or(|end| end > used) {
                return Err("header value");
            }
            self.located.push((name, start, h.value.len()));
        }
        Ok(())
    }

    /// The header map, its values slices of `head`, with `room` for fields
    /// to be added.
    pub(crate) fn take_map(&mut self, head: &Bytes, room: usize) -> Result<HeaderMap, &'static str> {
        let mut map = HeaderMap::with_capacity(self.located.len() + room);
        for (name, start, len) in self.located.drain(..) {
            map.append(name, value_at(head, start, len)?);
        }
        Ok(map)
    }

    /// The fields as a list in the order they came (no hashing), with
    /// `room` for fields to be added.
    pub(crate) fn take_list(&mut self, head: &Bytes, room: usize) -> Result<FieldList, &'static str> {
        let mut list = Vec::with_capacity(self.located.len() + room);
        for (name, start, len) in self.located.drain(..) {
            list.push((name, value_at(head, start, len)?));
        }
        Ok(list)
    }
}

/// The value of `len` bytes at `start` in `head`, sliced, not copied.
fn value_at(head: &Bytes, start: usize, len: usize) -> Result<HeaderValue, &'static str> {
    let value = head.slice(start..start + len);
    if value.is_ascii() {
        // SAFETY: the one requirement is UTF-8, which ASCII is. The check
        // skipped is httparse's own: a field value it parsed holds only
        // HTAB, SP, VCHAR and obs-text (RFC 9110 section 5.5), the bytes
        // `from_maybe_shared` allows; and ASCII is checked a word at a
        // time, not a byte.
        Ok(unsafe { HeaderValue::from_maybe_shared_unchecked(value) })
    } else {
        HeaderValue::from_maybe_shared(value).map_err(|_| "header value")
    }
}

/// The values of a field by name, from a map or a list of fields.
pub(crate) trait FieldValues {
    fn values(&self, name: HeaderName) -> impl Iterator<Item = &HeaderValue>;
}

impl FieldValues for HeaderMap {
    fn values(&self, name: HeaderName) -> impl Iterator<Item = &HeaderValue> {
        self.get_all(name).iter()
    }
}

impl FieldValues for FieldList {
    fn values(&self, name: HeaderName) -> impl Iterator<Item = &HeaderValue> {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// How a message body ends (RFC 9112, section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes the connection (responses only).
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    /// This many bytes of the chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// Why a head's framing fields were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// Content-Length and Transfer-Encoding both, or a Content-Length that
    /// is not one decimal number in one field: the ways two parsers can
    /// see different message boundaries (RFC 9112 section 6.3).
    Malformed(&'static str),
    /// A transfer coding other than `chunked` alone (Envoy answers a
    /// request with one 501).
    UnsupportedCoding,
}

/// The framing the headers ask for, as strictly as Envoy reads it: chunked
/// when Transfer-Encoding is `chunked` alone; the Content-Length when there
/// is exactly one, a plain decimal number; else `UntilClose` (for a
/// request: no body). Both fields at once, a repeated or listed
/// Content-Length (even of one value), and any other transfer coding are
/// refused.
pub(crate) fn framing_of(headers: &impl FieldValues, seen: Seen) -> Result<Framing, FramingError> {
    if seen.transfer_encoding && seen.content_length {
        return Err(FramingError::Malformed("both content-length and transfer-encoding"));
    }
    if seen.transfer_encoding {
        let mut codings = headers.values(TRANSFER_ENCODING).flat_map(|v| v.as_bytes().split(|b| *b == b','));
        return match (codings.next(), codings.next()) {
            (Some(only), None) if only.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
                Ok(Framing::Chunked(Chunk::Size))
            }
            _ => Err(FramingError::UnsupportedCoding),
        };
    }
    if !seen.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut values = headers.values(CONTENT_LENGTH);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(FramingError::Malformed("more than one content-length"));
    };
    let digits = value.as_bytes();
    // `u64::from_str` takes a leading `+`; the grammar does not.
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(FramingError::Malformed("content-length"));
    }
    let n = std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok());
    n.map(Framing::Length).ok_or(FramingError::Malformed("content-length"))
}

/// A Host field value is RFC 3986's `host [ ":" port ]`: a registered
/// name or an IPv4 address, or an IP literal in brackets, and digits after
/// the colon. Checked on the bytes, with no allocation, for every request.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => (&value[..=end], &value[end + 1..]),
            None => return false,
        },
        _ => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &[][..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty() && literal.iter().all(|b| b.is_ascii_alphanumeric() || b".:%-_~".contains(b))
        }
        _ => !host.is_empty() && host.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b)),
    };
    port_ok && host_ok
}

/// The tokens of the `Connection` header fields (`close`, `upgrade`, the
/// names of other hop-by-hop headers), trimmed.
pub(crate) fn connection_tokens(headers: &impl FieldValues) -> impl Iterator<Item = &str> {
    headers.values(CONNECTION).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

pub(crate) fn connection_has(headers: &impl FieldValues, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether the peer may send another message on this connection.
pub(crate) fn keeps_alive(headers: &impl FieldValues, seen: Seen, version: Version) -> bool {
    if !seen.connection {
        return version != Version::HTTP_10;
    }
    match version {
        Version::HTTP_10 => connection_has(headers, "keep-alive"),
        _ => !connection_has(headers, "close"),
    }
}

/// One step of decoding a body out of a read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The body is whole (`framing` is `Done`).
    End,
    /// Nothing usable buffered: read more, then call again.
    NeedMore,
}

/// The next piece of the body framed by `framing` from the front of `buf`,
/// consumed, with `framing` moved on. Trailers are read and dropped.
pub(crate) fn decode(framing: &mut Framing, buf: &mut BytesMut) -> io::Result<Decoded> {
    loop {
        match *framing {
            Framing::Done => return Ok(Decoded::End),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Decoded::End);
            }
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) if !buf.is_empty() => {
                let n = left.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                *framing = match *framing {
                    Framing::Length(_) if left == n => Framing::Done,
                    Framing::Length(_) => Framing::Length(left - n),
                    _ if left == n => Framing::Chunked(Chunk::DataEnd),
                    _ => Framing::Chunked(Chunk::Data(left - n)),
                };
                return Ok(Decoded::Data(data));
            }
            Framing::UntilClose if !buf.is_empty() => return Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(Chunk::Size) => match line(buf, MAX_CHUNK_LINE, "chunk size line too long")? {
                Some(end) => {
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                None => return Ok(Decoded::NeedMore),
            },
            Framing::Chunked(Chunk::DataEnd) if buf.len() >= 2 => {
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => match line(buf, MAX_HEAD, "trailers too large")? {
                Some(0) => {
                    buf.advance(2);
                    *framing = Framing::Done;
                }
                Some(end) => {
                    trailer_field(&buf[..end])?;
                    buf.advance(end + 2);
                }
                None => return Ok(Decoded::NeedMore),
            },
            _ => return Ok(Decoded::NeedMore),
        }
    }
}

/// Where the line at the front of `buf` ends (its CRLF), once it is all
/// there. A bare CR or LF in it is an error: front proxies that read one as
/// a line end and those that do not see different message boundaries.
fn line(buf: &[u8], max: usize, too_long: &'static str) -> io::Result<Option<usize>> {
    match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(at) if buf[at] == b'\n' => Err(invalid("bare LF")),
        Some(at) if at + 1 == buf.len() => Ok(None),
        Some(at) if buf[at + 1] == b'\n' => Ok(Some(at)),
        Some(_) => Err(invalid("bare CR")),
        None if buf.len() > max => Err(invalid(too_long)),
        None => Ok(None),
    }
}

/// RFC 9112 7.1: `chunk-size [ chunk-ext ]`, the size one to sixteen hex
/// digits, the extensions `;name[=value]` with optional blanks around
/// `;` and `=`, values a token or a quoted string. Extensions are read
/// and dropped.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("invalid chunk size"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &b| n << 4 | u64::from(char::from(b).to_digit(16).unwrap_or(0)));
    let mut rest = &line[digits..];
    loop {
        rest = trim_blanks(rest);
        match rest.split_first() {
            None => return Ok(size),
            Some((b';', after)) => rest = chunk_ext(trim_blanks(after))?,
            Some(_) => return Err(invalid("invalid chunk size")),
        }
    }
}

/// One chunk extension after its `;`; what follows it.
fn chunk_ext(ext: &[u8]) -> io::Result<&[u8]> {
    let name = ext.iter().take_while(|&&b| is_tchar(b)).count();
    if name == 0 {
        return Err(invalid("invalid chunk extension"));
    }
    let rest = trim_blanks(&ext[name..]);
    let Some((b'=', value)) = rest.split_first() else { return Ok(rest) };
    let value = trim_blanks(value);
    if value.first() == Some(&b'"') {
        let mut i = 1;
        while i < value.len() {
            match value[i] {
                b'"' => return Ok(&value[i + 1..]),
                b'\\' if i + 1 < value.len() && is_field_byte(value[i + 1]) => i += 2,
                b if is_field_byte(b) && b != b'\\' => i += 1,
                _ => break,
            }
        }
        return Err(invalid("invalid chunk extension"));
    }
    let token = value.iter().take_while(|&&b| is_tchar(b)).count();
    if token == 0 {
        return Err(invalid("invalid chunk extension"));
    }
    Ok(&value[token..])
}

/// A trailer field line, `name: value`: checked as a header line is (so a
/// request line after the last chunk is an error, not a trailer), then
/// dropped.
fn trailer_field(line: &[u8]) -> io::Result<()> {
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    match line.get(name) {
        Some(b':') if name > 0 && line[name + 1..].iter().all(|&b| is_field_byte(b)) => Ok(()),
        _ => Err(invalid("invalid trailer field")),
    }
}

fn trim_blanks(mut s: &[u8]) -> &[u8] {
    while let Some((b' ' | b'\t', rest)) = s.split_first() {
        s = rest;
    }
    s
}

/// RFC 9110 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a field value may hold: visible ASCII, blanks, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

pub(crate) fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, wire: &[u8], piece: usize) -> io::Result<(Vec<u8>, Framing, usize)> {
        let mut framing = framing;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decode(&mut framing, &mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::End => return Ok((body, framing, buf.len() + wire.len() - fed)),
                Decoded::NeedMore if fed == wire.len() => return Ok((body, framing, 0)),
                Decoded::NeedMore => {
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn common_names_have_slots_of_their_own() {
        let common = [
            "host",
            "user-agent",
            "accept",
            "accept-encoding",
            "accept-language",
            "content-length",
            "content-type",
            "date",
            "connection",
            "server",
            "cache-control",
            "transfer-encoding",
            "vary",
            "etag",
            "last-modified",
            "cookie",
            "set-cookie",
            "authorization",
            "referer",
            "origin",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-envoy-upstream-service-time",
            "te",
            "grpc-status",
            "grpc-message",
            "x-backend-version",
            "x-backend-instance",
            "x-backend-protocol",
            "x-backend-connection-requests",
        ];
        let mut slots: Vec<usize> = common.iter().map(|n| known_slot(n.as_bytes())).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), common.len());
    }

    #[test]
    fn remembered_names_keep_their_framing_role_when_slots_are_shared() {
        // More names than slots, so that names land on each other's slots,
        // and every round finds some remembered and some not.
        let mut names: Vec<String> = (0..3 * KNOWN_SLOTS).map(|i| format!("x-custom-{i}")).collect();
        names.extend(
            ["content-length", "transfer-encoding", "connection", "expect", "upgrade", "host"].map(String::from),
        );
        for _ in 0..3 {
            for raw in &names {
                let (name, seen) = header_name(raw.as_bytes()).unwrap();
                assert_eq!(name.as_str(), raw);
                assert!(
                    KNOWN[known_slot(raw.as_bytes())].get().is_some(),
                    "{raw}: its slot is taken, by it or another"
                );
                assert_eq!(
                    [seen.content_length, seen.transfer_encoding, seen.connection, seen.expect, seen.upgrade],
                    [
                        raw == "content-length",
                        raw == "transfer-encoding",
                        raw == "connection",
                        raw == "expect",
                        raw == "upgrade"
                    ],
                    "{raw}"
                );
            }
        }
        // Upper case is validated (and lower-cased) every time, never kept.
        assert_eq!(header_name(b"Content-Length").unwrap().0, CONTENT_LENGTH);
        assert!(header_name(b"Content-Length").unwrap().1.content_length);
        assert!(!known_names().iter().any(|n| n.bytes().any(|b| b.is_ascii_uppercase())));
        // Long names are not kept for good.
        let long = "x-".repeat(KNOWN_NAME_MAX);
        assert_eq!(header_name(long.as_bytes()).unwrap().0.as_str(), long);
        assert!(!known_names().contains(&long));
        assert!(header_name(b"").is_err() && header_name(b"bad name").is_err());
    }

    #[test]
    fn bodies_decode_the_same_however_the_bytes_arrive() {
        let chunked = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for piece in [1, 3, 7, 1000] {
            let (body, framing, left) = decode_all(Framing::Chunked(Chunk::Size), chunked, piece).unwrap();
            assert_eq!((body.as_slice(), framing), (&b"hello world"[..], Framing::Done), "pieces of {piece}");
            assert_eq!(left, 4, "the next message's bytes are left alone");
            let (body, framing, left) = decode_all(Framing::Length(5), b"helloNEXT", piece).unwrap();
            assert_eq!((body.as_slice(), framing, left), (&b"hello"[..], Framing::Done, 4));
        }
        let (body, framing, _) = decode_all(Framing::Chunked(Chunk::Size), b"5\r\nhel", 2).unwrap();
        assert_eq!((body.as_slice(), framing), (&b"hel"[..], Framing::Chunked(Chunk::Data(2))), "waits for more");
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX", &[b'1'; 5000]] {
            assert!(decode_all(Framing::Chunked(Chunk::Size), bad, 1000).is_err(), "{bad:?}");
        }
    }

    /// RFC 9112 7.1 read strictly: where front proxies differ (a bare LF,
    /// an empty size, a request line as a trailer), the body is refused.
    #[test]
    fn chunked_framing_is_read_as_rfc_9112_writes_it() {
        for good in [
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=b\r\nhello\r\n0\r\n\r\n",
            b"5 ; a = b ; c\r\nhello\r\n0;last\r\n\r\n",
            b"5;a=\"q \\\" ;x\"\r\nhello\r\n0\r\n\r\n",
            b"0000000000000005\r\nhello\r\n00\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-sum: 1\r\nx-more:\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t:\tv a l\r\n\r\n",
        ] {
            for piece in [1, 2, 1000] {
                let decoded = decode_all(Framing::Chunked(Chunk::Size), good, piece);
                let (body, framing, _) = decoded.unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(good)));
                assert_eq!((body.as_slice(), framing), (&b"hello"[..], Framing::Done), "{good:?}");
            }
        }
        for bad in [
            &b"5;a\nb\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"\r\n5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000005\r\nhello\r\n0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a=\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"open\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\x01\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            b"5\r\nhello\r\n0\r\n x-folded: 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: 1\n\r\n",
            b"5\r\nhello\r\n0\r\n: empty-name\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: a\x00b\r\n\r\n",
        ] {
            for piece in [1, 1000] {
                let decoded = decode_all(Framing::Chunked(Chunk::Size), bad, piece);
                assert!(decoded.is_err(), "{:?} in pieces of {piece}: {decoded:?}", String::from_utf8_lossy(bad));
            }
        }
    }

    #[test]
    fn hosts_are_checked_as_rfc_3986_writes_them() {
        for good in ["a", "a.example", "a.example:8080", "a:", "10.0.0.1:80", "[::1]", "[::1]:80", "a_b-c~d", "xn--nxa"]
        {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in ["a b", "user@a", "a:x", "a:b:c", ":80", "[::1", "[]", "a/b", "a\tb", "a\"b", "[::1]x"] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let map = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in pairs {
                m.append(*n, HeaderValue::from_static(v));
            }
            m
        };
        let framing_of = |m: &HeaderMap| {
            let seen = Seen {
                content_length: m.contains_key(CONTENT_LENGTH),
                transfer_encoding: m.contains_key(TRANSFER_ENCODING),
                ..Seen::default()
            };
            framing_of(m, seen)
        };
        assert_eq!(framing_of(&map(&[("content-length", "5")])), Ok(Framing::Length(5)));
        assert_eq!(framing_of(&map(&[("transfer-encoding", "chunked")])), Ok(Framing::Chunked(Chunk::Size)));
        assert_eq!(framing_of(&map(&[("transfer-encoding", " Chunked ")])), Ok(Framing::Chunked(Chunk::Size)));
        assert_eq!(framing_of(&map(&[])), Ok(Framing::UntilClose));
        // As strict as Envoy 1.40: what two parsers could frame differently
        // is refused, not resolved by a rule the other side may not share.
        let malformed =
            |pairs: &[(&'static str, &'static str)]| matches!(framing_of(&map(pairs)), Err(FramingError::Malformed(_)));
        assert!(malformed(&[("transfer-encoding", "chunked"), ("content-length", "5")]));
        assert!(malformed(&[("content-length", "5, 5")]), "a list, even of one value");
        assert!(malformed(&[("content-length", "5"), ("content-length", "5")]), "a repeat, even of one value");
        assert!(malformed(&[("content-length", "5"), ("content-length", "6")]));
        for bad in ["-1", "+5", "", "5 5", "0x5", "99999999999999999999999"] {
            assert!(malformed(&[("content-length", bad)]), "{bad:?}");
        }
        for coding in [
            &[("transfer-encoding", "gzip")][..],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            &[("transfer-encoding", "")],
        ] {
            assert_eq!(framing_of(&map(coding)), Err(FramingError::UnsupportedCoding), "{coding:?}");
        }
    }
}
