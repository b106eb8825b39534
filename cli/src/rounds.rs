//! The bootstrap run's flags and config keys (`--rounds`, `--seed-data`, ..., `[bootstrap]`),
//! shared by `capfilt run` and `capfilt coordinator`, turned into the coordinator's
//! [`BootstrapConfig`], its [`RoundPlanner`] and a [`LocalTrainer`]. The run itself is
//! `capfilt_coordinator::bootstrap`; this module only parses and prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use capfilt_coordinator::RoundSpec;
use capfilt_coordinator::bootstrap::kubernetes::{KubernetesTrainer, TemplateSource};
use capfilt_coordinator::bootstrap::record::{BundlePair, Metrics, RunRecord, read_json};
use capfilt_coordinator::bootstrap::trainer::{LocalTrainer, TrainerRunner};
use capfilt_coordinator::bootstrap::{
    BootstrapConfig, BootstrapError, RoundPlanner, TrainInit, round_dir,
};
use capfilt_schemas::records::RoundManifest;
use capfilt_schemas::store;
use clap::Args;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::cluster::{RoundArgs, print_summary, round_spec};
use crate::config::FileConfig;
use crate::exit::CliError;
use crate::infer::CapfiltOptions;

/// Options of the bootstrap run.
#[derive(Debug, Clone, Default, Args)]
pub struct BootstrapArgs {
    /// Bootstrap rounds: round 1 with the given bundles, retraining between rounds [default: 1].
    #[arg(long, env = "CAPFILT_ROUNDS")]
    pub rounds: Option<u32>,
    /// The clean seed set every retraining includes (with the round's cleaned set).
    #[arg(long, env = "CAPFILT_SEED_DATA")]
    pub seed_data: Option<String>,
    /// Held-out split with ground truth (gt_caption, gt_match) for the promotion gate.
    #[arg(long, env = "CAPFILT_EVAL_DATA")]
    pub eval_data: Option<String>,
    /// Training steps of each new captioner [default: 1500].
    #[arg(long)]
    pub captioner_steps: Option<u32>,
    /// Training steps of each new filter [default: 600].
    #[arg(long)]
    pub filter_steps: Option<u32>,
    /// How much lower (absolute) a new bundle's figure (captioner exact match, filter ROC-AUC) may be and still be promoted [default: 0.02].
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Where each retraining starts: previous (the current bundles' checkpoints, like BLIP's fine-tuning from pre-trained weights) or scratch (new random weights of the seed preset) [default: previous].
    #[arg(long)]
    pub train_init: Option<String>,
    /// Python with capfilt_trainer installed [default: .venv/bin/python if present, else python3].
    #[arg(long, env = "CAPFILT_PYTHON")]
    pub python: Option<PathBuf>,
    /// A trainer job running longer is stopped, in seconds [default: 86400].
    #[arg(long)]
    pub trainer_timeout_s: Option<u64>,
    /// The coordinator's lease on the output, in seconds: a second coordinator is refused while it is renewed, and takes over once it lapses [default: 30].
    #[arg(long, env = "CAPFILT_OUTPUT_LEASE_S")]
    pub output_lease_s: Option<f64>,
}

fn usage(msg: String) -> CliError {
    CliError::Usage(anyhow!(msg))
}

/// Rounds asked for by flag or config [default: 1].
pub fn rounds(args: &BootstrapArgs, file: &FileConfig) -> u32 {
    args.rounds.or(file.bootstrap.rounds).unwrap_or(1).max(1)
}

