//! The worker's Prometheus metrics and its readiness.
//!
//! Per-batch stages (decode and preprocess, captioner, filter) and batch sizes are histograms
//! recorded as each batch runs; per-shard stages (read, write, commit) when the shard does.
//! The committed figures (rows, texts and kept texts by origin, rejects by reason) are counted
//! once a shard's commit record is written by this worker, so summed over workers they equal the
//! round's manifest; `images_processed_total` counts as batches finish (live throughput,
//! including attempts that later fail).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use capfilt_schemas::records::ShardCounts;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Images run through captioner and filter (as batches finish).
pub const IMAGES_PROCESSED: &str = "capfilt_worker_images_processed_total";
/// Input rows of shards this worker committed.
pub const ROWS_COMMITTED: &str = "capfilt_worker_rows_committed_total";
/// Texts judged in committed shards (`origin`: web, synthetic).
pub const TEXTS: &str = "capfilt_worker_texts_total";
/// Texts kept in committed shards (`origin`).
pub const TEXTS_KEPT: &str = "capfilt_worker_texts_kept_total";
/// Rejected rows of committed shards (`reason`).
pub const REJECTS: &str = "capfilt_worker_rejects_total";
/// Shard attempts by outcome (`outcome`: committed, conflict, failed, released).
pub const SHARDS: &str = "capfilt_worker_shards_total";
/// Seconds per stage (`stage`: read, decode, captioner, filter, write, commit).
pub const STAGE_SECONDS: &str = "capfilt_worker_stage_seconds";
/// Images per captioner/filter batch.
pub const BATCH_IMAGES: &str = "capfilt_worker_batch_images";
/// Shard chunks (callers) per batch of the device's shared engine.
pub const BATCH_CALLERS: &str = "capfilt_worker_batch_chunks";
/// Decoded batches waiting for the models (summed over slots).
pub const DECODE_QUEUE_DEPTH: &str = "capfilt_worker_decode_queue_depth";
/// Engines (captioner + filter sessions) loaded.
pub const ENGINE_LOADS: &str = "capfilt_worker_engine_loads_total";
/// Leases being worked on.
pub const ACTIVE_LEASES: &str = "capfilt_worker_active_leases";
/// 1, labelled with the ONNX Runtime device and library (`device`, `ort`).
pub const INFO: &str = "capfilt_worker_info";
/// Memory in use on the worker's CUDA device, all processes (NVML; `device`: cuda:N).
pub const GPU_MEMORY_USED: &str = "capfilt_worker_gpu_memory_used_bytes";
/// Memory of the worker's CUDA device (NVML; `device`).
pub const GPU_MEMORY_TOTAL: &str = "capfilt_worker_gpu_memory_total_bytes";

/// Registers help texts and units (call once after installing the recorder).
pub fn describe() {
    describe_counter!(IMAGES_PROCESSED, "Images run through captioner and filter");
    describe_counter!(ROWS_COMMITTED, "Input rows of shards this worker committed");
    describe_counter!(TEXTS, "Texts judged in committed shards by origin");
    describe_counter!(TEXTS_KEPT, "Texts kept in committed shards by origin");
    describe_counter!(REJECTS, "Rejected input rows of committed shards by reason");
    describe_counter!(SHARDS, "Shard attempts by outcome");
    describe_histogram!(STAGE_SECONDS, Unit::Seconds, "Seconds per stage");
    describe_histogram!(BATCH_IMAGES, "Images per captioner and filter batch");
    describe_histogram!(
        BATCH_CALLERS,
        "Shard chunks merged into one batch of the device's shared engine"
    );
    describe_gauge!(DECODE_QUEUE_DEPTH, "Decoded batches waiting for the models");
    describe_counter!(ENGINE_LOADS, "Captioner and filter engines loaded");
    describe_gauge!(ACTIVE_LEASES, "Leases being worked on");
    describe_gauge!(INFO, "ONNX Runtime device and library of this worker");
    describe_gauge!(
        GPU_MEMORY_USED,
        Unit::Bytes,
        "Memory in use on the worker's CUDA device (all processes)"
    );
    describe_gauge!(
        GPU_MEMORY_TOTAL,
        Unit::Bytes,
        "Memory of the worker's CUDA device"
    );
}

/// Records one stage's duration.
pub fn stage(name: &'static str, seconds: f64) {
    histogram!(STAGE_SECONDS, "stage" => name).record(seconds);
}

/// Counts the figures of a shard this worker committed.
pub fn committed(counts: &ShardCounts) {
    counter!(SHARDS, "outcome" => "committed").increment(1);
    capfilt_telemetry::CommitCounters {
        rows: ROWS_COMMITTED,
        texts: TEXTS,
        texts_kept: TEXTS_KEPT,
        rejects: REJECTS,
    }
    .add(counts);
}

