//! Bundles are verified before use: every sha256 in bundle.json is checked, and a changed or
//! missing file is an error that names it.

mod common;

use std::path::Path;

use common::copy_dir;

use capfilt_worker::{Bundle, BundleError};

fn seed() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-seed/captioner")
}

#[test]
fn a_changed_graph_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("captioner");
    copy_dir(&seed(), &dir);
    assert!(Bundle::open(&dir).is_ok());
    let graph = dir.join("decoder.onnx");
    let mut bytes = std::fs::read(&graph).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&graph, bytes).expect("write");
    let err = Bundle::open(&dir).expect_err("tampered");
    assert!(
        matches!(&err, BundleError::HashMismatch { file, .. } if file == "decoder.onnx"),
        "{err}"
    );
    assert!(err.to_string().contains("decoder.onnx"));
}

#[test]
fn a_missing_file_and_a_missing_bundle_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("captioner");
    copy_dir(&seed(), &dir);
    std::fs::remove_file(dir.join("tokenizer.json")).expect("rm");
    let err = Bundle::open(&dir).expect_err("missing");
    assert!(
        matches!(&err, BundleError::MissingFile { file, .. } if file == "tokenizer.json"),
        "{err}"
    );
    let err = Bundle::open(&tmp.path().join("nowhere")).expect_err("no bundle");
    assert!(err.to_string().contains("bundle.json"), "{err}");
}

#[tokio::test]
async fn fetching_a_url_fills_a_content_addressed_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}", seed().canonicalize().expect("path").display());
    // file:// is read in place; the cache is for remote stores (exercised against S3 in
    // tests/tests/round_inprocess.rs).
    let b = Bundle::fetch(&url, tmp.path(), &[]).await.expect("fetch");
    assert_eq!(b.sha256, Bundle::open(&seed()).expect("open").sha256);
}
