//! Semantic validation of the podsnap kinds: every rule returns [`FieldError`]s that name the
//! field, the problem and the fix. Also the unknown-field check against the CRD schema.

use std::fmt;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::policy::{LabelSelector, LabelSelectorOperator, PodSnapshotPolicy};
use crate::snapshot::PodSnapshot;
use crate::storage::PodSnapshotStorageConfig;
use crate::trigger::PodSnapshotManualTrigger;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `spec.selector.matchExpressions[0].values`.
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
    /// Line in the file, when known.
    pub line: Option<usize>,
}

impl FieldError {
    /// A problem at `path` with its fix.
    pub fn new(
        path: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            problem: problem.into(),
            fix: fix.into(),
            line: None,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.problem)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

/// Several field errors of one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationError(pub Vec<FieldError>);

/// Checks a storage config: exactly one backend, with its required fields.
pub fn validate_storage_config(config: &PodSnapshotStorageConfig) -> Vec<FieldError> {
    let mut errors = name_errors(config.metadata.name.as_deref());
    let backends = &config.spec.snapshot_storage_config;
    let path = "spec.snapshotStorageConfig";
    let configured = backends.configured();
    match configured.as_slice() {
        [] => errors.push(FieldError::new(
            path,
            "no storage backend is set",
            "set exactly one of `gcs`, `s3`, `azure` or `local`",
        )),
        [_] => {}
        many => {
            let names: Vec<_> = many.iter().map(|b| format!("`{}`", b.name())).collect();
            errors.push(FieldError::new(
                path,
                format!("{} backends are set ({})", many.len(), names.join(", ")),
                "keep exactly one backend per storage config; make one config per backend",
            ));
        }
    }
    if let Some(gcs) = &backends.gcs {
        require_bucket(&mut errors, &format!("{path}.gcs.bucket"), &gcs.bucket);
        check_prefix(
            &mut errors,
            &format!("{path}.gcs.path"),
            gcs.path.as_deref(),
        );
    }
    if let Some(s3) = &backends.s3 {
        require_bucket(&mut errors, &format!("{path}.s3.bucket"), &s3.bucket);
        check_prefix(&mut errors, &format!("{path}.s3.path"), s3.path.as_deref());
        if let Some(endpoint) = &s3.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            errors.push(FieldError::new(
                format!("{path}.s3.endpoint"),
                format!("`{endpoint}` is not an http(s) URL"),
                "write the endpoint as a URL, e.g. `http://127.0.0.1:9000`",
            ));
        }
    }
    if let Some(azure) = &backends.azure {
        if azure.account.trim().is_empty() {
            errors.push(FieldError::new(
                format!("{path}.azure.account"),
                "the storage account is empty",
                "set the Azure storage account name",
            ));
        }
        require_bucket(
            &mut errors,
            &format!("{path}.azure.container"),
            &azure.container,
        );
        check_prefix(
            &mut errors,
            &format!("{path}.azure.path"),
            azure.path.as_deref(),
        );
    }
    if let Some(encryption) = &config.spec.encryption {
        let here = "spec.encryption";
        match (&encryption.key_file, &encryption.secret_ref) {
            (Some(_), Some(_)) | (None, None) => errors.push(FieldError::new(
                here,
                "the key must come from exactly one place",
                "set either `keyFile` or `secretRef`",
            )),
            (Some(file), None) if !file.starts_with('/') => errors.push(FieldError::new(
                format!("{here}.keyFile"),
                format!("`{file}` is not an absolute path"),
                "use an absolute path, e.g. `/etc/podsnap/snapshot.key`",
            )),
            _ => {}
        }
    }
    if let Some(local) = &backends.local
        && !local.directory.starts_with('/')
    {
        errors.push(FieldError::new(
            format!("{path}.local.directory"),
            format!("`{}` is not an absolute path", local.directory),
            "use an absolute directory, e.g. `/var/lib/podsnap/snapshots`",
        ));
    }
    errors
}

