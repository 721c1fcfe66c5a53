//! Where a repository lives: an object store built from a PodSnapshotStorageConfig's backend or
//! from a URL (`file:///dir`, `s3://bucket/prefix?endpoint=…&region=…`, `gs://bucket/prefix`,
//! `az://account/container/prefix`). Credentials come from the environment, as each cloud's
//! tools read them (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_*`).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use podsnap_api::storage::{AzureStorage, GcsStorage, LocalStorage, S3Storage, StorageBackends};

use crate::error::{RepoError, Result};

/// An opened storage location.
#[derive(Clone, Debug)]
pub struct Location {
    /// The location as a URL, for messages and `observedPath`.
    pub url: String,
    /// The store, already narrowed to the configured prefix.
    pub store: Arc<dyn ObjectStore>,
}

/// How patient requests to remote stores are.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Retries of a failed request.
    pub max_retries: usize,
    /// Give up retrying after this long.
    pub retry_timeout: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Backend settings by object_store's config key names, e.g. `aws_access_key_id`,
    /// `aws_secret_access_key`, `google_service_account`, `azure_storage_access_key`; they
    /// override the environment.
    pub settings: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            settings: Vec::new(),
        }
    }
}

impl StoreOptions {
    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    fn client(&self) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }
}

/// Opens the location a storage config's backend names.
pub fn open(backends: &StorageBackends, options: &StoreOptions) -> Result<Location> {
    let configured = backends.configured();
    let [backend] = configured.as_slice() else {
        return Err(RepoError::Invalid(format!(
            "a storage config must name exactly one backend, this one names {}",
            configured.len()
        )));
    };
    use podsnap_api::StorageBackend as B;
    match backend {
        B::Local(l) => open_local(l),
        B::S3(s) => open_s3(s, options),
        B::Gcs(g) => open_gcs(g, options),
        B::Azure(a) => open_azure(a, options),
    }
}

/// Opens a location given as a URL.
pub fn open_url(url: &str, options: &StoreOptions) -> Result<Location> {
    open(&parse_url(url)?, options)
}

/// Turns a URL into the backend it names.
pub fn parse_url(url: &str) -> Result<StorageBackends> {
    let bad = |why: &str| {
        RepoError::Invalid(format!(
            "`{url}` is not a repository URL: {why}; use file:///DIR, s3://BUCKET/PREFIX[?endpoint=URL&region=R], gs://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let (first, prefix) = match path.split_once('/') {
        Some((first, prefix)) => (first, prefix.trim_matches('/')),
        None => (path, ""),
    };
    let prefix = (!prefix.is_empty()).then(|| prefix.to_owned());
    let mut backends = StorageBackends::default();
    match scheme {
        "file" => {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file URL needs an absolute path (file:///var/lib/...)",
                ));
            }
            backends.local = Some(LocalStorage {
                directory: path.to_owned(),
            });
        }
        "s3" if !first.is_empty() => {
            backends.s3 = Some(S3Storage {
                bucket: first.to_owned(),
                path: prefix,
                region: param("region"),
                endpoint: param("endpoint"),
            });
        }
        "gs" if !first.is_empty() => {
            backends.gcs = Some(GcsStorage {
                bucket: first.to_owned(),
                path: prefix,
                token_source: None,
            });
        }
        "az" if !first.is_empty() => {
            let (container, prefix) = match prefix.as_deref().and_then(|p| p.split_once('/')) {
                Some((c, p)) => (c.to_owned(), Some(p.to_owned())),
                None => (prefix.clone().unwrap_or_default(), None),
            };
            if container.is_empty() {
                return Err(bad("an Azure URL names an account and a container"));
            }
            backends.azure = Some(AzureStorage {
                account: first.to_owned(),
                container,
                path: prefix,
            });
        }
        "s3" | "gs" | "az" => return Err(bad("the bucket name is missing")),
        other => return Err(bad(&format!("unknown scheme `{other}`"))),
    }
    Ok(backends)
}

fn unknown_setting(key: &str, backend: &str) -> RepoError {
    RepoError::Invalid(format!(
        "`{key}` is not a {backend} setting; use object_store's key names (e.g. aws_access_key_id, google_service_account, azure_storage_access_key)"
    ))
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> Arc<dyn ObjectStore> {
    match prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(p) => Arc::new(PrefixStore::new(store, StorePath::from(p))),
        None => store,
    }
}

