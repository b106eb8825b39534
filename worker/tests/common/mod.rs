//! Shared helpers of the worker's integration tests: the committed seed bundles, the golden
//! outputs of `python -m capfilt_trainer golden` and a minimal `.npy` reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use capfilt_worker::preprocess::{ImageLimits, decode_rgb, pixel_values};
use capfilt_worker::{Bundle, OrtConfig, OrtRuntime, SessionOptions};

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn runtime() -> &'static OrtRuntime {
    OrtRuntime::init(&OrtConfig::for_build()).expect("onnx runtime (run scripts/setup.sh)")
}

/// Session options of the tests: the CPU, or `CAPFILT_TEST_DEVICE` (`cuda:0` in
/// `scripts/gpu-check.sh`, with a `--features cuda` build).
pub fn options() -> SessionOptions {
    let device = std::env::var("CAPFILT_TEST_DEVICE")
        .ok()
        .map(|d| d.parse().expect("CAPFILT_TEST_DEVICE: cpu or cuda:N"))
        .unwrap_or_default();
    SessionOptions {
        device,
        intra_threads: Some(2),
        ..SessionOptions::default()
    }
}

pub fn seed_bundle(kind: &str) -> Bundle {
    Bundle::open(&repo().join("models/shapes-seed").join(kind)).expect("seed bundle")
}

pub fn golden_dir() -> PathBuf {
    repo().join("testdata/golden")
}

pub fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden json")
}

/// Reads a little-endian float32 C-order `.npy` file: (shape, values).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("npy");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("header");
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = &bytes[start + header_len..];
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// The golden images (benchmark images and real photos) decoded and preprocessed by capfilt
/// for `pre`, in the records' order.
#[allow(dead_code)]
pub fn golden_pixels(pre: &capfilt_schemas::bundle::Preprocessing) -> Vec<Vec<f32>> {
    golden()["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let bytes = std::fs::read(golden_dir().join(r["image"].as_str().expect("image")))
                .expect("read");
            pixel_values(
                &decode_rgb(&bytes, &ImageLimits::default()).expect("decode"),
                pre,
            )
        })
        .collect()
}
