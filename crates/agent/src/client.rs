//! A client of the agent's API on its Unix socket, for the CLI and tests.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket.
    #[error("no podsnap agent answers on {0}; start one with `podsnap serve` (as root)")]
    NoAgent(PathBuf),
    /// The agent refused the request.
    #[error("{0}")]
    Refused(String),
    /// The connection failed midway.
    #[error("talking to the agent: {0}")]
    Transport(String),
}

/// Talks to the agent on `socket`.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the agent listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request; the response body, or the agent's error message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ClientError::NoAgent(self.socket.clone()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(format!("http://agent{path}"))
            .header("host", "agent")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes()
            .to_vec();
        if status.is_success() {
            Ok(bytes)
        } else {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            Err(ClientError::Refused(message))
        }
    }

    /// Applies a manifest (YAML or JSON, one or more documents); the agent's answer with a
    /// result per object.
    pub async fn apply(&self, manifest: &str) -> Result<Value, ClientError> {
        let bytes = self
            .request(
                Method::POST,
                "/apply",
                Some(manifest.as_bytes().to_vec()),
                "application/yaml",
            )
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Transport(format!("unreadable answer: {e}")))
    }

    /// A JSON request.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serialises"));
        let bytes = self.request(method, path, body, "application/json").await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Transport(format!("unreadable answer: {e}")))
    }
}
