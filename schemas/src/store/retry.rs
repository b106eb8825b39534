//! capfilt's retry layer over every store: transient errors (a generic store error, which is
//! how a 5xx or a reset connection surfaces from `object_store` once its own HTTP retries are
//! spent) are retried with exponential backoff, and the one retry that is not idempotent, a
//! create-only PUT, is made safe.
//!
//! - `get`: a body that breaks off mid-stream resumes from the byte it reached with a ranged
//!   read pinned to the object's ETag (so a replaced object is never spliced in).
//! - create-only `put`: when the object is there already (a retry after a try whose response
//!   was lost, here or in the client's own HTTP retries), it is read back; if it holds this
//!   write's bytes, the write is ours and succeeds. Anything else stays `AlreadyExists`.
//!   capfilt's create-only objects (commit records, fencing epochs, probes) carry unique
//!   content, so equal bytes mean this very write.
//! - `delete`: a retry that finds the object gone counts as deleted.
//! - `list`: a listing that fails is started again.
//!
//! Errors that say something about the request (not found, already exists, precondition,
//! not supported, an invalid path) are never retried.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: no retries).
    pub max_retries: u32,
    /// The first wait; each later wait doubles, up to `max_backoff`.
    pub base: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base: Duration::from_millis(25),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max_backoff);
        // Full jitter on the upper half, so many clients retrying together spread out.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        capped / 2 + capped.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

/// Whether `e` may go away on its own.
pub fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Generic { .. } | Error::JoinError { .. })
}

/// An [`ObjectStore`] that retries `inner`'s transient errors.
#[derive(Debug)]
pub struct RetryStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl fmt::Display for RetryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retry({})", self.inner)
    }
}

