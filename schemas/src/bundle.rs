//! `bundle.json`: the manifest of a model bundle (DESIGN.md §2 "Model bundles").
//!
//! A bundle is a folder with `bundle.json`, `tokenizer.json` and ONNX graphs. The manifest says
//! how to preprocess images, which special tokens the model uses (BLIP swaps `[CLS]` for `[DEC]`
//! in the captioner's decoder and for `[ENC]` in the filter's ITM head), the prompt and
//! generation defaults, the graphs with their input and output names, where the weights came
//! from, and the sha256 of every other file so a worker can verify the bundle before loading it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SchemaError;

/// Format version of `bundle.json` written by this build.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// File name of a bundle's manifest.
pub const BUNDLE_MANIFEST_FILE: &str = "bundle.json";

/// What a bundle's model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleKind {
    /// Image-grounded text decoder (`BlipForConditionalGeneration`).
    Captioner,
    /// Image-text matching (`BlipForImageTextRetrieval`).
    Filter,
}

impl BundleKind {
    /// Graph names a bundle of this kind must have.
    pub fn required_graphs(self) -> &'static [&'static str] {
        match self {
            BundleKind::Captioner => &["vision", "decoder"],
            BundleKind::Filter => &["vision", "itm"],
        }
    }
}

impl fmt::Display for BundleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BundleKind::Captioner => "captioner",
            BundleKind::Filter => "filter",
        })
    }
}

/// Image resampling filter for the resize to `image_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Bicubic, as BLIP's image processor (PIL's BICUBIC).
    Bicubic,
    /// Bilinear.
    Bilinear,
}

/// Image preprocessing: RGB, resize to `image_size` square, rescale, normalise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Side of the square model input, in pixels.
    pub image_size: u32,
    /// Resize filter.
    pub resample: Resample,
    /// Multiplier applied to 8-bit pixel values before normalisation (1/255).
    pub rescale_factor: f32,
    /// Per-channel mean (CLIP's by default).
    pub mean: [f32; 3],
    /// Per-channel standard deviation (CLIP's by default).
    pub std: [f32; 3],
}

impl Preprocessing {
    /// CLIP's normalisation mean, used by BLIP.
    pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
    /// CLIP's normalisation standard deviation, used by BLIP.
    pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

    /// BLIP's preprocessing at the given image size.
    pub fn blip(image_size: u32) -> Self {
        Self {
            image_size,
            resample: Resample::Bicubic,
            rescale_factor: 1.0 / 255.0,
            mean: Self::CLIP_MEAN,
            std: Self::CLIP_STD,
        }
    }
}

/// A special token and its id in `tokenizer.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenId {
    /// Token text, e.g. `[SEP]`.
    pub token: String,
    /// Vocabulary id.
    pub id: u32,
}

/// The special tokens a bundle uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: TokenId,
    /// Ends a caption.
    pub sep: TokenId,
    /// Unknown word.
    pub unk: TokenId,
    /// The tokenizer's own `[CLS]`, replaced by `dec` or `enc` in the model's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls: Option<TokenId>,
    /// Decoder start token (captioner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dec: Option<TokenId>,
    /// ITM encoder start token (filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<TokenId>,
}

/// The tokenizer of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// File name within the bundle (a Hugging Face `tokenizer.json`).
    pub file: String,
    /// Longest text sequence the text model accepts, in tokens.
    pub max_length: u32,
    /// Special tokens.
    pub special_tokens: SpecialTokens,
}

/// Generation defaults of a captioner (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// `nucleus`, `greedy` or `beam`.
    pub decoding: String,
    /// Nucleus top-p.
    pub top_p: f32,
    /// Sampling temperature.
    pub temperature: f32,
    /// Beams for beam search.
    pub num_beams: u32,
    /// Repetition penalty.
    pub repetition_penalty: f32,
    /// Minimum length in tokens.
    pub min_length: u32,
    /// Maximum length in tokens.
    pub max_length: u32,
}

/// One ONNX graph of a bundle with its input and output names, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// File name within the bundle.
    pub file: String,
    /// Input names.
    pub inputs: Vec<String>,
    /// Output names.
    pub outputs: Vec<String>,
}

