//! Snapshot selection and node compatibility, case by case.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podsnap_api::condition::{Condition, ConditionStatus};
use podsnap_api::policy::{
    GroupByLabelValue, PodSnapshotPolicySpec, SnapshotGroupingRules, TriggerConfig,
};
use podsnap_api::snapshot::{
    PodSnapshotStatus, READY, REASON_ALL_SNAPSHOTS_AVAILABLE, RestoreRequirements,
};
use podsnap_api::{
    CpuInfo, EngineInfo, GpuInfo, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement,
    NodeFingerprint, PodSnapshot, PodSnapshotPolicy, PodSnapshotSpec, SnapshotScope, TriggerType,
};
use podsnap_core::{
    Mismatch, NoSnapshot, PodFacts, PolicyMatch, Rejection, Selection, SpecHash,
    check_compatibility, governing_policy, select_snapshot, selector_matches,
};

// === fixtures ===

fn node() -> NodeFingerprint {
    NodeFingerprint {
        architecture: "x86_64".into(),
        cpu: CpuInfo {
            vendor: "AuthenticAMD".into(),
            family: 25,
            model: 1,
            model_name: "AMD EPYC 7B13".into(),
            machine_series: "amd-zen3".into(),
        },
        cpu_features: ["avx2", "aes", "sse4_2"]
            .into_iter()
            .map(String::from)
            .collect(),
        kernel_release: "6.18.44".into(),
        engine: EngineInfo {
            name: "gvisor".into(),
            version: "release-20221219.0".into(),
        },
        gpus: Vec::new(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn policy(name: &str, selector: LabelSelector) -> PodSnapshotPolicy {
    let mut p = PodSnapshotPolicy::new(
        name,
        PodSnapshotPolicySpec {
            selector,
            storage_config_name: "store".into(),
            trigger_config: TriggerConfig {
                type_: TriggerType::Workload,
                post_checkpoint: None,
            },
            snapshot_scope: None,
            retention_config: None,
            snapshot_grouping_rules: None,
        },
    );
    p.metadata.namespace = Some("default".into());
    p
}

fn app_policy() -> PodSnapshotPolicy {
    policy(
        "web",
        LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: Vec::new(),
        },
    )
}

fn grouped(mut p: PodSnapshotPolicy, keys: &[&str]) -> PodSnapshotPolicy {
    p.spec.snapshot_grouping_rules = Some(SnapshotGroupingRules {
        group_by_label_value: GroupByLabelValue {
            labels: keys.iter().map(|k| k.to_string()).collect(),
            group_retention_policy: None,
        },
    });
    p
}

const HASH: &str = "aaaa000000000000000000000000000000000000000000000000000000000000";
const OTHER_HASH: &str = "bbbb000000000000000000000000000000000000000000000000000000000000";

fn time(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn snapshot(name: &str, policy: &str, age_order: i64) -> PodSnapshot {
    let mut s = PodSnapshot::new(
        name,
        PodSnapshotSpec {
            policy_name: policy.into(),
        },
    );
    s.metadata.namespace = Some("default".into());
    s.metadata.creation_timestamp = Some(time(age_order));
    s.status = Some(PodSnapshotStatus {
        conditions: vec![Condition::new(
            READY,
            ConditionStatus::True,
            REASON_ALL_SNAPSHOTS_AVAILABLE,
        )],
        restore_requirements: Some(RestoreRequirements {
            scope: SnapshotScope::WholePod,
            distilled_spec_hash: HASH.into(),
            node: node(),
        }),
        ..Default::default()
    });
    s
}

fn requirements(s: &mut PodSnapshot) -> &mut RestoreRequirements {
    s.status
        .as_mut()
        .unwrap()
        .restore_requirements
        .as_mut()
        .unwrap()
}

fn with_labels(mut s: PodSnapshot, pairs: &[(&str, &str)]) -> PodSnapshot {
    s.metadata.labels = Some(labels(pairs));
    s
}

struct Pod {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    hash: SpecHash,
}

impl Pod {
    fn web() -> Self {
        Self::with(&[("app", "web")], &[])
    }
    fn with(l: &[(&str, &str)], a: &[(&str, &str)]) -> Self {
        Self {
            labels: labels(l),
            annotations: labels(a),
            hash: spec_hash(HASH),
        }
    }
    fn select<'a>(
        &self,
        policies: &'a [PodSnapshotPolicy],
        snapshots: &'a [PodSnapshot],
        node: &NodeFingerprint,
    ) -> Selection<'a> {
        select_snapshot(&self.facts(), policies, snapshots, node)
    }

    fn facts(&self) -> PodFacts<'_> {
        PodFacts {
            namespace: "default",
            labels: &self.labels,
            annotations: &self.annotations,
            spec_hash: &self.hash,
        }
    }
}

