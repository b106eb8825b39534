//! The gRPC service: protocol checks, registration, heartbeats and status.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use capfilt_proto::v1::coordinator_server::Coordinator;
use capfilt_proto::{PROTOCOL_VERSION, check_protocol_version, v1};
use tonic::{Request, Response, Status};

use crate::CoordinatorError;
use crate::registry::{Registry, unix_ms};

/// Timing parameters the coordinator hands to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an idle worker polls.
    pub poll_interval: Duration,
    /// A lease not extended within this time is taken back.
    pub lease_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(60),
        }
    }
}

/// State shared by the service's handlers.
#[derive(Debug)]
pub struct CoordinatorService {
    instance: String,
    started: Instant,
    timing: Timing,
    registry: Arc<Mutex<Registry>>,
}

impl CoordinatorService {
    /// A coordinator with no round planned.
    pub fn new(timing: Timing) -> Self {
        Self {
            instance: format!("{:016x}", unix_ms() ^ u64::from(std::process::id()) << 40),
            started: Instant::now(),
            timing,
            registry: Arc::default(),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-updated in a way that
        // matters more than losing the coordinator, so keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> v1::GetStatusResponse {
        let registry = self.registry();
        let workers = registry
            .iter()
            .map(|w| v1::WorkerStatus {
                worker_id: w.info.worker_id.clone(),
                device: w.info.device.clone(),
                slots: w.info.slots,
                leases: w.leases.len() as u32,
                hostname: w.info.hostname.clone(),
                build_version: w.info.build_version.clone(),
                registered_unix_ms: w.registered_unix_ms,
                last_seen_unix_ms: w.last_seen_unix_ms,
                rows_done: w.leases.iter().map(|l| l.rows_done).sum(),
                rows_per_s: 0.0,
            })
            .collect();
        v1::GetStatusResponse {
            protocol_version: PROTOCOL_VERSION,
            coordinator_instance: self.instance.clone(),
            round: 0,
            shards: Some(v1::ShardCountsByState::default()),
            rows_total: 0,
            rows_done: 0,
            workers,
            shard_list: Vec::new(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let req = request.into_inner();
        check_protocol_version(req.protocol_version)?;
        if req.worker_id.trim().is_empty() {
            return Err(
                CoordinatorError::InvalidRequest("worker_id must not be empty".into()).into(),
            );
        }
        if req.slots == 0 {
            return Err(CoordinatorError::InvalidRequest(format!(
                "worker {} offers 0 slots: a worker needs at least one",
                req.worker_id
            ))
            .into());
        }
        let worker_id = req.worker_id.clone();
        let (slots, device) = (req.slots, req.device.clone().unwrap_or_default());
        let again = self.registry().register(req, Instant::now());
        tracing::info!(worker = %worker_id, slots, device = ?device.kind(), again, "worker registered");
        Ok(Response::new(v1::RegisterWorkerResponse {
            protocol_version: PROTOCOL_VERSION,
            poll_interval_ms: millis(self.timing.poll_interval),
            lease_timeout_ms: millis(self.timing.lease_timeout),
            coordinator_instance: self.instance.clone(),
        }))
    }

    async fn poll_work(
        &self,
        request: Request<v1::PollWorkRequest>,
    ) -> Result<Response<v1::PollWorkResponse>, Status> {
        let req = request.into_inner();
        check_protocol_version(req.protocol_version)?;
        let mut registry = self.registry();
        if registry.heartbeat(&req, Instant::now()).is_none() {
            return Err(CoordinatorError::UnknownWorker(req.worker_id).into());
        }
        // No round is planned on this coordinator, so no lease a worker reports is one of ours:
        // tell it to drop them rather than let it commit work nobody scheduled.
        let cancellations = req
            .leases
            .iter()
            .map(|l| v1::LeaseCancellation {
                shard_id: l.shard_id.clone(),
                attempt: l.attempt,
                reason: v1::CancelReason::UnknownLease.into(),
            })
            .collect();
        Ok(Response::new(v1::PollWorkResponse {
            new_leases: Vec::new(),
            cancellations,
            next_poll_ms: millis(self.timing.poll_interval),
        }))
    }

    async fn complete_shard(
        &self,
        request: Request<v1::CompleteShardRequest>,
    ) -> Result<Response<v1::CompleteShardResponse>, Status> {
        let req = request.into_inner();
        check_protocol_version(req.protocol_version)?;
        if !self.registry().contains(&req.worker_id) {
            return Err(CoordinatorError::UnknownWorker(req.worker_id).into());
        }
        let commit = req.commit.unwrap_or_default();
        Err(CoordinatorError::UnknownLease {
            shard_id: commit.shard_id,
            attempt: commit.attempt,
        }
        .into())
    }

    async fn fail_shard(
        &self,
        request: Request<v1::FailShardRequest>,
    ) -> Result<Response<v1::FailShardResponse>, Status> {
        let req = request.into_inner();
        check_protocol_version(req.protocol_version)?;
        if !self.registry().contains(&req.worker_id) {
            return Err(CoordinatorError::UnknownWorker(req.worker_id).into());
        }
        Err(CoordinatorError::UnknownLease {
            shard_id: req.shard_id,
            attempt: req.attempt,
        }
        .into())
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        check_protocol_version(request.get_ref().protocol_version)?;
        Ok(Response::new(self.status()))
    }
}
