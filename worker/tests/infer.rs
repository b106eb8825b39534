//! The CapFilt step over a Parquet file with good and bad rows: every input row ends up exactly
//! once, either scored or rejected with its reason, and the bad rows cost nothing else.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use capfilt_schemas::outputs::RejectReason;
use capfilt_synth::{Split, SynthConfig, make_row};
use capfilt_worker::infer::{ReadOptions, process_parquet};
use capfilt_worker::{Engine, StepParams};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

struct Input {
    key: String,
    caption: Option<String>,
    image: Option<Vec<u8>>,
    expect: Option<RejectReason>,
}

fn reencode(bytes: &[u8], format: image::ImageFormat) -> Vec<u8> {
    let img = image::load_from_memory(bytes).expect("decode synth image");
    let img = match format {
        image::ImageFormat::Gif => image::DynamicImage::ImageRgba8(img.to_rgba8()),
        _ => image::DynamicImage::ImageRgb8(img.to_rgb8()),
    };
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

fn inputs() -> Vec<Input> {
    let config = SynthConfig {
        max_side: 160,
        ..SynthConfig::new("unused")
    };
    let mut rows = Vec::new();
    for i in 0..14u64 {
        let r = make_row(&config, Split::Web, i, i % 3 == 0).expect("row");
        let image = match i {
            4 => reencode(&r.image, image::ImageFormat::Gif),
            5 => reencode(&r.image, image::ImageFormat::WebP),
            6 => reencode(&r.image, image::ImageFormat::Bmp),
            _ => r.image,
        };
        rows.push(Input {
            key: r.key,
            caption: Some(r.caption),
            image: Some(image),
            expect: None,
        });
    }
    let good = rows[0].image.clone().unwrap_or_default();
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 3);
    let mut bad = |key: &str, image: Option<Vec<u8>>, expect| {
        rows.push(Input {
            key: key.to_string(),
            caption: Some("a caption".into()),
            image,
            expect: Some(expect),
        })
    };
    bad(
        "garbage",
        Some(b"<html>404 not found</html>".to_vec()),
        RejectReason::DecodeError,
    );
    bad("truncated", Some(truncated), RejectReason::DecodeError);
    bad("empty", Some(Vec::new()), RejectReason::MissingImage);
    bad("null", None, RejectReason::MissingImage);
    bad("huge", Some(vec![0xff; 600_000]), RejectReason::TooLarge);
    // A row without a caption is still captioned and its synthetic texts judged.
    rows.push(Input {
        key: "no-caption".into(),
        caption: None,
        image: Some(good),
        expect: None,
    });
    rows
}

fn write_parquet(rows: &[Input], path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("jpg", DataType::Binary, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.clone()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter()
                .map(|r| Some(format!("https://img.invalid/{}", r.key))),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.caption.clone()),
        )),
        Arc::new(BinaryArray::from_iter(
            rows.iter().map(|r| r.image.as_deref()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).expect("batch");
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(8))
        .build();
    let file = std::fs::File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

fn engine() -> Engine {
    let params = StepParams {
        generation: capfilt_worker::GenerationParams {
            candidates: 2,
            ..Default::default()
        },
        ..StepParams::default()
    };
    Engine::load(
        runtime(),
        &seed_bundle("captioner"),
        &seed_bundle("filter"),
        &options(),
        params,
    )
    .expect("engine")
}

#[test]
fn every_row_is_scored_or_rejected_exactly_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("part-00000.parquet");
    let rows = inputs();
    write_parquet(&rows, &path);
    let mut engine = engine();
    let read = ReadOptions {
        batch_size: 5,
        limits: capfilt_worker::preprocess::ImageLimits {
            max_encoded_bytes: 500_000,
            ..Default::default()
        },
        ..ReadOptions::default()
    };
    let (tables, stats) =
        process_parquet(&path, "web/part-00000.parquet", None, &mut engine, &read)
            .expect("process");
    let c = &tables.counts;
    assert_eq!(c.rows_in, rows.len() as u64);
    assert_eq!(c.rows_in, c.rows_scored + c.rows_rejected);
    assert!(c.is_consistent());
    assert_eq!(c.rows_rejected, 5);

    let scored = &tables.scored;
    let keys = scored
        .column_by_name("key")
        .expect("key")
        .as_string::<i32>();
    let origin = scored
        .column_by_name("origin")
        .expect("origin")
        .as_string::<i32>();
    let rows_col = scored
        .column_by_name("source_row")
        .expect("row")
        .as_primitive::<arrow_array::types::UInt64Type>();
    let mut per_key: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for i in 0..scored.num_rows() {
        let e = per_key.entry(keys.value(i).to_string()).or_default();
        if origin.value(i) == "web" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        let idx = rows_col.value(i) as usize;
        assert_eq!(
            rows[idx].key,
            keys.value(i),
            "source_row points at the input row"
        );
    }
    let rejects = &tables.rejects;
    let rkeys = rejects
        .column_by_name("key")
        .expect("key")
        .as_string::<i32>();
    let reasons = rejects
        .column_by_name("reason")
        .expect("reason")
        .as_string::<i32>();
    let mut seen = HashSet::new();
    for i in 0..rejects.num_rows() {
        let key = rkeys.value(i);
        assert!(seen.insert(key.to_string()), "{key} rejected twice");
        assert!(!per_key.contains_key(key), "{key} both scored and rejected");
        let want = rows
            .iter()
            .find(|r| r.key == key)
            .and_then(|r| r.expect)
            .expect("expected reject");
        assert_eq!(reasons.value(i), want.as_str(), "{key}");
    }
    for r in &rows {
        match r.expect {
            Some(_) => assert!(seen.contains(&r.key), "{} not rejected", r.key),
            None => {
                let (web, syn) = per_key.get(&r.key).copied().unwrap_or_default();
                let has_text = r.caption.as_deref().is_some_and(|c| !c.trim().is_empty());
                assert_eq!(web, usize::from(has_text), "{}", r.key);
                assert_eq!(syn, 2, "{}: two synthetic candidates", r.key);
            }
        }
    }
    // cleaned = the kept rows of scored.
    let kept = scored.column_by_name("kept").expect("kept").as_boolean();
    assert_eq!(tables.cleaned.num_rows(), kept.true_count());
    assert_eq!(c.web_kept + c.synthetic_kept, kept.true_count() as u64);
    assert!(stats.caption_ms > 0 || stats.filter_ms > 0);

    // A second run over two of the row groups gives the same rows for them.
    let (part, _) = process_parquet(
        &path,
        "web/part-00000.parquet",
        Some(1..3),
        &mut engine,
        &read,
    )
    .expect("part");
    assert_eq!(part.counts.rows_in, rows.len() as u64 - 8);
    let first = part
        .scored
        .column_by_name("source_row")
        .expect("row")
        .as_primitive::<arrow_array::types::UInt64Type>();
    assert!(first.values().iter().all(|&r| r >= 8));
}

