//! Every fixture file parses; every Istio resource in them decodes and
//! validates with no unknown field.

use mesh_core::config::{self, Decoded, Kind};

#[test]
fn every_fixture_file_parses_and_every_istio_resource_validates() {
    let files = mesh_testkit::fixtures::yaml_files("");
    assert!(files.len() >= 19, "expected the fixture tree, found {} files", files.len());
    let mut per_kind = std::collections::BTreeMap::<Kind, usize>::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let docs = config::parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, doc) in docs.into_iter().enumerate() {
            match config::decode(doc, "default") {
                Ok(Decoded::Istio { resource, unknown_fields }) => {
                    assert!(unknown_fields.is_empty(), "{} doc {i}: unknown fields {unknown_fields:?}", path.display());
                    *per_kind.entry(resource.kind()).or_default() += 1;
                }
                Ok(Decoded::Other { .. }) => {}
                Err(e) => panic!("{} document {i}: {e}", path.display()),
            }
        }
    }
    let expected = [
        (Kind::VirtualService, 15),
        (Kind::DestinationRule, 5),
        (Kind::Gateway, 2),
        (Kind::ServiceEntry, 1),
        (Kind::PeerAuthentication, 3),
        (Kind::AuthorizationPolicy, 3),
        (Kind::RequestAuthentication, 1),
    ];
    for (kind, n) in expected {
        assert_eq!(per_kind.get(&kind), Some(&n), "{kind}: {per_kind:?}");
    }
}

#[test]
fn older_api_versions_read_the_same() {
    for version in ["networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"] {
        let yaml = format!(
            "apiVersion: {version}\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n"
        );
        let r = mesh_core::config::Resource::from_yaml(&yaml).unwrap();
        assert_eq!(r.kind(), Kind::DestinationRule);
    }
    let r = mesh_core::config::Resource::from_yaml(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: foo}\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(r.kind(), Kind::AuthorizationPolicy);
}

#[test]
fn unknown_fields_are_reported_not_dropped_silently() {
    let doc = config::parse_documents(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  htp: []\n  http:\n  - route:\n    - destination: {host: r}\n      wieght: 5\n",
    )
    .unwrap()
    .remove(0);
    let Decoded::Istio { unknown_fields, .. } = config::decode(doc, "default").unwrap() else { panic!() };
    assert_eq!(unknown_fields, ["spec.htp", "spec.http[0].route[0].wieght"]);
}
