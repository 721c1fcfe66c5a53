//! The agent's local API: HTTP on a Unix socket, JSON in and out. The CLI (`podsnap apply`,
//! `get`, `delete`, `logs`, `exec`, `scale`) is its client.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use podsnap_api::{Object, load_documents};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controller::Controller;
use crate::store::Store;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct Api {
    store: Store,
    controller: Controller,
}

/// The kinds the API serves, and whether they live in a namespace.
pub const KINDS: &[(&str, bool)] = &[
    ("Pod", true),
    ("Deployment", true),
    ("Secret", true),
    ("PodSnapshotStorageConfig", false),
    ("PodSnapshotPolicy", true),
    ("PodSnapshot", true),
    ("PodSnapshotManualTrigger", true),
];

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Api {
    /// The API over a store and the controller running its Pods.
    pub fn new(store: Store, controller: Controller) -> Self {
        Self { store, controller }
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/apply", post(apply))
            .route("/objects/{kind}", get(list))
            .route(
                "/objects/{kind}/{namespace}/{name}",
                get(get_one).delete(delete_one),
            )
            .route("/events", get(events))
            .route("/logs/{namespace}/{name}", get(logs))
            .route("/exec/{namespace}/{name}", post(exec))
            .route("/scale/{namespace}/{name}", post(scale))
            .route("/healthz", get(|| async { "ok" }))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }

    /// Serves on the Unix socket at `path` until the process ends.
    pub async fn serve(self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        tracing::info!(socket = %path.display(), "agent API listening");
        axum::serve(listener, self.router()).await
    }
}

/// The namespace objects of `kind` are stored under: none for cluster-scoped kinds.
fn scoped(kind: &str, namespace: String) -> String {
    if namespaced(kind) == Some(false) {
        String::new()
    } else {
        namespace
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.controller.metrics.render(),
    )
        .into_response()
}

fn namespaced(kind: &str) -> Option<bool> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n)
}

