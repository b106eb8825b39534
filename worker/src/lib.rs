#![doc = include_str!("../README.md")]

pub mod bundle;
pub mod captioner;
pub mod decode_state;
pub mod device;
pub mod device_io;
pub mod engine;
pub mod engine_error;
pub mod engine_hub;
pub mod filter;
pub mod infer;
pub mod input;
pub mod metrics;
pub mod output;
pub mod preprocess;
pub mod runtime;
pub mod sampling;
pub mod shard_input;
pub mod shard_loop;
pub mod text;

/// Object-store locations (re-exported from capfilt-schemas, shared with the coordinator).
pub use capfilt_schemas::store;

pub use bundle::{Bundle, BundleError};
pub use captioner::{Caption, Captioner, SeedBase};
pub use device::Device;
pub use engine::{Engine, Judged, PreparedImage, StepParams, StepRunner};
pub use engine_error::EngineError;
pub use engine_hub::{EngineHub, HubClient};
pub use filter::{Filter, ImageEmbeds, PairScore};
pub use infer::{InferConfig, InferError, InferSummary, ReadOptions, process_parquet, run_infer};
pub use runtime::{
    ConvSearch, CudaOptions, ORT_VERSION, Optimization, OrtConfig, OrtError, OrtRuntime,
    PrecisionChoice, SessionOptions,
};
pub use sampling::{Decoding, GenerationParams};

/// A small per-process nonce for generated ids.
pub(crate) fn registry_nonce() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}
