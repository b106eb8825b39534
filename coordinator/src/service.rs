//! The gRPC service: protocol checks, registration, heartbeats and status.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use capfilt_proto::v1::coordinator_server::Coordinator;
use capfilt_proto::{PROTOCOL_VERSION, check_protocol_version, v1};
use capfilt_schemas::records::RoundManifest;
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};

use crate::CoordinatorError;
use crate::health::Health;
use crate::registry::{Registry, unix_ms};
use crate::round::{Cancel, Granted, Round, read_commit, write_attempts, write_manifest};
use crate::shard::{Blame, ShardState};

/// Timing parameters the coordinator hands to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an idle worker polls.
    pub poll_interval: Duration,
    /// A lease not extended within this time is taken back.
    pub lease_timeout: Duration,
    /// How long a worker is excluded from new leases after failures that blame it (see
    /// [`crate::registry`]).
    pub exclusion: Duration,
}

impl Timing {
    /// How long after the coordinator starts a shard that failed on a worker is not leased to
    /// that worker again even when no other worker is there yet: ten poll intervals (20 s by
    /// default), at most one lease timeout. Workers started with the coordinator register
    /// within their first poll.
    pub fn registration_grace(&self) -> Duration {
        (self.poll_interval * 10).min(self.lease_timeout)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(60),
            exclusion: Duration::from_secs(600),
        }
    }
}

/// What the service tells workers and `GetStatus` about the bootstrap run driving it.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    /// The run's status message (phase, round, rounds table); `None` for a bare round.
    pub status: Option<v1::RunStatus>,
    /// Whether workers are told the run is finished.
    pub finished: bool,
    /// Why no work is offered between rounds (e.g. "training after round 1").
    pub waiting_for: String,
}

/// State shared by the service's handlers.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    instance: String,
    started: Instant,
    timing: Timing,
    registry: Arc<Mutex<Registry>>,
    round: Arc<Mutex<Option<Round>>>,
    run: Arc<Mutex<RunView>>,
    wake: Arc<Notify>,
    done: watch::Sender<Option<RoundManifest>>,
    health: Arc<Health>,
    security: Arc<capfilt_proto::security::ServerSecurity>,
}

/// The current round, locked.
pub(crate) struct RoundGuard<'a>(MutexGuard<'a, Option<Round>>);

impl std::ops::Deref for RoundGuard<'_> {
    type Target = Round;
    fn deref(&self) -> &Round {
        // Only built over a slot that holds a round (see `CoordinatorService::round`).
        self.0.as_ref().expect("a round guard holds a round")
    }
}

impl std::ops::DerefMut for RoundGuard<'_> {
    fn deref_mut(&mut self) -> &mut Round {
        self.0.as_mut().expect("a round guard holds a round")
    }
}

impl CoordinatorService {
    /// A coordinator with no round planned.
    pub fn new(timing: Timing) -> Self {
        Self {
            instance: format!("{:016x}", unix_ms() ^ (u64::from(std::process::id()) << 40)),
            started: Instant::now(),
            timing,
            registry: Arc::default(),
            round: Arc::default(),
            run: Arc::default(),
            wake: Arc::default(),
            done: watch::channel(None).0,
            health: Arc::default(),
            security: Arc::new(capfilt_proto::security::ServerSecurity::loopback_plaintext()),
        }
    }

    /// Serves with `security` (TLS, token); the default is plaintext, which [`crate::run`]
    /// allows on a loopback address only.
    pub fn with_security(mut self, security: capfilt_proto::security::ServerSecurity) -> Self {
        self.security = Arc::new(security);
        self
    }

    /// How the port is secured.
    pub fn security(&self) -> &capfilt_proto::security::ServerSecurity {
        &self.security
    }

    /// A coordinator scheduling `round` (opened with [`Round::open`]).
    pub fn with_round(timing: Timing, round: Round) -> Self {
        let s = Self::new(timing);
        s.install_round(round);
        s
    }

    /// This coordinator process's instance id (changes on restart).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Readiness: what `/readyz` and `grpc.health.v1` answer.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The timing handed to workers.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Makes `round` the round whose shards are leased; its manifest is awaited with
    /// [`CoordinatorService::subscribe_done`]. Leases of the previous round are cancelled at the
    /// workers' next heartbeat.
    pub fn install_round(&self, round: Round) {
        let _ = self.done.send(None);
        self.health.round_opened(round.output().clone());
        *self.round.lock().unwrap_or_else(|p| p.into_inner()) = Some(round);
        self.wake.notify_one();
    }

