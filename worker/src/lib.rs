#![doc = include_str!("../README.md")]

pub mod device;
pub mod runtime;

pub use device::Device;
pub use runtime::{ORT_VERSION, Optimization, OrtConfig, OrtError, OrtRuntime, SessionOptions};
