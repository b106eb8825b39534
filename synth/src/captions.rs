//! Web alt-text for the benchmark: matching captions in varied web styles, and the noise kinds
//! that make a caption not match its image.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::scene::{Colour, Content, ShapeKind};

/// How a noisy web caption fails to describe its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoiseKind {
    /// One shape's colour is wrong.
    WrongColour,
    /// One shape's kind is wrong.
    WrongShape,
    /// The background colour is wrong.
    WrongBackground,
    /// Text about something else entirely (stock-photo and shop alt-text).
    Unrelated,
    /// An empty caption.
    Empty,
    /// A very long keyword-stuffed alt-text.
    VeryLong,
}

impl NoiseKind {
    /// Every noise kind.
    pub const ALL: [NoiseKind; 6] = [
        NoiseKind::WrongColour,
        NoiseKind::WrongShape,
        NoiseKind::WrongBackground,
        NoiseKind::Unrelated,
        NoiseKind::Empty,
        NoiseKind::VeryLong,
    ];

    /// Name used on the command line and in the `noise` column.
    pub fn name(self) -> &'static str {
        match self {
            NoiseKind::WrongColour => "wrong_colour",
            NoiseKind::WrongShape => "wrong_shape",
            NoiseKind::WrongBackground => "wrong_background",
            NoiseKind::Unrelated => "unrelated",
            NoiseKind::Empty => "empty",
            NoiseKind::VeryLong => "very_long",
        }
    }
}

impl fmt::Display for NoiseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NoiseKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoiseKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = NoiseKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown noise kind '{s}' (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Relative weights of the noise kinds among noisy captions.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseMix {
    weights: Vec<(NoiseKind, f64)>,
}

impl Default for NoiseMix {
    /// Mostly plausible-but-wrong captions (the hard cases for a filter), some junk.
    fn default() -> Self {
        Self {
            weights: vec![
                (NoiseKind::WrongColour, 0.25),
                (NoiseKind::WrongShape, 0.25),
                (NoiseKind::WrongBackground, 0.15),
                (NoiseKind::Unrelated, 0.2),
                (NoiseKind::Empty, 0.05),
                (NoiseKind::VeryLong, 0.1),
            ],
        }
    }
}

impl NoiseMix {
    /// Picks a noise kind by weight.
    pub fn pick<R: Rng>(&self, rng: &mut R) -> NoiseKind {
        let total: f64 = self.weights.iter().map(|(_, w)| w).sum();
        let mut x = rng.random_range(0.0..total);
        for (kind, w) in &self.weights {
            if x < *w {
                return *kind;
            }
            x -= w;
        }
        self.weights
            .last()
            .map_or(NoiseKind::Unrelated, |(k, _)| *k)
    }

    /// The weights, as given.
    pub fn weights(&self) -> &[(NoiseKind, f64)] {
        &self.weights
    }
}

impl FromStr for NoiseMix {
    type Err = String;

    /// Parses `wrong_colour=2,unrelated=1` (kinds not named get weight 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("noise mix entry '{part}' is not KIND=WEIGHT"))?;
            let kind: NoiseKind = name.trim().parse()?;
            let w: f64 = w
                .trim()
                .parse()
                .map_err(|_| format!("noise mix weight '{w}' of {kind} is not a number"))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("noise mix weight of {kind} must be >= 0"));
            }
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(format!("noise kind {kind} is given twice"));
            }
            weights.push((kind, w));
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("noise mix needs at least one positive weight".into());
        }
        Ok(Self { weights })
    }
}

/// A matching caption in one of several web alt-text styles.
pub fn web_style<R: Rng>(rng: &mut R, content: &Content) -> String {
    let things: Vec<String> = content
        .shapes
        .iter()
        .map(|(c, k)| format!("{} {}", c.name(), k.name()))
        .collect();
    let bg = content.background.name();
    match rng.random_range(0..6) {
        0 | 1 => content.caption(),
        2 => format!("{} on {bg} background", things.join(" and ")),
        3 => format!("{}, {bg} background", things.join(", ")),
        4 => format!("image of {}", content.caption()),
        _ => format!(
            "{} on {} {bg} background - stock illustration",
            things.join(" and "),
            crate::scene::article(bg)
        ),
    }
}

