//! Parquet's async reader over an object store location: only the footer and the column chunks
//! a projection and row selection need are fetched (images of 60 rows, not whole input files).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use capfilt_schemas::store::Location;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt as _;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

/// An [`AsyncFileReader`] over one object.
#[derive(Debug, Clone)]
pub struct StoreReader {
    loc: Location,
}

impl StoreReader {
    /// A reader of `loc`.
    pub fn new(loc: Location) -> Self {
        Self { loc }
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.loc
                .store
                .get_range(&self.loc.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self
                .loc
                .store
                .head(&self.loc.path)
                .await
                .map_err(external)?
                .size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