/// Numeric precision of a set of graphs. fp16 and int8 graphs keep fp32 inputs and outputs, so a
/// worker feeds and reads them exactly as the fp32 ones.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: the reference graphs, always present.
    #[default]
    Fp32,
    /// 16-bit floats inside the graph (for GPU workers).
    Fp16,
    /// Dynamically quantised: MatMul weights in int8 per output channel, activations quantised
    /// per tensor at run time, the rest fp32 (for CPU workers; VNNI dot products where the CPU
    /// has them).
    Int8,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("unknown precision '{s}': use fp32, fp16 or int8")),
        }
    }
}

/// The same graphs at another precision, with the export's check of them against PyTorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphVariant {
    /// Graphs by role, as [`BundleManifest::graphs`].
    pub graphs: BTreeMap<String, GraphSpec>,
    /// The export's parity figures and the tolerances they were held to.
    #[serde(default)]
    pub checks: serde_json::Value,
}

/// Shapes the inference code needs (KV cache layout, embedding sizes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    /// Vision transformer hidden size.
    pub vision_hidden_size: u32,
    /// Vision patch size.
    pub patch_size: u32,
    /// Text transformer hidden size.
    pub text_hidden_size: u32,
    /// Text transformer layers (decoder layers for a captioner).
    pub text_layers: u32,
    /// Attention heads in the text transformer.
    pub text_heads: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
}

/// Where a bundle's weights came from and how good they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Bundle this one was trained from or replaces (URL or sha256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Training data: input prefixes or round manifests.
    #[serde(default)]
    pub training_data: Vec<String>,
    /// The command that made the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Evaluation figures on the held-out split (e.g. `exact_match`, `auc`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// Prefix of the filter metrics that record, per precision target, the lowest ITM threshold
/// whose kept texts reached that precision on the held-out split
/// (`threshold_at_precision_0.98`); the trainer's evaluation writes them.
pub const THRESHOLD_AT_PRECISION: &str = "threshold_at_precision_";

impl Provenance {
    /// The threshold recorded for precision target `precision` (e.g. 0.98), if any.
    pub fn threshold_at_precision(&self, precision: f64) -> Option<f64> {
        self.metrics
            .get(&format!("{THRESHOLD_AT_PRECISION}{precision}"))
            .copied()
            .filter(|t| (0.0..=1.0).contains(t))
    }

    /// The precision targets that have a recorded threshold.
    pub fn precision_targets(&self) -> Vec<String> {
        self.metrics
            .keys()
            .filter_map(|k| k.strip_prefix(THRESHOLD_AT_PRECISION))
            .map(str::to_string)
            .collect()
    }
}

/// The contents of `bundle.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// [`BUNDLE_FORMAT_VERSION`].
    pub format_version: u32,
    /// Captioner or filter.
    pub kind: BundleKind,
    /// Human-readable name, e.g. `shapes-seed-captioner`.
    pub name: String,
    /// Image preprocessing.
    pub preprocessing: Preprocessing,
    /// Tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Captioner prompt (`"a picture of "`), stripped from generated captions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Captioner generation defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationDefaults>,
    /// Model shapes.
    pub architecture: Architecture,
    /// ONNX graphs by role (`vision`, `decoder`, `itm`).
    pub graphs: BTreeMap<String, GraphSpec>,
    /// Precision of `graphs` (fp32 for every bundle written so far).
    #[serde(default)]
    pub precision: Precision,
    /// The same graphs at other precisions (`fp16` for GPU workers), by precision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<Precision, GraphVariant>,
    /// Provenance and metrics.
    #[serde(default)]
    pub provenance: Provenance,
    /// sha256 (lower-case hex) of every other file of the bundle, by relative path.
    pub files: BTreeMap<String, String>,
}

impl BundleManifest {
    /// Parses and validates `bundle.json`; `source` names it in errors.
    pub fn from_json(source: &str, json: &str) -> Result<Self, SchemaError> {
        let manifest: Self = serde_json::from_str(json).map_err(|e| SchemaError::BadBundle {
            source_name: source.to_string(),
            problem: e.to_string(),
        })?;
        manifest.validate(source)?;
        Ok(manifest)
    }