#[test]
fn a_file_that_does_not_fit_the_mapping_names_file_and_column() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("laion.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("TEXT", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["x"])) as ArrayRef],
    )
    .expect("batch");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).expect("create"), schema, None)
        .expect("w");
    w.write(&batch).expect("write");
    w.close().expect("close");
    let mut engine = engine();
    let err = process_parquet(
        &path,
        "s3://bucket/laion.parquet",
        None,
        &mut engine,
        &ReadOptions::default(),
    )
    .expect_err("mapping");
    let msg = err.to_string();
    assert!(
        msg.contains("s3://bucket/laion.parquet") && msg.contains("caption"),
        "{msg}"
    );
}

/// Rows a new user's data has: an empty key, a repeated key, a null and an empty caption, a
/// caption far over the cap, a valid JPEG with bytes after its end. None is lost; each is
/// counted for the manifest.
#[test]
fn odd_keys_and_captions_are_processed_and_counted() {
    let config = SynthConfig {
        max_side: 160,
        ..SynthConfig::new("unused")
    };
    let image = |i: u64| make_row(&config, Split::Web, i, false).expect("row").image;
    let mut trailing = image(5);
    trailing.extend(std::iter::repeat_n(0x42u8, 10_000));
    let row = |key: &str, caption: Option<String>, image: Vec<u8>| Input {
        key: key.into(),
        caption,
        image: Some(image),
        expect: None,
    };
    let rows = vec![
        row("", Some("a red circle".into()), image(0)),
        row("dup", Some("a blue square".into()), image(1)),
        row("dup", Some("a green star".into()), image(2)),
        row("null-caption", None, image(3)),
        row("empty-caption", Some("  ".into()), image(4)),
        row("long", Some("word ".repeat(1000)), image(6)),
        row("trailing-bytes", Some("a shape".into()), trailing),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("part-00000.parquet");
    write_parquet(&rows, &path);
    let read = ReadOptions {
        limits: capfilt_worker::preprocess::ImageLimits {
            max_caption_chars: 100,
            ..Default::default()
        },
        ..ReadOptions::default()
    };
    let (tables, _) = process_parquet(&path, "web/part-00000.parquet", None, &mut engine(), &read)
        .expect("process");
    let c = &tables.counts;
    assert_eq!(
        (c.rows_in, c.rows_scored, c.rows_rejected),
        (7, 7, 0),
        "all scored, the JPEG with trailing bytes too (Pillow decodes it): {c:?}"
    );
    assert_eq!(c.keys_derived, 1);
    assert_eq!(c.keys_duplicated, 1);
    assert_eq!(c.web_missing, 2, "null and blank captions");
    assert_eq!(c.web_texts, 5);
    assert_eq!(c.captions_truncated, 1);
    assert!(c.is_consistent());
    let scored = &tables.scored;
    let keys = scored
        .column_by_name("key")
        .expect("key")
        .as_string::<i32>();
    let texts = scored
        .column_by_name("text")
        .expect("text")
        .as_string::<i32>();
    let origin = scored
        .column_by_name("origin")
        .expect("o")
        .as_string::<i32>();
    let mut long = None;
    let mut derived = false;
    for i in 0..scored.num_rows() {
        if keys.value(i) == "long" && origin.value(i) == "web" {
            long = Some(texts.value(i).chars().count());
        }
        derived |= keys.value(i) == "part-00000:0";
    }
    assert_eq!(long, Some(100), "the long caption is cut to the cap");
    assert!(derived, "the empty key becomes file stem and row");
}
