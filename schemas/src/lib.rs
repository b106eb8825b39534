#![doc = include_str!("../README.md")]

pub mod bundle;
pub mod footer;
pub mod mapping;
pub mod outputs;
pub mod records;
pub mod store;

pub use bundle::{BundleKind, BundleManifest};
pub use mapping::{ColumnMapping, ColumnRole, InputColumns};
pub use outputs::{Origin, RejectReason, cleaned_schema, rejects_schema, scored_schema};
pub use records::{CommitRecord, RoundManifest, ShardCounts};

/// Errors of the data contracts: an input that does not fit the column mapping, or a malformed
/// `bundle.json`.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A mapped column is not in the file.
    #[error(
        "{file}: column '{column}' ({role}) is missing; columns present: {available}; column mapping in force: {mapping}"
    )]
    MissingColumn {
        /// The input file.
        file: String,
        /// The missing column.
        column: String,
        /// Its role.
        role: ColumnRole,
        /// The mapping in force.
        mapping: String,
        /// Columns the file has.
        available: String,
    },
    /// A mapped column has a type capfilt cannot use for its role.
    #[error(
        "{file}: column '{column}' ({role}) has type {found}, expected {expected}; column mapping in force: {mapping}"
    )]
    WrongColumnType {
        /// The input file.
        file: String,
        /// The column.
        column: String,
        /// Its role.
        role: ColumnRole,
        /// Accepted types.
        expected: &'static str,
        /// Type in the file.
        found: String,
        /// The mapping in force.
        mapping: String,
    },
    /// The mapping names neither an image column nor a URL column.
    #[error(
        "column mapping {mapping} has neither an image column nor a url column: set one of them"
    )]
    NoImageSource {
        /// The mapping in force.
        mapping: String,
    },
    /// `bundle.json` could not be parsed or is inconsistent.
    #[error("bundle {source_name}: {problem}")]
    BadBundle {
        /// Bundle location.
        source_name: String,
        /// What is wrong.
        problem: String,
    },
}
