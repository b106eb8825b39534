//! Scenes of the benchmark: one or two coloured shapes on a coloured background, and the
//! canonical caption that describes a scene exactly.

use rand::Rng;
use rand::seq::IndexedRandom;

/// Named colours with their base RGB (each image jitters them slightly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// red
    Red,
    /// green
    Green,
    /// blue
    Blue,
    /// yellow
    Yellow,
    /// orange
    Orange,
    /// purple
    Purple,
    /// pink
    Pink,
    /// brown
    Brown,
    /// black
    Black,
    /// white
    White,
    /// gray
    Gray,
    /// cyan
    Cyan,
}

impl Colour {
    /// Every colour.
    pub const ALL: [Colour; 12] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Orange,
        Colour::Purple,
        Colour::Pink,
        Colour::Brown,
        Colour::Black,
        Colour::White,
        Colour::Gray,
        Colour::Cyan,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::Brown => "brown",
            Colour::Black => "black",
            Colour::White => "white",
            Colour::Gray => "gray",
            Colour::Cyan => "cyan",
        }
    }

    /// Base RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [40, 165, 60],
            Colour::Blue => [40, 80, 215],
            Colour::Yellow => [240, 220, 45],
            Colour::Orange => [245, 140, 25],
            Colour::Purple => [125, 50, 175],
            Colour::Pink => [245, 155, 200],
            Colour::Brown => [125, 80, 40],
            Colour::Black => [20, 20, 20],
            Colour::White => [245, 245, 245],
            Colour::Gray => [128, 128, 128],
            Colour::Cyan => [40, 205, 220],
        }
    }
}

/// Shape kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    /// circle
    Circle,
    /// square
    Square,
    /// triangle
    Triangle,
    /// diamond
    Diamond,
    /// star
    Star,
    /// cross
    Cross,
    /// hexagon
    Hexagon,
}

impl ShapeKind {
    /// Every shape.
    pub const ALL: [ShapeKind; 7] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Diamond,
        ShapeKind::Star,
        ShapeKind::Cross,
        ShapeKind::Hexagon,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Diamond => "diamond",
            ShapeKind::Star => "star",
            ShapeKind::Cross => "cross",
            ShapeKind::Hexagon => "hexagon",
        }
    }
}

/// One shape of a scene, placed in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Kind.
    pub kind: ShapeKind,
    /// Colour.
    pub colour: Colour,
    /// Centre x, pixels.
    pub cx: f32,
    /// Centre y, pixels.
    pub cy: f32,
    /// Radius (half the extent), pixels.
    pub radius: f32,
}

/// A generated scene: image size, background, lighting and one or two shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Background colour.
    pub background: Colour,
    /// Direction (unit vector) and strength of a gentle lighting gradient.
    pub light: [f32; 3],
    /// Per-image colour jitter added to every base RGB value.
    pub jitter: [i16; 3],
    /// The shapes, left to right.
    pub shapes: Vec<Shape>,
}

/// The (colour, shape) content of a scene, which is what captions describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Background colour.
    pub background: Colour,
    /// (colour, kind) of each shape, left to right.
    pub shapes: Vec<(Colour, ShapeKind)>,
}

impl Scene {
    /// Draws a random scene with sides in `[min_side, max_side]`.
    pub fn random<R: Rng>(rng: &mut R, min_side: u32, max_side: u32) -> Self {
        // Web photos are mostly between 1:2 and 2:1; squashed further, a 96 px model input
        // would leave a shape only a patch wide.
        let width = rng.random_range(min_side..=max_side);
        let ratio = rng
            .random_range(-std::f32::consts::LN_2..=std::f32::consts::LN_2)
            .exp();
        let height = ((width as f32 * ratio).round() as u32).clamp(min_side, max_side);
        let background = *Colour::ALL.choose(rng).unwrap_or(&Colour::Gray);
        let two = rng.random_bool(0.35);
        let mut content: Vec<(Colour, ShapeKind)> = Vec::with_capacity(2);
        while content.len() < if two { 2 } else { 1 } {
            let colour = *Colour::ALL.choose(rng).unwrap_or(&Colour::Red);
            let kind = *ShapeKind::ALL.choose(rng).unwrap_or(&ShapeKind::Circle);
            if colour != background && !content.contains(&(colour, kind)) {
                content.push((colour, kind));
            }
        }
        let (w, h) = (width as f32, height as f32);
        let n = content.len() as f32;
        let shapes = content
            .into_iter()
            .enumerate()
            .map(|(i, (colour, kind))| {
                // Each shape gets its own vertical band of the image so two never overlap.
                let band = w / n;
                let max_r = (band.min(h) * 0.45).max(4.0);
                let radius = rng.random_range(max_r * 0.55..=max_r);
                let cx_lo = band * i as f32 + radius;
                let cx_hi = (band * (i + 1) as f32 - radius).max(cx_lo);
                let cy_hi = (h - radius).max(radius);
                Shape {
                    kind,
                    colour,
                    cx: rng.random_range(cx_lo..=cx_hi),
                    cy: rng.random_range(radius..=cy_hi),
                    radius,
                }
            })
            .collect();
        let angle = rng.random_range(0.0..std::f32::consts::TAU);
        let strength = rng.random_range(0.0..0.12);
        let mut jitter = [0i16; 3];
        for j in &mut jitter {
            *j = rng.random_range(-12..=12);
        }
        Self {
            width,
            height,
            background,
            light: [angle.cos(), angle.sin(), strength],
            jitter,
            shapes,
        }
    }

    /// What the scene shows.
    pub fn content(&self) -> Content {
        Content {
            background: self.background,
            shapes: self.shapes.iter().map(|s| (s.colour, s.kind)).collect(),
        }
    }
}

impl Content {
    /// The canonical caption: `a red circle on a blue background`, or with two shapes
    /// `a red circle and a green star on a blue background`.
    pub fn caption(&self) -> String {
        let things: Vec<String> = self
            .shapes
            .iter()
            .map(|(c, k)| format!("{} {} {}", article(c.name()), c.name(), k.name()))
            .collect();
        let bg = self.background.name();
        format!(
            "{} on {} {bg} background",
            things.join(" and "),
            article(bg)
        )
    }
}

/// `an` before a vowel (`an orange star`), else `a`.
pub fn article(next_word: &str) -> &'static str {
    match next_word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn scenes_respect_size_bounds_and_keep_shapes_inside() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let s = Scene::random(&mut rng, 64, 640);
            assert!((64..=640).contains(&s.width) && (64..=640).contains(&s.height));
            assert!(!s.shapes.is_empty() && s.shapes.len() <= 2);
            for sh in &s.shapes {
                assert_ne!(sh.colour, s.background);
                assert!(sh.cx - sh.radius >= -0.5 && sh.cx + sh.radius <= s.width as f32 + 0.5);
                assert!(sh.cy - sh.radius >= -0.5 && sh.cy + sh.radius <= s.height as f32 + 0.5);
            }
        }
    }

    #[test]
    fn canonical_caption_names_every_shape_and_the_background() {
        let c = Content {
            background: Colour::Blue,
            shapes: vec![
                (Colour::Red, ShapeKind::Circle),
                (Colour::Green, ShapeKind::Star),
            ],
        };
        assert_eq!(
            c.caption(),
            "a red circle and a green star on a blue background"
        );
        let c = Content {
            background: Colour::Orange,
            shapes: vec![(Colour::Orange, ShapeKind::Star)],
        };
        assert_eq!(c.caption(), "an orange star on an orange background");
    }
}