fn require_bucket(errors: &mut Vec<FieldError>, path: &str, bucket: &str) {
    if bucket.trim().is_empty() {
        errors.push(FieldError::new(
            path,
            "the bucket name is empty",
            "set the bucket's name",
        ));
    } else if bucket.contains('/') || bucket.contains("://") {
        errors.push(FieldError::new(
            path,
            format!("`{bucket}` is not a bare bucket name"),
            "put only the bucket's name here and any prefix in `path`",
        ));
    }
}

fn check_prefix(errors: &mut Vec<FieldError>, path: &str, prefix: Option<&str>) {
    if let Some(prefix) = prefix
        && prefix.split('/').any(|s| s == "..")
    {
        errors.push(FieldError::new(
            path,
            format!("`{prefix}` contains `..`"),
            "use a plain prefix such as `snapshots/prod`",
        ));
    }
}

/// Checks a policy: selector, storage reference, grouping and counts.
pub fn validate_policy(policy: &PodSnapshotPolicy) -> Vec<FieldError> {
    let mut errors = name_errors(policy.metadata.name.as_deref());
    let spec = &policy.spec;
    errors.extend(validate_selector("spec.selector", &spec.selector));
    if spec.storage_config_name.trim().is_empty() {
        errors.push(FieldError::new(
            "spec.storageConfigName",
            "no storage config is named",
            "set it to the name of a PodSnapshotStorageConfig",
        ));
    }
    if let Some(grouping) = &spec.snapshot_grouping_rules {
        let base = "spec.snapshotGroupingRules.groupByLabelValue";
        let group = &grouping.group_by_label_value;
        if group.labels.is_empty() {
            errors.push(FieldError::new(
                format!("{base}.labels"),
                "no label keys are listed",
                "list the Pod label keys that form a group, or remove snapshotGroupingRules",
            ));
        }
        for (i, key) in group.labels.iter().enumerate() {
            if let Err(why) = check_label_key(key) {
                errors.push(FieldError::new(
                    format!("{base}.labels[{i}]"),
                    format!("`{key}` is not a valid label key: {why}"),
                    "use a Kubernetes label key such as `tenant-id` or `example.com/tenant`",
                ));
            }
            if group.labels[..i].contains(key) {
                errors.push(FieldError::new(
                    format!("{base}.labels[{i}]"),
                    format!("`{key}` is listed twice"),
                    "list each label key once",
                ));
            }
        }
        if let Some(retention) = &group.group_retention_policy
            && retention.max_snapshot_count_per_group < 0
        {
            errors.push(FieldError::new(
                format!("{base}.groupRetentionPolicy.maxSnapshotCountPerGroup"),
                format!("{} is negative", retention.max_snapshot_count_per_group),
                "use 0 for no limit or a positive count",
            ));
        }
    }
    errors
}

/// Checks a label selector the way the Kubernetes API server does.
pub fn validate_selector(path: &str, selector: &LabelSelector) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in &selector.match_labels {
        if let Err(why) = check_label_key(key) {
            errors.push(FieldError::new(
                format!("{path}.matchLabels"),
                format!("`{key}` is not a valid label key: {why}"),
                "use a Kubernetes label key such as `app` or `example.com/app`",
            ));
        }
        if let Err(why) = check_label_value(value) {
            errors.push(FieldError::new(
                format!("{path}.matchLabels.{key}"),
                format!("`{value}` is not a valid label value: {why}"),
                "use at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit",
            ));
        }
    }
    for (i, req) in selector.match_expressions.iter().enumerate() {
        let here = format!("{path}.matchExpressions[{i}]");
        if let Err(why) = check_label_key(&req.key) {
            errors.push(FieldError::new(
                format!("{here}.key"),
                format!("`{}` is not a valid label key: {why}", req.key),
                "use a Kubernetes label key such as `app`",
            ));
        }
        match req.operator {
            LabelSelectorOperator::In | LabelSelectorOperator::NotIn => {
                if req.values.is_empty() {
                    errors.push(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {:?} needs at least one value", req.operator),
                        "list the label values to compare with, or use Exists/DoesNotExist",
                    ));
                }
            }
            LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist => {
                if !req.values.is_empty() {
                    errors.push(FieldError::new(
                        format!("{here}.values"),
                        format!("operator {:?} takes no values", req.operator),
                        "remove `values`, or use In/NotIn to compare values",
                    ));
                }
            }
        }
        for (j, value) in req.values.iter().enumerate() {
            if let Err(why) = check_label_value(value) {
                errors.push(FieldError::new(
                    format!("{here}.values[{j}]"),
                    format!("`{value}` is not a valid label value: {why}"),
                    "use at most 63 letters, digits, `-`, `_` or `.`",
                ));
            }
        }
    }
    errors
}

