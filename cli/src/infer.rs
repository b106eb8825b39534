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
    Bundle, ConvSearch, CudaOptions, Decoding, Device, GenerationParams, Optimization, OrtConfig,
    PrecisionChoice, SessionOptions, StepParams,
};
use clap::Args;

use crate::config::FileConfig;
use crate::exit::{CliError, CliResult};

/// Options of the CapFilt step shared by `infer` and (later) `run`.
#[derive(Debug, Clone, Args)]
pub struct CapfiltOptions {
    /// Caption decoding: nucleus (BLIP's CapFilt), greedy or beam [default: the captioner bundle's].
    #[arg(long, env = "CAPFILT_DECODING")]
    pub decoding: Option<Decoding>,
    /// Synthetic captions per image (nucleus: K samples; beam: the K best beams) [default: 1].
    #[arg(long, env = "CAPFILT_CANDIDATES", value_parser = crate::exit::at_least_one::<usize>)]
    pub candidates: Option<usize>,
    /// Keep a text when its ITM match probability is at least this [default: 0.5].
    #[arg(
        long,
        env = "CAPFILT_THRESHOLD",
        conflicts_with = "threshold_at_precision"
    )]
    pub threshold: Option<f32>,
    /// Instead of --threshold: the lowest threshold whose kept texts reached this precision on
    /// the filter bundle's held-out split, as its bundle.json records it (e.g. 0.98); a run
    /// takes each round's own from that round's filter.
    #[arg(long, env = "CAPFILT_THRESHOLD_AT_PRECISION")]
    pub threshold_at_precision: Option<f64>,
    /// Images per inference batch [default: 32].
    #[arg(long, env = "CAPFILT_BATCH_SIZE", value_parser = crate::exit::at_least_one::<usize>)]
    pub batch_size: Option<usize>,
    /// Nucleus sampling mass [default: the bundle's, 0.9].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling temperature [default: the bundle's, 1.0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Beams for --decoding beam [default: the bundle's, 3].
    #[arg(long, value_parser = crate::exit::at_least_one::<usize>)]
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
    /// Most images per batch of a worker's shared engine, across its slots' shards (worker and run) [default: 32 on the CPU, 128 on CUDA].
    #[arg(long, value_parser = crate::exit::at_least_one::<usize>)]
    pub max_batch_images: Option<usize>,
    /// Continuous batching in a worker's shared engine: images join the decoding batch as others' captions finish (worker and run) [default: true on CUDA, false on the CPU].
    #[arg(long)]
    pub continuous_batching: Option<bool>,
    /// (image, text) pairs per ITM batch.
    #[arg(long, default_value_t = 64, value_parser = crate::exit::at_least_one::<usize>)]
    pub itm_batch: usize,
    /// Bootstrap round number (part of every sampling seed and output row) [default: 1].
    #[arg(long)]
    pub round: Option<u32>,
    /// Execution device: cpu or cuda:N (needs a build with --features cuda) [default: cpu].
    #[arg(long, env = "CAPFILT_DEVICE")]
    pub device: Option<Device>,
    /// ONNX Runtime intra-op threads per session [default: one per core].
    #[arg(long, env = "CAPFILT_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// ONNX Runtime graph optimisation: disable, basic, extended or all.
    #[arg(long, default_value = "all")]
    pub optimization: Optimization,
    /// Graph precision: auto (fp16 on a CUDA device when the bundles have fp16 graphs, else fp32), fp32, fp16 or int8 (CPU only) [default: auto].
    #[arg(long, env = "CAPFILT_PRECISION")]
    pub precision: Option<PrecisionChoice>,
    /// Copy the decoding state through host memory at every step instead of keeping it on the device (the reference path; slower on a GPU).
    #[arg(long)]
    pub host_decoding: bool,
    /// Upper bound of the CUDA provider's memory arena, MiB [default: the device's memory].
    #[arg(long, value_parser = crate::exit::at_least_one::<usize>)]
    pub gpu_memory_limit_mib: Option<usize>,
    /// cuDNN convolution algorithm search: exhaustive, heuristic or default [default: exhaustive].
    #[arg(long)]
    pub cudnn_conv_search: Option<ConvSearch>,
    /// Input column names: img2dataset (key, url, caption, jpg) or laion (URL, TEXT) [default: img2dataset].
    #[arg(long)]
    pub columns: Option<String>,
    /// Largest accepted encoded image, bytes.
    #[arg(long, default_value_t = ImageLimits::default().max_encoded_bytes)]
    pub max_image_bytes: usize,
    /// Largest accepted decoded image, pixels.
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain before the bicubic resize (Pillow's draft rule): faster, at a measured cost in parity with Pillow's full decode (README, Performance).
    #[arg(long)]
    pub jpeg_draft: bool,
    /// Smallest accepted image side, pixels.
    #[arg(long, default_value_t = 1)]
    pub min_image_side: u32,
    /// Longer captions are cut to this many characters (counted as captions_truncated).
    #[arg(long, default_value_t = capfilt_worker::input::DEFAULT_MAX_CAPTION_CHARS, value_parser = crate::exit::at_least_one::<usize>)]
    pub max_caption_chars: usize,
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
    /// The keep threshold: --threshold, else --threshold-at-precision looked up in `filter`'s
    /// recorded figures, else the config file's (in the same order), else 0.5.
    pub fn threshold(&self, filter: &Bundle, file: &FileConfig) -> Result<f32, CliError> {
        let f = &file.capfilt;
        let at_precision = |precision: f64| -> Result<f32, CliError> {
            let provenance = &filter.manifest.provenance;
            provenance
                .threshold_at_precision(precision)
                .map(|t| t as f32)
                .ok_or_else(|| {
                    let recorded = provenance.precision_targets();
                    CliError::Usage(anyhow!(
                        "filter bundle {} records no threshold for precision {precision} (recorded: {}); \
                         evaluate it with `python -m capfilt_trainer eval` or give --threshold",
                        filter.manifest.name,
                        if recorded.is_empty() { "none".to_string() } else { recorded.join(", ") }
                    ))
                })
        };
        let threshold = match (self.threshold, self.threshold_at_precision) {
            (Some(t), _) => t,
            (None, Some(p)) => at_precision(p)?,
            (None, None) => match (f.threshold, f.threshold_at_precision) {
                (Some(_), Some(_)) => {
                    return Err(CliError::Usage(anyhow!(
                        "[capfilt] gives both threshold and threshold_at_precision: keep one"
                    )));
                }
                (Some(t), None) => t,
                (None, Some(p)) => at_precision(p)?,
                (None, None) => 0.5,
            },
        };
        if !(0.0..=1.0).contains(&threshold) {
            return Err(CliError::Usage(anyhow!(
                "--threshold must be within 0..=1, got {threshold}"
            )));
        }
        Ok(threshold)
    }

    /// Step parameters: flags, else the config file, else the captioner bundle's generation
    /// defaults (and capfilt's); the threshold as [`CapfiltOptions::threshold`] resolves it.
    pub fn step_params(
        &self,
        captioner: &Bundle,
        filter: &Bundle,
        file: &FileConfig,
    ) -> Result<StepParams, CliError> {
        let f = &file.capfilt;
        let mut g = captioner
            .manifest
            .generation
            .as_ref()
            .map(GenerationParams::from_bundle)
            .unwrap_or_default();
        let decoding = match (self.decoding, &f.decoding) {
            (Some(d), _) => Some(d),
            (None, Some(name)) => Some(
                name.parse::<Decoding>()
                    .map_err(|e| CliError::Usage(anyhow!("config [capfilt] decoding: {e}")))?,
            ),
            (None, None) => None,
        };
        if let Some(d) = decoding {
            g.decoding = d;
        }
        g.candidates = self.candidates.or(f.candidates).unwrap_or(1);
        if let Some(v) = self.top_p.or(f.top_p) {
            g.top_p = v;
        }
        if let Some(v) = self.temperature.or(f.temperature) {
            g.temperature = v;
        }
        if let Some(v) = self.num_beams.or(f.num_beams) {
            g.num_beams = v;
        }
        if let Some(v) = self.repetition_penalty.or(f.repetition_penalty) {
            g.repetition_penalty = v;
        }
        if let Some(v) = self.min_length.or(f.min_length) {
            g.min_length = v;
        }
        if let Some(v) = self.max_length.or(f.max_length) {
            g.max_length = v;
        }
        g.validate().map_err(|e| CliError::Usage(anyhow!("{e}")))?;
        let threshold = self.threshold(filter, file)?;
        if self.batch_size(file) == 0 || self.itm_batch == 0 {
            return Err(CliError::Usage(anyhow!(
                "--batch-size and --itm-batch must be at least 1"
            )));
        }
        Ok(StepParams {
            generation: g,
            threshold,
            itm_batch: self.itm_batch,
            round: self.round.or(file.round).unwrap_or(1),
        })
    }

    /// Images per inference batch.
    pub fn batch_size(&self, file: &FileConfig) -> usize {
        self.batch_size.or(file.capfilt.batch_size).unwrap_or(32)
    }

    /// The input column mapping.
    pub fn mapping(&self, file: &FileConfig) -> Result<ColumnMapping, CliError> {
        match (&self.columns, &file.columns) {
            (Some(name), _) => ColumnMapping::preset(name).ok_or_else(|| {
                CliError::Usage(anyhow!(
                    "unknown --columns '{name}': use img2dataset or laion"
                ))
            }),
            (None, Some(c)) => c.mapping().map_err(CliError::Usage),
            (None, None) => Ok(ColumnMapping::img2dataset()),
        }
    }

    /// Image limits.
    pub fn limits(&self) -> ImageLimits {
        ImageLimits {
            max_encoded_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
            min_side: self.min_image_side,
            max_caption_chars: self.max_caption_chars,
            jpeg_draft: self.jpeg_draft,
        }
    }

    /// Reading options.
    pub fn read_options(&self, file: &FileConfig) -> Result<ReadOptions, CliError> {
        Ok(ReadOptions {
            mapping: self.mapping(file)?,
            batch_size: self.batch_size(file),
            queue_depth: 2,
            limits: self.limits(),
            with_images: self.with_images,
            cancel: None,
            progress: None,
        })
    }

    /// The device.
    pub fn device(&self, file: &FileConfig) -> Result<Device, CliError> {
        match (self.device, &file.worker.device) {
            (Some(d), _) => Ok(d),
            (None, Some(name)) => name
                .parse()
                .map_err(|e| CliError::Usage(anyhow!("config [worker] device: {e}"))),
            (None, None) => Ok(Device::Cpu),
        }
    }

    /// ONNX Runtime session options.
    pub fn session(&self, file: &FileConfig) -> Result<SessionOptions, CliError> {
        Ok(SessionOptions {
            device: self.device(file)?,
            intra_threads: self.intra_threads.or(file.worker.intra_threads),
            optimization: self.optimization,
            precision: match (self.precision, &file.worker.precision) {
                (Some(p), _) => p,
                (None, Some(name)) => name
                    .parse()
                    .map_err(|e| CliError::Usage(anyhow!("config [worker] precision: {e}")))?,
                (None, None) => PrecisionChoice::Auto,
            },
            host_decoding: self.host_decoding,
            spinning: false,
            cuda: CudaOptions {
                memory_limit: self
                    .gpu_memory_limit_mib
                    .or(file.worker.gpu_memory_limit_mib)
                    .map(|mib| mib << 20),
                conv_search: match (self.cudnn_conv_search, &file.worker.cudnn_conv_search) {
                    (Some(c), _) => c,
                    (None, Some(name)) => name.parse().map_err(|e| {
                        CliError::Usage(anyhow!("config [worker] cudnn_conv_search: {e}"))
                    })?,
                    (None, None) => ConvSearch::default(),
                },
            },
        })
    }

    /// Which ONNX Runtime library to load.
    pub fn ort(&self, file: &FileConfig) -> Result<OrtConfig, CliError> {
        Ok(OrtConfig {
            library: self.onnxruntime.clone(),
            gpu: matches!(self.device(file)?, Device::Cuda(_)),
        })
    }

    /// The cache folder.
    pub fn cache(&self, file: &FileConfig) -> PathBuf {
        self.cache_dir
            .clone()
            .or_else(|| file.worker.cache_dir.clone())
            .unwrap_or_else(default_cache_dir)
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
    /// TOML config file (its capfilt, worker and store tables and columns apply here).
    #[arg(long, env = "CAPFILT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: CapfiltOptions,
}

/// Bad input (bundles, their kinds and parameters, a file that does not fit): exit 2, as
/// `run` reports the same mistakes; a job that failed on the way: exit 1.
fn classify(e: InferError) -> CliError {
    use capfilt_worker::EngineError;
    match e {
        InferError::Bundle(_)
        | InferError::Engine(EngineError::Bundle(_) | EngineError::Params(_))
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
        let file = FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
        let cache = o.cache(&file);
        let store_options = file.store_options();
        let captioner = Bundle::fetch(&args.captioner, &cache, &store_options)
            .await
            .map_err(|e| CliError::Usage(e.into()))?;
        let filter = Bundle::fetch(&args.filter, &cache, &store_options)
            .await
            .map_err(|e| CliError::Usage(e.into()))?;
        let step = o.step_params(&captioner, &filter, &file)?;
        let config = InferConfig {
            captioner: args.captioner.clone(),
            filter: args.filter.clone(),
            input: args.input.clone(),
            output: args.output.clone(),
            step,
            read: o.read_options(&file)?,
            session: o.session(&file)?,
            ort: o.ort(&file)?,
            cache_dir: cache,
            store_options,
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
            for (what, n) in crate::cluster::input_notes(c) {
                println!("{what:<16} {n:>8}");
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
