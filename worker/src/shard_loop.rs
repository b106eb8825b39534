//! `capfilt worker`: registers with a coordinator, polls for shard leases (the poll is the
//! heartbeat), reads each shard's row groups from the object store, runs the CapFilt step, writes
//! `scored/`, `cleaned/` and `rejects/` under attempt-unique names, and commits with a
//! create-only `_commits/{shard}.json`. The first commit wins; a late attempt that finds the
//! record there deletes its own files and reports the conflict.
//!
//! The worker asks for one lease more than its compute slots, so the next shard's bytes are
//! fetched while the current one computes. On shutdown it takes no new work, finishes its
//! leases (or, past the drain timeout, gives them back) and exits. When the coordinator is
//! unreachable it retries with backoff; finished shards are committed in the store regardless,
//! and their reports wait in a queue until the coordinator answers.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capfilt_proto::v1::coordinator_client::CoordinatorClient;
use capfilt_proto::{PROTOCOL_VERSION, v1};
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_schemas::records::{
    CommitRecord, DataFileRef, RECORD_FORMAT_VERSION, ShardCounts, ShardFiles, ShardRef, ShardStats,
};
use capfilt_schemas::store::{self, Location, StoreError};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::{Notify, Semaphore};

use crate::bundle::{Bundle, BundleError};
use crate::engine::{Engine, StepParams};
use crate::engine_hub::EngineHub;
use crate::infer::{InferError, ReadOptions, process_reader, provenance_json};
use crate::metrics::WorkerHealth;
use crate::output::{Tables, parquet_bytes};
use crate::preprocess::ImageLimits;
use crate::runtime::{OrtConfig, OrtRuntime, SessionOptions};
use crate::sampling::{Decoding, GenerationParams};
use crate::shard_input::fetch_shard;
use crate::{Device, EngineError};

/// Worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL (`http://host:port`).
    pub coordinator: String,
    /// This worker's id (unique per process).
    pub worker_id: String,
    /// Compute slots: shards processed at once. They share one engine (one copy of the models)
    /// whose batches take decoded images from all of them.
    pub slots: u32,
    /// Most images in one batch of the shared engine [default: 32 on the CPU, 128 on CUDA].
    pub max_batch: Option<usize>,
    /// Continuous batching in the shared engine: images join the decoding batch as others'
    /// captions finish [default: on for CUDA, off on the CPU].
    pub continuous_batching: Option<bool>,
    /// ONNX Runtime sessions (device, threads).
    pub session: SessionOptions,
    /// ONNX Runtime library.
    pub ort: OrtConfig,
    /// Bundle cache.
    pub cache_dir: PathBuf,
    /// Extra object-store options.
    pub store_options: Vec<(String, String)>,
    /// Image limits.
    pub limits: ImageLimits,
    /// How long a shutting-down worker keeps working on its leases before giving them back.
    pub drain_timeout: Duration,
    /// Longest wait between retries when the coordinator is unreachable.
    pub max_backoff: Duration,
    /// Exit once the coordinator reports its run finished (else wait for the next run).
    pub exit_when_done: bool,
    /// Readiness, shared with the worker's HTTP port.
    pub health: Arc<WorkerHealth>,
    /// TLS and bearer token towards the coordinator.
    pub security: capfilt_proto::security::ClientSecurity,
    /// Store locations (URL or absolute path prefixes) this worker may read and write; a lease
    /// naming anything else is refused. Empty: any.
    pub allowed_prefixes: Vec<String>,
}

impl WorkerConfig {
    /// Images per shared-engine batch on this worker's device.
    pub fn max_batch(&self) -> usize {
        self.max_batch.unwrap_or(match self.session.device {
            Device::Cpu => 32,
            Device::Cuda(_) => 128,
        })
    }

