//! Errors of the inference engine.

use crate::bundle::BundleError;
use crate::runtime::OrtError;
use crate::text::TextError;

/// Why inference could not run (a bad image is not an error: it is a reject).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// ONNX Runtime could not be loaded or a session not built.
    #[error(transparent)]
    Runtime(#[from] OrtError),
    /// A session run or tensor conversion failed.
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
    /// A graph does not have the inputs or outputs the bundle format promises.
    #[error("model graph: {0}")]
    Graph(String),
    /// Parameters or inputs that cannot be used.
    #[error("{0}")]
    Params(String),
    /// The bundle cannot be used.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The device's shared engine failed on a batch this caller's images were part of.
    #[error("shared engine: {0}")]
    Shared(String),
    /// The device's shared engine thread is gone (it panicked or is shutting down): a fault of
    /// this worker, not of the shard.
    #[error("the shared engine stopped: {0}")]
    EngineStopped(String),
    /// Tokenizer failure.
    #[error(transparent)]
    Text(#[from] TextError),
}
