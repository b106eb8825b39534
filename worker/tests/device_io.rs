//! Device-resident decoding (IoBinding, device row gathers) against the reference path that
//! copies the decoding state through host arrays at every step: on the CPU provider both run
//! the same kernels on the same bytes, so captions (greedy, nucleus, beam: every token id) and
//! ITM/ITC scores must be identical, not merely close.

mod common;

use capfilt_worker::captioner::{SeedBase, stack_pixels};
use capfilt_worker::{Captioner, Decoding, Filter, GenerationParams, SessionOptions};
use common::*;
use ndarray::Array4;

fn host_options() -> SessionOptions {
    SessionOptions {
        host_decoding: true,
        ..options()
    }
}

/// The golden images (benchmark images and real photos), preprocessed for `size`.
fn images(bundle: &capfilt_worker::Bundle) -> Array4<f32> {
    let pixels = golden_pixels(&bundle.manifest.preprocessing);
    let s = bundle.manifest.preprocessing.image_size as usize;
    stack_pixels(&pixels.iter().map(Vec::as_slice).collect::<Vec<_>>(), s).expect("stack")
}

#[test]
fn device_resident_captions_equal_the_host_path_token_for_token() {
    let bundle = seed_bundle("captioner");
    let mut bound = Captioner::load(runtime(), &bundle, &options()).expect("bound captioner");
    let mut host = Captioner::load(runtime(), &bundle, &host_options()).expect("host captioner");
    assert!(bound.device_resident() && !host.device_resident());
    let pixels = images(&bundle);
    let keys: Vec<String> = (0..pixels.shape()[0]).map(|i| format!("img-{i}")).collect();
    let seeds: Vec<SeedBase<'_>> = keys.iter().map(|k| SeedBase { key: k, round: 2 }).collect();
    let defaults = bound.defaults().clone();
    for (decoding, candidates) in [
        (Decoding::Greedy, 1),
        (Decoding::Nucleus, 3),
        (Decoding::Beam, 2),
    ] {
        let params = GenerationParams {
            decoding,
            candidates,
            ..defaults.clone()
        };
        let a = bound
            .generate(pixels.view(), &seeds, &params)
            .expect("bound generate");
        let b = host
            .generate(pixels.view(), &seeds, &params)
            .expect("host generate");
        assert_eq!(a.len(), b.len());
        let mut lengths = std::collections::BTreeSet::new();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "{decoding:?}, image {i}");
            lengths.extend(x.iter().map(|c| c.ids.len()));
        }
        // Rows finished at different steps, so rows left the batch and the state was gathered.
        assert!(
            lengths.len() > 1,
            "{decoding:?}: every caption had one length"
        );
    }
    assert_eq!(bound.steps_run, host.steps_run);
    assert_eq!(bound.rows_stepped, host.rows_stepped);
}

#[test]
fn device_resident_itm_scores_equal_the_host_path_bit_for_bit() {
    let bundle = seed_bundle("filter");
    let mut bound = Filter::load(runtime(), &bundle, &options()).expect("bound filter");
    let mut host = Filter::load(runtime(), &bundle, &host_options()).expect("host filter");
    let pixels = images(&bundle);
    let n = pixels.shape()[0];
    let texts = [
        "a red circle on a blue background",
        "logo",
        "a green star and a yellow square on a black background",
        "",
        "free hd wallpaper download cheap design art",
    ];
    // Pairs in a mixed order and an odd batch size: each ITM batch gathers arbitrary rows.
    let pairs: Vec<(usize, &str)> = (0..3 * n)
        .map(|k| ((k * 7) % n, texts[k % texts.len()]))
        .collect();
    let a = bound.image_embeds(pixels.view()).expect("bound embeds");
    let b = host.image_embeds(pixels.view()).expect("host embeds");
    assert!(matches!(a, capfilt_worker::ImageEmbeds::Device(..)));
    assert!(matches!(b, capfilt_worker::ImageEmbeds::Host(..)));
    let x = bound.score(&a, &pairs, 5).expect("bound score");
    let y = host.score(&b, &pairs, 5).expect("host score");
    assert_eq!(x.len(), pairs.len());
    for (i, (p, q)) in x.iter().zip(&y).enumerate() {
        assert_eq!(p.itm_prob.to_bits(), q.itm_prob.to_bits(), "pair {i}");
        assert_eq!(p.itc_sim.to_bits(), q.itc_sim.to_bits(), "pair {i}");
    }
    let e = bound.score(&a, &[(n, "x")], 5).expect_err("out of range");
    assert!(e.to_string().contains("image"), "{e}");
}
