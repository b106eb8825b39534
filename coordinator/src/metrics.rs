//! The coordinator's Prometheus metrics: names, help texts and where they are recorded.
//!
//! Counters are recorded where the event happens (a lease granted in `PollWork`, an expiry in
//! the sweeper's tick, a commit when its record is applied); gauges that describe state (shards
//! by state, workers by state, round, run phase) are set at scrape time by [`StateCollector`]
//! from the same snapshot `GetStatus` answers with. Label values are bounded: states, phases,
//! failure kinds, reject reasons, origins and RPC method names come from fixed sets.
//!
//! Commits found in the store when a restarted coordinator rebuilds a round are not counted:
//! the counters say what this process saw happen.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use capfilt_proto::v1;
use capfilt_schemas::records::ShardCounts;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::CoordinatorService;
use crate::bootstrap::phase::PHASE_NAMES;

/// Shards of the current round by state (`state`: pending, leased, committed, quarantined).
pub const SHARDS: &str = "capfilt_coordinator_shards";
/// Leases granted.
pub const LEASES_GRANTED: &str = "capfilt_coordinator_leases_granted_total";
/// Leases taken back because no heartbeat extended them.
pub const LEASES_EXPIRED: &str = "capfilt_coordinator_leases_expired_total";
/// Leases a worker gave back unfinished (draining, cancelled).
pub const LEASES_RELEASED: &str = "capfilt_coordinator_leases_released_total";
/// Workers excluded from new leases (failures that blame them).
pub const WORKERS_EXCLUDED: &str = "capfilt_coordinator_workers_excluded_total";
/// Failed shard attempts (`kind`: the worker's failure kind).
pub const LEASE_FAILURES: &str = "capfilt_coordinator_lease_failures_total";
/// Shards committed (commit records applied).
pub const SHARDS_COMMITTED: &str = "capfilt_coordinator_shards_committed_total";
/// Shards quarantined.
pub const SHARDS_QUARANTINED: &str = "capfilt_coordinator_shards_quarantined_total";
/// Input rows of committed shards.
pub const ROWS_COMMITTED: &str = "capfilt_coordinator_rows_committed_total";
/// Texts judged in committed shards (`origin`: web, synthetic).
pub const TEXTS: &str = "capfilt_coordinator_texts_total";
/// Texts kept in committed shards (`origin`).
pub const TEXTS_KEPT: &str = "capfilt_coordinator_texts_kept_total";
/// Rejected rows of committed shards (`reason`).
pub const REJECTS: &str = "capfilt_coordinator_rejects_total";
/// Registered workers heard from within the lease timeout (`state`: working, idle, draining).
pub const WORKERS: &str = "capfilt_coordinator_workers";
/// The round being served (0 when none).
pub const ROUND: &str = "capfilt_coordinator_round";
/// 1 for the bootstrap run's current phase, 0 for the others (`phase`).
pub const RUN_PHASE: &str = "capfilt_coordinator_run_phase";
/// Rows of the current round, planned and done.
pub const ROUND_ROWS: &str = "capfilt_coordinator_round_rows";
/// gRPC request latency (`method`, `code`).
pub const RPC_SECONDS: &str = "capfilt_coordinator_rpc_duration_seconds";
/// Whether `/readyz` answers ready (1) or not (0).
pub const READY: &str = "capfilt_coordinator_ready";

/// Registers help texts and units (call once after installing the recorder).
pub fn describe() {
    describe_gauge!(SHARDS, "Shards of the current round by state");
    describe_counter!(LEASES_GRANTED, "Shard leases granted");
    describe_counter!(
        LEASES_EXPIRED,
        "Shard leases taken back because no heartbeat extended them"
    );
    describe_counter!(LEASES_RELEASED, "Shard leases given back unfinished");
    describe_counter!(
        WORKERS_EXCLUDED,
        "Workers excluded from new leases after failures that blame them"
    );
    describe_counter!(LEASE_FAILURES, "Failed shard attempts by failure kind");
    describe_counter!(SHARDS_COMMITTED, "Shards committed");
    describe_counter!(SHARDS_QUARANTINED, "Shards quarantined");
    describe_counter!(ROWS_COMMITTED, "Input rows of committed shards");
    describe_counter!(TEXTS, "Texts judged in committed shards by origin");
    describe_counter!(TEXTS_KEPT, "Texts kept in committed shards by origin");
    describe_counter!(REJECTS, "Rejected input rows of committed shards by reason");
    describe_gauge!(
        WORKERS,
        "Workers heard from within the lease timeout, by state"
    );
    describe_gauge!(ROUND, "The round being served (0 when none)");
    describe_gauge!(RUN_PHASE, "1 for the bootstrap run's current phase");
    describe_gauge!(
        ROUND_ROWS,
        "Rows of the current round (kind: planned, done)"
    );
    describe_histogram!(RPC_SECONDS, Unit::Seconds, "gRPC request latency");
    describe_gauge!(READY, "Whether /readyz answers ready");
}

