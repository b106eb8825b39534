//! Object-store locations: a plain path, `file://`, `s3://`, `gs://`, `az://` or `http(s)://`
//! URL resolved to an [`ObjectStore`] and a path inside it, through the `object_store` crate.
//!
//! Credentials, region and endpoint come from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...) plus any `options` given (the config file's `[store]`
//! table), which win over the environment.
//!
//! Every resolved store sits under capfilt's retry layer ([`retry`]). Options that start with
//! `capfilt_` are capfilt's own and never reach `object_store`:
//!
//! | option | meaning |
//! |---|---|
//! | `capfilt_store_retries` | retries of a transient error (default 4; 0 turns the layer off) |
//! | `capfilt_fault_rate` | testing: inject faults into this share of requests ([`faults`]) |
//! | `capfilt_fault_slow_rate` | testing: delay this share of requests |
//! | `capfilt_fault_delay_ms` | testing: how long a delayed request waits (default 50) |
//! | `capfilt_fault_seed` | testing: the fault sequence's seed (default 0) |

pub mod faults;
pub mod retry;

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
    let layers = Layers::parse(options).map_err(&bad)?;
    let options: Vec<(String, String)> = options
        .iter()
        .filter(|(k, _)| !k.starts_with("capfilt_"))
        .cloned()
        .collect();
    if !is_url(location) || location.starts_with("file://") {
        let raw = location.strip_prefix("file://").unwrap_or(location);
        let path = lexically_normal(&std::path::absolute(raw).map_err(|e| bad(e.to_string()))?);
        let store_path = StorePath::from_absolute_path(&path).map_err(|e| bad(e.to_string()))?;
        return Ok(Location {
            store: layers.wrap(Arc::new(LocalFileSystem::new())),
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
    let opts: Vec<(String, String)> = env.chain(options).collect();
    let (store, path) = object_store::parse_url_opts(&url, opts).map_err(|e| bad(e.to_string()))?;
    Ok(Location {
        store: layers.wrap(Arc::from(store)),
        path,
        display: location.to_string(),
        local: None,
    })
}

/// A get result's body and the rest of it (meta, range, attributes), for layers that replace
/// the body with their own stream.
pub(crate) fn split_body(
    result: object_store::GetResult,
) -> (
    futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    object_store::GetResult,
) {
    use futures::StreamExt;
    let rest = object_store::GetResult {
        payload: object_store::GetResultPayload::Stream(futures::stream::empty().boxed()),
        meta: result.meta.clone(),
        range: result.range.clone(),
        attributes: result.attributes.clone(),
        extensions: result.extensions.clone(),
    };
    (result.into_stream(), rest)
}

/// `path` with `.` dropped and each `..` taking off the component before it (`../data` and
/// `a/./b` are paths users type; object_store's paths refuse both).
fn lexically_normal(path: &std::path::Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// capfilt's layers over a resolved store, from its `capfilt_*` options.
#[derive(Debug, Clone, Copy, Default)]
struct Layers {
    retry: retry::RetryPolicy,
    faults: Option<faults::FaultConfig>,
}

impl Layers {
    fn parse(options: &[(String, String)]) -> Result<Layers, String> {
        fn num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
            value
                .trim()
                .parse()
                .map_err(|_| format!("store option {key} = '{value}' is not a number"))
        }
        let mut layers = Layers::default();
        let mut faults = faults::FaultConfig::default();
        let mut inject = false;
        for (key, value) in options {
            match key.as_str() {
                "capfilt_store_retries" => layers.retry.max_retries = num(key, value)?,
                "capfilt_fault_rate" | "capfilt_fault_slow_rate" => {
                    let share: f64 = num(key, value)?;
                    if !(0.0..=1.0).contains(&share) {
                        return Err(format!(
                            "store option {key} = {share} must be between 0 and 1"
                        ));
                    }
                    if key == "capfilt_fault_rate" {
                        faults.rate = share;
                    } else {
                        faults.slow_rate = share;
                    }
                    inject |= share > 0.0;
                }
                "capfilt_fault_delay_ms" => {
                    faults.delay = std::time::Duration::from_millis(num(key, value)?)
                }
                "capfilt_fault_seed" => faults.seed = num(key, value)?,
                k if k.starts_with("capfilt_") => {
                    return Err(format!(
                        "unknown store option {k} (capfilt's own: capfilt_store_retries, capfilt_fault_rate, capfilt_fault_slow_rate, capfilt_fault_delay_ms, capfilt_fault_seed)"
                    ));
                }
                _ => {}
            }
        }
        layers.faults = inject.then_some(faults);
        Ok(layers)
    }

    fn wrap(self, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        // Each resolved store draws its own fault sequence (else every location's first
        // request would fail or pass alike).
        static RESOLVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let store = match self.faults {
            Some(mut f) => {
                f.seed = f.seed.wrapping_add(
                    RESOLVED
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                Arc::new(faults::FaultStore::new(store, f)) as Arc<dyn ObjectStore>
            }
            None => store,
        };
        if self.retry.max_retries == 0 {
            return store;
        }
        Arc::new(retry::RetryStore::new(store, self.retry))
    }
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

    /// Streams this object into the local file `dest` (written beside it and renamed, so a
    /// reader never sees half a file); returns its size.
    pub async fn copy_to_file(&self, dest: &std::path::Path) -> Result<u64, StoreError> {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        use std::io::Write;
        let io = |source| StoreError::Io {
            operation: "reading",
            location: self.display.clone(),
            source,
        };
        let local = |e: std::io::Error| StoreError::BadLocation {
            location: dest.display().to_string(),
            message: e.to_string(),
        };
        let partial = dest.with_extension(format!("partial-{}", std::process::id()));
        let mut body = self.store.get(&self.path).await.map_err(io)?.into_stream();
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(local)?);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(io(e));
                }
            };
            size += chunk.len() as u64;
            file.write_all(&chunk).map_err(local)?;
        }
        file.into_inner()
            .map_err(|e| local(e.into_error()))?
            .sync_all()
            .map_err(local)?;
        std::fs::rename(&partial, dest).map_err(local)?;
        Ok(size)
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
    fn relative_paths_with_dots_resolve() {
        let loc = resolve("some/../other/./dir", &[]).expect("dots");
        let local = loc.local.expect("local");
        assert!(
            local.is_absolute() && local.ends_with("other/dir"),
            "{}",
            local.display()
        );
        assert!(!loc.path.as_ref().contains(".."));
    }

    #[test]
    fn capfilt_options_are_checked_and_kept_from_object_store() {
        let opts = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let loc = resolve("some/dir", &opts("capfilt_fault_rate", "0.1")).expect("faults");
        assert!(
            loc.store.to_string().contains("FaultStore"),
            "{}",
            loc.store
        );
        let err = resolve("some/dir", &opts("capfilt_fault_rate", "2")).expect_err("range");
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let err = resolve("some/dir", &opts("capfilt_faults", "1")).expect_err("unknown");
        assert!(
            err.to_string()
                .contains("unknown store option capfilt_faults"),
            "{err}"
        );
        let plain = resolve("some/dir", &opts("capfilt_store_retries", "0")).expect("plain");
        assert!(
            !plain.store.to_string().contains("Retry"),
            "{}",
            plain.store
        );
    }

    #[test]
    fn an_unknown_scheme_is_a_clear_error() {
        let err = resolve("ftp://host/x", &[]).expect_err("ftp");
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
    }
}
