//! Loading manifests: the shipped examples, GKE's manifests, and every kind of bad input, each
//! with an error that names the document, the field, the line and the fix.

use podsnap_api::manifest::DocumentError;
use podsnap_api::{LoadError, Object, PostCheckpoint, SnapshotScope, TriggerType, load_documents};

fn example(name: &str) -> String {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn errors(text: &str) -> LoadError {
    load_documents("test.yaml", text).expect_err("the manifest should be refused")
}

/// The single problem of the single failing document.
fn only_problem(text: &str) -> (DocumentError, podsnap_api::FieldError) {
    let err = errors(text);
    assert_eq!(err.documents.len(), 1, "{err}");
    let doc = err.documents[0].clone();
    assert_eq!(doc.problems.len(), 1, "{err}");
    let problem = doc.problems[0].clone();
    (doc, problem)
}

const POLICY_HEAD: &str = "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n  storageConfigName: s\n";

/// A valid policy (selector and trigger on lines 8 and 9) followed by `rest`.
fn policy_with(rest: &str) -> String {
    format!("{POLICY_HEAD}  selector: {{}}\n  triggerConfig: {{type: workload}}\n{rest}")
}

#[test]
fn the_shipped_examples_load() {
    for name in [
        "policy.yaml",
        "storage-local.yaml",
        "gke-manifests.yaml",
        "pod.yaml",
    ] {
        let docs = load_documents(name, &example(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{name}");
    }
}

#[test]
fn gke_manifests_are_read_as_podsnap_kinds() {
    let docs = load_documents("gke", &example("gke-manifests.yaml")).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d.object.kind()).collect();
    assert_eq!(
        kinds,
        [
            "PodSnapshotStorageConfig",
            "PodSnapshotPolicy",
            "PodSnapshotManualTrigger"
        ]
    );
    let Object::StorageConfig(storage) = &docs[0].object else {
        panic!()
    };
    let backend = storage.spec.snapshot_storage_config.backend().unwrap();
    assert_eq!(backend.name(), "gcs");
    let Object::Policy(policy) = &docs[1].object else {
        panic!()
    };
    assert_eq!(policy.spec.trigger_config.type_, TriggerType::Manual);
    assert_eq!(
        policy.spec.trigger_config.post_checkpoint(),
        PostCheckpoint::Stop
    );
    assert_eq!(
        policy
            .spec
            .retention_config
            .as_ref()
            .unwrap()
            .last_access_timeout
            .as_secs(),
        1800
    );
    assert_eq!(docs[2].line, 29);
    let Object::ManualTrigger(trigger) = &docs[2].object else {
        panic!()
    };
    assert_eq!(trigger.spec.target_pod, "my-app");
}

#[test]
fn defaults_apply_when_fields_are_absent() {
    let text = format!(
        "{POLICY_HEAD}  selector:\n    matchLabels: {{app: a}}\n  triggerConfig:\n    type: workload\n"
    );
    let docs = load_documents("t", &text).unwrap();
    let Object::Policy(policy) = &docs[0].object else {
        panic!()
    };
    assert_eq!(
        policy.spec.trigger_config.post_checkpoint(),
        PostCheckpoint::Resume
    );
    assert_eq!(policy.spec.scope(), SnapshotScope::WholePod);
    assert!(policy.spec.group_labels().is_empty());
}

#[test]
fn preview_gke_version_is_accepted_and_unknown_versions_are_not() {
    let text = example("storage-local.yaml")
        .replace("podsnap.dev/v1alpha1", "podsnapshot.gke.io/v1alpha1");
    assert!(load_documents("t", &text).is_ok());
    let text = example("storage-local.yaml").replace("podsnap.dev/v1alpha1", "podsnap.dev/v2");
    let (_, p) = only_problem(&text);
    assert_eq!(p.path, "apiVersion");
    assert!(
        p.problem.contains("v2") && p.fix.contains("podsnap.dev/v1alpha1"),
        "{p}"
    );
}

#[test]
fn unknown_trigger_type_names_the_allowed_values() {
    let text = format!("{POLICY_HEAD}  selector: {{}}\n  triggerConfig:\n    type: automatic\n");
    let (doc, p) = only_problem(&text);
    assert_eq!(doc.object.as_deref(), Some("PodSnapshotPolicy \"p\""));
    assert_eq!(p.path, "spec.triggerConfig.type");
    assert_eq!(p.line, Some(10));
    assert!(p.problem.contains("automatic"), "{p}");
    assert!(
        p.fix.contains("`workload`") && p.fix.contains("`manual`"),
        "{p}"
    );
}

#[test]
fn unknown_post_checkpoint_and_scope_are_refused() {
    let text = format!(
        "{POLICY_HEAD}  selector: {{}}\n  snapshotScope: everything\n  triggerConfig:\n    type: manual\n    postCheckpoint: pause\n"
    );
    let err = errors(&text);
    let paths: Vec<&str> = err.documents[0]
        .problems
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["spec.snapshotScope", "spec.triggerConfig.postCheckpoint"],
        "{err}"
    );
    assert!(err.documents[0].problems[0].fix.contains("`rootfs-only`"));
}

#[test]
fn bad_durations_and_units_are_explained() {
    for (value, expect) in [
        ("7days", "`days` is not a unit"),
        ("7", "has no unit"),
        ("0d", "zero"),
        ("-3d", "negative"),
        ("", "empty"),
    ] {
        let text = policy_with(&format!(
            "  retentionConfig:\n    lastAccessTimeout: \"{value}\"\n"
        ));
        let (_, p) = only_problem(&text);
        assert_eq!(p.path, "spec.retentionConfig.lastAccessTimeout", "{value}");
        assert!(p.problem.contains(expect), "{value}: {p}");
        assert_eq!(p.line, Some(11));
    }
}

#[test]
fn selector_operators_check_their_values() {
    let text = format!(
        "{POLICY_HEAD}  triggerConfig: {{type: workload}}\n  selector:\n    matchExpressions:\n    - key: app\n      operator: In\n    - key: tier\n      operator: Exists\n      values: [a]\n    - key: zone\n      operator: NotIn\n      values: []\n    - key: gone\n      operator: DoesNotExist\n      values: [x]\n"
    );
    let err = errors(&text);
    let problems = &err.documents[0].problems;
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [
            ("spec.selector.matchExpressions[0].values", Some(11)),
            ("spec.selector.matchExpressions[1].values", Some(15)),
            ("spec.selector.matchExpressions[2].values", Some(18)),
            ("spec.selector.matchExpressions[3].values", Some(21)),
        ],
        "{err}"
    );
    assert!(problems[0].problem.contains("In needs at least one value"));
    assert!(problems[1].problem.contains("Exists takes no values"));
    assert!(problems[1].fix.contains("remove `values`"));
}

