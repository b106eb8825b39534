//! The device a worker runs its models on: `cpu` or `cuda:N`.

use std::fmt;
use std::str::FromStr;

/// Where ONNX Runtime sessions execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU ordinal `N` (needs the `cuda` feature and the GPU build
    /// of ONNX Runtime).
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}': use cpu or cuda:N")),
        }
    }
}

/// CUDA version the GPU build of ONNX Runtime 1.31.1 was built for (its wheels need a driver
/// that supports it), as NVML reports versions: 1000 x major + 10 x minor.
pub const CUDA_NEEDED: i32 = 13_000;

/// What the NVIDIA driver says about itself and the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDriver {
    /// Driver version string, e.g. `580.82.07`.
    pub version: String,
    /// Newest CUDA version the driver supports (NVML's 1000 x major + 10 x minor).
    pub cuda: i32,
    /// Device name, e.g. `NVIDIA H200`.
    pub device_name: String,
}

/// Why a CUDA device cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    /// `libnvidia-ml.so.1` did not load or answer: no driver on this machine or in this container.
    #[error(
        "no NVIDIA driver found for {device} ({message}); run on a GPU node with the NVIDIA driver (and the container toolkit) installed, or use --device cpu"
    )]
    NoDriver {
        /// The device asked for.
        device: Device,
        /// NVML's message.
        message: String,
    },
    /// The driver is older than the CUDA wheels need.
    #[error(
        "the NVIDIA driver {version} supports CUDA {}, but ONNX Runtime's GPU build needs CUDA {} or newer: update the driver",
        cuda_version(*.cuda),
        cuda_version(CUDA_NEEDED)
    )]
    TooOld {
        /// Driver version.
        version: String,
        /// CUDA version it supports.
        cuda: i32,
    },
    /// No device with that ordinal.
    #[error("{device} does not exist: the driver sees {count} GPU(s)")]
    NoSuchDevice {
        /// The device asked for.
        device: Device,
        /// Devices the driver sees.
        count: u32,
    },
}

/// `13000` as `13.0`.
pub fn cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Checks a driver's answers against what the GPU build needs.
pub fn check_driver(
    device: Device,
    version: String,
    cuda: i32,
    count: u32,
) -> Result<(), DriverError> {
    if cuda < CUDA_NEEDED {
        return Err(DriverError::TooOld { version, cuda });
    }
    if let Device::Cuda(n) = device
        && n >= count
    {
        return Err(DriverError::NoSuchDevice { device, count });
    }
    Ok(())
}

/// Asks the NVIDIA driver (through NVML, loaded at run time) whether `device` can run ONNX
/// Runtime's GPU build: before any session is made, so an old driver is one clear line instead
/// of a CUDA error from deep inside the provider.
pub fn probe_cuda_driver(device: Device) -> Result<CudaDriver, DriverError> {
    let Device::Cuda(index) = device else {
        return Err(DriverError::NoDriver {
            device,
            message: "not a CUDA device".into(),
        });
    };
    let no_driver = |e: nvml_wrapper::error::NvmlError| DriverError::NoDriver {
        device,
        message: e.to_string(),
    };
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .map_err(no_driver)?;
    let version = nvml.sys_driver_version().map_err(no_driver)?;
    let cuda = nvml.sys_cuda_driver_version().map_err(no_driver)?;
    let count = nvml.device_count().map_err(no_driver)?;
    check_driver(device, version.clone(), cuda, count)?;
    let device_name = nvml
        .device_by_index(index)
        .and_then(|d| d.name())
        .map_err(no_driver)?;
    Ok(CudaDriver {
        version,
        cuda,
        device_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_old_driver_or_a_missing_device_is_one_line_that_says_what_to_do() {
        let e = check_driver(Device::Cuda(0), "535.104".into(), 12_020, 1).expect_err("old");
        assert_eq!(
            e.to_string(),
            "the NVIDIA driver 535.104 supports CUDA 12.2, but ONNX Runtime's GPU build needs CUDA 13.0 or newer: update the driver"
        );
        let e = check_driver(Device::Cuda(2), "580.1".into(), 13_000, 2).expect_err("no dev");
        assert!(e.to_string().contains("cuda:2 does not exist"), "{e}");
        assert!(check_driver(Device::Cuda(1), "580.1".into(), 13_010, 2).is_ok());
        // No driver on this machine (the CI runners have none): a clear error, no panic.
        if let Err(e) = probe_cuda_driver(Device::Cuda(0)) {
            assert!(!e.to_string().is_empty());
        }
    }
}
