//! Loading manifests: multi-document YAML (or JSON) text into typed objects, each validated,
//! with errors that name the document, the object, the field, the line and the fix.
//!
//! Accepted kinds: the four podsnap kinds under `podsnap.dev/v1alpha1` and, unchanged, under
//! GKE's `podsnapshot.gke.io/v1` (and its preview `v1alpha1`); core `v1` Pods and Secrets
//! (which hold encryption keys); `apps/v1` Deployments.

use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::policy::PodSnapshotPolicy;
use crate::snapshot::PodSnapshot;
use crate::storage::PodSnapshotStorageConfig;
use crate::trigger::PodSnapshotManualTrigger;
use crate::validate::{self, FieldError};
use crate::yaml_lines;
use crate::{API_VERSION, GKE_GROUP, GROUP};

/// A typed, validated object from a manifest.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// A PodSnapshotStorageConfig.
    StorageConfig(PodSnapshotStorageConfig),
    /// A PodSnapshotPolicy.
    Policy(PodSnapshotPolicy),
    /// A PodSnapshot.
    Snapshot(PodSnapshot),
    /// A PodSnapshotManualTrigger.
    ManualTrigger(PodSnapshotManualTrigger),
    /// A core/v1 Pod.
    Pod(Box<Pod>),
    /// An apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// A core/v1 Secret (e.g. a repository's encryption key).
    Secret(Box<Secret>),
}

impl Object {
    /// The kind, e.g. `PodSnapshotPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StorageConfig(_) => "PodSnapshotStorageConfig",
            Self::Policy(_) => "PodSnapshotPolicy",
            Self::Snapshot(_) => "PodSnapshot",
            Self::ManualTrigger(_) => "PodSnapshotManualTrigger",
            Self::Pod(_) => "Pod",
            Self::Deployment(_) => "Deployment",
            Self::Secret(_) => "Secret",
        }
    }

    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        let name = match self {
            Self::StorageConfig(o) => &o.metadata.name,
            Self::Policy(o) => &o.metadata.name,
            Self::Snapshot(o) => &o.metadata.name,
            Self::ManualTrigger(o) => &o.metadata.name,
            Self::Pod(o) => &o.metadata.name,
            Self::Deployment(o) => &o.metadata.name,
            Self::Secret(o) => &o.metadata.name,
        };
        name.as_deref().unwrap_or_default()
    }
}

/// One document of a manifest file.
#[derive(Clone, Debug)]
pub struct Document {
    /// 1-based position among the file's non-empty documents.
    pub index: usize,
    /// 1-based line where the document starts in the file.
    pub line: usize,
    /// The object it holds.
    pub object: Object,
}

/// What went wrong in one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// 1-based position among the file's non-empty documents.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// `Kind "name"` when they could be read.
    pub object: Option<String>,
    /// The problems, each with its field and fix.
    pub problems: Vec<FieldError>,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {})", self.index, self.line)?;
        if let Some(object) = &self.object {
            write!(f, ", {object}")?;
        }
        write!(f, ":")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// A manifest that could not be loaded: every problem of every document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Where the text came from (a file name, or `-` for standard input).
    pub source_name: String,
    /// One entry per document with problems.
    pub documents: Vec<DocumentError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count: usize = self.documents.iter().map(|d| d.problems.len()).sum();
        write!(
            f,
            "{}: {count} problem{} found",
            self.source_name,
            if count == 1 { "" } else { "s" }
        )?;
        for doc in &self.documents {
            write!(f, "\n{doc}")?;
        }
        Ok(())
    }
}

/// Loads every document of a manifest. All documents are checked; the error lists every
/// problem found, so a user can fix a file in one pass.
pub fn load_documents(source_name: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (i, (line, body)) in split_documents(text).into_iter().enumerate() {
        let index = i + 1;
        match load_one(body) {
            Ok(object) => documents.push(Document {
                index,
                line,
                object,
            }),
            Err((object, mut problems)) => {
                for p in &mut problems {
                    p.line = p
                        .line
                        .or_else(|| yaml_lines::locate(body, &p.path))
                        .map(|l| l + line - 1);
                }
                problems.sort_by_key(|p| p.line);
                errors.push(DocumentError {
                    index,
                    line,
                    object,
                    problems,
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(LoadError {
            source_name: source_name.to_owned(),
            documents: errors,
        })
    }
}

/// Splits YAML text at `---` lines into non-empty documents, each with its 1-based first line.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    fn push<'t>(out: &mut Vec<(usize, &'t str)>, line: usize, body: &'t str) {
        let meaningful = body.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "..."
        });
        if meaningful {
            out.push((line, body));
        }
    }
    let mut out = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        let is_separator = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_separator {
            push(&mut out, start_line, &text[start_byte..offset]);
            // Content after `--- ` on the same line (rare) is dropped with the marker.
            start_byte = offset + line.len();
            start_line = n + 2;
        }
        offset += line.len();
    }
    push(&mut out, start_line, &text[start_byte..]);
    out
}

