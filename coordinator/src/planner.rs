//! The planner: lists the input prefix, reads only each Parquet file's footer, checks its schema
//! against the column mapping, and cuts shards of contiguous row groups of one file with a
//! target row count (DESIGN.md §2 "Shards").
//!
//! Shard ids are `f{file index:05}-g{first row group:05}` over the sorted listing, so the same
//! listing and target give the same ids: a restarted coordinator plans the same shards.

use capfilt_schemas::SchemaError;
use capfilt_schemas::footer::{FooterError, read_footer};
use capfilt_schemas::mapping::ColumnMapping;
use capfilt_schemas::records::{InputFile, ShardRef};
use capfilt_schemas::store::{Location, StoreError};
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::arrow::parquet_to_arrow_schema;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Listing or reading failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No Parquet files under the input.
    #[error("no .parquet files under {0}")]
    Empty(String),
    /// A footer could not be read.
    #[error(transparent)]
    Footer(#[from] FooterError),
    /// A file's schema could not be converted.
    #[error("{file}: not a readable Parquet file: {message}")]
    BadFile {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A file does not fit the column mapping.
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The shards of an input, and its files.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The input files, sorted by URL.
    pub inputs: Vec<InputFile>,
    /// The shards, in file and row-group order.
    pub shards: Vec<ShardRef>,
}

impl Plan {
    /// Rows in all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.num_rows).sum()
    }
}

/// How an input is named in shards and output rows: the URL as the user gave it, or for a local
/// input its absolute path (so any process, whatever its working directory, finds the file).
fn base_name(prefix: &Location) -> String {
    match &prefix.local {
        Some(p) => p.display().to_string(),
        None => prefix.display.clone(),
    }
}

/// URL of an object of `loc`'s store, in the scheme the user gave.
fn object_url(prefix: &Location, meta: &ObjectMeta) -> String {
    let base = prefix.path.as_ref();
    let full = meta.location.as_ref();
    let rel = full
        .strip_prefix(base)
        .unwrap_or(full)
        .trim_start_matches('/');
    if rel.is_empty() {
        base_name(prefix)
    } else {
        format!("{}/{rel}", base_name(prefix).trim_end_matches('/'))
    }
}

/// Plans the input at `input` (a Parquet file or a prefix holding them).
/// The input's Parquet files (one file, or every `.parquet` object under a prefix), sorted;
/// [`PlanError::Empty`] when there is none.
pub async fn list_inputs(input: &Location) -> Result<Vec<ObjectMeta>, PlanError> {
    let io = |source| StoreError::Io {
        operation: "listing",
        location: input.display.clone(),
        source,
    };
    // A single file, or everything under a prefix.
    let mut objects: Vec<ObjectMeta> = match input.store.head(&input.path).await {
        Ok(meta) if !input.display.ends_with('/') => vec![meta],
        _ => input
            .store
            .list(Some(&input.path))
            .try_collect()
            .await
            .map_err(io)?,
    };
    objects.retain(|m| m.location.as_ref().ends_with(".parquet"));
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    if objects.is_empty() {
        return Err(PlanError::Empty(input.display.clone()));
    }
    Ok(objects)
}

/// Plans `input` into shards of about `target_rows` rows from its files' footers.
pub async fn plan(
    input: &Location,
    mapping: &ColumnMapping,
    target_rows: u64,
) -> Result<Plan, PlanError> {
    let objects = list_inputs(input).await?;
    let target = target_rows.max(1);
    let mut inputs = Vec::with_capacity(objects.len());
    let mut shards = Vec::new();
    for (fi, meta) in objects.iter().enumerate() {
        let url = if objects.len() == 1 && input.path == meta.location {
            base_name(input)
        } else {
            object_url(input, meta)
        };
        let object = Location {
            store: input.store.clone(),
            path: meta.location.clone(),
            display: url.clone(),
            local: None,
        };
        let md = read_footer(&object, meta.size).await?.metadata;
        let file_meta = md.file_metadata();
        let schema =
            parquet_to_arrow_schema(file_meta.schema_descr(), file_meta.key_value_metadata())
                .map_err(|e| PlanError::BadFile {
                    file: url.clone(),
                    message: e.to_string(),
                })?;
        mapping.validate(&url, &schema)?;
        let groups = md.num_row_groups();
        inputs.push(InputFile {
            url: url.clone(),
            size: meta.size,
            rows: file_meta.num_rows().max(0) as u64,
            row_groups: groups as u32,
        });
        let mut first_group = 0usize;
        let mut first_row = 0u64;
        let mut rows = 0u64;
        for g in 0..groups {
            rows += md.row_group(g).num_rows().max(0) as u64;
            if rows >= target || g + 1 == groups {
                shards.push(ShardRef {
                    shard_id: format!("f{fi:05}-g{first_group:05}"),
                    file: url.clone(),
                    first_row_group: first_group as u32,
                    num_row_groups: (g + 1 - first_group) as u32,
                    first_row,
                    num_rows: rows,
                });
                first_row += rows;
                first_group = g + 1;
                rows = 0;
            }
        }
    }
    tracing::info!(input = %input.display, files = inputs.len(), shards = shards.len(), "planned");
    Ok(Plan { inputs, shards })
}
