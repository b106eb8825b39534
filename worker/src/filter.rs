//! The filter: BLIP's image-text matching head run as two ONNX graphs. `vision` maps pixels to
//! image embeddings once per image; `itm` scores (image, text) pairs: the softmax probability
//! of "match" from the ITM head and the ITC cosine similarity. Pairs are batched across images.
//! By default the image embeddings stay on the execution device (IoBinding) and each ITM
//! batch's rows are gathered there; only token ids go up and two numbers per pair come down.

use ndarray::{Array2, Array3, ArrayView4, Axis};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef, ValueType};

use crate::bundle::Bundle;
use crate::captioner::{check_io, load_graph, pick_precision};
use crate::device_io::{DeviceIo, Place};
use crate::engine_error::EngineError;
use crate::runtime::{OrtRuntime, SessionOptions};
use crate::text::BlipTokenizer;
use capfilt_schemas::bundle::{BundleKind, Precision, Preprocessing};

/// The filter's verdict on one (image, text) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScore {
    /// Softmax probability of "match" from the ITM head.
    pub itm_prob: f32,
    /// Cosine similarity of the ITC image and text embeddings.
    pub itc_sim: f32,
}

/// Image embeddings `[B, patches + 1, D]` from [`Filter::image_embeds`].
pub enum ImageEmbeds {
    /// On the host (reference path).
    Host(Array3<f32>),
    /// On the execution device, with its batch size.
    Device(DynValue, usize),
}

impl ImageEmbeds {
    /// Images embedded.
    pub fn len(&self) -> usize {
        match self {
            ImageEmbeds::Host(a) => a.shape()[0],
            ImageEmbeds::Device(_, n) => *n,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded filter bundle.
pub struct Filter {
    vision: Session,
    itm: Session,
    io: Option<DeviceIo>,
    precision: Precision,
    tokenizer: BlipTokenizer,
    max_length: usize,
    preprocessing: Preprocessing,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Loads the filter graphs and tokenizer of a verified `bundle`.
    pub fn load(
        rt: &OrtRuntime,
        bundle: &Bundle,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        bundle.expect_kind(BundleKind::Filter)?;
        let precision = pick_precision(bundle, options)?;
        let vision = load_graph(rt, bundle, "vision", precision, options)?;
        let itm = load_graph(rt, bundle, "itm", precision, options)?;
        check_io(
            &vision,
            "vision",
            &["pixel_values".into()],
            &["image_embeds".into()],
        )?;
        check_io(
            &itm,
            "itm",
            &[
                "image_embeds".into(),
                "input_ids".into(),
                "attention_mask".into(),
            ],
            &["itm_logits".into(), "itc_sim".into()],
        )?;
        let io = if options.host_decoding {
            None
        } else {
            Some(DeviceIo::new(rt, options, 1, 3)?)
        };
        Ok(Self {
            vision,
            itm,
            io,
            precision,
            tokenizer: bundle.tokenizer()?,
            max_length: bundle.manifest.tokenizer.max_length as usize,
            preprocessing: bundle.manifest.preprocessing.clone(),
        })
    }

    /// How images must be preprocessed for this filter.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Precision of the graphs loaded.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Image embeddings `[B, patches + 1, D]` of preprocessed images `[B, 3, S, S]`, on the
    /// device when the filter keeps them there.
    pub fn image_embeds(
        &mut self,
        pixels: ArrayView4<'_, f32>,
    ) -> Result<ImageEmbeds, EngineError> {
        let batch = pixels.shape()[0];
        if let Some(io) = &self.io {
            let pixels = DeviceIo::host_value(pixels.to_owned())?;
            let mut values = io.run(
                &mut self.vision,
                &[("pixel_values", &pixels)],
                &[("image_embeds", Place::Device)],
            )?;
            let value = values
                .pop()
                .ok_or_else(|| EngineError::Graph("vision: no image_embeds".into()))?;
            match value.dtype() {
                ValueType::Tensor { shape, .. } if shape.len() == 3 => {}
                other => {
                    return Err(EngineError::Graph(format!(
                        "image_embeds: expected a 3-d tensor, got {other:?}"
                    )));
                }
            }
            return Ok(ImageEmbeds::Device(value, batch));
        }
        let outputs = self
            .vision
            .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(pixels)?])?;
        let emb = outputs["image_embeds"].try_extract_array::<f32>()?;
        emb.into_dimensionality::<ndarray::Ix3>()
            .map(|a| ImageEmbeds::Host(a.to_owned()))
            .map_err(|e| EngineError::Graph(format!("image_embeds: {e}")))
    }

    /// Scores `pairs` of (image index into `embeds`, text), `batch` pairs per ITM run.
    pub fn score(
        &mut self,
        embeds: &ImageEmbeds,
        pairs: &[(usize, &str)],
        batch: usize,
    ) -> Result<Vec<PairScore>, EngineError> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch.max(1)) {
            let rows: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            if let Some(&bad) = rows.iter().find(|&&i| i >= embeds.len()) {
                return Err(EngineError::Params(format!(
                    "pair refers to image {bad} of {}",
                    embeds.len()
                )));
            }
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            let (ids, mask, width) = self.tokenizer.encode_batch(&texts, self.max_length)?;
            let ids = Array2::from_shape_vec((chunk.len(), width), ids)
                .map_err(|e| EngineError::Params(e.to_string()))?;
            let mask = Array2::from_shape_vec((chunk.len(), width), mask)
                .map_err(|e| EngineError::Params(e.to_string()))?;
            let ids = Tensor::from_array(ids)?.into_dyn();
            let mask = Tensor::from_array(mask)?.into_dyn();
            let (logits, sims) = match (embeds, self.io.as_mut()) {
                (ImageEmbeds::Device(value, _), Some(io)) => {
                    let images = io
                        .select_rows(std::slice::from_ref(value), &rows)?
                        .pop()
                        .ok_or_else(|| EngineError::Graph("row gather gave nothing".into()))?;
                    let mut values = io
                        .run(
                            &mut self.itm,
                            &[
                                ("image_embeds", &images),
                                ("input_ids", &ids),
                                ("attention_mask", &mask),
                            ],
                            &[("itm_logits", Place::Host), ("itc_sim", Place::Host)],
                        )?
                        .into_iter();
                    let (Some(l), Some(s)) = (values.next(), values.next()) else {
                        return Err(EngineError::Graph("itm: missing outputs".into()));
                    };
                    (
                        l.try_extract_array::<f32>()?.to_owned(),
                        s.try_extract_array::<f32>()?.to_owned(),
                    )
                }
                (ImageEmbeds::Host(embeds), _) => {
                    let images = Tensor::from_array(embeds.select(Axis(0), &rows))?.into_dyn();
                    let outputs = self.itm.run(ort::inputs![
                        "image_embeds" => &images,
                        "input_ids" => &ids,
                        "attention_mask" => &mask,
                    ])?;
                    (
                        outputs["itm_logits"].try_extract_array::<f32>()?.to_owned(),
                        outputs["itc_sim"].try_extract_array::<f32>()?.to_owned(),
                    )
                }
                (ImageEmbeds::Device(..), None) => {
                    return Err(EngineError::Params(
                        "device image embeddings given to a filter without a device IO".into(),
                    ));
                }
            };
            for i in 0..chunk.len() {
                let (a, b) = (logits[[i, 0]], logits[[i, 1]]);
                // softmax([a, b])[1], stable.
                let itm_prob = 1.0 / (1.0 + (a - b).exp());
                out.push(PairScore {
                    itm_prob,
                    itc_sim: sims[[i]],
                });
            }
        }
        Ok(out)
    }
}
