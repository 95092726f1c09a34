//! Text the request path writes on every request (addresses, numbers,
//! JSON strings), written straight into a byte buffer: `core::fmt` and
//! serde_json took a tenth of the proxy's instructions for these.

use std::net::{IpAddr, SocketAddr};

pub const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `n` in lower-case hex, no leading zeros (a chunk-size line).
pub fn hex(n: usize) -> smallvec::SmallVec<[u8; 16]> {
    let mut digits = smallvec::SmallVec::new();
    let mut shift = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) * 4;
    while shift > 0 {
        shift -= 4;
        digits.push(HEX_DIGITS[(n >> shift) & 0xf]);
    }
    digits
}

pub fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address as `Display` writes it (`10.0.0.1`, `2001:db8::1`).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_int(out, octet);
            }
        }
        // Rare on the request path, and its shortest form takes care.
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// An address and port as `Display` writes them (`10.0.0.1:80`,
/// `[::1]:80`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push(b'[');
        push_ip(out, addr.ip());
        out.push(b']');
    } else {
        push_ip(out, addr.ip());
    }
    out.push(b':');
    push_int(out, addr.port());
}

/// `s` as a JSON string, quotes included.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escape; a fold without early exit
    // checks them a vector at a time.
    if !bytes.iter().fold(false, |any, &b| any | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS[usize::from(b >> 4)]);
            out.push(HEX_DIGITS[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        plain_from = i + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_in_hex() {
        for n in [0usize, 1, 15, 16, 255, 4096, 0x1234_5678] {
            assert_eq!(hex(n).as_slice(), format!("{n:x}").as_bytes());
        }
    }

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in
            ["10.0.0.1:80", "127.0.0.1:65535", "0.0.0.0:0", "255.255.255.255:1", "[::1]:8080", "[2001:db8::a:1]:443"]
        {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(text(|o| push_socket_addr(o, addr)), addr.to_string());
            assert_eq!(text(|o| push_ip(o, addr.ip())), addr.ip().to_string());
        }
    }

    #[test]
    fn json_strings_read_back_as_written() {
        for s in
            ["", "/plain/path?q=1", "quote \" and \\ backslash", "line\nbreak\r\ttab", "\u{1}\u{1f}\u{7f}", "ünïcødé ✓"]
        {
            let json = text(|o| push_json_str(o, s));
            assert_eq!(serde_json::from_str::<String>(&json).unwrap(), s, "{json}");
        }
        assert_eq!(text(|o| push_json_str(o, "\u{1}")), r#""\u0001""#);
    }
}
