//! Input rows of a web image–text Parquet file, through the column mapping: key, URL, caption
//! and image bytes of each row, with its row index in the file.

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use capfilt_schemas::mapping::InputColumns;

/// One input row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRow {
    /// Row index within its file.
    pub row: u64,
    /// Row key (derived from the file name and row index when the input has none).
    pub key: String,
    /// Image URL.
    pub url: Option<String>,
    /// Web alt-text.
    pub caption: Option<String>,
    /// Encoded image bytes.
    pub image: Option<Vec<u8>>,
}

fn string_at(col: &dyn Array, i: usize) -> Option<String> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(col.as_string_view().value(i).to_string()),
        _ => None,
    }
}

fn bytes_at(col: &dyn Array, i: usize) -> Option<Vec<u8>> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => Some(col.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Some(col.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Some(col.as_binary_view().value(i).to_vec()),
        _ => None,
    }
}

/// The rows of `batch`, whose first row is row `first_row` of the file `file_stem`.
pub fn rows_of(
    batch: &RecordBatch,
    columns: &InputColumns,
    first_row: u64,
    file_stem: &str,
) -> Vec<InputRow> {
    let col = |i: Option<usize>| i.map(|i| batch.column(i).as_ref());
    let (key, url, image) = (col(columns.key), col(columns.url), col(columns.image));
    let caption = batch.column(columns.caption).as_ref();
    (0..batch.num_rows())
        .map(|i| {
            let row = first_row + i as u64;
            InputRow {
                row,
                key: key
                    .and_then(|c| string_at(c, i))
                    .unwrap_or_else(|| format!("{file_stem}:{row}")),
                url: url.and_then(|c| string_at(c, i)),
                caption: string_at(caption, i),
                image: image.and_then(|c| bytes_at(c, i)),
            }
        })
        .collect()
}