#[test]
fn unknown_operator_and_bad_label_keys_are_refused() {
    let text = format!(
        "{POLICY_HEAD}  triggerConfig: {{type: workload}}\n  selector:\n    matchExpressions:\n    - key: app\n      operator: Equals\n      values: [a]\n"
    );
    let (_, p) = only_problem(&text);
    assert_eq!(p.path, "spec.selector.matchExpressions[0].operator");
    assert!(p.fix.contains("`DoesNotExist`"), "{p}");
    let text = format!(
        "{POLICY_HEAD}  triggerConfig: {{type: workload}}\n  selector:\n    matchLabels:\n      \"bad key!\": x\n"
    );
    let (_, p) = only_problem(&text);
    assert!(p.problem.contains("not a valid label key"), "{p}");
}

#[test]
fn negative_and_malformed_counts_are_refused() {
    let grouping = |count: &str| {
        policy_with(&format!(
            "  snapshotGroupingRules:\n    groupByLabelValue:\n      labels: [tenant]\n      groupRetentionPolicy:\n        maxSnapshotCountPerGroup: {count}\n"
        ))
    };
    let (_, p) = only_problem(&grouping("-1"));
    assert_eq!(
        p.path,
        "spec.snapshotGroupingRules.groupByLabelValue.groupRetentionPolicy.maxSnapshotCountPerGroup"
    );
    assert!(
        p.problem.contains("negative") && p.fix.contains("0 for no limit"),
        "{p}"
    );
    assert_eq!(p.line, Some(14));
    let (_, p) = only_problem(&grouping("two"));
    assert!(p.problem.contains("expected a whole number"), "{p}");
    assert!(load_documents("t", &grouping("0")).is_ok());
}

