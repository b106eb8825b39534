//! `capfilt infer`: the whole CapFilt step on one input file, on this machine, without a
//! coordinator.

use std::path::PathBuf;

use anyhow::anyhow;
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_worker::bundle::default_cache_dir;
use capfilt_worker::infer::{InferConfig, InferError, ReadOptions, run_infer};
use capfilt_worker::preprocess::ImageLimits;
use capfilt_worker::store::StoreError;
use capfilt_worker::{
    Bundle, Decoding, Device, GenerationParams, Optimization, OrtConfig, SessionOptions, StepParams,
};
use clap::Args;

use crate::exit::{CliError, CliResult};

/// Options of the CapFilt step shared by `infer` and (later) `run`.
#[derive(Debug, Clone, Args)]
pub struct CapfiltOptions {
    /// Caption decoding: nucleus (BLIP's CapFilt), greedy or beam [default: the captioner bundle's].
    #[arg(long, env = "CAPFILT_DECODING")]
    pub decoding: Option<Decoding>,
    /// Synthetic captions per image (nucleus: K samples; beam: the K best beams).
    #[arg(long, env = "CAPFILT_CANDIDATES", default_value_t = 1)]
    pub candidates: usize,
    /// Keep a text when its ITM match probability is at least this.
    #[arg(long, env = "CAPFILT_THRESHOLD", default_value_t = 0.5)]
    pub threshold: f32,
    /// Images per inference batch.
    #[arg(long, env = "CAPFILT_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,
    /// Nucleus sampling mass [default: the bundle's, 0.9].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling temperature [default: the bundle's, 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Beams for --decoding beam [default: the bundle's, 3].
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Repetition penalty [default: the bundle's, 1.1].
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Minimum caption length in tokens, prompt included [default: the bundle's, 10].
    #[arg(long)]
    pub min_length: Option<usize>,
    /// Maximum caption length in tokens, prompt included [default: the bundle's, 30].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// (image, text) pairs per ITM batch.
    #[arg(long, default_value_t = 64)]
    pub itm_batch: usize,
    /// Bootstrap round number (part of every sampling seed and output row).
    #[arg(long, default_value_t = 1)]
    pub round: u32,
    /// Execution device: cpu or cuda:N (needs a build with --features cuda).
    #[arg(long, env = "CAPFILT_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime intra-op threads per session [default: one per core].
    #[arg(long, env = "CAPFILT_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// ONNX Runtime graph optimisation: disable, basic, extended or all.
    #[arg(long, default_value = "all")]
    pub optimization: Optimization,
    /// Input column names: img2dataset (key, url, caption, jpg) or laion (URL, TEXT).
    #[arg(long, default_value = "img2dataset")]
    pub columns: String,
    /// Largest accepted encoded image, bytes.
    #[arg(long, default_value_t = ImageLimits::default().max_encoded_bytes)]
    pub max_image_bytes: usize,
    /// Largest accepted decoded image, pixels.
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Smallest accepted image side, pixels.
    #[arg(long, default_value_t = 1)]
    pub min_image_side: u32,
    /// Copy image bytes into cleaned/ (default: reference them by source file and row).
    #[arg(long)]
    pub with_images: bool,
    /// Local cache for bundles and remote inputs [default: $CAPFILT_CACHE or ~/.cache/capfilt].
    #[arg(long, env = "CAPFILT_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// libonnxruntime to load [default: ORT_DYLIB_PATH or third_party/onnxruntime].
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
}

impl CapfiltOptions {
    /// Step parameters: the captioner bundle's generation defaults with these overrides.
    pub fn step_params(&self, captioner: &Bundle) -> Result<StepParams, CliError> {
        let mut g = captioner
            .manifest
            .generation
            .as_ref()
            .map(GenerationParams::from_bundle)
            .unwrap_or_default();
        if let Some(d) = self.decoding {
            g.decoding = d;
        }
        g.candidates = self.candidates;
        if let Some(v) = self.top_p {
            g.top_p = v;
        }
        if let Some(v) = self.temperature {
            g.temperature = v;
        }
        if let Some(v) = self.num_beams {
            g.num_beams = v;
        }
        if let Some(v) = self.repetition_penalty {
            g.repetition_penalty = v;
        }
        if let Some(v) = self.min_length {
            g.min_length = v;
        }
        if let Some(v) = self.max_length {
            g.max_length = v;
        }
        g.validate().map_err(|e| CliError::Usage(anyhow!("{e}")))?;
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(CliError::Usage(anyhow!(
                "--threshold must be within 0..=1, got {}",
                self.threshold
            )));
        }
        if self.batch_size == 0 || self.itm_batch == 0 {
            return Err(CliError::Usage(anyhow!(
                "--batch-size and --itm-batch must be at least 1"
            )));
        }
        Ok(StepParams {
            generation: g,
            threshold: self.threshold,
            itm_batch: self.itm_batch,
            round: self.round,
        })
    }

    /// Reading options.
    pub fn read_options(&self) -> Result<ReadOptions, CliError> {
        let mapping = ColumnMapping::preset(&self.columns).ok_or_else(|| {
            CliError::Usage(anyhow!(
                "unknown --columns '{}': use img2dataset or laion",
                self.columns
            ))
        })?;
        Ok(ReadOptions {
            mapping,
            batch_size: self.batch_size,
            queue_depth: 2,
            limits: ImageLimits {
                max_encoded_bytes: self.max_image_bytes,
                max_pixels: self.max_image_pixels,
                min_side: self.min_image_side,
            },
            with_images: self.with_images,
        })
    }

    /// ONNX Runtime session options.
    pub fn session(&self) -> SessionOptions {
        SessionOptions {
            device: self.device,
            intra_threads: self.intra_threads,
            optimization: self.optimization,
        }
    }

    /// Which ONNX Runtime library to load.
    pub fn ort(&self) -> OrtConfig {
        OrtConfig {
            library: self.onnxruntime.clone(),
            gpu: matches!(self.device, Device::Cuda(_)),
        }
    }

    /// The cache folder.
    pub fn cache(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }
}

/// Arguments of `capfilt infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Captioner bundle: a folder or an object-store URL.
    #[arg(long)]
    pub captioner: String,
    /// Filter bundle: a folder or an object-store URL.
    #[arg(long)]
    pub filter: String,
    /// Input Parquet file (img2dataset layout): a path or an object-store URL.
    #[arg(long)]
    pub input: String,
    /// Output folder or URL: scored/, cleaned/ and rejects/ go under it.
    #[arg(long)]
    pub output: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub options: CapfiltOptions,
}

