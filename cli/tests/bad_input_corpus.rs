//! The bad-input corpus (`testdata/bad-input`, made by its `make_corpus.py`): every kind has an
//! expected outcome, and this checks every one through the binary as a user runs it. Rows of
//! every bad kind sit in one file: each is scored or rejected with its reason while the rest
//! of the file goes on, and no row is lost; a bad file, config or bundle stops the command
//! with one error line and exit code 2. No kind may panic or hang.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use arrow_array::cast::AsArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus() -> PathBuf {
    repo().join("testdata/bad-input")
}

fn seed(kind: &str) -> String {
    repo()
        .join("models/shapes-seed")
        .join(kind)
        .display()
        .to_string()
}

/// Runs capfilt with a deadline: a hang is a failure, not a stuck suite.
fn capfilt(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_capfilt"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capfilt runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("capfilt {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `capfilt infer` or `capfilt run` with `captioner`, the seed filter, `input` and `out`.
fn step(command: &str, captioner: &str, input: &Path, out: &str, extra: &[&str]) -> Output {
    let filter = seed("filter");
    let input = input.to_str().expect("utf-8");
    let mut args = vec![
        command,
        "--captioner",
        captioner,
        "--filter",
        &filter,
        "--input",
        input,
        "--output",
        out,
    ];
    args.extend_from_slice(extra);
    capfilt(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn assert_one_error_line(kind: &str, o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "{kind}: panic: {err}");
    assert_eq!(o.status.code(), Some(2), "{kind}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{kind}: one line: {err}");
    assert!(err.starts_with("error: "), "{kind}: {err}");
    assert!(err.contains(needle), "{kind}: '{needle}' not in: {err}");
}

struct Kind {
    name: String,
    category: String,
    expect: String,
    key: Option<String>,
    row: u64,
    path: Option<String>,
    mutation: Option<String>,
}

fn kinds() -> Vec<Kind> {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(corpus().join("manifest.json")).expect("manifest.json"),
    )
    .expect("json");
    m["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .map(|k| Kind {
            name: k["kind"].as_str().expect("kind").to_string(),
            category: k["category"].as_str().expect("category").to_string(),
            expect: k["expect"].as_str().expect("expect").to_string(),
            key: k["key"].as_str().map(str::to_string),
            row: k["row"].as_u64().unwrap_or(0),
            path: k["path"].as_str().map(str::to_string),
            mutation: k["mutation"].as_str().map(str::to_string),
        })
        .collect()
}

/// (key, column) values of every row of the Parquet files under `dir`.
fn column(dir: &Path, name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).expect("open"))
                .expect("parquet")
                .build()
                .expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let keys = batch.column_by_name("key").expect("key").as_string::<i32>();
            let col = batch.column_by_name(name).expect("column");
            for i in 0..batch.num_rows() {
                let v = col.as_string::<i32>().value(i).to_string();
                out.push((keys.value(i).to_string(), v));
            }
        }
    }
    out
}

#[test]
fn the_corpus_has_at_least_40_kinds_in_every_category() {
    let all = kinds();
    assert!(all.len() >= 40, "{} kinds", all.len());
    let categories: BTreeSet<&str> = all.iter().map(|k| k.category.as_str()).collect();
    for c in ["image", "row", "file", "config", "bundle"] {
        assert!(categories.contains(c), "no {c} kinds");
    }
}

