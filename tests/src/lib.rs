//! Helpers for capfilt's cross-crate tests: an in-process coordinator on `127.0.0.1:0` and a
//! gRPC client connected to it.

pub mod round;

use std::net::SocketAddr;
use std::time::Duration;

use capfilt_coordinator::{CoordinatorService, Timing};
use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A coordinator served in this process over real gRPC on a loopback port.
pub struct TestCoordinator {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), capfilt_coordinator::CoordinatorError>>,
}

impl TestCoordinator {
    /// Binds `127.0.0.1:0` and serves a coordinator with short test timings.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let service = CoordinatorService::new(Timing {
            poll_interval: Duration::from_millis(100),
            lease_timeout: Duration::from_secs(2),
            exclusion: Duration::from_secs(600),
        });
        let task = tokio::spawn(capfilt_coordinator::run(service, listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// The URL workers and `capfilt status` use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected gRPC client.
    pub async fn client(&self) -> Result<CoordinatorClient<Channel>, tonic::transport::Error> {
        CoordinatorClient::connect(self.url()).await
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> Result<(), capfilt_coordinator::CoordinatorError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(result) => result,
            Err(join) => panic!("coordinator task panicked: {join}"),
        }
    }
}