fn spec_hash(hex: &str) -> SpecHash {
    SpecHash::from_hex(hex).unwrap()
}

fn chosen<'a>(selection: &'a Selection<'a>) -> &'a str {
    match selection {
        Selection::Restore { snapshot, .. } => snapshot.metadata.name.as_deref().unwrap(),
        Selection::ColdStart(why) => panic!("expected a restore, got a cold start: {why}"),
    }
}

fn cold(selection: Selection<'_>) -> NoSnapshot {
    match selection {
        Selection::ColdStart(why) => why,
        Selection::Restore { snapshot, .. } => {
            panic!("expected a cold start, got {:?}", snapshot.metadata.name)
        }
    }
}

// === selectors ===

#[test]
fn selector_operators() {
    let l = labels(&[("app", "web"), ("tier", "front")]);
    let req = |key: &str, op, values: &[&str]| LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    };
    use LabelSelectorOperator::*;
    let cases = [
        (req("app", In, &["web", "api"]), true),
        (req("app", In, &["api"]), false),
        (req("zone", In, &["a"]), false),
        (req("app", NotIn, &["api"]), true),
        (req("app", NotIn, &["web"]), false),
        (req("zone", NotIn, &["a"]), true),
        (req("tier", Exists, &[]), true),
        (req("zone", Exists, &[]), false),
        (req("zone", DoesNotExist, &[]), true),
        (req("app", DoesNotExist, &[]), false),
    ];
    for (i, (selector, expected)) in cases.iter().enumerate() {
        assert_eq!(selector_matches(selector, &l), *expected, "case {i}");
    }
    let both = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        match_expressions: req("tier", In, &["back"]).match_expressions,
    };
    assert!(
        !selector_matches(&both, &l),
        "matchLabels and expressions are ANDed"
    );
    assert!(
        selector_matches(&LabelSelector::default(), &l),
        "empty selects all"
    );
    assert!(!selector_matches(
        &app_policy().spec.selector,
        &labels(&[("app", "webx")])
    ));
}

#[test]
fn policies_from_other_namespaces_or_being_deleted_do_not_govern() {
    let mut elsewhere = app_policy();
    elsewhere.metadata.namespace = Some("prod".into());
    let mut deleting = app_policy();
    deleting.metadata.name = Some("old".into());
    deleting.metadata.deletion_timestamp = Some(time(0));
    let policies = [elsewhere, deleting];
    assert_eq!(
        governing_policy("default", &labels(&[("app", "web")]), &policies),
        PolicyMatch::None
    );
}

// === selection ===

#[test]
fn no_policy_means_cold_start() {
    let pod = Pod::with(&[("app", "other")], &[]);
    let policies = [app_policy()];
    let why = cold(pod.select(&policies, &[], &node()));
    assert_eq!(why, NoSnapshot::NoPolicy);
    assert_eq!(why.reason(), "NoPolicy");
}

