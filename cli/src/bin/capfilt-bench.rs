//! `capfilt-bench`: throughput of the CapFilt step in capfilt (Rust + ONNX Runtime) next to the
//! same work done by HF transformers in PyTorch (`scripts/bench_hf.py`), run on the same images
//! with the same thread count, in the same run. A program that prints figures, not a test.
//!
//! ```text
//! cargo run --release -p capfilt --bin capfilt-bench -- \
//!     --captioner models/shapes-seed/captioner --filter models/shapes-seed/filter \
//!     --data BENCH/web/part-00000.parquet --images 64 --batch-sizes 1,8,32 --threads 2
//! ```
//!
//! Per batch size: images/s of decode + preprocess + one nucleus-sampled caption + ITM/ITC on the
//! web text and the synthetic caption. Decoding runs on the calling thread in both (the worker's
//! decode pool overlapping inference is left out, so the comparison is of the same work).
//! Also: decode + bicubic resize + normalise images/s on one core, against Pillow + numpy, then
//! the decode alone and the resize + normalise alone (on images decoded beforehand), and the
//! whole with DCT-domain downscaling of large JPEGs (`--jpeg-draft`, against Pillow's `draft`),
//! with how far each draft path's model input is from the full decode's. Each of those is the
//! best of `--windows` one-second windows on both sides (see `preprocessing_rates`);
//! `--preprocess-only` prints them alone, without loading a model.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use capfilt_schemas::bundle::Precision;
use capfilt_schemas::bundle::Preprocessing;
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_worker::engine::StepTimings;
use capfilt_worker::infer::{prepare, read_rows};
use capfilt_worker::input::InputRow;
use capfilt_worker::preprocess::ImageLimits;
use capfilt_worker::{
    Bundle, Device, Engine, GenerationParams, Optimization, OrtConfig, OrtRuntime, PrecisionChoice,
    SessionOptions, StepParams,
};
use clap::Parser;

/// Throughput of capfilt's CapFilt step against HF transformers in PyTorch.
#[derive(Debug, Parser)]
#[command(name = "capfilt-bench")]
struct Args {
    /// Captioner bundle folder (its checkpoint/ is what the PyTorch baseline loads).
    #[arg(long)]
    captioner: PathBuf,
    /// Filter bundle folder.
    #[arg(long)]
    filter: PathBuf,
    /// img2dataset-style Parquet file to take images and web captions from.
    #[arg(long)]
    data: PathBuf,
    /// Images per measurement.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Threads for both runtimes (ONNX Runtime intra-op, torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Device: cpu or cuda:N (capfilt needs the cuda feature; PyTorch runs on cuda too).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Graph precision: auto (fp16 on CUDA when the bundles have it), fp32, fp16 or int8 (CPU).
    #[arg(long, default_value = "auto")]
    precision: PrecisionChoice,
    /// Precisions to run the PyTorch baseline in, comma-separated, each beside capfilt's: fp32,
    /// fp16 (weights and activations; CUDA) or int8 (PyTorch's dynamic quantisation of every
    /// Linear; CPU) [default: capfilt's precision].
    #[arg(long, value_delimiter = ',')]
    baseline: Vec<Precision>,
    /// Run the reference decoding path that copies the decoder state through host memory.
    #[arg(long)]
    host_decoding: bool,
    /// Python with torch and transformers for the baseline.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Skip the PyTorch baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Each preprocessing figure (both runtimes) is the best of this many one-second windows,
    /// the measurements taking turns.
    #[arg(long, default_value_t = 5)]
    windows: usize,
    /// Measure the preprocessing lines only: no model is loaded or run, on either side.
    #[arg(long)]
    preprocess_only: bool,
}

struct Measured {
    batch: usize,
    capfilt: f64,
    /// PyTorch's images/s, one per baseline precision.
    torch: Vec<Option<f64>>,
    caption_ms: u128,
    filter_ms: u128,
    decode_ms: u128,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rows = read_rows(&args.data, &ColumnMapping::img2dataset(), args.images)
        .with_context(|| format!("reading {}", args.data.display()))?;
    if rows.is_empty() {
        bail!("{} has no rows", args.data.display());
    }
    let cap = Bundle::open(&args.captioner)?;
    let fil = Bundle::open(&args.filter)?;
    let limits = ImageLimits::default();
    let cap_pre = cap.manifest.preprocessing.clone();
    let fil_pre =
        (fil.manifest.preprocessing != cap_pre).then(|| fil.manifest.preprocessing.clone());