/// A caption of kind `kind` that does not match `content`. Wrong-attribute captions come in the
/// same web styles as matching ones, so the style of a text says nothing about whether it
/// matches.
pub fn noisy<R: Rng>(rng: &mut R, content: &Content, kind: NoiseKind) -> String {
    match kind {
        NoiseKind::WrongColour => {
            let mut c = content.clone();
            let i = rng.random_range(0..c.shapes.len());
            c.shapes[i].0 = other_colour(rng, &[c.shapes[i].0, c.background]);
            web_style(rng, &c)
        }
        NoiseKind::WrongShape => {
            let mut c = content.clone();
            let i = rng.random_range(0..c.shapes.len());
            let old = c.shapes[i].1;
            c.shapes[i].1 = loop {
                let k = *ShapeKind::ALL.choose(rng).unwrap_or(&ShapeKind::Circle);
                if k != old {
                    break k;
                }
            };
            web_style(rng, &c)
        }
        NoiseKind::WrongBackground => {
            let mut c = content.clone();
            let mut avoid: Vec<Colour> = c.shapes.iter().map(|s| s.0).collect();
            avoid.push(c.background);
            c.background = other_colour(rng, &avoid);
            web_style(rng, &c)
        }
        NoiseKind::Unrelated => unrelated(rng),
        NoiseKind::Empty => String::new(),
        NoiseKind::VeryLong => very_long(rng),
    }
}

fn other_colour<R: Rng>(rng: &mut R, avoid: &[Colour]) -> Colour {
    loop {
        let c = *Colour::ALL.choose(rng).unwrap_or(&Colour::Gray);
        if !avoid.contains(&c) {
            return c;
        }
    }
}

const SUBJECTS: &[&str] = &[
    "a dog playing in the park",
    "sunset over the mountains",
    "a bowl of fresh fruit",
    "two people shaking hands",
    "a city street at night",
    "a cup of coffee on a wooden table",
    "a cat sleeping on a sofa",
    "an old car parked by the road",
    "a bride and groom",
    "a laptop on a desk",
    "a plate of pasta",
    "children playing football",
];

const JUNK: &[&str] = &[
    "click here to buy now",
    "free shipping on all orders",
    "IMG_2041.JPG",
    "DSC00731",
    "logo",
    "banner",
    "thumbnail",
    "best deals of the year",
    "download hd wallpaper",
    "product photo",
    "image not found",
    "untitled",
];

const SPAM_WORDS: &[&str] = &[
    "cheap",
    "best",
    "free",
    "download",
    "wallpaper",
    "hd",
    "4k",
    "vector",
    "clipart",
    "icon",
    "design",
    "art",
    "cute",
    "modern",
    "abstract",
    "background",
    "template",
    "printable",
    "poster",
    "sale",
    "online",
    "shop",
    "gift",
    "idea",
    "pattern",
    "texture",
    "graphic",
    "illustration",
    "simple",
    "style",
];

fn unrelated<R: Rng>(rng: &mut R) -> String {
    if rng.random_bool(0.6) {
        (*SUBJECTS.choose(rng).unwrap_or(&"untitled")).to_string()
    } else {
        (*JUNK.choose(rng).unwrap_or(&"untitled")).to_string()
    }
}

fn very_long<R: Rng>(rng: &mut R) -> String {
    let n = rng.random_range(40..=90);
    let mut words: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        let w = match rng.random_range(0..10) {
            0 => Colour::ALL.choose(rng).map_or("red", |c| c.name()),
            1 => ShapeKind::ALL.choose(rng).map_or("circle", |k| k.name()),
            _ => SPAM_WORDS.choose(rng).copied().unwrap_or("free"),
        };
        words.push(w);
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn content() -> Content {
        Content {
            background: Colour::Blue,
            shapes: vec![(Colour::Red, ShapeKind::Circle)],
        }
    }

    #[test]
    fn noisy_captions_never_equal_the_truth() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let truth = content().caption();
        for kind in NoiseKind::ALL {
            for _ in 0..50 {
                let text = noisy(&mut rng, &content(), kind);
                assert_ne!(text, truth, "{kind}");
                match kind {
                    NoiseKind::Empty => assert!(text.is_empty()),
                    NoiseKind::VeryLong => assert!(text.split(' ').count() >= 40),
                    NoiseKind::WrongBackground => {
                        assert!(
                            text.contains("red circle") && !text.contains("blue"),
                            "{text}"
                        )
                    }
                    NoiseKind::WrongShape => assert!(
                        text.contains("blue background") && !text.contains("circle"),
                        "{text}"
                    ),
                    NoiseKind::WrongColour => {
                        assert!(text.contains("circle") && !text.contains("red"), "{text}")
                    }
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn web_styles_mention_every_colour_and_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..50 {
            let text = web_style(&mut rng, &content());
            for w in ["red", "circle", "blue"] {
                assert!(text.contains(w), "{text}");
            }
        }
    }

    #[test]
    fn noise_mix_parses_and_rejects_bad_input() {
        let mix: NoiseMix = "unrelated=1, empty=0".parse().expect("valid");
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..100 {
            assert_eq!(mix.pick(&mut rng), NoiseKind::Unrelated);
        }
        for bad in [
            "",
            "unrelated",
            "nonsense=1",
            "empty=-1",
            "empty=0",
            "empty=1,empty=2",
        ] {
            assert!(bad.parse::<NoiseMix>().is_err(), "{bad}");
        }
    }
}
