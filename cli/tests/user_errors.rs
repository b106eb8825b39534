//! Mistakes a new user makes, through the binary: each one is refused with one line on stderr
//! and exit code 2, the same from `infer` and `run`; and the summary reads cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capfilt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capfilt"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("capfilt runs")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundle(kind: &str) -> String {
    repo()
        .join("models/shapes-seed")
        .join(kind)
        .display()
        .to_string()
}

fn assert_usage_line(o: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "'{needle}' not in: {stderr}");
}

fn synth(dir: &Path) -> String {
    let out = dir.join("bench");
    let o = capfilt(&[
        "synth",
        "--out",
        out.to_str().expect("utf-8"),
        "--seed-rows",
        "4",
        "--web-rows",
        "24",
        "--eval-rows",
        "4",
        "--rows-per-file",
        "24",
        "--row-group-rows",
        "12",
        "--max-side",
        "96",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("web").display().to_string()
}

#[test]
fn swapped_bundles_exit_2_from_infer_and_from_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let web = synth(tmp.path());
    let file = format!("{web}/part-00000.parquet");
    let out = tmp.path().join("out").display().to_string();
    let (cap, fil) = (bundle("captioner"), bundle("filter"));
    let o = capfilt(&[
        "infer",
        "--captioner",
        &fil,
        "--filter",
        &cap,
        "--input",
        &file,
        "--output",
        &out,
    ]);
    assert_usage_line(&o, "is a filter bundle, but a captioner bundle is needed");
    let o = capfilt(&[
        "run",
        "--captioner",
        &fil,
        "--filter",
        &cap,
        "--input",
        &web,
        "--output",
        &out,
    ]);
    assert_usage_line(&o, "is a filter bundle, but a captioner bundle is needed");
}

#[test]
fn a_negative_batch_size_and_a_broken_config_are_one_line_each() {
    let o = capfilt(&["infer", "--batch-size", "-1"]);
    assert_usage_line(&o, "invalid value '-1' for '--batch-size");
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("capfilt.toml");
    std::fs::write(&config, "[coordinator\nlisten = 3\n").expect("write");
    let o = capfilt(&["run", "--config", config.to_str().expect("utf-8")]);
    assert_usage_line(&o, "line 1, column 13");
}

#[test]
fn the_run_summary_separates_reasons_from_counts_and_logs_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let web = synth(tmp.path());
    let out = tmp.path().join("out").display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_capfilt"))
        .args([
            "run",
            "--captioner",
            &bundle("captioner"),
            "--filter",
            &bundle("filter"),
            "--input",
            &web,
            "--output",
            &out,
            "--workers",
            "1",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in piped logs: {stderr}"
    );
    let glued = |w: &str| {
        !w.contains(['/', '-', '.', ':'])
            && w.chars()
                .zip(w.chars().skip(1))
                .any(|(a, b)| (a.is_ascii_alphabetic() || a == '_') && b.is_ascii_digit())
    };
    for line in stdout.lines() {
        assert!(
            !line.split_whitespace().any(glued),
            "a word glues a name and a count: {line}"
        );
    }
    assert!(stdout.contains("rows in"), "{stdout}");
}
