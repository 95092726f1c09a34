//! Istio's standard labels, filled as Istio's stats filter fills them: the
//! client side (`reporter="source"`: a gateway, a sidecar's outbound)
//! knows itself and learns the destination from the endpoint it picked;
//! the server side (`reporter="destination"`: a sidecar's inbound) knows
//! itself and learns the source from the mTLS peer's certificate and the
//! metadata exchange header.

use std::borrow::Cow;

use mesh_core::workload::WorkloadMeta;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// A series' labels, in order: Istio's standard ones as filled here, then
/// as the Telemetry API's tag overrides leave them (some removed, some
/// set, some added under names of the user's).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Labels(pub Vec<(Cow<'static, str>, String)>);

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

impl Labels {
    fn push(&mut self, name: &'static str, value: impl Into<String>) {
        self.0.push((Cow::Borrowed(name), value.into()));
    }

    /// `istio_requests_total`'s labels and its histograms'.
    pub fn request(ends: Ends, protocol: &'static str, code: u16, grpc_status: &str, flags: &'static str) -> Labels {
        let mut labels = ends.into_labels();
        labels.push("request_protocol", protocol);
        labels.push("response_code", code.to_string());
        labels.push("grpc_response_status", grpc_status);
        labels.push("response_flags", flags);
        labels
    }

    /// The `istio_tcp_*` metrics' labels.
    pub fn tcp(ends: Ends, flags: &'static str) -> Labels {
        let mut labels = ends.into_labels();
        labels.push("request_protocol", "tcp");
        labels.push("response_flags", flags);
        labels
    }
}

/// Who is at each end: the labels every Istio metric has.
#[derive(Clone, Debug)]
pub struct Ends {
    reporter: &'static str,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_cluster: String,
    connection_security_policy: &'static str,
}

impl Ends {
    fn into_labels(self) -> Labels {
        let mut l = Labels(Vec::with_capacity(26));
        l.push("reporter", self.reporter);
        l.push("source_workload", self.source_workload);
        l.push("source_canonical_service", self.source_canonical_service);
        l.push("source_canonical_revision", self.source_canonical_revision);
        l.push("source_workload_namespace", self.source_workload_namespace);
        l.push("source_principal", self.source_principal);
        l.push("source_app", self.source_app);
        l.push("source_version", self.source_version);
        l.push("source_cluster", self.source_cluster);
        l.push("destination_workload", self.destination_workload);
        l.push("destination_workload_namespace", self.destination_workload_namespace);
        l.push("destination_principal", self.destination_principal);
        l.push("destination_app", self.destination_app);
        l.push("destination_version", self.destination_version);
        l.push("destination_service", self.destination_service);
        l.push("destination_canonical_service", self.destination_canonical_service);
        l.push("destination_canonical_revision", self.destination_canonical_revision);
        l.push("destination_service_name", self.destination_service_name);
        l.push("destination_service_namespace", self.destination_service_namespace);
        l.push("destination_cluster", self.destination_cluster);
        l.push("connection_security_policy", self.connection_security_policy);
        l
    }
}

/// What one side knows of an exchange.
pub struct Side<'a> {
    pub workload: Option<&'a WorkloadMeta>,
    /// The SPIFFE ID it proved over mTLS.
    pub principal: Option<&'a str>,
}

const UNKNOWN: &str = "unknown";

fn or_unknown(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN).to_string()
}

/// `ns` of a SPIFFE ID `spiffe://domain/ns/NS/sa/SA`.
fn principal_namespace(principal: &str) -> Option<&str> {
    let (_, rest) = principal.split_once("/ns/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The service an exchange was for, as the cluster names it.
pub struct Service<'a> {
    pub host: &'a str,
    pub name: &'a str,
    /// Known from a Kubernetes service's host.
    pub namespace: Option<&'a str>,
}

impl<'a> Service<'a> {
    /// Cluster `outbound|9080|v2|reviews.default.svc.cluster.local` (or an
    /// inbound cluster for `host`): `reviews` in `default`; a
    /// ServiceEntry's host is its own name; Istio's passthrough and
    /// blackhole clusters name themselves.
    pub fn of_cluster(cluster: &'a str, host: &'a str) -> Service<'a> {
        let host = match cluster.splitn(4, '|').nth(3) {
            Some(named) if !named.is_empty() => named,
            Some(_) if !host.is_empty() => host,
            Some(_) => return Service { host: UNKNOWN, name: UNKNOWN, namespace: None },
            None => {
                let name = if cluster.is_empty() { UNKNOWN } else { cluster };
                return Service { host: UNKNOWN, name, namespace: None };
            }
        };
        let mut parts = host.splitn(4, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(namespace), Some("svc")) => Service { host, name, namespace: Some(namespace) },
            _ => Service { host, name: host, namespace: None },
        }
    }
}

