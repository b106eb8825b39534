//! Image preprocessing: decode (JPEG, PNG, WebP, GIF first frame, BMP) under size limits,
//! convert to RGB as HF's processor does (Pillow's `convert("RGB")`, alpha composited on white), resize with Pillow's bicubic filter and
//! normalise with the bundle's mean and std into a `[3, S, S]` float tensor.
//!
//! Every failure is a [`Rejected`] with a [`RejectReason`], never a panic: limits on the encoded
//! size and on the decoded pixel count are checked from the header before any pixel buffer is
//! allocated, so a decompression bomb is a `too_large` reject, not an out-of-memory kill.
//!
//! Parity with HF's `BlipImageProcessor` (Pillow): resizing is bit-identical to Pillow's for the
//! same RGB input ([`resize`]); JPEG decoders differ by at most a few levels on some pixels
//! (libjpeg-turbo's and zune-jpeg's IDCT and chroma upsampling), which after normalisation is
//! within 0.1 on a handful of values (see the parity tests). 16-bit images keep their high byte.

pub mod resize;

use std::io::Cursor;

use capfilt_schemas::bundle::{Preprocessing, Resample};
use capfilt_schemas::outputs::RejectReason;
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader};

pub use resize::{Filter, resize_rgb8};

/// Limits applied to every input row: its image, and its caption's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted encoded size, bytes.
    pub max_encoded_bytes: usize,
    /// Largest accepted decoded size, pixels (width x height).
    pub max_pixels: u64,
    /// Smallest accepted side, pixels.
    pub min_side: u32,
    /// Longer captions are cut to this many characters (counted in the shard's
    /// `captions_truncated`).
    pub max_caption_chars: usize,
    /// DCT-domain downscaling of large JPEGs (off by default, which keeps Pillow's pixels):
    /// a JPEG at least twice the models' input size on both sides is decoded at 1/2, 1/4 or
    /// 1/8 scale (the largest that keeps both sides at least that size, Pillow's `draft`
    /// rule) before the bicubic resize. See [`decode_rgb_for`].
    pub jpeg_draft: bool,
}

impl Default for ImageLimits {
    /// 32 MiB encoded, 89.5 Mpx decoded (Pillow's decompression-bomb threshold), 1 px sides,
    /// captions of 1,000 characters.
    fn default() -> Self {
        Self {
            max_encoded_bytes: 32 << 20,
            max_pixels: 89_478_485,
            min_side: 1,
            max_caption_chars: crate::input::DEFAULT_MAX_CAPTION_CHARS,
            jpeg_draft: false,
        }
    }
}

/// Why an image was not turned into model input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejected {
    /// Machine-readable reason (the `reason` column of `rejects/`).
    pub reason: RejectReason,
    /// What exactly went wrong.
    pub message: String,
}

impl Rejected {
    /// A reject with `reason` and `message`.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A decoded image, packed RGB8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    pub data: Vec<u8>,
}

/// Decodes `bytes` into RGB8 under `limits`, at full size.
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, Rejected> {
    decode_rgb_for(bytes, limits, None)
}

/// Decodes `bytes` into RGB8 under `limits` for models whose input is `size` px square: with
/// `limits.jpeg_draft` a large JPEG comes out at a reduced DCT scale, still at least `size`.
pub fn decode_rgb_for(
    bytes: &[u8],
    limits: &ImageLimits,
    size: Option<u32>,
) -> Result<RgbImage, Rejected> {
    if bytes.is_empty() {
        return Err(Rejected::new(
            RejectReason::MissingImage,
            "the image column is empty",
        ));
    }
    if bytes.len() > limits.max_encoded_bytes {
        return Err(Rejected::new(
            RejectReason::TooLarge,
            format!(
                "{} encoded bytes, over the limit of {}",
                bytes.len(),
                limits.max_encoded_bytes
            ),
        ));
    }
    // Image decoders are written for untrusted input, but a panic in one must still only cost
    // this row.
    let limits = *limits;
    let draft_size = size.filter(|_| limits.jpeg_draft);
    std::panic::catch_unwind(|| decode_checked(bytes, &limits, draft_size)).unwrap_or_else(|_| {
        Err(Rejected::new(
            RejectReason::DecodeError,
            "the image decoder panicked on these bytes",
        ))
    })
}

