//! Text the request path writes on every request (addresses, numbers,
//! JSON strings), written straight into a byte buffer: `core::fmt` and
//! serde_json took a tenth of the proxy's instructions for these.

use std::net::{IpAddr, SocketAddr};

pub const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two lower-case hex digits, looked up at once.
pub const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX_DIGITS[i >> 4], HEX_DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

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
    if !needs_json_escape(bytes) {
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
            out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
        } else {
            out.extend_from_slice(escape);
        }
        plain_from = i + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// Whether `bytes` hold a control character, `"` or `\\`. Almost no
/// string does; the log's are short (a method, a path, an address), so
/// they are checked a word at a time, not left to a vector loop's tail.
pub(crate) fn needs_json_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of a byte of `(x - n) & !x` is set for some byte iff
    // some byte of `x` is below `n` (n <= 0x80); equality is "below 1"
    // after an xor.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let special = |x: u64| {
        (below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1)) & HIGH != 0
    };
    let mut words = bytes.chunks_exact(8);
    if words.by_ref().any(|w| special(u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))) {
        return true;
    }
    let mut tail = [b' '; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    special(u64::from_ne_bytes(tail))
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

    #[test]
    fn hex_pairs_are_each_bytes_two_digits() {
        for b in 0..=255u8 {
            assert_eq!(HEX_PAIRS[usize::from(b)], format!("{b:02x}").as_bytes(), "{b}");
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

    #[test]
    fn every_byte_that_needs_an_escape_is_found_wherever_it_is() {
        for len in 0..=17 {
            for at in 0..len {
                for b in 0..=255u8 {
                    // Neighbours that sit just around the borders the
                    // word test works with.
                    let mut bytes = vec![0x7f_u8; len];
                    bytes[at] = b;
                    let naive = bytes.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(needs_json_escape(&bytes), naive, "{bytes:?}");
                    bytes.iter_mut().enumerate().filter(|(i, _)| *i != at).for_each(|(_, c)| *c = 0x20);
                    let naive = bytes.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(needs_json_escape(&bytes), naive, "{bytes:?}");
                }
            }
        }
    }
}
