//! Decoding parameters and the per-step logits processing of caption generation, in the order
//! HF transformers applies them: repetition penalty, minimum length, then (sampling only)
//! temperature and top-p; plus the per-sample seed.

use std::fmt;
use std::str::FromStr;

use capfilt_schemas::bundle::GenerationDefaults;
use rand::Rng;
use sha2::{Digest, Sha256};

/// How synthetic captions are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoding {
    /// The most likely token at every step (one caption per image).
    Greedy,
    /// Nucleus (top-p) sampling: BLIP's choice for CapFilt.
    Nucleus,
    /// Beam search with `num_beams` beams.
    Beam,
}

impl Decoding {
    /// Name used in flags and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Decoding::Greedy => "greedy",
            Decoding::Nucleus => "nucleus",
            Decoding::Beam => "beam",
        }
    }
}

impl fmt::Display for Decoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "greedy" => Ok(Decoding::Greedy),
            "nucleus" | "sample" | "sampling" => Ok(Decoding::Nucleus),
            "beam" => Ok(Decoding::Beam),
            _ => Err(format!(
                "unknown decoding '{s}': use nucleus, greedy or beam"
            )),
        }
    }
}

/// Caption generation parameters (DESIGN.md §3 defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationParams {
    /// Decoding method.
    pub decoding: Decoding,
    /// Nucleus mass.
    pub top_p: f32,
    /// Softmax temperature for sampling.
    pub temperature: f32,
    /// Beams for beam search.
    pub num_beams: usize,
    /// HF-style repetition penalty (1.0 = none).
    pub repetition_penalty: f32,
    /// `[SEP]` is forbidden while the sequence (prompt included) is shorter than this.
    pub min_length: usize,
    /// Generation stops when the sequence (prompt included) reaches this many tokens.
    pub max_length: usize,
    /// Synthetic captions per image (nucleus: K samples; beam: the K best beams, K <= beams;
    /// greedy: always one).
    pub candidates: usize,
    /// Length penalty exponent of beam search scores.
    pub length_penalty: f32,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            decoding: Decoding::Nucleus,
            top_p: 0.9,
            temperature: 1.0,
            num_beams: 3,
            repetition_penalty: 1.1,
            min_length: 10,
            max_length: 30,
            candidates: 1,
            length_penalty: 1.0,
        }
    }
}

impl GenerationParams {
    /// The bundle's generation defaults (unknown decoding names fall back to nucleus).
    pub fn from_bundle(g: &GenerationDefaults) -> Self {
        Self {
            decoding: g.decoding.parse().unwrap_or(Decoding::Nucleus),
            top_p: g.top_p,
            temperature: g.temperature,
            num_beams: g.num_beams.max(1) as usize,
            repetition_penalty: g.repetition_penalty,
            min_length: g.min_length as usize,
            max_length: g.max_length as usize,
            ..Self::default()
        }
    }

    /// Checks the parameters, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.temperature <= 0.0 || !self.temperature.is_finite() {
            return Err(format!("temperature must be > 0, got {}", self.temperature));
        }
        if self.repetition_penalty <= 0.0 || !self.repetition_penalty.is_finite() {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.num_beams == 0 || self.candidates == 0 {
            return Err("num_beams and candidates must be at least 1".into());
        }
        if self.decoding == Decoding::Beam && self.candidates > self.num_beams {
            return Err(format!(
                "beam search returns at most num_beams ({}) captions, but {} candidates were asked for",
                self.num_beams, self.candidates
            ));
        }
        if self.max_length == 0 || self.min_length > self.max_length {
            return Err(format!(
                "need 0 < min_length ({}) <= max_length ({})",
                self.min_length, self.max_length
            ));
        }
        Ok(())
    }

    /// Captions generated per image.
    pub fn captions_per_image(&self) -> usize {
        match self.decoding {
            Decoding::Greedy => 1,
            Decoding::Nucleus | Decoding::Beam => self.candidates,
        }
    }
}

