//! Istio mTLS in translation: auto mTLS per endpoint, DestinationRule TLS
//! at cluster, port and subset level, secure naming, and PeerAuthentication
//! as inbound chains (mesh, namespace, workload, port).

mod common;

use common::labels;
use mesh_core::config::Resource;
use mesh_core::mesh::MeshSnapshot;
use mesh_core::mesh_config::MeshConfig;
use mesh_core::model::{Endpoint, Service};
use mesh_core::proxy_config::ProxyConfig;
use mesh_core::registry::MemoryRegistry;
use mesh_core::store::MemoryConfigStore;
use mesh_core::translate::{translate_with, ProxyIdentity};
use mesh_core::{ConfigStore, ServiceRegistry};

/// httpbin in `foo` with a sidecar (two endpoints, one service account),
/// and in `legacy` without one.
fn registry() -> MemoryRegistry {
    let r = MemoryRegistry::new("test");
    let sidecar = |ip: &str, sa: &str| {
        let mut e = Endpoint::new(ip);
        e.labels = labels(&[("app", "httpbin"), ("security.istio.io/tlsMode", "istio")]);
        e.service_account = Some(sa.into());
        e
    };
    r.upsert(
        Service::http("httpbin.foo.svc.cluster.local", "foo", 8000),
        vec![sidecar("10.0.1.1", "httpbin"), sidecar("10.0.1.2", "httpbin")],
    );
    let mut plain = Endpoint::new("10.0.3.1");
    plain.labels = labels(&[("app", "httpbin")]);
    r.upsert(Service::http("httpbin.legacy.svc.cluster.local", "legacy", 8000), vec![plain]);
    r
}

fn build(yaml: &[&str], proxy: &ProxyIdentity, mesh: &MeshConfig) -> ProxyConfig {
    let store = MemoryConfigStore::new();
    for doc in yaml {
        store.upsert(Resource::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}")));
    }
    let r = registry();
    translate_with(&MeshSnapshot { config: store.snapshot(), services: r.snapshot() }, proxy, mesh)
}

fn sleep_in_foo() -> ProxyIdentity {
    ProxyIdentity::sidecar("sleep", "foo", labels(&[("app", "sleep")]))
}

fn httpbin_in_foo() -> ProxyIdentity {
    let mut p = ProxyIdentity::sidecar("httpbin", "foo", labels(&[("app", "httpbin")]));
    p.ip = Some("10.0.1.1".into());
    p
}

fn peer_authentication(namespace: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: {namespace}}}\nspec:\n{body}"
    )
}

#[test]
fn auto_mtls_goes_to_endpoints_with_a_sidecar_and_expects_their_identity() {
    let cfg = build(&[], &sleep_in_foo(), &MeshConfig::default());
    let foo = cfg.cluster("outbound|8000||httpbin.foo.svc.cluster.local").expect("the cluster");
    let tls = foo.tls.as_ref().expect("auto mTLS");
    assert!(tls.auto);
    assert_eq!(tls.mode, "ISTIO_MUTUAL");
    assert_eq!(tls.subject_alt_names, vec!["spiffe://cluster.local/ns/foo/sa/httpbin".to_string()]);
    assert_eq!(tls.sni.as_deref(), Some("outbound_.8000_._.httpbin.foo.svc.cluster.local"));
    let endpoints = &cfg.endpoints.iter().find(|la| la.cluster_name == foo.name).expect("endpoints").endpoints;
    assert!(endpoints.iter().all(|e| e.mtls_ready));
    let legacy = &cfg.endpoints.iter().find(|la| la.cluster_name.ends_with("httpbin.legacy.svc.cluster.local"));
    assert!(legacy.expect("endpoints").endpoints.iter().all(|e| !e.mtls_ready), "no sidecar: plaintext");

    let off = MeshConfig { enable_auto_mtls: false, ..MeshConfig::default() };
    let cfg = build(&[], &sleep_in_foo(), &off);
    assert!(cfg.cluster("outbound|8000||httpbin.foo.svc.cluster.local").expect("the cluster").tls.is_none());

    let disabled = peer_authentication("foo", "  mtls: {mode: DISABLE}");
    let cfg = build(&[&disabled], &sleep_in_foo(), &MeshConfig::default());
    let tls = &cfg.cluster("outbound|8000||httpbin.foo.svc.cluster.local").expect("the cluster").tls;
    assert!(tls.is_none(), "the destination namespace disables mTLS");
}

