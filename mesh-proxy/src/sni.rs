//! Which of a gateway listener's filter chains a TLS connection is for,
//! by its ClientHello's SNI, as Envoy's filter chain match picks: the
//! first chain naming the server, else a chain that names none, else
//! none (the connection is closed). The ClientHello is read, not consumed:
//! its bytes go back in front of the connection (`Rewind`), for the
//! chosen chain to pass through or terminate.

use bytes::{Bytes, BytesMut};
use mesh_core::proxy_config::FilterChain;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A ClientHello fits in one TLS record of 16 KiB, and in practice far
/// less; more than this is not one.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The ClientHello's SNI (`None`: not TLS, or no name), and the bytes
/// read to learn it, to be put back.
pub async fn read_client_hello<IO: AsyncRead + Unpin>(io: &mut IO) -> std::io::Result<(Option<String>, Bytes)> {
    let mut read = BytesMut::with_capacity(2048);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        if io.read_buf(&mut read).await? == 0 || read.len() > MAX_CLIENT_HELLO {
            return Ok((None, read.freeze()));
        }
        while fed < read.len() {
            match acceptor.read_tls(&mut &read[fed..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_ascii_lowercase);
                return Ok((sni, read.freeze()));
            }
            Ok(None) => {}
            // Not a ClientHello: no name; the chains decide.
            Err(_) => return Ok((None, read.freeze())),
        }
    }
}

/// The chain for `sni`: the first naming it, else the first naming none.
pub fn pick<'a>(chains: &'a [FilterChain], sni: Option<&str>) -> Option<&'a FilterChain> {
    let named = sni.and_then(|name| {
        chains.iter().find(|c| c.server_names.iter().any(|n| mesh_core::translate::host_matches(n, name)))
    });
    named.or_else(|| chains.iter().find(|c| c.server_names.is_empty()))
}

/// Whether a listener's connections must be told apart by SNI before
/// anything else: a TCP chain beside other chains, or a TCP chain that
/// names servers or terminates TLS. (HTTP-only listeners pick their TLS
/// chain in the handshake, [`crate::tls::TlsListener`].)
pub fn routes_by_sni(chains: &[FilterChain]) -> bool {
    let tcp = chains.iter().any(|c| matches!(c.action, mesh_core::proxy_config::ChainAction::Tcp { .. }));
    tcp && (chains.len() > 1 || chains.iter().any(|c| c.tls.is_some() || !c.server_names.is_empty()))
}
