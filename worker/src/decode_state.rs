//! The captioner's decoding state between decoder steps: each image's cross-attention K/V, the
//! rows' copies of them, and the self-attention KV cache.
//!
//! Two ways to hold it, with the same step and reorder operations and bit-identical results
//! on the CPU provider:
//! - **bound** (the default): every tensor is an ONNX Runtime value on the execution device,
//!   runs go through IoBinding and row selection through a device gather graph
//!   ([`DeviceIo`]); only token ids, positions and the mask go up and the logits come down;
//! - **host** (the reference, `SessionOptions::host_decoding`): cross K/V are host arrays
//!   and rows are selected on the host, as before device-resident decoding existed.
//!
//! ```text
//!   new(images' cross K/V, image of each row)
//!        |
//!        v
//!   step(input ids) --> logits [R, V] on the host, present K/V kept
//!        |      ^
//!        v      |
//!   reorder(parents, image of each new row): past = present's rows `parents`
//!                                            (no copy when every row goes on)
//! ```

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use ort::session::Session;
use ort::value::{DynValue, Tensor, ValueType};

use crate::device_io::{DeviceIo, Place};
use crate::engine_error::EngineError;

/// Input and output names of a decoder with `layers` layers.
#[derive(Debug, Clone)]
pub struct DecoderNames {
    /// `past_k_0, past_v_0, ...`
    pub past: Vec<String>,
    /// `cross_k_0, cross_v_0, ...`
    pub cross: Vec<String>,
    /// `present_k_0, present_v_0, ...`
    pub present: Vec<String>,
}

impl DecoderNames {
    /// Names for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        let names = |prefix: &str| -> Vec<String> {
            (0..layers)
                .flat_map(|l| [format!("{prefix}_k_{l}"), format!("{prefix}_v_{l}")])
                .collect()
        };
        Self {
            past: names("past"),
            cross: names("cross"),
            present: names("present"),
        }
    }
}

/// Each image's cross-attention K/V, `[images, heads, patches, d]` per layer and kind.
pub enum ImageKv {
    /// Host arrays (reference path).
    Host(Vec<ArrayD<f32>>),
    /// Device values (bound path).
    Device(Vec<DynValue>),
}

impl ImageKv {
    /// (heads, d) of the cross K/V.
    fn heads_and_dim(&self) -> Result<(usize, usize), EngineError> {
        let shape: Vec<usize> = match self {
            ImageKv::Host(a) => a.first().map(|a| a.shape().to_vec()),
            ImageKv::Device(v) => v.first().and_then(|v| match v.dtype() {
                ValueType::Tensor { shape, .. } => {
                    Some(shape.iter().map(|&d| d.max(0) as usize).collect())
                }
                _ => None,
            }),
        }
        .ok_or_else(|| EngineError::Graph("vision returned no cross K/V".into()))?;
        if shape.len() != 4 {
            return Err(EngineError::Graph(format!(
                "cross K/V of shape {shape:?}, expected [batch, heads, patches, d]"
            )));
        }
        Ok((shape[1], shape[3]))
    }
}

/// The decoding state of one batch of rows.
pub struct DecodeState {
    images: ImageKv,
    cross_rows: Vec<DynValue>,
    past: Vec<DynValue>,
    present: Option<Vec<DynValue>>,
    past_len: usize,
    rows: usize,
    /// (heads, d), once known.
    dims: Option<(usize, usize)>,
    /// Tensors per kind (2 x layers).
    count: usize,
}

fn value_dims(v: &DynValue) -> Result<(usize, usize), EngineError> {
    match v.dtype() {
        ValueType::Tensor { shape, .. } if shape.len() == 4 => {
            Ok((shape[1].max(0) as usize, shape[3].max(0) as usize))
        }
        other => Err(EngineError::Graph(format!(
            "cross K/V: expected [batch, heads, patches, d], got {other:?}"
        ))),
    }
}

