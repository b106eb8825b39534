//! The `--metrics-listen` flag shared by `capfilt coordinator`, `capfilt worker` and `capfilt run`.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::exit::CliError;

/// Resolves the HTTP address from the flag or the config value (`key` names it in errors).
pub fn metrics_addr(
    flag: Option<SocketAddr>,
    config: Option<&str>,
    key: &str,
) -> Result<Option<SocketAddr>, CliError> {
    match (flag, config) {
        (Some(a), _) => Ok(Some(a)),
        (None, Some(v)) => capfilt_telemetry::parse_listen(v, key)
            .map(Some)
            .map_err(|e| CliError::Usage(anyhow::anyhow!(e))),
        (None, None) => Ok(None),
    }
}

/// Binds the HTTP port now, so a taken port stops the command before it starts work.
pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, CliError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics and health: choose another --metrics-listen address"))
        .map(Some)
        .map_err(CliError::Usage)
}

/// Runs an HTTP server beside the command, logging its failure (the command goes on without it).
pub fn spawn(
    server: impl std::future::Future<Output = Result<(), capfilt_telemetry::TelemetryError>>
    + Send
    + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
}