    /// Stops leasing: no round is current.
    pub fn clear_round(&self) {
        *self.round.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sets what workers and status are told about the run.
    pub fn set_run_view(&self, view: RunView) {
        *self.run.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    fn run_view(&self) -> RunView {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether every worker heard from within the lease timeout has been told that the run
    /// is finished (so a coordinator that exits when done leaves no worker waiting for it).
    pub fn workers_told_finished(&self) -> bool {
        let horizon = self.timing.lease_timeout;
        self.registry()
            .iter()
            .filter(|w| w.last_seen.elapsed() < horizon)
            .all(|w| w.told_finished)
    }

    /// Receives the round's manifest once it is written.
    pub fn subscribe_done(&self) -> watch::Receiver<Option<RoundManifest>> {
        self.done.subscribe()
    }

    pub(crate) fn round(&self) -> Option<RoundGuard<'_>> {
        let guard = self.round.lock().unwrap_or_else(|p| p.into_inner());
        guard.is_some().then(|| RoundGuard(guard))
    }

    /// Expires lost leases and, once every shard is final, writes the manifest. Runs beside the
    /// gRPC server, over whichever round is current.
    pub(crate) fn sweeper(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let service = self.clone();
        let period = (self.timing.lease_timeout / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(5));
        async move {
            loop {
                // Workers silent for three lease timeouts are forgotten (a restarted worker
                // registers again).
                let silent = service.timing.lease_timeout * 3;
                for id in service.registry().evict_silent(Instant::now(), silent) {
                    tracing::info!(worker = %id, silent_s = silent.as_secs(), "silent worker evicted from the registry");
                }
                let (attempts, pending) = match service.round() {
                    Some(mut r) => {
                        r.tick(Instant::now());
                        let pending = (r.is_done() && !r.manifest_written())
                            .then(|| (r.output().clone(), r.manifest(), r.commits_applied()));
                        (r.take_attempts(), pending)
                    }
                    None => (Vec::new(), None),
                };
                // Scheduling history first, so a restart never forgets a quarantine the
                // manifest reports: no manifest in a sweep where a record was not written.
                let failed = write_attempts(attempts).await;
                let pending = if failed.is_empty() {
                    pending
                } else {
                    if let Some(mut r) = service.round() {
                        r.retry_attempts(failed);
                    }
                    None
                };
                if let Some((out, manifest, as_of)) = pending {
                    match write_manifest(&out, &manifest).await {
                        Ok(()) => {
                            // A commit that landed while it was written makes it stale: the
                            // next sweep writes it again, and only then is the round done.
                            let current = match service.round() {
                                Some(mut r) if r.spec().round == manifest.round => {
                                    r.mark_manifest_written_as_of(as_of)
                                }
                                _ => true,
                            };
                            if current {
                                let _ = service.done.send(Some(manifest));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "writing the round manifest failed; retrying")
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = service.wake.notified() => {}
                }
            }
        }
    }

    fn lease_message(&self, round: &Round, g: Granted) -> v1::ShardLease {
        let spec = round.spec();
        let p = &spec.params;
        let decoding = match p.decoding.as_str() {
            "greedy" => v1::Decoding::Greedy,
            "beam" => v1::Decoding::Beam,
            _ => v1::Decoding::Nucleus,
        };
        v1::ShardLease {
            round: spec.round,
            shard: Some(v1::ShardSpec {
                shard_id: g.shard.shard_id.clone(),
                file_url: g.shard.file.clone(),
                file_size: round
                    .plan()
                    .inputs
                    .iter()
                    .find(|f| f.url == g.shard.file)
                    .map_or(0, |f| f.size),
                first_row_group: g.shard.first_row_group,
                num_row_groups: g.shard.num_row_groups,
                first_row: g.shard.first_row,
                num_rows: g.shard.num_rows,
            }),
            attempt: g.attempt,
            output_url: spec.output.clone(),
            mapping: Some(v1::ColumnMapping {
                key: spec.mapping.key.clone().unwrap_or_default(),
                url: spec.mapping.url.clone().unwrap_or_default(),
                caption: spec.mapping.caption.clone(),
                image: spec.mapping.image.clone().unwrap_or_default(),
            }),
            captioner: Some(v1::BundleRef {
                url: spec.captioner.url.clone(),
                bundle_json_sha256: spec.captioner.bundle_json_sha256.clone(),
            }),
            filter: Some(v1::BundleRef {
                url: spec.filter.url.clone(),
                bundle_json_sha256: spec.filter.bundle_json_sha256.clone(),
            }),
            params: Some(v1::RoundParams {
                decoding: decoding.into(),
                top_p: p.top_p,
                temperature: p.temperature,
                num_beams: p.num_beams,
                repetition_penalty: p.repetition_penalty,
                min_length: p.min_length,
                max_length: p.max_length,
                candidates: p.candidates,
                threshold: p.threshold,
                batch_size: spec.batch_size,
                prompt: p.prompt.clone(),
            }),
            deadline_unix_ms: g.deadline_unix_ms,
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-updated in a way that
        // matters more than losing the coordinator, so keep serving.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `GetStatus` answers: the run, the round's shard counts, the workers, and with
    /// `include_shards` one entry per shard (the only part whose cost grows with the plan).
    pub fn status(&self, include_shards: bool) -> v1::GetStatusResponse {
        let view = self.run_view();
        let serving = self.round().is_some_and(|r| !r.manifest_written());
        let now = Instant::now();
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
                rows_done: w.rows_committed + w.leases.iter().map(|l| l.rows_done).sum::<u64>(),
                rows_per_s: (w.rows_committed + w.leases.iter().map(|l| l.rows_done).sum::<u64>())
                    as f64
                    / w.registered.elapsed().as_secs_f64().max(1e-3),
                state: if let Some(e) = w.excluded.as_ref().filter(|e| e.until > now) {
                    format!(
                        "excluded for {} s: {}",
                        e.until.saturating_duration_since(now).as_secs(),
                        e.reason
                    )
                } else if !w.leases.is_empty() {
                    "working".into()
                } else if !w.accepting {
                    "draining".into()
                } else if view.finished {
                    "idle: run finished".into()
                } else if !serving && !view.waiting_for.is_empty() {
                    format!("idle: {}", view.waiting_for)
                } else {
                    "idle".into()
                },
            })
            .collect();
        drop(registry);
        let (round_no, counts, rows_total, rows_done, shard_list) = match self.round() {
            None => (0, v1::ShardCountsByState::default(), 0, 0, Vec::new()),
            Some(r) => {
                let counts = v1::ShardCountsByState {
                    pending: r.count("pending") as u64,
                    leased: r.count("leased") as u64,
                    committed: r.count("committed") as u64,
                    quarantined: r.count("quarantined") as u64,
                };
                let done = r.rows_committed() + r.rows_in_progress();
                let list = if !include_shards {
                    Vec::new()
                } else {
                    r.shards()
                        .map(|(shard, state)| {
                            let (st, worker, rows) = match state {
                                ShardState::Pending { .. } => {
                                    (v1::ShardState::Pending, String::new(), 0)
                                }
                                ShardState::Leased {
                                    worker, rows_done, ..
                                } => (v1::ShardState::Leased, worker.clone(), *rows_done),
                                ShardState::Committed { .. } => {
                                    (v1::ShardState::Committed, String::new(), shard.num_rows)
                                }
                                ShardState::Quarantined { .. } => {
                                    (v1::ShardState::Quarantined, String::new(), 0)
                                }
                            };
                            v1::ShardStatus {
                                shard_id: shard.shard_id.clone(),
                                state: st.into(),
                                attempt: state.attempts(),
                                worker_id: worker,
                                rows_done: rows,
                                rows_total: shard.num_rows,
                                last_error: state.last_error().unwrap_or_default().to_string(),
                            }
                        })
                        .collect()
                };
                (r.spec().round, counts, r.planned_rows(), done, list)
            }
        };
        v1::GetStatusResponse {
            protocol_version: PROTOCOL_VERSION,
            coordinator_instance: self.instance.clone(),
            round: round_no,
            shards: Some(counts),
            rows_total,
            rows_done,
            workers,
            shard_list,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            run: view.status,
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
        let now = Instant::now();
        let horizon = self.timing.lease_timeout;
        let (may_lease, free_slots) = {
            let mut registry = self.registry();
            let Some(entry) = registry.heartbeat(&req, now) else {
                return Err(CoordinatorError::UnknownWorker(req.worker_id).into());
            };
            // No more leases than the slots it registered, plus one read-ahead.
            let room = entry
                .info
                .slots
                .saturating_add(1)
                .saturating_sub(req.leases.len() as u32);
            if req.free_slots > room {
                tracing::warn!(worker = %req.worker_id, claimed = req.free_slots, registered = entry.info.slots, holding = req.leases.len(), "worker claims more free slots than it registered; capped");
            }
            // An excluded worker gets nothing while another worker can take the work.
            let may_lease = registry.exclusion(&req.worker_id, now).is_none()
                || !registry.any_schedulable(now, horizon);
            (may_lease, req.free_slots.min(room))
        };
        let Some(mut round) = self.round() else {
            // No round is being served (none planned, or between rounds), so no lease a worker
            // reports is one of ours: tell it to drop them rather than let it commit work
            // nobody scheduled.
            let cancellations = req
                .leases
                .iter()
                .map(|l| v1::LeaseCancellation {
                    shard_id: l.shard_id.clone(),
                    attempt: l.attempt,
                    reason: v1::CancelReason::UnknownLease.into(),
                })
                .collect();
            let view = self.run_view();
            let run_state = if view.finished {
                self.registry().mark_told_finished(&req.worker_id);
                v1::RunState::Finished
            } else {
                v1::RunState::Waiting
            };
            return Ok(Response::new(v1::PollWorkResponse {
                new_leases: Vec::new(),
                cancellations,
                next_poll_ms: millis(self.timing.poll_interval),
                run_state: run_state.into(),
                waiting_for: view.waiting_for,
            }));
        };
        let timeout = self.timing.lease_timeout;
        let mut cancellations = Vec::new();
        let current = round.spec().round;
        for l in &req.leases {
            let other_round = l.round != 0 && l.round != current;
            let verdict = if other_round {
                Some(Cancel::Unknown)
            } else {
                round.heartbeat(
                    &req.worker_id,
                    &l.shard_id,
                    l.attempt,
                    l.rows_done,
                    l.started,
                    now,
                    timeout,
                )
            };
            if let Some(cancel) = verdict {
                let reason = match cancel {
                    Cancel::Expired => v1::CancelReason::LeaseExpired,
                    Cancel::Committed => v1::CancelReason::AlreadyCommitted,
                    Cancel::Unknown => v1::CancelReason::UnknownLease,
                };
                tracing::info!(worker = %req.worker_id, shard = %l.shard_id, attempt = l.attempt, ?reason, "lease cancelled");
                cancellations.push(v1::LeaseCancellation {
                    shard_id: l.shard_id.clone(),
                    attempt: l.attempt,
                    reason: reason.into(),
                });
            }
        }
        let mut new_leases = Vec::new();
        if req.accepting && free_slots > 0 && may_lease {
            // Only shards that failed on this worker ask the registry (round, then registry:
            // no handler takes them the other way round). While workers are still registering
            // after the coordinator started, such a shard waits for them: a broken worker that
            // registers first would otherwise fail it again and again, alone, into quarantine.
            let registering =
                now.saturating_duration_since(self.started) < self.timing.registration_grace();
            let registry = self.registry.clone();
            let elsewhere = |h: &crate::shard::History| {
                registering
                    || registry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .schedulable_outside(&h.failed_on, now, horizon)
            };
            for g in round.lease(
                &req.worker_id,
                free_slots as usize,
                now,
                timeout,
                &elsewhere,
            ) {
                tracing::info!(worker = %req.worker_id, shard = %g.shard.shard_id, attempt = g.attempt, rows = g.shard.num_rows, "shard leased");
                new_leases.push(self.lease_message(&round, g));
            }
        }
        Ok(Response::new(v1::PollWorkResponse {
            new_leases,
            cancellations,
            next_poll_ms: millis(self.timing.poll_interval),
            run_state: v1::RunState::Active.into(),
            waiting_for: String::new(),
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
        let unknown = || CoordinatorError::UnknownLease {
            shard_id: commit.shard_id.clone(),
            attempt: commit.attempt,
        };
        let out = match self.round() {
            Some(r)
                if r.has_shard(&commit.shard_id)
                    && (req.round == 0 || req.round == r.spec().round) =>
            {
                r.output().clone()
            }
            _ => return Err(unknown().into()),
        };
        // The store is the source of truth: follow the commit record, not the report.
        let record = match read_commit(&out, &commit.shard_id).await {
            Ok(record) => record,
            Err(crate::RoundError::Store(capfilt_schemas::store::StoreError::Io {
                source: object_store::Error::NotFound { .. },
                ..
            })) => return Err(unknown().into()),
            Err(e) => {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "shard {} reported committed, but: {e}",
                    commit.shard_id
                ))
                .into());
            }
        };
        let winner = record.attempt;
        if record.worker_id == req.worker_id {
            self.registry()
                .add_committed(&req.worker_id, record.counts.rows_in);
        }
        if let Some(mut r) = self.round() {
            r.apply_commit(record);
        }
        tracing::info!(worker = %req.worker_id, shard = %commit.shard_id, attempt = commit.attempt, winner, "shard committed");
        self.wake.notify_one();
        Ok(Response::new(v1::CompleteShardResponse {}))
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
        let kind = req.kind();
        let served = self.round().map(|r| r.spec().round);
        if req.round != 0 && served != Some(req.round) {
            // A report about a round that is no longer served: its shard is final there.
            return Err(CoordinatorError::UnknownLease {
                shard_id: req.shard_id,
                attempt: req.attempt,
            }
            .into());
        }
        if kind == v1::FailureKind::CommitConflict {
            metrics::counter!(crate::metrics::LEASE_FAILURES, "kind" => crate::metrics::failure_kind(kind))
                .increment(1);
            // Another attempt committed first: pick up its record.
            let out = self
                .round()
                .filter(|r| r.has_shard(&req.shard_id))
                .map(|r| r.output().clone());
            if let Some(out) = out
                && let Ok(record) = read_commit(&out, &req.shard_id).await
                && let Some(mut r) = self.round()
            {
                r.apply_commit(record);
            }
            self.wake.notify_one();
            return Ok(Response::new(v1::FailShardResponse {}));
        }
        let Some(mut round) = self.round() else {
            return Err(CoordinatorError::UnknownLease {
                shard_id: req.shard_id,
                attempt: req.attempt,
            }
            .into());
        };
        let blame = match req.blame() {
            v1::Blame::Worker => Blame::Worker,
            _ => Blame::Shard,
        };
        let applied = if kind == v1::FailureKind::Released {
            round.release(&req.shard_id, req.attempt)
        } else {
            round.fail(
                &req.shard_id,
                req.attempt,
                req.retryable,
                req.count_to_failures,
                blame,
                &req.error,
            )
        };
        if !applied {
            return Err(CoordinatorError::UnknownLease {
                shard_id: req.shard_id,
                attempt: req.attempt,
            }
            .into());
        }
        if kind == v1::FailureKind::Released {
            metrics::counter!(crate::metrics::LEASES_RELEASED).increment(1);
        } else {
            metrics::counter!(crate::metrics::LEASE_FAILURES, "kind" => crate::metrics::failure_kind(kind))
                .increment(1);
        }
        tracing::warn!(worker = %req.worker_id, shard = %req.shard_id, attempt = req.attempt, kind = ?kind, blame = ?blame, retryable = req.retryable, error = %req.error, "shard attempt failed");
        drop(round);
        if kind != v1::FailureKind::Released
            && req.count_to_failures
            && let Some(reason) = self.registry().record_failure(
                &req.worker_id,
                &req.shard_id,
                blame == Blame::Worker,
                &req.error,
                Instant::now(),
                self.timing.exclusion,
            )
        {
            metrics::counter!(crate::metrics::WORKERS_EXCLUDED).increment(1);
            tracing::warn!(worker = %req.worker_id, reason = %reason, for_s = self.timing.exclusion.as_secs(), "worker excluded from new leases");
        }
        self.wake.notify_one();
        Ok(Response::new(v1::FailShardResponse {}))
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        check_protocol_version(request.get_ref().protocol_version)?;
        let include_shards = request.get_ref().include_shards;
        Ok(Response::new(self.status(include_shards)))
    }
}
