//! The device's shared engine: chunks of several callers (a worker's slots, each on its own
//! shard) are batched together and each caller gets exactly the results the engine gives its
//! own images; chunks of other step parameters are never mixed into a batch.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use capfilt_worker::engine::{PreparedImage, StepTimings};
use capfilt_worker::{
    Decoding, Engine, EngineHub, GenerationParams, Judged, StepParams, StepRunner,
};
use common::*;

fn engine(round: u32) -> Engine {
    let cap = seed_bundle("captioner");
    let fil = seed_bundle("filter");
    let params = StepParams {
        round,
        ..engine_params()
    };
    Engine::load(runtime(), &cap, &fil, &options(), params).expect("engine")
}

/// Twelve images (the golden ones, repeated under other keys) in chunks of three per caller.
fn chunks(caller: usize) -> Vec<Vec<PreparedImage>> {
    let images = golden_pixels(&seed_bundle("captioner").manifest.preprocessing);
    (0..4)
        .map(|c| {
            (0..3)
                .map(|i| {
                    let n = c * 3 + i;
                    PreparedImage {
                        key: format!("caller{caller}-img{n}"),
                        web_text: Some("a red circle on a blue background".into()),
                        captioner_pixels: images[n % images.len()].clone(),
                        filter_pixels: None,
                    }
                })
                .collect()
        })
        .collect()
}

fn texts(judged: &[Vec<Judged>]) -> Vec<Vec<(String, u32)>> {
    judged
        .iter()
        .map(|j| {
            j.iter()
                .map(|t| (t.text.clone(), (t.score.itm_prob * 1e4).round() as u32))
                .collect()
        })
        .collect()
}

#[test]
fn callers_share_batches_and_each_gets_its_own_results() {
    callers_share(false);
}

#[test]
fn with_continuous_batching_callers_images_join_the_running_batch_with_the_same_results() {
    callers_share(true);
}

fn callers_share(continuous: bool) {
    // What each caller's chunks give on an engine of its own.
    let rounds = [1u32, 1, 1, 2];
    let mut want = Vec::new();
    for (caller, &round) in rounds.iter().enumerate() {
        let mut own = engine(round);
        let mut out = Vec::new();
        for chunk in chunks(caller) {
            let mut t = StepTimings::default();
            out.push(texts(&own.run(&chunk, &mut t).expect("run")));
        }
        want.push(out);
    }

    // Continuous: 4 images' rows at a time, so images join as others finish.
    let max_batch = if continuous { 4 } else { 64 };
    let hub = EngineHub::start(engine(1), max_batch, continuous).expect("hub");
    let barrier = Arc::new(std::sync::Barrier::new(rounds.len()));
    let handles: Vec<_> = rounds
        .iter()
        .enumerate()
        .map(|(caller, &round)| {
            let mut client = hub.client(StepParams {
                round,
                ..engine_params()
            });
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut out = Vec::new();
                for chunk in chunks(caller) {
                    let mut t = StepTimings::default();
                    assert_eq!(client.round(), round);
                    out.push(texts(&client.run_step(chunk, &mut t).expect("shared run")));
                }
                out
            })
        })
        .collect();
    let got: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("caller"))
        .collect();
    for (caller, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "caller {caller} (round {})", rounds[caller]);
    }
    let stats = hub.stats();
    assert_eq!(stats.chunks.load(Ordering::Relaxed), 16);
    assert_eq!(stats.images.load(Ordering::Relaxed), 48);
    if continuous {
        assert!(
            stats.joined_running.load(Ordering::Relaxed) >= 1,
            "no image joined a running batch: {stats:?}"
        );
    } else {
        assert!(
            stats.merged_batches.load(Ordering::Relaxed) >= 1,
            "no batch held chunks of two callers: {stats:?}"
        );
        assert!(stats.batches.load(Ordering::Relaxed) < 16);
    }
}

fn engine_params() -> StepParams {
    StepParams {
        generation: GenerationParams {
            decoding: Decoding::Nucleus,
            candidates: 2,
            ..GenerationParams::default()
        },
        ..StepParams::default()
    }
}

#[test]
fn a_failing_batch_fails_its_callers_with_the_reason_and_the_hub_goes_on() {
    let hub = EngineHub::start(engine(1), 8, false).expect("hub");
    let mut client = hub.client(engine_params());
    let mut bad = chunks(0).remove(0);
    bad[1].captioner_pixels.truncate(10);
    let mut t = StepTimings::default();
    let e = client.run_step(bad, &mut t).expect_err("bad pixels");
    assert!(
        e.to_string().contains("shared engine") && e.to_string().contains("pixel buffer"),
        "{e}"
    );
    let ok = client
        .run_step(chunks(0).remove(1), &mut t)
        .expect("next chunk");
    assert_eq!(ok.len(), 3);
    drop(client);
    drop(hub); // joins the thread
}

#[test]
fn a_caller_with_parameters_the_engine_cannot_use_is_refused_and_the_others_go_on() {
    let hub = EngineHub::start(engine(1), 8, false).expect("hub");
    let mut bad = hub.client(StepParams {
        threshold: f32::NAN,
        ..engine_params()
    });
    let mut t = StepTimings::default();
    let e = bad
        .run_step(chunks(0).remove(0), &mut t)
        .expect_err("NaN threshold");
    assert!(e.to_string().contains("threshold"), "{e}");
    let mut good = hub.client(engine_params());
    assert_eq!(
        good.run_step(chunks(1).remove(0), &mut t)
            .expect("good")
            .len(),
        3
    );
    assert!(hub.is_alive());
}