#[test]
fn several_matching_policies_are_refused_by_name() {
    let pod = Pod::web();
    let policies = [app_policy(), policy("catch-all", LabelSelector::default())];
    let snapshots = [snapshot("s1", "web", 1)];
    let why = cold(pod.select(&policies, &snapshots, &node()));
    assert_eq!(
        why,
        NoSnapshot::AmbiguousPolicies(vec!["catch-all".into(), "web".into()])
    );
    assert!(why.to_string().contains("make their selectors disjoint"));
}

#[test]
fn no_ready_snapshot_yet() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut pending = snapshot("s1", "web", 1);
    pending.status.as_mut().unwrap().conditions = vec![Condition::new(
        READY,
        ConditionStatus::False,
        "AwaitingCheckpoint",
    )];
    let mut deleting = snapshot("s2", "web", 2);
    deleting.metadata.deletion_timestamp = Some(time(3));
    let other_policy = snapshot("s3", "another", 3);
    let mut other_ns = snapshot("s4", "web", 4);
    other_ns.metadata.namespace = Some("prod".into());
    let snapshots = [pending, deleting, other_policy, other_ns];
    let why = cold(pod.select(&policies, &snapshots, &node()));
    assert_eq!(why.reason(), "NoSnapshot");
    assert!(matches!(why, NoSnapshot::NoReadySnapshot { ref policy, .. } if policy == "web"));
}

#[test]
fn the_newest_ready_snapshot_wins() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let snapshots = [
        snapshot("old", "web", 1),
        snapshot("newest", "web", 30),
        snapshot("mid", "web", 20),
    ];
    let selection = pod.select(&policies, &snapshots, &node());
    assert_eq!(chosen(&selection), "newest");
}

#[test]
fn equal_times_break_ties_by_name() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let snapshots = [snapshot("a", "web", 5), snapshot("b", "web", 5)];
    assert_eq!(chosen(&pod.select(&policies, &snapshots, &node())), "b");
}

#[test]
fn an_incompatible_newer_snapshot_is_passed_over_with_its_reason() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut newer = snapshot("newer", "web", 10);
    requirements(&mut newer).distilled_spec_hash = OTHER_HASH.into();
    let snapshots = [newer, snapshot("older", "web", 1)];
    let selection = pod.select(&policies, &snapshots, &node());
    assert_eq!(chosen(&selection), "older");
    let Selection::Restore { passed_over, .. } = selection else {
        unreachable!()
    };
    assert_eq!(passed_over.len(), 1);
    assert_eq!(passed_over[0].name, "newer");
    assert!(matches!(
        passed_over[0].rejections[0],
        Rejection::SpecHash { .. }
    ));
}

#[test]
fn a_hash_mismatch_everywhere_is_reported() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut only = snapshot("s1", "web", 1);
    requirements(&mut only).distilled_spec_hash = OTHER_HASH.into();
    let snapshots = [only];
    let why = cold(pod.select(&policies, &snapshots, &node()));
    assert_eq!(why.reason(), "HashMismatch");
    let text = why.to_string();
    assert!(
        text.contains("s1") && text.contains("podsnap distill"),
        "{text}"
    );
}

#[test]
fn each_node_mismatch_is_a_reason() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let snapshots = [snapshot("s1", "web", 1)];
    type Change = Box<dyn Fn(&mut NodeFingerprint)>;
    let variants: Vec<(&str, Change)> = vec![
        (
            "architecture",
            Box::new(|n| n.architecture = "aarch64".into()),
        ),
        (
            "series",
            Box::new(|n| n.cpu.machine_series = "intel-icelake-server".into()),
        ),
        (
            "features",
            Box::new(|n| {
                n.cpu_features.remove("avx2");
            }),
        ),
        ("engine", Box::new(|n| n.engine.name = "native".into())),
        (
            "engine version",
            Box::new(|n| n.engine.version = "release-20260801.0".into()),
        ),
    ];
    for (what, change) in variants {
        let mut here = node();
        change(&mut here);
        let why = cold(pod.select(&policies, &snapshots, &here));
        assert_eq!(why.reason(), "NodeMismatch", "{what}: {why}");
    }
    // CPU count and memory are not part of the fingerprint; extra CPU features are fine.
    let mut richer = node();
    richer.cpu_features.insert("avx512f".into());
    richer.kernel_release = "6.19.0".into();
    assert_eq!(chosen(&pod.select(&policies, &snapshots, &richer)), "s1");
}

