//! The output tables of a shard (DESIGN.md §2): `scored` (every judged text), `cleaned` (kept
//! texts only) and `rejects` (every input row that could not be processed), built row by row
//! and written as Parquet with the provenance JSON in the file's key-value metadata.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use capfilt_schemas::outputs::{
    PROVENANCE_METADATA_KEY, RejectReason, cleaned_schema, rejects_schema, scored_schema,
};
use capfilt_schemas::records::ShardCounts;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::engine::Judged;

/// Where an input row came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// Row key.
    pub key: String,
    /// Image URL, if the input has one.
    pub url: Option<String>,
    /// Input file.
    pub file: String,
    /// Row index within the file.
    pub row: u64,
}

#[derive(Default)]
struct SourceCols {
    key: StringBuilder,
    url: StringBuilder,
    file: StringBuilder,
    row: UInt64Builder,
}

impl SourceCols {
    fn push(&mut self, s: &SourceRef) {
        self.key.append_value(&s.key);
        self.url.append_option(s.url.as_deref());
        self.file.append_value(&s.file);
        self.row.append_value(s.row);
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.key.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.row.finish()),
        ]
    }
}

/// Output rows of one shard (or one `capfilt infer` input file), with its counts.
pub struct ShardTables {
    round: u32,
    with_images: bool,
    scored_src: SourceCols,
    scored_text: StringBuilder,
    scored_origin: StringBuilder,
    scored_candidate: UInt32Builder,
    scored_itm: Float32Builder,
    scored_itc: Float32Builder,
    scored_kept: BooleanBuilder,
    scored_seed: UInt64Builder,
    scored_round: UInt32Builder,
    cleaned_src: SourceCols,
    cleaned_text: StringBuilder,
    cleaned_origin: StringBuilder,
    cleaned_candidate: UInt32Builder,
    cleaned_itm: Float32Builder,
    cleaned_round: UInt32Builder,
    cleaned_image: BinaryBuilder,
    rejects_src: SourceCols,
    rejects_caption: StringBuilder,
    rejects_reason: StringBuilder,
    rejects_message: StringBuilder,
    rejects_round: UInt32Builder,
    /// Counts so far.
    pub counts: ShardCounts,
}

impl std::fmt::Debug for ShardTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTables")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// The three finished tables.
#[derive(Debug, Clone)]
pub struct Tables {
    /// `scored/`.
    pub scored: RecordBatch,
    /// `cleaned/`.
    pub cleaned: RecordBatch,
    /// `rejects/`.
    pub rejects: RecordBatch,
    /// Counts.
    pub counts: ShardCounts,
}

impl ShardTables {
    /// Empty tables for `round`; `with_images` materialises image bytes into `cleaned`.
    pub fn new(round: u32, with_images: bool) -> Self {
        Self {
            round,
            with_images,
            scored_src: SourceCols::default(),
            scored_text: StringBuilder::new(),
            scored_origin: StringBuilder::new(),
            scored_candidate: UInt32Builder::new(),
            scored_itm: Float32Builder::new(),
            scored_itc: Float32Builder::new(),
            scored_kept: BooleanBuilder::new(),
            scored_seed: UInt64Builder::new(),
            scored_round: UInt32Builder::new(),
            cleaned_src: SourceCols::default(),
            cleaned_text: StringBuilder::new(),
            cleaned_origin: StringBuilder::new(),
            cleaned_candidate: UInt32Builder::new(),
            cleaned_itm: Float32Builder::new(),
            cleaned_round: UInt32Builder::new(),
            cleaned_image: BinaryBuilder::new(),
            rejects_src: SourceCols::default(),
            rejects_caption: StringBuilder::new(),
            rejects_reason: StringBuilder::new(),
            rejects_message: StringBuilder::new(),
            rejects_round: UInt32Builder::new(),
            counts: ShardCounts::default(),
        }
    }

    /// Notes what was done to an input row's key and caption, and whether its key repeats one
    /// seen before in the shard.
    pub fn note_input(&mut self, key_derived: bool, caption_truncated: bool, duplicate: bool) {
        self.counts.keys_derived += u64::from(key_derived);
        self.counts.captions_truncated += u64::from(caption_truncated);
        self.counts.keys_duplicated += u64::from(duplicate);
    }