fn classify(e: InferError) -> CliError {
    match e {
        InferError::Bundle(_)
        | InferError::Schema(_)
        | InferError::Store(StoreError::BadLocation { .. }) => CliError::Usage(e.into()),
        InferError::Input { .. } => CliError::Usage(e.into()),
        other => CliError::Failed(other.into()),
    }
}

/// Runs `capfilt infer`.
pub fn run(args: InferArgs) -> CliResult {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| CliError::Failed(e.into()))?;
    runtime.block_on(async move {
        let o = &args.options;
        let cache = o.cache();
        let captioner = Bundle::fetch(&args.captioner, &cache, &[])
            .await
            .map_err(|e| CliError::Usage(e.into()))?;
        let step = o.step_params(&captioner)?;
        let config = InferConfig {
            captioner: args.captioner.clone(),
            filter: args.filter.clone(),
            input: args.input.clone(),
            output: args.output.clone(),
            step,
            read: o.read_options()?,
            session: o.session(),
            ort: o.ort(),
            cache_dir: cache,
            store_options: Vec::new(),
        };
        let started = std::time::Instant::now();
        let summary = run_infer(config).await.map_err(classify)?;
        let secs = started.elapsed().as_secs_f64();
        let c = &summary.counts;
        let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
        if args.json {
            let json = serde_json::json!({
                "counts": c,
                "stats": summary.stats,
                "files": summary.files,
                "seconds": secs,
                "images_per_second": c.rows_scored as f64 / secs.max(1e-9),
            });
            println!("{json:#}");
        } else {
            println!("rows in          {:>8}", c.rows_in);
            println!("scored           {:>8}", c.rows_scored);
            println!("rejected         {:>8}", c.rows_rejected);
            for (reason, n) in &c.rejects_by_reason {
                println!("  {:<15}{n:>8}", reason.as_str());
            }
            println!("web kept         {:>8} of {} ({:.1}%)", c.web_kept, c.web_texts, pct(c.web_kept, c.web_texts));
            println!(
                "synthetic kept   {:>8} of {} ({:.1}%)",
                c.synthetic_kept,
                c.synthetic_texts,
                pct(c.synthetic_kept, c.synthetic_texts)
            );
            let s = &summary.stats;
            println!(
                "time             {secs:.1} s ({:.1} images/s; decode {} ms, captioner {} ms, filter {} ms, write {} ms)",
                c.rows_scored as f64 / secs.max(1e-9),
                s.decode_ms,
                s.caption_ms,
                s.filter_ms,
                s.write_ms
            );
            for f in &summary.files {
                println!("wrote {f}");
            }
        }
        Ok(())
    })
}
