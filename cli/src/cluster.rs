//! `capfilt run`, `capfilt worker` and the round set-up `capfilt coordinator` shares with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use capfilt_coordinator::bootstrap::round_dir;
use capfilt_coordinator::{CoordinatorService, RoundSpec, Timing};
use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_schemas::records::{BundleUse, CapfiltParams, RoundManifest};
use capfilt_worker::shard_loop::{WorkerConfig, run_worker};
use capfilt_worker::{Bundle, StepParams};
use clap::Args;
use tokio::sync::watch;

use crate::config::FileConfig;
use crate::exit::{CliError, CliResult};
use crate::infer::CapfiltOptions;

/// Where a round reads and writes, and with which bundles.
#[derive(Debug, Clone, Args)]
pub struct RoundArgs {
    /// Input: a Parquet file or a prefix of them (path, file://, s3://, gs://, az://).
    #[arg(long, env = "CAPFILT_INPUT")]
    pub input: Option<String>,
    /// Output prefix; the round writes under {output}/round-NNNN/.
    #[arg(long, env = "CAPFILT_OUTPUT")]
    pub output: Option<String>,
    /// Captioner bundle (folder or URL).
    #[arg(long, env = "CAPFILT_CAPTIONER")]
    pub captioner: Option<String>,
    /// Filter bundle (folder or URL).
    #[arg(long, env = "CAPFILT_FILTER")]
    pub filter: Option<String>,
    /// Target rows per shard [default: 2000].
    #[arg(long)]
    pub target_shard_rows: Option<u64>,
    /// Counted failures (lost leases included) before a shard is quarantined [default: 3].
    #[arg(long)]
    pub max_failures: Option<u32>,
}

fn required(flag: Option<&String>, file: Option<&String>, name: &str) -> Result<String, CliError> {
    flag.or(file).cloned().ok_or_else(|| {
        CliError::Usage(anyhow!(
            "--{name} is required (or `{name} = ...` in the config file)"
        ))
    })
}

/// Builds the round spec: bundles fetched and verified, parameters merged.
pub async fn round_spec(
    args: &RoundArgs,
    options: &CapfiltOptions,
    file: &FileConfig,
    round: u32,
) -> Result<(RoundSpec, StepParams), CliError> {
    let input = required(args.input.as_ref(), file.input.as_ref(), "input")?;
    let output = required(args.output.as_ref(), file.output.as_ref(), "output")?;
    let cap_url = required(
        args.captioner.as_ref(),
        file.captioner.as_ref(),
        "captioner",
    )?;
    let fil_url = required(args.filter.as_ref(), file.filter.as_ref(), "filter")?;
    let cache = options.cache(file);
    let store_options = file.store_options();
    let cap = Bundle::fetch(&cap_url, &cache, &store_options)
        .await
        .map_err(|e| CliError::Usage(e.into()))?;
    let fil = Bundle::fetch(&fil_url, &cache, &store_options)
        .await
        .map_err(|e| CliError::Usage(e.into()))?;
    cap.expect_kind(capfilt_schemas::BundleKind::Captioner)
        .map_err(|e| CliError::Usage(e.into()))?;
    fil.expect_kind(capfilt_schemas::BundleKind::Filter)
        .map_err(|e| CliError::Usage(e.into()))?;
    let mut step = options.step_params(&cap, &fil, file)?;
    step.round = round;
    let g = &step.generation;
    let spec = RoundSpec {
        round,
        input,
        output: round_dir(&output, round),
        mapping: options.mapping(file)?,
        target_shard_rows: args
            .target_shard_rows
            .or(file.coordinator.target_shard_rows)
            .unwrap_or(2000),
        captioner: BundleUse {
            url: cap_url,
            bundle_json_sha256: cap.sha256.clone(),
        },
        filter: BundleUse {
            url: fil_url,
            bundle_json_sha256: fil.sha256.clone(),
        },
        params: CapfiltParams {
            decoding: g.decoding.as_str().to_string(),
            top_p: g.top_p,
            temperature: g.temperature,
            num_beams: g.num_beams as u32,
            repetition_penalty: g.repetition_penalty,
            min_length: g.min_length as u32,
            max_length: g.max_length as u32,
            candidates: g.candidates as u32,
            threshold: step.threshold,
            prompt: cap.manifest.prompt.clone().unwrap_or_default(),
        },
        batch_size: options.batch_size(file) as u32,
        max_failures: args
            .max_failures
            .or(file.coordinator.max_failures)
            .unwrap_or(3),
        store_options,
    };
    Ok((spec, step))
}

