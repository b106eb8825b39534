//! `capfilt coordinator`: serves the coordinator until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use capfilt_coordinator::{CoordinatorService, Timing};
use clap::Args;

use crate::exit::{CliError, CliResult};

/// Arguments of `capfilt coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC on (use 0.0.0.0:PORT inside a cluster).
    #[arg(
        long,
        value_name = "ADDR",
        env = "CAPFILT_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// How often idle workers poll, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        env = "CAPFILT_POLL_INTERVAL_MS",
        default_value_t = 2_000
    )]
    poll_interval_ms: u64,
    /// Lease timeout in milliseconds: a lease not extended by a heartbeat within it is taken back.
    #[arg(
        long,
        value_name = "MS",
        env = "CAPFILT_LEASE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    lease_timeout_ms: u64,
}

/// Runs `capfilt coordinator`.
pub fn run(args: CoordinatorArgs) -> CliResult {
    if args.poll_interval_ms == 0 || args.lease_timeout_ms <= args.poll_interval_ms {
        return Err(CliError::Usage(anyhow::anyhow!(
            "--lease-timeout-ms ({}) must be larger than --poll-interval-ms ({}), which must be > 0",
            args.lease_timeout_ms,
            args.poll_interval_ms
        )));
    }
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(CliError::Failed)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: choose another --listen address",
                    args.listen
                )
            })
            .map_err(CliError::Usage)?;
        let service = CoordinatorService::new(Timing {
            poll_interval: Duration::from_millis(args.poll_interval_ms),
            lease_timeout: Duration::from_millis(args.lease_timeout_ms),
        });
        capfilt_coordinator::run(service, listener, shutdown_signal())
            .await
            .map_err(|e| CliError::Failed(e.into()))
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
