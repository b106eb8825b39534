//! The bootstrap run (DESIGN.md §4, §6): one long-lived coordinator drives rounds 1..N for
//! whatever workers are connected. For each round it plans the input, serves the round's leases,
//! waits for the manifest, runs the trainer stage ([`trainer::TrainerRunner`]), evaluates, applies
//! the promotion gate ([`gate`]) and opens the next round with the promoted bundles.
//!
//! The run is one state machine ([`phase`]); every phase change is recorded in
//! `{output}/_run.json` ([`record`]) before the next phase's work starts, and every phase's
//! work is idempotent, so a coordinator killed at any point and started again with the same
//! command continues where it was. One coordinator holds an output at a time
//! ([`crate::fence`]).

pub mod gate;
pub mod kubernetes;
pub mod phase;
pub mod record;
pub mod trainer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capfilt_proto::v1;
use capfilt_schemas::BundleKind;
use capfilt_schemas::bundle::BundleManifest;
use capfilt_schemas::records::RoundManifest;
use capfilt_schemas::store::{self, Location, StoreError};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::fence::{FenceError, OutputLease};
use crate::registry::unix_ms;
use crate::round::{Round, RoundError, RoundSpec};
use crate::service::{CoordinatorService, RunView};
use phase::{RunEvent, RunPhase, transition};
use record::{BundlePair, Metrics, Promotion, RunRecord, create_json, read_json, write_json};
use trainer::{TrainerError, TrainerJob, TrainerRunner};

/// Where each retraining starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainInit {
    /// From the current bundles' checkpoints (BLIP's fine-tuning from pre-trained weights).
    Previous,
    /// New random weights of the `small` preset.
    Scratch,
}

/// A bootstrap run's settings.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// The first round's number (1 unless a single round `--round R` is run).
    pub first_round: u32,
    /// The last round's number: the run is done after it.
    pub rounds: u32,
    /// The run's output prefix (rounds write under `{output}/round-NNNN/`).
    pub output: String,
    /// Extra object-store options.
    pub store_options: Vec<(String, String)>,
    /// Round 1's bundles.
    pub initial: BundlePair,
    /// The clean seed set every retraining includes.
    pub seed_data: String,
    /// The held-out split with ground truth for the gate (empty: no evaluation).
    pub eval_data: String,
    /// Training steps of each new captioner.
    pub captioner_steps: u32,
    /// Training steps of each new filter.
    pub filter_steps: u32,
    /// How much lower a new bundle's gate figure may be and still be promoted.
    pub tolerance: f64,
    /// Where each retraining starts.
    pub train_init: TrainInit,
    /// The output lease's time to live (a dead coordinator's output is free after it).
    pub output_lease_ttl: Duration,
}

/// Builds a round's spec from the run's settings and the round's bundles (fetching the bundles
/// to read their hashes and generation defaults). Implemented by the command line, which owns
/// the flags and the config file.
pub trait RoundPlanner: Send + Sync {
    /// The spec of round `round` with `bundles`.
    fn spec<'a>(
        &'a self,
        round: u32,
        bundles: &'a BundlePair,
    ) -> BoxFuture<'a, Result<RoundSpec, String>>;
}

/// Why a bootstrap run stopped without finishing.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Another live coordinator holds the output.
    #[error(transparent)]
    Fence(#[from] FenceError),
    /// A round could not be planned or opened.
    #[error(transparent)]
    Round(#[from] RoundError),
    /// A round's spec could not be built (bad bundle, bad config).
    #[error("round {round}: {message}")]
    Spec {
        /// Round.
        round: u32,
        /// Why.
        message: String,
    },
    /// Store access failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The trainer stage failed.
    #[error(transparent)]
    Trainer(#[from] TrainerError),
    /// The trainer produced unusable bundles or figures.
    #[error("round {round}'s trainer stage: {message}")]
    TrainerOutput {
        /// Round.
        round: u32,
        /// What is wrong.
        message: String,
    },
    /// The gate lacks a figure.
    #[error(transparent)]
    Gate(#[from] gate::MissingFigure),
    /// The recorded run does not fit this command.
    #[error("{0}")]
    Config(String),
    /// The gate refused the retrained bundles: the run stopped.
    #[error("{message}")]
    Refused {
        /// The run as recorded.
        record: Box<RunRecord>,
        /// Both sets of figures.
        message: String,
    },
    /// Shut down before the run finished; the same command continues it.
    #[error(
        "interrupted in phase {phase} of round {round}; everything finished is kept in {output}: run the same command again to continue"
    )]
    Interrupted {
        /// The phase.
        phase: &'static str,
        /// The round.
        round: u32,
        /// The output.
        output: String,
    },
}

impl BootstrapError {
    /// Errors the user fixes by changing the command or the config (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            BootstrapError::Fence(FenceError::Held { .. })
            | BootstrapError::Config(_)
            | BootstrapError::Spec { .. } => true,
            BootstrapError::Round(e) => matches!(
                e,
                RoundError::Plan(_)
                    | RoundError::PlanChanged { .. }
                    | RoundError::Store(StoreError::BadLocation { .. })
            ),
            _ => false,
        }
    }
}

