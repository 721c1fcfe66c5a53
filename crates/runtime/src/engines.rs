//! More than one engine on a node: each Pod runs with the engine its `runtimeClassName` names
//! (`gvisor`, `native`), or the node's default. [`Engines`] is itself an [`Engine`] that sends
//! every call about a sandbox or container to the engine that runs it, so the agent keeps
//! talking to one engine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use podsnap_engine::{
    CheckpointImage, ContainerSpec, ContainerState, Engine, EngineDescription, EngineError,
    ExecOutput, Network, Result,
};

/// The runtime classes podsnap knows.
pub const RUNTIME_CLASSES: &[&str] = &["gvisor", "native"];

/// The node's engines by runtime class, and which one runs each sandbox.
pub struct Engines {
    default: String,
    engines: RwLock<Vec<(String, Arc<dyn Engine>)>>,
    /// Classes known but not available here, with the reason.
    unavailable: RwLock<Vec<(String, String)>>,
    /// Sandbox id → runtime class.
    owners: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("default", &self.default)
            .field("engines", &self.classes())
            .finish()
    }
}

/// The sandbox a container id belongs to (see `plan::container_id`).
fn sandbox_of(id: &str) -> String {
    match id.rsplit_once("_c_") {
        Some((base, _)) => format!("{base}_pod"),
        None => id.to_owned(),
    }
}

impl Engines {
    /// One engine, the default, under the runtime class it names itself (`describe().name`).
    pub fn new(default: Arc<dyn Engine>) -> Self {
        let class = default.describe().name;
        Self {
            default: class.clone(),
            engines: RwLock::new(vec![(class, default)]),
            unavailable: RwLock::new(Vec::new()),
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// Adds another engine (under the class it names itself), or records why a class is not
    /// available on this node.
    pub fn add(&self, class: &str, engine: std::result::Result<Arc<dyn Engine>, String>) {
        match engine {
            Ok(e) => {
                let name = e.describe().name;
                let mut engines = self.engines.write().expect("engines lock");
                engines.retain(|(c, _)| *c != name);
                engines.push((name, e));
            }
            Err(reason) => self
                .unavailable
                .write()
                .expect("engines lock")
                .push((class.to_owned(), reason)),
        }
    }

    /// The runtime classes available here.
    pub fn classes(&self) -> Vec<String> {
        let engines = self.engines.read().expect("engines lock");
        engines.iter().map(|(c, _)| c.clone()).collect()
    }

    fn all(&self) -> Vec<(String, Arc<dyn Engine>)> {
        self.engines.read().expect("engines lock").clone()
    }

    /// The default runtime class.
    pub fn default_class(&self) -> &str {
        &self.default
    }

    /// The engine of runtime class `class`.
    pub fn get(&self, class: &str) -> Option<Arc<dyn Engine>> {
        let engines = self.engines.read().expect("engines lock");
        engines
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, e)| e.clone())
    }

    /// The runtime class a Pod asking for `requested` runs with here, or why it cannot run.
    pub fn class_for(&self, requested: Option<&str>) -> std::result::Result<String, String> {
        let class = match requested {
            None | Some("") => return Ok(self.default.clone()),
            Some(c) => c,
        };
        if self.get(class).is_some() {
            return Ok(class.to_owned());
        }
        let unavailable = self.unavailable.read().expect("engines lock").clone();
        if let Some((_, reason)) = unavailable.iter().find(|(c, _)| c == class) {
            return Err(format!(
                "runtimeClassName `{class}` is not available on this node: {reason}"
            ));
        }
        if RUNTIME_CLASSES.contains(&class) {
            return Err(format!(
                "runtimeClassName `{class}` is not available on this node; use {} or leave runtimeClassName out",
                self.classes().join(" or ")
            ));
        }
        Err(format!(
            "runtimeClassName `{class}` is unknown: use {}",
            RUNTIME_CLASSES.join(" or ")
        ))
    }

    /// Records that sandbox `sandbox_id` runs with runtime class `class`.
    pub fn assign(&self, sandbox_id: &str, class: &str) {
        self.owners
            .lock()
            .expect("owners lock")
            .insert(sandbox_id.to_owned(), class.to_owned());
    }

