//! Pulling images from an OCI distribution registry (Docker Hub, GHCR, a local `registry:2`…)
//! into the layer store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::ImageIndexEntry;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::{ImageConfigFile, ImageError, ImageRecord, ImageStore, Result, layer, normalize_name};

/// Credentials for a registry.
#[derive(Clone, Debug, Default)]
pub enum PullAuth {
    /// The entry for the registry in the Docker client's configuration
    /// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, as `docker login` writes it),
    /// anonymous without one.
    #[default]
    DockerConfig,
    /// No credentials.
    Anonymous,
    /// A user name and password (or token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Talk plain HTTP instead of HTTPS (a registry without TLS, such as a local one).
    pub insecure: bool,
    /// Credentials.
    pub auth: PullAuth,
    /// The name to store the image as (the reference, with `:latest` added, by default).
    pub name: Option<String>,
}

/// Picks this machine's platform (`linux/amd64` on x86-64) from an image index.
fn resolve_platform(manifests: &[ImageIndexEntry]) -> Option<String> {
    manifests
        .iter()
        .find(|entry| {
            entry.platform.as_ref().is_some_and(|p| {
                p.os.to_string() == "linux" && p.architecture.to_string() == crate::oci_arch()
            })
        })
        .map(|entry| entry.digest.clone())
}

/// The Docker configuration file, if there is one.
fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// The host part of a key of `auths` (`https://index.docker.io/v1/` → `index.docker.io`).
fn auth_key_host(key: &str) -> &str {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    key.split('/').next().unwrap_or(key)
}

/// Credentials for `registry` from a Docker configuration file's `auths`.
pub(crate) fn docker_credentials(config: &[u8], registry: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = value.get("auths")?.as_object()?;
    let docker_hub =
        |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    let (_, entry) = auths.iter().find(|(key, _)| {
        let host = auth_key_host(key);
        host == registry || (docker_hub(host) && docker_hub(registry))
    })?;
    if let Some(encoded) = entry.get("auth").and_then(|a| a.as_str())
        && !encoded.is_empty()
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some((user.to_owned(), password.to_owned()));
    }
    let user = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    Some((user.to_owned(), password.to_owned()))
}

fn registry_auth(auth: &PullAuth, registry: &str) -> RegistryAuth {
    match auth {
        PullAuth::Anonymous => RegistryAuth::Anonymous,
        PullAuth::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        PullAuth::DockerConfig => {
            let found = docker_config_path()
                .and_then(|path| std::fs::read(path).ok())
                .and_then(|bytes| docker_credentials(&bytes, registry));
            match found {
                Some((user, password)) => {
                    tracing::debug!(%registry, %user, "credentials from the Docker configuration");
                    RegistryAuth::Basic(user, password)
                }
                None => RegistryAuth::Anonymous,
            }
        }
    }
}

/// The error and its causes, one after the other.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Words for a user about a failed registry request: what happened and what to do.
fn describe(
    error: &OciDistributionError,
    reference: &str,
    registry: &str,
    insecure: bool,
) -> String {
    let not_found = || {
        format!(
            "the registry {registry} has no image {reference}; check the repository name and tag (`podsnap image pull REGISTRY/REPOSITORY:TAG`)"
        )
    };
    let unauthorized = || {
        format!(
            "the registry {registry} refused access (unauthorized); log in with `docker login {registry}` (podsnap reads ~/.docker/config.json) or pass --username and --password, and check the image name (registries also answer this way for images that do not exist)"
        )
    };
    match error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => unauthorized(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown,
                ) => not_found(),
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => unauthorized(),
                Some(OciErrorCode::Toomanyrequests) => format!(
                    "the registry {registry} limits the rate of pulls; wait a while, or log in (`docker login {registry}`) for a higher limit"
                ),
                _ => format!("the registry {registry} refused: {envelope}"),
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => unauthorized(),
        OciDistributionError::ServerError { code, message, .. } => format!(
            "the registry {registry} answered HTTP {code} ({}); try again later or check the registry",
            message.trim()
        ),
        OciDistributionError::ImageManifestNotFoundError(detail) => format!(
            "{reference} has no linux/{} image ({detail}); pick a tag built for this machine",
            crate::oci_arch()
        ),
        OciDistributionError::DigestError(e) => format!(
            "content from the registry does not match its digest ({e}); the registry serves damaged data, push the image again"
        ),
        OciDistributionError::RequestError(e) => {
            let hint = if insecure {
                "check the address, that the registry runs and that this machine can reach it"
            } else {
                "check the address, that the registry runs and that this machine can reach it; a registry without TLS needs --insecure"
            };
            format!(
                "cannot reach the registry {registry} ({}); {hint}",
                chain(e)
            )
        }
        other => chain(other),
    }
}

