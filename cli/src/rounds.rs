//! Bootstrap rounds (`capfilt run --rounds N`): round r runs with the current bundles; then the
//! trainer stage builds a new captioner and filter from the seed set plus round r's cleaned set,
//! evaluates them on the held-out split, and the promotion gate compares them with round r's
//! bundles. Round r+1 runs with the promoted bundles; a regression beyond the tolerance stops the
//! run with both sets of figures.
//!
//! Everything is recorded under `{output}/round-NNNN/` (`bundles/`, `eval.json`,
//! `promotion.json`) and in `{output}/_run.json`, and re-running the same command resumes:
//! committed shards, finished trainings and exports, and recorded evaluations are reused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::anyhow;
use capfilt_schemas::records::RoundManifest;
use capfilt_schemas::store::{self, Location};
use capfilt_worker::Bundle;
use clap::Args;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::{RunArgs, round_dir, round_spec, run_round};
use crate::config::FileConfig;
use crate::exit::{CliError, CliResult};

/// Options of the bootstrap loop.
#[derive(Debug, Clone, Default, Args)]
pub struct BootstrapArgs {
    /// Bootstrap rounds: round 1 with the given bundles, retraining between rounds [default: 1].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// The clean seed set every retraining includes (with the round's cleaned set).
    #[arg(long)]
    pub seed_data: Option<String>,
    /// Held-out split with ground truth (gt_caption, gt_match) for the promotion gate.
    #[arg(long)]
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
}

/// Figures of a bundle on the eval split.
pub type Metrics = BTreeMap<String, f64>;

/// One round in `_run.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    /// Round number.
    pub round: u32,
    /// Captioner bundle URL and sha256 of its bundle.json.
    pub captioner: (String, String),
    /// Filter bundle URL and sha256.
    pub filter: (String, String),
    /// Rows in, scored, rejected; texts kept.
    pub totals: capfilt_schemas::records::ShardCounts,
    /// Web keep rate.
    pub web_keep_rate: Option<f64>,
    /// Synthetic keep rate.
    pub synthetic_keep_rate: Option<f64>,
    /// Seconds the round took (this run; 0 when it was finished before).
    pub seconds: f64,
    /// Images per second (unknown for a round finished by an earlier, unrecorded run).
    pub images_per_second: Option<f64>,
    /// Captioner figures on the eval split.
    pub captioner_eval: Metrics,
    /// Filter figures on the eval split.
    pub filter_eval: Metrics,
    /// The trainer stage after this round, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

/// The promotion gate's record (`round-NNNN/promotion.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Promotion {
    /// Whether the new bundles were promoted.
    pub promoted: bool,
    /// Tolerance used.
    pub tolerance: f64,
    /// New captioner URL.
    pub captioner: String,
    /// New filter URL.
    pub filter: String,
    /// Old and new captioner exact match.
    pub captioner_exact_match: (f64, f64),
    /// Old and new filter ROC-AUC.
    pub filter_auc: (f64, f64),
    /// New bundles' full figures.
    pub captioner_eval: Metrics,
    /// New filter figures.
    pub filter_eval: Metrics,
    /// Seconds spent training and exporting.
    pub training_seconds: f64,
}

/// `_run.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Rounds asked for.
    pub rounds_requested: u32,
    /// Finished rounds.
    pub rounds: Vec<RoundRecord>,
    /// `running`, `done` or `stopped` (refused by the gate).
    pub status: String,
}

struct Ctx<'a> {
    args: &'a RunArgs,
    file: &'a FileConfig,
    python: PathBuf,
    eval_data: String,
    seed_data: String,
    tolerance: f64,
    work: PathBuf,
    scratch: bool,
}

fn usage(msg: String) -> CliError {
    CliError::Usage(anyhow!(msg))
}

fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Failed(e.into())
}

