//! The synthetic benchmark against the input data contract: its files fit img2dataset's column
//! mapping, and a mapping they do not fit is refused with an error naming file and column.

use std::fs::File;

use capfilt_schemas::{ColumnMapping, SchemaError};
use capfilt_synth::{Split, SynthConfig, split_dir};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[test]
fn benchmark_files_fit_img2dataset_mapping_and_not_laion() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = SynthConfig::new(dir.path().join("bench"));
    config.seed_rows = 30;
    config.web_rows = 50;
    config.eval_rows = 10;
    config.rows_per_file = 20;
    config.rows_per_row_group = 8;
    config.max_side = 96;
    let summary = capfilt_synth::generate(&config)?;
    assert_eq!(summary.splits.len(), 3);

    let web = split_dir(&config.out, Split::Web);
    let mut files: Vec<_> = std::fs::read_dir(&web)?.collect::<Result<Vec<_>, _>>()?;
    files.sort_by_key(|e| e.file_name());
    assert_eq!(files.len(), 3, "50 rows at 20 per file");
    let mut rows = 0;
    for entry in files {
        let path = entry.path();
        let name = path.display().to_string();
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?;
        let schema = builder.schema().clone();
        let groups = builder.metadata().num_row_groups();
        let cols = ColumnMapping::img2dataset().validate(&name, &schema)?;
        assert_eq!(
            (cols.key, cols.url, cols.caption, cols.image),
            (Some(0), Some(1), 2, Some(3))
        );
        let err = ColumnMapping::laion()
            .validate(&name, &schema)
            .expect_err("no URL column");
        assert!(matches!(err, SchemaError::MissingColumn { ref column, .. } if column == "URL"));
        assert!(err.to_string().contains(&name));
        for batch in builder.build()? {
            rows += batch?.num_rows();
        }
        assert!(groups >= 2 || rows == 50, "{name} has {groups} row groups");
    }
    assert_eq!(rows, 50);
    Ok(())
}
