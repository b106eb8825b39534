//! The captioner: a BLIP image-grounded text decoder run as two ONNX graphs. `vision` maps
//! pixels to image embeddings and every decoder layer's cross-attention keys and values, once
//! per image; `decoder` runs one step with a self-attention KV cache. Generation is batched:
//! each row is one (image, candidate) sequence with its own RNG, the KV cache is carried from
//! step to step, and rows that finish leave the batch (their cache rows are dropped) so no step
//! is spent on them. By default the cross K/V and the cache stay on the execution device
//! between steps (`decode_state`, IoBinding); only token ids go up and logits come down.

use std::collections::HashMap;

use ndarray::{Array2, Array4, ArrayView4};
use ort::session::Session;
use ort::value::TensorRef;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bundle::Bundle;
use crate::decode_state::{DecodeState, DecoderNames, ImageKv};
use crate::device_io::{DeviceIo, Place};
use crate::engine_error::EngineError;
use crate::runtime::{OrtRuntime, SessionOptions};
use crate::sampling::{self, Decoding, GenerationParams};
use crate::text::BlipTokenizer;
use capfilt_schemas::bundle::{BundleKind, Precision, Preprocessing};

/// One synthetic caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    /// The caption, prompt and special tokens removed.
    pub text: String,
    /// Generated token ids, `[DEC]` and prompt included, `[SEP]` included when it ended.
    pub ids: Vec<u32>,
    /// Candidate index within its image.
    pub candidate: u32,
    /// Sampling seed (nucleus sampling only).
    pub seed: Option<u64>,
    /// Sum of token log-probabilities (beam search) divided by length^length_penalty.
    pub score: Option<f32>,
}

/// What a caption request needs per image: its key (for the seeds) and the round.
#[derive(Debug, Clone, Copy)]
pub struct SeedBase<'a> {
    /// Input row key.
    pub key: &'a str,
    /// Bootstrap round.
    pub round: u32,
}

/// A loaded captioner bundle.
pub struct Captioner {
    vision: Session,
    decoder: Session,
    io: Option<DeviceIo>,
    names: DecoderNames,
    precision: Precision,
    tokenizer: BlipTokenizer,
    prompt: String,
    prompt_ids: Vec<u32>,
    layers: usize,
    sep: u32,
    defaults: GenerationParams,
    preprocessing: Preprocessing,
    /// Decoder steps run (one per batched forward pass), for throughput figures and tests.
    pub steps_run: u64,
    /// Rows processed over all decoder steps.
    pub rows_stepped: u64,
}

impl std::fmt::Debug for Captioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captioner")
            .field("layers", &self.layers)
            .field("prompt", &self.prompt)
            .finish_non_exhaustive()
    }
}

fn kv_names(prefix: &str, layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|l| [format!("{prefix}_k_{l}"), format!("{prefix}_v_{l}")])
        .collect()
}

pub(crate) fn check_io(
    session: &Session,
    graph: &str,
    inputs: &[String],
    outputs: &[String],
) -> Result<(), EngineError> {
    let have_in: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let have_out: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for want in inputs {
        if !have_in.contains(&want.as_str()) {
            return Err(EngineError::Graph(format!(
                "{graph}: no input '{want}' (has {have_in:?})"
            )));
        }
    }
    for want in outputs {
        if !have_out.contains(&want.as_str()) {
            return Err(EngineError::Graph(format!(
                "{graph}: no output '{want}' (has {have_out:?})"
            )));
        }
    }
    Ok(())
}