/// Runs rounds 1..=`rounds`.
pub async fn run_rounds(args: &RunArgs, file: &FileConfig, rounds: u32) -> CliResult {
    let b = &args.bootstrap;
    let fb = &file.bootstrap;
    let output = args
        .round_args
        .output
        .clone()
        .or(file.output.clone())
        .ok_or_else(|| usage("--output is required".into()))?;
    let need = |v: Option<String>, name: &str| {
        v.ok_or_else(|| {
            usage(format!(
                "--rounds {rounds} needs --{name} (or {} in [bootstrap])",
                name.replace('-', "_")
            ))
        })
    };
    let (seed_data, eval_data) = if rounds > 1 {
        (
            need(b.seed_data.clone().or(fb.seed_data.clone()), "seed-data")?,
            need(b.eval_data.clone().or(fb.eval_data.clone()), "eval-data")?,
        )
    } else {
        (
            b.seed_data
                .clone()
                .or(fb.seed_data.clone())
                .unwrap_or_default(),
            b.eval_data
                .clone()
                .or(fb.eval_data.clone())
                .unwrap_or_default(),
        )
    };
    let python = b.python.clone().or(fb.python.clone()).unwrap_or_else(|| {
        let venv = PathBuf::from(".venv/bin/python");
        if venv.is_file() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let cache = args.options.cache(file);
    let work = cache
        .join("train")
        .join(format!("{:.16x}", Sha256::digest(output.as_bytes())));
    let ctx = Ctx {
        args,
        file,
        python,
        eval_data,
        seed_data,
        tolerance: b.tolerance.or(fb.tolerance).unwrap_or(0.02),
        work,
        scratch: match b.train_init.clone().or(fb.train_init.clone()).as_deref() {
            None | Some("previous") => false,
            Some("scratch") => true,
            Some(other) => {
                return Err(usage(format!(
                    "--train-init must be previous or scratch, not '{other}'"
                )));
            }
        },
    };
    let run_loc = store::resolve(
        &format!("{}/_run.json", output.trim_end_matches('/')),
        &file.store_options(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let mut record: RunRecord = match run_loc.get_bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => RunRecord::default(),
    };
    record.rounds_requested = rounds;
    record.status = "running".into();
    let mut cap_url = args
        .round_args
        .captioner
        .clone()
        .or(file.captioner.clone())
        .ok_or_else(|| usage("--captioner is required".into()))?;
    let mut fil_url = args
        .round_args
        .filter
        .clone()
        .or(file.filter.clone())
        .ok_or_else(|| usage("--filter is required".into()))?;
    for r in 1..=rounds {
        let mut round_args = args.round_args.clone();
        round_args.captioner = Some(cap_url.clone());
        round_args.filter = Some(fil_url.clone());
        let (spec, _) = round_spec(&round_args, &args.options, file, r).await?;
        let (cap_sha, fil_sha) = (
            spec.captioner.bundle_json_sha256.clone(),
            spec.filter.bundle_json_sha256.clone(),
        );
        let run = run_round(spec, args, file).await?;
        let manifest = &run.manifest;
        crate::cluster::print_summary(manifest, &round_dir(&output, r));
        let rdir = round_dir(&output, r);
        let (captioner_eval, filter_eval) = if ctx.eval_data.is_empty() {
            (Metrics::new(), Metrics::new())
        } else {
            round_eval(&ctx, &rdir, &cap_url, &fil_url).await?
        };
        let mut rec = RoundRecord {
            round: r,
            captioner: (cap_url.clone(), cap_sha),
            filter: (fil_url.clone(), fil_sha),
            images_per_second: run.images_per_second(),
            totals: manifest.totals.clone(),
            web_keep_rate: manifest.web_keep_rate,
            synthetic_keep_rate: manifest.synthetic_keep_rate,
            seconds: run.seconds,
            captioner_eval,
            filter_eval,
            promotion: None,
        };
        // A round finished by an earlier run keeps that run's timing.
        if rec.images_per_second.is_none()
            && let Some(old) = record.rounds.iter().find(|x| x.round == r)
        {
            rec.seconds = old.seconds;
            rec.images_per_second = old.images_per_second;
        }
        if r < rounds {
            let promotion = trainer_stage(&ctx, r, &rdir, &cap_url, &fil_url, &rec).await?;
            rec.promotion = Some(promotion.clone());
            upsert(&mut record, rec);
            if !promotion.promoted {
                record.status = "stopped".into();
                write_run(&run_loc, &record).await?;
                print_table(&record);
                return Err(failed(anyhow!(
                    "round {r}'s retrained bundles were not promoted (tolerance {:.3}): captioner exact match {:.4} now vs {:.4} before, filter ROC-AUC {:.4} now vs {:.4} before; the run stops here (see {rdir}/promotion.json)",
                    promotion.tolerance,
                    promotion.captioner_exact_match.1,
                    promotion.captioner_exact_match.0,
                    promotion.filter_auc.1,
                    promotion.filter_auc.0
                )));
            }
            cap_url = promotion.captioner.clone();
            fil_url = promotion.filter.clone();
            // The promoted bundles were evaluated on the same split by their export: record
            // those figures as the next round's instead of evaluating again.
            let next_eval = store::resolve(
                &format!("{}/eval.json", round_dir(&output, r + 1)),
                &file.store_options(),
            )
            .map_err(failed)?;
            let pair = (
                promotion.captioner_eval.clone(),
                promotion.filter_eval.clone(),
            );
            next_eval
                .put_bytes(serde_json::to_vec_pretty(&pair).map_err(failed)?)
                .await
                .map_err(failed)?;
        } else {
            upsert(&mut record, rec);
        }
        write_run(&run_loc, &record).await?;
    }
    record.status = "done".into();
    write_run(&run_loc, &record).await?;
    print_table(&record);
    Ok(())
}

fn upsert(record: &mut RunRecord, rec: RoundRecord) {
    record.rounds.retain(|x| x.round != rec.round);
    record.rounds.push(rec);
    record.rounds.sort_by_key(|x| x.round);
}

async fn write_run(loc: &Location, record: &RunRecord) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(record).map_err(failed)?;
    loc.put_bytes(json).await.map_err(failed)
}

fn print_table(record: &RunRecord) {
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

/// Runs `python -m capfilt_trainer ARGS`, streaming its output into the log; returns stdout.
fn trainer(ctx: &Ctx<'_>, args: &[String]) -> Result<String, CliError> {
    tracing::info!(command = %format!("{} -m capfilt_trainer {}", ctx.python.display(), args.join(" ")), "trainer stage");
    let mut child = Command::new(&ctx.python)
        .args(["-m", "capfilt_trainer"])
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| usage(format!("cannot run {} (set --python or CAPFILT_PYTHON to a Python with capfilt_trainer): {e}", ctx.python.display())))?;
    let stderr = child.stderr.take();
    let logger = std::thread::spawn(move || {
        if let Some(err) = stderr {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let line = line.trim_end();
                if !line.is_empty()
                    && !line.contains("Loading weights")
                    && !line.contains("Writing model shards")
                {
                    tracing::info!(target: "capfilt::trainer", "{line}");
                }
            }
        }
    });
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            tracing::debug!(target: "capfilt::trainer", "{line}");
            out.push_str(&line);
            out.push('\n');
        }
    }
    let status = child.wait().map_err(failed)?;
    let _ = logger.join();
    if !status.success() {
        return Err(failed(anyhow!(
            "the trainer stage failed ({status}): python -m capfilt_trainer {}",
            args.join(" ")
        )));
    }
    Ok(out)
}

