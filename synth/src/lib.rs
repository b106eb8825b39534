#![doc = include_str!("../README.md")]

pub mod captions;
pub mod draw;
pub mod scene;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use captions::{NoiseKind, NoiseMix};
pub use writer::{SplitSummary, SynthSummary};

/// Errors of `capfilt synth`.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A parameter is out of range.
    #[error("invalid synth option: {0}")]
    InvalidOption(String),
    /// The output folder holds files that are not a previous synth output.
    #[error(
        "{0} is not empty and holds no _synth.json: choose an empty or new folder for the benchmark"
    )]
    OutputNotEmpty(PathBuf),
    /// Filesystem error, with the path involved.
    #[error("cannot write {}", .path.display())]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Image encoding failed.
    #[error("encoding image of row {row} in {split}: {message}")]
    Encode {
        /// Split.
        split: Split,
        /// Row index within the split.
        row: u64,
        /// Cause.
        message: String,
    },
    /// Parquet writing failed.
    #[error("writing {}", .path.display())]
    Parquet {
        /// File.
        path: PathBuf,
        /// Cause.
        source: parquet::errors::ParquetError,
    },
}

/// The three splits of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Clean human-quality captions (the COCO role): the seed training set.
    Seed,
    /// Web alt-text with noise: what CapFilt cleans.
    Web,
    /// Held out for evaluation, noisy like `web` so a filter can be scored on it too.
    Eval,
}

impl Split {
    /// Every split, in output order.
    pub const ALL: [Split; 3] = [Split::Seed, Split::Web, Split::Eval];

    /// Folder name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Seed => "seed",
            Split::Web => "web",
            Split::Eval => "eval",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Split::Seed => 0x5eed,
            Split::Web => 0x3eb,
            Split::Eval => 0xe7a1,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters of the benchmark. The same parameters give byte-identical files.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Output folder.
    pub out: PathBuf,
    /// Rows of the `seed` split.
    pub seed_rows: u64,
    /// Rows of the `web` split.
    pub web_rows: u64,
    /// Rows of the `eval` split.
    pub eval_rows: u64,
    /// Share of `web` and `eval` captions that do not match their image.
    pub noise: f64,
    /// Kinds of noise and their weights.
    pub noise_mix: NoiseMix,
    /// Random seed.
    pub seed: u64,
    /// Rows per Parquet file.
    pub rows_per_file: u64,
    /// Rows per row group.
    pub rows_per_row_group: u64,
    /// Smallest image side, pixels.
    pub min_side: u32,
    /// Largest image side, pixels.
    pub max_side: u32,
    /// Share of images stored as PNG (the rest are JPEG).
    pub png_share: f64,
}

impl SynthConfig {
    /// The defaults of `capfilt synth` writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            seed_rows: 2_000,
            web_rows: 10_000,
            eval_rows: 500,
            noise: 0.4,
            noise_mix: NoiseMix::default(),
            seed: 0,
            rows_per_file: 1_000,
            rows_per_row_group: 250,
            min_side: 64,
            max_side: 640,
            png_share: 0.15,
        }
    }

    /// Checks every parameter, with a message naming the one out of range.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::InvalidOption(m));
        if !(0.0..=1.0).contains(&self.noise) {
            return bad(format!("--noise must be in [0, 1], got {}", self.noise));
        }
        if !(0.0..=1.0).contains(&self.png_share) {
            return bad(format!(
                "png share must be in [0, 1], got {}",
                self.png_share
            ));
        }
        if self.rows_per_file == 0 || self.rows_per_row_group == 0 {
            return bad("rows per file and rows per row group must be > 0".into());
        }
        if self.min_side < 16 || self.min_side > self.max_side || self.max_side > 4096 {
            return bad(format!(
                "image sides must satisfy 16 <= min ({}) <= max ({}) <= 4096",
                self.min_side, self.max_side
            ));
        }
        Ok(())
    }

    fn rows(&self, split: Split) -> u64 {
        match split {
            Split::Seed => self.seed_rows,
            Split::Web => self.web_rows,
            Split::Eval => self.eval_rows,
        }
    }

    fn noise_of(&self, split: Split) -> f64 {
        match split {
            Split::Seed => 0.0,
            Split::Web | Split::Eval => self.noise,
        }
    }
}

/// One generated row, before encoding into a Parquet batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// img2dataset-style key: 4-digit file index + 5-digit row index.
    pub key: String,
    /// A URL under the reserved `.invalid` domain (never fetched).
    pub url: String,
    /// The caption (web alt-text for `web`/`eval`, clean for `seed`).
    pub caption: String,
    /// Encoded image (JPEG or PNG).
    pub image: Vec<u8>,
    /// The canonical caption of the image.
    pub gt_caption: String,
    /// Whether `caption` describes the image.
    pub gt_match: bool,
    /// Noise kind of a non-matching caption.
    pub noise: Option<NoiseKind>,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
}

/// SplitMix64 finaliser: spreads (seed, split, row) into independent per-row RNG seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn split_seed(seed: u64, split: Split) -> u64 {
    mix(seed ^ mix(split.salt()))
}

