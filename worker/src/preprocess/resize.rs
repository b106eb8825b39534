//! Pillow's resampling, reimplemented so that a capfilt worker feeds the model the same pixels
//! as HF's `BlipImageProcessor` (which resizes with `PIL.Image.resize`).
//!
//! Mirrors `libImaging/Resample.c` for 8-bit images: separable convolution with the filter's
//! support widened by the scale factor when downscaling (antialiasing), coefficients normalised
//! and turned into 22-bit fixed point, two passes (the one giving the smaller intermediate image
//! first, as Pillow 13 does) each rounding and clamping to 0..=255.
//! With the same input pixels the output is bit-identical to Pillow's.

/// A resampling filter: its support (half-width, in input pixels at scale 1) and kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Keys' cubic convolution with a = -0.5, Pillow's `BICUBIC`.
    Bicubic,
    /// Triangle filter, Pillow's `BILINEAR`.
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point coefficients of one pass: for each output pixel, the first input pixel and the
/// weights of the input pixels it reads.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut row = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates towards zero with a C cast after adding 0.5.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, w) in row.iter_mut().enumerate().take(count) {
            *w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *w;
        }
        let k = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..count {
            let w = if total != 0.0 { row[x] / total } else { row[x] };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            k[x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i64) -> u8 {
    let shifted = v >> PRECISION_BITS;
    shifted.clamp(0, 255) as u8
}

/// Resizes a packed RGB8 image (`width * height * 3` bytes) to `out_w x out_h`, as Pillow's
/// `Image.resize((out_w, out_h), filter)` does for an `RGB` image. Like Pillow (13), the pass
/// with the smaller intermediate image runs first: vertical first when
/// `width * out_h < out_w * height`, horizontal first otherwise (ties included).
pub fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height * 3);
    let need_h = out_w != width;
    let need_v = out_h != height;
    match (need_h, need_v) {
        (false, false) => src.to_vec(),
        (true, false) => horizontal(src, width, height, out_w, filter),
        (false, true) => vertical(src, width, height, out_h, filter),
        (true, true) => {
            if width * out_h < out_w * height {
                let tmp = vertical(src, width, height, out_h, filter);
                horizontal(&tmp, width, out_h, out_w, filter)
            } else {
                let tmp = horizontal(src, width, height, out_w, filter);
                vertical(&tmp, out_w, height, out_h, filter)
            }
        }
    }
}

fn horizontal(src: &[u8], width: usize, height: usize, out_w: usize, filter: Filter) -> Vec<u8> {
    let c = coefficients(width, out_w, filter);
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_w * height * 3];
    for y in 0..height {
        let line = &src[y * width * 3..(y + 1) * width * 3];
        let dst = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
        for (xx, &(xmin, count)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + count];
            let (mut r, mut g, mut b) = (half, half, half);
            for (i, &w) in k.iter().enumerate() {
                let p = (xmin + i) * 3;
                let w = i64::from(w);
                r += i64::from(line[p]) * w;
                g += i64::from(line[p + 1]) * w;
                b += i64::from(line[p + 2]) * w;
            }
            dst[xx * 3] = clip8(r);
            dst[xx * 3 + 1] = clip8(g);
            dst[xx * 3 + 2] = clip8(b);
        }
    }
    out
}

fn vertical(src: &[u8], width: usize, height: usize, out_h: usize, filter: Filter) -> Vec<u8> {
    let c = coefficients(height, out_h, filter);
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; width * out_h * 3];
    for (yy, &(ymin, count)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + count];
        let dst = &mut out[yy * width * 3..(yy + 1) * width * 3];
        for (x, px) in dst.chunks_exact_mut(3).enumerate() {
            let (mut r, mut g, mut b) = (half, half, half);
            for (i, &w) in k.iter().enumerate() {
                let p = ((ymin + i) * width + x) * 3;
                let w = i64::from(w);
                r += i64::from(src[p]) * w;
                g += i64::from(src[p + 1]) * w;
                b += i64::from(src[p + 2]) * w;
            }
            px[0] = clip8(r);
            px[1] = clip8(g);
            px[2] = clip8(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 96), (96, 384), (97, 96), (5, 96)] {
            let c = coefficients(i, o, Filter::Bicubic);
            for (xx, &(_, count)) in c.bounds.iter().enumerate() {
                let sum: i64 = c.weights[xx * c.ksize..xx * c.ksize + count]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= count as i64,
                    "{i}->{o}: {sum}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_identity_is_a_copy() {
        let src = vec![200u8; 50 * 30 * 3];
        let out = resize_rgb8(&src, 50, 30, 96, 96, Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 200));
        let img: Vec<u8> = (0..(7 * 5 * 3)).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&img, 7, 5, 7, 5, Filter::Bicubic), img);
    }

    #[test]
    fn bicubic_overshoot_is_clamped() {
        // A hard black/white edge rings with a cubic kernel; values must stay in 0..=255 and
        // the two sides must keep their extremes.
        let mut src = vec![0u8; 16 * 4 * 3];
        for y in 0..4 {
            for x in 8..16 {
                for c in 0..3 {
                    src[(y * 16 + x) * 3 + c] = 255;
                }
            }
        }
        let out = resize_rgb8(&src, 16, 4, 40, 4, Filter::Bicubic);
        assert_eq!(out[0], 0);
        assert_eq!(out[39 * 3], 255);
    }
}