fn decode_checked(
    bytes: &[u8],
    limits: &ImageLimits,
    draft_size: Option<u32>,
) -> Result<RgbImage, Rejected> {
    let decode_err = |e: ImageError| match e {
        ImageError::Limits(l) => Rejected::new(RejectReason::TooLarge, l.to_string()),
        other => Rejected::new(RejectReason::DecodeError, other.to_string()),
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Rejected::new(RejectReason::DecodeError, e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(Rejected::new(
            RejectReason::DecodeError,
            format!(
                "not an image of a supported format (JPEG, PNG, WebP, GIF, BMP); starts with {:02x?}",
                &bytes[..bytes.len().min(8)]
            ),
        ));
    };
    if format == image::ImageFormat::Jpeg && !has_jpeg_end(bytes) {
        // zune-jpeg fills a truncated scan with grey; Pillow (and so the reference) refuses it.
        return Err(Rejected::new(
            RejectReason::DecodeError,
            format!(
                "truncated JPEG: no end-of-image marker in {} bytes",
                bytes.len()
            ),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (w, h) = decoder.dimensions();
    if format == image::ImageFormat::Jpeg
        && let Some(size) = draft_size
        && let Some(factor) = draft_factor(w, h, size)
        && w.min(h) >= limits.min_side
        && u64::from(w) * u64::from(h) <= limits.max_pixels
    {
        let pixels = u64::from(w.div_ceil(factor)) * u64::from(h.div_ceil(factor));
        let _room = decode_budget::reserve(pixels);
        if let Some(image) = draft::decode(bytes, w, h, factor)? {
            return Ok(image);
        }
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(Rejected::new(
            RejectReason::TooLarge,
            format!(
                "{w}x{h} {format:?} image has {pixels} pixels, over the limit of {}",
                limits.max_pixels
            ),
        ));
    }
    if w.min(h) < limits.min_side {
        return Err(Rejected::new(
            RejectReason::TooSmall,
            format!(
                "{w}x{h} image is under the minimum side of {}",
                limits.min_side
            ),
        ));
    }
    // Decoder memory across every decoding thread of the process is bounded: wait for room.
    let _room = decode_budget::reserve(pixels);
    let mut alloc = image::Limits::default();
    // Decoded buffer (up to 16 bytes a pixel) plus decoder working memory.
    alloc.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
    decoder.set_limits(alloc).map_err(decode_err)?;
    let image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    Ok(to_rgb(image))
}

/// The DCT scale denominator (2, 4 or 8) for a `w x h` JPEG going to `size` px, as Pillow's
/// `JpegImageFile.draft`: the largest that keeps both sides at least `size`; `None` for 1.
fn draft_factor(w: u32, h: u32, size: u32) -> Option<u32> {
    let scale = (w / size.max(1)).min(h / size.max(1));
    [8, 4, 2].into_iter().find(|&a| scale >= a)
}

/// Decoding a JPEG at a reduced DCT scale (jpeg-decoder's scaled IDCT).
mod draft {
    use super::{RejectReason, Rejected, RgbImage};

    fn scaled(len: u32, factor: u32) -> u16 {
        u16::try_from(len.div_ceil(factor)).unwrap_or(u16::MAX)
    }

    /// The image at `1/factor` scale, or `None` when its colour space is not RGB or grey (the
    /// full decode then handles it).
    pub(super) fn decode(
        bytes: &[u8],
        w: u32,
        h: u32,
        factor: u32,
    ) -> Result<Option<RgbImage>, Rejected> {
        let bad = |e: jpeg_decoder::Error| Rejected::new(RejectReason::DecodeError, e.to_string());
        let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
        // jpeg-decoder picks the smallest scale whose size reaches the request on either side;
        // asking for exactly the 1/factor size makes it pick 1/factor.
        let (sw, sh) = decoder
            .scale(scaled(w, factor), scaled(h, factor))
            .map_err(bad)?;
        let data = decoder.decode().map_err(bad)?;
        let Some(info) = decoder.info() else {
            return Ok(None);
        };
        let (width, height) = (u32::from(sw), u32::from(sh));
        let data = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => data,
            jpeg_decoder::PixelFormat::L8 => data.iter().flat_map(|&v| [v, v, v]).collect(),
            _ => return Ok(None),
        };
        if data.len() != (width * height * 3) as usize {
            return Ok(None);
        }
        Ok(Some(RgbImage {
            width,
            height,
            data,
        }))
    }
}

/// Whether the JPEG has an end-of-image marker after its last start of scan. Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an FF D9
/// after the last scan is the real end, however many bytes trail it (Pillow ignores trailing
/// bytes too); an EXIF thumbnail's scan and end marker come before the main image's scans,
/// so a main image cut short is caught even when its thumbnail is whole.
///
/// Checked as "there is a start of scan, and the last end marker comes after the last start of
/// scan": the backward search stops at the end marker, normally the last two bytes, and the
/// forward one at the first scan, after the headers; a backward scan of the whole file for its
/// last start of scan cost 4% of the decode of a 70 KB photo.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let Some(eoi) = memchr::memmem::rfind(bytes, &[0xff, 0xd9]) else {
        return false;
    };
    memchr::memmem::find(&bytes[..eoi], &[0xff, 0xda]).is_some()
        && memchr::memmem::find(&bytes[eoi + 2..], &[0xff, 0xda]).is_none()
}

/// RGB8 the way HF's `BlipImageProcessor` makes it (`convert_to_rgb`): an image with an alpha
/// channel is composited onto white with Pillow's `alpha_composite` arithmetic, grey is
/// replicated (Pillow's `convert("RGB")`), 16-bit channels keep their high byte.
pub fn to_rgb(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let data = match image {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        DynamicImage::ImageRgba8(buf) => buf
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                [
                    on_white(p[0], p[3]),
                    on_white(p[1], p[3]),
                    on_white(p[2], p[3]),
                ]
            })
            .collect(),
        DynamicImage::ImageLuma8(buf) => buf.into_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        DynamicImage::ImageLumaA8(buf) => buf
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = on_white(p[0], p[1]);
                [v, v, v]
            })
            .collect(),
        DynamicImage::ImageRgb16(buf) => buf.into_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(buf) => buf
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = (p[3] >> 8) as u8;
                [
                    on_white((p[0] >> 8) as u8, a),
                    on_white((p[1] >> 8) as u8, a),
                    on_white((p[2] >> 8) as u8, a),
                ]
            })
            .collect(),
        DynamicImage::ImageLuma16(buf) => buf
            .into_raw()
            .iter()
            .flat_map(|&v| {
                let b = (v >> 8) as u8;
                [b, b, b]
            })
            .collect(),
        DynamicImage::ImageLumaA16(buf) => buf
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = on_white((p[0] >> 8) as u8, (p[1] >> 8) as u8);
                [v, v, v]
            })
            .collect(),
        other => {
            let rgba = other.to_rgba8();
            return to_rgb(DynamicImage::ImageRgba8(rgba));
        }
    };
    RgbImage {
        width,
        height,
        data,
    }
}