/// Which rows of a split get a non-matching caption: exactly `round(noise * rows)` of them,
/// chosen by a seeded shuffle, so the noise share is exact rather than merely expected.
fn noisy_rows(config: &SynthConfig, split: Split) -> Vec<bool> {
    let rows = config.rows(split) as usize;
    let n_noisy = (config.noise_of(split) * rows as f64).round() as usize;
    let mut flags = vec![false; rows];
    flags[..n_noisy].iter_mut().for_each(|f| *f = true);
    let mut rng = ChaCha8Rng::seed_from_u64(split_seed(config.seed, split) ^ 0x0153);
    flags.shuffle(&mut rng);
    flags
}

/// Generates row `index` of `split`. Depends only on the config, the split and the index, so
/// rows can be made in parallel in any order.
pub fn make_row(
    config: &SynthConfig,
    split: Split,
    index: u64,
    noisy: bool,
) -> Result<Row, SynthError> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(split_seed(config.seed, split) ^ mix(index)));
    let scene = scene::Scene::random(&mut rng, config.min_side, config.max_side);
    let content = scene.content();
    let gt_caption = content.caption();
    let (caption, noise) = match (split, noisy) {
        (Split::Seed, _) => (gt_caption.clone(), None),
        (_, false) => (captions::web_style(&mut rng, &content), None),
        (_, true) => {
            let kind = config.noise_mix.pick(&mut rng);
            (captions::noisy(&mut rng, &content, kind), Some(kind))
        }
    };
    let png = rng.random_bool(config.png_share);
    let quality = rng.random_range(70..=95u8);
    let pixels = draw::render(&scene);
    let image = encode(&pixels, scene.width, scene.height, png, quality).map_err(|message| {
        SynthError::Encode {
            split,
            row: index,
            message,
        }
    })?;
    let file = index / config.rows_per_file;
    let key = format!("{:04}{:05}", file, index % config.rows_per_file);
    let ext = if png { "png" } else { "jpg" };
    Ok(Row {
        url: format!("https://{split}.synthetic.capfilt.invalid/{key}.{ext}"),
        key,
        caption,
        image,
        gt_caption,
        gt_match: noise.is_none(),
        noise,
        width: scene.width,
        height: scene.height,
    })
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    png: bool,
    quality: u8,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(pixels.len() / 8);
    if png {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(pixels, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    } else {
        let (w, h) = (
            u16::try_from(width).map_err(|e| e.to_string())?,
            u16::try_from(height).map_err(|e| e.to_string())?,
        );
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(pixels, w, h, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Writes the benchmark: `out/{seed,web,eval}/part-NNNNN.parquet` and `out/_synth.json`.
pub fn generate(config: &SynthConfig) -> Result<SynthSummary, SynthError> {
    config.validate()?;
    writer::prepare_output(&config.out)?;
    let mut splits = Vec::new();
    for split in Split::ALL {
        let flags = noisy_rows(config, split);
        splits.push(writer::write_split(config, split, &flags)?);
    }
    let summary = SynthSummary { splits };
    writer::write_summary(config, &summary)?;
    Ok(summary)
}

/// Path of a split's folder.
pub fn split_dir(out: &Path, split: Split) -> PathBuf {
    out.join(split.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_share_is_exact() {
        let mut c = SynthConfig::new("/unused");
        c.web_rows = 1001;
        c.noise = 0.3;
        let flags = noisy_rows(&c, Split::Web);
        assert_eq!(flags.iter().filter(|f| **f).count(), 300);
        assert!(noisy_rows(&c, Split::Seed).iter().all(|f| !f));
    }

    #[test]
    fn rows_depend_only_on_seed_split_and_index() {
        let c = SynthConfig::new("/unused");
        let a = make_row(&c, Split::Web, 17, true).expect("row");
        let b = make_row(&c, Split::Web, 17, true).expect("row");
        assert_eq!(a, b);
        assert!(!a.gt_match && a.noise.is_some());
        let other = make_row(&c, Split::Eval, 17, true).expect("row");
        assert_ne!(a.image, other.image);
        let mut c2 = c.clone();
        c2.seed = 1;
        assert_ne!(
            make_row(&c2, Split::Web, 17, true).expect("row").image,
            a.image
        );
    }

    #[test]
    fn images_decode_to_their_stated_size_in_both_formats() {
        let mut c = SynthConfig::new("/unused");
        for (png_share, format) in [
            (1.0, image::ImageFormat::Png),
            (0.0, image::ImageFormat::Jpeg),
        ] {
            c.png_share = png_share;
            let row = make_row(&c, Split::Seed, 3, false).expect("row");
            assert_eq!(image::guess_format(&row.image).expect("format"), format);
            let img = image::load_from_memory(&row.image).expect("decodes");
            assert_eq!((img.width(), img.height()), (row.width, row.height));
            assert_eq!(row.caption, row.gt_caption);
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let mut c = SynthConfig::new("/unused");
        c.noise = 1.5;
        assert!(c.validate().is_err());
        let mut c = SynthConfig::new("/unused");
        c.min_side = 700;
        assert!(c.validate().is_err());
        let mut c = SynthConfig::new("/unused");
        c.rows_per_row_group = 0;
        assert!(c.validate().is_err());
    }
}
