//! Label selectors against Pod labels, and which policy governs a Pod.

use std::collections::BTreeMap;

use podsnap_api::{LabelSelector, LabelSelectorOperator, PodSnapshotPolicy};

/// Whether `labels` satisfy `selector`: every `matchLabels` pair and every expression.
/// An empty selector matches every Pod, as in Kubernetes.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().all(|req| {
        let value = labels.get(&req.key);
        match req.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    });
    labels_ok && expressions_ok
}

/// The outcome of looking for the policy that governs a Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyMatch<'a> {
    /// No policy in the Pod's namespace selects it.
    None,
    /// Exactly one does.
    One(&'a PodSnapshotPolicy),
    /// Several do; podsnap then uses none of them (see [`governing_policy`]).
    Ambiguous(Vec<&'a PodSnapshotPolicy>),
}

/// Finds the policy that governs a Pod: those in the Pod's namespace whose selector matches
/// its labels, ignoring policies being deleted.
///
/// Rule for several matches: podsnap neither checkpoints nor restores such a Pod and reports
/// the names of the policies. Picking one silently (by age or name) would make which snapshot a
/// Pod restores from depend on something the user cannot see; selectors that overlap are a
/// configuration mistake that must be fixed by making them disjoint.
pub fn governing_policy<'a>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    policies: &'a [PodSnapshotPolicy],
) -> PolicyMatch<'a> {
    let mut matching: Vec<&PodSnapshotPolicy> = policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|p| selector_matches(&p.spec.selector, labels))
        .collect();
    matching.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    match matching.len() {
        0 => PolicyMatch::None,
        1 => PolicyMatch::One(matching[0]),
        _ => PolicyMatch::Ambiguous(matching),
    }
}
