//! The report's PNG plots, drawn with `plotters` into an RGB buffer and encoded with `image`.
//! Text uses DejaVu Sans, compiled into the binary, so a coordinator image needs no fonts.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf32;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::ReportError;
use crate::data::CommitPoint;

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (720, 400);

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

fn font() -> Result<(), ReportError> {
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
                .map_err(|_| "the embedded DejaVu Sans font is not a valid font".to_string())
        })
        .clone()
        .map_err(ReportError::Plot)
}

fn plot_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// Draws with `draw` on a white canvas and returns the PNG bytes.
fn png(
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), ReportError>,
) -> Result<Vec<u8>, ReportError> {
    font()?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| ReportError::Plot("internal: plot buffer size".into()))?;
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(plot_err)?;
    Ok(out)
}

/// A legend entry: a short line in `color`.
fn line_legend<C: Color + Copy + 'static>(
    color: C,
) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A chart with f32 axes, as every plot but the rejects bars has.
type F32Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf32, RangedCoordf32>>;

/// Draws the chart's series labels at `position`.
fn legend<'a, 'b: 'a>(
    chart: &mut F32Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), ReportError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

/// Marks the filter's threshold with a vertical line from 0 to `top`, with its legend entry.
fn threshold_line<'a, 'b: 'a>(
    chart: &mut F32Chart<'a, 'b>,
    threshold: f32,
    top: f32,
) -> Result<(), ReportError> {
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(threshold, 0.0), (threshold, top)],
            THRESHOLD.stroke_width(2),
        )))
        .map_err(plot_err)?
        .label(format!("threshold {threshold}"))
        .legend(line_legend(THRESHOLD));
    Ok(())
}

const WEB: RGBColor = RGBColor(31, 119, 180);
const SYNTHETIC: RGBColor = RGBColor(255, 127, 14);
const THRESHOLD: RGBColor = RGBColor(200, 30, 30);

/// Counts of `values` in `bins` equal bins over [0, 1].
pub fn histogram(values: &[f32], bins: usize) -> Vec<u64> {
    let mut out = vec![0u64; bins.max(1)];
    for &v in values {
        if v.is_finite() {
            let i = ((v.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1);
            out[i] += 1;
        }
    }
    out
}

fn step_points(counts: &[u64], total: usize) -> Vec<(f32, f32)> {
    let n = counts.len() as f32;
    let mut pts = Vec::with_capacity(counts.len() * 2);
    for (i, &c) in counts.iter().enumerate() {
        let share = if total == 0 {
            0.0
        } else {
            c as f32 / total as f32
        };
        pts.push((i as f32 / n, share));
        pts.push(((i + 1) as f32 / n, share));
    }
    pts
}

/// ITM probability histograms of web and synthetic texts (each as a share of its own texts),
/// with the threshold marked.
pub fn itm_histogram(
    web: &[f32],
    synthetic: &[f32],
    threshold: f32,
    bins: usize,
) -> Result<Vec<u8>, ReportError> {
    let hw = histogram(web, bins);
    let hs = histogram(synthetic, bins);
    let pw = step_points(&hw, web.len());
    let ps = step_points(&hs, synthetic.len());
    let ymax = pw.iter().chain(&ps).map(|p| p.1).fold(0.01f32, f32::max) * 1.1;
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("ITM probability of \"match\"", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f32..1f32, 0f32..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("ITM probability")
            .y_desc("share of texts")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(pw, WEB.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("web texts ({})", web.len()))
            .legend(line_legend(WEB));
        chart
            .draw_series(LineSeries::new(ps, SYNTHETIC.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("synthetic texts ({})", synthetic.len()))
            .legend(line_legend(SYNTHETIC));
        threshold_line(&mut chart, threshold, ymax)?;
        legend(&mut chart, SeriesLabelPosition::UpperMiddle)
    })
}

/// A shard's keep rates (`None` where it judged no text of that origin).
#[derive(Debug, Clone)]
pub struct ShardRates {
    /// Web texts kept / judged.
    pub web: Option<f64>,
    /// Synthetic texts kept / judged.
    pub synthetic: Option<f64>,
}

/// A point of the precision/recall curve.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PrPoint {
    /// Threshold on the ITM probability.
    pub threshold: f32,
    /// Share of kept web texts that match (NaN where nothing is kept).
    pub precision: f64,
    /// Share of matching web texts that are kept.
    pub recall: f64,
}