/// Checks a PodSnapshot.
pub fn validate_snapshot(snapshot: &PodSnapshot) -> Vec<FieldError> {
    let mut errors = name_errors(snapshot.metadata.name.as_deref());
    if snapshot.spec.policy_name.trim().is_empty() {
        errors.push(FieldError::new(
            "spec.policyName",
            "no policy is named",
            "set it to the PodSnapshotPolicy that governs this snapshot",
        ));
    }
    if let Some(status) = &snapshot.status
        && status
            .observed_checkpoint_retry_count
            .is_some_and(|n| n < 0)
    {
        errors.push(FieldError::new(
            "status.observedCheckpointRetryCount",
            "the retry count is negative",
            "remove the field or set a count of 0 or more",
        ));
    }
    errors
}

/// Checks a manual trigger.
pub fn validate_manual_trigger(trigger: &PodSnapshotManualTrigger) -> Vec<FieldError> {
    let mut errors = name_errors(trigger.metadata.name.as_deref());
    let target = &trigger.spec.target_pod;
    if target.trim().is_empty() {
        errors.push(FieldError::new(
            "spec.targetPod",
            "no Pod is named",
            "set it to the name of a Pod in the trigger's namespace",
        ));
    } else if let Err(why) = check_dns_subdomain(target) {
        errors.push(FieldError::new(
            "spec.targetPod",
            format!("`{target}` is not a Pod name: {why}"),
            "use the Pod's name as `podsnap get pods` shows it",
        ));
    }
    errors
}

/// Checks `metadata.name`: present and a DNS subdomain, as Kubernetes requires.
pub fn name_errors(name: Option<&str>) -> Vec<FieldError> {
    match name {
        None | Some("") => vec![FieldError::new(
            "metadata.name",
            "the object has no name",
            "set metadata.name",
        )],
        Some(name) => match check_dns_subdomain(name) {
            Ok(()) => Vec::new(),
            Err(why) => vec![FieldError::new(
                "metadata.name",
                format!("`{name}` is not a valid name: {why}"),
                "use lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit",
            )],
        },
    }
}

fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "it is {} characters long, the limit is 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        check_dns_label_chars(label)?;
    }
    Ok(())
}

fn check_dns_label_chars(label: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if label.is_empty() {
        return Err("it has an empty part".into());
    }
    if let Some(c) = label.chars().find(|c| !ok_char(*c)) {
        return Err(format!("`{c}` is not allowed"));
    }
    if !label.starts_with(alnum) || !label.ends_with(alnum) {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|e| format!("the prefix `{prefix}`: {e}"))?;
    }
    if name.is_empty() {
        return Err("the name part is empty".into());
    }
    check_label_value(name)
}