/// One channel of Pillow's `alpha_composite(white, pixel)` (libImaging/AlphaComposite.c, 7-bit
/// precision): with an opaque white destination the blend is `c*a + 255*(255-a)` over 255.
#[inline]
fn on_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let (c, a) = (u32::from(c), u32::from(a));
    let coef1 = a << PRECISION_BITS;
    let coef2 = (255 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS).min(255) as u8
}

/// Resizes to the bundle's square size and normalises into `out` (`3 * S * S` floats, CHW).
pub fn pixel_values_into(image: &RgbImage, p: &Preprocessing, out: &mut [f32]) {
    let size = p.image_size as usize;
    let filter = match p.resample {
        Resample::Bicubic => Filter::Bicubic,
        Resample::Bilinear => Filter::Bilinear,
    };
    let resized = resize_rgb8(
        &image.data,
        image.width as usize,
        image.height as usize,
        size,
        size,
        filter,
    );
    let plane = size * size;
    debug_assert_eq!(out.len(), 3 * plane);
    normalise_planes(&resized, p, out);
}

/// Packed RGB8 pixels into three normalised planes, `(v * rescale - mean) / std` per channel in
/// f32 (HF's order of operations), in one pass that vectorises (for 8 lanes on x86-64 CPUs with
/// AVX2, checked at run time, like the resize).
fn normalise_planes(rgb: &[u8], p: &Preprocessing, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above; the function only differs from
        // `normalise_planes_impl` in the instructions the compiler may use.
        return unsafe { normalise_planes_avx2(rgb, p, out) };
    }
    normalise_planes_impl(rgb, p, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn normalise_planes_avx2(rgb: &[u8], p: &Preprocessing, out: &mut [f32]) {
    normalise_planes_impl(rgb, p, out);
}

#[inline(always)]
fn normalise_planes_impl(rgb: &[u8], p: &Preprocessing, out: &mut [f32]) {
    let plane = rgb.len() / 3;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let f = p.rescale_factor;
    let [(m0, s0), (m1, s1), (m2, s2)] = [0, 1, 2].map(|c| (p.mean[c], p.std[c]));
    for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = (f32::from(px[0]) * f - m0) / s0;
        *g = (f32::from(px[1]) * f - m1) / s1;
        *b = (f32::from(px[2]) * f - m2) / s2;
    }
}