    /// Defaults for `coordinator` with a generated worker id.
    pub fn new(coordinator: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Self {
            coordinator: coordinator.into(),
            worker_id: format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                crate::registry_nonce()
            ),
            slots: 1,
            max_batch: None,
            continuous_batching: None,
            session: SessionOptions::default(),
            ort: OrtConfig::for_build(),
            cache_dir: crate::bundle::default_cache_dir(),
            store_options: Vec::new(),
            limits: ImageLimits::default(),
            drain_timeout: Duration::from_secs(300),
            max_backoff: Duration::from_secs(5),
            exit_when_done: false,
            health: Arc::default(),
            security: Default::default(),
            allowed_prefixes: Vec::new(),
        }
    }
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The coordinator URL is unusable.
    #[error("coordinator URL '{url}': {message}")]
    BadCoordinator {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The coordinator refused the worker for good (protocol version, bad request).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a worker did.
#[derive(Debug, Clone, Default)]
pub struct WorkerSummary {
    /// Shards this worker committed.
    pub committed: u64,
    /// Attempts that lost to an earlier commit.
    pub conflicts: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Rows processed in committed shards.
    pub rows: u64,
}

/// The result of one lease.
#[derive(Debug)]
enum Outcome {
    Committed(Box<v1::CompleteShardRequest>),
    Failed(v1::FailShardRequest),
}

/// An active lease: (coordinator generation, round, shard id, attempt), so a stale task of an
/// older lease of the same shard never touches a fresh one, even when a restarted coordinator
/// numbers attempts from 1 again. The generation counts the coordinator instances this worker
/// has registered with.
type LeaseKey = (u64, u32, String, u32);

struct Active {
    attempt: u32,
    round: u32,
    /// Granted by a coordinator instance that is gone: not reported in heartbeats, and a
    /// failure report is dropped (the new coordinator never granted it).
    orphaned: Arc<AtomicBool>,
    rows_done: Arc<AtomicU64>,
    rows_total: u64,
    /// Set once the lease holds a compute slot (its work started): the coordinator charges
    /// the shard for an expiry only then.
    started: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
}

/// The key of `lease` granted by coordinator generation `generation`.
fn lease_key(generation: u64, lease: &v1::ShardLease, spec: &v1::ShardSpec) -> LeaseKey {
    (
        generation,
        lease.round,
        spec.shard_id.clone(),
        lease.attempt,
    )
}

/// What the next poll reports: every live lease with its progress (leases of a previous
/// coordinator instance are not reported).
fn heartbeat_leases(active: &HashMap<LeaseKey, Active>) -> Vec<v1::LeaseProgress> {
    active
        .iter()
        .filter(|(_, a)| !a.orphaned.load(Ordering::Relaxed))
        .map(|((_, _, id, _), a)| v1::LeaseProgress {
            shard_id: id.clone(),
            attempt: a.attempt,
            rows_done: a.rows_done.load(Ordering::Relaxed),
            rows_total: a.rows_total,
            round: a.round,
            started: a.started.load(Ordering::Relaxed),
        })
        .collect()
}

type EngineKey = (String, String);

struct Shared {
    config: WorkerConfig,
    compute: Semaphore,
    /// The device's one engine, for the bundles of the newest lease: a lease of other bundles
    /// replaces it (the old one ends when the slots still using it finish).
    hub: tokio::sync::Mutex<Option<(EngineKey, Arc<EngineHub>)>>,
    /// Engines replaced while slots still used them: a lease of their bundles that arrives
    /// before they end takes them back instead of loading the bundles again.
    retired: Mutex<Vec<(EngineKey, std::sync::Weak<EngineHub>)>>,
    outcomes: Mutex<Vec<Outcome>>,
    active: Mutex<HashMap<LeaseKey, Active>>,
    /// Coordinator instances registered with so far (the generation of new leases).
    generation: AtomicU64,
    finished: Notify,
    summary: Mutex<WorkerSummary>,
    verified_outputs: Mutex<Vec<String>>,
}

fn status_is_permanent(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::InvalidArgument)
        || (s.code() == tonic::Code::FailedPrecondition && s.message().contains("protocol"))
}

