//! Model bundles (DESIGN.md §2): open a bundle folder, or fetch one from an object-store URL into
//! a local cache, and verify every sha256 in `bundle.json` before any session is created.
//!
//! The cache is content-addressed: `{cache}/bundles/{sha256 of bundle.json}/`, filled in a
//! temporary sibling folder and renamed into place once every file is verified, so a worker
//! killed mid-download never leaves a half bundle that looks complete.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use capfilt_schemas::SchemaError;
use capfilt_schemas::bundle::{BUNDLE_MANIFEST_FILE, BundleKind, BundleManifest, Precision};
use sha2::{Digest, Sha256};

use crate::text::{BlipTokenizer, TextError};
use capfilt_schemas::store::{self, StoreError};

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle folder or its `bundle.json` is missing.
    #[error(
        "no model bundle at {path}: {message} (a bundle folder holds bundle.json; make one with `python -m capfilt_trainer export`)"
    )]
    NotFound {
        /// Where it was looked for.
        path: String,
        /// The underlying error.
        message: String,
    },
    /// `bundle.json` is malformed or inconsistent.
    #[error(transparent)]
    Manifest(#[from] SchemaError),
    /// A file listed in `bundle.json` is missing.
    #[error("bundle {bundle}: file '{file}' listed in bundle.json is missing: {message}")]
    MissingFile {
        /// The bundle.
        bundle: String,
        /// The file, relative to the bundle.
        file: String,
        /// The underlying error.
        message: String,
    },
    /// A file's content does not match its sha256 in `bundle.json`.
    #[error(
        "bundle {bundle}: sha256 of '{file}' is {actual}, bundle.json says {expected}: the file was changed or corrupted; re-export or re-copy the bundle"
    )]
    HashMismatch {
        /// The bundle.
        bundle: String,
        /// The file, relative to the bundle.
        file: String,
        /// The hash in `bundle.json`.
        expected: String,
        /// The hash of the file.
        actual: String,
    },
    /// A file name in `bundle.json` points outside the bundle.
    #[error("bundle {bundle}: file name '{file}' is not a plain relative path inside the bundle")]
    UnsafePath {
        /// The bundle.
        bundle: String,
        /// The offending name.
        file: String,
    },
    /// The bundle is of the other kind.
    #[error("bundle {bundle} is a {found} bundle, but a {expected} bundle is needed here")]
    WrongKind {
        /// The bundle.
        bundle: String,
        /// Needed kind.
        expected: BundleKind,
        /// Found kind.
        found: BundleKind,
    },
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local filesystem error in the cache.
    #[error("bundle cache {path}: {source}")]
    Cache {
        /// Where.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Text(#[from] TextError),
}

/// A verified bundle on the local filesystem.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The folder.
    pub dir: PathBuf,
    /// Where it came from (folder or URL), for messages and provenance.
    pub source: String,
    /// The parsed `bundle.json`.
    pub manifest: BundleManifest,
    /// sha256 of `bundle.json` itself: identifies the bundle (it lists every file's hash).
    pub sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What identifies a file's contents without reading it: length, modification time and
/// inode. A file whose identity is unchanged since it was hashed is not hashed again (as build
/// tools fingerprint sources); any rewrite changes its mtime or inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(Self {
            len: m.len(),
            modified: m.modified().ok(),
            inode,
        })
    }
}

/// Files hashed by this process: path -> (identity when hashed, sha256).
fn verified() -> &'static std::sync::Mutex<HashMap<PathBuf, (FileIdentity, String)>> {
    static VERIFIED: std::sync::OnceLock<
        std::sync::Mutex<HashMap<PathBuf, (FileIdentity, String)>>,
    > = std::sync::OnceLock::new();
    VERIFIED.get_or_init(Default::default)
}

/// Files actually read and hashed by this process (a test counter: a lease of a bundle
/// verified before hashes nothing).
pub fn files_hashed() -> u64 {
    FILES_HASHED.load(std::sync::atomic::Ordering::Relaxed)
}