/// The seed of one synthetic caption: the first 8 bytes (little-endian) of
/// `sha256(key 0x00 round_le32 candidate_le32)`. It depends on nothing else, so a re-run,
/// a retry on another worker or a different batch composition gives the same caption.
pub fn sample_seed(key: &str, round: u32, candidate: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(round.to_le_bytes());
    h.update(candidate.to_le_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// HF's `RepetitionPenaltyLogitsProcessor`: every token already in `ids` has its score divided
/// by `penalty` when positive and multiplied by it when negative.
pub fn apply_repetition_penalty(scores: &mut [f32], ids: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &id in ids {
        let i = id as usize;
        if i < scores.len() && !seen[i] {
            seen[i] = true;
            let s = scores[i];
            scores[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// HF's `MinLengthLogitsProcessor`: `[SEP]` is impossible while `len < min_length`.
pub fn apply_min_length(scores: &mut [f32], len: usize, min_length: usize, sep: u32) {
    if len < min_length
        && let Some(s) = scores.get_mut(sep as usize)
    {
        *s = f32::NEG_INFINITY;
    }
}

/// Index of the largest score (the first one on ties, as `argmax`).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens nucleus sampling may pick and their renormalised probabilities, most likely
/// first: the smallest set whose probability mass (after `temperature`) reaches `top_p`,
/// always at least one token.
pub fn nucleus(scores: &[f32], temperature: f32, top_p: f32) -> Vec<(u32, f64)> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (i as u32, f64::from((s - max) / temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (id, p) in probs {
        let p = p / total;
        if !kept.is_empty() && mass >= f64::from(top_p) {
            break;
        }
        mass += p;
        kept.push((id, p));
    }
    let kept_mass: f64 = kept.iter().map(|(_, p)| p).sum();
    for (_, p) in &mut kept {
        *p /= kept_mass;
    }
    kept
}

/// Draws a token from `scores` by nucleus sampling with `rng`.
pub fn sample<R: Rng>(scores: &[f32], temperature: f32, top_p: f32, rng: &mut R) -> u32 {
    let kept = nucleus(scores, temperature, top_p);
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for &(id, p) in &kept {
        acc += p;
        if u < acc {
            return id;
        }
    }
    kept.last().map_or(0, |(id, _)| *id)
}

/// `log_softmax` of `scores`, in place.
pub fn log_softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = scores.iter().map(|s| (s - max).exp()).sum();
    let log_sum = sum.ln() + max;
    for s in scores.iter_mut() {
        *s -= log_sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seeds_depend_on_key_round_and_candidate_only() {
        let a = sample_seed("000123", 1, 0);
        assert_eq!(a, sample_seed("000123", 1, 0));
        assert_ne!(a, sample_seed("000123", 2, 0));
        assert_ne!(a, sample_seed("000123", 1, 1));
        assert_ne!(a, sample_seed("000124", 1, 0));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_the_mass() {
        // probabilities 0.5, 0.3, 0.15, 0.05
        let scores: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let ids = |v: Vec<(u32, f64)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(ids(nucleus(&scores, 1.0, 0.5)), [0]);
        assert_eq!(ids(nucleus(&scores, 1.0, 0.6)), [0, 1]);
        assert_eq!(ids(nucleus(&scores, 1.0, 0.9)), [0, 1, 2]);
        assert_eq!(ids(nucleus(&scores, 1.0, 1.0)), [0, 1, 2, 3]);
        // At least one token even for a tiny top_p.
        assert_eq!(ids(nucleus(&scores, 1.0, 1e-6)), [0]);
        let kept = nucleus(&scores, 1.0, 0.9);
        let total: f64 = kept.iter().map(|(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!((kept[0].1 - 0.5 / 0.95).abs() < 1e-6);
    }

    #[test]
    fn sampling_never_leaves_the_nucleus_and_follows_its_probabilities() {
        let scores: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[sample(&scores, 1.0, 0.75, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / 20_000.0;
        assert!((share - 0.625).abs() < 0.02, "{share}");
    }

    #[test]
    fn low_temperature_approaches_greedy() {
        let scores = [1.0f32, 1.2, 0.9];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(sample(&scores, 0.01, 0.99, &mut rng), 1);
        }
    }

    #[test]
    fn repetition_penalty_matches_hf() {
        let mut s = [2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn min_length_forbids_the_end_token() {
        let mut s = [0.0f32, 5.0, 1.0];
        apply_min_length(&mut s, 3, 4, 1);
        assert_eq!(argmax(&s), 2);
        let mut s = [0.0f32, 5.0, 1.0];
        apply_min_length(&mut s, 4, 4, 1);
        assert_eq!(argmax(&s), 1);
    }

    #[test]
    fn params_validate() {
        assert!(GenerationParams::default().validate().is_ok());
        let bad = GenerationParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().expect_err("top_p").contains("top_p"));
        let bad = GenerationParams {
            decoding: Decoding::Beam,
            candidates: 5,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