/// A bundle URL as a local folder the trainer can read (remote bundles come from the cache).
async fn local_bundle(ctx: &Ctx<'_>, url: &str) -> Result<PathBuf, CliError> {
    let b = Bundle::fetch(
        url,
        &ctx.args.options.cache(ctx.file),
        &ctx.file.store_options(),
    )
    .await
    .map_err(|e| usage(e.to_string()))?;
    Ok(b.dir)
}

fn eval_figures(out: &str) -> Result<Metrics, CliError> {
    let last = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("{}");
    serde_json::from_str(last)
        .map_err(|e| failed(anyhow!("the trainer's eval printed no figures: {e}")))
}

/// Figures of a round's bundles on the eval split, cached in `{round}/eval.json`.
async fn round_eval(
    ctx: &Ctx<'_>,
    rdir: &str,
    cap: &str,
    fil: &str,
) -> Result<(Metrics, Metrics), CliError> {
    let loc =
        store::resolve(&format!("{rdir}/eval.json"), &ctx.file.store_options()).map_err(failed)?;
    if let Ok(bytes) = loc.get_bytes().await
        && let Ok(v) = serde_json::from_slice::<(Metrics, Metrics)>(&bytes)
    {
        return Ok(v);
    }
    let mut figures = Vec::new();
    for url in [cap, fil] {
        let dir = local_bundle(ctx, url).await?;
        let out = trainer(
            ctx,
            &[
                "eval".into(),
                "--bundle".into(),
                dir.display().to_string(),
                "--data".into(),
                ctx.eval_data.clone(),
                "--no-record".into(),
                "--json".into(),
            ],
        )?;
        figures.push(eval_figures(&out)?);
    }
    let pair = (figures.remove(0), figures.remove(0));
    loc.put_bytes(serde_json::to_vec_pretty(&pair).map_err(failed)?)
        .await
        .map_err(failed)?;
    Ok(pair)
}