static FILES_HASHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// sha256 of the file at `path`, remembered while the file's identity does not change.
fn sha256_file_cached(path: &Path) -> std::io::Result<String> {
    let before = FileIdentity::of(path)?;
    let remembered = verified()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(path)
        .filter(|(id, _)| *id == before)
        .map(|(_, h)| h.clone());
    if let Some(h) = remembered {
        return Ok(h);
    }
    let h = sha256_file(path)?;
    FILES_HASHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Remember only when the file did not change while it was read.
    if FileIdentity::of(path)? == before {
        remember(path, before, h.clone());
    }
    Ok(h)
}

fn remember(path: &Path, id: FileIdentity, sha256: String) {
    verified()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(path.to_path_buf(), (id, sha256));
}

/// Streams the object at `loc` into `dest`, hashing it on the way (a graph of gigabytes never
/// sits in memory); returns its sha256.
async fn download(loc: &store::Location, dest: &Path) -> Result<String, BundleError> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    use std::io::Write;
    let io = |source| {
        BundleError::Store(StoreError::Io {
            operation: "reading",
            location: loc.display.clone(),
            source,
        })
    };
    let cache_err = |e| BundleError::Cache {
        path: dest.display().to_string(),
        source: e,
    };
    let mut body = loc.store.get(&loc.path).await.map_err(io)?.into_stream();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dest).map_err(cache_err)?);
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(io)?;
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(cache_err)?;
    }
    file.into_inner()
        .map_err(|e| cache_err(e.into_error()))?
        .sync_all()
        .map_err(cache_err)?;
    Ok(format!("{:x}", hasher.finalize()))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn check_relative(bundle: &str, file: &str) -> Result<(), BundleError> {
    let p = Path::new(file);
    let plain = !file.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(BundleError::UnsafePath {
            bundle: bundle.to_string(),
            file: file.to_string(),
        })
    }
}

