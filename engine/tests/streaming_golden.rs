//! The streaming path on the committed tiny bundle, against transformers' own outputs
//! (`models/tiny/golden.json`, `golden.wav`).

mod common;

use std::time::{Duration, Instant};

use common::{codes_of, config, drain, golden, read_wav, snr_db, start, tiny};
use musicgen_engine::{Command, SamplingSettings, StreamConfig};

#[test]
fn greedy_streaming_reproduces_transformers_codes_and_audio() {
    let golden = golden(&tiny());
    let frames = golden.codes[0].len();
    let mut config = config(&golden.prompt, frames);
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = golden.guidance_scale;
    // Sample for sample against the offline decode: no offset removal.
    config.block_dc = false;
    let (stream, mut consumer) = start(config).unwrap();
    let audio = drain(&stream, &mut consumer);
    assert_eq!(
        codes_of(&stream),
        golden.codes,
        "greedy codes differ from transformers' generate"
    );
    assert_eq!(stream.seconds_buffered(), 0.0, "everything pushed was played");
    let provider = stream.model().execution_provider();
    assert!(provider == "cpu" || provider == "cuda", "{provider}");

    let (rate_hz, reference) = read_wav(&tiny().join("golden.wav"));
    assert_eq!(rate_hz, 32_000);
    assert_eq!(audio.len(), reference.len(), "streamed length vs golden.wav");
    let snr = snr_db(&reference, &audio);
    println!(
        "streamed decode vs transformers' offline decode: SNR {snr:.1} dB over {} samples",
        audio.len()
    );
    assert!(
        snr >= 100.0,
        "SNR {snr:.1} dB is below 100 dB: the stream no longer decodes exactly"
    );
}

#[test]
fn greedy_without_guidance_runs_one_row_and_reproduces_transformers_codes() {
    let golden = golden(&tiny());
    let frames = golden.unguided_codes[0].len();
    let mut config = config(&golden.prompt, frames);
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = 1.0;
    let (stream, mut consumer) = start(config).unwrap();
    drain(&stream, &mut consumer);
    assert_eq!(
        stream.status().guidance_rows(),
        1,
        "guidance off runs the conditioned row alone"
    );
    assert_eq!(
        codes_of(&stream),
        golden.unguided_codes,
        "greedy codes without guidance differ from transformers' generate(guidance_scale=1)"
    );
    assert_ne!(golden.unguided_codes, golden.codes, "guidance changes the music");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed| {
        let mut config = config("warm lo-fi piano", 40);
        config.seed = seed;
        let (stream, mut consumer) = start(config).unwrap();
        drain(&stream, &mut consumer);
        codes_of(&stream)
    };
    let first = run(7);
    assert_eq!(first[0].len(), 40);
    assert_eq!(first, run(7));
    assert_ne!(first, run(8));
}

#[test]
fn a_prompt_change_mid_stream_changes_the_music_from_there_on_without_a_gap() {
    let frames = 150;
    let greedy = || StreamConfig {
        sampling: SamplingSettings::greedy(),
        ..config("warm lo-fi piano", frames)
    };
    let (plain_stream, mut plain_consumer) = start(greedy()).unwrap();
    drain(&plain_stream, &mut plain_consumer);
    let plain = codes_of(&plain_stream);

    let (stream, mut consumer) = start(greedy()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.status().frames() < 50 {
        assert!(Instant::now() < deadline, "the stream did not reach frame 50 in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let complete = stream.status().frames() as usize;
    stream.send(Command::SetPrompt("fast techno with heavy bass".into()));
    let audio = drain(&stream, &mut consumer);
    let changed = codes_of(&stream);
    assert_eq!(changed[0].len(), frames, "every frame was generated");
    let span = |codes: &[Vec<u32>], range: std::ops::Range<usize>| -> Vec<Vec<u32>> {
        codes.iter().map(|row| row[range.clone()].to_vec()).collect()
    };
    assert_eq!(
        span(&changed, 0..complete),
        span(&plain, 0..complete),
        "frames complete before the change are the unchanged run's"
    );
    assert_ne!(
        span(&changed, complete + 4..frames),
        span(&plain, complete + 4..frames),
        "the music after the change is another"
    );
    assert_eq!(audio.len(), frames * 640, "every frame was decoded");
    // No gap: every 20 ms of output carries signal.
    for (i, window) in audio.chunks(640).enumerate() {
        let rms = (window.iter().map(|s| s * s).sum::<f32>() / window.len() as f32).sqrt();
        assert!(rms > 1e-6, "frame {i} is silent (rms {rms})");
    }
}

#[test]
fn a_prompt_with_unknown_pieces_is_refused_by_name() {
    let err = start(config("piano \u{2603}", 10)).err().unwrap().to_string();
    assert!(err.contains('\u{2603}'), "{err}");
}

#[test]
fn a_stream_shorter_than_a_codec_window_still_decodes() {
    let (stream, mut consumer) = start(config("warm lo-fi piano", 3)).unwrap();
    let audio = drain(&stream, &mut consumer);
    assert_eq!(audio.len(), 3 * 640);
    assert!(audio.iter().any(|&s| s != 0.0));
}

#[test]
fn a_new_output_rate_swaps_the_resampler_and_the_stream_goes_on() {
    let frames = 100;
    // A small ring buffer holds the codec thread back until the test drains it, so most of
    // the stream is still to be resampled when the rate changes.
    let mut config = config("warm lo-fi piano", frames);
    config.buffer_seconds = 0.01;
    let (stream, mut consumer) = start(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.status().frames() < 20 {
        assert!(Instant::now() < deadline, "the stream did not reach frame 20 in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(stream.set_output_rate(999.0).is_err(), "999 Hz is refused");
    let latency_32k = stream.latency_samples();
    stream.set_output_rate(48_000.0).unwrap();
    assert!(
        stream.latency_samples() >= latency_32k * 3 / 2,
        "latency {} at 48 kHz, {latency_32k} at 32 kHz",
        stream.latency_samples()
    );
    let audio = drain(&stream, &mut consumer);
    assert_eq!(stream.sample_rate_hz(), 48_000.0);
    // The full ring buffer held 32 kHz audio: it is skipped, not played at 48 kHz.
    assert!(stream.playback().samples_discarded() > 0);
    // Longer than all at 32 kHz, and no longer than all at 48 kHz plus the resampler's
    // flushed tail: the rest of the stream came out at the new rate.
    let (low, high) = (frames * 640, frames * 960 + 4096);
    assert!(audio.len() > low && audio.len() < high, "{} samples", audio.len());
    let mut recent = Vec::new();
    stream.status().recent_frames(&mut recent);
    assert_eq!(recent.last().map(|(t, codes)| (*t, codes.len())), Some((frames - 1, 4)));
}

#[test]
fn the_stream_has_no_constant_offset() {
    // The tiny bundle's random codec decodes around +0.32; the stream removes it.
    let (stream, mut consumer) = start(config("warm lo-fi piano", 100)).unwrap();
    let audio = drain(&stream, &mut consumer);
    let settled = &audio[16_000..];
    let mean = settled.iter().sum::<f32>() / settled.len() as f32;
    assert!(mean.abs() < 0.01, "offset {mean}");
    let mut raw = config("warm lo-fi piano", 100);
    raw.block_dc = false;
    let (stream, mut consumer) = start(raw).unwrap();
    let raw = drain(&stream, &mut consumer);
    let raw_mean = raw[16_000..].iter().sum::<f32>() / (raw.len() - 16_000) as f32;
    assert!(
        raw_mean.abs() > 0.1,
        "the codec's own offset, {raw_mean}, is what is removed"
    );
}
