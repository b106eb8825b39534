//! The CapFilt step on a batch of preprocessed images (DESIGN.md §3): the captioner writes
//! synthetic captions, the filter scores the web text and every synthetic text of each image,
//! and each text is kept when its ITM probability reaches the threshold.

use std::time::{Duration, Instant};

use capfilt_schemas::bundle::Preprocessing;
use capfilt_schemas::outputs::Origin;

use crate::bundle::Bundle;
use crate::captioner::{Captioner, SeedBase, stack_pixels};
use crate::engine_error::EngineError;
use crate::filter::{Filter, PairScore};
use crate::runtime::{OrtRuntime, SessionOptions};
use crate::sampling::GenerationParams;

/// Parameters of the CapFilt step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepParams {
    /// Caption generation.
    pub generation: GenerationParams,
    /// A text is kept when its ITM probability is at least this.
    pub threshold: f32,
    /// (image, text) pairs per ITM run.
    pub itm_batch: usize,
    /// Bootstrap round (part of every sampling seed).
    pub round: u32,
}

impl StepParams {
    /// Checks the generation parameters and that the threshold is within 0..=1 (a NaN is not).
    pub fn validate(&self) -> Result<(), EngineError> {
        self.generation.validate().map_err(EngineError::Params)?;
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(EngineError::Params(format!(
                "threshold must be within 0..=1, got {}",
                self.threshold
            )));
        }
        Ok(())
    }
}

impl Default for StepParams {
    fn default() -> Self {
        Self {
            generation: GenerationParams::default(),
            threshold: 0.5,
            itm_batch: 64,
            round: 1,
        }
    }
}

/// An image ready for the models.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Row key.
    pub key: String,
    /// The web text, if the row has one.
    pub web_text: Option<String>,
    /// `[3, S, S]` pixels for the captioner.
    pub captioner_pixels: Vec<f32>,
    /// `[3, S', S']` pixels for the filter when its preprocessing differs from the captioner's.
    pub filter_pixels: Option<Vec<f32>>,
}

/// One judged text of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The text.
    pub text: String,
    /// Web alt-text or synthetic caption.
    pub origin: Origin,
    /// Candidate index (synthetic only).
    pub candidate: Option<u32>,
    /// Sampling seed (nucleus-sampled synthetic captions only).
    pub seed: Option<u64>,
    /// Filter scores.
    pub score: PairScore,
    /// Whether the text passed the threshold.
    pub kept: bool,
}

/// Time spent in each model over one [`Engine::run`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimings {
    /// Captioner (vision + decoding).
    pub caption: Duration,
    /// Filter (vision + ITM).
    pub filter: Duration,
}

/// What a shard's reading loop needs from the models: their preprocessing, the round, and the
/// CapFilt step on a batch. Implemented by [`Engine`] (its own sessions) and by
/// [`HubClient`](crate::engine_hub::HubClient) (a device's shared engine).
pub trait StepRunner {
    /// The captioner's preprocessing.
    fn captioner_preprocessing(&self) -> &Preprocessing;
    /// The filter's preprocessing when it differs from the captioner's.
    fn filter_preprocessing(&self) -> Option<&Preprocessing>;
    /// Bootstrap round of the step.
    fn round(&self) -> u32;
    /// The CapFilt step on `images` (see [`Engine::run`]).
    fn run_step(
        &mut self,
        images: Vec<PreparedImage>,
        timings: &mut StepTimings,
    ) -> Result<Vec<Vec<Judged>>, EngineError>;
}

impl StepRunner for Engine {
    fn captioner_preprocessing(&self) -> &Preprocessing {
        self.captioner.preprocessing()
    }

    fn filter_preprocessing(&self) -> Option<&Preprocessing> {
        (!self.shared_pixels()).then(|| self.filter.preprocessing())
    }

    fn round(&self) -> u32 {
        self.params.round
    }

    fn run_step(
        &mut self,
        images: Vec<PreparedImage>,
        timings: &mut StepTimings,
    ) -> Result<Vec<Vec<Judged>>, EngineError> {
        self.run(&images, timings)
    }
}

/// Captioner + filter + parameters.
#[derive(Debug)]
pub struct Engine {
    /// The captioner.
    pub captioner: Captioner,
    /// The filter.
    pub filter: Filter,
    /// Step parameters.
    pub params: StepParams,
}

