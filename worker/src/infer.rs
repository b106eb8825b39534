//! The whole CapFilt step over Parquet input on one machine: read rows (one file, or a range of
//! its row groups), decode and preprocess images on a CPU thread pool ahead of inference (a
//! bounded queue between them gives backpressure), run the [`Engine`], and collect the scored,
//! cleaned and rejects tables. `capfilt infer` runs it on a file; the shard loop runs it on a
//! shard's row groups.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use capfilt_schemas::SchemaError;
use capfilt_schemas::bundle::Preprocessing;
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_schemas::outputs::RejectReason;
use capfilt_schemas::records::{ShardCounts, ShardStats};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::ChunkReader;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::bundle::{Bundle, BundleError};
use crate::engine::{Engine, PreparedImage, StepParams, StepRunner, StepTimings};
use crate::engine_error::EngineError;
use crate::input::{InputRow, rows_of};
use crate::output::{ShardTables, SourceRef, Tables, parquet_bytes};
use crate::preprocess::{ImageLimits, Rejected, decode_rgb_for, pixel_values};
use crate::runtime::{OrtConfig, OrtRuntime, SessionOptions};
use capfilt_schemas::store::{self, StoreError};

/// Errors that stop a CapFilt step (bad rows never do: they become rejects).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A bundle cannot be used.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Inference failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Object-store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input file does not fit the column mapping.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The input file cannot be read as Parquet.
    #[error("input {file}: {message}")]
    Input {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// The step was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The output could not be encoded or written.
    #[error("output {location}: {message}")]
    Output {
        /// Where.
        location: String,
        /// Why.
        message: String,
    },
    /// The reading and decoding thread died: the rows it had not sent are unaccounted for, so
    /// the step fails rather than return a truncated result.
    #[error("input {file}: the decoding thread panicked after {rows_sent} rows: {message}")]
    ProducerPanicked {
        /// The input.
        file: String,
        /// Rows it had handed over.
        rows_sent: u64,
        /// The panic's message.
        message: String,
    },
}

/// Waits for the decoding thread; its panic becomes [`InferError::ProducerPanicked`] (unless
/// the step failed already).
fn join_producer(
    producer: std::thread::JoinHandle<()>,
    file: &str,
    rows_sent: u64,
    failure: &mut Option<InferError>,
) {
    if let Err(panic) = producer.join() {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(file, rows_sent, error = %message, "the decoding thread panicked");
        if failure.is_none() {
            *failure = Some(InferError::ProducerPanicked {
                file: file.to_string(),
                rows_sent,
                message,
            });
        }
    }
}

/// How rows are read and images prepared.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The input column mapping.
    pub mapping: ColumnMapping,
    /// Images per inference batch (and per decode chunk).
    pub batch_size: usize,
    /// Decoded chunks that may wait for inference (the bounded queue).
    pub queue_depth: usize,
    /// Image limits.
    pub limits: ImageLimits,
    /// Materialise image bytes into `cleaned/`.
    pub with_images: bool,
    /// Set to stop between batches (a cancelled lease): the step then fails with
    /// [`InferError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Rows done so far, updated after every batch (lease progress).
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            mapping: ColumnMapping::img2dataset(),
            batch_size: 32,
            queue_depth: 2,
            limits: ImageLimits::default(),
            with_images: false,
            cancel: None,
            progress: None,
        }
    }
}

/// Decodes and preprocesses one row for the engine's preprocessing(s).
pub fn prepare(
    row: &InputRow,
    captioner: &Preprocessing,
    filter: Option<&Preprocessing>,
    limits: &ImageLimits,
) -> Result<PreparedImage, Rejected> {
    let Some(bytes) = &row.image else {
        let message = match &row.url {
            Some(url) => format!("no image bytes (URL {url} not fetched: fetching is not enabled)"),
            None => "no image bytes and no URL".to_string(),
        };
        return Err(Rejected::new(RejectReason::MissingImage, message));
    };
    let size = captioner.image_size.max(filter.map_or(0, |f| f.image_size));
    let rgb = decode_rgb_for(bytes, limits, Some(size))?;
    Ok(PreparedImage {
        key: row.key.clone(),
        web_text: row.caption.clone(),
        captioner_pixels: pixel_values(&rgb, captioner),
        filter_pixels: filter.map(|p| pixel_values(&rgb, p)),
    })
}

struct Chunk {
    rows: Vec<InputRow>,
    prepared: Vec<Result<PreparedImage, Rejected>>,
    decode_ms: u64,
}

