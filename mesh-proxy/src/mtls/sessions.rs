//! TLS 1.3 session tickets for in-mesh connections, kept per server name.
//!
//! rustls's own store keeps 8 tickets per server, and a ticket is used
//! once: a pool opening more than 8 connections to one destination at a
//! time (a burst, or `maxRequestsPerConnection: 1`) ran out and fell back
//! to full handshakes (ECDSA both ways), where Envoy reuses one session.
//! This store keeps more per server; servers issue two with every
//! connection, so it refills as fast as it is drawn.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Tickets kept per server name.
const TICKETS_PER_SERVER: usize = 64;
/// Server names kept (one per destination port and subset); past it the
/// store starts over.
const SERVERS: usize = 4096;

#[derive(Debug, Default)]
pub struct Sessions {
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

#[derive(Debug, Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl Sessions {
    fn with<R>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Server) -> R) -> R {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if servers.len() >= SERVERS && !servers.contains_key(&name) {
            servers.clear();
        }
        f(servers.entry(name).or_default())
    }

    fn read<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Server) -> Option<R>) -> Option<R> {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        servers.get_mut(&name.to_owned()).and_then(f)
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.read(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.read(name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.read(name, |s| s.tls12.take());
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(name, |s| {
            if s.tls13.len() == TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest first: the oldest are the nearest to expiring.
        self.read(name, |s| s.tls13.pop_back())
    }
}
