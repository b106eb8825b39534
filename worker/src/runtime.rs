//! Finding, loading and initialising ONNX Runtime.
//!
//! capfilt loads `libonnxruntime` at run time (ort's `load-dynamic`), from the first of:
//! 1. the path given in the worker's configuration (`--ort-library`, `CAPFILT_ORT_LIBRARY`);
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. `third_party/onnxruntime/{cpu,gpu}/lib/libonnxruntime.so.1.31.1` under `CAPFILT_HOME`, the
//!    current directory or any of their parents, or any parent of the running executable — where
//!    `scripts/fetch-onnxruntime.sh` puts it.
//!
//! The library and the ONNX Runtime environment are process-wide: [`OrtRuntime::init`] loads them
//! once and later calls return the same runtime.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::device::Device;
use capfilt_schemas::bundle::Precision;

/// ONNX Runtime version this build expects (ort's `api-31` feature).
pub const ORT_VERSION: &str = "1.31.1";

/// Errors of ONNX Runtime set-up and session creation.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    /// No library at any of the default locations.
    #[error(
        "ONNX Runtime {ORT_VERSION} library not found (looked for {}); run scripts/fetch-onnxruntime.sh{} or set ORT_DYLIB_PATH",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        if *.gpu { " --gpu" } else { "" }
    )]
    LibraryNotFound {
        /// Paths that were tried.
        searched: Vec<PathBuf>,
        /// Whether the GPU build was looked for.
        gpu: bool,
    },
    /// A configured path does not exist.
    #[error("{origin} points to {}, which does not exist; run scripts/fetch-onnxruntime.sh or fix the path", .path.display())]
    ConfiguredLibraryMissing {
        /// Where the path came from.
        origin: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The library exists but could not be loaded (wrong file, wrong version, missing dependency).
    #[error("cannot load ONNX Runtime from {}: {message}", .path.display())]
    Load {
        /// The library.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// The runtime was already initialised from another library in this process.
    #[error("ONNX Runtime is already loaded from {} in this process; cannot switch to {}", .loaded.display(), .requested.display())]
    AlreadyLoaded {
        /// Library in use.
        loaded: PathBuf,
        /// Library asked for.
        requested: PathBuf,
    },
    /// The NVIDIA driver cannot run the GPU build.
    #[error(transparent)]
    Driver(#[from] crate::device::DriverError),
    /// A CUDA device was asked for in a build without the `cuda` feature.
    #[error(
        "device {0} needs a capfilt build with the `cuda` feature (cargo build --features cuda)"
    )]
    CudaNotBuilt(Device),
    /// ONNX Runtime refused an operation.
    #[error("{context}: {message}")]
    Ort {
        /// What was being done.
        context: String,
        /// ONNX Runtime's message.
        message: String,
    },
}

impl OrtError {
    fn ort(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        OrtError::Ort {
            context: context.into(),
            message: e.to_string(),
        }
    }
}

/// Where and how to load ONNX Runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrtConfig {
    /// Explicit library path (highest priority).
    pub library: Option<PathBuf>,
    /// Look for the GPU build at the default location (set by the `cuda` feature).
    pub gpu: bool,
}

impl OrtConfig {
    /// The default for this build: the GPU library when built with `cuda`, else the CPU one.
    pub fn for_build() -> Self {
        Self {
            library: None,
            gpu: cfg!(feature = "cuda"),
        }
    }

    /// Resolves the library path (see the module docs for the order), without loading it.
    pub fn resolve(&self) -> Result<PathBuf, OrtError> {
        if let Some(path) = &self.library {
            return existing(path, "the configured ONNX Runtime library");
        }
        if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return existing(Path::new(&path), "ORT_DYLIB_PATH");
        }
        let candidates = default_candidates(self.gpu);
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or(OrtError::LibraryNotFound {
                searched: candidates,
                gpu: self.gpu,
            })
    }
}

fn existing(path: &Path, origin: &'static str) -> Result<PathBuf, OrtError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(OrtError::ConfiguredLibraryMissing {
            origin,
            path: path.to_path_buf(),
        })
    }
}