/// Runs the CapFilt step over the local Parquet file `path` (row groups `row_groups`, or all),
/// naming it `source` in the output rows.
pub fn process_parquet(
    path: &Path,
    source: &str,
    row_groups: Option<Range<usize>>,
    engine: &mut dyn StepRunner,
    read: &ReadOptions,
) -> Result<(Tables, ShardStats), InferError> {
    let file = std::fs::File::open(path).map_err(|e| InferError::Input {
        file: source.to_string(),
        message: e.to_string(),
    })?;
    process_reader(file, source, row_groups, engine, read)
}

/// [`process_parquet`] over any Parquet byte source (a file, or a shard's
/// [`SparseFile`](crate::shard_input::SparseFile)).
pub fn process_reader<R: ChunkReader + 'static>(
    reader: R,
    source: &str,
    row_groups: Option<Range<usize>>,
    engine: &mut dyn StepRunner,
    read: &ReadOptions,
) -> Result<(Tables, ShardStats), InferError> {
    let started = Instant::now();
    let input_err = |message: String| InferError::Input {
        file: source.to_string(),
        message,
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| input_err(e.to_string()))?;
    let columns = read.mapping.validate(source, builder.schema())?;
    let meta = builder.metadata().clone();
    let groups: Vec<usize> = match &row_groups {
        Some(r) => r.clone().collect(),
        None => (0..meta.num_row_groups()).collect(),
    };
    if let Some(&bad) = groups.iter().find(|&&g| g >= meta.num_row_groups()) {
        return Err(input_err(format!(
            "row group {bad} does not exist (the file has {})",
            meta.num_row_groups()
        )));
    }
    let first_row: u64 = (0..groups.first().copied().unwrap_or(0))
        .map(|g| meta.row_group(g).num_rows() as u64)
        .sum();
    let planned_rows: u64 = groups
        .iter()
        .map(|&g| meta.row_group(g).num_rows() as u64)
        .sum();
    let reader = builder
        .with_row_groups(groups)
        .with_batch_size(read.batch_size.max(1))
        .build()
        .map_err(|e| input_err(e.to_string()))?;
    let stem = Path::new(source)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| source.to_string());
    let cap_pre = engine.captioner_preprocessing().clone();
    let fil_pre = engine.filter_preprocessing().cloned();
    let limits = read.limits;

    let (tx, rx) = mpsc::sync_channel::<Result<Chunk, InferError>>(read.queue_depth.max(1));
    let source_name = source.to_string();
    // Decoded chunks waiting in the channel, for the queue depth gauge: counted before a send
    // (so the consumer never takes one the gauge has not seen) and settled after the producer
    // ends (chunks left in a channel the consumer abandoned).
    let queued = Arc::new(AtomicI64::new(0));
    let in_queue = queued.clone();
    let producer = std::thread::spawn(move || {
        let mut next_row = first_row;
        for batch in reader {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(InferError::Input {
                        file: source_name.clone(),
                        message: e.to_string(),
                    }));
                    return;
                }
            };
            let rows = rows_of(&batch, &columns, next_row, &stem, limits.max_caption_chars);
            next_row += batch.num_rows() as u64;
            let t = Instant::now();
            let prepared = rows
                .par_iter()
                .map(|r| prepare(r, &cap_pre, fil_pre.as_ref(), &limits))
                .collect();
            crate::metrics::stage("decode", t.elapsed().as_secs_f64());
            let chunk = Chunk {
                rows,
                prepared,
                decode_ms: t.elapsed().as_millis() as u64,
            };
            in_queue.fetch_add(1, Ordering::SeqCst);
            metrics::gauge!(crate::metrics::DECODE_QUEUE_DEPTH).increment(1.0);
            if tx.send(Ok(chunk)).is_err() {
                in_queue.fetch_sub(1, Ordering::SeqCst);
                metrics::gauge!(crate::metrics::DECODE_QUEUE_DEPTH).decrement(1.0);
                return; // the consumer stopped
            }
        }
    });

    let mut tables = ShardTables::new(engine.round(), read.with_images);
    let mut seen_keys = std::collections::HashSet::new();
    let mut stats = ShardStats::default();
    let mut timings = StepTimings::default();
    let mut failure = None;
    for chunk in rx {
        if read
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            failure = Some(InferError::Cancelled);
            break;
        }
        let chunk = match chunk {
            Ok(c) => {
                queued.fetch_sub(1, Ordering::SeqCst);
                metrics::gauge!(crate::metrics::DECODE_QUEUE_DEPTH).decrement(1.0);
                c
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        stats.decode_ms += chunk.decode_ms;
        let mut images = Vec::new();
        let mut image_rows = Vec::new();
        let mut results: Vec<Option<Rejected>> = Vec::with_capacity(chunk.rows.len());
        for (i, p) in chunk.prepared.into_iter().enumerate() {
            match p {
                Ok(img) => {
                    images.push(img);
                    image_rows.push(i);
                    results.push(None);
                }
                Err(r) => results.push(Some(r)),
            }
        }
        let judged = match engine.run_step(images, &mut timings) {
            Ok(j) => j,
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        };
        let mut judged = judged.into_iter();
        for (row, rejected) in chunk.rows.iter().zip(results) {
            let duplicate = !seen_keys.insert(row.key.clone());
            if duplicate {
                tracing::warn!(key = %row.key, file = source, row = row.row, "duplicate key in the shard");
            }
            tables.note_input(row.key_derived, row.caption_truncated, duplicate);
            let src = SourceRef {
                key: row.key.clone(),
                url: row.url.clone(),
                file: source.to_string(),
                row: row.row,
            };
            match rejected {
                Some(r) => {
                    tracing::debug!(key = %row.key, reason = %r.reason, message = %r.message, "row rejected");
                    tables.push_reject(&src, row.caption.as_deref(), r.reason, &r.message);
                }
                None => {
                    let j = judged.next().unwrap_or_default();
                    tables.push_scored(&src, &j, row.image.as_deref());
                }
            }
        }
        if let Some(p) = &read.progress {
            p.store(tables.counts.rows_in, Ordering::Relaxed);
        }
    }
    join_producer(producer, source, tables.counts.rows_in, &mut failure);
    if failure.is_none() && tables.counts.rows_in != planned_rows {
        failure = Some(InferError::Input {
            file: source.to_string(),
            message: format!(
                "read {} of the {planned_rows} rows of its row groups",
                tables.counts.rows_in
            ),
        });
    }
    let abandoned = queued.swap(0, Ordering::SeqCst);
    metrics::gauge!(crate::metrics::DECODE_QUEUE_DEPTH).decrement(abandoned as f64);
    if let Some(e) = failure {
        return Err(e);
    }
    stats.caption_ms = timings.caption.as_millis() as u64;
    stats.filter_ms = timings.filter.as_millis() as u64;
    stats.wall_ms = started.elapsed().as_millis() as u64;
    let tables = tables.finish().map_err(|e| InferError::Output {
        location: source.to_string(),
        message: e.to_string(),
    })?;
    Ok((tables, stats))
}