    let rates = preprocessing_rates(&rows, &cap_pre, &limits, args.windows);
    let draft_limits = ImageLimits {
        jpeg_draft: true,
        ..limits
    };
    let (mut draft_max, mut draft_sum, mut draft_n) = (0f32, 0f64, 0usize);
    for r in &rows {
        if let (Ok(full), Ok(draft)) = (
            prepare(r, &cap_pre, None, &limits),
            prepare(r, &cap_pre, None, &draft_limits),
        ) {
            for (a, b) in full.captioner_pixels.iter().zip(&draft.captioner_pixels) {
                draft_max = draft_max.max((a - b).abs());
                draft_sum += f64::from((a - b).abs());
                draft_n += 1;
            }
        }
    }
    let draft_mean = draft_sum / draft_n.max(1) as f64;

    let (precision, mut measured) = if args.preprocess_only {
        (None, Vec::new())
    } else {
        let (precision, measured) = measure_steps(
            &args,
            &rows,
            &cap,
            &fil,
            &cap_pre,
            fil_pre.as_ref(),
            &limits,
        )?;
        (Some(precision), measured)
    };

    let mut torch_decode = None;
    let mut torch_draft: Option<(f64, f64, f64)> = None;
    let mut torch_decode_only = None;
    let mut torch_resize_only = None;
    let mut torch_version = String::new();
    let mut heap_kept = false;
    let mut baselines = if args.no_baseline {
        Vec::new()
    } else if args.baseline.is_empty() {
        vec![precision.unwrap_or(Precision::Fp32)]
    } else {
        args.baseline.clone()
    };
    if args.preprocess_only {
        baselines.truncate(1); // preprocessing is the same in every precision
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_hf.py");
    let sizes: Vec<String> = args
        .batch_sizes
        .iter()
        .map(|b| b.max(&1).to_string())
        .collect();
    let device = match args.device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(n) => format!("cuda:{n}"),
    };
    for (i, dtype) in baselines.iter().enumerate() {
        let out = Command::new(&args.python)
            .arg(&script)
            .args(["--captioner", &args.captioner.display().to_string()])
            .args(["--filter", &args.filter.display().to_string()])
            .args(["--data", &args.data.display().to_string()])
            .args(["--images", &rows.len().to_string()])
            .args(["--batch-sizes", &sizes.join(",")])
            .args(["--threads", &args.threads.to_string()])
            .args(["--device", &device])
            .args(["--dtype", &dtype.to_string()])
            .args(["--windows", &args.windows.to_string()])
            .args(args.preprocess_only.then_some("--preprocess-only"))
            .env("PYTHONWARNINGS", "ignore")
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {} {}", args.python.display(), script.display()))?;
        if !out.status.success() {
            bail!("the PyTorch baseline ({dtype}) failed ({})", out.status);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("the PyTorch baseline printed no JSON")?;
        for m in &mut measured {
            m.torch.push(
                json["step"]
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .find(|s| s["batch_size"].as_u64() == Some(m.batch as u64))
                    })
                    .and_then(|s| s["images_per_second"].as_f64()),
            );
        }
        if i > 0 {
            continue; // preprocessing is the same in every precision: the first run's figures
        }
        torch_decode = json["decode_images_per_second_per_core"].as_f64();
        torch_decode_only = json["decode_only_images_per_second_per_core"].as_f64();
        torch_resize_only = json["resize_only_images_per_second_per_core"].as_f64();
        torch_draft = match (
            json["draft_images_per_second_per_core"].as_f64(),
            json["draft_max_abs_diff"].as_f64(),
            json["draft_mean_abs_diff"].as_f64(),
        ) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        torch_version = json["torch"].as_str().unwrap_or("?").to_string();
        heap_kept = json["heap_kept"].as_bool().unwrap_or(false);
    }

    let size = cap_pre.image_size;
    match precision {
        Some(precision) => print_steps(&args, &cap, precision, &baselines, rows.len(), &measured),
        None => println!(
            "Preprocessing: {} images of {}, captioner {}'s input {size}x{size} px",
            rows.len(),
            args.data.display(),
            cap.manifest.name,
        ),
    }
    let PreprocessingRates {
        decode: decode_ips,
        decode_only: decode_only_ips,
        resize_only: resize_only_ips,
        draft: draft_ips,
    } = rates;
    print!(
        "decode + resize + normalise, one core, best of {} one-second windows: capfilt {decode_ips:.0} img/s",
        args.windows.max(1)
    );
    match torch_decode {
        Some(p) => println!(", Pillow + numpy {p:.0} img/s ({:.2}x)", decode_ips / p),
        None => println!(),
    }
    print!("  decode alone: capfilt {decode_only_ips:.0} img/s");
    match torch_decode_only {
        Some(p) => println!(", Pillow {p:.0} img/s ({:.2}x)", decode_only_ips / p),
        None => println!(),
    }
    print!(
        "  resize + normalise alone (images decoded beforehand): capfilt {resize_only_ips:.0} img/s"
    );
    match torch_resize_only {
        Some(p) => println!(
            ", Pillow + numpy {p:.0} img/s ({:.2}x)",
            resize_only_ips / p
        ),
        None => println!(),
    }
    print!(
        "  with JPEG draft (DCT-domain downscaling): capfilt {draft_ips:.0} img/s, model input vs full decode max |d| {draft_max:.3} mean {draft_mean:.4}"
    );
    match (torch_draft, torch_decode) {
        (Some((ips, max, mean)), Some(full)) => println!(
            "; Pillow draft {ips:.0} img/s, max |d| {max:.3} mean {mean:.4} ({:.2}x Pillow's full decode, {:.2}x Pillow's draft)",
            draft_ips / full,
            draft_ips / ips
        ),
        _ => println!(),
    }
    if !torch_version.is_empty() {
        let dtypes = if precision.is_none() || baselines.as_slice() == precision.as_slice() {
            String::new()
        } else {
            let d: Vec<String> = baselines.iter().map(ToString::to_string).collect();
            format!(" ({})", d.join(", "))
        };
        let steps = if precision.is_some() {
            ", HF transformers generate (KV cache), same images and threads"
        } else {
            ""
        };
        let heap = if heap_kept {
            "; Pillow's process keeps freed memory (glibc's mmap and trim thresholds raised)"
        } else {
            ""
        };
        println!("baseline: torch {torch_version}{dtypes}{steps}{heap}");
    }
    Ok(())
}