/// Default locations, most specific first, without duplicates.
fn default_candidates(gpu: bool) -> Vec<PathBuf> {
    let rel = PathBuf::from("third_party/onnxruntime")
        .join(if gpu { "gpu" } else { "cpu" })
        .join("lib")
        .join(format!("libonnxruntime.so.{ORT_VERSION}"));
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CAPFILT_HOME").filter(|p| !p.is_empty()) {
        roots.push(PathBuf::from(home));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        roots.extend(exe_dir.ancestors().map(Path::to_path_buf));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for root in roots {
        let p = root.join(&rel);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The loaded ONNX Runtime: library path, version and the process's environment.
#[derive(Debug)]
pub struct OrtRuntime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl OrtRuntime {
    /// Loads ONNX Runtime as `config` says, once per process; later calls return the same runtime
    /// (and fail if they ask for a different library).
    pub fn init(config: &OrtConfig) -> Result<&'static OrtRuntime, OrtError> {
        let requested = config.resolve();
        let _guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return match requested {
                Ok(p) if same_file(&p, &rt.library) => Ok(rt),
                Ok(p) => Err(OrtError::AlreadyLoaded {
                    loaded: rt.library.clone(),
                    requested: p,
                }),
                // Already loaded from somewhere: a failing default lookup does not matter then.
                Err(_) if config.library.is_none() => Ok(rt),
                Err(e) => Err(e),
            };
        }
        let library = requested?;
        let builder = ort::init_from(&library).map_err(|e| OrtError::Load {
            path: library.clone(),
            message: e.to_string(),
        })?;
        let environment = builder
            .with_name("capfilt")
            .with_telemetry(false)
            .build()
            .map_err(|e| OrtError::ort("creating the ONNX Runtime environment", e))?;
        tracing::info!(library = %library.display(), build = ort::info(), "loaded onnx runtime");
        Ok(RUNTIME.get_or_init(|| OrtRuntime {
            library,
            environment,
        }))
    }

    /// Path of the loaded library.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ONNX Runtime's build description (git commit, build type). ort itself refuses a library
    /// older than the API version it was built for (1.31).
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }

    /// Builds a session for the ONNX graph at `model` with `options`.
    pub fn session(&self, model: &Path, options: &SessionOptions) -> Result<Session, OrtError> {
        let what = model.display().to_string();
        self.builder(&what, options)?
            .commit_from_file(model)
            .map_err(|e| OrtError::ort(format!("loading the graph {what}"), e))
    }

    /// Builds a session for an ONNX graph held in memory; `name` identifies it in errors.
    pub fn session_from_bytes(
        &self,
        name: &str,
        model: &[u8],
        options: &SessionOptions,
    ) -> Result<Session, OrtError> {
        self.builder(name, options)?
            .commit_from_memory(model)
            .map_err(|e| OrtError::ort(format!("loading the graph {name}"), e))
    }

    /// Builds a session for a graph made with ONNX Runtime's model editor; `name` identifies it in
    /// errors.
    pub fn session_from_model(
        &self,
        name: &str,
        model: ort::editor::Model,
        options: &SessionOptions,
    ) -> Result<Session, OrtError> {
        let builder = self.builder(name, options)?;
        model
            .into_session(&builder)
            .map_err(|e| OrtError::ort(format!("building the graph {name}"), e))
    }

    fn builder(&self, what: &str, options: &SessionOptions) -> Result<SessionBuilder, OrtError> {
        let ctx = |step: &str| format!("{step} for {what}");
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| OrtError::ort(ctx("creating a session builder"), e))?
            .with_optimization_level(options.optimization.into())
            .map_err(|e| OrtError::ort(ctx("setting the optimisation level"), e))?;
        if let Some(n) = options.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| OrtError::ort(ctx("setting intra-op threads"), e))?;
        }
        builder = builder
            .with_intra_op_spinning(options.spinning)
            .map_err(|e| OrtError::ort(ctx("setting intra-op spinning"), e))?;
        register_device(builder, options).map_err(|e| match e {
            OrtError::Ort { message, .. } => {
                OrtError::ort(ctx(&format!("registering {}", options.device)), message)
            }
            other => other,
        })
    }
}

