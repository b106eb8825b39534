//! `capfilt coordinator`: serves the coordinator until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use capfilt_coordinator::CoordinatorService;
use capfilt_coordinator::bootstrap::{AfterRun, Controller};
use clap::Args;

use crate::exit::{CliError, CliResult};

/// Arguments of `capfilt coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on (use 0.0.0.0:PORT inside a cluster) [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR", env = "CAPFILT_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP address of /metrics, /healthz, /readyz and the status page at / (e.g. 0.0.0.0:9090) [default: none].
    #[arg(long, value_name = "ADDR", env = "CAPFILT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often idle workers poll, in milliseconds [default: 500].
    #[arg(long, value_name = "MS", env = "CAPFILT_POLL_INTERVAL_MS")]
    poll_interval_ms: Option<u64>,
    /// Lease timeout in milliseconds: a lease not extended by a heartbeat within it is taken back [default: 60000].
    #[arg(long, value_name = "MS", env = "CAPFILT_LEASE_TIMEOUT_MS")]
    lease_timeout_ms: Option<u64>,
    /// TOML config file (input, output, bundles, and its capfilt, coordinator and store tables).
    #[arg(long, env = "CAPFILT_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Serve plaintext gRPC: allowed on a loopback --listen address only; anywhere else set [coordinator.tls].
    #[arg(long)]
    insecure: bool,
    /// Exit once the run is finished: after the last round (or the gate's refusal), once every connected worker has been told (default: keep serving status until stopped).
    #[arg(long, env = "CAPFILT_EXIT_WHEN_DONE")]
    exit_when_done: bool,
    #[command(flatten)]
    round_args: crate::cluster::RoundArgs,
    #[command(flatten)]
    bootstrap: crate::rounds::BootstrapArgs,
    #[command(flatten)]
    options: crate::infer::CapfiltOptions,
}

/// Runs `capfilt coordinator`.
pub fn run(args: CoordinatorArgs) -> CliResult {
    let file = crate::config::FileConfig::load(args.config.as_deref()).map_err(CliError::Usage)?;
    let timing = crate::cluster::timing(&file, args.poll_interval_ms, args.lease_timeout_ms)?;
    let listen: SocketAddr = match (args.listen, &file.coordinator.listen) {
        (Some(a), _) => a,
        (None, Some(a)) => a.parse().map_err(|e| {
            CliError::Usage(anyhow::anyhow!("config [coordinator] listen '{a}': {e}"))
        })?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 50051)),
    };
    let metrics = crate::telemetry::metrics_addr(
        args.metrics_listen,
        file.coordinator.metrics_listen.as_deref(),
        "config [coordinator] metrics_listen",
    )?;
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(CliError::Failed)?;
    let security = file
        .server_security(args.insecure)
        .map_err(CliError::Usage)?;
    security
        .check(listen)
        .and_then(|()| security.tls_config().map(drop))
        .map_err(|e| CliError::Usage(e.into()))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}: choose another --listen address"))
            .map_err(CliError::Usage)?;
        let http = crate::telemetry::bind(metrics).await?;
        let has_round = args.round_args.input.is_some() || file.input.is_some();
        let service = CoordinatorService::new(timing).with_security(security);
        if !has_round {
            // No run: answer registration and status only.
            if let Some(l) = http {
                crate::telemetry::spawn(capfilt_coordinator::http::serve(
                    service.clone(),
                    None,
                    l,
                    shutdown_signal(),
                ));
            }
            return capfilt_coordinator::run(service, listener, shutdown_signal())
                .await
                .map_err(|e| CliError::Failed(e.into()));
        }
        let (config, planner, trainer) =
            crate::rounds::run_parts(&args.round_args, &args.bootstrap, &args.options, &file)
                .await?;
        let output = config.output.clone();
        let exit_when_done =
            args.exit_when_done || file.coordinator.exit_when_done.unwrap_or(false);
        let mut controller = Controller::new(config, service, planner, trainer);
        if let Some(l) = http {
            controller = controller.with_http(l);
        }
        let after = if exit_when_done {
            AfterRun::TellWorkersThenExit
        } else {
            AfterRun::ServeUntilShutdown
        };
        let result =
            capfilt_coordinator::bootstrap::serve(controller, listener, shutdown_signal(), after)
                .await;
        let record = result.map_err(crate::rounds::map_error)?;
        crate::rounds::print_run(&record, &output, &file, false).await;
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