/// `capfilt infer`'s configuration.
#[derive(Debug, Clone)]
pub struct InferConfig {
    /// Captioner bundle (folder or URL).
    pub captioner: String,
    /// Filter bundle (folder or URL).
    pub filter: String,
    /// Input Parquet file (path or URL).
    pub input: String,
    /// Output folder or prefix (path or URL).
    pub output: String,
    /// Step parameters.
    pub step: StepParams,
    /// Reading and preprocessing.
    pub read: ReadOptions,
    /// ONNX Runtime sessions.
    pub session: SessionOptions,
    /// ONNX Runtime library.
    pub ort: OrtConfig,
    /// Bundle and input cache.
    pub cache_dir: PathBuf,
    /// Extra object-store options.
    pub store_options: Vec<(String, String)>,
}

/// What `capfilt infer` did.
#[derive(Debug, Clone)]
pub struct InferSummary {
    /// Row and text counts.
    pub counts: ShardCounts,
    /// Time per stage.
    pub stats: ShardStats,
    /// Files written.
    pub files: Vec<String>,
}

/// Fetches `location` into the cache when it is remote; returns a local path.
async fn local_copy(
    location: &str,
    cache_dir: &Path,
    options: &[(String, String)],
) -> Result<PathBuf, InferError> {
    let loc = store::resolve(location, options)?;
    if let Some(local) = loc.local {
        return Ok(local);
    }
    let dir = cache_dir.join("inputs");
    std::fs::create_dir_all(&dir).map_err(|e| InferError::Input {
        file: location.to_string(),
        message: format!("cache {}: {e}", dir.display()),
    })?;
    let path = dir.join(format!("{:x}.parquet", Sha256::digest(location.as_bytes())));
    // Streamed to disk: an input file never sits whole in memory.
    loc.copy_to_file(&path).await?;
    Ok(path)
}

