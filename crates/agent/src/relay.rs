//! Port relays: a Pod's `hostPort`s reachable on the host's loopback, and its container
//! ports at its Pod IP.
//!
//! A checkpointable gVisor sandbox here has only its own loopback, and a host socket held
//! inside it would make runsc refuse to checkpoint. So the relay holds nothing in the sandbox
//! between connections: for each connection it starts a tiny forwarder in the container
//! (`nc 127.0.0.1 PORT` of the helper busybox, through `runsc exec`) and copies bytes both
//! ways; when the connection ends, the forwarder ends.
//!
//! Container ports listen inside the Pod's own network namespace (the agent binds the socket
//! on a thread that entered it; a socket stays in the namespace it was made in), so
//! `PodIP:containerPort` answers from the host and from other Pods as with any Pod network.

use std::path::PathBuf;
use std::sync::Arc;

use podsnap_engine::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where a relay listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A `hostPort` on the host's 127.0.0.1.
    HostLoopback(u16),
    /// A port on every address of the Pod's own network namespace (its Pod IP).
    PodNamespace {
        /// The Pod's kept network namespace.
        netns: PathBuf,
        /// The port.
        port: u16,
    },
}

impl Listen {
    /// The port listened on.
    pub fn port(&self) -> u16 {
        match self {
            Listen::HostLoopback(p) | Listen::PodNamespace { port: p, .. } => *p,
        }
    }

    async fn bind(&self) -> Result<TcpListener, String> {
        match self {
            Listen::HostLoopback(port) => TcpListener::bind(("127.0.0.1", *port))
                .await
                .map_err(|e| {
                    format!(
                        "hostPort {port} cannot be opened on 127.0.0.1 ({e}); another Pod or process uses it: choose another hostPort"
                    )
                }),
            Listen::PodNamespace { netns, port } => {
                let addr = std::net::SocketAddr::from(([0, 0, 0, 0], *port));
                podsnap_runtime::network::netns::bind_tcp(netns, addr)
                    .and_then(TcpListener::from_std)
                    .map_err(|e| {
                        format!(
                            "containerPort {port} cannot be opened at the Pod's IP ({e}); list each port once in the Pod's containers"
                        )
                    })
            }
        }
    }
}

/// One listening port forwarded to one container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// Where the relay listens.
    pub listen: Listen,
    /// Port inside the Pod.
    pub container_port: u16,
    /// The engine id of the container to forward into.
    pub container_id: String,
}

/// Binds every mapping's port (all or nothing), then serves them in the background. Fails
/// with the port that is taken.
pub async fn start(
    engine: Arc<dyn Engine>,
    mappings: Vec<PortMapping>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut listeners = Vec::new();
    for m in &mappings {
        listeners.push((m.listen.bind().await?, m.clone()));
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
                            tracing::debug!(error = %e, port = mapping.listen.port(), "relay connection ended");
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