impl Bundle {
    /// Opens and verifies the bundle folder `dir`.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        Self::open_as(dir, &dir.display().to_string())
    }

    fn open_as(dir: &Path, source: &str) -> Result<Bundle, BundleError> {
        let manifest_path = dir.join(BUNDLE_MANIFEST_FILE);
        let json = std::fs::read(&manifest_path).map_err(|e| BundleError::NotFound {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let text = String::from_utf8_lossy(&json);
        let manifest = BundleManifest::from_json(&manifest_path.display().to_string(), &text)?;
        for (file, expected) in &manifest.files {
            check_relative(source, file)?;
            let actual =
                sha256_file_cached(&dir.join(file)).map_err(|e| BundleError::MissingFile {
                    bundle: source.to_string(),
                    file: file.clone(),
                    message: e.to_string(),
                })?;
            if &actual != expected {
                return Err(BundleError::HashMismatch {
                    bundle: source.to_string(),
                    file: file.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        tracing::debug!(
            bundle = source,
            files = manifest.files.len(),
            "bundle verified"
        );
        Ok(Bundle {
            dir: dir.to_path_buf(),
            source: source.to_string(),
            sha256: sha256_hex(&json),
            manifest,
        })
    }

    /// Opens the bundle at `location`: a local folder, or an object-store URL whose files are
    /// downloaded (once) into `cache_dir/bundles/` and verified there.
    pub async fn fetch(
        location: &str,
        cache_dir: &Path,
        options: &[(String, String)],
    ) -> Result<Bundle, BundleError> {
        if !store::is_url(location) || location.starts_with("file://") {
            let dir = location.strip_prefix("file://").unwrap_or(location);
            return Self::open_as(Path::new(dir), location);
        }
        let loc = store::resolve(location, options)?;
        let manifest_loc = loc.child(BUNDLE_MANIFEST_FILE);
        let json = get_bytes(&manifest_loc).await.map_err(|e| match e {
            BundleError::Store(StoreError::Io { source, .. }) => BundleError::NotFound {
                path: location.to_string(),
                message: source.to_string(),
            },
            other => other,
        })?;
        let key = sha256_hex(&json);
        let final_dir = cache_dir.join("bundles").join(&key);
        if final_dir.join(BUNDLE_MANIFEST_FILE).is_file() {
            // Verified when it was placed; verify again: the cache is a plain folder.
            return Self::open_as(&final_dir, location);
        }
        let manifest = BundleManifest::from_json(location, &String::from_utf8_lossy(&json))?;
        let tmp = cache_dir.join("bundles").join(format!(
            ".{key}.{}-{}.partial",
            std::process::id(),
            next_download()
        ));
        let cache_err = |path: &Path, source| BundleError::Cache {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&tmp).map_err(|e| cache_err(&tmp, e))?;
        let mut hashed = Vec::new();
        for file in manifest.files.keys() {
            check_relative(location, file)?;
            let dest = tmp.join(file);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| cache_err(parent, e))?;
            }
            let actual = download(&loc.child(file), &dest)
                .await
                .map_err(|e| match e {
                    BundleError::Store(StoreError::Io { source, .. }) => BundleError::MissingFile {
                        bundle: location.to_string(),
                        file: file.clone(),
                        message: source.to_string(),
                    },
                    other => other,
                })?;
            let expected = &manifest.files[file];
            if &actual != expected {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(BundleError::HashMismatch {
                    bundle: location.to_string(),
                    file: file.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            hashed.push((file.clone(), actual));
        }
        // Every file was verified as it streamed in: publish under the content address.
        std::fs::write(tmp.join(BUNDLE_MANIFEST_FILE), &json).map_err(|e| cache_err(&tmp, e))?;
        match std::fs::rename(&tmp, &final_dir) {
            Ok(()) => {
                for (file, sha256) in hashed {
                    let path = final_dir.join(&file);
                    if let Ok(id) = FileIdentity::of(&path) {
                        remember(&path, id, sha256);
                    }
                }
            }
            // Another process placed it first: use theirs.
            Err(_) if final_dir.join(BUNDLE_MANIFEST_FILE).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(cache_err(&final_dir, e)),
        }
        tracing::info!(bundle = location, cache = %final_dir.display(), "bundle cached");
        Self::open_as(&final_dir, location)
    }

    /// Fails unless this is a `kind` bundle.
    pub fn expect_kind(&self, kind: BundleKind) -> Result<(), BundleError> {
        if self.manifest.kind == kind {
            Ok(())
        } else {
            Err(BundleError::WrongKind {
                bundle: self.source.clone(),
                expected: kind,
                found: self.manifest.kind,
            })
        }
    }

    /// Path of the graph called `name` (`vision`, `decoder`, `itm`) at `precision`.
    pub fn graph_path(&self, name: &str, precision: Precision) -> Option<PathBuf> {
        self.manifest
            .graphs_at(precision)?
            .get(name)
            .map(|g| self.dir.join(&g.file))
    }

    /// Precisions this bundle has graphs at (fp32 first).
    pub fn precisions(&self) -> Vec<Precision> {
        let mut out = vec![self.manifest.precision];
        out.extend(self.manifest.variants.keys().copied());
        out.sort();
        out
    }

    /// The bundle's tokenizer.
    pub fn tokenizer(&self) -> Result<BlipTokenizer, BundleError> {
        let sp = &self.manifest.tokenizer.special_tokens;
        let cls = sp.cls.as_ref().map_or(sp.pad.id, |t| t.id);
        Ok(BlipTokenizer::load(
            &self.dir.join(&self.manifest.tokenizer.file),
            sp.pad.id,
            sp.sep.id,
            cls,
        )?)
    }
}

async fn get_bytes(loc: &store::Location) -> Result<Vec<u8>, BundleError> {
    Ok(loc.get_bytes().await?)
}

/// A process-unique number for temporary download folders (workers in one process may fetch
/// the same bundle at once).
fn next_download() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The default bundle cache: `$CAPFILT_CACHE`, else `$XDG_CACHE_HOME/capfilt`, else
/// `~/.cache/capfilt`, else a folder in the temporary directory.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPFILT_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("capfilt");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("capfilt");
    }
    std::env::temp_dir().join("capfilt-cache")
}