    /// The engine that runs sandbox or container `id`: the one it was assigned to, else (after
    /// an agent restart) the first other engine that lists it, else the default.
    pub async fn engine_of(&self, id: &str) -> Arc<dyn Engine> {
        let sandbox = sandbox_of(id);
        let known = self
            .owners
            .lock()
            .expect("owners lock")
            .get(&sandbox)
            .cloned();
        if let Some(e) = known.and_then(|c| self.get(&c)) {
            return e;
        }
        for (class, engine) in self.all() {
            if class == self.default {
                continue;
            }
            if engine
                .list()
                .await
                .is_ok_and(|ids| ids.iter().any(|i| *i == sandbox || *i == id))
            {
                self.assign(&sandbox, &class);
                return engine;
            }
        }
        self.get(&self.default)
            .expect("the default engine is present")
    }
}

#[async_trait]
impl Engine for Engines {
    fn describe(&self) -> EngineDescription {
        self.get(&self.default)
            .expect("the default engine is present")
            .describe()
    }

    async fn create_sandbox(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
    ) -> Result<()> {
        self.engine_of(sandbox_id)
            .await
            .create_sandbox(sandbox_id, root, network)
            .await
    }

    async fn start_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<()> {
        self.engine_of(sandbox_id)
            .await
            .start_container(sandbox_id, spec)
            .await
    }

    async fn state(&self, container_id: &str) -> Result<ContainerState> {
        self.engine_of(container_id).await.state(container_id).await
    }

    async fn wait(&self, container_id: &str) -> Result<i32> {
        self.engine_of(container_id).await.wait(container_id).await
    }

    async fn exec(
        &self,
        container_id: &str,
        args: &[String],
        env: &[String],
    ) -> Result<ExecOutput> {
        self.engine_of(container_id)
            .await
            .exec(container_id, args, env)
            .await
    }

    async fn exec_piped(
        &self,
        container_id: &str,
        args: &[String],
    ) -> Result<tokio::process::Child> {
        self.engine_of(container_id)
            .await
            .exec_piped(container_id, args)
            .await
    }

    async fn set_hostname(&self, sandbox_id: &str, hostname: &str, busybox: &str) -> Result<()> {
        self.engine_of(sandbox_id)
            .await
            .set_hostname(sandbox_id, hostname, busybox)
            .await
    }

    async fn kill(&self, container_id: &str, signal: i32) -> Result<()> {
        self.engine_of(container_id)
            .await
            .kill(container_id, signal)
            .await
    }

    async fn delete(&self, container_id: &str) -> Result<()> {
        self.engine_of(container_id)
            .await
            .delete(container_id)
            .await
    }

    async fn checkpoint(
        &self,
        sandbox_id: &str,
        image_dir: &Path,
        leave_running: bool,
    ) -> Result<CheckpointImage> {
        self.engine_of(sandbox_id)
            .await
            .checkpoint(sandbox_id, image_dir, leave_running)
            .await
    }

    async fn restore(
        &self,
        sandbox_id: &str,
        root: &ContainerSpec,
        network: &Network,
        image_dir: &Path,
        input: &podsnap_engine::RestoreInput,
    ) -> Result<()> {
        self.engine_of(sandbox_id)
            .await
            .restore(sandbox_id, root, network, image_dir, input)
            .await
    }

    async fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut error: Option<EngineError> = None;
        for (_, engine) in self.all() {
            match engine.list().await {
                Ok(mut l) => ids.append(&mut l),
                Err(e) => error = Some(e),
            }
        }
        if ids.is_empty()
            && let Some(e) = error
        {
            return Err(e);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn restore_progress(&self, sandbox_id: &str) -> Option<podsnap_engine::RestoreProgress> {
        self.engine_of(sandbox_id)
            .await
            .restore_progress(sandbox_id)
            .await
    }

    async fn probe_netstack(&self, netns: &Path, rootfs: &Path) -> bool {
        match self.get(&self.default) {
            Some(e) => e.probe_netstack(netns, rootfs).await,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_lead_to_their_sandbox() {
        assert_eq!(
            sandbox_of("default_web_abc123_pod"),
            "default_web_abc123_pod"
        );
        assert_eq!(
            sandbox_of("default_web_abc123_c_app_1f2e"),
            "default_web_abc123_pod"
        );
    }
}
