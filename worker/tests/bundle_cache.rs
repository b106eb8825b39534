//! A bundle verified once is not hashed again while its files are unchanged (every lease opens
//! its bundles; base-size graphs are gigabytes), and a file changed since is still caught.
//! Alone in its test binary: it reads the process-wide hashing counter.

mod common;

use std::path::Path;

use common::copy_dir;

use capfilt_worker::bundle::files_hashed;
use capfilt_worker::{Bundle, BundleError};

#[test]
fn a_verified_bundle_is_not_hashed_again_until_a_file_changes() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-seed/filter");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("filter");
    copy_dir(&seed, &dir);
    let before = files_hashed();
    let first = Bundle::open(&dir).expect("verified");
    let listed = first.manifest.files.len() as u64;
    assert_eq!(
        files_hashed() - before,
        listed,
        "the first open hashes every file"
    );
    for _ in 0..5 {
        Bundle::open(&dir).expect("still verified");
    }
    assert_eq!(files_hashed() - before, listed, "later opens hash nothing");
    // One byte of a graph changes (same length): caught on the next open.
    let graph = dir.join("itm.onnx");
    let mut bytes = std::fs::read(&graph).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&graph, &bytes).expect("write");
    let err = Bundle::open(&dir).expect_err("changed");
    assert!(
        matches!(err, BundleError::HashMismatch { ref file, .. } if file == "itm.onnx"),
        "{err}"
    );
}