/// (shard id, committed attempt) of a finished round, from its manifest.
async fn manifest_shards(rdir: &str, ctx: &Ctx<'_>) -> Result<Vec<(String, u32)>, CliError> {
    let loc = store::resolve(&format!("{rdir}/_manifest.json"), &ctx.file.store_options())
        .map_err(failed)?;
    let m: RoundManifest =
        serde_json::from_slice(&loc.get_bytes().await.map_err(failed)?).map_err(failed)?;
    Ok(m.shards
        .iter()
        .map(|s| (s.shard.shard_id.clone(), s.attempts))
        .collect())
}

/// Copies a local folder under an object-store prefix.
async fn upload_dir(dir: &Path, dest: &Location) -> Result<(), CliError> {
    for entry in std::fs::read_dir(dir).map_err(failed)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let child = dest.child(&name);
        if entry.path().is_dir() {
            Box::pin(upload_dir(&entry.path(), &child)).await?;
        } else {
            child
                .put_bytes(std::fs::read(entry.path()).map_err(failed)?)
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// Trains, exports, evaluates and gates the bundles for round `r + 1`.
async fn trainer_stage(
    ctx: &Ctx<'_>,
    r: u32,
    rdir: &str,
    cap_url: &str,
    fil_url: &str,
    current: &RoundRecord,
) -> Result<Promotion, CliError> {
    let promo_loc = store::resolve(&format!("{rdir}/promotion.json"), &ctx.file.store_options())
        .map_err(failed)?;
    if let Ok(bytes) = promo_loc.get_bytes().await
        && let Ok(p) = serde_json::from_slice::<Promotion>(&bytes)
    {
        tracing::info!(
            round = r,
            promoted = p.promoted,
            "trainer stage already done: reusing its bundles"
        );
        return Ok(p);
    }
    let started = Instant::now();
    // The work folder is keyed by everything the training depends on, so a resumed stage reuses
    // its checkpoints while a changed input or setting never picks up stale ones.
    let shards: Vec<(String, u32)> = manifest_shards(rdir, ctx).await?;
    let key = Sha256::digest(
        serde_json::json!({
            "round": r, "captioner": current.captioner, "filter": current.filter,
            "seed": ctx.seed_data, "eval": ctx.eval_data, "scratch": ctx.scratch,
            "steps": [ctx.args.bootstrap.captioner_steps, ctx.args.bootstrap.filter_steps,
                      ctx.file.bootstrap.captioner_steps, ctx.file.bootstrap.filter_steps],
            "totals": current.totals, "shards": shards,
        })
        .to_string()
        .as_bytes(),
    );
    let work = ctx.work.join(format!("round-{r:04}-{:.16x}", key));
    let b = &ctx.args.bootstrap;
    let fb = &ctx.file.bootstrap;
    let steps = |kind: &str| match kind {
        "captioner" => b.captioner_steps.or(fb.captioner_steps).unwrap_or(1500),
        _ => b.filter_steps.or(fb.filter_steps).unwrap_or(600),
    };
    let mut new_urls = BTreeMap::new();
    let mut new_eval = BTreeMap::new();
    for (kind, cur) in [("captioner", cap_url), ("filter", fil_url)] {
        let cur_dir = local_bundle(ctx, cur).await?;
        let ckpt = work.join("ckpt").join(kind);
        let bundle_dir = work.join("bundles").join(kind);
        if !ckpt.join("train.json").is_file() {
            // Fine-tune from the current bundle's checkpoint (the seed models play the role of
            // BLIP's pre-trained weights) on the seed set plus this round's cleaned pairs.
            let lr = match (kind, ctx.scratch) {
                ("captioner", false) => "1e-3",
                ("captioner", true) => "2e-3",
                (_, false) => "5e-4",
                (_, true) => "1e-3",
            };
            let init: Vec<String> = if ctx.scratch {
                vec!["--size".into(), "small".into()]
            } else {
                vec![
                    "--init-from".into(),
                    cur_dir.join("checkpoint").display().to_string(),
                ]
            };
            let mut train_args: Vec<String> = vec![
                "train".into(),
                "--kind".into(),
                kind.into(),
                "--data".into(),
                ctx.seed_data.clone(),
                "--round".into(),
                rdir.to_string(),
                "--out".into(),
                ckpt.display().to_string(),
            ];
            train_args.extend(init);
            trainer(
                ctx,
                &[
                    train_args,
                    vec![
                        "--steps".into(),
                        steps(kind).to_string(),
                        "--batch-size".into(),
                        "64".into(),
                        "--lr".into(),
                        lr.into(),
                        "--seed".into(),
                        r.to_string(),
                    ],
                ]
                .concat(),
            )?;
        }
        if Bundle::open(&bundle_dir).is_err() {
            let _ = std::fs::remove_dir_all(&bundle_dir);
            let parent = Bundle::open(&cur_dir).map(|b| b.sha256).unwrap_or_default();
            trainer(
                ctx,
                &[
                    "export".into(),
                    "--checkpoint".into(),
                    ckpt.display().to_string(),
                    "--kind".into(),
                    kind.into(),
                    "--out".into(),
                    bundle_dir.display().to_string(),
                    "--name".into(),
                    format!("round-{:04}-{kind}", r + 1),
                    "--eval".into(),
                    ctx.eval_data.clone(),
                    "--verify-images".into(),
                    ctx.eval_data.clone(),
                    "--parent".into(),
                    parent,
                ],
            )?;
        }
        let bundle = Bundle::open(&bundle_dir).map_err(failed)?;
        let url = format!("{rdir}/bundles/{kind}");
        let dest = store::resolve(&url, &ctx.file.store_options()).map_err(failed)?;
        let same_place = dest.local.as_ref().is_some_and(|p| p == &bundle_dir);
        if !same_place {
            upload_dir(&bundle_dir, &dest).await?;
        }
        new_eval.insert(kind, bundle.manifest.provenance.metrics.clone());
        new_urls.insert(kind, url);
    }
    let get = |m: &Metrics, k: &str| m.get(k).copied().unwrap_or(0.0);
    let cap_new = new_eval.remove("captioner").unwrap_or_default();
    let fil_new = new_eval.remove("filter").unwrap_or_default();
    let cap_pair = (
        get(&current.captioner_eval, "exact_match"),
        get(&cap_new, "exact_match"),
    );
    let fil_pair = (get(&current.filter_eval, "auc"), get(&fil_new, "auc"));
    let promoted =
        cap_pair.1 >= cap_pair.0 - ctx.tolerance && fil_pair.1 >= fil_pair.0 - ctx.tolerance;
    let p = Promotion {
        promoted,
        tolerance: ctx.tolerance,
        captioner: new_urls.remove("captioner").unwrap_or_default(),
        filter: new_urls.remove("filter").unwrap_or_default(),
        captioner_exact_match: cap_pair,
        filter_auc: fil_pair,
        captioner_eval: cap_new,
        filter_eval: fil_new,
        training_seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(round = r, promoted, captioner_exact = ?cap_pair, filter_auc = ?fil_pair, "promotion gate");
    promo_loc
        .put_bytes(serde_json::to_vec_pretty(&p).map_err(failed)?)
        .await
        .map_err(failed)?;
    Ok(p)
}
