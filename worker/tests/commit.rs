//! Exactly-once commits: the first create-only commit record wins; a later attempt of the same
//! shard sees the conflict and deletes only its own data files, never the winner's; a create
//! whose response was lost is recognised as this attempt's own; a shard with rows missing is
//! never committed.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use capfilt_schemas::outputs::RejectReason;
use capfilt_schemas::records::{CommitRecord, ShardRef, ShardStats};
use capfilt_worker::output::{ShardTables, SourceRef, Tables};
use capfilt_worker::shard_loop::{LeaseResult, commit_shard};
use capfilt_worker::store::{self, Location};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["scored", "cleaned", "rejects"] {
        for e in std::fs::read_dir(dir.join(table))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!("{table}/{}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_first_commit_wins_and_a_late_attempt_cleans_up_after_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = store::resolve(&tmp.path().display().to_string(), &[]).expect("local");
    let shard = ShardRef {
        shard_id: "f00000-g00000".into(),
        file: "web/part-00000.parquet".into(),
        first_row_group: 0,
        num_row_groups: 1,
        first_row: 0,
        num_rows: 0,
    };
    let commit = |attempt: u32, worker: &'static str| {
        let out = out.clone();
        let shard = shard.clone();
        async move {
            let tables = ShardTables::new(1, false).finish().expect("tables");
            commit_shard(
                &out,
                1,
                &shard,
                attempt,
                worker,
                tables,
                ShardStats::default(),
                "{}",
                "a",
                "b",
            )
            .await
            .expect("store")
        }
    };
    // The late attempt (2) commits first; the earlier attempt (1) comes back afterwards.
    assert!(matches!(commit(2, "fast").await, LeaseResult::Committed(_)));
    let winner = std::fs::read(tmp.path().join("_commits/f00000-g00000.json")).expect("commit");
    let winner_files = files(tmp.path());
    assert_eq!(winner_files.len(), 3);
    assert!(matches!(commit(1, "slow").await, LeaseResult::Conflict));
    assert_eq!(
        std::fs::read(tmp.path().join("_commits/f00000-g00000.json")).expect("commit"),
        winner
    );
    assert_eq!(
        files(tmp.path()),
        winner_files,
        "the loser's files are gone, the winner's intact"
    );
}

fn shard(rows: u64) -> ShardRef {
    ShardRef {
        shard_id: "f00000-g00001".into(),
        file: "web/part-00000.parquet".into(),
        first_row_group: 1,
        num_row_groups: 1,
        first_row: 10,
        num_rows: rows,
    }
}

/// Tables with `rows` rejected rows whose keys start with `tag`.
fn tables(tag: &str, rows: u64) -> Tables {
    let mut t = ShardTables::new(1, false);
    for row in 0..rows {
        let src = SourceRef {
            key: format!("{tag}-{row}"),
            url: None,
            file: "web/part-00000.parquet".into(),
            row: 10 + row,
        };
        t.push_reject(&src, Some("c"), RejectReason::MissingImage, "no image");
    }
    t.finish().expect("tables")
}

async fn commit(out: &Location, attempt: u32, worker: &str, t: Tables) -> LeaseResult {
    commit_shard(
        out,
        1,
        &shard(t.counts.rows_in),
        attempt,
        worker,
        t,
        ShardStats::default(),
        "{}",
        "a",
        "b",
    )
    .await
    .expect("store")
}

/// Every file the commit record names exists and holds the rows the record says.
fn assert_record_intact(dir: &std::path::Path) -> CommitRecord {
    let record: CommitRecord = serde_json::from_slice(
        &std::fs::read(dir.join("_commits/f00000-g00001.json")).expect("commit record"),
    )
    .expect("json");
    for f in [
        &record.files.scored,
        &record.files.cleaned,
        &record.files.rejects,
    ] {
        let file = std::fs::File::open(dir.join(&f.path))
            .unwrap_or_else(|e| panic!("{} named by the record: {e}", f.path));
        let reader = parquet::file::reader::SerializedFileReader::new(file).expect("parquet");
        use parquet::file::reader::FileReader;
        assert_eq!(
            reader.metadata().file_metadata().num_rows() as u64,
            f.rows,
            "{}",
            f.path
        );
    }
    record
}

/// A restarted coordinator numbers attempts from 1 again and may lease the shard to the same
/// worker: the second attempt 1 must not overwrite or delete the first one's files.
#[tokio::test]
async fn a_renumbered_attempt_of_the_same_worker_never_touches_the_winners_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = store::resolve(&tmp.path().display().to_string(), &[]).expect("local");
    assert!(matches!(
        commit(&out, 1, "w", tables("first", 3)).await,
        LeaseResult::Committed(_)
    ));
    assert!(matches!(
        commit(&out, 1, "w", tables("second", 3)).await,
        LeaseResult::Conflict
    ));
    let record = assert_record_intact(tmp.path());
    assert_eq!(record.counts.rows_in, 3);
    assert_eq!(files(tmp.path()).len(), 3, "only the winner's files remain");
}

/// A store whose create-only PUTs land and then report `AlreadyExists`, as when the response
/// to the first try was lost and the client's own retry ran into the object it had written.
#[derive(Debug)]
struct LostCreateResponse(Arc<dyn ObjectStore>);

impl std::fmt::Display for LostCreateResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LostCreateResponse")
    }
}

#[async_trait::async_trait]
impl ObjectStore for LostCreateResponse {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = matches!(opts.mode, PutMode::Create);
        let r = self.0.put_opts(location, payload, opts).await?;
        if create {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "412 on the client's retry".into(),
            });
        }
        Ok(r)
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, o: GetOptions) -> object_store::Result<GetResult> {
        self.0.get_opts(location, o).await
    }
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> object_store::Result<()> {
        self.0.copy_opts(from, to, o).await
    }
}

#[tokio::test]
async fn a_commit_whose_response_was_lost_is_recognised_as_this_attempts_own() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut out = store::resolve(&tmp.path().display().to_string(), &[]).expect("local");
    out.store = Arc::new(LostCreateResponse(out.store.clone()));
    assert!(
        matches!(
            commit(&out, 1, "w", tables("only", 4)).await,
            LeaseResult::Committed(_)
        ),
        "the record there is this attempt's own: committed, not a conflict"
    );
    let record = assert_record_intact(tmp.path());
    assert_eq!(record.counts.rows_in, 4);
}

#[tokio::test]
async fn a_shard_with_rows_unaccounted_for_is_never_committed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = store::resolve(&tmp.path().display().to_string(), &[]).expect("local");
    let err = commit_shard(
        &out,
        1,
        &shard(5),
        1,
        "w",
        tables("short", 3),
        ShardStats::default(),
        "{}",
        "a",
        "b",
    )
    .await
    .expect_err("3 of 5 rows");
    assert!(err.to_string().contains("3 of its 5 planned rows"), "{err}");
    assert!(!tmp.path().join("_commits").exists(), "no commit record");
    assert!(files(tmp.path()).is_empty(), "no data files");
}
