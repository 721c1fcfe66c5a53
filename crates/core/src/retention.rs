//! Retention planning: which snapshots to delete, and why. Pure; the agent carries it out.
//!
//! Rules:
//! - `retentionConfig.lastAccessTimeout`: a snapshot not used to restore a Pod for that long is
//!   deleted. "Used" is `status.lastAccessTime`; a snapshot never used counts from its creation.
//! - `groupRetentionPolicy.maxSnapshotCountPerGroup` (N > 0): within each group (the values of
//!   the policy's grouping labels; one group without grouping), the N newest snapshots are kept
//!   and older ones deleted, oldest first — except that the newest Ready snapshot of a group is
//!   always kept, so a newer attempt that is still running or that failed never costs the group
//!   its last usable snapshot.
//! - Snapshots already being deleted, and snapshots whose policy is gone, are left alone.

use std::collections::BTreeMap;
use std::fmt;

use podsnap_api::{PodSnapshot, PodSnapshotPolicy};

/// Why a snapshot is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneReason {
    /// Not used for longer than the policy's lastAccessTimeout.
    Expired {
        /// Seconds since last use (or creation).
        idle_secs: i64,
        /// The timeout, as written.
        timeout: String,
    },
    /// More snapshots in its group than the policy keeps.
    OverGroupLimit {
        /// The group's label values (`key=value,…`; empty without grouping).
        group: String,
        /// The limit.
        limit: i64,
    },
}

impl fmt::Display for PruneReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired { idle_secs, timeout } => write!(
                f,
                "not used for {idle_secs} s, longer than lastAccessTimeout {timeout}"
            ),
            Self::OverGroupLimit { group, limit } if group.is_empty() => {
                write!(f, "more than maxSnapshotCountPerGroup {limit} snapshots")
            }
            Self::OverGroupLimit { group, limit } => {
                write!(
                    f,
                    "more than maxSnapshotCountPerGroup {limit} snapshots in group {group}"
                )
            }
        }
    }
}

/// One snapshot to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prune {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Why.
    pub reason: PruneReason,
}

fn seconds(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> i64 {
    t.map_or(0, |t| t.0.as_second())
}

fn namespace_of(s: &PodSnapshot) -> String {
    s.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The snapshots to delete at `now` (Unix seconds), oldest first.
pub fn plan_retention(
    now: i64,
    policies: &[PodSnapshotPolicy],
    snapshots: &[PodSnapshot],
) -> Vec<Prune> {
    let mut out: Vec<(i64, Prune)> = Vec::new();
    let policy_of = |s: &PodSnapshot| {
        policies.iter().find(|p| {
            p.metadata.name.as_deref() == Some(s.spec.policy_name.as_str())
                && p.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into())
                    == namespace_of(s)
        })
    };
    let live: Vec<&PodSnapshot> = snapshots
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    // Groups: (namespace, policy, group values) → snapshots.
    let mut groups: BTreeMap<(String, String, String), Vec<&PodSnapshot>> = BTreeMap::new();
    for s in &live {
        let Some(policy) = policy_of(s) else { continue };
        let created = seconds(s.metadata.creation_timestamp.as_ref());
        if let Some(retention) = &policy.spec.retention_config {
            let last_used = s
                .status
                .as_ref()
                .and_then(|st| st.last_access_time.as_ref())
                .map_or(created, |t| t.0.as_second());
            let idle = now - last_used;
            if idle > retention.last_access_timeout.as_secs() as i64 {
                out.push((
                    created,
                    Prune {
                        namespace: namespace_of(s),
                        name: s.metadata.name.clone().unwrap_or_default(),
                        reason: PruneReason::Expired {
                            idle_secs: idle,
                            timeout: retention.last_access_timeout.to_string(),
                        },
                    },
                ));
                continue;
            }
        }
        let values: Vec<String> = policy
            .spec
            .group_labels()
            .iter()
            .map(|k| {
                format!(
                    "{k}={}",
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(k))
                        .cloned()
                        .unwrap_or_default()
                )
            })
            .collect();
        groups
            .entry((
                namespace_of(s),
                s.spec.policy_name.clone(),
                values.join(","),
            ))
            .or_default()
            .push(s);
    }
    for ((namespace, policy_name, group), mut members) in groups {
        let Some(limit) = policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(policy_name.as_str()))
            .and_then(|p| p.spec.snapshot_grouping_rules.as_ref())
            .and_then(|g| g.group_by_label_value.group_retention_policy.as_ref())
            .map(|r| r.max_snapshot_count_per_group)
            .filter(|n| *n > 0)
        else {
            continue;
        };
        // Newest first; ties by name.
        members.sort_by(|a, b| {
            let key = |s: &PodSnapshot| {
                (
                    seconds(s.metadata.creation_timestamp.as_ref()),
                    s.metadata.name.clone(),
                )
            };
            key(b).cmp(&key(a))
        });
        let newest_ready = members.iter().position(|s| s.is_ready());
        for (i, s) in members.iter().enumerate() {
            if (i as i64) < limit || Some(i) == newest_ready {
                continue;
            }
            out.push((
                seconds(s.metadata.creation_timestamp.as_ref()),
                Prune {
                    namespace: namespace.clone(),
                    name: s.metadata.name.clone().unwrap_or_default(),
                    reason: PruneReason::OverGroupLimit {
                        group: group.clone(),
                        limit,
                    },
                },
            ));
        }
    }
    out.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    out.into_iter().map(|(_, p)| p).collect()
}
