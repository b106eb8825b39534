//! Parquet output of the benchmark: one folder per split, several files of several row groups,
//! img2dataset's columns plus ground truth.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use serde::Serialize;

use crate::{Row, Split, SynthConfig, SynthError, make_row, split_dir};

/// Name of the file that marks a folder as a synth output and records its parameters.
pub const SUMMARY_FILE: &str = "_synth.json";

/// What was written for one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitSummary {
    /// Split name.
    pub split: &'static str,
    /// Rows.
    pub rows: u64,
    /// Rows whose caption does not match (`gt_match = false`).
    pub noisy_rows: u64,
    /// PNG images (the rest are JPEG).
    pub png_images: u64,
    /// Files written, relative to the output folder.
    pub files: Vec<String>,
    /// Row groups over all files.
    pub row_groups: u64,
    /// Bytes over all files.
    pub bytes: u64,
}

/// What `generate` wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    /// Per split, in order seed, web, eval.
    pub splits: Vec<SplitSummary>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Arrow schema of a benchmark file: img2dataset's `key,url,caption,jpg`, its `width,height`,
/// and the ground truth `gt_caption,gt_match,noise`.
pub fn synth_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("caption", DataType::Utf8, false),
        Field::new("jpg", DataType::Binary, false),
        Field::new("width", DataType::UInt32, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("gt_caption", DataType::Utf8, false),
        Field::new("gt_match", DataType::Boolean, false),
        Field::new("noise", DataType::Utf8, true),
    ]))
}

/// Makes `out`, refusing a non-empty folder that is not an earlier synth output, and clears the
/// split folders of an earlier output so no stale part file survives.
pub(crate) fn prepare_output(out: &Path) -> Result<(), SynthError> {
    if out.exists() {
        let non_empty = fs::read_dir(out).map_err(io_err(out))?.next().is_some();
        if non_empty && !out.join(SUMMARY_FILE).exists() {
            return Err(SynthError::OutputNotEmpty(out.to_path_buf()));
        }
        for split in Split::ALL {
            let dir = split_dir(out, split);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
        }
    }
    fs::create_dir_all(out).map_err(io_err(out))?;
    Ok(())
}

fn properties(config: &SynthConfig, split: Split) -> WriterProperties {
    let jpg = ColumnPath::from("jpg");
    let meta = format!(
        r#"{{"split":"{split}","seed":{},"noise":{}}}"#,
        config.seed,
        if split == Split::Seed {
            0.0
        } else {
            config.noise
        }
    );
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        // Encoded images do not compress further, and min/max statistics of them are useless.
        .set_column_compression(jpg.clone(), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(jpg.clone(), false)
        .set_column_statistics_enabled(jpg, EnabledStatistics::None)
        .set_max_row_group_row_count(Some(config.rows_per_row_group as usize))
        .set_created_by("capfilt synth".to_string())
        .set_key_value_metadata(Some(vec![KeyValue::new("capfilt.synth".into(), meta)]))
        .build()
}

fn batch(rows: &[Row]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let strings = |f: fn(&Row) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.key),
        strings(|r| &r.url),
        strings(|r| &r.caption),
        Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| &r.image))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.width))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.height))),
        strings(|r| &r.gt_caption),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.gt_match)),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.noise.map(|n| n.name())),
        )),
    ];
    RecordBatch::try_new(synth_schema(), columns)
}

pub(crate) fn write_split(
    config: &SynthConfig,
    split: Split,
    noisy: &[bool],
) -> Result<SplitSummary, SynthError> {
    let dir = split_dir(&config.out, split);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let total = config.rows(split);
    let mut summary = SplitSummary {
        split: split.name(),
        rows: total,
        noisy_rows: 0,
        png_images: 0,
        files: Vec::new(),
        row_groups: 0,
        bytes: 0,
    };
    let files = total.div_ceil(config.rows_per_file);
    for file_index in 0..files {
        let name = format!("part-{file_index:05}.parquet");
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let parquet_err = |source| SynthError::Parquet {
            path: path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, synth_schema(), Some(properties(config, split)))
                .map_err(parquet_err)?;
        let start = file_index * config.rows_per_file;
        let end = (start + config.rows_per_file).min(total);
        let mut group = start;
        while group < end {
            let group_end = (group + config.rows_per_row_group).min(end);
            let rows = (group..group_end)
                .into_par_iter()
                .map(|i| make_row(config, split, i, noisy[i as usize]))
                .collect::<Result<Vec<Row>, SynthError>>()?;
            summary.noisy_rows += rows.iter().filter(|r| !r.gt_match).count() as u64;
            summary.png_images += rows.iter().filter(|r| r.url.ends_with(".png")).count() as u64;
            let batch = batch(&rows).map_err(|e| parquet_err(e.into()))?;
            writer.write(&batch).map_err(parquet_err)?;
            writer.flush().map_err(parquet_err)?;
            group = group_end;
        }
        let meta = writer.close().map_err(parquet_err)?;
        summary.row_groups += meta.num_row_groups() as u64;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        summary.bytes += fs::metadata(&path).map_err(io_err(&path))?.len();
        summary.files.push(format!("{}/{name}", split.name()));
        tracing::debug!(split = %split, file = %path.display(), rows = end - start, "wrote benchmark file");
    }
    Ok(summary)
}

#[derive(Serialize)]
struct SummaryFile<'a> {
    generator: &'static str,
    seed: u64,
    noise: f64,
    noise_mix: Vec<(String, f64)>,
    rows_per_file: u64,
    rows_per_row_group: u64,
    min_side: u32,
    max_side: u32,
    png_share: f64,
    splits: &'a [SplitSummary],
}

pub(crate) fn write_summary(
    config: &SynthConfig,
    summary: &SynthSummary,
) -> Result<PathBuf, SynthError> {
    let path = config.out.join(SUMMARY_FILE);
    let file = SummaryFile {
        generator: concat!("capfilt synth ", env!("CARGO_PKG_VERSION")),
        seed: config.seed,
        noise: config.noise,
        noise_mix: config
            .noise_mix
            .weights()
            .iter()
            .map(|(k, w)| (k.name().to_string(), *w))
            .collect(),
        rows_per_file: config.rows_per_file,
        rows_per_row_group: config.rows_per_row_group,
        min_side: config.min_side,
        max_side: config.max_side,
        png_share: config.png_share,
        splits: &summary.splits,
    };
    let json = serde_json::to_string_pretty(&file).map_err(|e| SynthError::Io {
        path: path.clone(),
        source: e.into(),
    })?;
    fs::write(&path, json + "\n").map_err(io_err(&path))?;
    Ok(path)
}
