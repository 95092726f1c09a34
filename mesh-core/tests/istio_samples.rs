//! Every Istio sample and the CRD file parse; every Istio resource in the
//! samples decodes and validates with no unknown field.

mod common;

use mesh_core::config::{self, Decoded, Kind};

fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_sample_file_parses_and_every_istio_resource_validates() {
    let mut files = Vec::new();
    yaml_files(&common::istio_testdata(), &mut files);
    files.sort();
    assert!(files.len() >= 40, "expected the Istio sample tree, found {} files", files.len());
    let mut istio = 0;
    let mut per_kind = std::collections::BTreeMap::<Kind, usize>::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let docs = config::parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, doc) in docs.into_iter().enumerate() {
            match config::decode(doc, "default") {
                Ok(Decoded::Istio { resource, unknown_fields }) => {
                    assert!(unknown_fields.is_empty(), "{} doc {i}: unknown fields {unknown_fields:?}", path.display());
                    istio += 1;
                    *per_kind.entry(resource.kind()).or_default() += 1;
                }
                Ok(Decoded::Other { .. }) => {}
                Err(e) => panic!("{} document {i}: {e}", path.display()),
            }
        }
    }
    // 29 VirtualServices, 12 DestinationRules, 5 Istio Gateways (the other
    // Gateways are Gateway API) and one ServiceEntry.
    assert_eq!(per_kind.get(&Kind::VirtualService), Some(&29), "{per_kind:?}");
    assert_eq!(per_kind.get(&Kind::DestinationRule), Some(&12), "{per_kind:?}");
    assert_eq!(per_kind.get(&Kind::ServiceEntry), Some(&1), "{per_kind:?}");
    assert!(istio >= 47, "{istio} Istio resources");
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

#[test]
fn crd_schema_file_parses_as_yaml() {
    let text = std::fs::read_to_string(common::istio_testdata().join("crds/crd-all.gen.yaml")).unwrap();
    let docs = config::parse_documents(&text).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d.pointer("/spec/names/kind")?.as_str()).collect();
    for kind in Kind::ALL {
        assert!(kinds.contains(&kind.name()), "{kind} has no CRD");
    }
}
