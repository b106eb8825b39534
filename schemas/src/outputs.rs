//! Arrow schemas of a round's output tables (DESIGN.md §2): `scored/`, `cleaned/`, `rejects/`.
//!
//! Column names are constants so that writers, readers and tests agree on them. Per-file
//! provenance (round, bundle hashes, decoding parameters) rides in the Parquet key-value metadata
//! under [`PROVENANCE_METADATA_KEY`]; the per-sample seed is a column.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

/// Parquet key-value metadata key holding the file's provenance JSON.
pub const PROVENANCE_METADATA_KEY: &str = "capfilt.provenance";

/// Output column names.
pub mod col {
    /// Row key from the input (or derived from source file and row).
    pub const KEY: &str = "key";
    /// Image URL from the input.
    pub const URL: &str = "url";
    /// Input file the row came from.
    pub const SOURCE_FILE: &str = "source_file";
    /// Row index of the row within its input file.
    pub const SOURCE_ROW: &str = "source_row";
    /// The text judged by the filter (web caption or synthetic caption).
    pub const TEXT: &str = "text";
    /// `web` or `synthetic`.
    pub const ORIGIN: &str = "origin";
    /// Candidate index of a synthetic caption (null for the web text).
    pub const CANDIDATE: &str = "candidate";
    /// Softmax ITM probability of "match".
    pub const ITM_PROB: &str = "itm_prob";
    /// ITC cosine similarity between image and text embeddings.
    pub const ITC_SIM: &str = "itc_sim";
    /// Whether the text passed the filter threshold.
    pub const KEPT: &str = "kept";
    /// Sampling seed of a synthetic caption (null for the web text).
    pub const SEED: &str = "seed";
    /// Bootstrap round number.
    pub const ROUND: &str = "round";
    /// Encoded image bytes (cleaned output, when materialised).
    pub const IMAGE: &str = "image";
    /// Machine-readable reject reason.
    pub const REASON: &str = "reason";
    /// Human-readable reject message.
    pub const MESSAGE: &str = "message";
    /// The input's web caption of a rejected row.
    pub const CAPTION: &str = "caption";
}

/// Where a judged text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The web alt-text of the input row.
    Web,
    /// A caption written by the captioner.
    Synthetic,
}

impl Origin {
    /// The value stored in the `origin` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Web => "web",
            Origin::Synthetic => "synthetic",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an input row could not be processed (the `reason` column of `rejects/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Neither image bytes nor a fetchable URL.
    MissingImage,
    /// The bytes are not a decodable image of a supported format.
    DecodeError,
    /// Encoded bytes or decoded pixels exceed the configured limits.
    TooLarge,
    /// The image is smaller than the configured minimum side.
    TooSmall,
    /// The image could not be fetched from its URL.
    FetchError,
    /// The row's key or caption column holds a value that cannot be used.
    MalformedRow,
}

impl RejectReason {
    /// Every reason, in a stable order.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::MissingImage,
        RejectReason::DecodeError,
        RejectReason::TooLarge,
        RejectReason::TooSmall,
        RejectReason::FetchError,
        RejectReason::MalformedRow,
    ];

    /// The value stored in the `reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingImage => "missing_image",
            RejectReason::DecodeError => "decode_error",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooSmall => "too_small",
            RejectReason::FetchError => "fetch_error",
            RejectReason::MalformedRow => "malformed_row",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RejectReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RejectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reject reason '{s}'"))
    }
}

fn source_fields() -> [Field; 4] {
    [
        Field::new(col::KEY, DataType::Utf8, false),
        Field::new(col::URL, DataType::Utf8, true),
        Field::new(col::SOURCE_FILE, DataType::Utf8, false),
        Field::new(col::SOURCE_ROW, DataType::UInt64, false),
    ]
}

/// `scored/`: one row per (image, text), nothing thrown away.
pub fn scored_schema() -> SchemaRef {
    let mut fields = source_fields().to_vec();
    fields.extend([
        Field::new(col::TEXT, DataType::Utf8, false),
        Field::new(col::ORIGIN, DataType::Utf8, false),
        Field::new(col::CANDIDATE, DataType::UInt32, true),
        Field::new(col::ITM_PROB, DataType::Float32, false),
        Field::new(col::ITC_SIM, DataType::Float32, false),
        Field::new(col::KEPT, DataType::Boolean, false),
        Field::new(col::SEED, DataType::UInt64, true),
        Field::new(col::ROUND, DataType::UInt32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// `cleaned/`: the kept pairs only; images referenced by source file + row + key, or
/// materialised into an `image` column when `with_images` is set.
pub fn cleaned_schema(with_images: bool) -> SchemaRef {
    let mut fields = source_fields().to_vec();
    fields.extend([
        Field::new(col::TEXT, DataType::Utf8, false),
        Field::new(col::ORIGIN, DataType::Utf8, false),
        Field::new(col::CANDIDATE, DataType::UInt32, true),
        Field::new(col::ITM_PROB, DataType::Float32, false),
        Field::new(col::ROUND, DataType::UInt32, false),
    ]);
    if with_images {
        fields.push(Field::new(col::IMAGE, DataType::Binary, false));
    }
    Arc::new(Schema::new(fields))
}

/// `rejects/`: every input row that could not be processed, with its reason.
pub fn rejects_schema() -> SchemaRef {
    let mut fields = source_fields().to_vec();
    fields.extend([
        Field::new(col::CAPTION, DataType::Utf8, true),
        Field::new(col::REASON, DataType::Utf8, false),
        Field::new(col::MESSAGE, DataType::Utf8, false),
        Field::new(col::ROUND, DataType::UInt32, false),
    ]);
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_reasons_round_trip_through_their_names() {
        for r in RejectReason::ALL {
            assert_eq!(r.as_str().parse::<RejectReason>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).expect("json"),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("exploded".parse::<RejectReason>().is_err());
    }

    #[test]
    fn output_tables_share_the_source_reference_columns() {
        for schema in [scored_schema(), cleaned_schema(false), rejects_schema()] {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(
                &names[..4],
                &[col::KEY, col::URL, col::SOURCE_FILE, col::SOURCE_ROW]
            );
        }
        assert!(cleaned_schema(true).field_with_name(col::IMAGE).is_ok());
        assert!(cleaned_schema(false).field_with_name(col::IMAGE).is_err());
        let scored = scored_schema();
        assert!(
            scored
                .field_with_name(col::SEED)
                .expect("seed")
                .is_nullable()
        );
        assert!(
            !scored
                .field_with_name(col::KEPT)
                .expect("kept")
                .is_nullable()
        );
    }
}
