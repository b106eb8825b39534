//! `capfilt report`: writes a finished round's report (HTML, PNG plots, a sample gallery).

use clap::Args;

use crate::exit::{CliError, CliResult};

/// Arguments of `capfilt report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The round folder (e.g. OUT/round-0001 or s3://bucket/out/round-0001); it must have its _manifest.json.
    #[arg(long, value_name = "URL")]
    round: String,
    /// Where to write the report [default: ROUND/report].
    #[arg(long, value_name = "DIR_OR_URL")]
    out: Option<String>,
    /// Images drawn at random for the gallery [default: 48].
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// Most confident rejections shown [default: 12].
    #[arg(long, value_name = "N")]
    rejections: Option<usize>,
    /// Seed of the gallery's draw [default: 0].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Boolean input column with the ground truth of the web texts, used when present [default: gt_match].
    #[arg(long, value_name = "COLUMN")]
    truth_column: Option<String>,
    /// TOML config file (its store table applies).
    #[arg(long, env = "CAPFILT_CONFIG")]
    config: Option<std::path::PathBuf>,
}

/// Runs `capfilt report`.
pub fn run(args: ReportArgs) -> CliResult {
    let file = crate::config::FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
    let mut options = capfilt_report::ReportOptions {
        out: args.out,
        ..Default::default()
    };
    if let Some(n) = args.sample {
        options.draw.sample = n;
    }
    if let Some(n) = args.rejections {
        options.draw.rejections = n;
    }
    if let Some(s) = args.seed {
        options.draw.seed = s;
    }
    if let Some(c) = args.truth_column {
        options.draw.truth_column = c;
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| CliError::Failed(e.into()))?;
    let summary = runtime
        .block_on(capfilt_report::write_report(
            &args.round,
            &file.store_options(),
            &options,
        ))
        .map_err(|e| match e {
            capfilt_report::ReportError::NoManifest { .. }
            | capfilt_report::ReportError::Store(
                capfilt_schemas::store::StoreError::BadLocation { .. },
            ) => CliError::Usage(e.into()),
            e => CliError::Failed(e.into()),
        })?;
    println!(
        "report of round {} written to {}/index.html ({} files, {} sample images, {} rejections{})",
        summary.round,
        summary.location.trim_end_matches('/'),
        summary.files.len(),
        summary.sample,
        summary.rejections,
        match &summary.truth {
            Some(t) => format!(
                "; kept web texts {:.3} precise at recall {:.3}",
                t.kept_precision, t.kept_recall
            ),
            None => String::new(),
        }
    );
    Ok(())
}