/// Counts a shard's committed figures.
pub(crate) fn commit_counted(counts: &ShardCounts) {
    counter!(SHARDS_COMMITTED).increment(1);
    capfilt_telemetry::CommitCounters {
        rows: ROWS_COMMITTED,
        texts: TEXTS,
        texts_kept: TEXTS_KEPT,
        rejects: REJECTS,
    }
    .add(counts);
}

/// The label of a worker's failure kind.
pub(crate) fn failure_kind(kind: v1::FailureKind) -> &'static str {
    match kind {
        v1::FailureKind::Unspecified => "unspecified",
        v1::FailureKind::InputRead => "input_read",
        v1::FailureKind::ModelLoad => "model_load",
        v1::FailureKind::Inference => "inference",
        v1::FailureKind::OutputWrite => "output_write",
        v1::FailureKind::CommitConflict => "commit_conflict",
        v1::FailureKind::Released => "released",
        v1::FailureKind::Internal => "internal",
    }
}

/// Sets the state gauges from the service's status snapshot at each scrape.
pub struct StateCollector(pub CoordinatorService);

impl capfilt_telemetry::Collector for StateCollector {
    fn collect(&self) {
        let s = self.0.status(false);
        let counts = s.shards.unwrap_or_default();
        for (state, n) in [
            ("pending", counts.pending),
            ("leased", counts.leased),
            ("committed", counts.committed),
            ("quarantined", counts.quarantined),
        ] {
            gauge!(SHARDS, "state" => state).set(n as f64);
        }
        gauge!(ROUND).set(f64::from(s.round));
        gauge!(ROUND_ROWS, "kind" => "planned").set(s.rows_total as f64);
        gauge!(ROUND_ROWS, "kind" => "done").set(s.rows_done as f64);
        let horizon = u128::from(self.0.timing().lease_timeout.as_millis() as u64);
        let now = crate::registry::unix_ms();
        let (mut working, mut idle, mut draining) = (0u32, 0u32, 0u32);
        for w in s
            .workers
            .iter()
            .filter(|w| u128::from(now.saturating_sub(w.last_seen_unix_ms)) < horizon)
        {
            match w.state.as_str() {
                "working" => working += 1,
                "draining" => draining += 1,
                _ => idle += 1,
            }
        }
        gauge!(WORKERS, "state" => "working").set(f64::from(working));
        gauge!(WORKERS, "state" => "idle").set(f64::from(idle));
        gauge!(WORKERS, "state" => "draining").set(f64::from(draining));
        if let Some(run) = &s.run {
            for name in PHASE_NAMES {
                gauge!(RUN_PHASE, "phase" => *name).set(if run.phase == *name { 1.0 } else { 0.0 });
            }
        }
        gauge!(READY).set(if self.0.health().ready().is_ok() {
            1.0
        } else {
            0.0
        });
    }
}

/// The bounded label of a gRPC path.
fn method_label(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "RegisterWorker" => "RegisterWorker",
        "PollWork" => "PollWork",
        "CompleteShard" => "CompleteShard",
        "FailShard" => "FailShard",
        "GetStatus" => "GetStatus",
        "Check" => "health.Check",
        "Watch" => "health.Watch",
        _ => "other",
    }
}

/// The bounded label of a `grpc-status` header value.
fn code_label(value: Option<&str>) -> &'static str {
    let code = value
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::NotFound => "not_found",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}

/// A tower layer that records [`RPC_SECONDS`] for every gRPC request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // Unary errors are "trailers-only" responses: the status rides in the headers.
            // A status in the trailers (none here: every method is unary) reads as ok.
            let code = match &result {
                Ok(resp) => code_label(
                    resp.headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok()),
                ),
                Err(_) => "transport",
            };
            histogram!(RPC_SECONDS, "method" => method, "code" => code)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label("/capfilt.v1.Coordinator/PollWork"), "PollWork");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "health.Check");
        assert_eq!(method_label("/x.y/Anything"), "other");
        assert_eq!(code_label(None), "ok");
        assert_eq!(code_label(Some("5")), "not_found");
        assert_eq!(code_label(Some("junk")), "ok");
        assert_eq!(code_label(Some("12")), "other");
    }
}
