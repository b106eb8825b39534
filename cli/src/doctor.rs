//! `capfilt doctor`: checks that ONNX Runtime is found and runs a graph on the chosen device.

use std::path::PathBuf;

use capfilt_worker::{Device, OrtConfig, OrtRuntime, SessionOptions};
use clap::Args;
use ndarray::Array2;
use ort::value::TensorRef;

use crate::exit::{CliError, CliResult};

/// The test graph of `testdata/onnx/smoke.onnx`: probs = softmax(x @ W + b), relu = relu(x).
const SMOKE_GRAPH: &[u8] = include_bytes!("../../testdata/onnx/smoke.onnx");

/// Arguments of `capfilt doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then third_party/onnxruntime/).
    #[arg(long, value_name = "PATH", env = "CAPFILT_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
    /// Device to run the test graph on: cpu or cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: Device,
    /// Also check this TOML config file (e.g. the one a Kubernetes ConfigMap carries): it must parse and its settings must fit together.
    #[arg(long, env = "CAPFILT_CONFIG")]
    config: Option<PathBuf>,
}

/// Checks a config file the way `capfilt run|coordinator|worker` would read it.
fn check_config(path: &std::path::Path) -> CliResult {
    let file = crate::config::FileConfig::load(Some(path)).map_err(CliError::Usage)?;
    crate::cluster::timing(&file, None, None)?;
    match file.trainer.runner.as_deref() {
        None | Some("local") | Some("kubernetes") => {}
        Some(other) => {
            return Err(CliError::Usage(anyhow::anyhow!(
                "config {}: [trainer] runner must be local or kubernetes, not '{other}'",
                path.display()
            )));
        }
    }
    let rounds = file.bootstrap.rounds.unwrap_or(1);
    if rounds > 1 && (file.bootstrap.seed_data.is_none() || file.bootstrap.eval_data.is_none()) {
        return Err(CliError::Usage(anyhow::anyhow!(
            "config {}: [bootstrap] rounds = {rounds} needs seed_data and eval_data",
            path.display()
        )));
    }
    println!("config {}: ok", path.display());
    Ok(())
}

/// Runs `capfilt doctor`.
pub fn run(args: DoctorArgs) -> CliResult {
    if let Some(path) = &args.config {
        check_config(path)?;
    }
    let mut config = OrtConfig::for_build();
    config.library = args.ort_library;
    let path = config.resolve().map_err(|e| CliError::Usage(e.into()))?;
    println!("onnx runtime library: {}", path.display());
    let rt = OrtRuntime::init(&config).map_err(|e| CliError::Usage(e.into()))?;
    println!("onnx runtime build:   {}", rt.build_info());
    let options = SessionOptions {
        device: args.device,
        ..SessionOptions::default()
    };
    let mut session = rt
        .session_from_bytes("smoke.onnx", SMOKE_GRAPH, &options)
        .map_err(|e| CliError::Failed(e.into()))?;
    let x = Array2::from_shape_vec((1, 3), vec![1.0f32, 0.0, 0.0])
        .map_err(|e| CliError::Failed(e.into()))?;
    let tensor = TensorRef::from_array_view(&x).map_err(|e| CliError::Failed(e.into()))?;
    let outputs = session
        .run(ort::inputs!["x" => tensor])
        .map_err(|e| CliError::Failed(e.into()))?;
    let probs = outputs["probs"]
        .try_extract_array::<f32>()
        .map_err(|e| CliError::Failed(e.into()))?;
    // logits = [1, -1] + [0.25, -0.25] = [1.25, -1.25] -> softmax [0.924142, 0.075858]
    let want = [0.924_141_8f32, 0.075_858_18];
    let ok = probs.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-5);
    if !ok {
        return Err(CliError::Failed(anyhow::anyhow!(
            "test graph on {} gave {:?}, expected {want:?}",
            args.device,
            probs.iter().collect::<Vec<_>>()
        )));
    }
    println!("test graph on {}:    ok", args.device);
    if let Device::Cuda(_) = args.device {
        let driver = capfilt_worker::device::probe_cuda_driver(args.device)
            .map_err(|e| CliError::Failed(e.into()))?;
        println!(
            "nvidia driver:        {} (CUDA {}), {} = {}",
            driver.version,
            capfilt_worker::device::cuda_version(driver.cuda),
            args.device,
            driver.device_name
        );
    }
    device_resident_round_trip(rt, &options)?;
    println!(
        "device row gather:    ok (IoBinding, outputs kept on {})",
        args.device
    );
    Ok(())
}

/// Gathers rows of a tensor on the device and reads them back through IoBinding, as the
/// device-resident decoding does at every step where rows leave the batch.
fn device_resident_round_trip(rt: &OrtRuntime, options: &SessionOptions) -> CliResult {
    use capfilt_worker::device_io::{DeviceIo, Place};
    let failed = |e: capfilt_worker::EngineError| CliError::Failed(e.into());
    let mut io = DeviceIo::new(rt, options, 1, 3).map_err(failed)?;
    let x = ndarray::Array3::from_shape_fn((4, 2, 3), |(i, j, k)| (100 * i + 10 * j + k) as f32);
    let value = DeviceIo::host_value(x.clone()).map_err(failed)?;
    let picked = io.select_rows(&[value], &[3, 1]).map_err(failed)?;
    let again = io
        .select_rows_to(&picked, &[1], Place::Host)
        .map_err(failed)?;
    let got = again
        .first()
        .ok_or_else(|| CliError::Failed(anyhow::anyhow!("row gather returned nothing")))?
        .try_extract_array::<f32>()
        .map_err(|e| CliError::Failed(e.into()))?
        .to_owned();
    let want = x.select(ndarray::Axis(0), &[1]).into_dyn();
    if got != want {
        return Err(CliError::Failed(anyhow::anyhow!(
            "row gather on {} gave {got:?}, expected {want:?}",
            options.device
        )));
    }
    Ok(())
}