#[test]
fn destination_rule_tls_at_each_level_wins_over_auto_mtls() {
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 8000}
      tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    labels: {app: httpbin}
    trafficPolicy:
      tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, sni: httpbin.example}";
    let cfg = build(&[dr], &sleep_in_foo(), &MeshConfig::default());
    let port = cfg.cluster("outbound|8000||httpbin.foo.svc.cluster.local").expect("the cluster");
    let tls = port.tls.as_ref().expect("port-level ISTIO_MUTUAL");
    assert!(!tls.auto, "every endpoint");
    assert_eq!(tls.subject_alt_names, vec!["spiffe://cluster.local/ns/foo/sa/httpbin".to_string()]);
    let subset = cfg.cluster("outbound|8000|v1|httpbin.foo.svc.cluster.local").expect("the subset");
    let tls = subset.tls.as_ref().expect("the subset's SIMPLE");
    assert_eq!((tls.mode.as_str(), tls.sni.as_deref()), ("SIMPLE", Some("httpbin.example")));

    let mesh_wide = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all, namespace: istio-system}
spec:
  host: '*.local'
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}";
    let cfg = build(&[mesh_wide], &sleep_in_foo(), &MeshConfig { enable_auto_mtls: false, ..MeshConfig::default() });
    let legacy = cfg.cluster("outbound|8000||httpbin.legacy.svc.cluster.local").expect("the cluster");
    assert!(legacy.tls.as_ref().is_some_and(|t| !t.auto), "mTLS even to a workload without a sidecar");
}

/// (destination port, mTLS chain?) of the inbound listener.
fn inbound_chains(cfg: &ProxyConfig) -> Vec<(Option<u16>, bool)> {
    let inbound = cfg.listeners.iter().find(|l| l.name == "virtualInbound").expect("the inbound listener");
    inbound.filter_chains.iter().map(|c| (c.destination_port, c.tls.is_some())).collect()
}

#[test]
fn peer_authentication_becomes_inbound_chains() {
    // The declared port's chains, then the passthrough chains for ports no
    // Service declares (destination port `None`), in the workload's mode.
    let mesh = MeshConfig::default();
    assert_eq!(
        inbound_chains(&build(&[], &httpbin_in_foo(), &mesh)),
        [(Some(8000), true), (Some(8000), false), (None, true), (None, false)],
        "PERMISSIVE by default: both, told apart by the first bytes"
    );
    let strict = peer_authentication("istio-system", "  mtls: {mode: STRICT}");
    assert_eq!(inbound_chains(&build(&[&strict], &httpbin_in_foo(), &mesh)), [(Some(8000), true), (None, true)]);
    let disable_ns = peer_authentication("foo", "  mtls: {mode: DISABLE}");
    assert_eq!(
        inbound_chains(&build(&[&strict, &disable_ns], &httpbin_in_foo(), &mesh)),
        [(Some(8000), false), (None, false)]
    );
    let port_level = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: UNSET}
  portLevelMtls:
    8000: {mode: PERMISSIVE}
    9000: {mode: DISABLE}";
    assert_eq!(
        inbound_chains(&build(&[&strict, port_level], &httpbin_in_foo(), &mesh)),
        [(Some(8000), true), (Some(8000), false), (Some(9000), false), (None, true)],
        "an undeclared port's own mode gets a passthrough chain of its own; the rest inherit STRICT"
    );
}

#[test]
fn a_service_entrys_subject_alt_names_join_the_expected_identities() {
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: foo}
spec:
  hosts: [vm.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  subjectAltNames: [spiffe://cluster.local/ns/foo/sa/legacy-vm]
  endpoints: [{address: 10.0.9.1, serviceAccount: vm, labels: {security.istio.io/tlsMode: istio}}]";
    // The entry's service, as the adapters register it.
    let resource = Resource::from_yaml(se).expect("a ServiceEntry");
    let r = registry();
    for state in mesh_core::service_entry::services_of_all([&resource], &[]) {
        r.upsert((*state.service).clone(), state.endpoints.to_vec());
    }
    let store = MemoryConfigStore::new();
    let mesh = MeshSnapshot { config: store.snapshot(), services: r.snapshot() };
    let cfg = translate_with(&mesh, &sleep_in_foo(), &MeshConfig::default());
    let tls = cfg.cluster("outbound|80||vm.foo.svc.cluster.local").and_then(|c| c.tls.clone()).expect("auto mTLS");
    assert_eq!(
        tls.subject_alt_names,
        vec!["spiffe://cluster.local/ns/foo/sa/legacy-vm".to_string(), "spiffe://cluster.local/ns/foo/sa/vm".into()]
    );
}

#[test]
fn trust_domain_aliases_widen_authorization_principals() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-sleep, namespace: foo}
spec:
  rules: [{from: [{source: {principals: [old.td/ns/foo/sa/sleep, other.td/ns/foo/sa/x]}}]}]";
    let mesh = MeshConfig {
        trust_domain: "new.td".into(),
        trust_domain_aliases: vec!["old.td".into()],
        ..MeshConfig::default()
    };
    let cfg = build(&[policy], &httpbin_in_foo(), &mesh);
    let principals = &cfg.authorization[0].policy.rules[0].from[0].source.principals;
    assert_eq!(principals, &["new.td/ns/foo/sa/sleep", "old.td/ns/foo/sa/sleep", "other.td/ns/foo/sa/x"]);
}
