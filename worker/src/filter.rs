//! The filter: BLIP's image-text matching head run as two ONNX graphs. `vision` maps pixels to
//! image embeddings once per image; `itm` scores (image, text) pairs: the softmax probability
//! of "match" from the ITM head and the ITC cosine similarity. Pairs are batched across images.

use ndarray::{Array2, Array3, ArrayView4, Axis};
use ort::session::Session;
use ort::value::{Tensor, TensorRef};

use crate::bundle::Bundle;
use crate::captioner::{check_io, load_graph};
use crate::engine_error::EngineError;
use crate::runtime::{OrtRuntime, SessionOptions};
use crate::text::BlipTokenizer;
use capfilt_schemas::bundle::{BundleKind, Preprocessing};

/// The filter's verdict on one (image, text) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairScore {
    /// Softmax probability of "match" from the ITM head.
    pub itm_prob: f32,
    /// Cosine similarity of the ITC image and text embeddings.
    pub itc_sim: f32,
}

/// A loaded filter bundle.
pub struct Filter {
    vision: Session,
    itm: Session,
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
        let vision = load_graph(rt, bundle, "vision", options)?;
        let itm = load_graph(rt, bundle, "itm", options)?;
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
        Ok(Self {
            vision,
            itm,
            tokenizer: bundle.tokenizer()?,
            max_length: bundle.manifest.tokenizer.max_length as usize,
            preprocessing: bundle.manifest.preprocessing.clone(),
        })
    }

    /// How images must be preprocessed for this filter.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Image embeddings `[B, patches + 1, D]` of preprocessed images `[B, 3, S, S]`.
    pub fn image_embeds(
        &mut self,
        pixels: ArrayView4<'_, f32>,
    ) -> Result<Array3<f32>, EngineError> {
        let outputs = self
            .vision
            .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(pixels)?])?;
        let emb = outputs["image_embeds"].try_extract_array::<f32>()?;
        emb.into_dimensionality::<ndarray::Ix3>()
            .map(|a| a.to_owned())
            .map_err(|e| EngineError::Graph(format!("image_embeds: {e}")))
    }

    /// Scores `pairs` of (image index into `embeds`, text), `batch` pairs per ITM run.
    pub fn score(
        &mut self,
        embeds: &Array3<f32>,
        pairs: &[(usize, &str)],
        batch: usize,
    ) -> Result<Vec<PairScore>, EngineError> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch.max(1)) {
            let rows: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            if let Some(&bad) = rows.iter().find(|&&i| i >= embeds.shape()[0]) {
                return Err(EngineError::Params(format!(
                    "pair refers to image {bad} of {}",
                    embeds.shape()[0]
                )));
            }
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| *t).collect();
            let (ids, mask, width) = self.tokenizer.encode_batch(&texts, self.max_length)?;
            let ids = Array2::from_shape_vec((chunk.len(), width), ids)
                .map_err(|e| EngineError::Params(e.to_string()))?;
            let mask = Array2::from_shape_vec((chunk.len(), width), mask)
                .map_err(|e| EngineError::Params(e.to_string()))?;
            let images = embeds.select(Axis(0), &rows);
            let outputs = self.itm.run(ort::inputs![
                "image_embeds" => Tensor::from_array(images)?,
                "input_ids" => Tensor::from_array(ids)?,
                "attention_mask" => Tensor::from_array(mask)?,
            ])?;
            let logits = outputs["itm_logits"].try_extract_array::<f32>()?;
            let sims = outputs["itc_sim"].try_extract_array::<f32>()?;
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