    /// Graphs by role at `precision`, if the bundle has them.
    pub fn graphs_at(&self, precision: Precision) -> Option<&BTreeMap<String, GraphSpec>> {
        if precision == self.precision {
            Some(&self.graphs)
        } else {
            self.variants.get(&precision).map(|v| &v.graphs)
        }
    }

    /// Checks the manifest's internal consistency: version, required graphs and special tokens,
    /// preprocessing values, and a well-formed sha256 for every graph and the tokenizer.
    pub fn validate(&self, source: &str) -> Result<(), SchemaError> {
        let bad = |problem: String| SchemaError::BadBundle {
            source_name: source.to_string(),
            problem,
        };
        if self.format_version != BUNDLE_FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is not supported (this build reads {BUNDLE_FORMAT_VERSION})",
                self.format_version
            )));
        }
        for graph in self.kind.required_graphs() {
            if !self.graphs.contains_key(*graph) {
                return Err(bad(format!(
                    "a {} bundle needs a '{graph}' graph",
                    self.kind
                )));
            }
        }
        for (precision, variant) in &self.variants {
            if *precision == self.precision {
                return Err(bad(format!(
                    "variants.{precision} repeats the precision of graphs"
                )));
            }
            let (mut want, mut have): (Vec<_>, Vec<_>) = (
                self.graphs.keys().collect(),
                variant.graphs.keys().collect(),
            );
            want.sort();
            have.sort();
            if want != have {
                return Err(bad(format!(
                    "variants.{precision} has graphs {have:?}, not the bundle's {want:?}"
                )));
            }
        }
        let start = match self.kind {
            BundleKind::Captioner => &self.tokenizer.special_tokens.dec,
            BundleKind::Filter => &self.tokenizer.special_tokens.enc,
        };
        if start.is_none() {
            let name = match self.kind {
                BundleKind::Captioner => "dec",
                BundleKind::Filter => "enc",
            };
            return Err(bad(format!(
                "a {} bundle needs special_tokens.{name}",
                self.kind
            )));
        }
        let p = &self.preprocessing;
        if p.image_size == 0 || p.std.iter().any(|s| *s <= 0.0) || p.rescale_factor <= 0.0 {
            return Err(bad(
                "preprocessing needs image_size > 0, rescale_factor > 0 and std > 0".into(),
            ));
        }
        let needed = self
            .graphs
            .values()
            .chain(self.variants.values().flat_map(|v| v.graphs.values()))
            .map(|g| g.file.as_str())
            .chain(std::iter::once(self.tokenizer.file.as_str()));
        for file in needed {
            match self.files.get(file) {
                None => return Err(bad(format!("files has no sha256 for '{file}'"))),
                Some(h) if !is_sha256_hex(h) => {
                    return Err(bad(format!(
                        "sha256 of '{file}' is not 64 lower-case hex digits"
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Whether `s` is a lower-case hex sha256 digest.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str, id: u32) -> TokenId {
        TokenId {
            token: t.into(),
            id,
        }
    }

    fn captioner() -> BundleManifest {
        let graph = |file: &str| GraphSpec {
            file: file.into(),
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
        };
        BundleManifest {
            format_version: BUNDLE_FORMAT_VERSION,
            kind: BundleKind::Captioner,
            name: "test".into(),
            preprocessing: Preprocessing::blip(96),
            tokenizer: TokenizerSpec {
                file: "tokenizer.json".into(),
                max_length: 40,
                special_tokens: SpecialTokens {
                    pad: token("[PAD]", 0),
                    sep: token("[SEP]", 3),
                    unk: token("[UNK]", 1),
                    cls: Some(token("[CLS]", 2)),
                    dec: Some(token("[DEC]", 5)),
                    enc: None,
                },
            },
            prompt: Some("a picture of ".into()),
            generation: None,
            architecture: Architecture {
                vision_hidden_size: 64,
                patch_size: 16,
                text_hidden_size: 64,
                text_layers: 2,
                text_heads: 2,
                vocab_size: 100,
            },
            graphs: BTreeMap::from([
                ("vision".into(), graph("vision.onnx")),
                ("decoder".into(), graph("decoder.onnx")),
            ]),
            precision: Precision::Fp32,
            variants: BTreeMap::new(),
            provenance: Provenance::default(),
            files: ["vision.onnx", "decoder.onnx", "tokenizer.json"]
                .into_iter()
                .map(|f| (f.to_string(), "0".repeat(64)))
                .collect(),
        }
    }

    fn graph16(file: &str) -> GraphSpec {
        GraphSpec {
            file: file.into(),
            inputs: vec!["x".into()],
            outputs: vec!["y".into()],
        }
    }

    #[test]
    fn an_fp16_variant_round_trips_and_is_picked_by_precision() {
        let mut m = captioner();
        m.variants.insert(
            Precision::Fp16,
            GraphVariant {
                graphs: BTreeMap::from([
                    ("vision".into(), graph16("vision.fp16.onnx")),
                    ("decoder".into(), graph16("decoder.fp16.onnx")),
                ]),
                checks: serde_json::json!({"relative_tolerance": 0.02}),
            },
        );
        for f in ["vision.fp16.onnx", "decoder.fp16.onnx"] {
            m.files.insert(f.into(), "1".repeat(64));
        }
        let json = serde_json::to_string(&m).expect("json");
        assert!(json.contains(r#""precision":"fp32""#) && json.contains(r#""fp16":{"#));
        let back = BundleManifest::from_json("b", &json).expect("valid");
        assert_eq!(back, m);
        assert_eq!(
            back.graphs_at(Precision::Fp16).expect("fp16")["decoder"].file,
            "decoder.fp16.onnx"
        );
        assert_eq!(
            back.graphs_at(Precision::Fp32).expect("fp32")["decoder"].file,
            "decoder.onnx"
        );
        assert!(captioner().graphs_at(Precision::Fp16).is_none());
    }

    #[test]
    fn precisions_parse_print_and_refuse_unknown_names() {
        for p in [Precision::Fp32, Precision::Fp16, Precision::Int8] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            let json = serde_json::to_string(&p).expect("json");
            assert_eq!(json, format!("\"{p}\""));
        }
        let e = "fp8".parse::<Precision>().expect_err("unknown");
        assert!(e.contains("'fp8'") && e.contains("int8"), "{e}");
    }

    #[test]
    fn valid_manifest_round_trips() {
        let m = captioner();
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(BundleManifest::from_json("b", &json).expect("valid"), m);
    }

    #[test]
    fn missing_graph_token_or_hash_is_refused_with_its_name() {
        let mut m = captioner();
        m.graphs.remove("decoder");
        let e = m.validate("models/x").expect_err("no decoder").to_string();
        assert!(e.contains("models/x") && e.contains("'decoder'"), "{e}");

        let mut m = captioner();
        m.kind = BundleKind::Filter;
        m.graphs.insert("itm".into(), m.graphs["decoder"].clone());
        let e = m.validate("f").expect_err("no enc").to_string();
        assert!(e.contains("special_tokens.enc"), "{e}");

        let mut m = captioner();
        m.files.insert("vision.onnx".into(), "XYZ".into());
        let e = m.validate("f").expect_err("bad hash").to_string();
        assert!(e.contains("vision.onnx"), "{e}");

        let mut m = captioner();
        m.variants.insert(
            Precision::Fp16,
            GraphVariant {
                graphs: BTreeMap::from([("vision".into(), graph16("vision.fp16.onnx"))]),
                checks: serde_json::Value::Null,
            },
        );
        let e = m
            .validate("f")
            .expect_err("variant lacks decoder")
            .to_string();
        assert!(e.contains("variants.fp16"), "{e}");
        m.variants
            .get_mut(&Precision::Fp16)
            .expect("fp16")
            .graphs
            .insert("decoder".into(), graph16("decoder.fp16.onnx"));
        let e = m.validate("f").expect_err("no hash").to_string();
        assert!(e.contains("decoder.fp16.onnx"), "{e}");

        let e = BundleManifest::from_json("bundle.json", "{}")
            .expect_err("empty")
            .to_string();
        assert!(e.contains("bundle.json"), "{e}");
    }
}
