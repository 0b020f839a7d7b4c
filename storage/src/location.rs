//! Where the offline store keeps its tables: a directory of this machine, or an S3 bucket (any
//! S3-compatible service) through object_store.
//!
//! The difference matters for durability. A local write is durable only once fsynced, which the
//! offline store does itself; an S3 PUT is durable once acknowledged. Delta commits need an atomic
//! create-if-absent of the log entry, which object_store does on S3 with a conditional PUT
//! (`If-None-Match: *`), so the plain Delta log store is correct there without a lock table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use deltalake::DeltaResult;
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::error::{StorageError, StorageResult};

/// The URL schemes read as S3.
const S3_SCHEMES: [&str; 2] = ["s3", "s3a"];

/// The root of an offline store.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A directory of this machine (canonical path).
    Local(PathBuf),
    /// A prefix in an object store: `base` ends with `/`; `store` is rooted at the bucket and
    /// `prefix` is `base`'s path inside it.
    Remote {
        base: Url,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

impl StoreLocation {
    /// Parses a location given by an operator: a path, a `file://` URL or an `s3://bucket/prefix`
    /// URL. S3 credentials, region and endpoint come from the standard `AWS_*` environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`, ...).
    pub fn parse(text: &str) -> StorageResult<StoreLocation> {
        if !text.contains("://") {
            return Ok(StoreLocation::Local(PathBuf::from(text)));
        }
        let url =
            Url::parse(text).map_err(|e| StorageError::InvalidLocation(format!("{text}: {e}")))?;
        match url.scheme() {
            "file" => url
                .to_file_path()
                .map(StoreLocation::Local)
                .map_err(|()| StorageError::InvalidLocation(format!("{text}: not a local path"))),
            scheme if S3_SCHEMES.contains(&scheme) => {
                let mut base = url.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                let store = s3_store(&base, std::iter::empty())?;
                let prefix = ObjectPath::from_url_path(base.path())
                    .map_err(|e| StorageError::InvalidLocation(format!("{text}: {e}")))?;
                register_s3_with_delta();
                Ok(StoreLocation::Remote {
                    base,
                    store,
                    prefix,
                })
            }
            other => Err(StorageError::InvalidLocation(format!(
                "{text}: unsupported scheme \"{other}\" (use a path, file:// or s3://)"
            ))),
        }
    }

    /// A local directory.
    pub fn local(path: &Path) -> StoreLocation {
        StoreLocation::Local(path.to_path_buf())
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Local(path) => write!(f, "{}", path.display()),
            StoreLocation::Remote { base, .. } => write!(f, "{base}"),
        }
    }
}

/// An S3 client for the bucket of `url`, configured from the environment and then `options`.
fn s3_store<'a>(
    url: &Url,
    options: impl Iterator<Item = (&'a String, &'a String)>,
) -> StorageResult<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
    for (key, value) in options {
        // Delta's own options share the map; only the S3 client's keys are meant for it.
        if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    let store = builder
        .build()
        .map_err(|e| StorageError::InvalidLocation(format!("{url}: {e}")))?;
    Ok(Arc::new(store))
}

/// Teaches deltalake the S3 schemes (it knows only `file://` and `memory://` without its AWS
/// crate, which would bring the AWS SDK and a DynamoDB lock client we do not need).
fn register_s3_with_delta() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        for scheme in S3_SCHEMES {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            object_store_factories().insert(url.clone(), Arc::new(S3StoreFactory));
            logstore_factories().insert(url, Arc::new(S3LogStoreFactory));
        }
    });
}

struct S3StoreFactory;

impl ObjectStoreFactory for S3StoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, ObjectPath)> {
        let store = s3_store(url, config.raw.iter())
            .map_err(|e| deltalake::DeltaTableError::generic(e.to_string()))?;
        let path = ObjectPath::from_url_path(url.path())?;
        Ok((store, path))
    }
}

struct S3LogStoreFactory;

impl LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}
