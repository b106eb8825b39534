//! Prometheus metrics and the HTTP health endpoints that the coordinator and every worker serve.
//!
//! One process installs one Prometheus recorder ([`install_recorder`]); the `metrics` macros
//! anywhere in the process then record into it (so `capfilt run`, a coordinator with in-process
//! workers, serves both sets on one port). [`router`] builds the axum routes every capfilt
//! process serves:
//!
//! - `GET /metrics`: Prometheus text format. Gauges that describe state (shards by state,
//!   workers) are set by a [`Collector`] at scrape time rather than kept up to date on every
//!   change.
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness).
//! - `GET /readyz`: 200 when the [`Readiness`] check passes, else 503 with the reason as text.
//!
//! The coordinator adds its status page to the same router.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of every `*_seconds` histogram: from one millisecond (an RPC) to ten
/// minutes (a base-size shard on CPU).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Upper bounds of every `*_images` histogram (batch sizes).
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Errors of the telemetry set-up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus recorder could not be built or installed.
    #[error("cannot install the Prometheus recorder: {0}")]
    Recorder(String),
    /// The HTTP server failed.
    #[error("metrics server: {0}")]
    Serve(#[from] std::io::Error),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's Prometheus recorder once and returns its handle (the same handle on
/// every later call).
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_images".into()), BATCH_BUCKETS))
        .map_err(|e| TelemetryError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let _ = HANDLE.set(handle.clone());
            Ok(handle)
        }
        // Another thread won the race: use its recorder.
        Err(_) => HANDLE.get().cloned().ok_or_else(|| {
            TelemetryError::Recorder("another metrics recorder is installed".into())
        }),
    }
}

/// Answers `/readyz`: `Ok` when ready, else why not (one line).
pub trait Readiness: Send + Sync + 'static {
    /// Whether the process is ready to serve.
    fn ready(&self) -> Result<(), String>;
}

/// Sets state gauges just before each scrape.
pub trait Collector: Send + Sync + 'static {
    /// Records the current state into gauges.
    fn collect(&self);
}

/// What the base routes need.
#[derive(Clone)]
struct Base {
    handle: PrometheusHandle,
    readiness: Arc<dyn Readiness>,
    collector: Option<Arc<dyn Collector>>,
}

/// The routes every capfilt process serves: `/metrics`, `/healthz`, `/readyz`.
pub fn router(
    handle: PrometheusHandle,
    readiness: Arc<dyn Readiness>,
    collector: Option<Arc<dyn Collector>>,
) -> Router {
    let base = Base {
        handle,
        readiness,
        collector,
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(base)
}

async fn metrics_text(State(base): State<Base>) -> Response {
    if let Some(c) = &base.collector {
        c.collect();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        base.handle.render(),
    )
        .into_response()
}

async fn readyz(State(base): State<Base>) -> Response {
    match base.readiness.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Serves `router` on an already-bound `listener` until `shutdown` resolves, draining the
/// recorder's histograms now and then so that memory stays bounded between scrapes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "http listening (/metrics, /healthz, /readyz)");
    let upkeep = HANDLE.get().cloned().map(|h| {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                h.run_upkeep();
            }
        })
    });
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    if let Some(u) = upkeep {
        u.abort();
    }
    served.map_err(TelemetryError::Serve)
}

/// The counters a committed shard's figures go to (the coordinator and workers each have a set,
/// so that both sum to the round's manifest).
#[derive(Debug, Clone, Copy)]
pub struct CommitCounters {
    /// Input rows.
    pub rows: &'static str,
    /// Texts judged, by `origin`.
    pub texts: &'static str,
    /// Texts kept, by `origin`.
    pub texts_kept: &'static str,
    /// Rejected rows, by `reason`.
    pub rejects: &'static str,
}

impl CommitCounters {
    /// Adds a committed shard's counts.
    pub fn add(&self, counts: &capfilt_schemas::records::ShardCounts) {
        use metrics::counter;
        counter!(self.rows).increment(counts.rows_in);
        counter!(self.texts, "origin" => "web").increment(counts.web_texts);
        counter!(self.texts, "origin" => "synthetic").increment(counts.synthetic_texts);
        counter!(self.texts_kept, "origin" => "web").increment(counts.web_kept);
        counter!(self.texts_kept, "origin" => "synthetic").increment(counts.synthetic_kept);
        for (reason, n) in &counts.rejects_by_reason {
            counter!(self.rejects, "reason" => reason.as_str()).increment(*n);
        }
    }
}

/// Parses a `--metrics-listen` address, with the flag's name in the error.
pub fn parse_listen(value: &str, what: &str) -> Result<std::net::SocketAddr, String> {
    value
        .parse()
        .map_err(|e| format!("{what} '{value}': {e} (expected HOST:PORT, e.g. 0.0.0.0:9090)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    struct Flag(AtomicBool);
    impl Readiness for Flag {
        fn ready(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no round opened yet".into())
            }
        }
    }
    struct SetGauge;
    impl Collector for SetGauge {
        fn collect(&self) {
            metrics::gauge!("capfilt_test_collected").set(7.0);
        }
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_ready_and_metrics_answer() {
        let handle = install_recorder().expect("recorder");
        assert!(
            install_recorder().is_ok(),
            "a second install reuses the recorder"
        );
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let router = router(handle, flag.clone(), Some(Arc::new(SetGauge)));
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        let (code, body) = get(&router, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: no round opened yet\n");
        flag.0.store(true, Ordering::SeqCst);
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);

        metrics::histogram!("capfilt_test_step_seconds").record(0.3);
        metrics::counter!("capfilt_test_things_total", "kind" => "a").increment(3);
        let (code, body) = get(&router, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("capfilt_test_collected 7"), "{body}");
        assert!(
            body.contains("capfilt_test_things_total{kind=\"a\"} 3"),
            "{body}"
        );
        // Histograms, not summaries: bucket lines with the configured bounds.
        assert!(
            body.contains("capfilt_test_step_seconds_bucket{le=\"0.5\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("capfilt_test_step_seconds_bucket{le=\"0.25\"} 0"),
            "{body}"
        );
    }

    #[test]
    fn a_bad_listen_address_names_the_flag() {
        let e = parse_listen("9090", "--metrics-listen").expect_err("no host");
        assert!(e.starts_with("--metrics-listen '9090': "), "{e}");
    }
}