    /// Records an image's judged texts (`image` is its encoded bytes, for `with_images`).
    pub fn push_scored(&mut self, src: &SourceRef, judged: &[Judged], image: Option<&[u8]>) {
        self.counts.rows_in += 1;
        self.counts.rows_scored += 1;
        if !judged
            .iter()
            .any(|j| j.origin == capfilt_schemas::outputs::Origin::Web)
        {
            self.counts.web_missing += 1;
        }
        for j in judged {
            match j.origin {
                capfilt_schemas::outputs::Origin::Web => {
                    self.counts.web_texts += 1;
                    self.counts.web_kept += u64::from(j.kept);
                }
                capfilt_schemas::outputs::Origin::Synthetic => {
                    self.counts.synthetic_texts += 1;
                    self.counts.synthetic_kept += u64::from(j.kept);
                }
            }
            self.scored_src.push(src);
            self.scored_text.append_value(&j.text);
            self.scored_origin.append_value(j.origin.as_str());
            self.scored_candidate.append_option(j.candidate);
            self.scored_itm.append_value(j.score.itm_prob);
            self.scored_itc.append_value(j.score.itc_sim);
            self.scored_kept.append_value(j.kept);
            self.scored_seed.append_option(j.seed);
            self.scored_round.append_value(self.round);
            if j.kept {
                self.cleaned_src.push(src);
                self.cleaned_text.append_value(&j.text);
                self.cleaned_origin.append_value(j.origin.as_str());
                self.cleaned_candidate.append_option(j.candidate);
                self.cleaned_itm.append_value(j.score.itm_prob);
                self.cleaned_round.append_value(self.round);
                if self.with_images {
                    self.cleaned_image.append_value(image.unwrap_or_default());
                }
            }
        }
    }

    /// Records a rejected input row.
    pub fn push_reject(
        &mut self,
        src: &SourceRef,
        caption: Option<&str>,
        reason: RejectReason,
        message: &str,
    ) {
        self.counts.rows_in += 1;
        self.counts.rows_rejected += 1;
        *self.counts.rejects_by_reason.entry(reason).or_default() += 1;
        self.rejects_src.push(src);
        self.rejects_caption.append_option(caption);
        self.rejects_reason.append_value(reason.as_str());
        self.rejects_message.append_value(message);
        self.rejects_round.append_value(self.round);
    }

    /// Finishes the three tables.
    pub fn finish(mut self) -> Result<Tables, arrow_schema::ArrowError> {
        let mut scored = self.scored_src.finish();
        scored.extend([
            Arc::new(self.scored_text.finish()) as ArrayRef,
            Arc::new(self.scored_origin.finish()),
            Arc::new(self.scored_candidate.finish()),
            Arc::new(self.scored_itm.finish()),
            Arc::new(self.scored_itc.finish()),
            Arc::new(self.scored_kept.finish()),
            Arc::new(self.scored_seed.finish()),
            Arc::new(self.scored_round.finish()),
        ]);
        let mut cleaned = self.cleaned_src.finish();
        cleaned.extend([
            Arc::new(self.cleaned_text.finish()) as ArrayRef,
            Arc::new(self.cleaned_origin.finish()),
            Arc::new(self.cleaned_candidate.finish()),
            Arc::new(self.cleaned_itm.finish()),
            Arc::new(self.cleaned_round.finish()),
        ]);
        if self.with_images {
            cleaned.push(Arc::new(self.cleaned_image.finish()));
        }
        let mut rejects = self.rejects_src.finish();
        rejects.extend([
            Arc::new(self.rejects_caption.finish()) as ArrayRef,
            Arc::new(self.rejects_reason.finish()),
            Arc::new(self.rejects_message.finish()),
            Arc::new(self.rejects_round.finish()),
        ]);
        Ok(Tables {
            scored: RecordBatch::try_new(scored_schema(), scored)?,
            cleaned: RecordBatch::try_new(cleaned_schema(self.with_images), cleaned)?,
            rejects: RecordBatch::try_new(rejects_schema(), rejects)?,
            counts: self.counts,
        })
    }
}

/// Encodes `batch` as a Parquet file (zstd) with `provenance` JSON in its key-value metadata.
pub fn parquet_bytes(
    batch: &RecordBatch,
    provenance: &str,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            PROVENANCE_METADATA_KEY.to_string(),
            provenance.to_string(),
        )]))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buf)
}
