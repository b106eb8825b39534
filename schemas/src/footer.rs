//! A Parquet file's footer read from an object store with two range requests (the 8-byte tail,
//! then the metadata), without touching the rest of the file: what the planner needs to cut
//! shards and a worker needs to find its shard's row groups.

use bytes::Bytes;
use object_store::ObjectStoreExt;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::store::{Location, StoreError};

/// Why a footer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object is not a readable Parquet file.
    #[error("{file}: not a readable Parquet file: {message}")]
    Bad {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
}

/// A decoded footer and where it lies in the file.
#[derive(Debug, Clone)]
pub struct Footer {
    /// Offset of the metadata in the file.
    pub start: u64,
    /// The metadata bytes and the 8-byte tail (length + `PAR1`), from `start` to the end.
    pub bytes: Bytes,
    /// The decoded metadata.
    pub metadata: ParquetMetaData,
}

/// Reads the footer of the `size`-byte Parquet object at `loc`.
pub async fn read_footer(loc: &Location, size: u64) -> Result<Footer, FooterError> {
    let bad = |message: String| FooterError::Bad {
        file: loc.display.clone(),
        message,
    };
    let io = |source| StoreError::Io {
        operation: "reading the footer of",
        location: loc.display.clone(),
        source,
    };
    if size < 12 {
        return Err(bad(format!("{size} bytes is too small for Parquet")));
    }
    let tail = loc
        .store
        .get_range(&loc.path, size - 8..size)
        .await
        .map_err(io)?;
    if &tail[4..8] != b"PAR1" {
        return Err(bad("no PAR1 magic at the end".into()));
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 8 > size {
        return Err(bad(format!(
            "footer length {len} exceeds the file size {size}"
        )));
    }
    let start = size - 8 - len;
    let bytes = loc
        .store
        .get_range(&loc.path, start..size)
        .await
        .map_err(io)?;
    let metadata = ParquetMetaDataReader::decode_metadata(&bytes[..len as usize])
        .map_err(|e| bad(e.to_string()))?;
    Ok(Footer {
        start,
        bytes,
        metadata,
    })
}