/// The run's settings from flags and the config file.
pub fn bootstrap_config(
    round_args: &RoundArgs,
    args: &BootstrapArgs,
    file: &FileConfig,
    last_round: u32,
) -> Result<BootstrapConfig, CliError> {
    let fb = &file.bootstrap;
    let output = round_args
        .output
        .clone()
        .or(file.output.clone())
        .ok_or_else(|| {
            usage("--output is required (or `output = ...` in the config file)".into())
        })?;
    let need = |v: Option<String>, name: &str| -> Result<String, CliError> {
        if last_round <= 1 {
            return Ok(v.unwrap_or_default());
        }
        v.ok_or_else(|| {
            usage(format!(
                "--rounds {last_round} needs --{name} (or {} in [bootstrap])",
                name.replace('-', "_")
            ))
        })
    };
    let seed_data = need(args.seed_data.clone().or(fb.seed_data.clone()), "seed-data")?;
    let eval_data = need(args.eval_data.clone().or(fb.eval_data.clone()), "eval-data")?;
    let train_init = match args.train_init.clone().or(fb.train_init.clone()).as_deref() {
        None | Some("previous") => TrainInit::Previous,
        Some("scratch") => TrainInit::Scratch,
        Some(other) => {
            return Err(usage(format!(
                "--train-init must be previous or scratch, not '{other}'"
            )));
        }
    };
    let lease_s = args.output_lease_s.or(fb.output_lease_s).unwrap_or(30.0);
    if !(lease_s > 0.0 && lease_s.is_finite()) {
        return Err(usage(format!(
            "--output-lease-s must be > 0, not {lease_s}"
        )));
    }
    let required = |flag: Option<&String>, conf: Option<&String>, name: &str| {
        flag.or(conf).cloned().ok_or_else(|| {
            usage(format!(
                "--{name} is required (or `{name} = ...` in the config file)"
            ))
        })
    };
    Ok(BootstrapConfig {
        first_round: 1,
        rounds: last_round,
        output,
        store_options: file.store_options(),
        initial: BundlePair {
            captioner: required(
                round_args.captioner.as_ref(),
                file.captioner.as_ref(),
                "captioner",
            )?,
            filter: required(round_args.filter.as_ref(), file.filter.as_ref(), "filter")?,
        },
        seed_data,
        eval_data,
        captioner_steps: args.captioner_steps.or(fb.captioner_steps).unwrap_or(1500),
        filter_steps: args.filter_steps.or(fb.filter_steps).unwrap_or(600),
        tolerance: args.tolerance.or(fb.tolerance).unwrap_or(0.02),
        train_init,
        output_lease_ttl: Duration::from_secs_f64(lease_s),
    })
}

/// The trainer stage as a child process of this coordinator.
pub fn local_trainer(
    args: &BootstrapArgs,
    file: &FileConfig,
    options: &CapfiltOptions,
    output: &str,
) -> LocalTrainer {
    let python = args
        .python
        .clone()
        .or(file.bootstrap.python.clone())
        .unwrap_or_else(|| {
            let venv = PathBuf::from(".venv/bin/python");
            if venv.is_file() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    LocalTrainer {
        python,
        work_dir: options
            .cache(file)
            .join("train")
            .join(format!("{:.16x}", Sha256::digest(output.as_bytes()))),
        timeout: Duration::from_secs(
            args.trainer_timeout_s
                .or(file.bootstrap.trainer_timeout_s)
                .unwrap_or(86_400),
        ),
        env: Vec::new(),
    }
}

/// Round specs from the command line's flags and config: bundles fetched and verified,
/// generation defaults from the captioner bundle.
pub struct CliPlanner {
    /// Input, output, plan flags.
    pub round_args: RoundArgs,
    /// CapFilt options.
    pub options: CapfiltOptions,
    /// The config file.
    pub file: FileConfig,
}

impl RoundPlanner for CliPlanner {
    fn spec<'a>(
        &'a self,
        round: u32,
        bundles: &'a BundlePair,
    ) -> BoxFuture<'a, Result<RoundSpec, String>> {
        Box::pin(async move {
            let mut args = self.round_args.clone();
            args.captioner = Some(bundles.captioner.clone());
            args.filter = Some(bundles.filter.clone());
            round_spec(&args, &self.options, &self.file, round)
                .await
                .map(|(spec, _)| spec)
                .map_err(|e| match e {
                    CliError::Usage(e) | CliError::Failed(e) => format!("{e:#}"),
                })
        })
    }
}

/// Exit codes for the run's errors; a refusal by the gate prints the table first.
pub fn map_error(e: BootstrapError) -> CliError {
    if let BootstrapError::Refused { record, message } = e {
        print_table(&record);
        return CliError::Failed(anyhow!(message));
    }
    if e.is_usage() {
        CliError::Usage(e.into())
    } else {
        CliError::Failed(e.into())
    }
}

