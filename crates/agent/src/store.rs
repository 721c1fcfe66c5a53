//! The agent's object store: API objects and events in an embedded database (redb), so a
//! restarted agent finds everything it had.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[error("agent database: {0}; if the file is damaged, stop the agent and move it aside")]
pub struct StoreError(String);

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What applying an object did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    /// A new object.
    Created,
    /// An existing object changed.
    Configured,
    /// Nothing changed.
    Unchanged,
}

/// An event about an object, as `kubectl get events` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When.
    pub time: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// CamelCase reason.
    pub reason: String,
    /// Kind of the object.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub message: String,
}

/// The embedded object store.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    changed: Arc<Notify>,
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}\u{0}{namespace}\u{0}{name}")
}

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db =
            Database::create(path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(OBJECTS).map_err(db_err)?;
        txn.open_table(EVENTS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db: Arc::new(db),
            changed: Arc::new(Notify::new()),
        })
    }

    /// Resolves when an object changes. Meant for one waiter (the controller): a change made
    /// while nobody waits is kept, so the next call returns at once instead of missing it.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn next(&self, txn: &redb::WriteTransaction, counter: &str) -> Result<u64> {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let value = meta
            .get(counter)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        meta.insert(counter, value).map_err(db_err)?;
        Ok(value)
    }

    /// Creates or updates an object from a manifest. The store keeps `metadata.uid` and
    /// `creationTimestamp`, bumps `resourceVersion` and `generation` on change, and keeps the
    /// status.
    pub fn apply(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Applied> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let applied;
        {
            let existing = {
                let table = txn.open_table(OBJECTS).map_err(db_err)?;
                let found = table
                    .get(key(kind, namespace, name).as_str())
                    .map_err(db_err)?;
                found
                    .map(|v| serde_json::from_slice::<Value>(v.value()))
                    .transpose()
                    .map_err(db_err)?
            };
            object["metadata"]["namespace"] = Value::String(namespace.to_owned());
            object["metadata"]["name"] = Value::String(name.to_owned());
            if let Some(old) = &existing {
                let same = old.get("spec") == object.get("spec")
                    && old["metadata"].get("labels") == object["metadata"].get("labels")
                    && old["metadata"].get("annotations") == object["metadata"].get("annotations");
                if same {
                    return Ok(Applied::Unchanged);
                }
                for field in ["uid", "creationTimestamp"] {
                    object["metadata"][field] = old["metadata"][field].clone();
                }
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                object["metadata"]["generation"] = generation.into();
                if let Some(status) = old.get("status") {
                    object["status"] = status.clone();
                }
                applied = Applied::Configured;
            } else {
                object["metadata"]["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
                object["metadata"]["creationTimestamp"] = Value::String(now());
                object["metadata"]["generation"] = 1.into();
                applied = Applied::Created;
            }
            let version = self.next(&txn, "resourceVersion")?;
            object["metadata"]["resourceVersion"] = Value::String(version.to_string());
            let bytes = serde_json::to_vec(&object).map_err(db_err)?;
            let mut table = txn.open_table(OBJECTS).map_err(db_err)?;
            table
                .insert(key(kind, namespace, name).as_str(), bytes.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.changed.notify_one();
        Ok(applied)
    }

    /// Replaces an object's status.
    pub fn set_status(&self, kind: &str, namespace: &str, name: &str, status: Value) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(OBJECTS).map_err(db_err)?;
            let k = key(kind, namespace, name);
            let current = table
                .get(k.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            let Some(current) = current else {
                return Ok(());
            };
            let mut object: Value = serde_json::from_slice(&current).map_err(db_err)?;
            if object.get("status") == Some(&status) {
                return Ok(());
            }
            object["status"] = status;
            let bytes = serde_json::to_vec(&object).map_err(db_err)?;
            table.insert(k.as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Marks an object as being deleted (`metadata.deletionTimestamp`), for kinds whose
    /// deletion has work to do first (a PodSnapshot's data). Whether it exists.
    pub fn mark_deleting(&self, kind: &str, namespace: &str, name: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let found = {
            let mut table = txn.open_table(OBJECTS).map_err(db_err)?;
            let k = key(kind, namespace, name);
            let current = table
                .get(k.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            match current {
                None => false,
                Some(bytes) => {
                    let mut object: Value = serde_json::from_slice(&bytes).map_err(db_err)?;
                    if object["metadata"]["deletionTimestamp"].is_null() {
                        object["metadata"]["deletionTimestamp"] = Value::String(now());
                        let bytes = serde_json::to_vec(&object).map_err(db_err)?;
                        table.insert(k.as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    true
                }
            }
        };
        txn.commit().map_err(db_err)?;
        self.changed.notify_one();
        Ok(found)
    }

    /// One object.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OBJECTS).map_err(db_err)?;
        let found = table
            .get(key(kind, namespace, name).as_str())
            .map_err(db_err)?;
        found
            .map(|v| serde_json::from_slice(v.value()))
            .transpose()
            .map_err(db_err)
    }

    /// Every object of `kind`, in one namespace or all, by namespace and name.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OBJECTS).map_err(db_err)?;
        let start = format!("{kind}\u{0}");
        let end = format!("{kind}\u{1}");
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str()).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let ns = k
                .value()
                .split('\u{0}')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            if namespace.is_some_and(|n| n != ns) {
                continue;
            }
            out.push(serde_json::from_slice(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    /// Removes an object; whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = txn.open_table(OBJECTS).map_err(db_err)?;
            table
                .remove(key(kind, namespace, name).as_str())
                .map_err(db_err)?
                .is_some()
        };
        txn.commit().map_err(db_err)?;
        self.changed.notify_one();
        Ok(existed)
    }

    /// Records an event.
    pub fn event(
        &self,
        event_type: &str,
        reason: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        message: &str,
    ) -> Result<()> {
        let event = Event {
            time: now(),
            type_: event_type.to_owned(),
            reason: reason.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            message: message.to_owned(),
        };
        tracing::info!(kind, namespace, name, reason, message, "event");
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let id = self.next(&txn, "events")?;
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            let bytes = serde_json::to_vec(&event).map_err(db_err)?;
            table.insert(id, bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Events about one object, or all, oldest first.
    pub fn events(&self, namespace: Option<&str>, name: Option<&str>) -> Result<Vec<Event>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            let event: Event = serde_json::from_slice(v.value()).map_err(db_err)?;
            if namespace.is_some_and(|n| n != event.namespace)
                || name.is_some_and(|n| n != event.name)
            {
                continue;
            }
            out.push(event);
        }
        Ok(out)
    }
}

/// The current time, RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(jiff::Timestamp::now())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_change_made_while_nobody_waits_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb")).unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}});
        store.apply("Pod", "default", "a", pod).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), store.changed())
            .await
            .expect("the change before the wait wakes the waiter");
    }

    #[test]
    fn objects_survive_reopening_and_keep_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let store = Store::open(&path).unwrap();
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"x": 1}});
        assert_eq!(
            store.apply("Pod", "default", "a", pod.clone()).unwrap(),
            Applied::Created
        );
        assert_eq!(
            store.apply("Pod", "default", "a", pod.clone()).unwrap(),
            Applied::Unchanged
        );
        let uid = store.get("Pod", "default", "a").unwrap().unwrap()["metadata"]["uid"].clone();
        store
            .set_status("Pod", "default", "a", json!({"phase": "Running"}))
            .unwrap();
        let mut changed = pod.clone();
        changed["spec"]["x"] = json!(2);
        assert_eq!(
            store.apply("Pod", "default", "a", changed).unwrap(),
            Applied::Configured
        );
        store.apply("Pod", "prod", "b", pod.clone()).unwrap();
        store.apply("Deployment", "default", "d", pod).unwrap();
        store
            .event("Normal", "Started", "Pod", "default", "a", "started")
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let a = store.get("Pod", "default", "a").unwrap().unwrap();
        assert_eq!(a["metadata"]["uid"], uid);
        assert_eq!(a["metadata"]["generation"], 2);
        assert_eq!(a["status"]["phase"], "Running");
        assert_eq!(store.list("Pod", None).unwrap().len(), 2);
        assert_eq!(store.list("Pod", Some("prod")).unwrap().len(), 1);
        assert!(store.delete("Pod", "prod", "b").unwrap());
        assert!(!store.delete("Pod", "prod", "b").unwrap());
        assert_eq!(
            store.events(Some("default"), Some("a")).unwrap()[0].reason,
            "Started"
        );
    }
}