#[cfg(feature = "cuda")]
fn register_device(
    builder: SessionBuilder,
    options: &SessionOptions,
) -> Result<SessionBuilder, OrtError> {
    use ort::ep::cuda::ConvAlgorithmSearch;
    match options.device {
        Device::Cpu => Ok(builder),
        Device::Cuda(n) => {
            checked_driver(options.device)?;
            let ordinal = i32::try_from(n).map_err(|e| OrtError::ort("cuda device ordinal", e))?;
            let mut cuda = ort::ep::CUDA::default()
                .with_device_id(ordinal)
                .with_conv_algorithm_search(match options.cuda.conv_search {
                    ConvSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
                    ConvSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
                    ConvSearch::Default => ConvAlgorithmSearch::Default,
                })
                .with_conv_max_workspace(true)
                .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested);
            if let Some(limit) = options.cuda.memory_limit {
                cuda = cuda.with_memory_limit(limit);
            }
            // error_on_failure: a GPU worker must never fall back to the CPU silently; and no
            // node of a graph may be placed on the CPU provider either (ONNX Runtime then fails
            // the session instead of copying tensors to the host and back at every such node).
            builder
                .with_execution_providers([cuda.build().error_on_failure()])
                .map_err(|e| OrtError::ort("the CUDA execution provider", e))?
                .with_disable_cpu_fallback()
                .map_err(|e| OrtError::ort("disabling CPU fallback", e))
        }
    }
}

/// The driver check, once per device and process.
#[cfg(feature = "cuda")]
fn checked_driver(device: Device) -> Result<(), OrtError> {
    static CHECKED: std::sync::Mutex<Vec<Device>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if !checked.contains(&device) {
        let driver = crate::device::probe_cuda_driver(device)?;
        tracing::info!(%device, driver = %driver.version, cuda = %crate::device::cuda_version(driver.cuda), name = %driver.device_name, "nvidia driver");
        checked.push(device);
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn register_device(
    builder: SessionBuilder,
    options: &SessionOptions,
) -> Result<SessionBuilder, OrtError> {
    match options.device {
        Device::Cpu => Ok(builder),
        Device::Cuda(_) => Err(OrtError::CudaNotBuilt(options.device)),
    }
}

/// Where a session on `device` keeps tensors that stay on the device between runs.
pub fn device_memory(device: Device) -> Result<ort::memory::MemoryInfo<'static>, OrtError> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let info = match device {
        Device::Cpu => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
        Device::Cuda(n) => MemoryInfo::new(
            AllocationDevice::CUDA,
            i32::try_from(n).map_err(|e| OrtError::ort("cuda device ordinal", e))?,
            AllocatorType::Device,
            MemoryType::Default,
        ),
    };
    info.map_err(|e| OrtError::ort(format!("memory info of {device}"), e))
}

/// Where a session on `device` writes outputs the host reads (page-locked memory on CUDA, so
/// the copy is one DMA).
pub fn host_memory(device: Device) -> Result<ort::memory::MemoryInfo<'static>, OrtError> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let info = match device {
        Device::Cpu => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
        Device::Cuda(_) => MemoryInfo::new(
            AllocationDevice::CUDA_PINNED,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        ),
    };
    info.map_err(|e| OrtError::ort(format!("host memory info of {device}"), e))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Graph optimisation level of ONNX Runtime sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Optimization {
    /// No graph rewrites.
    Disable,
    /// Basic rewrites (constant folding, redundant nodes).
    Basic,
    /// Basic plus node fusions.
    Extended,
    /// Everything, including layout optimisations.
    #[default]
    All,
}

impl From<Optimization> for GraphOptimizationLevel {
    fn from(o: Optimization) -> Self {
        match o {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::Level3,
        }
    }
}

impl std::str::FromStr for Optimization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "basic" => Ok(Self::Basic),
            "extended" => Ok(Self::Extended),
            "all" => Ok(Self::All),
            _ => Err(format!(
                "unknown optimisation level '{s}': use disable, basic, extended or all"
            )),
        }
    }
}

/// Which of a bundle's graph precisions a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionChoice {
    /// fp16 graphs on a CUDA device when the bundle has them, else fp32 (never int8, whose
    /// parity cost is the operator's choice).
    #[default]
    Auto,
    /// Always these graphs (an error when the bundle lacks them, or for int8 on a CUDA device).
    Exactly(Precision),
}

impl PrecisionChoice {
    /// Why this choice cannot run on `device`, if it cannot: ONNX Runtime runs the dynamically
    /// quantised MatMuls of int8 graphs on the CPU only, and a CUDA session here refuses CPU
    /// fallback.
    pub fn refused_on(self, device: Device) -> Option<String> {
        match (self, device) {
            (PrecisionChoice::Exactly(Precision::Int8), Device::Cuda(n)) => Some(format!(
                "int8 graphs are for CPU workers; on cuda:{n} choose --precision fp16, fp32 or auto"
            )),
            _ => None,
        }
    }