fn url_with(scheme: &str, bucket: &str, prefix: Option<&str>) -> String {
    match prefix
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(p) => format!("{scheme}://{bucket}/{p}"),
        None => format!("{scheme}://{bucket}"),
    }
}

fn open_local(local: &LocalStorage) -> Result<Location> {
    let dir = std::path::Path::new(&local.directory);
    std::fs::create_dir_all(dir).map_err(|e| {
        RepoError::io(
            format!("cannot create the repository directory {}", dir.display()),
            e,
        )
    })?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|source| RepoError::Storage {
        location: format!("file://{}", local.directory),
        operation: "opening the directory".into(),
        source,
    })?;
    Ok(Location {
        url: format!("file://{}", local.directory),
        store: Arc::new(store),
    })
}

fn open_s3(s3: &S3Storage, options: &StoreOptions) -> Result<Location> {
    let url = url_with("s3", &s3.bucket, s3.path.as_deref());
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&s3.bucket)
        .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()))
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(options.retry())
        .with_client_options(options.client());
    for (key, value) in &options.settings {
        let parsed = key.parse().map_err(|_| unknown_setting(key, "S3"))?;
        builder = builder.with_config(parsed, value);
    }
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let store = builder.build().map_err(|source| RepoError::Storage {
        location: url.clone(),
        operation: "configuring S3".into(),
        source,
    })?;
    Ok(Location {
        store: with_prefix(Arc::new(store), s3.path.as_deref()),
        url,
    })
}

fn open_gcs(gcs: &GcsStorage, options: &StoreOptions) -> Result<Location> {
    let url = url_with("gs", &gcs.bucket, gcs.path.as_deref());
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&gcs.bucket)
        .with_retry(options.retry())
        .with_client_options(options.client());
    for (key, value) in &options.settings {
        let parsed = key.parse().map_err(|_| unknown_setting(key, "GCS"))?;
        builder = builder.with_config(parsed, value);
    }
    let store = builder.build().map_err(|source| RepoError::Storage {
        location: url.clone(),
        operation: "configuring GCS (set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT)"
            .into(),
        source,
    })?;
    Ok(Location {
        store: with_prefix(Arc::new(store), gcs.path.as_deref()),
        url,
    })
}

fn open_azure(azure: &AzureStorage, options: &StoreOptions) -> Result<Location> {
    let url = format!("az://{}/{}", azure.account, azure.container)
        + &azure
            .path
            .as_deref()
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_account(&azure.account)
        .with_container_name(&azure.container)
        .with_retry(options.retry())
        .with_client_options(options.client());
    for (key, value) in &options.settings {
        let parsed = key.parse().map_err(|_| unknown_setting(key, "Azure"))?;
        builder = builder.with_config(parsed, value);
    }
    let store = builder.build().map_err(|source| RepoError::Storage {
        location: url.clone(),
        operation: "configuring Azure (set AZURE_STORAGE_ACCESS_KEY or another credential)".into(),
        source,
    })?;
    Ok(Location {
        store: with_prefix(Arc::new(store), azure.path.as_deref()),
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        let b = parse_url("file:///var/lib/podsnap").unwrap();
        assert_eq!(b.local.unwrap().directory, "/var/lib/podsnap");
        let b = parse_url("s3://bucket/snap/prod?endpoint=http://127.0.0.1:9000&region=eu-west-1")
            .unwrap();
        let s3 = b.s3.unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.path.as_deref()),
            ("bucket", Some("snap/prod"))
        );
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        let b = parse_url("gs://b").unwrap();
        assert_eq!(b.gcs.unwrap().path, None);
        let b = parse_url("az://acct/cont/x/y").unwrap();
        let az = b.azure.unwrap();
        assert_eq!(
            (az.container.as_str(), az.path.as_deref()),
            ("cont", Some("x/y"))
        );
    }

    #[test]
    fn bad_urls_say_what_is_accepted() {
        for url in [
            "/tmp/x",
            "file://relative",
            "s3://",
            "ftp://x/y",
            "az://acct",
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains("file:///DIR"), "{url}: {err}");
        }
    }

    #[test]
    fn s3_and_gcs_stores_build_without_contacting_anything() {
        let s3 = parse_url("s3://bucket/p?endpoint=http://127.0.0.1:9").unwrap();
        let loc = open(&s3, &StoreOptions::default()).unwrap();
        assert_eq!(loc.url, "s3://bucket/p");
    }
}