#[test]
fn grouping_needs_labels() {
    let text = policy_with("  snapshotGroupingRules:\n    groupByLabelValue:\n      labels: []\n");
    let (_, p) = only_problem(&text);
    assert!(p.problem.contains("no label keys"), "{p}");
}

#[test]
fn missing_required_fields_are_named() {
    let text = "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotPolicy\nmetadata:\n  name: p\nspec:\n  selector: {}\n";
    let err = errors(text);
    let paths: Vec<&str> = err.documents[0]
        .problems
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["spec.storageConfigName", "spec.triggerConfig"],
        "{err}"
    );
    assert!(
        err.documents[0].problems[0]
            .fix
            .contains("add `storageConfigName`")
    );
}

const STORAGE_HEAD: &str = "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotStorageConfig\nmetadata:\n  name: s\nspec:\n  snapshotStorageConfig:\n";

#[test]
fn a_storage_config_needs_exactly_one_backend() {
    let (_, p) = only_problem(&format!(
        "{STORAGE_HEAD}    gcs: {{bucket: a}}\n    s3: {{bucket: b}}\n"
    ));
    assert_eq!(p.path, "spec.snapshotStorageConfig");
    assert!(
        p.problem.contains("2 backends are set (`gcs`, `s3`)"),
        "{p}"
    );
    let (_, p) = only_problem(&format!("{STORAGE_HEAD}    {{}}\n"));
    assert!(p.problem.contains("no storage backend"), "{p}");
    assert!(p.fix.contains("`gcs`, `s3`, `azure` or `local`"), "{p}");
}

#[test]
fn an_unknown_backend_is_named_with_the_known_ones() {
    let err = errors(&format!("{STORAGE_HEAD}    minio:\n      bucket: a\n"));
    let problems = &err.documents[0].problems;
    assert_eq!(problems[0].path, "spec.snapshotStorageConfig", "{err}");
    assert_eq!(problems[1].path, "spec.snapshotStorageConfig.minio");
    assert!(
        problems[1].fix.contains("`azure`, `gcs`, `local`, `s3`"),
        "{err}"
    );
    assert_eq!(problems[1].line, Some(7));
}

#[test]
fn typos_get_a_suggestion() {
    let text = policy_with("  retentionconfig:\n    lastAccessTimeout: 7d\n");
    let (_, p) = only_problem(&text);
    assert_eq!(p.path, "spec.retentionconfig");
    assert_eq!(p.fix, "did you mean `retentionConfig`?");
}

#[test]
fn encryption_needs_exactly_one_key_source() {
    let base = format!("{STORAGE_HEAD}    local: {{directory: /srv/snapshots}}\n  encryption:\n");
    assert!(load_documents("t", &format!("{base}    keyFile: /etc/podsnap/key\n")).is_ok());
    assert!(
        load_documents(
            "t",
            &format!("{base}    secretRef: {{name: k, key: key}}\n")
        )
        .is_ok()
    );
    let (_, p) = only_problem(&format!("{base}    keyFile: key.hex\n"));
    assert_eq!(p.path, "spec.encryption.keyFile");
    let (_, p) = only_problem(&format!(
        "{base}    keyFile: /k\n    secretRef: {{name: k, key: key}}\n"
    ));
    assert!(p.fix.contains("either `keyFile` or `secretRef`"), "{p}");
    let (_, p) = only_problem(&format!("{base}    secretRef: {{name: k}}\n"));
    assert_eq!(p.path, "spec.encryption.secretRef.key");
}

