//! The input column mapping: which columns of a web image–text Parquet file hold the key, URL,
//! caption and encoded image, and the check of a file's schema against it.

use std::fmt;

use arrow_schema::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::SchemaError;

/// What an input column is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnRole {
    /// Unique row key (img2dataset's `key`).
    Key,
    /// Source URL of the image.
    Url,
    /// The web alt-text.
    Caption,
    /// The encoded image bytes.
    Image,
}

impl ColumnRole {
    /// Lower-case name used in config files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnRole::Key => "key",
            ColumnRole::Url => "url",
            ColumnRole::Caption => "caption",
            ColumnRole::Image => "image",
        }
    }

    /// The Arrow types accepted for this role, as written in messages.
    pub fn expected_types(self) -> &'static str {
        match self {
            ColumnRole::Image => "binary (Binary, LargeBinary or BinaryView)",
            _ => "string (Utf8, LargeUtf8 or Utf8View)",
        }
    }

    fn accepts(self, data_type: &DataType) -> bool {
        match self {
            ColumnRole::Image => matches!(
                data_type,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView
            ),
            _ => matches!(
                data_type,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
        }
    }
}

impl fmt::Display for ColumnRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of the input columns capfilt reads (DESIGN.md §2).
///
/// The defaults follow img2dataset's Parquet output (`key`, `url`, `caption`, `jpg`);
/// [`ColumnMapping::laion`] maps LAION's metadata (`URL`, `TEXT`, no key, no image bytes).
/// A missing key column means keys are derived from the source file and row index; a missing
/// image column means images are fetched from the URL (when fetching is enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnMapping {
    /// Row key column, if the input has one.
    pub key: Option<String>,
    /// Image URL column, if the input has one.
    pub url: Option<String>,
    /// Web caption (alt-text) column; always required.
    pub caption: String,
    /// Encoded image bytes column, if the input has one.
    pub image: Option<String>,
}

impl Default for ColumnMapping {
    fn default() -> Self {
        Self::img2dataset()
    }
}

impl ColumnMapping {
    /// img2dataset's Parquet layout: `key`, `url`, `caption`, `jpg`.
    pub fn img2dataset() -> Self {
        Self {
            key: Some("key".into()),
            url: Some("url".into()),
            caption: "caption".into(),
            image: Some("jpg".into()),
        }
    }

    /// LAION metadata: `URL`, `TEXT`; images are fetched from the URL.
    pub fn laion() -> Self {
        Self {
            key: None,
            url: Some("URL".into()),
            caption: "TEXT".into(),
            image: None,
        }
    }

    /// A named preset: `img2dataset` or `laion`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "img2dataset" => Some(Self::img2dataset()),
            "laion" => Some(Self::laion()),
            _ => None,
        }
    }

    /// The (role, column name) pairs in force, in role order.
    pub fn columns(&self) -> Vec<(ColumnRole, &str)> {
        let mut out = Vec::with_capacity(4);
        if let Some(k) = &self.key {
            out.push((ColumnRole::Key, k.as_str()));
        }
        if let Some(u) = &self.url {
            out.push((ColumnRole::Url, u.as_str()));
        }
        out.push((ColumnRole::Caption, self.caption.as_str()));
        if let Some(i) = &self.image {
            out.push((ColumnRole::Image, i.as_str()));
        }
        out
    }

    /// Checks that `schema` (of the input file `file`) has every mapped column with an accepted
    /// type, and that the mapping gives each row a way to get its image (bytes or URL).
    ///
    /// The error names the file, the column, what was found and the mapping in force.
    pub fn validate(&self, file: &str, schema: &Schema) -> Result<InputColumns, SchemaError> {
        if self.image.is_none() && self.url.is_none() {
            return Err(SchemaError::NoImageSource {
                mapping: self.to_string(),
            });
        }
        let mut resolved = InputColumns::default();
        for (role, name) in self.columns() {
            let (index, field) =
                schema
                    .column_with_name(name)
                    .ok_or_else(|| SchemaError::MissingColumn {
                        file: file.to_string(),
                        column: name.to_string(),
                        role,
                        mapping: self.to_string(),
                        available: schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            if !role.accepts(field.data_type()) {
                return Err(SchemaError::WrongColumnType {
                    file: file.to_string(),
                    column: name.to_string(),
                    role,
                    expected: role.expected_types(),
                    found: field.data_type().to_string(),
                    mapping: self.to_string(),
                });
            }
            match role {
                ColumnRole::Key => resolved.key = Some(index),
                ColumnRole::Url => resolved.url = Some(index),
                ColumnRole::Caption => resolved.caption = index,
                ColumnRole::Image => resolved.image = Some(index),
            }
        }
        Ok(resolved)
    }
}

impl fmt::Display for ColumnMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "-".to_string());
        write!(
            f,
            "key={}, url={}, caption={}, image={}",
            show(&self.key),
            show(&self.url),
            self.caption,
            show(&self.image)
        )
    }
}

