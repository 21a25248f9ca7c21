//! What the stream tests share: the tiny bundle, a config for it, draining a stream, a
//! bundle's golden codes and a signal-to-noise ratio.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use musicgen_engine::{CodeGrid, Model, ModelOptions, PlaybackConsumer, Stream, StreamConfig, StreamError};

/// The cargo target folder the test runs from, where `cargo xtask test` leaves what the
/// tests need beside the build (ONNX Runtime releases, fault bundles).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .expect("tests run from inside target/")
        .to_path_buf()
}

pub fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny")
}

/// The tiny model, loaded once for every test of a binary, as the plugin shares one.
pub fn tiny_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        let mut options = ModelOptions::new(tiny());
        options.decoder_threads = 1;
        Arc::new(Model::load(options).expect("the tiny model loads (run `cargo xtask ort` first)"))
    });
    Arc::clone(model)
}

/// Starts `config` on the tiny model.
pub fn start(config: StreamConfig) -> Result<(Stream, PlaybackConsumer), StreamError> {
    Stream::start(&tiny_model(), config)
}

/// A stream of `frames` frames on the tiny bundle at its own 32 kHz.
pub fn config(prompt: &str, frames: usize) -> StreamConfig {
    let mut config = StreamConfig::new(prompt);
    config.seconds = Some(frames as f64 / 50.0);
    config.output_rate_hz = 32_000.0;
    config
}

/// Pulls everything the stream produces, as fast as it comes; the stream must end
/// without an error.
pub fn drain(stream: &Stream, consumer: &mut PlaybackConsumer) -> Vec<f32> {
    let audio = drain_to_the_end(stream, consumer);
    assert_eq!(stream.status().error(), None);
    audio
}

/// Pulls everything the stream produces until it ends, with an error or without.
pub fn drain_to_the_end(stream: &Stream, consumer: &mut PlaybackConsumer) -> Vec<f32> {
    let mut audio = Vec::new();
    let mut block = [0.0f32; 512];
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let finished = stream.status().is_finished();
        let buffered = consumer.buffered();
        if buffered >= block.len() || (finished && buffered > 0) {
            let got = consumer.pop(&mut block);
            audio.extend_from_slice(&block[..got]);
            if got == 0 {
                // Playback waits until the stream has buffered what it needs.
                assert!(Instant::now() < deadline, "playback never started");
                std::thread::sleep(Duration::from_millis(1));
            }
        } else if finished {
            break;
        } else {
            assert!(Instant::now() < deadline, "stream stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    audio
}

/// The stream's codes `[K][T]` once generation has ended.
pub fn codes_of(stream: &Stream) -> Vec<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(codes) = stream.codes() {
            return (0..codes.num_codebooks()).map(|k| codes.codebook(k).to_vec()).collect();
        }
        assert!(Instant::now() < deadline, "generation did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A WAV file as mono f32 samples, with its rate.
pub fn read_wav(path: &Path) -> (u32, Vec<f32>) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().map(Result::unwrap).collect(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.unwrap() as f32 / scale).collect()
        }
    };
    (spec.sample_rate, samples)
}

/// A bundle's `golden.json`: transformers' greedy codes for its prompt, with guidance and
/// without (`generate(guidance_scale=1)`).
pub struct Golden {
    pub prompt: String,
    pub guidance_scale: f32,
    pub codes: Vec<Vec<u32>>,
    pub unguided_codes: Vec<Vec<u32>>,
}

pub fn golden(bundle: &Path) -> Golden {
    let text = std::fs::read_to_string(bundle.join("golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let codes = |value: &serde_json::Value| -> Vec<Vec<u32>> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    Golden {
        prompt: json["prompt"].as_str().unwrap().to_owned(),
        guidance_scale: json["guidance_scale"].as_f64().unwrap() as f32,
        codes: codes(&json["codes"]),
        unguided_codes: codes(&json["unguided"]["codes"]),
    }
}

/// `reference`'s energy over that of `test`'s difference from it, in dB.
pub fn snr_db(reference: &[f32], test: &[f32]) -> f64 {
    let signal: f64 = reference.iter().map(|&r| f64::from(r).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(test)
        .map(|(&r, &t)| (f64::from(r) - f64::from(t)).powi(2))
        .sum();
    10.0 * (signal / noise.max(f64::MIN_POSITIVE)).log10()
}

/// Frames `range` of `codes` (`[K][T]`) as a grid.
pub fn grid(codes: &[Vec<u32>], range: std::ops::Range<usize>) -> CodeGrid {
    let flat = codes
        .iter()
        .flat_map(|row| row[range.clone()].iter().copied())
        .collect();
    CodeGrid::new(codes.len(), range.len(), flat).unwrap()
}

pub fn frames(codes: &[Vec<u32>], range: std::ops::Range<usize>) -> Vec<Vec<u32>> {
    codes.iter().map(|row| row[range.clone()].to_vec()).collect()
}