#[test]
fn every_bad_row_is_scored_or_rejected_with_its_reason_and_none_is_lost() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let input = corpus().join("rows.parquet");
    let o = step(
        "infer",
        &seed("captioner"),
        &input,
        out.to_str().expect("utf-8"),
        &["--max-caption-chars", "1000", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    let counts = &summary["counts"];
    let scored: Vec<(String, String)> = column(&out.join("scored"), "origin");
    let rejects: BTreeMap<String, String> =
        column(&out.join("rejects"), "reason").into_iter().collect();
    let scored_keys: BTreeMap<String, usize> = scored
        .iter()
        .filter(|(_, o)| o == "synthetic")
        .fold(BTreeMap::new(), |mut m, (k, _)| {
            *m.entry(k.clone()).or_default() += 1;
            m
        });
    let web: BTreeSet<&String> = scored
        .iter()
        .filter(|(_, o)| o == "web")
        .map(|(k, _)| k)
        .collect();
    let rows = kinds()
        .into_iter()
        .filter(|k| k.category == "image" || k.category == "row")
        .collect::<Vec<_>>();
    for k in &rows {
        let key = match k.key.as_deref() {
            Some(key) if !key.is_empty() => key.to_string(),
            _ => format!("rows:{}", k.row),
        };
        let (outcome, detail) = k.expect.split_once(':').unwrap_or((k.expect.as_str(), ""));
        match outcome {
            "reject" => assert_eq!(
                rejects.get(&key).map(String::as_str),
                Some(detail),
                "{}: expected rejected as {detail}",
                k.name
            ),
            "scored" => {
                assert!(scored_keys.contains_key(&key), "{}: not scored", k.name);
                assert!(!rejects.contains_key(&key), "{}: also rejected", k.name);
                match detail {
                    "no_web_text" => assert!(!web.contains(&key), "{}", k.name),
                    "key_repeated" => assert_eq!(scored_keys[&key], 2, "{}: both rows", k.name),
                    _ => {}
                }
            }
            other => panic!("{}: unknown outcome {other}", k.name),
        }
    }
    // Nothing lost: every input row is scored or rejected, and the counts say what was odd.
    let rows_in = counts["rows_in"].as_u64().expect("rows_in");
    assert_eq!(
        rows_in,
        rows.len() as u64 + 1,
        "the duplicate key is a second row"
    );
    assert_eq!(
        counts["rows_scored"].as_u64().expect("scored")
            + counts["rows_rejected"].as_u64().expect("rejected"),
        rows_in
    );
    assert_eq!(counts["keys_duplicated"], 1);
    assert_eq!(counts["keys_derived"], 2);
    assert_eq!(counts["captions_truncated"], 1);
    assert_eq!(counts["web_missing"], 2);
}

#[test]
fn every_bad_file_config_and_bundle_stops_with_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (i, k) in kinds().into_iter().enumerate() {
        let out = tmp.path().join(format!("out-{i}"));
        let out = out.to_str().expect("utf-8");
        let (outcome, needle) = k.expect.split_once(':').unwrap_or((k.expect.as_str(), ""));
        let path = || corpus().join(k.path.as_deref().expect("path"));
        let rows = corpus().join("rows.parquet");
        let o = match k.category.as_str() {
            "file" => step("infer", &seed("captioner"), &path(), out, &[]),
            "prefix" => step("run", &seed("captioner"), &path(), out, &[]),
            "config" => {
                let config = path();
                step(
                    "run",
                    &seed("captioner"),
                    &rows,
                    out,
                    &["--config", config.to_str().expect("utf-8")],
                )
            }
            "bundle" => {
                let bundle = tmp.path().join(format!("bundle-{i}"));
                copy_dir(Path::new(&seed("captioner")), &bundle);
                mutate(&bundle, k.mutation.as_deref().expect("mutation"));
                step("infer", bundle.to_str().expect("utf-8"), &rows, out, &[])
            }
            _ => continue,
        };
        match outcome {
            "error" => assert_one_error_line(&k.name, &o, needle),
            "ok" => {
                assert!(o.status.success(), "{}: {}", k.name, stderr(&o));
                assert!(!stderr(&o).contains("panicked"), "{}", k.name);
            }
            other => panic!("{}: unknown outcome {other}", k.name),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
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

fn mutate(bundle: &Path, mutation: &str) {
    let mut parts = mutation.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("delete"), Some(file), None) => std::fs::remove_file(bundle.join(file)).expect("rm"),
        (Some("flip"), Some(file), None) => {
            let path = bundle.join(file);
            let mut bytes = std::fs::read(&path).expect("read");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xFF;
            std::fs::write(path, bytes).expect("write");
        }
        (Some("write"), Some(file), Some(text)) => {
            std::fs::write(bundle.join(file), text).expect("write")
        }
        (Some("remove"), None, None) => std::fs::remove_dir_all(bundle).expect("rm -r"),
        other => panic!("unknown mutation {other:?}"),
    }
}
