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
    /// The key was null or empty and was derived from the file and row.
    pub key_derived: bool,
    /// The caption was cut at the length cap.
    pub caption_truncated: bool,
}

/// Default cap on a caption's length, in characters (web alt-texts are rarely over a few
/// hundred; the filter reads only the first 35 tokens).
pub const DEFAULT_MAX_CAPTION_CHARS: usize = 1000;

/// The caption as the step uses it: `None` when null, empty or blank, cut at `max_chars`
/// characters (on a character boundary); and whether it was cut.
pub fn clean_caption(raw: Option<String>, max_chars: usize) -> (Option<String>, bool) {
    let Some(mut text) = raw.filter(|t| !t.trim().is_empty()) else {
        return (None, false);
    };
    match text.char_indices().nth(max_chars.max(1)) {
        Some((cut, _)) => {
            text.truncate(cut);
            (Some(text), true)
        }
        None => (Some(text), false),
    }
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

/// The rows of `batch`, whose first row is row `first_row` of the file `file_stem`, with
/// captions cut at `max_caption_chars`.
pub fn rows_of(
    batch: &RecordBatch,
    columns: &InputColumns,
    first_row: u64,
    file_stem: &str,
    max_caption_chars: usize,
) -> Vec<InputRow> {
    let col = |i: Option<usize>| i.map(|i| batch.column(i).as_ref());
    let (key, url, image) = (col(columns.key), col(columns.url), col(columns.image));
    let caption = batch.column(columns.caption).as_ref();
    (0..batch.num_rows())
        .map(|i| {
            let row = first_row + i as u64;
            let given = key.and_then(|c| string_at(c, i)).filter(|k| !k.is_empty());
            let key_derived = given.is_none();
            let (caption, caption_truncated) =
                clean_caption(string_at(caption, i), max_caption_chars);
            InputRow {
                row,
                key: given.unwrap_or_else(|| format!("{file_stem}:{row}")),
                url: url.and_then(|c| string_at(c, i)),
                caption,
                image: image.and_then(|c| bytes_at(c, i)),
                key_derived,
                caption_truncated,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_cut_on_character_boundaries_and_blank_ones_are_missing() {
        assert_eq!(clean_caption(None, 10), (None, false));
        assert_eq!(clean_caption(Some(String::new()), 10), (None, false));
        assert_eq!(clean_caption(Some(" \t\n".into()), 10), (None, false));
        assert_eq!(
            clean_caption(Some("a red circle".into()), 100),
            (Some("a red circle".into()), false)
        );
        // Multi-byte characters: 5 characters kept, never half of one.
        assert_eq!(
            clean_caption(Some("日本語のキャプション".into()), 5),
            (Some("日本語のキ".into()), true)
        );
        let huge = "x".repeat(1 << 20);
        let (cut, truncated) = clean_caption(Some(huge), DEFAULT_MAX_CAPTION_CHARS);
        assert!(truncated);
        assert_eq!(cut.map(|c| c.len()), Some(DEFAULT_MAX_CAPTION_CHARS));
    }
}