/// Keep rates of web and synthetic texts per shard (shards in manifest order).
pub fn keep_rates(shards: &[ShardRates]) -> Result<Vec<u8>, ReportError> {
    let n = shards.len().max(1) as f32;
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Keep rate per shard", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f32..n - 0.5, 0f32..1.05f32)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("shard (manifest order)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("kept / judged")
            .draw()
            .map_err(plot_err)?;
        let series = |pick: fn(&ShardRates) -> Option<f64>| {
            shards
                .iter()
                .enumerate()
                .filter_map(move |(i, s)| pick(s).map(|v| (i as f32, v as f32)))
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(
                series(|s| s.web)
                    .into_iter()
                    .map(|p| Circle::new(p, 4, WEB.filled())),
            )
            .map_err(plot_err)?
            .label("web")
            .legend(|(x, y)| Circle::new((x + 10, y), 4, WEB.filled()));
        chart
            .draw_series(
                series(|s| s.synthetic)
                    .into_iter()
                    .map(|p| TriangleMarker::new(p, 5, SYNTHETIC.filled())),
            )
            .map_err(plot_err)?
            .label("synthetic")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, SYNTHETIC.filled()));
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

/// Rows committed over time, cumulative, one line per worker (from the commit records: a shard
/// counts when its record was written).
pub fn throughput(points: &[CommitPoint]) -> Result<Vec<u8>, ReportError> {
    let start = points
        .iter()
        .map(|p| p.unix_ms.saturating_sub((p.wall_s * 1000.0) as u64))
        .min()
        .unwrap_or(0);
    let mut by_worker: BTreeMap<&str, Vec<&CommitPoint>> = BTreeMap::new();
    for p in points {
        by_worker.entry(p.worker.as_str()).or_default().push(p);
    }
    let mut lines = Vec::new();
    let (mut xmax, mut ymax) = (1f32, 1f32);
    for (worker, mut pts) in by_worker {
        pts.sort_by_key(|p| p.unix_ms);
        let mut total = 0u64;
        let mut line = vec![(0f32, 0f32)];
        for p in pts {
            total += p.rows;
            let x = p.unix_ms.saturating_sub(start) as f32 / 1000.0;
            line.push((x, total as f32));
            xmax = xmax.max(x);
            ymax = ymax.max(total as f32);
        }
        let rate = line
            .last()
            .map_or(0.0, |l| if l.0 > 0.0 { l.1 / l.0 } else { 0.0 });
        lines.push((worker.to_string(), rate, line));
    }
    png(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Rows committed per worker", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f32..xmax * 1.05, 0f32..ymax * 1.1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first shard started")
            .y_desc("rows (cumulative)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(plot_err)?;
        for (i, (worker, rate, line)) in lines.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let s = chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(plot_err)?;
            // A legend for ten workers at most: beyond that the lines speak for the fleet.
            if i < 10 {
                s.label(format!("{worker} ({rate:.1} rows/s)"))
                    .legend(line_legend(color));
            }
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Rejected rows by reason.
pub fn rejects(by_reason: &[(String, u64)]) -> Result<Vec<u8>, ReportError> {
    let n = by_reason.len();
    let ymax = by_reason.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    png(|root| {
        let title = if n == 0 {
            "Rejected rows by reason: none".to_string()
        } else {
            "Rejected rows by reason".to_string()
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0..n.max(1) as i32 - 1).into_segmented(),
                0u64..ymax + ymax / 10 + 1,
            )
            .map_err(plot_err)?;
        let names: Vec<String> = by_reason.iter().map(|r| r.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("rows")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(THRESHOLD.mix(0.7).filled())
                    .margin(20)
                    .data(by_reason.iter().enumerate().map(|(i, r)| (i as i32, r.1))),
            )
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Precision and recall of the kept web texts against the ground truth, as the threshold moves.
/// Returns the PNG and the curve at each hundredth.
pub fn precision_recall(
    truth: &[(f32, bool)],
    threshold: f32,
) -> Result<(Vec<u8>, Vec<PrPoint>), ReportError> {
    let curve = pr_curve(truth);
    let prec: Vec<(f32, f32)> = curve
        .iter()
        .filter(|c| c.precision.is_finite())
        .map(|c| (c.threshold, c.precision as f32))
        .collect();
    let rec: Vec<(f32, f32)> = curve
        .iter()
        .map(|c| (c.threshold, c.recall as f32))
        .collect();
    let bytes = png(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Kept web texts against the ground truth",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f32..1f32, 0f32..1.05f32)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("threshold on the ITM probability")
            .y_desc("share")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(prec, WEB.stroke_width(2)))
            .map_err(plot_err)?
            .label("precision")
            .legend(line_legend(WEB));
        chart
            .draw_series(LineSeries::new(rec, SYNTHETIC.stroke_width(2)))
            .map_err(plot_err)?
            .label("recall")
            .legend(line_legend(SYNTHETIC));
        threshold_line(&mut chart, threshold, 1.05)?;
        legend(&mut chart, SeriesLabelPosition::LowerLeft)
    })?;
    Ok((bytes, curve))
}

/// The curve at thresholds 0.00, 0.01, …, 1.00.
pub fn pr_curve(truth: &[(f32, bool)]) -> Vec<PrPoint> {
    let positives = truth.iter().filter(|t| t.1).count() as f64;
    (0..=100)
        .map(|i| {
            let t = i as f32 / 100.0;
            let kept = truth.iter().filter(|x| x.0 >= t);
            let (mut k, mut tp) = (0f64, 0f64);
            for x in kept {
                k += 1.0;
                if x.1 {
                    tp += 1.0;
                }
            }
            let precision = if k == 0.0 { f64::NAN } else { tp / k };
            let recall = if positives == 0.0 {
                0.0
            } else {
                tp / positives
            };
            PrPoint {
                threshold: t,
                precision,
                recall,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_edges_in_the_right_bins() {
        assert_eq!(histogram(&[0.0, 0.49, 0.5, 1.0, f32::NAN], 2), vec![2, 2]);
    }

    #[test]
    fn pr_curve_counts_kept_and_true() {
        let truth = [(0.9, true), (0.8, false), (0.3, true), (0.1, false)];
        let c = pr_curve(&truth);
        assert_eq!(c[50].precision, 0.5); // kept 0.9 and 0.8: one true
        assert_eq!(c[50].recall, 0.5); // one of two positives
        assert_eq!(c[0].recall, 1.0);
        assert!(c[100].precision.is_nan());
    }

    #[test]
    fn plots_are_png_images_of_the_set_size() {
        let png = itm_histogram(&[0.1, 0.9, 0.95], &[0.6], 0.5, 20).expect("plot");
        let img = image::load_from_memory(&png).expect("png");
        assert_eq!((img.width(), img.height()), SIZE);
        // Something was drawn: not a blank canvas.
        let rgb = img.to_rgb8();
        assert!(rgb.pixels().any(|p| p.0 != [255, 255, 255]));
        for n in 1..=3 {
            let by: Vec<(String, u64)> = (0..n).map(|i| (format!("r{i}"), 3 + i as u64)).collect();
            let png = rejects(&by).expect("rejects plot");
            assert!(image::load_from_memory(&png).is_ok(), "{n} reasons");
        }
        let empty = rejects(&[]).expect("empty rejects plot");
        assert!(image::load_from_memory(&empty).is_ok());
    }
}
