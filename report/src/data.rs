//! What the report reads: the round's manifest, the commit records it names, their scored
//! files, and (for the gallery and the ground truth) the input rows the scored rows point at.
//! Never a raw listing: a file no commit record names is not part of the round.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use arrow_array::{
    Array, BinaryArray, BooleanArray, Float32Array, LargeBinaryArray, RecordBatch, StringArray,
    UInt64Array,
};
use capfilt_schemas::outputs::col;
use capfilt_schemas::records::{CommitRecord, RoundManifest};
use capfilt_schemas::store::{self, Location};
use futures::TryStreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use sha2::{Digest, Sha256};

use crate::ReportError;
use crate::reader::StoreReader;

/// One judged text of a gallery image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JudgedText {
    /// The text.
    pub text: String,
    /// `web` or `synthetic`.
    pub origin: String,
    /// ITM probability of "match".
    pub itm_prob: f32,
    /// Whether the filter kept it.
    pub kept: bool,
}

/// An image of the gallery with every text judged for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GalleryItem {
    /// Row key.
    pub key: String,
    /// Input file.
    pub source_file: String,
    /// Row index in the input file.
    pub source_row: u64,
    /// Web text first, then synthetic captions.
    pub texts: Vec<JudgedText>,
    /// Thumbnail file under the report folder, when the image could be read.
    pub thumbnail: Option<String>,
    /// Why there is no thumbnail.
    pub thumbnail_error: Option<String>,
}

/// A worker's commit: for throughput over time.
#[derive(Debug, Clone)]
pub struct CommitPoint {
    /// Worker.
    pub worker: String,
    /// When the commit record was written.
    pub unix_ms: u64,
    /// Input rows of the shard.
    pub rows: u64,
    /// Seconds the shard took on the worker.
    pub wall_s: f64,
}

/// Everything the plots and the page are drawn from.
#[derive(Debug)]
pub struct RoundData {
    /// The manifest.
    pub manifest: RoundManifest,
    /// Commit records, by shard id.
    pub commits: Vec<CommitRecord>,
    /// ITM probabilities of web texts.
    pub web_probs: Vec<f32>,
    /// ITM probabilities of synthetic texts.
    pub synthetic_probs: Vec<f32>,
    /// (ITM probability, ground truth) of every web text, when the input has a truth column.
    pub web_truth: Option<Vec<(f32, bool)>>,
    /// Images drawn at random (fixed seed).
    pub sample: Vec<GalleryItem>,
    /// Web texts dropped with the lowest probability.
    pub rejections: Vec<GalleryItem>,
}

/// How the data is drawn.
#[derive(Debug, Clone)]
pub struct Draw {
    /// Images drawn at random.
    pub sample: usize,
    /// Most confident rejections shown.
    pub rejections: usize,
    /// Seed of the random draw.
    pub seed: u64,
    /// Boolean input column holding whether the web text matches its image (e.g. `gt_match`).
    pub truth_column: String,
}