/// `{output}/round-{r:04}`.
pub fn round_dir(output: &str, round: u32) -> String {
    format!("{}/round-{round:04}", output.trim_end_matches('/'))
}

/// The bootstrap controller.
pub struct Controller {
    config: BootstrapConfig,
    service: CoordinatorService,
    planner: Arc<dyn RoundPlanner>,
    runner: Arc<dyn TrainerRunner>,
    http: Option<TcpListener>,
}

/// The round being served, as the controller tracks it.
struct Serving {
    started: Instant,
    rows_before: u64,
}

impl Controller {
    /// A controller driving `service` (which the caller serves, e.g. with [`serve`]).
    pub fn new(
        config: BootstrapConfig,
        service: CoordinatorService,
        planner: Arc<dyn RoundPlanner>,
        runner: Arc<dyn TrainerRunner>,
    ) -> Self {
        Self {
            config,
            service,
            planner,
            runner,
            http: None,
        }
    }

    /// Also serve the HTTP port (metrics, health, status page, reports) on `listener` while
    /// [`serve`] runs.
    pub fn with_http(mut self, listener: TcpListener) -> Self {
        self.http = Some(listener);
        self
    }

    fn loc(&self, url: &str) -> Result<Location, StoreError> {
        store::resolve(url, &self.config.store_options)
    }

    fn rdir(&self, round: u32) -> String {
        round_dir(&self.config.output, round)
    }