/// The provenance JSON stored in every output file's metadata.
pub fn provenance_json(captioner: &Bundle, filter: &Bundle, step: &StepParams) -> String {
    serde_json::json!({
        "round": step.round,
        "captioner": {"source": captioner.source, "bundle_sha256": captioner.sha256, "name": captioner.manifest.name},
        "filter": {"source": filter.source, "bundle_sha256": filter.sha256, "name": filter.manifest.name},
        "generation": step.generation,
        "threshold": step.threshold,
        "seed_rule": "sha256(key 0x00 round_le32 candidate_le32)[0..8] as little-endian u64",
        "capfilt_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

/// Runs `capfilt infer`: the CapFilt step over one input file, written as
/// `{output}/{scored,cleaned,rejects}/part-{input stem}.parquet`.
pub async fn run_infer(config: InferConfig) -> Result<InferSummary, InferError> {
    let cap = Bundle::fetch(&config.captioner, &config.cache_dir, &config.store_options).await?;
    let fil = Bundle::fetch(&config.filter, &config.cache_dir, &config.store_options).await?;
    let rt = OrtRuntime::init(&config.ort).map_err(EngineError::from)?;
    let mut engine = Engine::load(rt, &cap, &fil, &config.session, config.step.clone())?;
    let input = local_copy(&config.input, &config.cache_dir, &config.store_options).await?;
    let source = config.input.clone();
    let read = config.read.clone();
    let (tables, mut stats) = tokio::task::spawn_blocking(move || {
        process_parquet(&input, &source, None, &mut engine, &read)
    })
    .await
    .map_err(|e| InferError::Output {
        location: config.output.clone(),
        message: format!("inference task failed: {e}"),
    })??;

    let t = Instant::now();
    let provenance = provenance_json(&cap, &fil, &config.step);
    let out = store::resolve(&config.output, &config.store_options)?;
    let stem = Path::new(&config.input)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "input".to_string());
    let mut files = Vec::new();
    for (table, batch) in [
        ("scored", &tables.scored),
        ("cleaned", &tables.cleaned),
        ("rejects", &tables.rejects),
    ] {
        let loc = out.child(&format!("{table}/part-{stem}.parquet"));
        let bytes = parquet_bytes(batch, &provenance).map_err(|e| InferError::Output {
            location: loc.display.clone(),
            message: e.to_string(),
        })?;
        loc.put_bytes(bytes).await?;
        files.push(loc.display);
    }
    stats.write_ms = t.elapsed().as_millis() as u64;
    Ok(InferSummary {
        counts: tables.counts,
        stats,
        files,
    })
}

/// Reads up to `limit` rows of the local Parquet file `path` through `mapping` (for tools and
/// benchmarks; the step itself streams).
pub fn read_rows(
    path: &Path,
    mapping: &ColumnMapping,
    limit: usize,
) -> Result<Vec<InputRow>, InferError> {
    let source = path.display().to_string();
    let input_err = |message: String| InferError::Input {
        file: source.clone(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| input_err(e.to_string()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| input_err(e.to_string()))?;
    let columns = mapping.validate(&source, builder.schema())?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for batch in builder.build().map_err(|e| input_err(e.to_string()))? {
        let batch = batch.map_err(|e| input_err(e.to_string()))?;
        rows.extend(rows_of(
            &batch,
            &columns,
            rows.len() as u64,
            &stem,
            crate::input::DEFAULT_MAX_CAPTION_CHARS,
        ));
        if rows.len() >= limit {
            rows.truncate(limit);
            break;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoding_thread_fails_the_step_instead_of_truncating_it() {
        let producer = std::thread::spawn(|| panic!("decoder bug at row 7"));
        let mut failure = None;
        join_producer(producer, "web/part-0.parquet", 7, &mut failure);
        let err = failure.expect("the panic is a failure");
        assert!(matches!(
            err,
            InferError::ProducerPanicked { rows_sent: 7, .. }
        ));
        assert!(err.to_string().contains("decoder bug at row 7"), "{err}");

        // An earlier failure is kept; a thread that ends normally adds nothing.
        let mut failure = Some(InferError::Cancelled);
        join_producer(std::thread::spawn(|| panic!("x")), "f", 0, &mut failure);
        assert!(matches!(failure, Some(InferError::Cancelled)));
        let mut none = None;
        join_producer(std::thread::spawn(|| {}), "f", 0, &mut none);
        assert!(none.is_none());
    }
}
