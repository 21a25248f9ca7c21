//! Faults inside a running stream: a graph that fails at a given step, and a panic in
//! either of the stream's threads. Each ends its own stream, with the error kept for the
//! display and the audio faded out, and the next stream on the same model plays.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{codes_of, config, drain, drain_to_the_end, start, target_dir, tiny_model};
use musicgen_engine::{InjectedPanic, Model, ModelOptions, Stream, StreamConfig, StreamThread};

/// The tiny bundle with a decoder that fails at step 40 (`cargo xtask test` writes it
/// with `models/fault_bundle.py`).
fn failing_bundle() -> PathBuf {
    let bundle = target_dir().join("fault-bundles").join("decoder-fails-at-step-40");
    assert!(
        bundle.join("musicgen.json").is_file(),
        "{} is missing: `cargo xtask test` writes it",
        bundle.display()
    );
    bundle
}

/// Plays `config` on `model` to its end: the audio and the error.
fn play(model: &Arc<Model>, config: StreamConfig) -> (Vec<f32>, Option<String>) {
    let (stream, mut consumer) = Stream::start(model, config).unwrap();
    let audio = drain_to_the_end(&stream, &mut consumer);
    (audio, stream.status().error())
}

fn peak(audio: &[f32]) -> f32 {
    audio.iter().fold(0.0f32, |peak, s| peak.max(s.abs()))
}

/// What a fault leaves: some audio, faded to silence at its end.
fn assert_fades_out(audio: &[f32], what: &str) {
    assert!(
        audio.len() > 3200,
        "{what}: only {} samples before the fault",
        audio.len()
    );
    let last = audio.last().unwrap().abs();
    assert!(
        last <= 0.05 * peak(audio),
        "{what}: the audio stops at {last} (peak {})",
        peak(audio)
    );
}

#[test]
fn a_graph_failing_at_step_40_ends_that_stream_with_its_error_and_the_model_plays_again() {
    let mut options = ModelOptions::new(failing_bundle());
    options.decoder_threads = 1;
    let failing = Arc::new(Model::load(options).unwrap());
    for attempt in ["first", "second"] {
        let (audio, error) = play(&failing, config("warm piano", 100));
        let error = error.unwrap_or_else(|| panic!("{attempt} stream: no error"));
        assert!(
            error.contains("decoder step 40") && error.contains("fault_gather"),
            "{error}"
        );
        // The frames completed before step 40 (37, with the delay pattern's 3 steps of lag)
        // still play, at 640 samples each.
        assert_eq!(audio.len(), 37 * 640, "{attempt} stream");
        assert_fades_out(&audio, attempt);
    }
    let (stream, mut consumer) = start(config("warm piano", 100)).unwrap();
    assert_eq!(drain(&stream, &mut consumer).len(), 100 * 640);
}

#[test]
fn a_panic_in_either_thread_ends_that_stream_only_and_says_which() {
    let model = tiny_model();
    for thread in [StreamThread::Generation, StreamThread::Codec] {
        let mut faulty = config("slow strings", 100);
        faulty.injected_panic = Some(InjectedPanic { thread, frame: 30 });
        let started = Instant::now();
        let (audio, error) = play(&model, faulty);
        let error = error.unwrap_or_else(|| panic!("{thread:?}: no error"));
        let name = format!("{thread:?}").to_lowercase();
        assert!(
            error.contains(&format!("the {name} thread panicked")) && error.contains("frame 30"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{thread:?}: the stream took {:?} to end",
            started.elapsed()
        );
        assert!(audio.len() < 100 * 640, "{thread:?}: the whole stream played");
        assert_fades_out(&audio, &name);

        let (stream, mut consumer) = Stream::start(&model, config("slow strings", 60)).unwrap();
        assert_eq!(drain(&stream, &mut consumer).len(), 60 * 640, "after a {name} panic");
        assert_eq!(codes_of(&stream)[0].len(), 60);
    }
}

#[test]
fn dropping_a_stream_while_it_generates_or_waits_for_room_returns_promptly() {
    let model = tiny_model();
    let mut endless = StreamConfig::new("drone");
    endless.output_rate_hz = 32_000.0;
    endless.step_delay = Duration::from_millis(2);
    for wait_ms in [0, 50, 1_500] {
        let (stream, _consumer) = Stream::start(&model, endless.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        let dropping = Instant::now();
        drop(stream);
        assert!(
            dropping.elapsed() < Duration::from_secs(2),
            "dropping after {wait_ms} ms took {:?}",
            dropping.elapsed()
        );
    }
}