/// An image's place in the draw: a hash of (seed, key), smallest first.
fn draw_rank(seed: u64, key: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(key.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

type ImageId = (String, u64);

/// Reads the round at `round` (a `round-NNNN` folder).
pub async fn read(
    round: &Location,
    options: &[(String, String)],
    draw: &Draw,
) -> Result<RoundData, ReportError> {
    let manifest_loc = round.child("_manifest.json");
    let bytes = manifest_loc
        .get_bytes()
        .await
        .map_err(|e| ReportError::NoManifest {
            round: round.display.clone(),
            message: e.to_string(),
        })?;
    let manifest: RoundManifest =
        serde_json::from_slice(&bytes).map_err(|e| ReportError::Corrupt {
            location: manifest_loc.display.clone(),
            message: e.to_string(),
        })?;
    let mut commits = Vec::new();
    for outcome in &manifest.shards {
        let Some(path) = &outcome.commit else {
            continue;
        };
        let loc = round.child(path);
        let bytes = loc.get_bytes().await?;
        let record: CommitRecord =
            serde_json::from_slice(&bytes).map_err(|e| ReportError::Corrupt {
                location: loc.display.clone(),
                message: e.to_string(),
            })?;
        commits.push(record);
    }

    let mut synthetic_probs = Vec::new();
    // Web texts by input file: (row, prob), for the ground truth join.
    let mut web_by_file: BTreeMap<String, Vec<(u64, f32)>> = BTreeMap::new();
    // The drawn images: a max-heap on rank keeps the `sample` smallest.
    let mut drawn: BinaryHeap<([u8; 16], ImageId)> = BinaryHeap::new();
    let mut texts: HashMap<ImageId, (String, Vec<JudgedText>)> = HashMap::new();
    // The most confident rejections: a max-heap on probability keeps the lowest.
    let mut rejected: BinaryHeap<(OrdF32, ImageId)> = BinaryHeap::new();
    for c in &commits {
        for batch in scored_batches(round, c).await? {
            let s = Scored::of(&batch);
            for i in 0..batch.num_rows() {
                let prob = s.prob.value(i);
                let web = s.origin.value(i) == "web";
                let id: ImageId = (s.file.value(i).to_string(), s.row.value(i));
                if web {
                    web_by_file
                        .entry(id.0.clone())
                        .or_default()
                        .push((id.1, prob));
                    if !s.kept.value(i) && draw.rejections > 0 {
                        rejected.push((OrdF32(prob), id.clone()));
                        if rejected.len() > draw.rejections {
                            rejected.pop();
                        }
                    }
                } else {
                    synthetic_probs.push(prob);
                }
                let rank = draw_rank(draw.seed, s.key.value(i));
                let in_draw = texts.contains_key(&id);
                if !in_draw && draw.sample > 0 {
                    let admit = drawn.len() < draw.sample
                        || drawn.peek().is_some_and(|(top, _)| rank < *top);
                    if admit {
                        drawn.push((rank, id.clone()));
                        texts.insert(id.clone(), (s.key.value(i).to_string(), Vec::new()));
                        if drawn.len() > draw.sample
                            && let Some((_, out)) = drawn.pop()
                        {
                            texts.remove(&out);
                        }
                    }
                }
                if let Some((_, list)) = texts.get_mut(&id) {
                    list.push(JudgedText {
                        text: s.text.value(i).to_string(),
                        origin: s.origin.value(i).to_string(),
                        itm_prob: prob,
                        kept: s.kept.value(i),
                    });
                }
            }
        }
    }
    // The rejections' own texts (they may lie outside the random draw): read again only the
    // files that hold them.
    let rejected: Vec<(f32, ImageId)> = {
        let mut v: Vec<(f32, ImageId)> = rejected.into_iter().map(|(p, id)| (p.0, id)).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let mut rejection_texts: HashMap<ImageId, (String, Vec<JudgedText>)> = rejected
        .iter()
        .map(|(_, id)| (id.clone(), (String::new(), Vec::new())))
        .collect();
    if !rejection_texts.is_empty() {
        for c in &commits {
            if !rejection_texts.keys().any(|(f, _)| *f == c.shard.file) {
                continue;
            }
            for batch in scored_batches(round, c).await? {
                let s = Scored::of(&batch);
                for i in 0..batch.num_rows() {
                    let id: ImageId = (s.file.value(i).to_string(), s.row.value(i));
                    if let Some((key, list)) = rejection_texts.get_mut(&id) {
                        *key = s.key.value(i).to_string();
                        list.push(JudgedText {
                            text: s.text.value(i).to_string(),
                            origin: s.origin.value(i).to_string(),
                            itm_prob: s.prob.value(i),
                            kept: s.kept.value(i),
                        });
                    }
                }
            }
        }
    }

    let mut sample: Vec<([u8; 16], GalleryItem)> = drawn
        .into_iter()
        .filter_map(|(rank, id)| {
            let (key, list) = texts.remove(&id)?;
            Some((rank, item(key, id, list)))
        })
        .collect();
    sample.sort_by_key(|a| a.0);
    let sample: Vec<GalleryItem> = sample.into_iter().map(|(_, g)| g).collect();
    let rejections: Vec<GalleryItem> = rejected
        .into_iter()
        .filter_map(|(_, id)| {
            let (key, list) = rejection_texts.remove(&id)?;
            Some(item(key, id, list))
        })
        .collect();

    let web_truth = read_truth(&web_by_file, options, &draw.truth_column).await?;
    let web_probs = web_by_file.values().flatten().map(|r| r.1).collect();
    Ok(RoundData {
        manifest,
        commits,
        web_probs,
        synthetic_probs,
        web_truth,
        sample,
        rejections,
    })
}

fn item(key: String, id: ImageId, texts: Vec<JudgedText>) -> GalleryItem {
    GalleryItem {
        key,
        source_file: id.0,
        source_row: id.1,
        texts,
        thumbnail: None,
        thumbnail_error: None,
    }
}

/// An f32 ordered by `total_cmp`, for heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The scored columns the report reads.
struct Scored<'a> {
    key: &'a StringArray,
    file: &'a StringArray,
    row: &'a UInt64Array,
    text: &'a StringArray,
    origin: &'a StringArray,
    prob: &'a Float32Array,
    kept: &'a BooleanArray,
}

/// The batches of a commit's scored file, each checked to hold the columns [`Scored`] reads.
async fn scored_batches(
    round: &Location,
    commit: &CommitRecord,
) -> Result<Vec<RecordBatch>, ReportError> {
    let loc = round.child(&commit.files.scored.path);
    let bytes = bytes::Bytes::from(loc.get_bytes().await?);
    let corrupt = |message: String| ReportError::Corrupt {
        location: loc.display.clone(),
        message,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        Scored::try_of(&batch).map_err(corrupt)?;
        out.push(batch);
    }
    Ok(out)
}

impl<'a> Scored<'a> {
    /// The columns of a batch [`scored_batches`] checked.
    fn of(b: &'a RecordBatch) -> Self {
        match Self::try_of(b) {
            Ok(s) => s,
            Err(e) => unreachable!("scored_batches checked the columns: {e}"),
        }
    }

    fn try_of(b: &'a RecordBatch) -> Result<Self, String> {
        fn column<'b, T: 'static>(b: &'b RecordBatch, name: &str) -> Result<&'b T, String> {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .ok_or_else(|| format!("scored file has no column '{name}' of the expected type"))
        }
        Ok(Self {
            key: column(b, col::KEY)?,
            file: column(b, col::SOURCE_FILE)?,
            row: column(b, col::SOURCE_ROW)?,
            text: column(b, col::TEXT)?,
            origin: column(b, col::ORIGIN)?,
            prob: column(b, col::ITM_PROB)?,
            kept: column(b, col::KEPT)?,
        })
    }
}

async fn open_input(
    file: &str,
    options: &[(String, String)],
) -> Result<ParquetRecordBatchStreamBuilder<StoreReader>, ReportError> {
    let loc = store::resolve(file, options)?;
    let display = loc.display.clone();
    let reader = StoreReader::new(loc);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| ReportError::Corrupt {
            location: display,
            message: e.to_string(),
        })
}

/// A row selection of the sorted, distinct `rows` of a file of `total` rows.
fn selection(rows: &[u64], total: u64) -> RowSelection {
    let mut selectors = Vec::new();
    let mut at = 0u64;
    for &r in rows {
        if r < at || r >= total {
            continue;
        }
        if r > at {
            selectors.push(RowSelector::skip((r - at) as usize));
        }
        selectors.push(RowSelector::select(1));
        at = r + 1;
    }
    RowSelection::from(selectors)
}

/// Joins the web texts with the input's boolean truth column, when every input file has it.
async fn read_truth(
    web_by_file: &BTreeMap<String, Vec<(u64, f32)>>,
    options: &[(String, String)],
    truth_column: &str,
) -> Result<Option<Vec<(f32, bool)>>, ReportError> {
    let mut out = Vec::new();
    for (file, rows) in web_by_file {
        let builder = open_input(file, options).await?;
        let Some(index) = builder
            .schema()
            .fields()
            .iter()
            .position(|f| f.name() == truth_column)
        else {
            return Ok(None);
        };
        let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mut rows = rows.clone();
        rows.sort_by_key(|r| r.0);
        rows.dedup_by_key(|r| r.0);
        let wanted: Vec<u64> = rows.iter().map(|r| r.0).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        let stream = builder
            .with_projection(mask)
            .with_row_selection(selection(&wanted, total))
            .build()
            .map_err(|e| ReportError::Corrupt {
                location: file.clone(),
                message: e.to_string(),
            })?;
        let batches: Vec<RecordBatch> =
            stream
                .try_collect()
                .await
                .map_err(|e| ReportError::Corrupt {
                    location: file.clone(),
                    message: e.to_string(),
                })?;
        let mut values = Vec::with_capacity(rows.len());
        for b in &batches {
            let Some(col) = b.column(0).as_any().downcast_ref::<BooleanArray>() else {
                return Ok(None);
            };
            for i in 0..col.len() {
                values.push(col.is_valid(i) && col.value(i));
            }
        }
        if values.len() != rows.len() {
            return Err(ReportError::Corrupt {
                location: file.clone(),
                message: format!(
                    "{} scored web rows point into it, {} rows were read",
                    rows.len(),
                    values.len()
                ),
            });
        }
        out.extend(rows.iter().zip(values).map(|((_, p), t)| (*p, t)));
    }
    Ok(Some(out))
}

/// Reads the encoded images of `items` from the input's `image_column`, in row order per file.
pub async fn read_images(
    items: &[&GalleryItem],
    options: &[(String, String)],
    image_column: &str,
) -> Vec<Result<Vec<u8>, String>> {
    let mut out: Vec<Result<Vec<u8>, String>> = vec![Err("not read".into()); items.len()];
    let mut by_file: BTreeMap<&str, Vec<(u64, usize)>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        by_file
            .entry(it.source_file.as_str())
            .or_default()
            .push((it.source_row, i));
    }
    for (file, mut rows) in by_file {
        rows.sort();
        match read_file_images(file, &rows, options, image_column).await {
            Ok(images) => {
                for (image, &(row, i)) in images.into_iter().zip(&rows) {
                    out[i] = image.ok_or_else(|| format!("{file} row {row} has no image bytes"));
                }
            }
            Err(e) => {
                for &(_, i) in &rows {
                    out[i] = Err(e.clone());
                }
            }
        }
    }
    out
}

async fn read_file_images(
    file: &str,
    rows: &[(u64, usize)],
    options: &[(String, String)],
    image_column: &str,
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let builder = open_input(file, options).await.map_err(|e| e.to_string())?;
    let index = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == image_column)
        .ok_or_else(|| format!("{file} has no image column '{image_column}'"))?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let mut wanted: Vec<u64> = rows.iter().map(|r| r.0).collect();
    wanted.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let stream = builder
        .with_projection(mask)
        .with_row_selection(selection(&wanted, total))
        .build()
        .map_err(|e| e.to_string())?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
    let mut by_row = Vec::new();
    for b in &batches {
        let c = b.column(0);
        if let Some(a) = c.as_any().downcast_ref::<BinaryArray>() {
            for i in 0..a.len() {
                by_row.push(a.is_valid(i).then(|| a.value(i).to_vec()));
            }
        } else if let Some(a) = c.as_any().downcast_ref::<LargeBinaryArray>() {
            for i in 0..a.len() {
                by_row.push(a.is_valid(i).then(|| a.value(i).to_vec()));
            }
        } else {
            return Err(format!("{file}: column '{image_column}' is not binary"));
        }
    }
    let map: HashMap<u64, Option<Vec<u8>>> = wanted.iter().copied().zip(by_row).collect();
    Ok(rows
        .iter()
        .map(|(r, _)| map.get(r).cloned().flatten())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_skips_between_wanted_rows() {
        let s = selection(&[2, 3, 7], 10);
        let v: Vec<RowSelector> = s.into();
        assert_eq!(
            v,
            vec![
                RowSelector::skip(2),
                RowSelector::select(2),
                RowSelector::skip(3),
                RowSelector::select(1)
            ]
        );
    }

    #[test]
    fn the_draw_does_not_depend_on_order() {
        assert_eq!(draw_rank(7, "a"), draw_rank(7, "a"));
        assert_ne!(draw_rank(7, "a"), draw_rank(8, "a"));
    }
}