/// Loads the engine and measures the whole step at each batch size; returns the precision of
/// the graphs it ran.
fn measure_steps(
    args: &Args,
    rows: &[InputRow],
    cap: &Bundle,
    fil: &Bundle,
    cap_pre: &Preprocessing,
    fil_pre: Option<&Preprocessing>,
    limits: &ImageLimits,
) -> Result<(Precision, Vec<Measured>)> {
    let rt = OrtRuntime::init(&OrtConfig {
        library: None,
        gpu: matches!(args.device, Device::Cuda(_)),
    })?;
    let session = SessionOptions {
        device: args.device,
        intra_threads: Some(args.threads),
        optimization: Optimization::All,
        precision: args.precision,
        host_decoding: args.host_decoding,
        ..SessionOptions::default()
    };
    let generation = cap
        .manifest
        .generation
        .as_ref()
        .map(GenerationParams::from_bundle)
        .unwrap_or_default();
    let params = StepParams {
        generation,
        ..StepParams::default()
    };
    let mut engine = Engine::load(rt, cap, fil, &session, params)?;
    let precision = engine.captioner.precision();
    let mut measured = Vec::new();
    for &bs in &args.batch_sizes {
        let bs = bs.max(1);
        let mut timings = StepTimings::default();
        let run = |engine: &mut Engine,
                   part: &[capfilt_worker::input::InputRow],
                   timings: &mut StepTimings|
         -> Result<u128> {
            let t = Instant::now();
            let prepared: Vec<_> = part
                .iter()
                .filter_map(|r| prepare(r, cap_pre, fil_pre, limits).ok())
                .collect();
            let decode = t.elapsed().as_millis();
            engine.run(&prepared, timings)?;
            Ok(decode)
        };
        run(
            &mut engine,
            &rows[..bs.min(rows.len())],
            &mut StepTimings::default(),
        )?; // warm-up
        let t = Instant::now();
        let mut decode_ms = 0;
        for part in rows.chunks(bs) {
            decode_ms += run(&mut engine, part, &mut timings)?;
        }
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "[capfilt] batch {bs}: {:.2} images/s",
            rows.len() as f64 / secs
        );
        measured.push(Measured {
            batch: bs,
            capfilt: rows.len() as f64 / secs,
            torch: Vec::new(),
            caption_ms: timings.caption.as_millis(),
            filter_ms: timings.filter.as_millis(),
            decode_ms,
        });
    }

    Ok((precision, measured))
}

