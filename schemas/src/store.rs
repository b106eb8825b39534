//! Object-store locations: a plain path, `file://`, `s3://`, `gs://`, `az://` or `http(s)://`
//! URL resolved to an [`ObjectStore`] and a path inside it, through the `object_store` crate.
//!
//! Credentials, region and endpoint come from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...) plus any `options` given (the config file's `[store]`
//! table), which win over the environment.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;

/// A location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or path does not parse, or names an unsupported scheme.
    #[error("bad location '{location}': {message}")]
    BadLocation {
        /// What was given.
        location: String,
        /// Why it cannot be used.
        message: String,
    },
    /// An object-store operation failed.
    #[error("{operation} {location}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        location: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// An object store and a path (prefix or object) inside it.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The path inside the store.
    pub path: StorePath,
    /// The location as the user wrote it (for messages).
    pub display: String,
    /// The local filesystem path, when the location is local.
    pub local: Option<std::path::PathBuf>,
}

/// Whether `s` is a URL (has a scheme) rather than a plain path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
    })
}

/// Resolves `location` with extra store `options` (key, value) on top of the environment.
pub fn resolve(location: &str, options: &[(String, String)]) -> Result<Location, StoreError> {
    let bad = |message: String| StoreError::BadLocation {
        location: location.to_string(),
        message,
    };
    if !is_url(location) || location.starts_with("file://") {
        let raw = location.strip_prefix("file://").unwrap_or(location);
        let path = std::path::absolute(raw).map_err(|e| bad(e.to_string()))?;
        let store_path = StorePath::from_absolute_path(&path).map_err(|e| bad(e.to_string()))?;
        return Ok(Location {
            store: Arc::new(LocalFileSystem::new()),
            path: store_path,
            display: location.to_string(),
            local: Some(path),
        });
    }
    let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
    let env = std::env::vars().filter(|(k, _)| {
        let k = k.to_ascii_lowercase();
        k.starts_with("aws_") || k.starts_with("google_") || k.starts_with("azure_")
    });
    let opts: Vec<(String, String)> = env.chain(options.iter().cloned()).collect();
    let (store, path) = object_store::parse_url_opts(&url, opts).map_err(|e| bad(e.to_string()))?;
    Ok(Location {
        store: Arc::from(store),
        path,
        display: location.to_string(),
        local: None,
    })
}

impl Location {
    /// Writes `bytes` to this object (overwriting).
    pub async fn put_bytes(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        use object_store::{ObjectStoreExt, PutPayload};
        self.store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| StoreError::Io {
                operation: "writing",
                location: self.display.clone(),
                source,
            })
    }

    /// Reads this whole object.
    pub async fn get_bytes(&self) -> Result<Vec<u8>, StoreError> {
        use object_store::ObjectStoreExt;
        let io = |source| StoreError::Io {
            operation: "reading",
            location: self.display.clone(),
            source,
        };
        let got = self.store.get(&self.path).await.map_err(io)?;
        Ok(got.bytes().await.map_err(io)?.to_vec())
    }

    /// The location of `name` under this prefix.
    pub fn child(&self, name: &str) -> Location {
        let mut path = self.path.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        Location {
            store: self.store.clone(),
            path,
            display: format!("{}/{}", self.display.trim_end_matches('/'), name),
            local: self.local.as_ref().map(|l| l.join(name)),
        }
    }
}

/// Checks that the store at `loc` honours create-only PUTs (`PutMode::Create`): exactly-once
/// commits depend on it, and some S3-compatible servers silently overwrite instead. Writes and
/// deletes a probe object `{loc}/_commits/.probe-*` (never read as a commit record).
pub async fn verify_create_only(loc: &Location) -> Result<(), StoreError> {
    use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let probe = loc.child(&format!("_commits/.probe-{}-{nanos}", std::process::id()));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    let io = |operation: &'static str| {
        let location = probe.display.clone();
        move |source| StoreError::Io {
            operation,
            location,
            source,
        }
    };
    probe
        .store
        .put_opts(&probe.path, PutPayload::from_static(b"first"), create())
        .await
        .map_err(io("writing a probe object to"))?;
    let second = probe
        .store
        .put_opts(&probe.path, PutPayload::from_static(b"second"), create())
        .await;
    let _ = probe.store.delete(&probe.path).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(io("probing create-only writes at")(source)),
        Ok(_) => Err(StoreError::BadLocation {
            location: loc.display.clone(),
            message: "this store accepted a second create-only PUT of the same object (it ignores \
                      conditional writes such as If-None-Match); capfilt's exactly-once commits need a \
                      store that refuses it (AWS S3, MinIO, GCS, Azure, a local filesystem, moto)"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_and_file_urls_are_local() {
        let loc = resolve("some/dir", &[]).expect("local");
        assert!(loc.local.as_ref().is_some_and(|p| p.is_absolute()));
        assert!(resolve("file:///tmp/x", &[]).expect("file").local.is_some());
        assert!(is_url("s3://bucket/prefix"));
        assert!(!is_url("/data/web"));
    }

    #[tokio::test]
    async fn the_local_filesystem_honours_create_only_puts() {
        let dir = std::env::temp_dir().join(format!("capfilt-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let loc = resolve(&dir.display().to_string(), &[]).expect("local");
        verify_create_only(&loc).await.expect("create-only");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unknown_scheme_is_a_clear_error() {
        let err = resolve("ftp://host/x", &[]).expect_err("ftp");
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
    }
}
