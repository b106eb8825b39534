//! A fault-injecting [`ObjectStore`] wrapper for tests: it fails a chosen share of the requests
//! at every operation, the way a flaky network and an overloaded object store do.
//!
//! Kinds of fault, each drawn independently per request:
//!
//! | operation | faults |
//! |---|---|
//! | `put` (overwrite or create-only) | fails before writing; or writes and then reports an error (an *ambiguous* write: a 5xx after the store took the object); a create-only put may instead report `AlreadyExists` for its own object (the client's internal retry ran into the object its lost first try wrote) |
//! | `get` | fails before reading; or returns part of the body and then an error (a *partial read*) |
//! | `get_ranges`, `head`, `list`, `list_with_delimiter`, `copy`, `rename` | fail before doing anything |
//! | `delete` | deletes and then reports an error |
//! | any | a *slow response*: the request waits `delay` before it runs |
//!
//! Enable it on any location with the store options `capfilt_fault_rate` (share of requests,
//! 0 to 1), `capfilt_fault_seed` and `capfilt_fault_delay_ms` (see [`super::resolve`]); it sits
//! under capfilt's retry layer ([`super::retry`]), so tests see what production code does with
//! faults that survive a client's retries. Decisions are a pure function of the seed and the
//! request's sequence number, and every injected fault is counted in [`injected`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// What to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Share of requests (0 to 1) that fail, at each operation.
    pub rate: f64,
    /// Share of requests (0 to 1) that wait [`FaultConfig::delay`] first.
    pub slow_rate: f64,
    /// How long a slow request waits.
    pub delay: Duration,
    /// Seed of the fault sequence.
    pub seed: u64,
    /// Which requests may fail.
    pub scope: FaultScope,
}

/// Which requests a [`FaultStore`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultScope {
    /// Every operation.
    #[default]
    All,
    /// Create-only puts only (commit records, fencing epochs): for tests of the commit path.
    CreateOnly,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            rate: 0.0,
            slow_rate: 0.0,
            delay: Duration::from_millis(50),
            seed: 0,
            scope: FaultScope::All,
        }
    }
}

/// A kind of injected fault, for [`injected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A request failed before it did anything.
    Failed = 0,
    /// A write (or delete) took effect and then reported an error.
    Ambiguous = 1,
    /// A read returned part of its body and then an error.
    PartialRead = 2,
    /// A request waited before running.
    Slow = 3,
}

static INJECTED: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// Faults of `kind` injected in this process so far (over every fault-injecting store).
pub fn injected(kind: FaultKind) -> u64 {
    INJECTED[kind as usize].load(Ordering::Relaxed)
}

fn count(kind: FaultKind) {
    INJECTED[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// The error a fault reports: a generic store error, as a 5xx surfaces from `object_store`.
fn fault(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultInjection",
        source: format!("injected fault: {what}").into(),
    }
}

/// An [`ObjectStore`] that injects faults into the requests it passes to `inner`.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    config: FaultConfig,
    sequence: AtomicU64,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({}, rate {})", self.inner, self.config.rate)
    }
}

/// splitmix64: a well-mixed 64-bit hash of the seed and a sequence number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one request draws.
#[derive(Debug, Clone, Copy)]
struct Draw {
    fail: bool,
    /// For operations with two fault kinds: which one.
    second_kind: bool,
    /// For ambiguous create-only puts: report `AlreadyExists` rather than a generic error.
    third_kind: bool,
    slow: bool,
}

impl FaultStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, config: FaultConfig) -> Self {
        Self {
            inner,
            config,
            sequence: AtomicU64::new(0),
        }
    }

    fn draw(&self) -> Draw {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let h = mix(self.config.seed ^ mix(n));
        let unit = |bits: u64| (bits & 0xFFFF_FFFF) as f64 / 4_294_967_296.0;
        Draw {
            fail: unit(h) < self.config.rate,
            second_kind: (h >> 32) & 1 == 1,
            third_kind: (h >> 33) & 1 == 1,
            slow: unit(mix(h) >> 16) < self.config.slow_rate,
        }
    }

    async fn begin(&self) -> Draw {
        let d = self.draw();
        if d.slow {
            count(FaultKind::Slow);
            tokio::time::sleep(self.config.delay).await;
        }
        d
    }

    async fn fail_first(&self, what: &str) -> Result<()> {
        if self.begin().await.fail && self.config.scope == FaultScope::All {
            count(FaultKind::Failed);
            return Err(fault(what));
        }
        Ok(())
    }
}