/// The step table: capfilt's images/s at each batch size beside PyTorch's, one pair of columns
/// per baseline precision.
fn print_steps(
    args: &Args,
    cap: &Bundle,
    precision: Precision,
    baselines: &[Precision],
    images: usize,
    measured: &[Measured],
) {
    let a = &cap.manifest.architecture;
    println!(
        "CapFilt step: {images} images of {}, captioner {} (vision {}x{} px/{} patches, text {}x{}), {} threads, {}, {precision}{}",
        args.data.display(),
        cap.manifest.name,
        cap.manifest.preprocessing.image_size,
        cap.manifest.preprocessing.image_size,
        a.patch_size,
        a.text_layers,
        a.text_hidden_size,
        args.threads,
        args.device,
        if args.host_decoding {
            ", host decoding"
        } else {
            ""
        }
    );
    // One "pytorch img/s, ratio" pair of columns per baseline, named by its precision unless
    // the only baseline runs in capfilt's own.
    let torch_headers: Vec<String> = match baselines {
        [] => vec!["pytorch img/s".into()],
        [only] if *only == precision => vec!["pytorch img/s".into()],
        many => many.iter().map(|d| format!("pytorch {d} img/s")).collect(),
    };
    let mut header = format!("{:>6} {:>16}", "batch", "capfilt img/s");
    for h in &torch_headers {
        header += &format!(" {h:>16} {:>7}", "ratio");
    }
    println!(
        "{header}   {:>10} {:>10} {:>10}",
        "decode ms", "caption ms", "filter ms"
    );
    for m in measured {
        let mut line = format!("{:>6} {:>16.2}", m.batch, m.capfilt);
        for k in 0..torch_headers.len() {
            let (torch, ratio) = match m.torch.get(k).copied().flatten() {
                Some(t) => (format!("{t:.2}"), format!("{:.2}x", m.capfilt / t)),
                None => ("-".into(), "-".into()),
            };
            line += &format!(" {torch:>16} {ratio:>7}");
        }
        println!(
            "{line}   {:>10} {:>10} {:>10}",
            m.decode_ms, m.caption_ms, m.filter_ms
        );
    }
}

/// Images/s on the calling thread.
struct PreprocessingRates {
    /// Decode + resize + normalise.
    decode: f64,
    /// The decode alone.
    decode_only: f64,
    /// Resize + normalise alone, on images decoded beforehand.
    resize_only: f64,
    /// Decode + resize + normalise with DCT-domain downscaling of large JPEGs.
    draft: f64,
}

/// Each rate is the best of `windows` one-second windows, the four measurements taking turns so
/// that a slow spell of a shared machine cannot fall on one of them only (the best window, as
/// Python's `timeit` advises: slower windows measure the machine's other load, not the code).
/// `scripts/bench_hf.py` measures Pillow the same way.
fn preprocessing_rates(
    rows: &[InputRow],
    pre: &Preprocessing,
    limits: &ImageLimits,
    windows: usize,
) -> PreprocessingRates {
    let draft_limits = ImageLimits {
        jpeg_draft: true,
        ..*limits
    };
    let images: Vec<_> = rows
        .iter()
        .filter_map(|r| r.image.as_ref())
        .filter_map(|b| capfilt_worker::preprocess::decode_rgb(b, limits).ok())
        .collect();
    let side = pre.image_size as usize;
    let mut pixels = vec![0f32; 3 * side * side];
    // One pass over the images per call; returns how many it did.
    let mut passes: [Box<dyn FnMut() -> usize + '_>; 4] = [
        Box::new(|| {
            for r in rows {
                let _ = prepare(r, pre, None, limits);
            }
            rows.len()
        }),
        Box::new(|| {
            for r in rows {
                if let Some(bytes) = &r.image {
                    let _ = capfilt_worker::preprocess::decode_rgb(bytes, limits);
                }
            }
            rows.len()
        }),
        Box::new(|| {
            for image in &images {
                capfilt_worker::preprocess::pixel_values_into(image, pre, &mut pixels);
            }
            images.len()
        }),
        Box::new(|| {
            for r in rows {
                let _ = prepare(r, pre, None, &draft_limits);
            }
            rows.len()
        }),
    ];
    let mut best = [0f64; 4];
    for _ in 0..windows.max(1) {
        for (pass, best) in passes.iter_mut().zip(&mut best) {
            let t = Instant::now();
            let mut done = 0usize;
            loop {
                let n = pass();
                done += n;
                if n == 0 || t.elapsed().as_secs_f64() >= 1.0 {
                    break;
                }
            }
            *best = best.max(done as f64 / t.elapsed().as_secs_f64());
        }
    }
    PreprocessingRates {
        decode: best[0],
        decode_only: best[1],
        resize_only: best[2],
        draft: best[3],
    }
}