/// Prints each finished round's summary (from its manifest) and, for more than one round, the
/// rounds table.
pub async fn print_run(record: &RunRecord, output: &str, file: &FileConfig, json: bool) {
    for r in &record.rounds {
        let rdir = round_dir(output, r.round);
        let Ok(loc) = store::resolve(&format!("{rdir}/_manifest.json"), &file.store_options())
        else {
            continue;
        };
        if let Ok(Some(m)) = read_json::<RoundManifest>(&loc).await {
            if json {
                println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            } else {
                print_summary(&m, &rdir);
            }
        }
    }
    if !json && record.rounds_requested > 1 {
        print_table(record);
    }
}

/// The per-round table.
pub fn print_table(record: &RunRecord) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let fig = |m: &Metrics, k: &str| m.get(k).map_or("-".to_string(), |v| format!("{v:.3}"));
    println!();
    println!(
        "{:>5} {:>8} {:>8} {:>10} {:>10} {:>14} {:>11} {:>9}",
        "round", "rows", "img/s", "web kept", "syn kept", "capt. exact", "filter AUC", "promoted"
    );
    for r in &record.rounds {
        println!(
            "{:>5} {:>8} {:>8} {:>10} {:>10} {:>14} {:>11} {:>9}",
            r.round,
            r.totals.rows_in,
            r.images_per_second
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            pct(r.web_keep_rate),
            pct(r.synthetic_keep_rate),
            fig(&r.captioner_eval, "exact_match"),
            fig(&r.filter_eval, "auc"),
            r.promotion
                .as_ref()
                .map_or("-", |p| if p.promoted { "yes" } else { "no" })
        );
    }
}

/// The runner of the trainer stage that `[trainer] runner` selects.
pub async fn trainer_runner(
    args: &BootstrapArgs,
    file: &FileConfig,
    options: &CapfiltOptions,
    output: &str,
) -> Result<Arc<dyn TrainerRunner>, CliError> {
    let local = local_trainer(args, file, options, output);
    match file.trainer.runner.as_deref() {
        None | Some("local") => Ok(Arc::new(local)),
        Some("kubernetes") => {
            let source = match (&file.trainer.job_template, &file.trainer.pod_template) {
                (Some(path), _) => TemplateSource::JobFile(path.display().to_string()),
                (None, Some(name)) => TemplateSource::PodTemplate(name.clone()),
                (None, None) => TemplateSource::PodTemplate("capfilt-trainer".into()),
            };
            let run_id = format!("{:.16x}", Sha256::digest(output.as_bytes()));
            let k = KubernetesTrainer::from_environment(
                &source,
                file.trainer.namespace.as_deref(),
                &run_id,
            )
            .await
            .map_err(|e| CliError::Usage(e.into()))?
            .with_timeout(local.timeout)
            .with_ttl_after_finished(file.trainer.ttl_seconds_after_finished.unwrap_or(86_400));
            Ok(Arc::new(k))
        }
        Some(other) => Err(usage(format!(
            "[trainer] runner must be local or kubernetes, not '{other}'"
        ))),
    }
}

/// The planner, the trainer and the config of a run, ready for a controller: `--rounds N`
/// (or `[bootstrap] rounds`) rounds from round 1, or, without either, the one round `--round R`.
pub async fn run_parts(
    round_args: &RoundArgs,
    args: &BootstrapArgs,
    options: &CapfiltOptions,
    file: &FileConfig,
) -> Result<(BootstrapConfig, Arc<CliPlanner>, Arc<dyn TrainerRunner>), CliError> {
    let last_round = rounds(args, file);
    let mut config = bootstrap_config(round_args, args, file, last_round)?;
    if last_round == 1 && args.rounds.is_none() {
        let r = options.round.or(file.round).unwrap_or(1).max(1);
        config.first_round = r;
        config.rounds = r;
    }
    let trainer = trainer_runner(args, file, options, &config.output).await?;
    let planner = CliPlanner {
        round_args: round_args.clone(),
        options: options.clone(),
        file: file.clone(),
    };
    Ok((config, Arc::new(planner), trainer))
}