impl Ends {
    /// A client's view: `me` sent to `peer` for `service`.
    pub fn client(me: &Side<'_>, peer: &Side<'_>, service: &Service<'_>) -> Ends {
        let own = me.workload.cloned().unwrap_or_default();
        let dest = peer.workload;
        let peer_namespace = peer.principal.and_then(principal_namespace).or(dest.map(|d| d.namespace.as_str()));
        Ends {
            reporter: "source",
            source_workload: or_unknown(Some(&own.name)),
            source_canonical_service: or_unknown(Some(&own.canonical_service)),
            source_canonical_revision: or_unknown(Some(&own.canonical_revision)),
            source_workload_namespace: or_unknown(Some(&own.namespace)),
            source_principal: or_unknown(me.principal),
            source_app: or_unknown(Some(&own.app)),
            source_version: or_unknown(Some(&own.version)),
            source_cluster: or_unknown(Some(&own.cluster)),
            destination_workload: or_unknown(dest.map(|d| d.name.as_str())),
            destination_workload_namespace: or_unknown(peer_namespace),
            destination_principal: or_unknown(peer.principal),
            destination_app: or_unknown(dest.map(|d| d.app.as_str())),
            destination_version: or_unknown(dest.map(|d| d.version.as_str())),
            destination_service: or_unknown(Some(service.host)),
            destination_canonical_service: or_unknown(dest.map(|d| d.canonical_service.as_str())),
            destination_canonical_revision: dest
                .map(|d| d.canonical_revision.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or("latest")
                .to_string(),
            destination_service_name: or_unknown(Some(service.name)),
            destination_service_namespace: or_unknown(peer_namespace.or(service.namespace)),
            destination_cluster: or_unknown(dest.map(|d| d.cluster.as_str())),
            // The client cannot tell what the server requires.
            connection_security_policy: UNKNOWN,
        }
    }

    /// A server's view: `peer` called `me` for `service`.
    pub fn server(me: &Side<'_>, peer: &Side<'_>, service: &Service<'_>) -> Ends {
        let own = me.workload.cloned().unwrap_or_default();
        let src = peer.workload;
        let mutual_tls = peer.principal.is_some() && me.principal.is_some();
        Ends {
            reporter: "destination",
            source_workload: or_unknown(src.map(|s| s.name.as_str())),
            source_canonical_service: or_unknown(src.map(|s| s.canonical_service.as_str())),
            source_canonical_revision: src
                .map(|s| s.canonical_revision.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or("latest")
                .to_string(),
            source_workload_namespace: or_unknown(
                peer.principal.and_then(principal_namespace).or(src.map(|s| s.namespace.as_str())),
            ),
            source_principal: or_unknown(peer.principal),
            source_app: or_unknown(src.map(|s| s.app.as_str())),
            source_version: or_unknown(src.map(|s| s.version.as_str())),
            source_cluster: or_unknown(src.map(|s| s.cluster.as_str())),
            destination_workload: or_unknown(Some(&own.name)),
            destination_workload_namespace: or_unknown(Some(&own.namespace)),
            destination_principal: or_unknown(me.principal.filter(|_| mutual_tls)),
            destination_app: or_unknown(Some(&own.app)),
            destination_version: or_unknown(Some(&own.version)),
            destination_service: or_unknown(Some(service.host)),
            destination_canonical_service: or_unknown(Some(&own.canonical_service)),
            destination_canonical_revision: or_unknown(Some(&own.canonical_revision)),
            destination_service_name: or_unknown(Some(service.name)),
            destination_service_namespace: or_unknown(Some(&own.namespace)),
            destination_cluster: or_unknown(Some(&own.cluster)),
            connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_labels_are_istios_standard_ones() {
        let anonymous = Side { workload: None, principal: None };
        let ends = Ends::client(&anonymous, &anonymous, &Service::of_cluster("", ""));
        let labels = Labels::request(ends, "http", 200, "", "-");
        let mut names: Vec<&str> = labels.0.iter().map(|(n, _)| &**n).collect();
        let mut standard = mesh_core::config::telemetry::STANDARD_TAGS.to_vec();
        names.sort_unstable();
        standard.sort_unstable();
        assert_eq!(names, standard);
    }

    fn workload(name: &str, namespace: &str, app: &str, version: &str) -> WorkloadMeta {
        let labels = [("app".to_string(), app.to_string()), ("version".to_string(), version.to_string())].into();
        WorkloadMeta::from_labels(name, namespace, &labels, "")
    }

    #[test]
    fn each_side_names_itself_and_what_it_learned_of_the_other() {
        let productpage = workload("productpage-v1", "bookinfo", "productpage", "v1");
        let reviews = workload("reviews-v2", "bookinfo", "reviews", "v2");
        let (pp_id, reviews_id) =
            ("spiffe://cluster.local/ns/bookinfo/sa/productpage", "spiffe://cluster.local/ns/bookinfo/sa/reviews");
        let host = &Service::of_cluster("outbound|9080|v2|reviews.bookinfo.svc.cluster.local", "");
        let client = Ends::client(
            &Side { workload: Some(&productpage), principal: Some(pp_id) },
            &Side { workload: Some(&reviews), principal: Some(reviews_id) },
            host,
        );
        assert_eq!(
            (client.reporter, client.source_workload.as_str(), client.destination_workload.as_str()),
            ("source", "productpage-v1", "reviews-v2")
        );
        assert_eq!(
            (client.destination_version.as_str(), client.destination_canonical_service.as_str()),
            ("v2", "reviews")
        );
        assert_eq!(
            (client.destination_service_name.as_str(), client.destination_service_namespace.as_str()),
            ("reviews", "bookinfo")
        );
        assert_eq!((client.destination_principal.as_str(), client.connection_security_policy), (reviews_id, "unknown"));

        let server = Ends::server(
            &Side { workload: Some(&reviews), principal: Some(reviews_id) },
            &Side { workload: Some(&productpage), principal: Some(pp_id) },
            host,
        );
        assert_eq!(
            (server.reporter, server.source_app.as_str(), server.source_principal.as_str()),
            ("destination", "productpage", pp_id)
        );
        assert_eq!(
            (server.destination_workload.as_str(), server.connection_security_policy),
            ("reviews-v2", "mutual_tls")
        );

        // Plaintext, no exchange header, an external host.
        let anonymous = Side { workload: None, principal: None };
        let plain = Ends::server(&Side { workload: Some(&reviews), principal: Some(reviews_id) }, &anonymous, host);
        assert_eq!(
            (
                plain.source_workload.as_str(),
                plain.source_canonical_revision.as_str(),
                plain.destination_principal.as_str()
            ),
            ("unknown", "latest", "unknown")
        );
        assert_eq!(plain.connection_security_policy, "none");
        let inbound = Service::of_cluster("inbound|9080||", "reviews.bookinfo.svc.cluster.local");
        assert_eq!((inbound.name, inbound.namespace), ("reviews", Some("bookinfo")));
        let external = Service::of_cluster("outbound|443||api.example.com", "");
        let out = Ends::client(&Side { workload: Some(&productpage), principal: None }, &anonymous, &external);
        assert_eq!(
            (out.destination_service_name.as_str(), out.destination_service_namespace.as_str()),
            ("api.example.com", "unknown")
        );
        let passthrough = Service::of_cluster("PassthroughCluster", "");
        let out = Ends::client(&Side { workload: Some(&productpage), principal: None }, &anonymous, &passthrough);
        assert_eq!(
            (out.destination_service.as_str(), out.destination_service_name.as_str()),
            ("unknown", "PassthroughCluster")
        );
    }
}
