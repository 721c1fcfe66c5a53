//! Port relays: a Pod's `hostPort`s reachable on the host's loopback.
//!
//! A checkpointable gVisor sandbox here has only its own loopback, and a host socket held
//! inside it would make runsc refuse to checkpoint. So the relay holds nothing in the sandbox
//! between connections: for each connection it starts a tiny forwarder in the container
//! (`nc 127.0.0.1 PORT` of the helper busybox, through `runsc exec`) and copies bytes both
//! ways; when the connection ends, the forwarder ends.

use std::sync::Arc;

use podsnap_engine::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One host port forwarded to one container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// Port on the host's 127.0.0.1.
    pub host_port: u16,
    /// Port inside the Pod.
    pub container_port: u16,
    /// The engine id of the container to forward into.
    pub container_id: String,
}

/// Binds every mapping's host port (all or nothing), then serves them in the background.
/// Fails with the port that is taken.
pub async fn start(
    engine: Arc<dyn Engine>,
    mappings: Vec<PortMapping>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut listeners = Vec::new();
    for m in &mappings {
        match TcpListener::bind(("127.0.0.1", m.host_port)).await {
            Ok(l) => listeners.push((l, m.clone())),
            Err(e) => {
                return Err(format!(
                    "hostPort {} cannot be opened on 127.0.0.1 ({e}); another Pod or process uses it: choose another hostPort",
                    m.host_port
                ));
            }
        }
    }
    Ok(listeners
        .into_iter()
        .map(|(listener, mapping)| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let engine = Arc::clone(&engine);
                    let mapping = mapping.clone();
                    tokio::spawn(async move {
                        if let Err(e) = forward(engine, stream, &mapping).await {
                            tracing::debug!(error = %e, port = mapping.host_port, "relay connection ended");
                        }
                    });
                }
            })
        })
        .collect())
}

async fn forward(
    engine: Arc<dyn Engine>,
    mut stream: TcpStream,
    mapping: &PortMapping,
) -> std::io::Result<()> {
    let helper = format!("{}/busybox", podsnap_runtime::runner::HELPER_DIR);
    let args = vec![
        helper,
        "nc".into(),
        "127.0.0.1".into(),
        mapping.container_port.to_string(),
    ];
    let mut child = engine
        .exec_piped(&mapping.container_id, &args)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut to_pod = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    let mut from_pod = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (mut read_half, mut write_half) = stream.split();
    let upstream = async {
        let r = tokio::io::copy(&mut read_half, &mut to_pod).await;
        let _ = to_pod.shutdown().await;
        r
    };
    let downstream = async {
        let r = tokio::io::copy(&mut from_pod, &mut write_half).await;
        let _ = write_half.shutdown().await;
        r
    };
    let _ = tokio::join!(upstream, downstream);
    let _ = child.kill().await;
    Ok(())
}