async fn apply(State(api): State<Arc<Api>>, body: String) -> Response {
    let docs = match load_documents("request", &body) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut results = Vec::new();
    for doc in docs {
        let kind = doc.object.kind();
        let name = doc.object.name().to_owned();
        let value = match &doc.object {
            Object::StorageConfig(o) => serde_json::to_value(o),
            Object::Policy(o) => serde_json::to_value(o),
            Object::Snapshot(o) => serde_json::to_value(o),
            Object::ManualTrigger(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
        };
        let mut value = match value {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
        let namespace = if namespaced(kind) == Some(true) {
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned()
        } else {
            String::new()
        };
        if let Some(status) = value.as_object_mut() {
            status.remove("status");
        }
        if kind == "Pod"
            && let Ok(Some(existing)) = api.store.get(kind, &namespace, &name)
            && existing.get("spec") != value.get("spec")
        {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "Pod {namespace}/{name} exists with another spec; a Pod's spec cannot change: delete it first (`podsnap delete pod {name}`)"
                ),
            );
        }
        match api.store.apply(kind, &namespace, &name, value) {
            Ok(applied) => results.push(
                json!({"kind": kind, "namespace": namespace, "name": name, "result": applied}),
            ),
            Err(e) => return internal(e),
        }
    }
    Json(json!({"results": results})).into_response()
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn list(
    State(api): State<Arc<Api>>,
    UrlPath(kind): UrlPath<String>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    if namespaced(&kind).is_none() {
        return error(StatusCode::NOT_FOUND, format!("unknown kind {kind}"));
    }
    match api.store.list(&kind, q.namespace.as_deref()) {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_one(
    State(api): State<Arc<Api>>,
    UrlPath((kind, namespace, name)): UrlPath<(String, String, String)>,
) -> Response {
    let namespace = scoped(&kind, namespace);
    match api.store.get(&kind, &namespace, &name) {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("{kind} {name} not found in namespace {namespace}"),
        ),
        Err(e) => internal(e),
    }
}

async fn delete_one(
    State(api): State<Arc<Api>>,
    UrlPath((kind, namespace, name)): UrlPath<(String, String, String)>,
) -> Response {
    let namespace = scoped(&kind, namespace);
    // A PodSnapshot's data goes first; the controller removes the object after it (a finalizer).
    let deleted = if kind == "PodSnapshot" {
        api.store.mark_deleting(&kind, &namespace, &name)
    } else {
        api.store.delete(&kind, &namespace, &name)
    };
    match deleted {
        Ok(true) => {
            if kind == "Deployment" {
                for pod in api.store.list("Pod", Some(&namespace)).unwrap_or_default() {
                    if pod["metadata"]["labels"][crate::controller::DEPLOYMENT_LABEL]
                        == name.as_str()
                        && let Some(pod_name) = pod["metadata"]["name"].as_str()
                    {
                        let _ = api.store.delete("Pod", &namespace, pod_name);
                    }
                }
            }
            Json(json!({"deleted": name})).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("{kind} {name} not found in namespace {namespace}"),
        ),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct EventQuery {
    namespace: Option<String>,
    name: Option<String>,
}

async fn events(State(api): State<Arc<Api>>, Query(q): Query<EventQuery>) -> Response {
    match api.store.events(q.namespace.as_deref(), q.name.as_deref()) {
        Ok(items) => Json(json!({"items": items})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    container: Option<String>,
    #[serde(default)]
    offset: u64,
}

async fn logs(
    State(api): State<Arc<Api>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(pod) = api.store.get("Pod", &namespace, &name).ok().flatten() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Pod {name} not found in namespace {namespace}"),
        );
    };
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let container = match q.container {
        Some(c) if containers.contains(&c) => c,
        Some(c) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Pod {name} has no container {c}; it has {}",
                    containers.join(", ")
                ),
            );
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Pod {name} has several containers ({}); choose one with -c",
                    containers.join(", ")
                ),
            );
        }
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let sandbox = podsnap_runtime::plan::sandbox_id(&namespace, &name, uid);
    let path = api
        .controller
        .runner()
        .pod_dir(&sandbox)
        .join("logs")
        .join(format!("{container}.log"));
    let bytes = std::fs::read(&path).unwrap_or_default();
    let from = (q.offset as usize).min(bytes.len());
    (StatusCode::OK, bytes[from..].to_vec()).into_response()
}

#[derive(Deserialize)]
struct ExecRequest {
    container: Option<String>,
    command: Vec<String>,
}

async fn exec(
    State(api): State<Arc<Api>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Json(request): Json<ExecRequest>,
) -> Response {
    let Some(running) = api.controller.running(&namespace, &name).await else {
        return error(
            StatusCode::CONFLICT,
            format!("Pod {name} is not running in namespace {namespace}"),
        );
    };
    match api
        .controller
        .runner()
        .exec(&running, request.container.as_deref(), &request.command)
        .await
    {
        Ok(out) => Json(json!({
            "exitCode": out.exit_code,
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ScaleRequest {
    replicas: i32,
}

async fn scale(
    State(api): State<Arc<Api>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    Json(request): Json<ScaleRequest>,
) -> Response {
    if request.replicas < 0 {
        return error(StatusCode::BAD_REQUEST, "replicas cannot be negative");
    }
    let Some(mut deployment) = api
        .store
        .get("Deployment", &namespace, &name)
        .ok()
        .flatten()
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Deployment {name} not found in namespace {namespace}"),
        );
    };
    deployment["spec"]["replicas"] = json!(request.replicas);
    if let Some(map) = deployment.as_object_mut() {
        map.remove("status");
    }
    let value: Value = deployment;
    match api.store.apply("Deployment", &namespace, &name, value) {
        Ok(_) => Json(json!({"scaled": name, "replicas": request.replicas})).into_response(),
        Err(e) => internal(e),
    }
}