/// Checks a label value: at most 63 characters of `[A-Za-z0-9_.-]`, starting and ending with
/// an alphanumeric; empty is allowed.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!(
            "it is {} characters long, the limit is 63",
            value.len()
        ));
    }
    if value.is_empty() {
        return Ok(());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some(c) = value.chars().find(|c| !ok(*c)) {
        return Err(format!("`{c}` is not allowed"));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if !value.starts_with(alnum) || !value.ends_with(alnum) {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// Checks a document against its kind's CRD schema, the way a strict API server would:
/// unknown fields (with a suggestion for likely typos), missing required fields, wrong types
/// and values outside an enum. Every problem is reported, not just the first.
pub fn schema_errors<K: CustomResourceExt>(value: &Value) -> Vec<FieldError> {
    let crd = K::crd();
    let Some(schema) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    let Some(map) = value.as_object() else {
        return errors;
    };
    // The API server handles apiVersion, kind and metadata itself; the schema omits them.
    let body: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    walk_schema(&schema, &Value::Object(body), "", &mut errors);
    errors
}

fn walk_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let fits = match expected {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        let null_allowed = value.is_null() && schema.get("nullable") == Some(&Value::Bool(true));
        if !fits && !null_allowed {
            errors.push(FieldError::new(
                path,
                format!("expected {}, found {}", article(expected), describe(value)),
                format!("write {} here", article(expected)),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect();
        errors.push(FieldError::new(
            path,
            format!("{} is not an allowed value", describe(value)),
            format!("use one of {}", names.join(", ")),
        ));
        return;
    }
    match value {
        Value::Object(map) => {
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = required.as_str()
                    && !map.contains_key(name)
                {
                    errors.push(FieldError::new(
                        join(path, name),
                        "required field is missing",
                        format!("add `{name}`"),
                    ));
                }
            }
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                if let Some(additional) = schema.get("additionalProperties")
                    && additional.is_object()
                {
                    for (k, v) in map {
                        walk_schema(additional, v, &join(path, k), errors);
                    }
                }
                return;
            };
            if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
                return;
            }
            for (key, child) in map {
                match props.get(key) {
                    Some(child_schema) => {
                        walk_schema(child_schema, child, &join(path, key), errors)
                    }
                    None => {
                        let known: Vec<&str> = props.keys().map(String::as_str).collect();
                        let fix = match closest(key, &known) {
                            Some(best) => format!("did you mean `{best}`?"),
                            None => format!(
                                "remove it; the fields here are {}",
                                known
                                    .iter()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        errors.push(FieldError::new(join(path, key), "unknown field", fix));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk_schema(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn article(type_name: &str) -> String {
    match type_name {
        "object" => "an object (a mapping)".into(),
        "array" => "a list".into(),
        "integer" => "a whole number".into(),
        other => format!("a {other}"),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => format!("the boolean `{b}`"),
        Value::Number(n) => format!("the number `{n}`"),
        Value::String(s) => format!("`{s}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The known name closest to `word` (case-insensitive, within a small edit distance).
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("example.com/tenant-id").is_ok());
        assert!(check_label_key("batch.kubernetes.io/job-completion-index").is_ok());
        assert!(check_label_key("").is_err());
        assert!(check_label_key("Example.com/x").is_err());
        assert!(check_label_key("a/").is_err());
        assert!(check_label_key("-app").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3-x").is_ok());
        assert!(check_label_value(&"x".repeat(64)).is_err());
        assert!(check_label_value("a b").is_err());
    }

    #[test]
    fn names() {
        assert!(name_errors(Some("my-policy.v1")).is_empty());
        assert_eq!(name_errors(None)[0].path, "metadata.name");
        assert!(
            name_errors(Some("My_Policy"))[0]
                .problem
                .contains("`M` is not allowed")
        );
    }

    #[test]
    fn typo_suggestions() {
        assert_eq!(
            closest("triggerconfig", &["triggerConfig", "selector"]),
            Some("triggerConfig")
        );
        assert_eq!(
            closest("selectr", &["triggerConfig", "selector"]),
            Some("selector")
        );
        assert_eq!(closest("minio", &["gcs", "s3", "azure", "local"]), None);
    }
}