fn zeros(rows: usize, heads: usize, len: usize, d: usize) -> Result<DynValue, EngineError> {
    Ok(Tensor::from_array(ArrayD::<f32>::zeros(IxDyn(&[rows, heads, len, d])))?.into_dyn())
}

fn host_select(
    values: &[DynValue],
    axis: usize,
    index: &[usize],
) -> Result<Vec<DynValue>, EngineError> {
    values
        .iter()
        .map(|v| {
            let a = v.try_extract_array::<f32>()?;
            Ok(Tensor::from_array(a.select(Axis(axis), index))?.into_dyn())
        })
        .collect()
}

fn host_concat(values: &[DynValue], more: &[DynValue]) -> Result<Vec<DynValue>, EngineError> {
    values
        .iter()
        .zip(more)
        .map(|(a, b)| {
            let (a, b) = (a.try_extract_array::<f32>()?, b.try_extract_array::<f32>()?);
            let joined = ndarray::concatenate(Axis(0), &[a.view(), b.view()])
                .map_err(|e| EngineError::Graph(format!("concatenating cache rows: {e}")))?;
            Ok(Tensor::from_array(joined)?.into_dyn())
        })
        .collect()
}

impl DecodeState {
    /// State for rows whose images are `image_rows` (indices into `images`), with an empty
    /// cache. `io` must be given for device values.
    pub fn new(
        images: ImageKv,
        image_rows: &[usize],
        io: Option<&mut DeviceIo>,
    ) -> Result<Self, EngineError> {
        let (heads, d) = images.heads_and_dim()?;
        let n = match &images {
            ImageKv::Host(a) => a.len(),
            ImageKv::Device(v) => v.len(),
        };
        let past = (0..n)
            .map(|_| {
                Ok(Tensor::from_array(ArrayD::<f32>::zeros(IxDyn(&[
                    image_rows.len(),
                    heads,
                    0,
                    d,
                ])))?
                .into_dyn())
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let mut state = Self {
            images,
            cross_rows: Vec::new(),
            past,
            present: None,
            past_len: 0,
            rows: image_rows.len(),
            dims: Some((heads, d)),
            count: n,
        };
        state.cross_rows = state.select_images(io, image_rows)?;
        Ok(state)
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// An empty state for continuous batching, for a decoder of `count / 2` layers: rows come
    /// in with [`DecodeState::append_rows`], each with its own masked prefix of the cache.
    pub fn continuous(count: usize) -> Self {
        Self {
            images: ImageKv::Host(Vec::new()),
            cross_rows: Vec::new(),
            past: Vec::new(),
            present: None,
            past_len: 0,
            rows: 0,
            dims: None,
            count,
        }
    }

    /// Cache positions held for every row (a row's own tokens are its last ones).
    pub fn cache_len(&self) -> usize {
        self.past_len
    }

    /// Appends `n` rows whose cross K/V are `cross` (`[n, heads, patches, d]` per layer and
    /// kind), each with a cache of the current length that its mask must hide.
    pub fn append_rows(
        &mut self,
        io: Option<&mut DeviceIo>,
        cross: Vec<DynValue>,
        n: usize,
    ) -> Result<(), EngineError> {
        if cross.len() != self.count {
            return Err(EngineError::Graph(format!(
                "{} cross K/V tensors for a decoder with {}",
                cross.len(),
                self.count
            )));
        }
        let (heads, d) = value_dims(&cross[0])?;
        self.dims = Some((heads, d));
        let fresh: Vec<DynValue> = (0..self.count)
            .map(|_| zeros(n, heads, self.past_len, d))
            .collect::<Result<_, _>>()?;
        if self.rows == 0 {
            self.past = fresh;
            self.cross_rows = cross;
        } else {
            match io {
                Some(io) => {
                    self.past = io.concat_rows(&self.past, &fresh)?;
                    self.cross_rows = io.concat_rows(&self.cross_rows, &cross)?;
                }
                None => {
                    self.past = host_concat(&self.past, &fresh)?;
                    self.cross_rows = host_concat(&self.cross_rows, &cross)?;
                }
            }
        }
        self.rows += n;
        Ok(())
    }

    /// After a step (continuous batching): keeps rows `keep` of the cache and of the cross
    /// K/V, in that order. With no row left the cache starts again from length 0.
    pub fn retain(&mut self, io: Option<&mut DeviceIo>, keep: &[usize]) -> Result<(), EngineError> {
        let present = self
            .present
            .take()
            .ok_or_else(|| EngineError::Params("retain before a step".into()))?;
        if keep.is_empty() {
            self.past = Vec::new();
            self.cross_rows = Vec::new();
            self.past_len = 0;
            self.rows = 0;
            return Ok(());
        }
        let identity = keep.len() == self.rows && keep.iter().enumerate().all(|(i, &p)| i == p);
        if identity {
            self.past = present;
        } else {
            match io {
                Some(io) => {
                    self.past = io.select_rows(&present, keep)?;
                    self.cross_rows = io.select_rows(&self.cross_rows, keep)?;
                }
                None => {
                    self.past = host_select(&present, 0, keep)?;
                    self.cross_rows = host_select(&self.cross_rows, 0, keep)?;
                }
            }
        }
        self.rows = keep.len();
        Ok(())
    }

    /// Drops the first `k` cache positions of every row (positions every row's mask hides).
    pub fn drop_positions(
        &mut self,
        io: Option<&mut DeviceIo>,
        k: usize,
    ) -> Result<(), EngineError> {
        if k == 0 || self.rows == 0 {
            return Ok(());
        }
        let keep: Vec<usize> = (k..self.past_len).collect();
        self.past = match io {
            Some(io) => io.select_positions(&self.past, &keep)?,
            None => host_select(&self.past, 2, &keep)?,
        };
        self.past_len -= k;
        Ok(())
    }

    fn select_images(
        &self,
        io: Option<&mut DeviceIo>,
        image_rows: &[usize],
    ) -> Result<Vec<DynValue>, EngineError> {
        match (&self.images, io) {
            (ImageKv::Host(arrays), _) => arrays
                .iter()
                .map(|a| Ok(Tensor::from_array(a.select(Axis(0), image_rows))?.into_dyn()))
                .collect(),
            (ImageKv::Device(values), Some(io)) => io.select_rows(values, image_rows),
            (ImageKv::Device(_), None) => Err(EngineError::Graph(
                "device-resident decoding state without a device IO".into(),
            )),
        }
    }

    /// One decoder step for `input_ids` `[R, T]`: returns the last position's logits `[R, V]`
    /// and keeps the new cache for [`DecodeState::reorder`].
    pub fn step(
        &mut self,
        decoder: &mut Session,
        io: Option<&DeviceIo>,
        names: &DecoderNames,
        input_ids: Array2<i64>,
    ) -> Result<Array2<f32>, EngineError> {
        let (rows, t) = input_ids.dim();
        let past_len = self.past_len;
        let position_ids = Array2::from_shape_fn((rows, t), |(_, j)| (past_len + j) as i64);
        let mask = Array2::<i64>::ones((rows, past_len + t));
        self.step_masked(decoder, io, names, input_ids, position_ids, mask)
    }

    /// One decoder step with each row's own positions and mask `[R, cache + T]` (0 = a cache
    /// position the row must not see): continuous batching, where rows joined at different
    /// steps.
    pub fn step_masked(
        &mut self,
        decoder: &mut Session,
        io: Option<&DeviceIo>,
        names: &DecoderNames,
        input_ids: Array2<i64>,
        position_ids: Array2<i64>,
        mask: Array2<i64>,
    ) -> Result<Array2<f32>, EngineError> {
        let (rows, t) = input_ids.dim();
        if rows != self.rows || mask.dim() != (rows, self.past_len + t) {
            return Err(EngineError::Params(format!(
                "{rows} input rows and a {:?} mask for a state of {} rows and {} positions",
                mask.dim(),
                self.rows,
                self.past_len
            )));
        }
        let ids = Tensor::from_array(input_ids)?.into_dyn();
        let position_ids = Tensor::from_array(position_ids)?.into_dyn();
        let mask = Tensor::from_array(mask)?.into_dyn();
        let (logits, present) = match io {
            Some(io) => {
                let mut inputs: Vec<(&str, &DynValue)> = vec![
                    ("input_ids", &ids),
                    ("position_ids", &position_ids),
                    ("attention_mask", &mask),
                ];
                inputs.extend(names.past.iter().map(String::as_str).zip(&self.past));
                inputs.extend(names.cross.iter().map(String::as_str).zip(&self.cross_rows));
                let mut outputs = vec![("logits", Place::Host)];
                outputs.extend(names.present.iter().map(|n| (n.as_str(), Place::Device)));
                let mut values = io.run(decoder, &inputs, &outputs)?.into_iter();
                let logits = values
                    .next()
                    .ok_or_else(|| EngineError::Graph("decoder: no logits".into()))?;
                (extract_logits(&logits)?, values.collect::<Vec<_>>())
            }
            None => {
                let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
                    ("input_ids".into(), (&ids).into()),
                    ("position_ids".into(), (&position_ids).into()),
                    ("attention_mask".into(), (&mask).into()),
                ];
                for (name, v) in names.past.iter().zip(&self.past) {
                    inputs.push((name.clone(), v.into()));
                }
                for (name, v) in names.cross.iter().zip(&self.cross_rows) {
                    inputs.push((name.clone(), v.into()));
                }
                let mut outputs = decoder.run(inputs)?;
                let logits = outputs
                    .remove("logits")
                    .ok_or_else(|| EngineError::Graph("decoder: no logits".into()))?;
                let logits = extract_logits(&logits)?;
                let mut present = Vec::with_capacity(names.present.len());
                for name in &names.present {
                    present.push(
                        outputs
                            .remove(name.as_str())
                            .ok_or_else(|| EngineError::Graph(format!("decoder: no {name}")))?,
                    );
                }
                (logits, present)
            }
        };
        self.past_len += t;
        self.present = Some(present);
        Ok(logits)
    }

    /// After a step: the next batch's row `i` continues row `parents[i]` of the last step and
    /// looks at image `image_rows[i]`. When every row goes on in order, the cache is taken as
    /// it is (no copy).
    pub fn reorder(
        &mut self,
        mut io: Option<&mut DeviceIo>,
        parents: &[usize],
        image_rows: &[usize],
    ) -> Result<(), EngineError> {
        let present = self
            .present
            .take()
            .ok_or_else(|| EngineError::Params("reorder before a step".into()))?;
        let identity =
            parents.len() == self.rows && parents.iter().enumerate().all(|(i, &p)| i == p);
        if identity {
            self.past = present;
        } else {
            self.past = match io.as_deref_mut() {
                Some(io) => io.select_rows(&present, parents)?,
                None => present
                    .iter()
                    .map(|v| {
                        let a = v.try_extract_array::<f32>()?;
                        Ok(Tensor::from_array(a.select(Axis(0), parents))?.into_dyn())
                    })
                    .collect::<Result<Vec<_>, EngineError>>()?,
            };
            self.cross_rows = self.select_images(io, image_rows)?;
        }
        self.rows = parents.len();
        Ok(())
    }
}

fn extract_logits(value: &DynValue) -> Result<Array2<f32>, EngineError> {
    value
        .try_extract_array::<f32>()?
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| EngineError::Graph(format!("decoder logits: {e}")))
        .map(|a| a.to_owned())
}