/// Coordinator timing from the config.
pub fn timing(
    file: &FileConfig,
    poll_ms: Option<u64>,
    lease_ms: Option<u64>,
) -> Result<Timing, CliError> {
    let poll = poll_ms.or(file.coordinator.poll_interval_ms).unwrap_or(500);
    let lease = lease_ms
        .or(file.coordinator.lease_timeout_ms)
        .unwrap_or(60_000);
    if poll == 0 || lease <= poll {
        return Err(CliError::Usage(anyhow!(
            "the lease timeout ({lease} ms) must be larger than the poll interval ({poll} ms), which must be > 0"
        )));
    }
    Ok(Timing {
        poll_interval: Duration::from_millis(poll),
        lease_timeout: Duration::from_millis(lease),
        exclusion: Duration::from_secs(file.coordinator.exclusion_s.unwrap_or(600)),
    })
}

/// Arguments of `capfilt worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator URL, e.g. http://capfilt-coordinator:50051.
    #[arg(long, env = "CAPFILT_COORDINATOR")]
    pub coordinator: String,
    /// Shards computed at once (each with its own ONNX Runtime sessions) [default: 1].
    #[arg(long, env = "CAPFILT_SLOTS", value_parser = crate::exit::at_least_one::<u32>)]
    pub slots: Option<u32>,
    /// Worker id [default: HOSTNAME-PID-NONCE].
    #[arg(long, env = "CAPFILT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Seconds a shutting-down worker keeps working on its leases before giving them back [default: 300].
    #[arg(long)]
    pub drain_timeout_s: Option<u64>,
    /// TOML config file (its worker and store tables apply).
    #[arg(long, env = "CAPFILT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Exit 0 once the coordinator reports the run finished (for Job-style deployments); without it the worker waits for the next run.
    #[arg(long, env = "CAPFILT_EXIT_WHEN_DONE")]
    pub exit_when_done: bool,
    /// HTTP address of /metrics, /healthz and /readyz (e.g. 0.0.0.0:9091) [default: none].
    #[arg(long, value_name = "ADDR", env = "CAPFILT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub options: CapfiltOptions,
}

fn worker_config(
    coordinator: String,
    options: &CapfiltOptions,
    file: &FileConfig,
    slots: Option<u32>,
    drain: Option<u64>,
) -> Result<WorkerConfig, CliError> {
    let mut w = WorkerConfig::new(coordinator);
    w.slots = slots.or(file.worker.slots).unwrap_or(1).max(1);
    w.session = options.session(file)?;
    w.ort = options.ort(file)?;
    w.cache_dir = options.cache(file);
    w.store_options = file.store_options();
    w.limits = options.limits();
    w.max_batch = options.max_batch_images.or(file.worker.max_batch_images);
    w.continuous_batching = options
        .continuous_batching
        .or(file.worker.continuous_batching);
    w.drain_timeout = Duration::from_secs(drain.or(file.worker.drain_timeout_s).unwrap_or(300));
    w.security = file.client_security().map_err(CliError::Usage)?;
    w.allowed_prefixes = file.worker.allowed_prefixes.clone().unwrap_or_default();
    Ok(w)
}

