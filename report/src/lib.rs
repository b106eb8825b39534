//! The round report: what a CapFilt round kept and threw away, shown with plots and pictures.
//!
//! [`write_report`] reads only a round's committed outputs (`_manifest.json`, the commit records
//! it names, their scored files, and the input rows those point at) and writes, under
//! `round-NNNN/report/` or a folder of the caller's choice:
//!
//! ```text
//! report/
//!   index.html            one page: totals, plots, the gallery
//!   report.json           the figures behind it (totals, histograms, precision/recall)
//!   plots/itm_histogram.png   ITM probabilities of web vs synthetic texts, threshold marked
//!   plots/keep_rates.png      keep rates per shard
//!   plots/throughput.png      rows committed per worker over time
//!   plots/rejects.png         rejected rows by reason
//!   plots/precision_recall.png  (when the input has a truth column, e.g. gt_match)
//!   gallery/NNN.jpg       thumbnails of the drawn images and of the most confident rejections
//! ```
//!
//! `index.html` is written last: a report folder with it is complete.

pub mod data;
pub mod html;
pub mod plots;
pub mod reader;

use std::io::Cursor;

use capfilt_schemas::store::{self, Location, StoreError};
use serde::Serialize;

pub use data::{Draw, GalleryItem, JudgedText, RoundData};

/// Errors of the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The round has no manifest: it is not finished (the report reads committed outputs only).
    #[error(
        "{round} has no readable _manifest.json ({message}): a report is made of a finished round"
    )]
    NoManifest {
        /// The round folder.
        round: String,
        /// The store's error.
        message: String,
    },
    /// A committed file could not be parsed.
    #[error("{location}: {message}")]
    Corrupt {
        /// The file.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plot could not be drawn.
    #[error("drawing a plot: {0}")]
    Plot(String),
}

/// How the report is drawn.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Where to write it (default: `{round}/report`).
    pub out: Option<String>,
    /// The gallery's draw.
    pub draw: Draw,
    /// Histogram bins over [0, 1].
    pub bins: usize,
    /// Longest side of a gallery thumbnail, in pixels.
    pub thumbnail_px: u32,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            out: None,
            draw: Draw {
                sample: 48,
                rejections: 12,
                seed: 0,
                truth_column: "gt_match".into(),
            },
            bins: 50,
            thumbnail_px: 160,
        }
    }
}

/// Figures of the kept web texts against the ground truth at the round's threshold.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TruthFigures {
    /// Share of web texts that match their image (raw web data).
    pub raw_precision: f64,
    /// Share of kept web texts that match.
    pub kept_precision: f64,
    /// Share of matching web texts that were kept.
    pub kept_recall: f64,
    /// Web texts joined with the truth.
    pub web_texts: u64,
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    /// The report folder.
    pub location: String,
    /// Round number.
    pub round: u32,
    /// Files written (relative to the folder).
    pub files: Vec<String>,
    /// Gallery images drawn at random.
    pub sample: usize,
    /// Most confident rejections shown.
    pub rejections: usize,
    /// Gallery images whose thumbnail could not be made (with the reason on the page).
    pub thumbnails_missing: usize,
    /// Ground-truth figures, when the input has a truth column.
    pub truth: Option<TruthFigures>,
}

/// The figures behind the page (`report.json`).
#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    summary: &'a ReportSummary,
    threshold: f32,
    bins: usize,
    web_histogram: Vec<u64>,
    synthetic_histogram: Vec<u64>,
    precision_recall: Option<Vec<plots::PrPoint>>,
    sample: &'a [GalleryItem],
    rejections: &'a [GalleryItem],
}

async fn put(
    out: &Location,
    name: &str,
    bytes: Vec<u8>,
    files: &mut Vec<String>,
) -> Result<(), ReportError> {
    out.child(name).put_bytes(bytes).await?;
    files.push(name.to_string());
    Ok(())
}