/// Column indices of a validated input schema, by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputColumns {
    /// Index of the key column.
    pub key: Option<usize>,
    /// Index of the URL column.
    pub url: Option<usize>,
    /// Index of the caption column.
    pub caption: usize,
    /// Index of the image bytes column.
    pub image: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;

    fn img2dataset_schema() -> Schema {
        Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("url", DataType::Utf8, true),
            Field::new("caption", DataType::Utf8, true),
            Field::new("jpg", DataType::Binary, true),
            Field::new("extra", DataType::Int64, true),
        ])
    }

    #[test]
    fn img2dataset_schema_resolves_every_role() {
        let cols = ColumnMapping::img2dataset()
            .validate("a.parquet", &img2dataset_schema())
            .expect("valid");
        assert_eq!(
            cols,
            InputColumns {
                key: Some(0),
                url: Some(1),
                caption: 2,
                image: Some(3)
            }
        );
    }

    #[test]
    fn laion_mapping_accepts_url_and_text_only() {
        let schema = Schema::new(vec![
            Field::new("URL", DataType::LargeUtf8, true),
            Field::new("TEXT", DataType::Utf8View, true),
        ]);
        let cols = ColumnMapping::laion()
            .validate("laion.parquet", &schema)
            .expect("valid");
        assert_eq!(cols.caption, 1);
        assert_eq!(cols.image, None);
        assert_eq!(cols.key, None);
    }

    #[test]
    fn missing_column_names_file_column_and_mapping() {
        let err = ColumnMapping::laion()
            .validate("s3://b/part-0.parquet", &img2dataset_schema())
            .expect_err("URL is missing");
        let msg = err.to_string();
        assert!(msg.contains("s3://b/part-0.parquet"), "{msg}");
        assert!(msg.contains("'URL'"), "{msg}");
        assert!(
            msg.contains("key=-, url=URL, caption=TEXT, image=-"),
            "{msg}"
        );
        assert!(msg.contains("key, url, caption, jpg, extra"), "{msg}");
    }

    #[test]
    fn mistyped_column_names_expected_and_found_types() {
        let schema = Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("url", DataType::Utf8, true),
            Field::new("caption", DataType::Utf8, true),
            Field::new("jpg", DataType::Utf8, true),
        ]);
        let err = ColumnMapping::img2dataset()
            .validate("x.parquet", &schema)
            .expect_err("jpg must be binary");
        match &err {
            SchemaError::WrongColumnType {
                column,
                role,
                found,
                ..
            } => {
                assert_eq!(column, "jpg");
                assert_eq!(*role, ColumnRole::Image);
                assert_eq!(found, "Utf8");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("x.parquet"));
    }

    #[test]
    fn mapping_without_image_or_url_is_refused() {
        let m = ColumnMapping {
            key: None,
            url: None,
            caption: "caption".into(),
            image: None,
        };
        assert!(matches!(
            m.validate("f", &img2dataset_schema()),
            Err(SchemaError::NoImageSource { .. })
        ));
    }

    #[test]
    fn mapping_reads_from_toml_like_json_with_defaults() {
        let m: ColumnMapping = serde_json::from_str(r#"{"caption":"TEXT"}"#).expect("parse");
        assert_eq!(m.caption, "TEXT");
        assert_eq!(m.image.as_deref(), Some("jpg"));
        assert!(serde_json::from_str::<ColumnMapping>(r#"{"captoin":"x"}"#).is_err());
        assert_eq!(ColumnMapping::preset("laion"), Some(ColumnMapping::laion()));
        assert_eq!(ColumnMapping::preset("coco"), None);
    }
}
