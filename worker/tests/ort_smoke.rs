//! Loads ONNX Runtime the way a worker does and runs a small graph (testdata/onnx/smoke.onnx,
//! made by scripts/make-test-graphs.py), checking its outputs against values computed here.
//!
//! Needs the library from scripts/fetch-onnxruntime.sh (scripts/setup.sh runs it).

use std::path::PathBuf;

use capfilt_worker::{Device, Optimization, OrtConfig, OrtError, OrtRuntime, SessionOptions};
use ndarray::{Array2, array};
use ort::value::TensorRef;

fn graph() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/onnx/smoke.onnx")
}

fn expected(x: &Array2<f32>) -> (Array2<f32>, Array2<f32>) {
    let w = array![[1.0f32, -1.0], [2.0, 0.5], [-0.5, 3.0]];
    let b = array![0.25f32, -0.25];
    let logits = x.dot(&w) + &b;
    let mut probs = logits.clone();
    for mut row in probs.rows_mut() {
        let m = row.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    (probs, x.mapv(|v| v.max(0.0)))
}

#[test]
fn smoke_graph_matches_reference_at_several_batch_sizes() -> anyhow::Result<()> {
    let rt = OrtRuntime::init(&OrtConfig::for_build())?;
    assert!(rt.library().is_file());
    for optimization in [Optimization::Disable, Optimization::All] {
        let options = SessionOptions {
            device: Device::Cpu,
            intra_threads: Some(1),
            optimization,
            ..SessionOptions::default()
        };
        let mut session = rt.session(&graph(), &options)?;
        let names: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        assert_eq!(names, ["probs", "relu"]);
        for batch in [1usize, 4, 7] {
            let x = Array2::from_shape_fn((batch, 3), |(i, j)| {
                (i as f32 - 2.0) * 0.7 + j as f32 * 0.3 - 0.4
            });
            let outputs = session.run(ort::inputs!["x" => TensorRef::from_array_view(&x)?])?;
            let probs = outputs["probs"].try_extract_array::<f32>()?;
            let relu = outputs["relu"].try_extract_array::<f32>()?;
            let (want_probs, want_relu) = expected(&x);
            assert_eq!(probs.shape(), &[batch, 2]);
            assert_eq!(relu.shape(), &[batch, 3]);
            for (got, want) in probs.iter().zip(want_probs.iter()) {
                assert!((got - want).abs() < 1e-6, "probs {got} vs {want}");
            }
            for (got, want) in relu.iter().zip(want_relu.iter()) {
                assert_eq!(got, want);
            }
        }
    }
    Ok(())
}

#[test]
fn a_missing_configured_library_names_the_path_and_the_script() {
    let config = OrtConfig {
        library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        gpu: false,
    };
    let err = config.resolve().expect_err("missing");
    assert!(matches!(err, OrtError::ConfiguredLibraryMissing { .. }));
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
    assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
}

#[test]
fn a_corrupt_graph_is_an_error_not_a_crash() -> anyhow::Result<()> {
    let rt = OrtRuntime::init(&OrtConfig::for_build())?;
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"this is not a protobuf")?;
    let err = rt
        .session(&bad, &SessionOptions::default())
        .expect_err("corrupt graph");
    assert!(err.to_string().contains("bad.onnx"), "{err}");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_in_a_cpu_build_is_refused() -> anyhow::Result<()> {
    let rt = OrtRuntime::init(&OrtConfig::for_build())?;
    let options = SessionOptions {
        device: Device::Cuda(0),
        ..SessionOptions::default()
    };
    let err = rt
        .session(&graph(), &options)
        .expect_err("no cuda in this build");
    assert!(err.to_string().contains("--features cuda"), "{err}");
    Ok(())
}
