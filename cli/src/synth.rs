//! `capfilt synth`: writes the synthetic CapFilt benchmark.

use std::path::PathBuf;
use std::time::Instant;

use capfilt_synth::{NoiseMix, SynthConfig, SynthError};
use clap::Args;

use crate::exit::{CliError, CliResult};

/// Arguments of `capfilt synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder: gets seed/, web/, eval/ (part-*.parquet) and _synth.json. Must be new, empty
    /// or an earlier synth output (whose split folders are replaced).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Rows of the seed split (clean captions, the COCO role).
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    seed_rows: u64,
    /// Rows of the web split (noisy alt-text: what CapFilt cleans).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    web_rows: u64,
    /// Rows of the held-out eval split (noisy like web, with ground truth).
    #[arg(long, value_name = "N", default_value_t = 500)]
    eval_rows: u64,
    /// Share of web and eval captions that do not match their image, in [0, 1].
    #[arg(long, value_name = "F", default_value_t = 0.4)]
    noise: f64,
    /// Relative weights of the noise kinds: wrong_colour, wrong_shape, wrong_background,
    /// unrelated, empty, very_long (unnamed kinds get 0).
    #[arg(
        long,
        value_name = "KIND=W,...",
        default_value = "wrong_colour=0.25,wrong_shape=0.25,wrong_background=0.15,unrelated=0.2,empty=0.05,very_long=0.1"
    )]
    noise_mix: NoiseMix,
    /// Random seed; the same arguments give byte-identical files.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Rows per Parquet file.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    rows_per_file: u64,
    /// Rows per Parquet row group.
    #[arg(long, value_name = "N", default_value_t = 250)]
    row_group_rows: u64,
    /// Smallest image side in pixels.
    #[arg(long, value_name = "PX", default_value_t = 64)]
    min_side: u32,
    /// Largest image side in pixels.
    #[arg(long, value_name = "PX", default_value_t = 640)]
    max_side: u32,
    /// Share of images stored as PNG (the rest are JPEG), in [0, 1].
    #[arg(long, value_name = "F", default_value_t = 0.15)]
    png_share: f64,
    /// Worker threads for image generation (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

impl SynthArgs {
    fn config(self) -> SynthConfig {
        let mut c = SynthConfig::new(self.out);
        c.seed_rows = self.seed_rows;
        c.web_rows = self.web_rows;
        c.eval_rows = self.eval_rows;
        c.noise = self.noise;
        c.noise_mix = self.noise_mix;
        c.seed = self.seed;
        c.rows_per_file = self.rows_per_file;
        c.rows_per_row_group = self.row_group_rows;
        c.min_side = self.min_side;
        c.max_side = self.max_side;
        c.png_share = self.png_share;
        c
    }
}

/// Runs `capfilt synth`.
pub fn run(args: SynthArgs) -> CliResult {
    let threads = args.threads;
    let config = args.config();
    let started = Instant::now();
    let generate = || capfilt_synth::generate(&config);
    let result = match threads {
        Some(n) => rayon_pool(n)?.install(generate),
        None => generate(),
    };
    let summary = result.map_err(|e| match e {
        SynthError::InvalidOption(_) | SynthError::OutputNotEmpty(_) | SynthError::Io { .. } => {
            CliError::Usage(e.into())
        }
        SynthError::Encode { .. } | SynthError::Parquet { .. } => CliError::Failed(e.into()),
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:<6} {:>8} {:>8} {:>7} {:>6} {:>6} {:>10}",
        "split", "rows", "noisy", "png", "files", "groups", "MiB"
    );
    let mut rows = 0;
    for s in &summary.splits {
        rows += s.rows;
        println!(
            "{:<6} {:>8} {:>8} {:>7} {:>6} {:>6} {:>10.1}",
            s.split,
            s.rows,
            s.noisy_rows,
            s.png_images,
            s.files.len(),
            s.row_groups,
            s.bytes as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "wrote {rows} rows to {} in {secs:.1} s ({:.0} rows/s)",
        config.out.display(),
        rows as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn rayon_pool(n: usize) -> Result<rayon::ThreadPool, CliError> {
    if n == 0 {
        return Err(CliError::Usage(anyhow::anyhow!(
            "--threads must be at least 1"
        )));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| CliError::Failed(e.into()))
}