#[test]
fn grouping_restricts_to_the_pods_group() {
    let policies = [grouped(app_policy(), &["tenant"])];
    let snapshots = [
        with_labels(snapshot("acme-1", "web", 1), &[("tenant", "acme")]),
        with_labels(snapshot("globex-1", "web", 9), &[("tenant", "globex")]),
        snapshot("ungrouped", "web", 10),
    ];
    let acme = Pod::with(&[("app", "web"), ("tenant", "acme")], &[]);
    assert_eq!(
        chosen(&acme.select(&policies, &snapshots, &node())),
        "acme-1"
    );
    let initech = Pod::with(&[("app", "web"), ("tenant", "initech")], &[]);
    let why = cold(initech.select(&policies, &snapshots, &node()));
    assert!(why.to_string().contains("tenant=initech"), "{why}");
    let unlabelled = Pod::web();
    let why = cold(unlabelled.select(&policies, &snapshots, &node()));
    assert_eq!(
        why,
        NoSnapshot::MissingGroupLabels {
            policy: "web".into(),
            labels: vec!["tenant".into()]
        }
    );
}

#[test]
fn a_pin_selects_that_snapshot_even_if_older() {
    let policies = [app_policy()];
    let snapshots = [snapshot("old", "web", 1), snapshot("new", "web", 2)];
    let pod = Pod::with(&[("app", "web")], &[("podsnap.dev/ps-name", "old")]);
    assert_eq!(chosen(&pod.select(&policies, &snapshots, &node())), "old");
    let gke = Pod::with(&[("app", "web")], &[("podsnapshot.gke.io/ps-name", "old")]);
    assert_eq!(chosen(&gke.select(&policies, &snapshots, &node())), "old");
}

#[test]
fn a_failing_pin_never_falls_back() {
    let policies = [grouped(app_policy(), &["tenant"])];
    let mut not_ready = with_labels(snapshot("pending", "web", 3), &[("tenant", "acme")]);
    not_ready.status.as_mut().unwrap().conditions = vec![Condition::new(
        READY,
        ConditionStatus::False,
        "AwaitingCheckpoint",
    )];
    let mut incompatible = with_labels(snapshot("otherhash", "web", 4), &[("tenant", "acme")]);
    requirements(&mut incompatible).distilled_spec_hash = OTHER_HASH.into();
    let snapshots = [
        with_labels(snapshot("good", "web", 1), &[("tenant", "acme")]),
        with_labels(
            snapshot("foreign", "other-policy", 2),
            &[("tenant", "acme")],
        ),
        not_ready,
        incompatible,
        with_labels(snapshot("globex", "web", 5), &[("tenant", "globex")]),
    ];
    let pinned = |name: &str| {
        Pod::with(
            &[("app", "web"), ("tenant", "acme")],
            &[("podsnap.dev/ps-name", name)],
        )
    };
    type Expect = fn(&NoSnapshot) -> bool;
    let cases: [(&str, Expect); 5] = [
        ("missing", |w| matches!(w, NoSnapshot::PinnedNotFound(_))),
        ("foreign", |w| {
            matches!(w, NoSnapshot::PinnedOtherPolicy { .. })
        }),
        (
            "pending",
            |w| matches!(w, NoSnapshot::PinnedNotReady { status, .. } if status == "AwaitingCheckpoint"),
        ),
        ("otherhash", |w| {
            matches!(w, NoSnapshot::PinnedIncompatible(_))
        }),
        ("globex", |w| matches!(w, NoSnapshot::PinnedOtherGroup(_))),
    ];
    for (name, expect) in cases {
        let pod = pinned(name);
        let why = cold(pod.select(&policies, &snapshots, &node()));
        assert!(expect(&why), "pin {name}: {why:?}");
        assert_eq!(why.reason(), "PinnedSnapshotUnusable");
    }
}