/// The first half of `result`'s body, then an error.
fn partial(result: GetResult) -> GetResult {
    let keep = (result.range.end - result.range.start) / 2;
    let (body, rest) = super::split_body(result);
    let truncated = futures::stream::unfold(
        (body, 0u64, false),
        move |(mut body, sent, done)| async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) if sent < keep => {
                    let take = ((keep - sent) as usize).min(chunk.len());
                    Some((Ok(chunk.slice(..take)), (body, sent + take as u64, false)))
                }
                Some(Err(e)) => Some((Err(e), (body, sent, true))),
                _ => Some((
                    Err(fault("connection reset while reading the body")),
                    (body, sent, true),
                )),
            }
        },
    )
    .boxed();
    GetResult {
        payload: GetResultPayload::Stream(truncated),
        ..rest
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let d = self.begin().await;
        let create = matches!(opts.mode, object_store::PutMode::Create);
        if !d.fail || (self.config.scope == FaultScope::CreateOnly && !create) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        if d.second_kind {
            // The store takes the object, the client hears an error.
            let written = self.inner.put_opts(location, payload, opts).await?;
            drop(written);
            count(FaultKind::Ambiguous);
            if create && d.third_kind {
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "injected fault: the first try landed, its response was lost, and the client's retry ran into it".into(),
                });
            }
            return Err(fault("write succeeded but the response was lost"));
        }
        count(FaultKind::Failed);
        Err(fault("write refused"))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.fail_first("multipart upload refused").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut d = self.begin().await;
        d.fail &= self.config.scope == FaultScope::All;
        let head = options.head;
        if d.fail && (head || !d.second_kind) {
            count(FaultKind::Failed);
            return Err(fault("read refused"));
        }
        let result = self.inner.get_opts(location, options).await?;
        if d.fail && result.range.end > result.range.start {
            count(FaultKind::PartialRead);
            return Ok(partial(result));
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.fail_first("ranged read refused").await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let draws: Vec<Draw> = (0..64).map(|_| self.draw()).collect();
        let all = self.config.scope == FaultScope::All;
        let mut i = 0usize;
        self.inner
            .delete_stream(locations)
            .map(move |r| {
                let d = draws[i % draws.len()];
                i += 1;
                match r {
                    Ok(_) if d.fail && all => {
                        count(FaultKind::Ambiguous);
                        Err(fault("delete succeeded but the response was lost"))
                    }
                    other => other,
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if self.draw().fail && self.config.scope == FaultScope::All {
            count(FaultKind::Failed);
            return futures::stream::once(async { Err(fault("listing refused")) }).boxed();
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.fail_first("listing refused").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.fail_first("copy refused").await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.fail_first("rename refused").await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    fn store(rate: f64, seed: u64) -> (Arc<InMemory>, FaultStore) {
        let inner = Arc::new(InMemory::new());
        let faulty = FaultStore::new(
            inner.clone(),
            FaultConfig {
                rate,
                seed,
                ..FaultConfig::default()
            },
        );
        (inner, faulty)
    }

    #[tokio::test]
    async fn the_share_of_failed_requests_follows_the_rate() {
        let (inner, faulty) = store(0.25, 7);
        inner
            .put(&Path::from("a"), PutPayload::from_static(b"0123456789"))
            .await
            .expect("put");
        let mut failed = 0;
        for _ in 0..2000 {
            if faulty.get(&Path::from("a")).await.is_err() {
                failed += 1;
            }
        }
        // Refused reads only (partial reads fail later, in the body): about half of 25%.
        assert!((150..350).contains(&failed), "{failed} of 2000 refused");
    }

    #[tokio::test]
    async fn an_ambiguous_write_lands_and_reports_an_error() {
        let (inner, faulty) = store(1.0, 0);
        let mut ambiguous = 0;
        for i in 0..40 {
            let p = Path::from(format!("o{i}"));
            let r = faulty
                .put_opts(
                    &p,
                    PutPayload::from_static(b"x"),
                    PutOptions::from(object_store::PutMode::Create),
                )
                .await;
            assert!(r.is_err(), "every request fails at rate 1");
            if inner.head(&p).await.is_ok() {
                ambiguous += 1;
            }
        }
        assert!((5..35).contains(&ambiguous), "{ambiguous} of 40 landed");
    }

    #[tokio::test]
    async fn a_partial_read_returns_part_of_the_body_then_an_error() {
        let (inner, faulty) = store(1.0, 3);
        inner
            .put(&Path::from("a"), PutPayload::from(vec![7u8; 1000]))
            .await
            .expect("put");
        let mut partial_reads = 0;
        for _ in 0..40 {
            let Ok(got) = faulty.get(&Path::from("a")).await else {
                continue;
            };
            let chunks: Vec<Result<Bytes>> = got.into_stream().collect().await;
            let bytes: usize = chunks.iter().flatten().map(Bytes::len).sum();
            assert_eq!(bytes, 500, "half the body");
            assert!(chunks.last().is_some_and(Result::is_err), "then an error");
            partial_reads += 1;
        }
        assert!(partial_reads > 5, "{partial_reads}");
    }

    #[tokio::test]
    async fn the_same_seed_injects_the_same_faults() {
        let outcomes = |seed| async move {
            let (_, faulty) = store(0.5, seed);
            let mut v = Vec::new();
            for _ in 0..50 {
                v.push(faulty.head(&Path::from("missing")).await.is_ok());
                v.push(faulty.list(None).try_collect::<Vec<_>>().await.is_ok());
            }
            v
        };
        assert_eq!(outcomes(11).await, outcomes(11).await);
        assert_ne!(outcomes(11).await, outcomes(12).await);
    }
}