/// [`pixel_values_into`] into a new vector.
pub fn pixel_values(image: &RgbImage, p: &Preprocessing) -> Vec<f32> {
    let size = p.image_size as usize;
    let mut out = vec![0.0; 3 * size * size];
    pixel_values_into(image, p, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_main_image_cut_short_is_caught_even_with_a_whole_thumbnail() {
        // SOI, APP1 with a thumbnail (its own SOS ... EOI), then the main image's SOS and scan.
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe1, 0x00, 0x10];
        jpeg.extend([0xff, 0xd8, 0xff, 0xda, 1, 2, 3, 0xff, 0xd9]);
        jpeg.extend([0xff, 0xda, 0x00, 0x08, 9, 9, 9, 9, 0xff, 0x00, 7]);
        assert!(!has_jpeg_end(&jpeg), "main scan without its end marker");
        jpeg.extend([0xff, 0xd9, b'x', b'y']);
        assert!(has_jpeg_end(&jpeg), "complete, with trailing bytes");
        assert!(!has_jpeg_end(&[0xff, 0xd8, 0xff, 0xd9]), "no scan at all");
        assert!(
            !has_jpeg_end(&[0xff, 0xd8, 0xff, 0xda, 1, 2]),
            "no end marker at all"
        );
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .expect("encode");
        buf
    }

    #[test]
    fn grey_and_alpha_convert_like_hf() {
        let grey = image::GrayImage::from_pixel(3, 2, image::Luma([77]));
        let rgb = decode_rgb(&png(grey.into()), &ImageLimits::default()).expect("decode");
        assert_eq!((rgb.width, rgb.height), (3, 2));
        assert!(rgb.data.chunks(3).all(|p| p == [77, 77, 77]));
        // Transparent pixels become white, opaque ones keep their colour (HF's convert_to_rgb).
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0]));
        let rgb = decode_rgb(&png(rgba.into()), &ImageLimits::default()).expect("decode");
        assert!(rgb.data.chunks(3).all(|p| p == [255, 255, 255]));
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 255]));
        let rgb = decode_rgb(&png(rgba.into()), &ImageLimits::default()).expect("decode");
        assert!(rgb.data.chunks(3).all(|p| p == [10, 20, 30]));
    }

    #[test]
    fn rejects_carry_their_reasons() {
        let limits = ImageLimits::default();
        assert_eq!(
            decode_rgb(b"", &limits).expect_err("empty").reason,
            RejectReason::MissingImage
        );
        assert_eq!(
            decode_rgb(b"definitely not an image", &limits)
                .expect_err("garbage")
                .reason,
            RejectReason::DecodeError
        );
        let mut truncated = png(image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])).into());
        truncated.truncate(truncated.len() / 2);
        assert_eq!(
            decode_rgb(&truncated, &limits)
                .expect_err("truncated")
                .reason,
            RejectReason::DecodeError
        );
        let small = png(image::RgbImage::from_pixel(4, 40, image::Rgb([1, 2, 3])).into());
        let strict = ImageLimits {
            min_side: 8,
            ..limits
        };
        assert_eq!(
            decode_rgb(&small, &strict).expect_err("small").reason,
            RejectReason::TooSmall
        );
        let tight = ImageLimits {
            max_encoded_bytes: 10,
            ..limits
        };
        assert_eq!(
            decode_rgb(&small, &tight).expect_err("bytes").reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn a_decompression_bomb_is_rejected_from_its_header() {
        // A 30000 x 30000 PNG header (900 Mpx) in a few hundred bytes: rejected before any
        // pixel buffer exists.
        let mut bomb = Vec::new();
        {
            let mut enc = png_header_only(30_000, 30_000);
            bomb.append(&mut enc);
        }
        let err = decode_rgb(&bomb, &ImageLimits::default()).expect_err("bomb");
        assert_eq!(err.reason, RejectReason::TooLarge, "{err}");
        assert!(err.message.contains("30000x30000"), "{err}");
    }

    fn png_header_only(w: u32, h: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend(data);
            out.extend(&body);
            out.extend(crc32(&body).to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn jpeg_draft_follows_pillows_rule_and_stays_close_to_the_exact_path() {
        assert_eq!(draft_factor(1000, 700, 96), Some(4));
        assert_eq!(draft_factor(1000, 200, 96), Some(2));
        assert_eq!(draft_factor(800, 800, 96), Some(8));
        assert_eq!(draft_factor(191, 1000, 96), None);
        assert_eq!(draft_factor(1000, 700, 384), None);
        // A smooth 4:2:0 JPEG of 800x600: decoded at 1/4 (200x150) with draft on.
        let mut img = image::RgbImage::new(800, 600);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 6) as u8]);
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .expect("encode");
        let exact = decode_rgb(&jpeg, &ImageLimits::default()).expect("exact");
        let draft_limits = ImageLimits {
            jpeg_draft: true,
            ..ImageLimits::default()
        };
        assert_eq!(
            decode_rgb(&jpeg, &draft_limits).expect("full").width,
            800,
            "no size, no draft"
        );
        let draft = decode_rgb_for(&jpeg, &draft_limits, Some(96)).expect("draft");
        assert_eq!((exact.width, exact.height), (800, 600));
        assert_eq!((draft.width, draft.height), (200, 150));
        let p = Preprocessing::blip(96);
        let (a, b) = (pixel_values(&exact, &p), pixel_values(&draft, &p));
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(max < 0.1, "draft differs by {max} from the exact path");
        // Limits still apply to the full size.
        let tiny = ImageLimits {
            max_pixels: 1000,
            ..draft_limits
        };
        assert_eq!(
            decode_rgb_for(&jpeg, &tiny, Some(96))
                .expect_err("too large")
                .reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn normalisation_uses_the_bundle_mean_and_std() {
        let img = RgbImage {
            width: 2,
            height: 2,
            data: vec![255; 12],
        };
        let p = Preprocessing::blip(2);
        let px = pixel_values(&img, &p);
        for c in 0..3 {
            let want = (1.0 - p.mean[c]) / p.std[c];
            assert!((px[c * 4] - want).abs() < 1e-6);
        }
    }

    #[test]
    fn vectorised_normalisation_equals_scalar_f32_for_every_value() {
        // Every byte value in every channel, in an odd pixel count (a remainder past the lanes).
        let rgb: Vec<u8> = (0..3 * 257).map(|i| (i * 7 % 256) as u8).collect();
        let p = Preprocessing::blip(4);
        let mut out = vec![0f32; rgb.len()];
        normalise_planes(&rgb, &p, &mut out);
        let plane = rgb.len() / 3;
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let want = (f32::from(px[c]) * p.rescale_factor - p.mean[c]) / p.std[c];
                assert_eq!(
                    out[c * plane + i].to_bits(),
                    want.to_bits(),
                    "pixel {i} channel {c}"
                );
            }
        }
    }
}