type Failure = (Option<String>, Vec<FieldError>);

fn load_one(body: &str) -> Result<Object, Failure> {
    let value: Value = serde_saphyr::from_str(body).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize);
        let message = e.to_string();
        let first = message
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .to_owned();
        let mut problem = FieldError::new(
            "",
            format!("not valid YAML: {first}"),
            "fix the YAML syntax at that line",
        );
        problem.line = line;
        (None, vec![problem])
    })?;
    let Value::Object(map) = &value else {
        return Err((
            None,
            vec![FieldError::new(
                "",
                "the document is not a mapping",
                "each document must be one object with apiVersion, kind and metadata",
            )],
        ));
    };
    let text_of = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let api_version = text_of("apiVersion");
    let kind = text_of("kind");
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let label = (!kind.is_empty()).then(|| {
        if name.is_empty() {
            kind.clone()
        } else {
            format!("{kind} \"{name}\"")
        }
    });
    let fail = |problems: Vec<FieldError>| (label.clone(), problems);
    if api_version.is_empty() || kind.is_empty() {
        let missing = if api_version.is_empty() {
            "apiVersion"
        } else {
            "kind"
        };
        return Err(fail(vec![FieldError::new(
            missing,
            format!("`{missing}` is missing"),
            "start the document with e.g. `apiVersion: podsnap.dev/v1alpha1` and `kind: PodSnapshotPolicy`",
        )]));
    }
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    let podsnap_group = group == GROUP || group == GKE_GROUP;
    if podsnap_group {
        let known_version = match group {
            GROUP => version == "v1alpha1",
            _ => version == "v1" || version == "v1alpha1",
        };
        if !known_version {
            return Err(fail(vec![FieldError::new(
                "apiVersion",
                format!("version `{version}` of {group} is not served"),
                format!("use `{API_VERSION}` (or GKE's `{GKE_GROUP}/v1`)"),
            )]));
        }
        let mut value = value.clone();
        value["apiVersion"] = Value::String(API_VERSION.to_owned());
        return match kind.as_str() {
            "PodSnapshotStorageConfig" => typed::<PodSnapshotStorageConfig>(value, validate::validate_storage_config).map(Object::StorageConfig),
            "PodSnapshotPolicy" => typed::<PodSnapshotPolicy>(value, validate::validate_policy).map(Object::Policy),
            "PodSnapshot" => typed::<PodSnapshot>(value, validate::validate_snapshot).map(Object::Snapshot),
            "PodSnapshotManualTrigger" => typed::<PodSnapshotManualTrigger>(value, validate::validate_manual_trigger).map(Object::ManualTrigger),
            other => Err(vec![FieldError::new(
                "kind",
                format!("`{other}` is not a kind of {group}"),
                "use PodSnapshotStorageConfig, PodSnapshotPolicy, PodSnapshot or PodSnapshotManualTrigger",
            )]),
        }
        .map_err(fail);
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Pod") => {
            let pod: Pod = deserialize(value).map_err(|e| fail(vec![e]))?;
            let mut problems = validate::name_errors(pod.metadata.name.as_deref());
            problems.extend(validate_pod_spec("spec", pod.spec.as_ref()));
            if problems.is_empty() {
                Ok(Object::Pod(Box::new(pod)))
            } else {
                Err(fail(problems))
            }
        }
        ("apps/v1", "Deployment") => {
            let deployment: Deployment = deserialize(value).map_err(|e| fail(vec![e]))?;
            let mut problems = validate::name_errors(deployment.metadata.name.as_deref());
            let spec = deployment.spec.as_ref();
            if spec.and_then(|s| s.replicas).is_some_and(|r| r < 0) {
                problems.push(FieldError::new(
                    "spec.replicas",
                    "the replica count is negative",
                    "use 0 or more",
                ));
            }
            let pod_spec = spec.and_then(|s| s.template.spec.as_ref());
            problems.extend(validate_pod_spec("spec.template.spec", pod_spec));
            if problems.is_empty() {
                Ok(Object::Deployment(Box::new(deployment)))
            } else {
                Err(fail(problems))
            }
        }
        ("v1", "Secret") => {
            // `data` values are base64: a bad one fails here, naming the field.
            let secret: Secret = deserialize(value).map_err(|e| fail(vec![e]))?;
            let problems = validate::name_errors(secret.metadata.name.as_deref());
            if problems.is_empty() {
                Ok(Object::Secret(Box::new(secret)))
            } else {
                Err(fail(problems))
            }
        }
        _ => Err(fail(vec![FieldError::new(
            "kind",
            format!("podsnap does not handle `{api_version}` `{kind}`"),
            format!(
                "podsnap reads v1 Pods and Secrets, apps/v1 Deployments and the {GROUP} kinds (also as {GKE_GROUP}/v1)"
            ),
        )])),
    }
}

