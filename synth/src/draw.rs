//! Rasterises a [`Scene`] into an RGB8 buffer.

use crate::scene::{Colour, Scene, Shape, ShapeKind};

/// Renders `scene` as tightly packed RGB8 rows (`width * height * 3` bytes).
pub fn render(scene: &Scene) -> Vec<u8> {
    let (w, h) = (scene.width as usize, scene.height as usize);
    let mut pixels = vec![0u8; w * h * 3];
    let bg = tinted(scene.background, scene.jitter);
    let [lx, ly, strength] = scene.light;
    let diag = ((w * w + h * h) as f32).sqrt().max(1.0);
    for y in 0..h {
        let row = &mut pixels[y * w * 3..(y + 1) * w * 3];
        for x in 0..w {
            // A gentle linear lighting gradient across the image.
            let t = ((x as f32 - w as f32 / 2.0) * lx + (y as f32 - h as f32 / 2.0) * ly) / diag;
            let f = 1.0 + strength * t * 2.0;
            for c in 0..3 {
                row[x * 3 + c] = (bg[c] * f).clamp(0.0, 255.0) as u8;
            }
        }
    }
    for shape in &scene.shapes {
        fill_shape(&mut pixels, w, h, shape, tinted(shape.colour, scene.jitter));
    }
    pixels
}

fn tinted(colour: Colour, jitter: [i16; 3]) -> [f32; 3] {
    let rgb = colour.rgb();
    [0, 1, 2].map(|c| (rgb[c] as i16 + jitter[c]).clamp(0, 255) as f32)
}

fn fill_shape(pixels: &mut [u8], w: usize, h: usize, shape: &Shape, rgb: [f32; 3]) {
    let r = shape.radius;
    let polygon = polygon_of(shape.kind, r);
    let x0 = (shape.cx - r).floor().max(0.0) as usize;
    let x1 = ((shape.cx + r).ceil() as usize).min(w);
    let y0 = (shape.cy - r).floor().max(0.0) as usize;
    let y1 = ((shape.cy + r).ceil() as usize).min(h);
    let colour = rgb.map(|v| v as u8);
    for y in y0..y1 {
        let dy = y as f32 + 0.5 - shape.cy;
        for x in x0..x1 {
            let dx = x as f32 + 0.5 - shape.cx;
            let inside = match shape.kind {
                ShapeKind::Circle => dx * dx + dy * dy <= r * r,
                ShapeKind::Square => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                ShapeKind::Diamond => dx.abs() + dy.abs() <= r,
                ShapeKind::Cross => {
                    let arm = r / 3.0;
                    (dx.abs() <= arm && dy.abs() <= r) || (dy.abs() <= arm && dx.abs() <= r)
                }
                ShapeKind::Triangle | ShapeKind::Star | ShapeKind::Hexagon => {
                    point_in_polygon(&polygon, dx, dy)
                }
            };
            if inside {
                let i = (y * w + x) * 3;
                pixels[i..i + 3].copy_from_slice(&colour);
            }
        }
    }
}

/// Vertices (relative to the centre, y down) of the polygon shapes; empty for the others.
fn polygon_of(kind: ShapeKind, r: f32) -> Vec<(f32, f32)> {
    use std::f32::consts::{FRAC_PI_2, PI};
    let ring = |n: usize, radius: &dyn Fn(usize) -> f32, offset: f32| -> Vec<(f32, f32)> {
        (0..n)
            .map(|i| {
                let a = offset + 2.0 * PI * i as f32 / n as f32;
                (radius(i) * a.cos(), radius(i) * a.sin())
            })
            .collect()
    };
    match kind {
        ShapeKind::Triangle => ring(3, &|_| r, -FRAC_PI_2),
        ShapeKind::Hexagon => ring(6, &|_| r, 0.0),
        ShapeKind::Star => ring(10, &|i| if i % 2 == 0 { r } else { r * 0.45 }, -FRAC_PI_2),
        _ => Vec::new(),
    }
}

/// Even-odd rule.
fn point_in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len().wrapping_sub(1);
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Shape;

    fn scene(kind: ShapeKind) -> Scene {
        Scene {
            width: 100,
            height: 80,
            background: Colour::Blue,
            light: [1.0, 0.0, 0.0],
            jitter: [0, 0, 0],
            shapes: vec![Shape {
                kind,
                colour: Colour::Red,
                cx: 50.0,
                cy: 40.0,
                radius: 30.0,
            }],
        }
    }

    fn px(buf: &[u8], w: usize, x: usize, y: usize) -> [u8; 3] {
        let i = (y * w + x) * 3;
        [buf[i], buf[i + 1], buf[i + 2]]
    }

    #[test]
    fn every_shape_covers_its_centre_and_leaves_corners_to_the_background() {
        for kind in ShapeKind::ALL {
            let buf = render(&scene(kind));
            assert_eq!(buf.len(), 100 * 80 * 3);
            assert_eq!(px(&buf, 100, 50, 40), Colour::Red.rgb(), "{kind:?} centre");
            assert_eq!(px(&buf, 100, 0, 0), Colour::Blue.rgb(), "{kind:?} corner");
        }
    }

    #[test]
    fn shapes_differ_in_what_they_cover() {
        let area = |k| {
            render(&scene(k))
                .chunks(3)
                .filter(|p| *p == Colour::Red.rgb())
                .count()
        };
        let circle = area(ShapeKind::Circle) as f32;
        // pi * 30^2 = 2827
        assert!((circle - 2827.0).abs() < 60.0, "{circle}");
        assert!(area(ShapeKind::Star) < area(ShapeKind::Hexagon));
        assert!(area(ShapeKind::Triangle) < area(ShapeKind::Square));
    }
}