#[test]
fn rootfs_only_snapshots_skip_the_hash_and_the_machine_series() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut rootfs = snapshot("fs", "web", 1);
    requirements(&mut rootfs).scope = SnapshotScope::RootfsOnly;
    requirements(&mut rootfs).distilled_spec_hash = OTHER_HASH.into();
    let snapshots = [rootfs];
    let mut other_machine = node();
    other_machine.cpu.machine_series = "intel-sapphirerapids".into();
    other_machine.cpu_features = BTreeSet::new();
    assert_eq!(
        chosen(&pod.select(&policies, &snapshots, &other_machine)),
        "fs"
    );
    other_machine.architecture = "aarch64".into();
    let why = cold(pod.select(&policies, &snapshots, &other_machine));
    assert_eq!(why.reason(), "NodeMismatch");
}

#[test]
fn a_snapshot_without_requirements_is_rejected() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut bare = snapshot("bare", "web", 1);
    bare.status.as_mut().unwrap().restore_requirements = None;
    let snapshots = [bare];
    let why = cold(pod.select(&policies, &snapshots, &node()));
    assert!(
        matches!(&why, NoSnapshot::NoneCompatible(c) if c[0].rejections == [Rejection::NoRequirements])
    );
    assert_eq!(why.reason(), "NoCompatibleSnapshot");
}

// === compatibility ===

#[test]
fn compatibility_lists_every_mismatch() {
    let mut target = node();
    target.architecture = "aarch64".into();
    target.cpu.machine_series = "arm-neoverse-v2".into();
    target.cpu_features = ["aes"].into_iter().map(String::from).collect();
    target.engine.version = "release-2026".into();
    let found = check_compatibility(&node(), &target, SnapshotScope::WholePod);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(matches!(&found[2], Mismatch::MissingCpuFeatures(f) if f == &["avx2", "sse4_2"]));
    for m in &found {
        assert!(
            m.to_string().contains("restore") || m.to_string().contains("snapshot"),
            "{m}"
        );
    }
    assert!(check_compatibility(&node(), &node(), SnapshotScope::WholePod).is_empty());
}

#[test]
fn gpu_state_needs_the_same_model_and_driver() {
    let gpu = |model: &str, driver: &str| GpuInfo {
        model: model.into(),
        driver_version: driver.into(),
    };
    let mut source = node();
    source.gpus = vec![gpu("NVIDIA H200", "570.86.15")];
    let mut target = node();
    assert!(matches!(
        check_compatibility(&source, &target, SnapshotScope::WholePod)[..],
        [Mismatch::GpuModels { .. }]
    ));
    target.gpus = vec![gpu("NVIDIA H200", "580.1"), gpu("NVIDIA H200", "580.1")];
    let found = check_compatibility(&source, &target, SnapshotScope::WholePod);
    assert!(
        matches!(found[..], [Mismatch::GpuDriver { .. }]),
        "{found:?}"
    );
    target.gpus = vec![
        gpu("NVIDIA H200", "570.86.15"),
        gpu("NVIDIA H200", "570.86.15"),
    ];
    assert!(check_compatibility(&source, &target, SnapshotScope::WholePod).is_empty());
    // A snapshot without GPU state restores on a GPU node.
    assert!(check_compatibility(&node(), &target, SnapshotScope::WholePod).is_empty());
}

#[test]
fn selection_is_deterministic_over_input_order() {
    let pod = Pod::web();
    let policies = [app_policy()];
    let mut snapshots = vec![
        snapshot("a", "web", 3),
        snapshot("b", "web", 7),
        snapshot("c", "web", 5),
    ];
    let first = chosen(&pod.select(&policies, &snapshots, &node())).to_owned();
    snapshots.reverse();
    assert_eq!(chosen(&pod.select(&policies, &snapshots, &node())), first);
}