/// Counts a shard attempt that did not commit (`conflict`, `failed`, `released`).
pub fn not_committed(outcome: &'static str) {
    counter!(SHARDS, "outcome" => outcome).increment(1);
}

/// Whether the worker is ready: registered with its coordinator, ONNX Runtime loaded, and the
/// last engine load (if any) succeeded.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    registered: AtomicBool,
    runtime: AtomicBool,
    engine_error: Mutex<Option<String>>,
}

impl WorkerHealth {
    /// Records whether the worker is registered with the coordinator it serves now.
    pub fn set_registered(&self, yes: bool) {
        self.registered.store(yes, Ordering::SeqCst);
    }

    /// Records that ONNX Runtime loaded.
    pub fn set_runtime_loaded(&self) {
        self.runtime.store(true, Ordering::SeqCst);
    }

    /// Records the outcome of an engine load.
    pub fn engine_loaded(&self, result: Result<(), String>) {
        *self.engine_error.lock().unwrap_or_else(|p| p.into_inner()) = result.err();
    }

    /// `Ok` when ready, else why not.
    pub fn ready(&self) -> Result<(), String> {
        if !self.runtime.load(Ordering::SeqCst) {
            return Err("ONNX Runtime not loaded".into());
        }
        if let Some(e) = &*self.engine_error.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(format!("the last engine load failed: {e}"));
        }
        if !self.registered.load(Ordering::SeqCst) {
            return Err("not registered with the coordinator".into());
        }
        Ok(())
    }
}

impl capfilt_telemetry::Readiness for WorkerHealth {
    fn ready(&self) -> Result<(), String> {
        WorkerHealth::ready(self)
    }
}

/// Serves the worker's HTTP port (`/metrics`, `/healthz`, `/readyz`) on `listener` until
/// `shutdown` resolves; `gpu` (see [`GpuMemory::for_device`]) sets the GPU memory gauges at
/// each scrape.
pub async fn serve_http(
    health: std::sync::Arc<WorkerHealth>,
    gpu: Option<GpuMemory>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), capfilt_telemetry::TelemetryError> {
    let handle = capfilt_telemetry::install_recorder()?;
    describe();
    let collector =
        gpu.map(|g| std::sync::Arc::new(g) as std::sync::Arc<dyn capfilt_telemetry::Collector>);
    capfilt_telemetry::serve(
        listener,
        capfilt_telemetry::router(handle, health, collector),
        shutdown,
    )
    .await
}

/// The memory of the worker's CUDA device, read through NVML (the NVIDIA driver's
/// `libnvidia-ml.so.1`, loaded at run time) when `/metrics` is scraped.
pub struct GpuMemory {
    index: u32,
    nvml: nvml_wrapper::Nvml,
}

impl GpuMemory {
    /// For `cuda:N` devices whose driver library loads; `None` for the CPU or when NVML is not
    /// there (logged: the gauges are then absent, nothing else changes).
    pub fn for_device(device: crate::Device) -> Option<Self> {
        let crate::Device::Cuda(index) = device else {
            return None;
        };
        match nvml_wrapper::Nvml::builder()
            .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
            .init()
        {
            Ok(nvml) => Some(Self { index, nvml }),
            Err(e) => {
                tracing::warn!(error = %e, device = %device, "NVML not available: no GPU memory metrics");
                None
            }
        }
    }
}

impl capfilt_telemetry::Collector for GpuMemory {
    fn collect(&self) {
        let info = self
            .nvml
            .device_by_index(self.index)
            .and_then(|d| d.memory_info());
        match info {
            Ok(m) => {
                let device = format!("cuda:{}", self.index);
                gauge!(GPU_MEMORY_USED, "device" => device.clone()).set(m.used as f64);
                gauge!(GPU_MEMORY_TOTAL, "device" => device).set(m.total as f64);
            }
            Err(e) => tracing::debug!(error = %e, "reading GPU memory through NVML failed"),
        }
    }
}

/// Sets the worker's info gauge.
pub fn info(device: &str, ort: &str) {
    gauge!(INFO, "device" => device.to_string(), "ort" => ort.to_string()).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gpu_gauges_for_the_cpu() {
        assert!(GpuMemory::for_device(crate::Device::Cpu).is_none());
    }

    #[test]
    fn ready_needs_runtime_registration_and_a_good_engine() {
        let h = WorkerHealth::default();
        assert_eq!(h.ready(), Err("ONNX Runtime not loaded".to_string()));
        h.set_runtime_loaded();
        assert_eq!(
            h.ready(),
            Err("not registered with the coordinator".to_string())
        );
        h.set_registered(true);
        assert_eq!(h.ready(), Ok(()));
        h.engine_loaded(Err("bad graph".into()));
        assert_eq!(
            h.ready(),
            Err("the last engine load failed: bad graph".to_string())
        );
        h.engine_loaded(Ok(()));
        assert_eq!(h.ready(), Ok(()));
    }
}