/// A process-wide bound on the pixels being decoded at once, over every thread and every
/// shard: without it, N decoding threads that meet N images at the pixel limit hold N times
/// the largest decoded buffer. An image larger than the whole budget waits until it can
/// decode alone.
pub mod decode_budget {
    use std::sync::{Condvar, Mutex};

    /// Pixels that may be decoded at once: 256 Mpx (1 to 4 GiB of decoder buffers).
    pub const DEFAULT_PIXELS: u64 = 256 << 20;

    struct Budget {
        in_use: Mutex<u64>,
        freed: Condvar,
    }

    static BUDGET: Budget = Budget {
        in_use: Mutex::new(0),
        freed: Condvar::new(),
    };

    /// Room for `pixels` until dropped.
    #[derive(Debug)]
    pub struct Room(u64);

    /// Waits until `pixels` (at most the whole budget) fit, and takes them.
    pub fn reserve(pixels: u64) -> Room {
        let want = pixels.min(DEFAULT_PIXELS);
        let mut in_use = BUDGET.in_use.lock().unwrap_or_else(|p| p.into_inner());
        while *in_use + want > DEFAULT_PIXELS {
            in_use = BUDGET.freed.wait(in_use).unwrap_or_else(|p| p.into_inner());
        }
        *in_use += want;
        Room(want)
    }

    /// Pixels reserved right now.
    pub fn in_use() -> u64 {
        *BUDGET.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl Drop for Room {
        fn drop(&mut self) {
            let mut in_use = BUDGET.in_use.lock().unwrap_or_else(|p| p.into_inner());
            *in_use -= self.0;
            BUDGET.freed.notify_all();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decoding_threads_never_hold_more_than_the_budget() {
            let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let peak = peak.clone();
                    std::thread::spawn(move || {
                        for _ in 0..20 {
                            let _room = reserve(DEFAULT_PIXELS / 3);
                            peak.fetch_max(in_use(), std::sync::atomic::Ordering::SeqCst);
                            std::thread::yield_now();
                        }
                        // Larger than the budget: decodes alone.
                        let _alone = reserve(DEFAULT_PIXELS * 4);
                        peak.fetch_max(in_use(), std::sync::atomic::Ordering::SeqCst);
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
            // (Other tests decode in this process too: the bound holds for all of them.)
            assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= DEFAULT_PIXELS);
        }
    }
}
