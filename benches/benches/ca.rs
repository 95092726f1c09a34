//! The CA's work per workload: a CSR verified and a certificate signed
//! for the proven identity (goal: 1,000 in under 5 s), and a workload's
//! side, a new key and its CSR. Both ECDSA P-256 on aws-lc-rs.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_core::identity::SpiffeId;
use mesh_xds::ca::authority::{CertificateAuthority, Lifetimes};

fn csr() -> String {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).and_then(|c| c.pem()).expect("a CSR")
}

fn ca(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local", Lifetimes::default()).expect("a CA");
    let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/sleep".parse().expect("an ID");
    let csrs: Vec<String> = (0..1000).map(|_| csr()).collect();

    // The goal as stated: 1,000 CSRs to signed chains, timed once.
    let started = Instant::now();
    for csr in &csrs {
        ca.sign(csr, std::slice::from_ref(&id), Duration::ZERO).expect("signed");
    }
    eprintln!("ca/1000_certificates: {:?} (goal: under 5 s)", started.elapsed());

    let mut next = csrs.iter().cycle();
    c.bench_function("ca/sign_csr", |b| {
        b.iter(|| ca.sign(next.next().expect("a CSR"), std::slice::from_ref(&id), Duration::ZERO).expect("signed"))
    });
    c.bench_function("ca/workload_key_and_csr", |b| b.iter(csr));
}

criterion_group!(benches, ca);
criterion_main!(benches);