/// The precision of `bundle`'s graphs that `options` pick on their device.
pub(crate) fn pick_precision(
    bundle: &Bundle,
    options: &SessionOptions,
) -> Result<Precision, EngineError> {
    if let Some(why) = options.precision.refused_on(options.device) {
        return Err(EngineError::Params(why));
    }
    let available = bundle.precisions();
    options
        .precision
        .pick(options.device, &available)
        .ok_or_else(|| {
            EngineError::Params(format!(
                "bundle {} has no {} graphs (it has {}); export it with `python -m capfilt_trainer export --precision fp32,{}` or choose --precision auto",
                bundle.source,
                options.precision,
                options.precision,
                available
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

pub(crate) fn load_graph(
    rt: &OrtRuntime,
    bundle: &Bundle,
    name: &str,
    precision: Precision,
    options: &SessionOptions,
) -> Result<Session, EngineError> {
    let path = bundle.graph_path(name, precision).ok_or_else(|| {
        EngineError::Graph(format!(
            "bundle {} has no {precision} '{name}' graph",
            bundle.source
        ))
    })?;
    Ok(rt.session(&path, options)?)
}

/// An image offered to continuous captioning.
#[derive(Debug, Clone)]
pub struct FeedImage {
    /// The caller's id for it, given back with its captions.
    pub id: u64,
    /// `[3, S, S]` pixels.
    pub pixels: Vec<f32>,
    /// Row key (part of each sampling seed).
    pub key: String,
    /// Bootstrap round (part of each sampling seed).
    pub round: u32,
}

/// Where continuous captioning takes its images from and gives their captions to.
pub trait CaptionFeed {
    /// Up to `max` more images. With `wait` (no row is being decoded) it may block until one
    /// comes; an empty answer then ends the captioning.
    fn more(&mut self, max: usize, wait: bool) -> Result<Vec<FeedImage>, EngineError>;
    /// Every caption of image `id`, by candidate.
    fn finished(&mut self, id: u64, captions: Vec<Caption>) -> Result<(), EngineError>;
}

/// A row of continuous decoding: one (image, candidate) sequence that joined the batch when its
/// cache was `pad` positions long (those positions are hidden from it).
struct LiveRow {
    image: u64,
    candidate: u32,
    seed: Option<u64>,
    rng: ChaCha8Rng,
    ids: Vec<u32>,
    /// Tokens of this row in the cache (the prompt is fed one token per step).
    fed: usize,
    pad: usize,
}

/// Compact the cache once every row hides at least this many leading positions.
const COMPACT_AFTER: usize = 8;

/// A sequence being sampled (greedy or nucleus).
struct Row {
    image: usize,
    candidate: u32,
    seed: Option<u64>,
    rng: ChaCha8Rng,
    ids: Vec<u32>,
}

/// One live beam.
#[derive(Clone)]
struct Beam {
    ids: Vec<u32>,
    logprob: f32,
}

struct BeamImage {
    image: usize,
    beams: Vec<Beam>,
    finished: Vec<(f32, Vec<u32>)>,
    done: bool,
}

impl Captioner {
    /// Loads the captioner graphs and tokenizer of a verified `bundle`.
    pub fn load(
        rt: &OrtRuntime,
        bundle: &Bundle,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        bundle.expect_kind(BundleKind::Captioner)?;
        let m = &bundle.manifest;
        let layers = m.architecture.text_layers as usize;
        let precision = pick_precision(bundle, options)?;
        let vision = load_graph(rt, bundle, "vision", precision, options)?;
        let decoder = load_graph(rt, bundle, "decoder", precision, options)?;
        let mut vision_out = vec!["image_embeds".to_string()];
        vision_out.extend(kv_names("cross", layers));
        check_io(&vision, "vision", &["pixel_values".into()], &vision_out)?;
        let mut dec_in: Vec<String> = ["input_ids", "position_ids", "attention_mask"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        dec_in.extend(kv_names("past", layers));
        dec_in.extend(kv_names("cross", layers));
        let mut dec_out = vec!["logits".to_string()];
        dec_out.extend(kv_names("present", layers));
        check_io(&decoder, "decoder", &dec_in, &dec_out)?;
        let tokenizer = bundle.tokenizer()?;
        let sp = &m.tokenizer.special_tokens;
        let dec = sp
            .dec
            .as_ref()
            .ok_or_else(|| EngineError::Graph("captioner bundle without [DEC]".into()))?
            .id;
        let prompt = m.prompt.clone().unwrap_or_default();
        let prompt_ids = tokenizer.prompt_ids(&prompt, dec)?;
        let defaults = m
            .generation
            .as_ref()
            .map(GenerationParams::from_bundle)
            .unwrap_or_default();
        let io = if options.host_decoding {
            None
        } else {
            Some(DeviceIo::for_decoding(rt, options, 2 * layers)?)
        };
        Ok(Self {
            vision,
            decoder,
            io,
            names: DecoderNames::new(layers),
            precision,
            tokenizer,
            prompt,
            prompt_ids,
            layers,
            sep: sp.sep.id,
            defaults,
            preprocessing: m.preprocessing.clone(),
            steps_run: 0,
            rows_stepped: 0,
        })
    }

    /// The bundle's generation defaults.
    pub fn defaults(&self) -> &GenerationParams {
        &self.defaults
    }

    /// Precision of the graphs loaded.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the decoding state stays on the device between steps (IoBinding).
    pub fn device_resident(&self) -> bool {
        self.io.is_some()
    }

    /// How images must be preprocessed for this captioner.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// `[DEC]` + prompt ids that every caption starts from.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Runs the vision graph: each layer's cross-attention K and V, `[B, heads, patches, d]`,
    /// kept on the device when decoding is device-resident.
    fn cross_kv(&mut self, pixels: ArrayView4<'_, f32>) -> Result<ImageKv, EngineError> {
        if let Some(io) = &self.io {
            let pixels = DeviceIo::host_value(pixels.to_owned())?;
            let outputs: Vec<(&str, Place)> = self
                .names
                .cross
                .iter()
                .map(|n| (n.as_str(), Place::Device))
                .collect();
            let values = io.run(&mut self.vision, &[("pixel_values", &pixels)], &outputs)?;
            return Ok(ImageKv::Device(values));
        }
        let mut outputs = self
            .vision
            .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(pixels)?])?;
        let mut out = Vec::with_capacity(2 * self.layers);
        for name in &self.names.cross {
            let value = outputs
                .remove(name.as_str())
                .ok_or_else(|| EngineError::Graph(format!("vision: no output {name}")))?;
            out.push(value.try_extract_array::<f32>()?.to_owned());
        }
        Ok(ImageKv::Host(out))
    }

    /// Continuous batching (greedy or nucleus): keeps up to `max_rows` rows (image, candidate)
    /// decoding; whenever rows finish, images from `feed` take their places in the batch
    /// instead of the batch shrinking, as text-generation servers do. A row that joins later
    /// sees only its own cache positions (its mask hides the others) and is fed its prompt one
    /// token per step; every row keeps its own sampling seed, so a caption does not depend on
    /// when its image joined beyond float rounding. Returns when `feed` has no more images and
    /// every row has finished.
    pub fn caption_continuous(
        &mut self,
        feed: &mut dyn CaptionFeed,
        params: &GenerationParams,
        max_rows: usize,
    ) -> Result<(), EngineError> {
        params.validate().map_err(EngineError::Params)?;
        if params.decoding == Decoding::Beam {
            return Err(EngineError::Params(
                "continuous batching runs greedy or nucleus decoding, not beam search".into(),
            ));
        }
        let per_image = params.captions_per_image();
        let max_rows = max_rows.max(per_image);
        let prompt = self.prompt_ids.clone();
        let mut state = DecodeState::continuous(2 * self.layers);
        let mut rows: Vec<LiveRow> = Vec::new();
        let mut pending: HashMap<u64, Vec<Caption>> = HashMap::new();
        loop {
            let room = max_rows.saturating_sub(rows.len()) / per_image;
            if room > 0 {
                let new = feed.more(room, rows.is_empty())?;
                if new.is_empty() && rows.is_empty() {
                    return Ok(());
                }
                if !new.is_empty() {
                    self.admit(&mut state, &mut rows, &mut pending, new, params, feed)?;
                }
            }
            if rows.is_empty() {
                continue;
            }
            let len = state.cache_len();
            let n = rows.len();
            let ids = Array2::from_shape_fn((n, 1), |(i, _)| {
                let r = &rows[i];
                let token = if r.fed < prompt.len() {
                    prompt[r.fed]
                } else {
                    r.ids.last().copied().unwrap_or(self.sep)
                };
                i64::from(token)
            });
            let positions = Array2::from_shape_fn((n, 1), |(i, _)| rows[i].fed as i64);
            let mask = Array2::from_shape_fn((n, len + 1), |(i, j)| i64::from(j >= rows[i].pad));
            let mut logits = state.step_masked(
                &mut self.decoder,
                self.io.as_ref(),
                &self.names,
                ids,
                positions,
                mask,
            )?;
            self.steps_run += 1;
            self.rows_stepped += n as u64;
            let mut keep = Vec::with_capacity(n);
            let mut done = Vec::new();
            for (i, row) in rows.iter_mut().enumerate() {
                row.fed += 1;
                if row.fed < prompt.len() {
                    keep.push(i);
                    continue;
                }
                let mut scores = logits.row_mut(i);
                let scores = scores
                    .as_slice_mut()
                    .ok_or_else(|| EngineError::Graph("non-contiguous logits".into()))?;
                sampling::apply_repetition_penalty(scores, &row.ids, params.repetition_penalty);
                sampling::apply_min_length(scores, row.ids.len(), params.min_length, self.sep);
                let token = if params.decoding == Decoding::Greedy {
                    sampling::argmax(scores)
                } else {
                    sampling::sample(scores, params.temperature, params.top_p, &mut row.rng)
                };
                row.ids.push(token);
                if token == self.sep || row.ids.len() >= params.max_length {
                    done.push(i);
                } else {
                    keep.push(i);
                }
            }
            state.retain(self.io.as_mut(), &keep)?;
            let mut old: Vec<Option<LiveRow>> = rows.drain(..).map(Some).collect();
            for &i in &done {
                let row = old[i]
                    .take()
                    .ok_or_else(|| EngineError::Graph("a finished row twice".into()))?;
                self.row_finished(row, per_image, &mut pending, feed)?;
            }
            for &i in &keep {
                rows.push(
                    old[i]
                        .take()
                        .ok_or_else(|| EngineError::Graph("a kept row twice".into()))?,
                );
            }
            let hidden = rows.iter().map(|r| r.pad).min().unwrap_or(0);
            if hidden >= COMPACT_AFTER {
                state.drop_positions(self.io.as_mut(), hidden)?;
                for r in &mut rows {
                    r.pad -= hidden;
                }
            }
        }
    }

    /// Runs the vision graph on `new` images and adds their rows to the batch.
    fn admit(
        &mut self,
        state: &mut DecodeState,
        rows: &mut Vec<LiveRow>,
        pending: &mut HashMap<u64, Vec<Caption>>,
        new: Vec<FeedImage>,
        params: &GenerationParams,
        feed: &mut dyn CaptionFeed,
    ) -> Result<(), EngineError> {
        let per_image = params.captions_per_image();
        let greedy = params.decoding == Decoding::Greedy;
        let seed_of = |img: &FeedImage, c: u32| {
            (!greedy).then(|| sampling::sample_seed(&img.key, img.round, c))
        };
        if self.prompt_ids.len() >= params.max_length {
            // A prompt as long as max_length generates nothing (as in `generate`).
            for img in new {
                let mut caps = Vec::with_capacity(per_image);
                for c in 0..per_image as u32 {
                    caps.push(Caption {
                        text: self
                            .tokenizer
                            .decode_caption(&self.prompt_ids, &self.prompt)?,
                        ids: self.prompt_ids.clone(),
                        candidate: c,
                        seed: seed_of(&img, c),
                        score: None,
                    });
                }
                feed.finished(img.id, caps)?;
            }
            return Ok(());
        }
        let size = self.preprocessing.image_size as usize;
        let bufs: Vec<&[f32]> = new.iter().map(|i| i.pixels.as_slice()).collect();
        let pixels = stack_pixels(&bufs, size)?;
        let image_rows: Vec<usize> = (0..new.len())
            .flat_map(|i| std::iter::repeat_n(i, per_image))
            .collect();
        let cross = match self.cross_kv(pixels.view())? {
            ImageKv::Device(values) => {
                let io = self.io.as_mut().ok_or_else(|| {
                    EngineError::Graph("device values without a device IO".into())
                })?;
                io.select_rows(&values, &image_rows)?
            }
            ImageKv::Host(arrays) => arrays
                .iter()
                .map(|a| {
                    Ok(
                        ort::value::Tensor::from_array(a.select(ndarray::Axis(0), &image_rows))?
                            .into_dyn(),
                    )
                })
                .collect::<Result<Vec<_>, EngineError>>()?,
        };
        let pad = state.cache_len();
        state.append_rows(self.io.as_mut(), cross, image_rows.len())?;
        for img in &new {
            for c in 0..per_image as u32 {
                let seed = seed_of(img, c);
                rows.push(LiveRow {
                    image: img.id,
                    candidate: c,
                    seed,
                    rng: ChaCha8Rng::seed_from_u64(seed.unwrap_or(0)),
                    ids: self.prompt_ids.clone(),
                    fed: 0,
                    pad,
                });
            }
            pending.insert(img.id, Vec::with_capacity(per_image));
        }
        Ok(())
    }

    fn row_finished(
        &self,
        row: LiveRow,
        per_image: usize,
        pending: &mut HashMap<u64, Vec<Caption>>,
        feed: &mut dyn CaptionFeed,
    ) -> Result<(), EngineError> {
        let caption = Caption {
            text: self.tokenizer.decode_caption(&row.ids, &self.prompt)?,
            ids: row.ids,
            candidate: row.candidate,
            seed: row.seed,
            score: None,
        };
        let caps = pending
            .get_mut(&row.image)
            .ok_or_else(|| EngineError::Graph(format!("row of unknown image {}", row.image)))?;
        caps.push(caption);
        if caps.len() == per_image {
            let mut caps = pending.remove(&row.image).unwrap_or_default();
            caps.sort_by_key(|c| c.candidate);
            feed.finished(row.image, caps)?;
        }
        Ok(())
    }

    /// Generates captions for a batch of preprocessed images (`[B, 3, S, S]`), one list per
    /// image with `params.captions_per_image()` captions (fewer only if beam search finds fewer
    /// distinct hypotheses).
    pub fn generate(
        &mut self,
        pixels: ArrayView4<'_, f32>,
        seeds: &[SeedBase<'_>],
        params: &GenerationParams,
    ) -> Result<Vec<Vec<Caption>>, EngineError> {
        params.validate().map_err(EngineError::Params)?;
        let batch = pixels.shape()[0];
        if seeds.len() != batch {
            return Err(EngineError::Params(format!(
                "{} seed bases for {batch} images",
                seeds.len()
            )));
        }
        if batch == 0 {
            return Ok(Vec::new());
        }
        let cross = self.cross_kv(pixels)?;
        match params.decoding {
            Decoding::Greedy | Decoding::Nucleus => self.sample_loop(cross, seeds, params),
            Decoding::Beam => self.beam_loop(cross, batch, params),
        }
    }

    /// One decoder step; counts it.
    fn step(
        &mut self,
        state: &mut DecodeState,
        input_ids: Array2<i64>,
    ) -> Result<Array2<f32>, EngineError> {
        let rows = input_ids.dim().0;
        let logits = state.step(&mut self.decoder, self.io.as_ref(), &self.names, input_ids)?;
        self.steps_run += 1;
        self.rows_stepped += rows as u64;
        Ok(logits)
    }

    fn sample_loop(
        &mut self,
        cross: ImageKv,
        seeds: &[SeedBase<'_>],
        params: &GenerationParams,
    ) -> Result<Vec<Vec<Caption>>, EngineError> {
        let per_image = params.captions_per_image();
        let greedy = params.decoding == Decoding::Greedy;
        let mut rows: Vec<Row> = Vec::with_capacity(seeds.len() * per_image);
        for (image, base) in seeds.iter().enumerate() {
            for c in 0..per_image as u32 {
                let seed = (!greedy).then(|| sampling::sample_seed(base.key, base.round, c));
                rows.push(Row {
                    image,
                    candidate: c,
                    seed,
                    rng: ChaCha8Rng::seed_from_u64(seed.unwrap_or(0)),
                    ids: self.prompt_ids.clone(),
                });
            }
        }
        let mut finished: Vec<Option<Vec<u32>>> = vec![None; rows.len()];
        let mut active: Vec<usize> = (0..rows.len()).collect();
        let image_rows: Vec<usize> = rows.iter().map(|r| r.image).collect();
        let mut state = DecodeState::new(cross, &image_rows, self.io.as_mut())?;
        let mut feed: Array2<i64> =
            Array2::from_shape_fn((rows.len(), self.prompt_ids.len()), |(_, j)| {
                i64::from(self.prompt_ids[j])
            });
        // A prompt as long as max_length generates nothing.
        if self.prompt_ids.len() >= params.max_length {
            active.clear();
        }
        while !active.is_empty() {
            let mut logits = self.step(&mut state, feed)?;
            let mut next = Vec::with_capacity(active.len());
            let mut keep = Vec::with_capacity(active.len());
            for (i, &r) in active.iter().enumerate() {
                let row = &mut rows[r];
                let mut scores = logits.row_mut(i);
                let scores = scores
                    .as_slice_mut()
                    .ok_or_else(|| EngineError::Graph("non-contiguous logits".into()))?;
                sampling::apply_repetition_penalty(scores, &row.ids, params.repetition_penalty);
                sampling::apply_min_length(scores, row.ids.len(), params.min_length, self.sep);
                let token = if greedy {
                    sampling::argmax(scores)
                } else {
                    sampling::sample(scores, params.temperature, params.top_p, &mut row.rng)
                };
                row.ids.push(token);
                if token == self.sep || row.ids.len() >= params.max_length {
                    finished[r] = Some(row.ids.clone());
                } else {
                    keep.push(i);
                    next.push(i64::from(token));
                }
            }
            if keep.is_empty() {
                break;
            }
            let cross_rows: Vec<usize> = keep.iter().map(|&i| image_rows[active[i]]).collect();
            state.reorder(self.io.as_mut(), &keep, &cross_rows)?;
            active = keep.iter().map(|&i| active[i]).collect();
            feed = Array2::from_shape_vec((next.len(), 1), next)
                .map_err(|e| EngineError::Graph(e.to_string()))?;
        }
        let mut out: Vec<Vec<Caption>> = vec![Vec::with_capacity(per_image); seeds.len()];
        for (r, row) in rows.into_iter().enumerate() {
            let ids = finished[r].take().unwrap_or(row.ids);
            out[row.image].push(Caption {
                text: self.tokenizer.decode_caption(&ids, &self.prompt)?,
                ids,
                candidate: row.candidate,
                seed: row.seed,
                score: None,
            });
        }
        Ok(out)
    }

    fn beam_loop(
        &mut self,
        cross: ImageKv,
        batch: usize,
        params: &GenerationParams,
    ) -> Result<Vec<Vec<Caption>>, EngineError> {
        let nb = params.num_beams;
        let prompt_len = self.prompt_ids.len();
        let lp = params.length_penalty;
        let norm = |logprob: f32, len: usize| {
            logprob / ((len.saturating_sub(prompt_len)).max(1) as f32).powf(lp)
        };
        let mut images: Vec<BeamImage> = (0..batch)
            .map(|image| BeamImage {
                image,
                beams: vec![Beam {
                    ids: self.prompt_ids.clone(),
                    logprob: 0.0,
                }],
                finished: Vec::new(),
                done: prompt_len >= params.max_length,
            })
            .collect();
        // Row r of the batch = (image, beam) in this order.
        let mut layout: Vec<(usize, usize)> = (0..batch).map(|i| (i, 0)).collect();
        let mut state = DecodeState::new(cross, &(0..batch).collect::<Vec<_>>(), self.io.as_mut())?;
        let mut past_len = 0;
        let mut feed =
            Array2::from_shape_fn((batch, prompt_len), |(_, j)| i64::from(self.prompt_ids[j]));
        if images.iter().all(|b| b.done) {
            layout.clear();
        }
        while !layout.is_empty() {
            let t = feed.dim().1;
            let mut logits = self.step(&mut state, feed)?;
            past_len += t;
            let cur_len = past_len + 1;
            // Candidates per image: (score, parent row, token).
            let mut by_image: HashMap<usize, Vec<(f32, usize, u32)>> = HashMap::new();
            for (r, &(img, b)) in layout.iter().enumerate() {
                let beam = &images[img].beams[b];
                let mut scores = logits.row_mut(r);
                let scores = scores
                    .as_slice_mut()
                    .ok_or_else(|| EngineError::Graph("non-contiguous logits".into()))?;
                sampling::log_softmax(scores);
                sampling::apply_repetition_penalty(scores, &beam.ids, params.repetition_penalty);
                sampling::apply_min_length(scores, beam.ids.len(), params.min_length, self.sep);
                let mut top: Vec<(f32, u32)> = scores
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_finite())
                    .map(|(i, &s)| (s + beam.logprob, i as u32))
                    .collect();
                let k = (2 * nb).min(top.len());
                if k == 0 {
                    continue;
                }
                top.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                top.truncate(k);
                let entry = by_image.entry(img).or_default();
                entry.extend(top.into_iter().map(|(s, tok)| (s, r, tok)));
            }
            let mut new_layout = Vec::new();
            let mut parents = Vec::new();
            let mut next_tokens = Vec::new();
            for (img, state) in images.iter_mut().enumerate() {
                if state.done {
                    continue;
                }
                let mut cands = by_image.remove(&img).unwrap_or_default();
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
                cands.truncate(2 * nb);
                let mut beams = Vec::with_capacity(nb);
                for (rank, (score, parent, token)) in cands.into_iter().enumerate() {
                    let (_, pb) = layout[parent];
                    let mut ids = state.beams[pb].ids.clone();
                    ids.push(token);
                    if token == self.sep {
                        // As HF: an end token only counts when ranked among the first num_beams.
                        if rank < nb {
                            state.finished.push((norm(score, ids.len()), ids));
                        }
                        continue;
                    }
                    beams.push((
                        Beam {
                            ids,
                            logprob: score,
                        },
                        parent,
                    ));
                    if beams.len() == nb {
                        break;
                    }
                }
                state.finished.sort_by(|a, b| b.0.total_cmp(&a.0));
                state.finished.truncate(nb);
                let best_live = beams.first().map(|(b, _)| b.logprob);
                let saturated = state.finished.len() >= nb
                    && best_live.is_none_or(|lp_best| {
                        let worst = state.finished.last().map_or(f32::NEG_INFINITY, |f| f.0);
                        norm(lp_best, cur_len) <= worst
                    });
                if cur_len >= params.max_length || beams.is_empty() || saturated {
                    if !saturated {
                        for (b, _) in &beams {
                            state
                                .finished
                                .push((norm(b.logprob, b.ids.len()), b.ids.clone()));
                        }
                        state.finished.sort_by(|a, b| b.0.total_cmp(&a.0));
                        state.finished.truncate(nb);
                    }
                    state.done = true;
                    continue;
                }
                state.beams = Vec::with_capacity(beams.len());
                for (b, (beam, parent)) in beams.into_iter().enumerate() {
                    next_tokens.push(i64::from(*beam.ids.last().unwrap_or(&self.sep)));
                    state.beams.push(beam);
                    new_layout.push((img, b));
                    parents.push(parent);
                }
            }
            if new_layout.is_empty() {
                break;
            }
            let cross_rows: Vec<usize> = new_layout
                .iter()
                .map(|&(img, _)| images[img].image)
                .collect();
            state.reorder(self.io.as_mut(), &parents, &cross_rows)?;
            layout = new_layout;
            feed = Array2::from_shape_vec((next_tokens.len(), 1), next_tokens)
                .map_err(|e| EngineError::Graph(e.to_string()))?;
        }
        let mut out = Vec::with_capacity(batch);
        for state in images {
            let mut caps = Vec::new();
            for (c, (score, ids)) in state
                .finished
                .into_iter()
                .take(params.candidates)
                .enumerate()
            {
                caps.push(Caption {
                    text: self.tokenizer.decode_caption(&ids, &self.prompt)?,
                    ids,
                    candidate: c as u32,
                    seed: None,
                    score: Some(score),
                });
            }
            out.push(caps);
        }
        Ok(out)
    }
}

/// Stacks per-image `[3, S, S]` pixel buffers into `[B, 3, S, S]`.
pub fn stack_pixels(images: &[&[f32]], size: usize) -> Result<Array4<f32>, EngineError> {
    let mut data = Vec::with_capacity(images.len() * 3 * size * size);
    for img in images {
        if img.len() != 3 * size * size {
            return Err(EngineError::Params(format!(
                "pixel buffer of {} values, expected 3x{size}x{size}",
                img.len()
            )));
        }
        data.extend_from_slice(img);
    }
    Array4::from_shape_vec((images.len(), 3, size, size), data)
        .map_err(|e| EngineError::Params(e.to_string()))
}
