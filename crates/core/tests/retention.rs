//! Retention planning, case by case.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podsnap_api::condition::{Condition, ConditionStatus};
use podsnap_api::policy::{
    GroupByLabelValue, GroupRetentionPolicy, PodSnapshotPolicySpec, RetentionConfig,
    SnapshotGroupingRules, TriggerConfig,
};
use podsnap_api::snapshot::{PodSnapshotStatus, READY};
use podsnap_api::{
    LabelSelector, PodSnapshot, PodSnapshotPolicy, PodSnapshotSpec, RetentionDuration, TriggerType,
};
use podsnap_core::{PruneReason, plan_retention};

const DAY: i64 = 86_400;
const NOW: i64 = 1_800_000_000;

fn policy(name: &str, timeout: Option<&str>, group: Option<(&[&str], i64)>) -> PodSnapshotPolicy {
    let mut p = PodSnapshotPolicy::new(
        name,
        PodSnapshotPolicySpec {
            selector: LabelSelector::default(),
            storage_config_name: "s".into(),
            trigger_config: TriggerConfig {
                type_: TriggerType::Workload,
                post_checkpoint: None,
            },
            snapshot_scope: None,
            retention_config: timeout.map(|t| RetentionConfig {
                last_access_timeout: RetentionDuration::parse(t).unwrap(),
            }),
            snapshot_grouping_rules: group.map(|(labels, max)| SnapshotGroupingRules {
                group_by_label_value: GroupByLabelValue {
                    labels: labels.iter().map(|l| l.to_string()).collect(),
                    group_retention_policy: Some(GroupRetentionPolicy {
                        max_snapshot_count_per_group: max,
                    }),
                },
            }),
        },
    );
    p.metadata.namespace = Some("default".into());
    p
}

fn at(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).unwrap())
}

fn snapshot(name: &str, policy: &str, created: i64, ready: bool) -> PodSnapshot {
    let mut s = PodSnapshot::new(
        name,
        PodSnapshotSpec {
            policy_name: policy.into(),
        },
    );
    s.metadata.namespace = Some("default".into());
    s.metadata.creation_timestamp = Some(at(created));
    let status = if ready {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let reason = if ready {
        "AllSnapshotsAvailable"
    } else {
        "AwaitingCheckpoint"
    };
    s.status = Some(PodSnapshotStatus {
        conditions: vec![Condition::new(READY, status, reason)],
        ..Default::default()
    });
    s
}

fn names(prunes: &[podsnap_core::Prune]) -> Vec<&str> {
    prunes.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn without_retention_settings_nothing_is_deleted() {
    let policies = [policy("p", None, None)];
    let snapshots = [snapshot("old", "p", NOW - 400 * DAY, true)];
    assert!(plan_retention(NOW, &policies, &snapshots).is_empty());
}

#[test]
fn unused_snapshots_expire_from_last_use_or_creation() {
    let policies = [policy("p", Some("7d"), None)];
    let mut used_lately = snapshot("used", "p", NOW - 30 * DAY, true);
    used_lately.status.as_mut().unwrap().last_access_time = Some(at(NOW - DAY));
    let mut used_long_ago = snapshot("stale", "p", NOW - 30 * DAY, true);
    used_long_ago.status.as_mut().unwrap().last_access_time = Some(at(NOW - 8 * DAY));
    let never_used_old = snapshot("never-old", "p", NOW - 9 * DAY, true);
    let never_used_new = snapshot("never-new", "p", NOW - 6 * DAY, true);
    let plan = plan_retention(
        NOW,
        &policies,
        &[used_lately, used_long_ago, never_used_old, never_used_new],
    );
    assert_eq!(names(&plan), ["stale", "never-old"]);
    assert!(matches!(&plan[0].reason, PruneReason::Expired { timeout, .. } if timeout == "7d"));
    assert!(plan[0].reason.to_string().contains("lastAccessTimeout 7d"));
}

#[test]
fn groups_keep_their_newest_snapshots_and_delete_the_oldest_first() {
    let policies = [policy("p", None, Some((&[], 2)))];
    let snapshots = [
        snapshot("s2", "p", NOW - 3 * DAY, true),
        snapshot("s4", "p", NOW - DAY, true),
        snapshot("s1", "p", NOW - 4 * DAY, true),
        snapshot("s3", "p", NOW - 2 * DAY, true),
    ];
    let plan = plan_retention(NOW, &policies, &snapshots);
    assert_eq!(names(&plan), ["s1", "s2"]);
    assert!(matches!(
        plan[0].reason,
        PruneReason::OverGroupLimit { limit: 2, .. }
    ));
}

#[test]
fn the_last_ready_snapshot_survives_newer_unfinished_attempts() {
    let policies = [policy("p", None, Some((&[], 1)))];
    let snapshots = [
        snapshot("attempt", "p", NOW - 60, false),
        snapshot("good", "p", NOW - DAY, true),
        snapshot("older", "p", NOW - 2 * DAY, true),
    ];
    assert_eq!(
        names(&plan_retention(NOW, &policies, &snapshots)),
        ["older"]
    );
    // Two failed attempts in a row still leave the good one.
    let snapshots = [
        snapshot("failed-2", "p", NOW - 60, false),
        snapshot("failed-1", "p", NOW - 120, false),
        snapshot("good", "p", NOW - DAY, true),
    ];
    assert_eq!(
        names(&plan_retention(NOW, &policies, &snapshots)),
        ["failed-1"]
    );
}

#[test]
fn each_group_has_its_own_limit_and_zero_means_no_limit() {
    let policies = [policy("p", None, Some((&["tenant"], 1)))];
    let labelled = |name: &str, tenant: &str, created: i64| {
        let mut s = snapshot(name, "p", created, true);
        s.metadata.labels = Some([("tenant".to_string(), tenant.to_string())].into());
        s
    };
    let snapshots = [
        labelled("a-old", "a", NOW - 2 * DAY),
        labelled("a-new", "a", NOW - DAY),
        labelled("b-old", "b", NOW - 3 * DAY),
        labelled("b-new", "b", NOW - 2 * DAY),
    ];
    let plan = plan_retention(NOW, &policies, &snapshots);
    assert_eq!(names(&plan), ["b-old", "a-old"]);
    assert!(plan[0].reason.to_string().contains("group tenant=b"));
    let unlimited = [policy("p", None, Some((&["tenant"], 0)))];
    assert!(plan_retention(NOW, &unlimited, &snapshots).is_empty());
}

#[test]
fn deleting_and_orphaned_snapshots_are_left_alone() {
    let policies = [policy("p", Some("1d"), None)];
    let mut deleting = snapshot("deleting", "p", NOW - 9 * DAY, true);
    deleting.metadata.deletion_timestamp = Some(at(NOW - 10));
    let orphan = snapshot("orphan", "gone", NOW - 9 * DAY, true);
    let mut elsewhere = snapshot("elsewhere", "p", NOW - 9 * DAY, true);
    elsewhere.metadata.namespace = Some("prod".into());
    assert!(plan_retention(NOW, &policies, &[deleting, orphan, elsewhere]).is_empty());
}

#[test]
fn an_expired_snapshot_does_not_also_count_against_its_group() {
    let policies = [policy("p", Some("7d"), Some((&[], 1)))];
    let snapshots = [
        snapshot("expired", "p", NOW - 10 * DAY, true),
        snapshot("kept", "p", NOW - DAY, true),
    ];
    let plan = plan_retention(NOW, &policies, &snapshots);
    assert_eq!(names(&plan), ["expired"]);
    assert!(matches!(plan[0].reason, PruneReason::Expired { .. }));
}