    /// Runs the bootstrap run until it is done, stopped by the gate, failed, or `shutdown`
    /// resolves. Returns the run record.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunRecord, BootstrapError> {
        let root = self.loc(&self.config.output)?;
        let lease =
            OutputLease::acquire(&root, self.service.instance(), self.config.output_lease_ttl)
                .await?;
        tracing::info!(output = %self.config.output, epoch = lease.epoch(), instance = %self.service.instance(), "holding the output");
        let keep = tokio::spawn(lease.clone().keep_alive());
        tokio::pin!(shutdown);
        let result = tokio::select! {
            r = self.drive() => r,
            lost = keep_lost(keep) => Err(lost.into()),
            () = &mut shutdown => {
                let rec: Option<RunRecord> = read_json(&root.child("_run.json")).await.ok().flatten();
                let phase = rec.map(|r| r.phase).unwrap_or(RunPhase::Planning { round: self.config.first_round });
                Err(BootstrapError::Interrupted { phase: phase.name(), round: phase.round(), output: self.config.output.clone() })
            }
        };
        self.service.clear_round();
        if !matches!(result, Err(BootstrapError::Fence(FenceError::Lost { .. }))) {
            lease.release().await;
        }
        result
    }

    /// A resumed run must be given the bundles it was started with, by URL and by content:
    /// otherwise its recorded rounds (and a finished run's results) belong to other bundles and
    /// would be reused silently. A round still in progress is guarded by its `_plan.json`.
    async fn check_same_initial_bundles(
        &self,
        record: &RunRecord,
        run: &str,
    ) -> Result<(), BootstrapError> {
        let Some(first) = record.rounds.first() else {
            return Ok(());
        };
        let given = &self.config.initial;
        let advice = "write to a new --output, or pass the bundles the run was started with";
        if (first.captioner.0.as_str(), first.filter.0.as_str())
            != (given.captioner.as_str(), given.filter.as_str())
        {
            return Err(BootstrapError::Config(format!(
                "{run} was started with captioner {} and filter {}, not {} and {}: {advice}",
                first.captioner.0, first.filter.0, given.captioner, given.filter
            )));
        }
        let spec = self
            .planner
            .spec(first.round, given)
            .await
            .map_err(|message| BootstrapError::Spec {
                round: first.round,
                message,
            })?;
        for (kind, recorded, now) in [
            (
                "captioner",
                &first.captioner,
                &spec.captioner.bundle_json_sha256,
            ),
            ("filter", &first.filter, &spec.filter.bundle_json_sha256),
        ] {
            if &recorded.1 != now {
                return Err(BootstrapError::Config(format!(
                    "{run} recorded round {} with {kind} {} of sha256 {:.12}, but that bundle is now {:.12} (its contents changed): {advice}",
                    first.round, recorded.0, recorded.1, now
                )));
            }
        }
        Ok(())
    }

    /// Loads or starts the run record and walks the phases.
    async fn drive(&self) -> Result<RunRecord, BootstrapError> {
        let run_loc = self.loc(&format!(
            "{}/_run.json",
            self.config.output.trim_end_matches('/')
        ))?;
        let mut record = match read_json::<RunRecord>(&run_loc).await {
            Ok(Some(r)) => r,
            Ok(None) => RunRecord::new(
                self.config.rounds,
                self.config.initial.clone(),
                self.config.first_round,
            ),
            Err(e) => {
                return Err(BootstrapError::Config(format!(
                    "{e}: it is not a run record of this version; move it away to start the run anew"
                )));
            }
        };
        if record.bundles.captioner.is_empty() {
            record.bundles = self.config.initial.clone();
        }
        self.check_same_initial_bundles(&record, &run_loc.display)
            .await?;
        record.rounds_requested = self.config.rounds;
        record.coordinator = self.service.instance().to_string();
        let mut phase = record.phase.clone();
        if matches!(phase, RunPhase::Failed { .. }) {
            phase = self.step(&phase, RunEvent::Resume)?;
            tracing::info!(
                phase = phase.name(),
                round = phase.round(),
                "resuming the phase that failed"
            );
        }
        if let RunPhase::Done { round } = phase
            && round < self.config.rounds
        {
            phase = self.step(&phase, RunEvent::Next)?;
        }
        if phase.round() > self.config.rounds
            && !matches!(phase, RunPhase::Done { .. } | RunPhase::Stopped { .. })
        {
            return Err(BootstrapError::Config(format!(
                "{} records round {} in progress, more than the {} rounds asked for: ask for at least {} rounds",
                run_loc.display,
                phase.round(),
                self.config.rounds,
                phase.round()
            )));
        }
        if phase.is_final() {
            tracing::info!(
                phase = phase.name(),
                round = phase.round(),
                "the run is already finished: nothing to do"
            );
        }
        self.persist(&run_loc, &mut record, &phase).await?;
        let mut serving: Option<Serving> = None;
        let mut training_seconds = 0.0;
        loop {
            let r = phase.round();
            let outcome: Result<RunEvent, BootstrapError> = match &phase {
                RunPhase::Planning { .. } => self
                    .open_round(&record, r, &mut serving)
                    .await
                    .map(|()| RunEvent::Planned),
                RunPhase::Serving { .. } => {
                    if serving.is_none() {
                        self.open_round(&record, r, &mut serving).await?;
                    }
                    self.wait_manifest(r, &mut record, serving.take())
                        .await
                        .map(|()| RunEvent::ManifestWritten)
                }
                RunPhase::ManifestWritten { .. } => {
                    self.ensure_report(r).await;
                    // Every round's record carries its bundles' figures when there is an eval
                    // split (recorded by the promotion before, or evaluated now), the last too.
                    let missing = record.round(r).is_none_or(|x| x.captioner_eval.is_empty());
                    if !self.config.eval_data.is_empty() && missing {
                        self.evaluate(r, &mut record).await?;
                    }
                    Ok(RunEvent::Next)
                }
                RunPhase::Promoted { .. } => {
                    self.promote(r, &mut record).await?;
                    Ok(RunEvent::Next)
                }
                RunPhase::Training { .. } => {
                    let t = Instant::now();
                    let done = self.train(r, &record).await;
                    training_seconds += t.elapsed().as_secs_f64();
                    done.map(|()| RunEvent::Trained)
                }
                RunPhase::Evaluating { .. } => self
                    .evaluate(r, &mut record)
                    .await
                    .map(|()| RunEvent::Evaluated),
                RunPhase::Gating { .. } => self
                    .gate(r, &mut record, training_seconds)
                    .await
                    .map(|promoted| RunEvent::Gate { promoted }),
                RunPhase::Done { .. } => {
                    self.finish(&record, &phase);
                    return Ok(record);
                }
                RunPhase::Stopped { .. } => {
                    self.finish(&record, &phase);
                    let message = refusal_message(r, &self.rdir(r), record.round(r));
                    return Err(BootstrapError::Refused {
                        record: Box::new(record),
                        message,
                    });
                }
                RunPhase::Failed { error, .. } => {
                    return Err(BootstrapError::Config(error.clone()));
                }
            };
            match outcome {
                Ok(event) => {
                    phase = self.step(&phase, event)?;
                    self.persist(&run_loc, &mut record, &phase).await?;
                }
                Err(e) => {
                    tracing::error!(phase = phase.name(), round = r, error = %e, "run phase failed");
                    if !e.is_usage() {
                        let failed = self.step(&phase, RunEvent::Error(e.to_string()))?;
                        self.persist(&run_loc, &mut record, &failed).await?;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn step(&self, phase: &RunPhase, event: RunEvent) -> Result<RunPhase, BootstrapError> {
        transition(phase, &event, self.config.rounds)
            .map_err(|e| BootstrapError::Config(format!("internal: {e}")))
    }

    /// Records `phase` in `_run.json`, then tells workers and status.
    async fn persist(
        &self,
        loc: &Location,
        record: &mut RunRecord,
        phase: &RunPhase,
    ) -> Result<(), BootstrapError> {
        if record.phase != *phase {
            tracing::info!(
                from = record.phase.name(),
                to = phase.name(),
                round = phase.round(),
                "run phase"
            );
        }
        record.phase = phase.clone();
        record.status = RunRecord::status_of(phase).to_string();
        record.updated_unix_ms = unix_ms();
        write_json(loc, record).await?;
        let r = phase.round();
        let waiting_for = match phase {
            RunPhase::Planning { .. } => format!("planning round {r}"),
            RunPhase::ManifestWritten { .. } => format!("round {r}'s manifest"),
            RunPhase::Training { .. } => format!("training after round {r}"),
            RunPhase::Evaluating { .. } => format!("evaluating after round {r}"),
            RunPhase::Gating { .. } => format!("the promotion gate after round {r}"),
            RunPhase::Promoted { .. } => format!("round {}", r + 1),
            RunPhase::Failed { .. } => {
                format!("the run failed in round {r}: fix and restart the coordinator")
            }
            _ => String::new(),
        };
        self.service.set_run_view(RunView {
            status: Some(v1::RunStatus {
                phase: phase.name().to_string(),
                round: r,
                rounds_requested: record.rounds_requested,
                status: record.status.clone(),
                error: match phase {
                    RunPhase::Failed { error, .. } => error.clone(),
                    _ => String::new(),
                },
                rounds_json: serde_json::to_string(&record.rounds).unwrap_or_default(),
                trainer: self.runner.describe(),
            }),
            finished: phase.is_final(),
            waiting_for,
        });
        Ok(())
    }

    /// Writes `round-NNNN/report/` unless it is complete already. A report that cannot be
    /// written is logged, not fatal: it is a view of committed outputs, and `capfilt report`
    /// writes it again at any time.
    async fn ensure_report(&self, round: u32) {
        let dir = self.rdir(round);
        let opts = &self.config.store_options;
        match capfilt_report::exists(&dir, opts).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(round, error = %e, "cannot check for the round report"),
        }
        let options = capfilt_report::ReportOptions::default();
        if let Err(e) = capfilt_report::write_report(&dir, opts, &options).await {
            tracing::error!(round, error = %e, "round report not written; write it with `capfilt report --round {dir}`");
        }
    }

    fn finish(&self, record: &RunRecord, phase: &RunPhase) {
        tracing::info!(
            phase = phase.name(),
            rounds = record.rounds.len(),
            "run finished"
        );
    }

    async fn open_round(
        &self,
        record: &RunRecord,
        round: u32,
        serving: &mut Option<Serving>,
    ) -> Result<(), BootstrapError> {
        let spec = self
            .planner
            .spec(round, &record.bundles)
            .await
            .map_err(|message| BootstrapError::Spec { round, message })?;
        let opened = Round::open(spec).await?;
        let rows_before = opened.rows_committed();
        tracing::info!(
            round,
            shards = opened.plan().shards.len(),
            rows = opened.plan().rows(),
            already_committed = opened.count("committed"),
            captioner = %record.bundles.captioner,
            filter = %record.bundles.filter,
            "round opened"
        );
        self.service.install_round(opened);
        *serving = Some(Serving {
            started: Instant::now(),
            rows_before,
        });
        Ok(())
    }

    async fn wait_manifest(
        &self,
        round: u32,
        record: &mut RunRecord,
        serving: Option<Serving>,
    ) -> Result<(), BootstrapError> {
        let mut done = self.service.subscribe_done();
        let manifest: RoundManifest = loop {
            if let Some(m) = done.borrow_and_update().clone()
                && m.round == round
            {
                break m;
            }
            if done.changed().await.is_err() {
                return Err(BootstrapError::Config(
                    "internal: the coordinator service stopped".into(),
                ));
            }
        };
        self.service.clear_round();
        let seconds = serving
            .as_ref()
            .map_or(0.0, |s| s.started.elapsed().as_secs_f64());
        let rows_new = manifest
            .totals
            .rows_in
            .saturating_sub(serving.as_ref().map_or(0, |s| s.rows_before));
        let rr = record.round_mut(round);
        rr.captioner = (
            manifest.captioner.url.clone(),
            manifest.captioner.bundle_json_sha256.clone(),
        );
        rr.filter = (
            manifest.filter.url.clone(),
            manifest.filter.bundle_json_sha256.clone(),
        );
        rr.totals = manifest.totals.clone();
        rr.web_keep_rate = manifest.web_keep_rate;
        rr.synthetic_keep_rate = manifest.synthetic_keep_rate;
        rr.quarantined = manifest.quarantined().count() as u64;
        if rows_new > 0 {
            rr.seconds = seconds;
            rr.images_per_second = Some(rows_new as f64 / seconds.max(1e-9));
        }
        tracing::info!(
            round,
            rows = manifest.totals.rows_in,
            web_kept = manifest.totals.web_kept,
            synthetic_kept = manifest.totals.synthetic_kept,
            "round manifest written"
        );
        Ok(())
    }

    fn job_spec_loc(&self, round: u32, task: &str) -> Result<(Location, String), StoreError> {
        let url = format!("{}/trainer/{task}.json", self.rdir(round));
        Ok((self.loc(&url)?, url))
    }

    /// Runs the trainer stage: new bundles under `round-NNNN/bundles/`.
    async fn train(&self, round: u32, record: &RunRecord) -> Result<(), BootstrapError> {
        if self.config.seed_data.is_empty() || self.config.eval_data.is_empty() {
            return Err(BootstrapError::Config(format!(
                "--rounds {} needs --seed-data and --eval-data (or seed_data / eval_data in [bootstrap])",
                self.config.rounds
            )));
        }
        let rdir = self.rdir(round);
        let c = &self.config;
        let scratch = c.train_init == TrainInit::Scratch;
        let model = |kind: &str, current: &str, steps: u32| {
            let lr = match (kind, scratch) {
                ("captioner", false) => 1e-3,
                ("captioner", true) => 2e-3,
                (_, false) => 5e-4,
                (_, true) => 1e-3,
            };
            serde_json::json!({
                "kind": kind, "current": current, "out": format!("{rdir}/bundles/{kind}"),
                "name": format!("round-{:04}-{kind}", round + 1), "steps": steps, "lr": lr,
                "init": if scratch { "scratch" } else { "previous" }, "size": "small", "batch_size": 64,
            })
        };
        let spec = serde_json::json!({
            "task": "train", "round": round, "round_url": rdir, "seed": round,
            "seed_data": c.seed_data, "eval_data": c.eval_data,
            "models": [
                model("captioner", &record.bundles.captioner, c.captioner_steps),
                model("filter", &record.bundles.filter, c.filter_steps),
            ],
        });
        let (loc, url) = self.job_spec_loc(round, "train")?;
        write_json(&loc, &spec).await?;
        self.runner
            .run(&TrainerJob::stage(round, "train", url))
            .await?;
        for kind in [BundleKind::Captioner, BundleKind::Filter] {
            self.new_bundle(round, kind).await?;
        }
        Ok(())
    }

    /// A bundle the trainer stage wrote: its URL, sha256 of bundle.json and figures.
    async fn new_bundle(
        &self,
        round: u32,
        kind: BundleKind,
    ) -> Result<(String, String, Metrics), BootstrapError> {
        let name = match kind {
            BundleKind::Captioner => "captioner",
            BundleKind::Filter => "filter",
        };
        let url = format!("{}/bundles/{name}", self.rdir(round));
        let loc = self.loc(&format!("{url}/bundle.json"))?;
        let bad = |message: String| BootstrapError::TrainerOutput { round, message };
        let bytes = loc
            .get_bytes()
            .await
            .map_err(|e| bad(format!("no {name} bundle: {e}")))?;
        let json = String::from_utf8_lossy(&bytes);
        let manifest =
            BundleManifest::from_json(&loc.display, &json).map_err(|e| bad(e.to_string()))?;
        if manifest.kind != kind {
            return Err(bad(format!(
                "{url} is a {:?} bundle, not a {name}",
                manifest.kind
            )));
        }
        let sha = format!("{:x}", Sha256::digest(&bytes));
        Ok((url, sha, manifest.provenance.metrics))
    }

    /// Figures of round `round`'s bundles (eval.json, by the trainer's eval when missing).
    async fn evaluate(&self, round: u32, record: &mut RunRecord) -> Result<(), BootstrapError> {
        let eval_url = format!("{}/eval.json", self.rdir(round));
        let eval_loc = self.loc(&eval_url)?;
        let figures = match read_json::<(Metrics, Metrics)>(&eval_loc).await? {
            Some(f) => f,
            None => {
                let spec = serde_json::json!({
                    "task": "eval", "eval_data": self.config.eval_data, "out": eval_url,
                    "bundles": {"captioner": record.bundles.captioner, "filter": record.bundles.filter},
                });
                let (loc, url) = self.job_spec_loc(round, "eval")?;
                write_json(&loc, &spec).await?;
                self.runner
                    .run(&TrainerJob::stage(round, "eval", url))
                    .await?;
                read_json::<(Metrics, Metrics)>(&eval_loc)
                    .await?
                    .ok_or_else(|| BootstrapError::TrainerOutput {
                        round,
                        message: format!("the eval job wrote no {eval_url}"),
                    })?
            }
        };
        let rr = record.round_mut(round);
        rr.captioner_eval = figures.0;
        rr.filter_eval = figures.1;
        Ok(())
    }

    /// The gate's decision, recorded create-only in `promotion.json` (a recorded one is reused).
    async fn gate(
        &self,
        round: u32,
        record: &mut RunRecord,
        training_seconds: f64,
    ) -> Result<bool, BootstrapError> {
        let loc = self.loc(&format!("{}/promotion.json", self.rdir(round)))?;
        let promotion = match read_json::<Promotion>(&loc).await? {
            Some(p) => {
                tracing::info!(
                    round,
                    promoted = p.promoted,
                    "trainer stage already done: reusing its recorded promotion decision"
                );
                p
            }
            None => {
                let (cap_url, _, cap_new) = self.new_bundle(round, BundleKind::Captioner).await?;
                let (fil_url, _, fil_new) = self.new_bundle(round, BundleKind::Filter).await?;
                let current = record.round(round).cloned().unwrap_or_default();
                let d = gate::decide(
                    (&current.captioner_eval, &current.filter_eval),
                    (&cap_new, &fil_new),
                    self.config.tolerance,
                )?;
                tracing::info!(round, promoted = d.promoted, captioner_exact = ?d.captioner, filter_auc = ?d.filter, "promotion gate");
                let p = Promotion {
                    promoted: d.promoted,
                    tolerance: self.config.tolerance,
                    captioner: cap_url,
                    filter: fil_url,
                    captioner_exact_match: d.captioner,
                    filter_auc: d.filter,
                    captioner_eval: cap_new,
                    filter_eval: fil_new,
                    training_seconds,
                };
                create_json(&loc, p).await?.0
            }
        };
        let promoted = promotion.promoted;
        record.round_mut(round).promotion = Some(promotion);
        Ok(promoted)
    }

    /// Round `round + 1` runs with the promoted bundles; their export figures are its eval.
    async fn promote(&self, round: u32, record: &mut RunRecord) -> Result<(), BootstrapError> {
        let Some(p) = record.round(round).and_then(|r| r.promotion.clone()) else {
            return Err(BootstrapError::Config(format!(
                "internal: round {round} is promoted without a promotion record"
            )));
        };
        let next_eval = self.loc(&format!("{}/eval.json", self.rdir(round + 1)))?;
        create_json(
            &next_eval,
            (p.captioner_eval.clone(), p.filter_eval.clone()),
        )
        .await?;
        record.bundles = BundlePair {
            captioner: p.captioner,
            filter: p.filter,
        };
        Ok(())
    }
}

async fn keep_lost(task: tokio::task::JoinHandle<FenceError>) -> FenceError {
    match task.await {
        Ok(e) => e,
        Err(_) => std::future::pending().await,
    }
}

fn refusal_message(round: u32, rdir: &str, rec: Option<&record::RoundRecord>) -> String {
    match rec.and_then(|r| r.promotion.as_ref()) {
        Some(p) => format!(
            "round {round}'s retrained bundles were not promoted (tolerance {:.3}): captioner exact match {:.4} now vs {:.4} before, filter ROC-AUC {:.4} now vs {:.4} before; the run stops here (see {rdir}/promotion.json)",
            p.tolerance,
            p.captioner_exact_match.1,
            p.captioner_exact_match.0,
            p.filter_auc.1,
            p.filter_auc.0
        ),
        None => format!(
            "round {round}'s retrained bundles were not promoted; the run stops here (see {rdir}/promotion.json)"
        ),
    }
}

/// What the server does once the run is finished (done, or stopped by the gate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRun {
    /// Stop serving at once (in-process workers are stopped by their owner).
    Exit,
    /// Keep answering until every connected worker has been told the run is finished (at
    /// most one lease timeout), so `--exit-when-done` workers exit cleanly, then stop.
    TellWorkersThenExit,
    /// Keep answering status and polls until `shutdown`.
    ServeUntilShutdown,
}

/// Serves the controller's service on `listener` while the controller drives the run; returns
/// when the run ends (see [`AfterRun`]) or `shutdown` resolves.
pub async fn serve(
    controller: Controller,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    after: AfterRun,
) -> Result<RunRecord, BootstrapError> {
    let service = controller.service.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut controller = controller;
    let http = match controller.http.take() {
        None => None,
        Some(l) => {
            let output = controller.loc(&controller.config.output)?;
            Some(tokio::spawn(crate::http::serve(
                service.clone(),
                Some(output),
                l,
                wait(stop_rx.clone()),
            )))
        }
    };
    let server = tokio::spawn(crate::run(service.clone(), listener, wait(stop_rx)));
    let result = controller.run(wait(shutdown_rx.clone())).await;
    let finished = matches!(&result, Ok(_) | Err(BootstrapError::Refused { .. }));
    let mut down = shutdown_rx;
    match after {
        _ if !finished => {}
        AfterRun::Exit => {}
        AfterRun::TellWorkersThenExit => {
            let until = Instant::now() + service.timing().lease_timeout;
            while Instant::now() < until && !service.workers_told_finished() && !*down.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = down.changed() => {}
                }
            }
        }
        AfterRun::ServeUntilShutdown => {
            tracing::info!("run finished: serving status until stopped");
            let _ = down.wait_for(|v| *v).await;
        }
    }
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "coordinator server failed"),
        Err(e) => tracing::error!(error = %e, "coordinator server task failed"),
    }
    if let Some(h) = http {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "http server failed"),
            Err(e) => tracing::error!(error = %e, "http server task failed"),
        }
    }
    result
}