fn typed<K>(value: Value, rules: fn(&K) -> Vec<FieldError>) -> Result<K, Vec<FieldError>>
where
    K: CustomResourceExt + DeserializeOwned,
{
    let mut problems = validate::schema_errors::<K>(&value);
    let object: K = match deserialize(value) {
        Ok(object) => object,
        Err(e) => {
            // The schema check usually found the same problem already, with a better fix.
            let related = |p: &FieldError| {
                !p.path.is_empty() && (e.path.starts_with(&p.path) || p.path.starts_with(&e.path))
            };
            if !problems.iter().any(related) {
                problems.push(e);
            }
            return Err(problems);
        }
    };
    problems.extend(rules(&object));
    if problems.is_empty() {
        Ok(object)
    } else {
        Err(problems)
    }
}

/// Typed deserialization whose error names the field it failed at.
fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        let fix = fix_for_serde_message(&message);
        FieldError::new(path, message, fix)
    })
}

/// Turns serde's wording into an instruction.
fn fix_for_serde_message(message: &str) -> String {
    if let Some(rest) = message.split_once("expected one of ").map(|(_, r)| r) {
        return format!("use one of {rest}");
    }
    if let Some(rest) = message.split_once("expected ").map(|(_, r)| r) {
        return format!("write {rest} here");
    }
    if message.starts_with("missing field") {
        return "add the field".to_owned();
    }
    String::new()
}

/// Checks the parts of a Pod spec podsnap relies on: containers, with names and images.
pub fn validate_pod_spec(path: &str, spec: Option<&PodSpec>) -> Vec<FieldError> {
    let Some(spec) = spec else {
        return vec![FieldError::new(
            path,
            "the Pod has no spec",
            "add a spec with at least one container",
        )];
    };
    let mut problems = Vec::new();
    if spec.containers.is_empty() {
        problems.push(FieldError::new(
            format!("{path}.containers"),
            "the Pod has no containers",
            "add at least one container with a name and an image",
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c));
    let containers = spec.containers.iter().map(|c| ("containers", c));
    let mut index = std::collections::HashMap::new();
    for (list, container) in all.chain(containers) {
        let i = index.entry(list).or_insert(0usize);
        let here = format!("{path}.{list}[{i}]");
        *i += 1;
        if container.name.is_empty() {
            problems.push(FieldError::new(
                format!("{here}.name"),
                "the container has no name",
                "give every container a unique name",
            ));
        } else if seen.contains(&container.name.as_str()) {
            problems.push(FieldError::new(
                format!("{here}.name"),
                format!("container name `{}` is used twice", container.name),
                "give every container, init containers included, a unique name",
            ));
        }
        seen.push(&container.name);
        if container.image.as_deref().unwrap_or_default().is_empty() {
            problems.push(FieldError::new(
                format!("{here}.image"),
                "the container has no image",
                "set the image to run",
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_remembers_lines() {
        let text = "# leading comment\n---\na: 1\n---\n\n---\nb: 2\nc: 3\n...\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], (3, "a: 1\n"));
        assert_eq!(docs[1].0, 7);
        assert!(docs[1].1.starts_with("b: 2"));
    }

    #[test]
    fn a_file_without_separators_is_one_document() {
        assert_eq!(split_documents("a: 1\nb: 2\n"), vec![(1, "a: 1\nb: 2\n")]);
        assert!(split_documents("").is_empty());
        assert!(split_documents("# only a comment\n").is_empty());
    }
}