/// Runs `capfilt worker`.
pub fn run_worker_command(args: WorkerArgs) -> CliResult {
    let file = FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
    let mut config = worker_config(
        args.coordinator.clone(),
        &args.options,
        &file,
        args.slots,
        args.drain_timeout_s,
    )?;
    if let Some(id) = args.worker_id {
        config.worker_id = id;
    }
    config.exit_when_done = args.exit_when_done || file.worker.exit_when_done.unwrap_or(false);
    let metrics = crate::telemetry::metrics_addr(
        args.metrics_listen,
        file.worker.metrics_listen.as_deref(),
        "config [worker] metrics_listen",
    )?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| CliError::Failed(e.into()))?;
    runtime.block_on(async move {
        if let Some(l) = crate::telemetry::bind(metrics).await? {
            // Installed before the worker starts, so its first metrics (the info gauge) are
            // recorded; the server task would install it too late.
            capfilt_telemetry::install_recorder().map_err(|e| CliError::Failed(e.into()))?;
            let gpu = capfilt_worker::metrics::GpuMemory::for_device(config.session.device);
            // Serves until the process exits (after the worker's drain).
            crate::telemetry::spawn(capfilt_worker::metrics::serve_http(
                config.health.clone(),
                gpu,
                l,
                std::future::pending(),
            ));
        }
        let summary = run_worker(config, crate::serve::shutdown_signal())
            .await
            .map_err(|e| CliError::Failed(e.into()))?;
        println!(
            "committed {} shards ({} rows), {} lost to an earlier commit, {} failed",
            summary.committed, summary.rows, summary.conflicts, summary.failed
        );
        Ok(())
    })
}

/// Arguments of `capfilt run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub round_args: RoundArgs,
    /// Workers to run in this process [default: 2].
    #[arg(long, env = "CAPFILT_WORKERS", value_parser = crate::exit::at_least_one::<usize>)]
    pub workers: Option<usize>,
    /// TOML config file (every option; flags and CAPFILT_* variables override it).
    #[arg(long, env = "CAPFILT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the round manifest as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// HTTP address of /metrics (coordinator and workers), /healthz, /readyz and the status page at / [default: none].
    #[arg(long, value_name = "ADDR", env = "CAPFILT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub bootstrap: crate::rounds::BootstrapArgs,
    #[command(flatten)]
    pub options: CapfiltOptions,
}

