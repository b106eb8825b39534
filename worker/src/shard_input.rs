//! Reads one shard's bytes from the object store: the file's footer and the byte ranges of the
//! shard's row groups, nothing else, held as a sparse in-memory file that the Parquet reader
//! reads like the whole file. A worker fetches the next shard this way while the current one
//! computes.

use std::io::Cursor;
use std::ops::Range;

use bytes::Bytes;
use capfilt_schemas::footer::{FooterError, read_footer};
use capfilt_schemas::store::{Location, StoreError};
use object_store::ObjectStoreExt;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

/// Byte ranges of a Parquet file held in memory; reading outside them is an error.
#[derive(Debug, Clone)]
pub struct SparseFile {
    size: u64,
    chunks: Vec<(u64, Bytes)>,
}

impl SparseFile {
    fn find(&self, start: u64, len: u64) -> Option<Bytes> {
        self.chunks.iter().find_map(|(s, b)| {
            let end = s + b.len() as u64;
            (start >= *s && start + len <= end)
                .then(|| b.slice((start - s) as usize..(start - s + len) as usize))
        })
    }

    /// Bytes held.
    pub fn bytes_held(&self) -> u64 {
        self.chunks.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

impl Length for SparseFile {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for SparseFile {
    type T = Cursor<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        // A reader to the end of the chunk holding `start`.
        self.chunks
            .iter()
            .find(|(s, b)| start >= *s && start < s + b.len() as u64)
            .map(|(s, b)| Cursor::new(b.slice((start - s) as usize..)))
            .ok_or_else(|| ParquetError::General(format!("byte {start} was not fetched")))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length as u64).ok_or_else(|| {
            ParquetError::General(format!(
                "bytes {start}..{} were not fetched",
                start + length as u64
            ))
        })
    }
}

/// Why a shard could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ShardReadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not what the plan said.
    #[error("{file}: {message}")]
    Bad {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
}

/// Fetches the footer and the byte ranges of row groups `groups` of the Parquet object at
/// `loc` (its size from the plan, or looked up when 0).
pub async fn fetch_shard(
    loc: &Location,
    size: u64,
    groups: Range<usize>,
) -> Result<SparseFile, ShardReadError> {
    let io = |source| StoreError::Io {
        operation: "reading",
        location: loc.display.clone(),
        source,
    };
    let bad = |message: String| ShardReadError::Bad {
        file: loc.display.clone(),
        message,
    };
    let size = if size == 0 {
        loc.store.head(&loc.path).await.map_err(io)?.size
    } else {
        size
    };
    let footer = read_footer(loc, size).await.map_err(|e| match e {
        FooterError::Store(s) => ShardReadError::Store(s),
        FooterError::Bad { message, .. } => bad(message),
    })?;
    let md = &footer.metadata;
    if groups.end > md.num_row_groups() {
        return Err(bad(format!(
            "row groups {groups:?} asked for, the file has {} (changed since it was planned?)",
            md.num_row_groups()
        )));
    }
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for g in groups {
        for col in md.row_group(g).columns() {
            let (start, len) = col.byte_range();
            ranges.push(start..start + len);
        }
    }
    // Merge adjacent ranges: one request per contiguous run.
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let data = loc.store.get_ranges(&loc.path, &merged).await.map_err(io)?;
    let mut chunks: Vec<(u64, Bytes)> = merged.iter().map(|r| r.start).zip(data).collect();
    chunks.push((footer.start, footer.bytes.clone()));
    // The reader checks the magic at the start of the file.
    chunks.push((0, Bytes::from_static(b"PAR1")));
    Ok(SparseFile { size, chunks })
}