impl ImageStore {
    /// Pulls image `reference` (`registry/repository:tag` or `…@sha256:…`; Docker Hub when the
    /// registry is left out) into the store: the manifest for this machine's platform (an
    /// image index is followed to its `linux/amd64` entry on x86-64), the config, and each
    /// layer the store does not have yet, checked against its digest and unpacked into the
    /// layer store like an imported one.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<ImageRecord> {
        let parsed: Reference = reference.parse().map_err(|e| ImageError::Registry {
            reference: reference.to_owned(),
            problem: format!(
                "not an image reference ({e}); write it like registry.example.com/team/app:1.0"
            ),
        })?;
        let registry = parsed.resolve_registry().to_owned();
        let fail = |e: OciDistributionError| ImageError::Registry {
            reference: reference.to_owned(),
            problem: describe(&e, reference, &registry, options.insecure),
        };
        let client = Client::new(ClientConfig {
            protocol: if options.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(resolve_platform)),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        });
        let auth = registry_auth(&options.auth, &registry);
        tracing::info!(%reference, %registry, "pulling");
        let (manifest, manifest_digest) = client
            .pull_image_manifest(&parsed, &auth)
            .await
            .map_err(&fail)?;
        tracing::debug!(%manifest_digest, layers = manifest.layers.len(), "manifest");

        let mut config_bytes = Vec::new();
        client
            .pull_blob(&parsed, &manifest.config, &mut config_bytes)
            .await
            .map_err(&fail)?;
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
        if config_digest != manifest.config.digest {
            return Err(ImageError::Digest {
                path: format!("{reference} config"),
                digest: manifest.config.digest.clone(),
            });
        }
        let config: ImageConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| ImageError::Registry {
                reference: reference.to_owned(),
                problem: format!("the image config is not an OCI image config ({e}); podsnap pulls container images only"),
            })?;

        let staging = self.staging("pull")?;
        let result = async {
            let mut layers = Vec::new();
            for descriptor in &manifest.layers {
                let Some(hex) = layer::digest_hex(&descriptor.digest) else {
                    return Err(ImageError::Registry {
                        reference: reference.to_owned(),
                        problem: format!(
                            "layer digest `{}` is not sha256, which podsnap does not support",
                            descriptor.digest
                        ),
                    });
                };
                if !descriptor.media_type.contains("tar") {
                    return Err(ImageError::Registry {
                        reference: reference.to_owned(),
                        problem: format!(
                            "layer {} is not a file system layer (media type {}); podsnap pulls container images only",
                            descriptor.digest, descriptor.media_type
                        ),
                    });
                }
                let blob = staging.join(hex);
                if self.layer_info(&descriptor.digest).is_none() {
                    let file = tokio::fs::File::create(&blob)
                        .await
                        .map_err(crate::io_err(format!("creating {}", blob.display())))?;
                    client
                        .pull_blob(&parsed, descriptor, file)
                        .await
                        .map_err(&fail)?;
                    tracing::info!(digest = %descriptor.digest, bytes = descriptor.size, "layer downloaded");
                } else {
                    tracing::info!(digest = %descriptor.digest, "layer already in the store");
                }
                layers.push((blob, descriptor.digest.clone()));
            }
            let store = self.clone();
            let name = normalize_name(options.name.as_deref().unwrap_or(reference));
            let source = format!("registry {reference} ({manifest_digest})");
            tokio::task::spawn_blocking(move || {
                let mut build = store.build()?;
                let diff_ids = config.diff_ids(layers.len());
                for (i, (blob, digest)) in layers.iter().enumerate() {
                    build.add(blob, Some(digest), diff_ids.get(i).map(String::as_str))?;
                }
                build
                    .commit(&[name], &config_digest, config.config.into(), &source)
                    .map(|mut r| r.remove(0))
            })
            .await
            .map_err(|e| ImageError::Io {
                context: "storing the pulled layers".into(),
                source: std::io::Error::other(e),
            })?
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials_are_found_by_registry() {
        let config = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "registry.example.com":{"username":"me","password":"pw"},
            "ghcr.io":{"auth":"dTpw"}}}"#;
        assert_eq!(
            docker_credentials(config, "index.docker.io"),
            Some(("hub".into(), "secret".into()))
        );
        assert_eq!(
            docker_credentials(config, "registry.example.com"),
            Some(("me".into(), "pw".into()))
        );
        assert_eq!(
            docker_credentials(config, "ghcr.io"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(docker_credentials(config, "quay.io"), None);
    }
}