/// Decodes `bytes`, fits it in `px` x `px` and encodes a JPEG.
pub fn thumbnail(bytes: &[u8], px: u32) -> Result<Vec<u8>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let rgb = img.thumbnail(px, px).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Writes the report of the round at `round_url` (a `round-NNNN` folder).
pub async fn write_report(
    round_url: &str,
    store_options: &[(String, String)],
    options: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    let round = store::resolve(round_url, store_options)?;
    let out = match &options.out {
        Some(o) => store::resolve(o, store_options)?,
        None => round.child("report"),
    };
    let mut data = data::read(&round, store_options, &options.draw).await?;
    let m = &data.manifest;
    let threshold = m.params.threshold;
    let mut files = Vec::new();

    // The gallery's thumbnails.
    let image_column = m.mapping.image.clone();
    let items: Vec<&GalleryItem> = data.sample.iter().chain(&data.rejections).collect();
    let images = match &image_column {
        Some(col) => data::read_images(&items, store_options, col).await,
        None => vec![Err("the input has no image column".to_string()); items.len()],
    };
    let mut thumbs = Vec::with_capacity(images.len());
    for (i, image) in images.into_iter().enumerate() {
        let made = image.and_then(|b| thumbnail(&b, options.thumbnail_px));
        match made {
            Ok(jpeg) => {
                let name = format!("gallery/{i:03}.jpg");
                put(&out, &name, jpeg, &mut files).await?;
                thumbs.push(Ok(name));
            }
            Err(e) => thumbs.push(Err(e)),
        }
    }
    let mut missing = 0;
    for (item, thumb) in data
        .sample
        .iter_mut()
        .chain(data.rejections.iter_mut())
        .zip(thumbs)
    {
        match thumb {
            Ok(name) => item.thumbnail = Some(name),
            Err(e) => {
                missing += 1;
                item.thumbnail_error = Some(e);
            }
        }
    }

    // The plots.
    let m = &data.manifest;
    put(
        &out,
        "plots/itm_histogram.png",
        plots::itm_histogram(
            &data.web_probs,
            &data.synthetic_probs,
            threshold,
            options.bins,
        )?,
        &mut files,
    )
    .await?;
    let rates: Vec<plots::ShardRates> = m
        .shards
        .iter()
        .map(|s| {
            let rate = |k: u64, n: u64| (n > 0).then(|| k as f64 / n as f64);
            let c = s.counts.clone().unwrap_or_default();
            plots::ShardRates {
                web: rate(c.web_kept, c.web_texts),
                synthetic: rate(c.synthetic_kept, c.synthetic_texts),
            }
        })
        .collect();
    put(
        &out,
        "plots/keep_rates.png",
        plots::keep_rates(&rates)?,
        &mut files,
    )
    .await?;
    let points: Vec<data::CommitPoint> = data
        .commits
        .iter()
        .map(|c| data::CommitPoint {
            worker: c.worker_id.clone(),
            unix_ms: c.committed_unix_ms,
            rows: c.counts.rows_in,
            wall_s: c.stats.wall_ms as f64 / 1000.0,
        })
        .collect();
    put(
        &out,
        "plots/throughput.png",
        plots::throughput(&points)?,
        &mut files,
    )
    .await?;
    let by_reason: Vec<(String, u64)> = m
        .totals
        .rejects_by_reason
        .iter()
        .map(|(r, n)| (r.as_str().to_string(), *n))
        .collect();
    put(
        &out,
        "plots/rejects.png",
        plots::rejects(&by_reason)?,
        &mut files,
    )
    .await?;
    let mut curve = None;
    let mut truth = None;
    if let Some(t) = &data.web_truth {
        let (png, c) = plots::precision_recall(t, threshold)?;
        put(&out, "plots/precision_recall.png", png, &mut files).await?;
        curve = Some(c);
        truth = Some(truth_figures(t, threshold));
    }

    let summary = ReportSummary {
        location: out.display.clone(),
        round: m.round,
        files: Vec::new(),
        sample: data.sample.len(),
        rejections: data.rejections.len(),
        thumbnails_missing: missing,
        truth,
    };
    let page = html::render(&data, &summary, &by_reason);
    let json = ReportJson {
        summary: &summary,
        threshold,
        bins: options.bins,
        web_histogram: plots::histogram(&data.web_probs, options.bins),
        synthetic_histogram: plots::histogram(&data.synthetic_probs, options.bins),
        precision_recall: curve,
        sample: &data.sample,
        rejections: &data.rejections,
    };
    let json = serde_json::to_vec_pretty(&json).map_err(|e| ReportError::Plot(e.to_string()))?;
    put(&out, "report.json", json, &mut files).await?;
    put(&out, "index.html", page.into_bytes(), &mut files).await?;
    tracing::info!(round = m.round, location = %out.display, files = files.len(), thumbnails_missing = missing, "round report written");
    Ok(ReportSummary { files, ..summary })
}

/// Precision and recall of the kept web texts at `threshold`.
pub fn truth_figures(truth: &[(f32, bool)], threshold: f32) -> TruthFigures {
    let n = truth.len() as f64;
    let positives = truth.iter().filter(|t| t.1).count() as f64;
    let kept = truth.iter().filter(|t| t.0 >= threshold).count() as f64;
    let tp = truth.iter().filter(|t| t.0 >= threshold && t.1).count() as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    TruthFigures {
        raw_precision: ratio(positives, n),
        kept_precision: ratio(tp, kept),
        kept_recall: ratio(tp, positives),
        web_texts: truth.len() as u64,
    }
}

/// Whether `{round}/report/index.html` exists (a complete report).
pub async fn exists(
    round_url: &str,
    store_options: &[(String, String)],
) -> Result<bool, ReportError> {
    use object_store::ObjectStoreExt as _;
    let loc = store::resolve(round_url, store_options)?.child("report/index.html");
    match loc.store.head(&loc.path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(source) => Err(ReportError::Store(StoreError::Io {
            operation: "checking",
            location: loc.display.clone(),
            source,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_figures_at_the_threshold() {
        let t = [(0.9, true), (0.6, false), (0.2, true), (0.1, false)];
        let f = truth_figures(&t, 0.5);
        assert_eq!(f.raw_precision, 0.5);
        assert_eq!(f.kept_precision, 0.5);
        assert_eq!(f.kept_recall, 0.5);
    }

    #[test]
    fn thumbnails_fit_the_box_and_bad_bytes_say_why() {
        let img = image::RgbImage::from_pixel(400, 200, image::Rgb([10, 200, 30]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("encode");
        let jpeg = thumbnail(&png, 160).expect("thumbnail");
        let back = image::load_from_memory(&jpeg).expect("jpeg");
        assert_eq!((back.width(), back.height()), (160, 80));
        assert!(thumbnail(b"not an image", 160).is_err());
    }
}