/// Runs `capfilt run`: the coordinator's bootstrap controller and N workers in this process, for
/// one round or, with `--rounds N`, for rounds 1..N with the trainer stage between them.
pub fn run(args: RunArgs) -> CliResult {
    let file = FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
    let metrics = crate::telemetry::metrics_addr(
        args.metrics_listen,
        file.coordinator.metrics_listen.as_deref(),
        "config [coordinator] metrics_listen",
    )?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| CliError::Failed(e.into()))?;
    runtime.block_on(async move {
        let http = crate::telemetry::bind(metrics).await?;
        let (config, planner, trainer) =
            crate::rounds::run_parts(&args.round_args, &args.bootstrap, &args.options, &file)
                .await?;
        // The user's bundles and parameters are checked before anything starts, so a mistake
        // in them is one line, not a failed phase with workers already polling.
        let (spec, _) =
            round_spec(&args.round_args, &args.options, &file, config.first_round).await?;
        let usage = |e: String| CliError::Usage(anyhow!(e));
        let input = capfilt_schemas::store::resolve(&spec.input, &spec.store_options)
            .map_err(|e| usage(e.to_string()))?;
        capfilt_schemas::store::resolve(&spec.output, &spec.store_options)
            .map_err(|e| usage(e.to_string()))?;
        capfilt_coordinator::planner::list_inputs(&input)
            .await
            .map_err(|e| usage(e.to_string()))?;
        let rounds = config.rounds;
        let output = config.output.clone();
        let service = CoordinatorService::new(timing(&file, None, None)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a local port for the in-process coordinator")
            .map_err(CliError::Failed)?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| CliError::Failed(e.into()))?;
        let n = args.workers.or(file.workers).unwrap_or(2).max(1);
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut options = args.options.clone();
        if options.intra_threads.is_none() && file.worker.intra_threads.is_none() {
            options.intra_threads = Some((cores / n).max(1));
        }
        let (stop_workers, workers_stop_rx) = watch::channel(false);
        let mut workers = Vec::new();
        for i in 0..n {
            let mut config =
                worker_config(format!("http://{addr}"), &options, &file, None, Some(30))?;
            config.worker_id = format!("run-{}-w{i}", std::process::id());
            // The in-process coordinator is plaintext on loopback without a token.
            config.security = Default::default();
            workers.push(tokio::spawn(run_worker(
                config,
                wait_true(workers_stop_rx.clone()),
            )));
        }
        tracing::info!(workers = n, output = %output, rounds, "run started");
        let progress = tokio::spawn(show_progress(format!("http://{addr}")));
        let mut controller =
            capfilt_coordinator::bootstrap::Controller::new(config, service, planner, trainer);
        if let Some(l) = http {
            capfilt_telemetry::install_recorder().map_err(|e| CliError::Failed(e.into()))?;
            capfilt_worker::metrics::describe();
            controller = controller.with_http(l);
        }
        let result = capfilt_coordinator::bootstrap::serve(
            controller,
            listener,
            crate::serve::shutdown_signal(),
            capfilt_coordinator::bootstrap::AfterRun::Exit,
        )
        .await;
        progress.abort();
        let _ = stop_workers.send(true);
        for w in workers {
            match w.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "worker failed"),
                Err(e) => tracing::error!(error = %e, "worker task failed"),
            }
        }
        let record = result.map_err(crate::rounds::map_error)?;
        crate::rounds::print_run(&record, &output, &file, args.json).await;
        Ok(())
    })
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn show_progress(url: String) {
    use std::io::IsTerminal;
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url) else {
        return;
    };
    let mut client = v1::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {bar:40} {pos}/{len} rows  {msg}  [{elapsed_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut round = u32::MAX;
    let mut started = std::time::Instant::now();
    let mut last_log = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(r) = client
            .get_status(v1::GetStatusRequest {
                protocol_version: PROTOCOL_VERSION,
                include_shards: false,
            })
            .await
        else {
            continue;
        };
        let s = r.into_inner();
        let phase = s.run.as_ref().map_or("serving", |r| r.phase.as_str());
        if s.round != round {
            round = s.round;
            started = std::time::Instant::now();
        }
        let c = s.shards.unwrap_or_default();
        let rate = s.rows_done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let msg = if s.round == 0 {
            phase.to_string()
        } else {
            format!(
                "shards {} done, {} running, {} pending, {} quarantined  {rate:.1} img/s",
                c.committed, c.leased, c.pending, c.quarantined
            )
        };
        match &bar {
            Some(bar) => {
                bar.set_prefix(if s.round == 0 {
                    phase.to_string()
                } else {
                    format!("round {}", s.round)
                });
                bar.set_length(s.rows_total);
                bar.set_position(s.rows_done);
                bar.set_message(msg);
            }
            None if last_log.elapsed() >= Duration::from_secs(5) && s.round != 0 => {
                last_log = std::time::Instant::now();
                tracing::info!(
                    round = s.round,
                    rows_done = s.rows_done,
                    rows_total = s.rows_total,
                    "{msg}"
                );
            }
            None => {}
        }
    }
}

/// The data-quality counts worth a line when not zero.
pub fn input_notes(c: &capfilt_schemas::records::ShardCounts) -> Vec<(&'static str, u64)> {
    [
        ("no web text", c.web_missing),
        ("cut captions", c.captions_truncated),
        ("derived keys", c.keys_derived),
        ("repeated keys", c.keys_duplicated),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

pub fn print_summary(m: &RoundManifest, out: &str) {
    let t = &m.totals;
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let quarantined = m.quarantined().count();
    println!("round {} done: {out}", m.round);
    println!(
        "  shards         {} ({} quarantined)",
        m.shards.len(),
        quarantined
    );
    println!("  rows in        {}", t.rows_in);
    println!("  scored         {}", t.rows_scored);
    println!("  rejected       {}", t.rows_rejected);
    for (reason, n) in &t.rejects_by_reason {
        println!("    {:<16} {n}", reason.as_str());
    }
    for (what, n) in input_notes(t) {
        println!("  {what:<14} {n}");
    }
    println!(
        "  web kept       {} of {} ({})",
        t.web_kept,
        t.web_texts,
        pct(m.web_keep_rate)
    );
    println!(
        "  synthetic kept {} of {} ({})",
        t.synthetic_kept,
        t.synthetic_texts,
        pct(m.synthetic_keep_rate)
    );
    for q in m.quarantined() {
        println!(
            "  quarantined {}: {}",
            q.shard.shard_id,
            q.last_error.as_deref().unwrap_or("?")
        );
    }
}
