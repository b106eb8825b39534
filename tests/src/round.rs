//! Helpers for round tests: a multi-file web dataset with corrupt rows, a round spec over the
//! seed bundles, in-process workers, and the exactly-once check that follows commit records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use capfilt_coordinator::RoundSpec;
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_schemas::records::{BundleUse, CapfiltParams, CommitRecord, RoundManifest};
use capfilt_synth::{Split, SynthConfig, make_row};
use capfilt_worker::Bundle;
use capfilt_worker::shard_loop::WorkerConfig;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;

/// A free loopback port (bound and released: a tiny window in which another process could take
/// it, acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A committed seed bundle.
pub fn seed_bundle(kind: &str) -> PathBuf {
    repo().join("models/shapes-seed").join(kind)
}

/// The test dataset: its files and every key in it.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Input folder.
    pub dir: PathBuf,
    /// Keys of all rows.
    pub keys: BTreeSet<String>,
    /// Keys of rows whose image is corrupt.
    pub corrupt: BTreeSet<String>,
}

/// Writes `files` Parquet files of `rows_per_file` web rows each (row groups of `group_rows`)
/// under `dir`; every 17th row has a corrupt image.
pub fn write_dataset(dir: &Path, files: usize, rows_per_file: usize, group_rows: usize) -> Dataset {
    std::fs::create_dir_all(dir).expect("dataset dir");
    let config = SynthConfig {
        max_side: 160,
        ..SynthConfig::new("unused")
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("jpg", DataType::Binary, true),
    ]));
    let mut keys = BTreeSet::new();
    let mut corrupt = BTreeSet::new();
    for f in 0..files {
        let mut k = Vec::new();
        let mut captions = Vec::new();
        let mut images: Vec<Option<Vec<u8>>> = Vec::new();
        for r in 0..rows_per_file {
            let index = (f * rows_per_file + r) as u64;
            let row = make_row(&config, Split::Web, index, index.is_multiple_of(3)).expect("row");
            let key = format!("{f:02}-{}", row.key);
            if index % 17 == 5 {
                corrupt.insert(key.clone());
                images.push(Some(b"\xff\xd8\xff\xe0 not really a jpeg".to_vec()));
            } else {
                images.push(Some(row.image));
            }
            keys.insert(key.clone());
            k.push(key);
            captions.push(row.caption);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(k.clone())),
            Arc::new(StringArray::from_iter(
                k.iter()
                    .map(|k| Some(format!("https://img.invalid/{k}.jpg"))),
            )),
            Arc::new(StringArray::from(captions)),
            Arc::new(BinaryArray::from_iter(images.iter().map(|i| i.as_deref()))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let file = std::fs::File::create(dir.join(format!("part-{f:05}.parquet"))).expect("create");
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
    Dataset {
        dir: dir.to_path_buf(),
        keys,
        corrupt,
    }
}

/// Overwrites the middle of row group `group`'s image column chunk in `file` with garbage:
/// the footer stays valid (the file plans), but that row group cannot be decoded.
pub fn corrupt_row_group(file: &Path, group: usize) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).expect("open"))
        .expect("parquet");
    let md = reader.metadata().clone();
    let col = md.row_group(group).column(3);
    let (start, len) = col.byte_range();
    let mut bytes = std::fs::read(file).expect("read");
    for b in &mut bytes[start as usize + 4..(start + len) as usize - 4] {
        *b = 0xAB;
    }
    std::fs::write(file, bytes).expect("write");
}

/// A round spec over `input` writing to `output`, with the seed bundles.
pub fn round_spec(
    input: &str,
    output: &str,
    target_rows: u64,
    store_options: Vec<(String, String)>,
) -> RoundSpec {
    let cap = Bundle::open(&seed_bundle("captioner")).expect("captioner");
    let fil = Bundle::open(&seed_bundle("filter")).expect("filter");
    RoundSpec {
        round: 1,
        input: input.to_string(),
        output: output.to_string(),
        mapping: ColumnMapping::img2dataset(),
        target_shard_rows: target_rows,
        captioner: BundleUse {
            url: seed_bundle("captioner").display().to_string(),
            bundle_json_sha256: cap.sha256,
        },
        filter: BundleUse {
            url: seed_bundle("filter").display().to_string(),
            bundle_json_sha256: fil.sha256,
        },
        params: CapfiltParams::default(),
        batch_size: 16,
        max_failures: 3,
        store_options,
    }
}

/// A worker config for tests: one ONNX Runtime thread, short backoff.
pub fn worker_config(
    url: &str,
    id: &str,
    cache: &Path,
    store_options: Vec<(String, String)>,
) -> WorkerConfig {
    let mut w = WorkerConfig::new(url);
    w.worker_id = id.to_string();
    w.session.intra_threads = Some(1);
    w.cache_dir = cache.to_path_buf();
    w.store_options = store_options;
    w.max_backoff = Duration::from_millis(300);
    w.drain_timeout = Duration::from_secs(30);
    w
}

/// Keys found by following the commit records of a local round folder: (scored image keys,
/// rejected keys), each with how many times it appears.
pub fn keys_by_commits(
    round_dir: &Path,
) -> (
    BTreeMap<String, usize>,
    BTreeMap<String, usize>,
    Vec<CommitRecord>,
) {
    let mut scored = BTreeMap::new();
    let mut rejected = BTreeMap::new();
    let mut commits = Vec::new();
    let dir = round_dir.join("_commits");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("_commits")
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    for path in names {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let record: CommitRecord =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("commit json");
        for (file, into) in [
            (&record.files.scored.path, &mut scored),
            (&record.files.rejects.path, &mut rejected),
        ] {
            let reader = ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(round_dir.join(file)).expect("data file"),
            )
            .expect("parquet")
            .build()
            .expect("reader");
            let mut seen = BTreeSet::new();
            for batch in reader {
                let batch = batch.expect("batch");
                let keys = batch.column_by_name("key").expect("key").as_string::<i32>();
                for i in 0..batch.num_rows() {
                    seen.insert(keys.value(i).to_string());
                }
            }
            for k in seen {
                *into.entry(k).or_insert(0) += 1;
            }
        }
        commits.push(record);
    }
    (scored, rejected, commits)
}

/// Asserts every input key appears exactly once (scored or rejected, never both) and the
/// manifest totals add up; `lost` are the keys of quarantined shards.
pub fn assert_exactly_once(
    data: &Dataset,
    round_dir: &Path,
    manifest: &RoundManifest,
    lost: &BTreeSet<String>,
) {
    let (scored, rejected, commits) = keys_by_commits(round_dir);
    for (k, n) in scored.iter().chain(&rejected) {
        assert_eq!(*n, 1, "key {k} appears {n} times");
    }
    for k in scored.keys() {
        assert!(
            !rejected.contains_key(k),
            "key {k} both scored and rejected"
        );
    }
    let got: BTreeSet<String> = scored.keys().chain(rejected.keys()).cloned().collect();
    let want: BTreeSet<String> = data.keys.difference(lost).cloned().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "rows out vs rows in (minus quarantined)"
    );
    assert_eq!(got, want);
    for k in rejected.keys() {
        assert!(data.corrupt.contains(k), "{k} rejected but not corrupt");
    }
    let rows: u64 = commits.iter().map(|c| c.counts.rows_in).sum();
    assert_eq!(manifest.totals.rows_in, rows);
    assert_eq!(
        manifest.totals.rows_in,
        manifest.totals.rows_scored + manifest.totals.rows_rejected
    );
    assert_eq!(manifest.totals.rows_scored as usize, scored.len());
    assert_eq!(manifest.totals.rows_rejected as usize, rejected.len());
}