#[test]
fn backend_fields_are_checked() {
    let (_, p) = only_problem(&format!(
        "{STORAGE_HEAD}    local:\n      directory: relative/dir\n"
    ));
    assert!(p.problem.contains("not an absolute path"), "{p}");
    let (_, p) = only_problem(&format!(
        "{STORAGE_HEAD}    s3:\n      bucket: b\n      endpoint: 127.0.0.1:9000\n"
    ));
    assert_eq!(p.path, "spec.snapshotStorageConfig.s3.endpoint");
    let (_, p) = only_problem(&format!("{STORAGE_HEAD}    gcs:\n      bucket: gs://b/x\n"));
    assert!(p.fix.contains("`path`"), "{p}");
}

#[test]
fn invalid_yaml_points_at_the_document_and_line() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\nspec:\n  containers: [{name: a, image: b}]\n---\napiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotPolicy\nmetadata:\n  name: [unclosed\n";
    let err = errors(text);
    assert_eq!(err.documents.len(), 1);
    let doc = &err.documents[0];
    assert_eq!((doc.index, doc.line), (2, 8));
    let p = &doc.problems[0];
    assert!(p.problem.starts_with("not valid YAML"), "{p}");
    let line = p.line.expect("the parser knows the line");
    assert!((10..=12).contains(&line), "line {line}");
}

#[test]
fn unknown_kinds_and_missing_type_information_are_refused() {
    let (_, p) = only_problem(
        "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotSchedule\nmetadata: {name: x}\n",
    );
    assert_eq!(p.path, "kind");
    assert!(p.fix.contains("PodSnapshotPolicy"), "{p}");
    let (_, p) = only_problem("apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n");
    assert!(
        p.problem.contains("does not handle `batch/v1` `Job`"),
        "{p}"
    );
    let (_, p) = only_problem("kind: Pod\nmetadata: {name: x}\n");
    assert_eq!(p.path, "apiVersion");
    let (_, p) = only_problem("- just\n- a list\n");
    assert!(p.problem.contains("not a mapping"), "{p}");
}

#[test]
fn names_and_pods_are_checked() {
    let (_, p) = only_problem(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers: [{name: a, image: b}]\n",
    );
    assert_eq!(p.path, "metadata.name");
    let err = errors(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: a\n  - name: a\n    image: x\n",
    );
    let paths: Vec<&str> = err.documents[0]
        .problems
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["spec.containers[0].image", "spec.containers[1].name"],
        "{err}"
    );
    let (_, p) =
        only_problem("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: []\n");
    assert!(p.problem.contains("no containers"), "{p}");
    let (_, p) = only_problem(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: -2\n  selector: {matchLabels: {app: a}}\n  template:\n    spec:\n      containers: [{name: a, image: b}]\n",
    );
    assert_eq!(p.path, "spec.replicas");
}

#[test]
fn triggers_and_snapshots_are_checked() {
    let (_, p) = only_problem(
        "apiVersion: podsnap.dev/v1alpha1\nkind: PodSnapshotManualTrigger\nmetadata: {name: t}\nspec:\n  targetPod: \"\"\n",
    );
    assert_eq!(p.path, "spec.targetPod");
    let (_, p) = only_problem(
        "apiVersion: podsnapshot.gke.io/v1\nkind: PodSnapshot\nmetadata: {name: s}\nspec:\n  policyName: p\nstatus:\n  observedCheckpointRetryCount: -1\n",
    );
    assert_eq!(p.path, "status.observedCheckpointRetryCount");
}

#[test]
fn every_failing_document_is_reported_and_good_ones_are_not() {
    let err = errors(&example("invalid.yaml"));
    let indices: Vec<usize> = err.documents.iter().map(|d| d.index).collect();
    assert_eq!(indices, [1, 2, 3]);
    let text = err.to_string();
    assert!(text.starts_with("test.yaml: 5 problems found"), "{text}");
    assert!(
        text.contains("document 2 (line 20), PodSnapshotStorageConfig \"two-backends\""),
        "{text}"
    );
}

#[test]
fn empty_input_has_no_documents() {
    assert!(load_documents("t", "").unwrap().is_empty());
    assert!(
        load_documents("t", "---\n# nothing\n---\n")
            .unwrap()
            .is_empty()
    );
}