    /// The precision to load from a bundle that has `available` on `device`, or `None` when an
    /// exact choice is not there.
    pub fn pick(self, device: Device, available: &[Precision]) -> Option<Precision> {
        match self {
            PrecisionChoice::Exactly(p) => available.contains(&p).then_some(p),
            PrecisionChoice::Auto => {
                let gpu = matches!(device, Device::Cuda(_));
                if gpu && available.contains(&Precision::Fp16) {
                    Some(Precision::Fp16)
                } else {
                    Some(Precision::Fp32)
                }
            }
        }
    }
}

impl std::fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrecisionChoice::Auto => f.write_str("auto"),
            PrecisionChoice::Exactly(p) => p.fmt(f),
        }
    }
}

impl std::str::FromStr for PrecisionChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            _ => s
                .parse()
                .map(PrecisionChoice::Exactly)
                .map_err(|_| format!("unknown precision '{s}': use auto, fp32, fp16 or int8")),
        }
    }
}

/// cuDNN's convolution algorithm search (the patch embedding of a ViT is a convolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvSearch {
    /// Benchmark every algorithm once per shape: slowest first batch, fastest after (the default
    /// for a batch workload whose shapes repeat).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics.
    Heuristic,
    /// The default algorithm.
    Default,
}

impl std::str::FromStr for ConvSearch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exhaustive" => Ok(Self::Exhaustive),
            "heuristic" => Ok(Self::Heuristic),
            "default" => Ok(Self::Default),
            _ => Err(format!(
                "unknown cuDNN search '{s}': use exhaustive, heuristic or default"
            )),
        }
    }
}

/// CUDA execution provider settings (used only on `cuda:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaOptions {
    /// Upper bound of the provider's memory arena in bytes (`None`: the device's memory).
    pub memory_limit: Option<usize>,
    /// cuDNN convolution algorithm search.
    pub conv_search: ConvSearch,
}

/// Options of one ONNX Runtime session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// Execution device.
    pub device: Device,
    /// Intra-op threads (ONNX Runtime's default when `None`: one per physical core).
    pub intra_threads: Option<usize>,
    /// Graph optimisation level.
    pub optimization: Optimization,
    /// Which of a bundle's graph precisions to run.
    pub precision: PrecisionChoice,
    /// CUDA provider settings.
    pub cuda: CudaOptions,
    /// Copy the decoder state (cross-attention K/V, KV cache, image embeddings) through host
    /// arrays at every step (the reference path); by default it stays on the device between
    /// steps through ONNX Runtime's IoBinding.
    pub host_decoding: bool,
    /// Let ONNX Runtime's intra-op threads spin-wait for work between runs. Off by default: a
    /// worker's CPU cores are shared with its image-decoding threads and with the other
    /// sessions' pools, and spinning threads took them away (a 20,000-row round on 2 cores ran
    /// 2.6x slower with it).
    pub spinning: bool,
}

#[cfg(test)]
mod precision_tests {
    use super::*;

    const ALL: [Precision; 3] = [Precision::Fp32, Precision::Fp16, Precision::Int8];

    #[test]
    fn auto_picks_fp16_on_cuda_only_and_never_int8() {
        let auto = PrecisionChoice::Auto;
        assert_eq!(auto.pick(Device::Cpu, &ALL), Some(Precision::Fp32));
        assert_eq!(auto.refused_on(Device::Cuda(0)), None);
        assert_eq!(auto.pick(Device::Cuda(0), &ALL), Some(Precision::Fp16));
        assert_eq!(
            auto.pick(Device::Cuda(0), &[Precision::Fp32, Precision::Int8]),
            Some(Precision::Fp32)
        );
    }

    #[test]
    fn an_exact_choice_is_taken_only_when_the_bundle_has_it() {
        let int8 = PrecisionChoice::Exactly(Precision::Int8);
        assert_eq!(int8.pick(Device::Cpu, &ALL), Some(Precision::Int8));
        assert_eq!(
            int8.pick(Device::Cpu, &[Precision::Fp32, Precision::Fp16]),
            None
        );
        assert_eq!("int8".parse(), Ok(int8));
        assert_eq!(int8.refused_on(Device::Cpu), None);
        let e = int8.refused_on(Device::Cuda(1)).expect("int8 is CPU only");
        assert!(e.contains("cuda:1") && e.contains("fp16"), "{e}");
        assert_eq!("auto".parse(), Ok(PrecisionChoice::Auto));
        let e = "bf16".parse::<PrecisionChoice>().expect_err("unknown");
        assert!(e.contains("'bf16'") && e.contains("int8"), "{e}");
    }
}
