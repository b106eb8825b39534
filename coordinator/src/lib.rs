#![doc = include_str!("../README.md")]

pub mod bootstrap;
pub mod fence;
pub mod health;
pub mod http;
pub mod metrics;
pub mod planner;
pub mod registry;
pub mod round;
pub mod service;
pub mod shard;
pub mod status_page;

use std::future::Future;
use std::time::Duration;

use capfilt_proto::v1::coordinator_server::CoordinatorServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use round::{Round, RoundError, RoundSpec};
pub use service::{CoordinatorService, RunView, Timing};

/// The gRPC service name of the coordinator (what `grpc.health.v1` clients ask about).
pub const GRPC_SERVICE_NAME: &str = "capfilt.v1.Coordinator";

/// Errors of the coordinator, each mapped once to a gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A worker that never registered (or registered with a previous coordinator instance).
    #[error("worker {0} is not registered with this coordinator: register first")]
    UnknownWorker(String),
    /// A lease this coordinator did not grant.
    #[error("shard {shard_id} attempt {attempt} is not leased by this coordinator")]
    UnknownLease {
        /// Shard.
        shard_id: String,
        /// Attempt.
        attempt: u32,
    },
    /// The server could not run.
    #[error("coordinator server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The port's security settings are unusable (or plaintext off loopback).
    #[error(transparent)]
    Security(#[from] capfilt_proto::security::SecurityError),
}

impl From<CoordinatorError> for tonic::Status {
    fn from(e: CoordinatorError) -> Self {
        let code = match &e {
            CoordinatorError::InvalidRequest(_) => tonic::Code::InvalidArgument,
            // The worker reacts by registering again (e.g. after a coordinator restart).
            CoordinatorError::UnknownWorker(_) => tonic::Code::FailedPrecondition,
            CoordinatorError::UnknownLease { .. } => tonic::Code::NotFound,
            CoordinatorError::Transport(_) | CoordinatorError::Security(_) => {
                tonic::Code::Unavailable
            }
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// Accepted connections with TCP_NODELAY: a unary reply is written in several small frames,
/// and with Nagle's algorithm the later ones wait for the client's delayed ACK (40 ms on Linux)
/// whenever the connection is otherwise idle. (`Server::tcp_nodelay` applies only to sockets
/// tonic accepts itself, not to an incoming stream.)
fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        if let Err(e) = conn.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a worker connection");
        }
        Ok(conn)
    })
}

/// Serves the coordinator on an already-bound `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish.
pub async fn run(
    service: CoordinatorService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CoordinatorError> {
    let addr = listener.local_addr().ok();
    let security = service.security().clone();
    if let Some(addr) = addr {
        security.check(addr)?;
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls_config()? {
        builder = builder.tls_config(tls)?;
    }
    tracing::info!(addr = ?addr, security = security.describe(), "coordinator listening");
    let sweeper = tokio::spawn(service.sweeper());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = tokio::spawn(health::report_grpc_health(
        service.health().clone(),
        reporter,
        Duration::from_secs(10),
    ));
    let served = builder
        .layer(metrics::RpcMetricsLayer)
        .add_service(health_service)
        .add_service(CoordinatorServer::with_interceptor(
            service,
            security.interceptor(),
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    sweeper.abort();
    health.abort();
    served?;
    tracing::info!("coordinator stopped");
    Ok(())
}
