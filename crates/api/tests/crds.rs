//! The generated CRDs: structural schemas a Kubernetes API server accepts, GKE's printer
//! columns, and a YAML form that reads back unchanged.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use podsnap_api::{crds, crds_yaml};

/// Checks the rules of a structural schema (Kubernetes' "Specifying a structural schema"):
/// every node has a type unless it preserves unknown fields or is int-or-string, no
/// `$ref`/`anyOf`/`oneOf`/`allOf`/`not`, arrays have one item schema, and `properties` and
/// `additionalProperties` are not combined.
fn check_structural(schema: &JSONSchemaProps, path: &str, problems: &mut Vec<String>) {
    let preserves = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    let int_or_string = schema.x_kubernetes_int_or_string == Some(true);
    if schema.type_.as_deref().unwrap_or_default().is_empty() && !preserves && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    if schema.ref_path.is_some() {
        problems.push(format!("{path}: $ref"));
    }
    for (name, present) in [
        ("anyOf", schema.any_of.is_some()),
        ("oneOf", schema.one_of.is_some()),
        ("allOf", schema.all_of.is_some()),
        ("not", schema.not.is_some()),
    ] {
        if present {
            problems.push(format!("{path}: {name}"));
        }
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if schema.type_.as_deref() == Some("array") {
        match &schema.items {
            Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) => {
                check_structural(items, &format!("{path}[]"), problems)
            }
            _ => problems.push(format!("{path}: array without a single item schema")),
        }
    }
    for (name, child) in schema.properties.iter().flatten() {
        check_structural(child, &format!("{path}.{name}"), problems);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(child)) =
        &schema.additional_properties
    {
        check_structural(child, &format!("{path}{{*}}"), problems);
    }
    for required in schema.required.iter().flatten() {
        if !schema
            .properties
            .as_ref()
            .is_some_and(|p| p.contains_key(required))
        {
            problems.push(format!("{path}: requires unknown property {required}"));
        }
    }
}

fn schema_of(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every version has a schema")
}

#[test]
fn every_crd_is_structural_and_well_named() {
    let all = crds();
    assert_eq!(all.len(), 4);
    for crd in &all {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(
            name,
            format!("{}.{}", crd.spec.names.plural, crd.spec.group)
        );
        assert_eq!(crd.spec.group, "podsnap.dev");
        assert_eq!(crd.spec.names.plural, crd.spec.names.plural.to_lowercase());
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage, "{name}");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has a status subresource"
        );
        let mut problems = Vec::new();
        check_structural(schema_of(crd), &name, &mut problems);
        assert!(
            problems.is_empty(),
            "{name} is not structural: {problems:#?}"
        );
    }
}

#[test]
fn scopes_follow_gke() {
    let scope = |kind: &str| {
        crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .map(|c| c.spec.scope)
            .unwrap()
    };
    assert_eq!(scope("PodSnapshotStorageConfig"), "Cluster");
    assert_eq!(scope("PodSnapshotPolicy"), "Namespaced");
    assert_eq!(scope("PodSnapshot"), "Namespaced");
    assert_eq!(scope("PodSnapshotManualTrigger"), "Namespaced");
}

#[test]
fn podsnapshot_columns_are_gkes_and_policy_name_is_immutable() {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "PodSnapshot")
        .unwrap();
    let columns: Vec<(String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    assert_eq!(
        columns,
        vec![
            (
                "Status".into(),
                ".status.conditions[?(@.type==\"Ready\")].reason".into()
            ),
            ("Policy".into(), ".spec.policyName".into()),
            ("Age".into(), ".metadata.creationTimestamp".into()),
        ]
    );
    let policy_name = &schema_of(&crd).properties.as_ref().unwrap()["spec"]
        .properties
        .as_ref()
        .unwrap()["policyName"];
    let rules = policy_name
        .x_kubernetes_validations
        .as_ref()
        .expect("a CEL rule");
    assert_eq!(rules[0].rule, "self == oldSelf");
}

#[test]
fn yaml_reads_back_to_the_same_crds() {
    let yaml = crds_yaml().unwrap();
    let back: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(back, crds());
}

#[test]
fn crd_yaml_is_unchanged() {
    // A deliberate API change updates this snapshot with `cargo insta review`.
    insta::assert_snapshot!(crds_yaml().unwrap());
}