async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    operation: &'static str,
    path: &Path,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut retry = 0;
    loop {
        match f().await {
            Err(e) if is_transient(&e) && retry < policy.max_retries => {
                retry += 1;
                let wait = policy.backoff(retry);
                tracing::debug!(operation, path = %path, retry, wait_ms = wait.as_millis() as u64, error = %e, "object store: retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

fn payload_bytes(p: &PutPayload) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.content_length());
    for chunk in p.iter() {
        out.extend_from_slice(chunk);
    }
    out
}

impl RetryStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// Whether the object at `location` holds exactly `payload` (an earlier, ambiguous try of
    /// this very write).
    async fn holds(&self, location: &Path, payload: &PutPayload) -> Option<ObjectMeta> {
        let got = with_retries(self.policy, "reading back", location, || async {
            let r = self.inner.get(location).await?;
            let meta = r.meta.clone();
            Ok((meta, r.bytes().await?))
        })
        .await
        .ok()?;
        (got.1.as_ref() == payload_bytes(payload).as_slice()).then_some(got.0)
    }
}

/// A body that resumes after a mid-stream transient error with a ranged read from where it
/// broke off, pinned to the first response's ETag.
fn resuming_body(
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    location: Path,
    first: GetResult,
    options: GetOptions,
) -> GetResult {
    let range = first.range.clone();
    let etag = first.meta.e_tag.clone();
    let (first_body, rest) = super::split_body(first);
    struct State {
        body: BoxStream<'static, Result<Bytes>>,
        next: u64,
        retries: u32,
        done: bool,
    }
    let state = State {
        body: first_body,
        next: range.start,
        retries: 0,
        done: false,
    };
    let end = range.end;
    let body = futures::stream::unfold(state, move |mut s| {
        let inner = inner.clone();
        let location = location.clone();
        let etag = etag.clone();
        let options = options.clone();
        async move {
            if s.done {
                return None;
            }
            loop {
                match s.body.next().await {
                    Some(Ok(chunk)) => {
                        s.next += chunk.len() as u64;
                        return Some((Ok(chunk), s));
                    }
                    None if s.next >= end => return None,
                    None => {
                        // The stream ended short of the range: resume like an error.
                        if s.retries >= policy.max_retries {
                            s.done = true;
                            let e = Error::Generic {
                                store: "Retry",
                                source: format!(
                                    "{location}: body ended at byte {} of {end}",
                                    s.next
                                )
                                .into(),
                            };
                            return Some((Err(e), s));
                        }
                    }
                    Some(Err(e)) if is_transient(&e) && s.retries < policy.max_retries => {
                        tracing::debug!(path = %location, at = s.next, error = %e, "object store: resuming a broken read");
                    }
                    Some(Err(e)) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
                s.retries += 1;
                tokio::time::sleep(policy.backoff(s.retries)).await;
                let resume = GetOptions {
                    range: Some(GetRange::Bounded(s.next..end)),
                    if_match: etag.clone().or(options.if_match.clone()),
                    head: false,
                    ..options.clone()
                };
                match inner.get_opts(&location, resume).await {
                    Ok(r) => s.body = r.into_stream(),
                    Err(e) if is_transient(&e) => {
                        s.body = futures::stream::once(async move { Err(e) }).boxed();
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
            }
        }
    })
    .boxed();
    GetResult {
        payload: GetResultPayload::Stream(body),
        ..rest
    }
}

#[async_trait]
impl ObjectStore for RetryStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let create = matches!(opts.mode, PutMode::Create);
        let written = with_retries(self.policy, "writing", location, || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await;
        match written {
            // An earlier try (ours, or the client's own retry) may have landed before its
            // response was lost.
            Err(e @ Error::AlreadyExists { .. }) if create => {
                match self.holds(location, &payload).await {
                    Some(meta) => {
                        tracing::info!(path = %location, "object store: a create-only write that reported an error had landed; it is this write");
                        Ok(PutResult {
                            e_tag: meta.e_tag,
                            version: meta.version,
                            extensions: Default::default(),
                        })
                    }
                    None => Err(e),
                }
            }
            other => other,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        with_retries(self.policy, "starting an upload to", location, || {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let first = with_retries(self.policy, "reading", location, || {
            self.inner.get_opts(location, options.clone())
        })
        .await?;
        if head {
            return Ok(first);
        }
        Ok(resuming_body(
            self.inner.clone(),
            self.policy,
            location.clone(),
            first,
            options,
        ))
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        with_retries(self.policy, "reading ranges of", location, || {
            self.inner.get_ranges(location, ranges)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let policy = self.policy;
        locations
            .then(move |location| {
                let inner = inner.clone();
                async move {
                    let location = location?;
                    let mut retried = false;
                    with_retries(policy, "deleting", &location, || {
                        let first_try = !retried;
                        retried = true;
                        let inner = inner.clone();
                        let one = location.clone();
                        async move {
                            match inner.delete(&one).await {
                                // Gone on a retry: the lost try deleted it.
                                Err(Error::NotFound { .. }) if !first_try => Ok(()),
                                other => other,
                            }
                        }
                    })
                    .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let policy = self.policy;
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let at = prefix.clone().unwrap_or_default();
            with_retries(policy, "listing", &at, || {
                inner.list(prefix.as_ref()).try_collect::<Vec<ObjectMeta>>()
            })
            .await
        })
        .map_ok(|all| futures::stream::iter(all.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        with_retries(self.policy, "listing", &at, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        with_retries(self.policy, "copying", from, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        with_retries(self.policy, "renaming", from, || {
            self.inner.rename_opts(from, to, options.clone())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::faults::{FaultConfig, FaultStore};
    use object_store::memory::InMemory;

    fn layered(rate: f64, seed: u64) -> (Arc<InMemory>, RetryStore) {
        let inner = Arc::new(InMemory::new());
        let faulty = Arc::new(FaultStore::new(
            inner.clone(),
            FaultConfig {
                rate,
                seed,
                ..FaultConfig::default()
            },
        ));
        let policy = RetryPolicy {
            max_retries: 8,
            base: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        (inner, RetryStore::new(faulty, policy))
    }

    #[tokio::test]
    async fn reads_survive_refusals_and_broken_bodies_byte_for_byte() {
        let (inner, store) = layered(0.3, 5);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        inner
            .put(&Path::from("f"), PutPayload::from(data.clone()))
            .await
            .expect("put");
        for _ in 0..50 {
            let got = store.get(&Path::from("f")).await.expect("get");
            assert_eq!(got.bytes().await.expect("body").as_ref(), data.as_slice());
            let r = store
                .get_range(&Path::from("f"), 100..4100)
                .await
                .expect("range");
            assert_eq!(r.as_ref(), &data[100..4100]);
        }
    }

    #[tokio::test]
    async fn a_create_only_write_whose_response_was_lost_is_recognised_as_ours() {
        let (inner, store) = layered(0.5, 9);
        for i in 0..60 {
            let p = Path::from(format!("c{i}"));
            let body = format!("writer-a {i}");
            store
                .put_opts(
                    &p,
                    PutPayload::from(body.clone().into_bytes()),
                    PutOptions::from(PutMode::Create),
                )
                .await
                .expect("ours, even when a lost response made the retry see it");
            // A second writer with other bytes still loses.
            let err = store
                .put_opts(
                    &p,
                    PutPayload::from(format!("writer-b {i}").into_bytes()),
                    PutOptions::from(PutMode::Create),
                )
                .await
                .expect_err("someone else's object");
            assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
            let kept = inner.get(&p).await.expect("get").bytes().await.expect("b");
            assert_eq!(kept.as_ref(), body.as_bytes());
        }
        assert!(crate::store::faults::injected(crate::store::faults::FaultKind::Ambiguous) > 0);
    }

    #[tokio::test]
    async fn listings_and_deletes_survive_faults() {
        let (inner, store) = layered(0.3, 2);
        for i in 0..30 {
            inner
                .put(&Path::from(format!("d/{i}")), PutPayload::from_static(b"x"))
                .await
                .expect("put");
        }
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .expect("list");
        assert_eq!(listed.len(), 30);
        for m in listed {
            store.delete(&m.location).await.expect("delete");
        }
        let left: Vec<ObjectMeta> = inner.list(None).try_collect().await.expect("list");
        assert!(left.is_empty());
    }
}
