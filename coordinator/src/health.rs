//! Whether the coordinator is ready: what `/readyz` and `grpc.health.v1` answer.
//!
//! Ready means a round has been opened by this process (its plan is recorded and workers can
//! lease) and the output store answered the last probe. A coordinator stays ready between
//! rounds (workers must reach it to hear that they should wait) and after the run has finished
//! (they must hear that it is finished). Liveness (`/healthz`) is only "the process answers".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capfilt_schemas::store::Location;

/// How long a store probe may take before the store counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A successful probe older than this no longer vouches for the store.
pub const PROBE_STALE_AFTER: Duration = Duration::from_secs(60);

/// Readiness state shared by the service, the HTTP server and the gRPC health service.
#[derive(Debug, Default)]
pub struct Health {
    opened: AtomicBool,
    output: Mutex<Option<Location>>,
    last_probe: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Health {
    /// Records that a round over `output` was opened (which read and wrote the store).
    pub fn round_opened(&self, output: Location) {
        self.opened.store(true, Ordering::SeqCst);
        *lock(&self.output) = Some(output);
        *lock(&self.last_probe) = Some((Instant::now(), Ok(())));
    }

    /// Lists the output prefix once and records whether the store answered.
    pub async fn probe_store(&self) {
        let Some(out) = lock(&self.output).clone() else {
            return;
        };
        let listed = tokio::time::timeout(
            PROBE_TIMEOUT,
            out.store.list_with_delimiter(Some(&out.path)),
        )
        .await;
        let result = match listed {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("output store {}: {e}", out.display)),
            Err(_) => Err(format!(
                "output store {} did not answer within {}s",
                out.display,
                PROBE_TIMEOUT.as_secs()
            )),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "store probe failed: not ready");
        }
        *lock(&self.last_probe) = Some((Instant::now(), result));
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        if !self.opened.load(Ordering::SeqCst) {
            return Err("no round opened yet".into());
        }
        match &*lock(&self.last_probe) {
            None => Err("output store not probed yet".into()),
            Some((_, Err(e))) => Err(e.clone()),
            Some((at, Ok(()))) if at.elapsed() > PROBE_STALE_AFTER => Err(format!(
                "output store not probed for {}s",
                at.elapsed().as_secs()
            )),
            Some(_) => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`Health`] as the telemetry crate's readiness check.
#[derive(Debug, Clone)]
pub struct Readiness(pub Arc<Health>);

impl capfilt_telemetry::Readiness for Readiness {
    fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }
}

/// Keeps the `grpc.health.v1` status of the coordinator service (and of the server as a whole,
/// the empty service name) in step with [`Health::ready`], probing the store every `period`.
pub async fn report_grpc_health(
    health: Arc<Health>,
    reporter: tonic_health::server::HealthReporter,
    period: Duration,
) {
    let mut last_probe = Instant::now();
    let mut last: Option<bool> = None;
    loop {
        if last_probe.elapsed() >= period {
            health.probe_store().await;
            last_probe = Instant::now();
        }
        let ready = health.ready().is_ok();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in ["", crate::GRPC_SERVICE_NAME] {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(ready, "readiness changed");
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_ready_until_a_round_opens_then_follows_the_store() {
        let h = Health::default();
        assert_eq!(h.ready(), Err("no round opened yet".to_string()));
        let dir = tempfile::tempdir().expect("tempdir");
        let out = capfilt_schemas::store::resolve(&dir.path().display().to_string(), &[])
            .expect("location");
        h.round_opened(out);
        assert_eq!(h.ready(), Ok(()));
        h.probe_store().await;
        assert_eq!(h.ready(), Ok(()));
        // A store nobody answers for makes the coordinator unready, with the reason.
        let dead = capfilt_schemas::store::resolve("http://127.0.0.1:9/out", &[]).expect("url");
        *lock(&h.output) = Some(dead);
        h.probe_store().await;
        let why = h.ready().expect_err("unreachable store");
        assert!(
            why.starts_with("output store http://127.0.0.1:9/out"),
            "{why}"
        );
    }
}