impl Engine {
    /// Loads both bundles' sessions.
    pub fn load(
        rt: &OrtRuntime,
        captioner: &Bundle,
        filter: &Bundle,
        options: &SessionOptions,
        params: StepParams,
    ) -> Result<Self, EngineError> {
        params.validate()?;
        let engine = Self {
            captioner: Captioner::load(rt, captioner, options)?,
            filter: Filter::load(rt, filter, options)?,
            params,
        };
        tracing::info!(
            device = %options.device,
            captioner = %captioner.manifest.name,
            captioner_precision = %engine.captioner.precision(),
            filter = %filter.manifest.name,
            filter_precision = %engine.filter.precision(),
            device_resident = engine.captioner.device_resident(),
            "engine loaded"
        );
        Ok(engine)
    }

    /// Whether the filter takes the captioner's pixels as they are.
    pub fn shared_pixels(&self) -> bool {
        self.captioner.preprocessing() == self.filter.preprocessing()
    }

    /// Runs the CapFilt step: for each image, its web text (first, if any) and its synthetic
    /// captions, judged.
    pub fn run(
        &mut self,
        images: &[PreparedImage],
        timings: &mut StepTimings,
    ) -> Result<Vec<Vec<Judged>>, EngineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let cap_size = self.captioner.preprocessing().image_size as usize;
        let pixels = stack_pixels(
            &images
                .iter()
                .map(|i| i.captioner_pixels.as_slice())
                .collect::<Vec<_>>(),
            cap_size,
        )?;
        let seeds: Vec<SeedBase<'_>> = images
            .iter()
            .map(|i| SeedBase {
                key: &i.key,
                round: self.params.round,
            })
            .collect();
        let captions = self
            .captioner
            .generate(pixels.view(), &seeds, &self.params.generation)?;
        let t1 = Instant::now();
        timings.caption += t1 - t0;
        crate::metrics::stage("captioner", (t1 - t0).as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_IMAGES).record(images.len() as f64);

        let shared = self.shared_pixels();
        judge(
            &mut self.filter,
            &self.params,
            images,
            shared.then(|| pixels.view()),
            shared,
            captions,
            timings,
        )
    }
}

/// The filter's half of the CapFilt step: each image's web text (first, if any) and its
/// synthetic `captions`, scored and judged against `params.threshold`. When the filter
/// `shared` the captioner's preprocessing it reads the captioner's pixels (`pixels`, already
/// stacked, when the caller has them), else each image's `filter_pixels`.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    filter: &mut Filter,
    params: &StepParams,
    images: &[PreparedImage],
    pixels: Option<ndarray::ArrayView4<'_, f32>>,
    shared: bool,
    captions: Vec<Vec<crate::captioner::Caption>>,
    timings: &mut StepTimings,
) -> Result<Vec<Vec<Judged>>, EngineError> {
    let t1 = Instant::now();
    let embeds = if shared {
        match pixels {
            Some(p) => filter.image_embeds(p)?,
            None => {
                let size = filter.preprocessing().image_size as usize;
                let bufs: Vec<&[f32]> = images
                    .iter()
                    .map(|i| i.captioner_pixels.as_slice())
                    .collect();
                filter.image_embeds(stack_pixels(&bufs, size)?.view())?
            }
        }
    } else {
        let size = filter.preprocessing().image_size as usize;
        let bufs = images
            .iter()
            .map(|i| {
                i.filter_pixels.as_deref().ok_or_else(|| {
                    EngineError::Params(format!("image {} has no filter pixels", i.key))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        filter.image_embeds(stack_pixels(&bufs, size)?.view())?
    };
    let mut pairs: Vec<(usize, &str)> = Vec::new();
    for (i, img) in images.iter().enumerate() {
        if let Some(web) = &img.web_text {
            pairs.push((i, web.as_str()));
        }
        for c in &captions[i] {
            pairs.push((i, c.text.as_str()));
        }
    }
    let scores = filter.score(&embeds, &pairs, params.itm_batch)?;
    timings.filter += t1.elapsed();
    crate::metrics::stage("filter", t1.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::IMAGES_PROCESSED).increment(images.len() as u64);

    let threshold = params.threshold;
    let mut scores = scores.into_iter();
    let mut out = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let mut judged = Vec::with_capacity(1 + captions[i].len());
        if let Some(web) = &img.web_text {
            let score = scores
                .next()
                .ok_or_else(|| EngineError::Graph("missing ITM score".into()))?;
            judged.push(Judged {
                text: web.clone(),
                origin: Origin::Web,
                candidate: None,
                seed: None,
                kept: score.itm_prob >= threshold,
                score,
            });
        }
        for c in &captions[i] {
            let score = scores
                .next()
                .ok_or_else(|| EngineError::Graph("missing ITM score".into()))?;
            judged.push(Judged {
                text: c.text.clone(),
                origin: Origin::Synthetic,
                candidate: Some(c.candidate),
                seed: c.seed,
                kept: score.itm_prob >= threshold,
                score,
            });
        }
        out.push(judged);
    }
    Ok(out)
}