/// Runs a worker until `shutdown` fires and its leases are done (or given back).
pub async fn run_worker(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerSummary, WorkerError> {
    let endpoint = config
        .security
        .endpoint(&config.coordinator)
        .map_err(|e| WorkerError::BadCoordinator {
            url: config.coordinator.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60));
    let mut client =
        CoordinatorClient::with_interceptor(endpoint.connect_lazy(), config.security.interceptor());
    let ort = OrtRuntime::init(&config.ort).map_err(EngineError::from)?;
    config.health.set_runtime_loaded();
    crate::metrics::info(&config.session.device.to_string(), ort.build_info());
    let shared = Arc::new(Shared {
        compute: Semaphore::new(config.slots.max(1) as usize),
        hub: tokio::sync::Mutex::new(None),
        retired: Mutex::new(Vec::new()),
        outcomes: Mutex::new(Vec::new()),
        active: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(0),
        finished: Notify::new(),
        summary: Mutex::new(WorkerSummary::default()),
        verified_outputs: Mutex::new(Vec::new()),
        config,
    });
    let cfg = &shared.config;
    tokio::pin!(shutdown);
    let mut draining: Option<Instant> = None;
    let mut registered = false;
    let mut backoff = Duration::from_millis(100);
    let mut poll_every: Duration;
    let mut last_run_state = v1::RunState::Unspecified;
    let mut instance: Option<String> = None;
    loop {
        cfg.health.set_registered(registered);
        if draining.is_none() && futures::poll!(&mut shutdown).is_ready() {
            tracing::info!(worker = %cfg.worker_id, "shutting down: finishing current leases, taking no new work");
            draining = Some(Instant::now());
        }
        if let Some(since) = draining
            && since.elapsed() >= cfg.drain_timeout
        {
            for a in lock(&shared.active).values() {
                a.cancel.store(true, Ordering::Relaxed);
            }
        }
        // 1. Register (again, e.g. after a coordinator restart).
        if !registered {
            let req = v1::RegisterWorkerRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: cfg.worker_id.clone(),
                device: Some(device_message(cfg.session.device)),
                slots: cfg.slots.max(1),
                hostname: std::env::var("HOSTNAME").unwrap_or_default(),
                build_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            match client.register_worker(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    registered = true;
                    backoff = Duration::from_millis(100);
                    if instance
                        .as_ref()
                        .is_some_and(|i| *i != r.coordinator_instance)
                    {
                        // A new coordinator process: the old one's leases are not its leases.
                        // Stop them; their commits (if any) are in the store and get reported.
                        let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
                        for ((g, _, shard, attempt), a) in lock(&shared.active).iter() {
                            if *g < generation {
                                tracing::info!(shard = %shard, attempt, "lease of a previous coordinator instance dropped");
                                a.orphaned.store(true, Ordering::Relaxed);
                                a.cancel.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    instance = Some(r.coordinator_instance.clone());
                    tracing::info!(worker = %cfg.worker_id, coordinator = %cfg.coordinator, instance = %r.coordinator_instance, "registered");
                }
                Err(s) if status_is_permanent(&s) => {
                    return Err(WorkerError::Refused(s.message().to_string()));
                }
                Err(s) => {
                    tracing::warn!(error = %s.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                    if draining.is_some()
                        && lock(&shared.active).is_empty()
                        && lock(&shared.outcomes).is_empty()
                    {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(cfg.max_backoff);
                    continue;
                }
            }
        }
        // 2. Report finished leases (kept until the coordinator has them).
        let outcomes: Vec<Outcome> = std::mem::take(&mut *lock(&shared.outcomes));
        let mut unsent = Vec::new();
        for outcome in outcomes {
            let sent = match &outcome {
                Outcome::Committed(req) => client.complete_shard((**req).clone()).await.map(|_| ()),
                Outcome::Failed(req) => client.fail_shard(req.clone()).await.map(|_| ()),
            };
            match sent {
                Ok(()) => {}
                // The coordinator no longer knows the lease (restarted, or it expired): the
                // commit record in the store speaks for itself.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    registered = false;
                    unsent.push(outcome);
                }
                Err(s) => {
                    tracing::debug!(error = %s.message(), "report not delivered; keeping it");
                    unsent.push(outcome);
                }
            }
        }
        let unreported = !unsent.is_empty();
        lock(&shared.outcomes).extend(unsent);
        if !registered {
            continue;
        }
        // 3. Poll: heartbeat for current leases, new leases if there is room.
        let (leases, free) = {
            let active = lock(&shared.active);
            let leases = heartbeat_leases(&active);
            // One lease beyond the compute slots: its input is fetched while others compute.
            let capacity = cfg.slots.max(1) as usize + 1;
            (leases, capacity.saturating_sub(active.len()) as u32)
        };
        if draining.is_some() && leases.is_empty() && !unreported {
            break;
        }
        let poll = v1::PollWorkRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: cfg.worker_id.clone(),
            free_slots: if draining.is_some() { 0 } else { free },
            leases,
            accepting: draining.is_none(),
        };
        match client.poll_work(poll).await {
            Ok(r) => {
                backoff = Duration::from_millis(100);
                let r = r.into_inner();
                let run_state = r.run_state();
                for c in &r.cancellations {
                    for ((_, _, shard, attempt), a) in lock(&shared.active).iter() {
                        if *shard == c.shard_id
                            && *attempt == c.attempt
                            && !a.orphaned.load(Ordering::Relaxed)
                        {
                            tracing::info!(shard = %c.shard_id, attempt = c.attempt, reason = ?c.reason(), "lease cancelled by the coordinator");
                            a.cancel.store(true, Ordering::Relaxed);
                        }
                    }
                }
                let got_work = !r.new_leases.is_empty();
                for lease in r.new_leases {
                    start_lease(&shared, lease);
                }
                poll_every = Duration::from_millis(r.next_poll_ms.max(10));
                if run_state != last_run_state || (got_work && run_state != v1::RunState::Active) {
                    match run_state {
                        v1::RunState::Waiting => {
                            tracing::info!(waiting_for = %r.waiting_for, "idle: the coordinator is between rounds")
                        }
                        v1::RunState::Finished => tracing::info!(
                            exit_when_done = cfg.exit_when_done,
                            "the coordinator's run is finished"
                        ),
                        _ => {}
                    }
                    last_run_state = run_state;
                }
                if run_state == v1::RunState::Finished
                    && cfg.exit_when_done
                    && lock(&shared.active).is_empty()
                    && lock(&shared.outcomes).is_empty()
                {
                    tracing::info!(worker = %cfg.worker_id, "run finished: exiting (--exit-when-done)");
                    break;
                }
            }
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition
                    && !s.message().contains("protocol") =>
            {
                registered = false;
                continue;
            }
            Err(s) if status_is_permanent(&s) => {
                return Err(WorkerError::Refused(s.message().to_string()));
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.max_backoff);
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_every) => {}
            _ = shared.finished.notified() => {}
            _ = &mut shutdown, if draining.is_none() => {
                tracing::info!(worker = %cfg.worker_id, "shutting down: finishing current leases, taking no new work");
                draining = Some(Instant::now());
            }
        }
    }
    let summary = lock(&shared.summary).clone();
    tracing::info!(worker = %cfg.worker_id, committed = summary.committed, conflicts = summary.conflicts, failed = summary.failed, "worker stopped");
    Ok(summary)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn device_message(d: Device) -> v1::Device {
    match d {
        Device::Cpu => v1::Device {
            kind: v1::DeviceKind::Cpu.into(),
            index: 0,
            description: "cpu".into(),
        },
        Device::Cuda(n) => v1::Device {
            kind: v1::DeviceKind::Cuda.into(),
            index: n,
            description: format!("cuda:{n}"),
        },
    }
}

fn start_lease(shared: &Arc<Shared>, lease: v1::ShardLease) {
    let Some(spec) = lease.shard.clone() else {
        return;
    };
    let rows_done = Arc::new(AtomicU64::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let key = lease_key(shared.generation.load(Ordering::Relaxed), &lease, &spec);
    let orphaned = Arc::new(AtomicBool::new(false));
    lock(&shared.active).insert(
        key.clone(),
        Active {
            attempt: lease.attempt,
            round: lease.round,
            orphaned: orphaned.clone(),
            rows_done: rows_done.clone(),
            rows_total: spec.num_rows,
            started: started.clone(),
            cancel: cancel.clone(),
        },
    );
    metrics::gauge!(crate::metrics::ACTIVE_LEASES).increment(1.0);
    tracing::info!(shard = %spec.shard_id, attempt = lease.attempt, rows = spec.num_rows, "lease started");
    let shared = shared.clone();
    tokio::spawn(async move {
        let shard_id = spec.shard_id.clone();
        let attempt = lease.attempt;
        let round = lease.round;
        let result = run_lease(&shared, &lease, rows_done, started, cancel.clone()).await;
        let worker_id = shared.config.worker_id.clone();
        let outcome = match result {
            Ok(LeaseResult::Committed(req)) => {
                let mut s = lock(&shared.summary);
                s.committed += 1;
                s.rows += req.counts.as_ref().map_or(0, |c| c.rows_in);
                Some(Outcome::Committed(req))
            }
            Ok(LeaseResult::Conflict) => {
                crate::metrics::not_committed("conflict");
                lock(&shared.summary).conflicts += 1;
                let f = Failure {
                    kind: v1::FailureKind::CommitConflict,
                    error: "another attempt committed this shard first".into(),
                    retryable: false,
                    blame: v1::Blame::Shard,
                };
                Some(Outcome::Failed(fail_request(
                    worker_id, &shard_id, attempt, f, false,
                )))
            }
            // Given back unfinished: no failure counted.
            Err(f) if f.kind == v1::FailureKind::Released => {
                crate::metrics::not_committed("released");
                Some(Outcome::Failed(fail_request(
                    worker_id, &shard_id, attempt, f, false,
                )))
            }
            Err(f) => {
                crate::metrics::not_committed("failed");
                lock(&shared.summary).failed += 1;
                tracing::warn!(shard = %shard_id, attempt, kind = ?f.kind, error = %f.error, "shard attempt failed");
                Some(Outcome::Failed(fail_request(
                    worker_id, &shard_id, attempt, f, true,
                )))
            }
        };
        lock(&shared.active).remove(&key);
        metrics::gauge!(crate::metrics::ACTIVE_LEASES).decrement(1.0);
        let outcome = outcome.filter(|o| {
            let drop = orphaned.load(Ordering::Relaxed) && matches!(o, Outcome::Failed(_));
            if drop {
                tracing::debug!(shard = %shard_id, attempt, "not reporting the end of a previous coordinator's lease");
            }
            !drop
        });
        let outcome = outcome.map(|o| match o {
            Outcome::Committed(mut req) => {
                req.round = round;
                Outcome::Committed(req)
            }
            Outcome::Failed(mut req) => {
                req.round = round;
                Outcome::Failed(req)
            }
        });
        if let Some(o) = outcome {
            lock(&shared.outcomes).push(o);
        }
        shared.finished.notify_one();
    });
}

fn fail_request(
    worker_id: String,
    shard_id: &str,
    attempt: u32,
    f: Failure,
    counted: bool,
) -> v1::FailShardRequest {
    v1::FailShardRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id,
        shard_id: shard_id.to_string(),
        attempt,
        kind: f.kind.into(),
        error: f.error,
        retryable: f.retryable,
        count_to_failures: counted,
        round: 0,
        blame: f.blame.into(),
    }
}

/// How a commit attempt ended.
#[derive(Debug)]
pub enum LeaseResult {
    /// This attempt's commit record was created; the report for the coordinator.
    Committed(Box<v1::CompleteShardRequest>),
    /// Another attempt had committed first; this attempt's files were deleted.
    Conflict,
}

struct Failure {
    kind: v1::FailureKind,
    error: String,
    retryable: bool,
    blame: v1::Blame,
}

/// A failure of the shard's own (its input, its rows), worth another attempt.
fn fail(kind: v1::FailureKind, error: impl std::fmt::Display) -> Failure {
    Failure {
        kind,
        error: error.to_string(),
        retryable: true,
        blame: v1::Blame::Shard,
    }
}

/// A failure of this worker's environment (its bundle cache, its device, a store it cannot
/// use): the coordinator excludes the worker rather than charge the shard.
fn fail_here(kind: v1::FailureKind, error: impl std::fmt::Display) -> Failure {
    Failure {
        blame: v1::Blame::Worker,
        ..fail(kind, error)
    }
}

/// Why `url` may not be touched by this worker, or `None` when it is under one of `allowed`
/// (a coordinator must not make a worker read or write arbitrary paths or hosts). Local paths
/// are compared after making them absolute and normalising `.` and `..`.
pub fn outside_allowed(url: &str, allowed: &[String]) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let normal = |s: &str| -> String {
        if store::is_url(s) && !s.starts_with("file://") {
            // As the store will see it: the URL parser resolves `.` and `..` segments (and
            // their percent-encoded forms on http(s)), so compare what it resolves to.
            return match url::Url::parse(s) {
                Ok(u) => u.as_str().to_string(),
                Err(_) => format!("unparsable URL {s}"),
            };
        }
        let raw = s.strip_prefix("file://").unwrap_or(s);
        let mut out = std::path::PathBuf::new();
        for c in std::path::absolute(raw)
            .unwrap_or_else(|_| raw.into())
            .components()
        {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out.display().to_string()
    };
    let target = normal(url);
    let inside = allowed.iter().any(|prefix| {
        let p = normal(prefix);
        let p = p.trim_end_matches('/');
        target == p || target.starts_with(&format!("{p}/"))
    });
    (!inside).then(|| {
        format!(
            "refused: {url} is outside this worker's allowed store prefixes ({}); see [worker] allowed_prefixes",
            allowed.join(", ")
        )
    })
}

fn step_params(lease: &v1::ShardLease) -> StepParams {
    let p = lease.params.clone().unwrap_or_default();
    let d = GenerationParams::default();
    let or = |v: f32, dflt: f32| if v > 0.0 { v } else { dflt };
    let oru = |v: u32, dflt: usize| if v > 0 { v as usize } else { dflt };
    StepParams {
        generation: GenerationParams {
            decoding: match p.decoding() {
                v1::Decoding::Greedy => Decoding::Greedy,
                v1::Decoding::Beam => Decoding::Beam,
                _ => Decoding::Nucleus,
            },
            top_p: or(p.top_p, d.top_p),
            temperature: or(p.temperature, d.temperature),
            num_beams: oru(p.num_beams, d.num_beams),
            repetition_penalty: or(p.repetition_penalty, d.repetition_penalty),
            min_length: if p.max_length > 0 {
                p.min_length as usize
            } else {
                d.min_length
            },
            max_length: oru(p.max_length, d.max_length),
            candidates: oru(p.candidates, d.candidates),
            length_penalty: d.length_penalty,
        },
        // A threshold of 0 is meaningful (keep everything): take it as sent when the lease has
        // parameters at all (the coordinator always sends them).
        threshold: if lease.params.is_some() {
            p.threshold
        } else {
            0.5
        },
        itm_batch: 64,
        round: lease.round,
    }
}

fn mapping(lease: &v1::ShardLease) -> ColumnMapping {
    match &lease.mapping {
        None => ColumnMapping::img2dataset(),
        Some(m) => {
            let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
            ColumnMapping {
                key: opt(&m.key),
                url: opt(&m.url),
                caption: m.caption.clone(),
                image: opt(&m.image),
            }
        }
    }
}

async fn run_lease(
    shared: &Arc<Shared>,
    lease: &v1::ShardLease,
    rows_done: Arc<AtomicU64>,
    started: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
) -> Result<LeaseResult, Failure> {
    use v1::FailureKind as K;
    let cfg = &shared.config;
    let spec = lease.shard.clone().unwrap_or_default();
    let cap_ref = lease.captioner.clone().unwrap_or_default();
    let fil_ref = lease.filter.clone().unwrap_or_default();
    for url in [
        &cap_ref.url,
        &fil_ref.url,
        &spec.file_url,
        &lease.output_url,
    ] {
        if let Some(refused) = outside_allowed(url, &cfg.allowed_prefixes) {
            return Err(Failure {
                retryable: false,
                ..fail_here(K::Internal, refused)
            });
        }
    }
    let load = |e: BundleError| fail_here(K::ModelLoad, e);
    let cap = Bundle::fetch(&cap_ref.url, &cfg.cache_dir, &cfg.store_options)
        .await
        .map_err(load)?;
    let fil = Bundle::fetch(&fil_ref.url, &cfg.cache_dir, &cfg.store_options)
        .await
        .map_err(load)?;
    for (b, r) in [(&cap, &cap_ref), (&fil, &fil_ref)] {
        if !r.bundle_json_sha256.is_empty() && b.sha256 != r.bundle_json_sha256 {
            return Err(Failure {
                retryable: false,
                ..fail_here(
                    K::ModelLoad,
                    format!(
                        "bundle {} has sha256 {}, the round expects {}",
                        b.source, b.sha256, r.bundle_json_sha256
                    ),
                )
            });
        }
    }
    // Fetch the shard's bytes before taking a compute slot: this is the read-ahead.
    let t = Instant::now();
    let input =
        store::resolve(&spec.file_url, &cfg.store_options).map_err(|e| fail(K::InputRead, e))?;
    let first = spec.first_row_group as usize;
    let groups = first..first + spec.num_row_groups as usize;
    let sparse = fetch_shard(&input, spec.file_size, groups.clone())
        .await
        .map_err(|e| fail(K::InputRead, e))?;
    let read_ms = t.elapsed().as_millis() as u64;
    crate::metrics::stage("read", t.elapsed().as_secs_f64());
    let permit = shared
        .compute
        .acquire()
        .await
        .map_err(|e| fail(K::Internal, e))?;
    if cancel.load(Ordering::Relaxed) {
        return Err(fail(K::Released, "lease cancelled before it started"));
    }
    started.store(true, Ordering::Relaxed);
    // Heartbeat now, so the coordinator learns the work started.
    shared.finished.notify_one();
    let key: EngineKey = (cap.sha256.clone(), fil.sha256.clone());
    let params = step_params(lease);
    let hub = shared_engine(shared, &key, &cap, &fil, &params)
        .await
        .map_err(|e| fail_here(K::ModelLoad, e))?;
    let read = ReadOptions {
        mapping: mapping(lease),
        batch_size: lease
            .params
            .as_ref()
            .map_or(32, |p| p.batch_size.max(1) as usize),
        queue_depth: 2,
        limits: cfg.limits,
        with_images: false,
        cancel: Some(cancel.clone()),
        progress: Some(rows_done),
    };
    let source = spec.file_url.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut client = hub.client(params);
        process_reader(sparse, &source, Some(groups), &mut client, &read)
    })
    .await
    .map_err(|e| fail(K::Internal, format!("shard task panicked: {e}")))?;
    drop(permit);
    let (tables, mut stats) = match result {
        Ok(r) => r,
        Err(InferError::Cancelled) => return Err(fail(K::Released, "lease cancelled")),
        Err(e @ (InferError::Input { .. } | InferError::Schema(_))) => {
            return Err(fail(K::InputRead, e));
        }
        Err(e @ InferError::Engine(EngineError::EngineStopped(_))) => {
            return Err(fail_here(K::Inference, e));
        }
        Err(e) => return Err(fail(K::Inference, e)),
    };
    stats.read_ms = read_ms;
    if cancel.load(Ordering::Relaxed) {
        return Err(fail(K::Released, "lease cancelled"));
    }
    let out = store::resolve(&lease.output_url, &cfg.store_options)
        .map_err(|e| fail(K::OutputWrite, e))?;
    let verified = lock(&shared.verified_outputs).contains(&lease.output_url);
    if !verified {
        // Exactly-once depends on create-only commits: refuse a store that ignores them.
        store::verify_create_only(&out).await.map_err(|e| Failure {
            retryable: false,
            ..fail_here(K::OutputWrite, e)
        })?;
        lock(&shared.verified_outputs).push(lease.output_url.clone());
    }
    let provenance = provenance_json(&cap, &fil, &step_params(lease));
    let shard = ShardRef {
        shard_id: spec.shard_id.clone(),
        file: spec.file_url.clone(),
        first_row_group: spec.first_row_group,
        num_row_groups: spec.num_row_groups,
        first_row: spec.first_row,
        num_rows: spec.num_rows,
    };
    commit_shard(
        &out,
        lease.round,
        &shard,
        lease.attempt,
        &cfg.worker_id,
        tables,
        stats,
        &provenance,
        &cap.sha256,
        &fil.sha256,
    )
    .await
    .map_err(|e| fail(K::OutputWrite, e))
}

/// The device's shared engine for `key`'s bundles: the current one, or a new one loaded in its
/// place (the old one is dropped here; it ends when the slots still using it finish).
async fn shared_engine(
    shared: &Arc<Shared>,
    key: &EngineKey,
    cap: &Bundle,
    fil: &Bundle,
    params: &StepParams,
) -> Result<Arc<EngineHub>, EngineError> {
    let cfg = &shared.config;
    let mut slot = shared.hub.lock().await;
    if let Some((k, hub)) = slot.as_ref()
        && k == key
    {
        if hub.is_alive() {
            return Ok(hub.clone());
        }
        tracing::error!(captioner = %key.0, filter = %key.1, "the shared engine's thread is gone: loading a new one");
    }
    let old = slot.take();
    let revived = {
        let mut retired = lock(&shared.retired);
        retired.retain(|(_, w)| w.strong_count() > 0);
        if let Some((k, hub)) = &old
            && hub.is_alive()
        {
            retired.push((k.clone(), Arc::downgrade(hub)));
        }
        retired
            .iter()
            .filter(|(k, _)| k == key)
            .find_map(|(_, w)| w.upgrade().filter(|h| h.is_alive()))
    };
    if let Some(hub) = revived {
        tracing::info!(captioner = %key.0, filter = %key.1, "engine still in use by other slots taken back");
        *slot = Some((key.clone(), hub.clone()));
        // The replaced engine's last reference may be this one: joined off the async threads.
        tokio::task::spawn_blocking(move || drop(old));
        return Ok(hub);
    }
    if old.is_some() {
        tracing::info!(captioner = %key.0, filter = %key.1, "engine of older bundles evicted");
    }
    let (session, ort, health) = (cfg.session, cfg.ort.clone(), cfg.health.clone());
    let (cap, fil, params) = (cap.clone(), fil.clone(), params.clone());
    let max_batch = cfg.max_batch();
    let continuous = cfg
        .continuous_batching
        .unwrap_or(matches!(cfg.session.device, Device::Cuda(_)));
    let loaded = tokio::task::spawn_blocking(move || {
        // The old engine's last reference may be this one: its thread is joined here, off the
        // async threads.
        drop(old);
        let loaded = OrtRuntime::init(&ort)
            .map_err(EngineError::from)
            .and_then(|rt| Engine::load(rt, &cap, &fil, &session, params));
        health.engine_loaded(loaded.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        EngineHub::start(loaded?, max_batch, continuous)
    })
    .await
    .map_err(|e| EngineError::Shared(format!("loading the engine panicked: {e}")))??;
    metrics::counter!(crate::metrics::ENGINE_LOADS).increment(1);
    tracing::info!(
        max_batch,
        continuous,
        slots = cfg.slots,
        "shared engine started"
    );
    *slot = Some((key.clone(), loaded.clone()));
    Ok(loaded)
}

/// A name part no other attempt can produce, even one of the same shard, attempt number and
/// worker after a coordinator restart renumbered attempts: 64 bits from a per-call randomly
/// keyed hasher over the clock and the process.
fn attempt_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Writes a shard's three tables under attempt-unique names and commits them with a create-only
/// `_commits/{shard}.json`. When a commit record is there already, it is read: if it names this
/// attempt's files (a retried create whose first try landed), the shard is committed; otherwise
/// this attempt's files, which no record names, are deleted.
///
/// Refuses to commit a shard whose rows are not all accounted for (scored or rejected).
#[allow(clippy::too_many_arguments)]
pub async fn commit_shard(
    out: &Location,
    round: u32,
    shard: &ShardRef,
    attempt: u32,
    worker_id: &str,
    tables: Tables,
    mut stats: ShardStats,
    provenance: &str,
    captioner_sha256: &str,
    filter_sha256: &str,
) -> Result<LeaseResult, StoreError> {
    if tables.counts.rows_in != shard.num_rows {
        return Err(StoreError::BadLocation {
            location: out
                .child(&format!("_commits/{}.json", shard.shard_id))
                .display,
            message: format!(
                "not committing shard {}: {} of its {} planned rows are accounted for (scored or rejected)",
                shard.shard_id, tables.counts.rows_in, shard.num_rows
            ),
        });
    }
    let t = Instant::now();
    let worker_tag: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let nonce = attempt_nonce();
    let mut written = Vec::new();
    let mut refs = Vec::new();
    for (table, batch) in [
        ("scored", &tables.scored),
        ("cleaned", &tables.cleaned),
        ("rejects", &tables.rejects),
    ] {
        let name = format!(
            "{table}/part-{}-{attempt}-{worker_tag}-{nonce}.parquet",
            shard.shard_id
        );
        let loc = out.child(&name);
        let bytes = parquet_bytes(batch, provenance).map_err(|e| StoreError::BadLocation {
            location: loc.display.clone(),
            message: format!("encoding Parquet: {e}"),
        })?;
        let size = bytes.len() as u64;
        if let Err(e) = loc.put_bytes(bytes).await {
            delete_files(&written).await;
            return Err(e);
        }
        written.push((loc, name.clone()));
        refs.push(DataFileRef {
            path: name,
            rows: batch.num_rows() as u64,
            bytes: size,
        });
    }
    stats.write_ms = t.elapsed().as_millis() as u64;
    crate::metrics::stage("write", t.elapsed().as_secs_f64());
    let t_commit = Instant::now();
    let [scored, cleaned, rejects]: [DataFileRef; 3] =
        refs.try_into().map_err(|_| StoreError::BadLocation {
            location: out.display.clone(),
            message: "internal: three output files expected".into(),
        })?;
    let counts: ShardCounts = tables.counts.clone();
    let record = CommitRecord {
        format_version: RECORD_FORMAT_VERSION,
        round,
        shard: shard.clone(),
        attempt,
        worker_id: worker_id.to_string(),
        committed_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        captioner_sha256: captioner_sha256.to_string(),
        filter_sha256: filter_sha256.to_string(),
        files: ShardFiles {
            scored,
            cleaned,
            rejects,
        },
        counts: counts.clone(),
        stats: stats.clone(),
    };
    let commit_name = format!("_commits/{}.json", shard.shard_id);
    let commit = out.child(&commit_name);
    let json = serde_json::to_vec_pretty(&record).map_err(|e| StoreError::BadLocation {
        location: commit.display.clone(),
        message: e.to_string(),
    })?;
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match commit
        .store
        .put_opts(&commit.path, PutPayload::from(json), opts)
        .await
    {
        Ok(_) => Ok(committed(record, commit_name, counts, &stats, t_commit)),
        Err(object_store::Error::AlreadyExists { .. }) => {
            // The record there is the shard's output. It may be this attempt's own (the store
            // took the create and the response was lost): then the files it names are ours.
            let theirs: CommitRecord =
                match commit.get_bytes().await.map(|b| serde_json::from_slice(&b)) {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        return Err(StoreError::BadLocation {
                            location: commit.display.clone(),
                            message: format!("unreadable commit record: {e}"),
                        });
                    }
                    Err(e) => return Err(e),
                };
            let named = [
                &theirs.files.scored.path,
                &theirs.files.cleaned.path,
                &theirs.files.rejects.path,
            ];
            if written.iter().all(|(_, name)| named.contains(&name)) {
                tracing::info!(shard = %shard.shard_id, attempt, "the commit record is this attempt's own (its create was retried)");
                return Ok(committed(record, commit_name, counts, &stats, t_commit));
            }
            tracing::info!(shard = %shard.shard_id, attempt, winner = theirs.attempt, winner_worker = %theirs.worker_id, "another attempt committed first; deleting this attempt's files");
            let ours: Vec<_> = written
                .into_iter()
                .filter(|(_, name)| !named.contains(&name))
                .collect();
            delete_files(&ours).await;
            Ok(LeaseResult::Conflict)
        }
        Err(source) => {
            // Unknown whether the record landed: leave the files (a record may name them); a
            // later attempt or the coordinator's commit check settles it.
            Err(StoreError::Io {
                operation: "committing",
                location: commit.display.clone(),
                source,
            })
        }
    }
}

async fn delete_files(files: &[(Location, String)]) {
    for (loc, _) in files {
        if let Err(e) = loc.store.delete(&loc.path).await {
            tracing::warn!(file = %loc.display, error = %e, "could not delete a file of an attempt that did not commit");
        }
    }
}

fn committed(
    record: CommitRecord,
    commit_name: String,
    counts: ShardCounts,
    stats: &ShardStats,
    t_commit: Instant,
) -> LeaseResult {
    crate::metrics::stage("commit", t_commit.elapsed().as_secs_f64());
    crate::metrics::committed(&record.counts);
    tracing::info!(shard = %record.shard.shard_id, attempt = record.attempt, rows = record.counts.rows_in, "shard committed");
    LeaseResult::Committed(Box::new(v1::CompleteShardRequest {
        protocol_version: PROTOCOL_VERSION,
        round: record.round,
        worker_id: record.worker_id.clone(),
        commit: Some(v1::CommitRecord {
            shard_id: record.shard.shard_id.clone(),
            attempt: record.attempt,
            worker_id: record.worker_id.clone(),
            scored: Some(data_file(&record.files.scored)),
            cleaned: Some(data_file(&record.files.cleaned)),
            rejects: Some(data_file(&record.files.rejects)),
            commit_path: commit_name,
        }),
        counts: Some(counts_message(&counts)),
        stats: Some(v1::ShardStats {
            wall_ms: stats.wall_ms,
            read_ms: stats.read_ms,
            decode_ms: stats.decode_ms,
            caption_ms: stats.caption_ms,
            filter_ms: stats.filter_ms,
            write_ms: stats.write_ms,
        }),
    }))
}

fn data_file(f: &DataFileRef) -> v1::DataFile {
    v1::DataFile {
        path: f.path.clone(),
        rows: f.rows,
        bytes: f.bytes,
    }
}

fn counts_message(c: &ShardCounts) -> v1::ShardCounts {
    v1::ShardCounts {
        rows_in: c.rows_in,
        rows_scored: c.rows_scored,
        rows_rejected: c.rows_rejected,
        web_texts: c.web_texts,
        web_kept: c.web_kept,
        synthetic_texts: c.synthetic_texts,
        synthetic_kept: c.synthetic_kept,
        rejects_by_reason: c
            .rejects_by_reason
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), *v))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(attempt: u32) -> Active {
        Active {
            attempt,
            round: 1,
            orphaned: Arc::default(),
            rows_done: Arc::default(),
            rows_total: 10,
            started: Arc::default(),
            cancel: Arc::default(),
        }
    }

    /// Hole 4: the coordinator re-leases a shard to this worker (attempt 2) while the task of
    /// attempt 1 is still winding down; when that stale task ends and removes its entry, the
    /// fresh lease stays and is still heartbeated (keyed by shard alone, it was removed too and
    /// expired at the coordinator).
    #[test]
    fn a_stale_task_never_removes_a_fresh_lease_of_the_same_shard() {
        let spec = v1::ShardSpec {
            shard_id: "f00000-g00001".into(),
            ..Default::default()
        };
        let lease = |attempt| v1::ShardLease {
            round: 1,
            attempt,
            shard: Some(spec.clone()),
            ..Default::default()
        };
        let mut map = HashMap::new();
        let stale = lease_key(0, &lease(1), &spec);
        let fresh = lease_key(0, &lease(2), &spec);
        map.insert(stale.clone(), active(1));
        map.insert(fresh.clone(), active(2));
        map.remove(&stale);
        let reported = heartbeat_leases(&map);
        assert_eq!(reported.len(), 1);
        assert_eq!(
            (reported[0].shard_id.as_str(), reported[0].attempt),
            ("f00000-g00001", 2)
        );
        // The same attempt number from a restarted coordinator (generation 1) is another lease.
        assert_ne!(lease_key(1, &lease(2), &spec), fresh);
    }

    #[test]
    fn a_worker_touches_nothing_outside_its_allowed_prefixes() {
        let allowed = vec!["s3://capfilt/".to_string(), "/data/capfilt".to_string()];
        for ok in [
            "s3://capfilt/web/part-0.parquet",
            "s3://capfilt",
            "/data/capfilt/models/captioner",
            "file:///data/capfilt/out",
        ] {
            assert!(outside_allowed(ok, &allowed).is_none(), "{ok}");
        }
        for bad in [
            "s3://capfilt-other/web",
            "s3://other/capfilt/",
            "gs://capfilt/web",
            "/data/capfilt-evil/x",
            "/data/capfilt/../../etc/passwd",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let why = outside_allowed(bad, &allowed).expect(bad);
            assert!(why.contains("allowed_prefixes"), "{why}");
        }
        assert!(
            outside_allowed("anything://at/all", &[]).is_none(),
            "no list: any"
        );
    }
}
