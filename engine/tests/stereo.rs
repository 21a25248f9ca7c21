//! A stereo model (`models/tiny-stereo`: 8 codebooks, left and right interleaved) through
//! the streaming path, against transformers' own stereo outputs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Golden, codes_of, drain, golden, read_wav, snr_db};
use musicgen_engine::{Model, ModelOptions, SamplingSettings, Stream, StreamConfig, StreamResampler};

fn tiny_stereo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-stereo")
}

fn model() -> Arc<Model> {
    let mut options = ModelOptions::new(tiny_stereo());
    options.decoder_threads = 1;
    Arc::new(Model::load(options).expect("the tiny stereo model loads (run `cargo xtask ort` first)"))
}

/// The golden stream's config at `output_rate_hz`: greedy, no offset removal.
fn golden_config(golden: &Golden, output_rate_hz: f64) -> StreamConfig {
    let mut config = StreamConfig::new(golden.prompt.clone());
    config.seconds = Some(golden.codes[0].len() as f64 / 50.0);
    config.output_rate_hz = output_rate_hz;
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = golden.guidance_scale;
    config.block_dc = false;
    config
}

/// Channel `channel` of interleaved stereo.
fn channel(interleaved: &[f32], channel: usize) -> Vec<f32> {
    interleaved.iter().skip(channel).step_by(2).copied().collect()
}

#[test]
fn greedy_stereo_streaming_reproduces_transformers_codes_and_both_channels() {
    let golden = golden(&tiny_stereo());
    let model = model();
    assert_eq!(model.manifest().audio_channels, 2);
    let (stream, mut consumer) = Stream::start(&model, golden_config(&golden, 32_000.0)).unwrap();
    assert_eq!((stream.channels(), consumer.channels()), (2, 2));
    let audio = drain(&stream, &mut consumer);
    assert_eq!(
        codes_of(&stream),
        golden.codes,
        "greedy stereo codes differ from transformers' generate"
    );

    let (rate_hz, reference) = read_wav(&tiny_stereo().join("golden.wav"));
    assert_eq!(rate_hz, 32_000);
    assert_eq!(
        audio.len(),
        reference.len(),
        "streamed length vs golden.wav (both interleaved)"
    );
    for c in 0..2 {
        let snr = snr_db(&channel(&reference, c), &channel(&audio, c));
        println!("channel {c}: streamed decode vs transformers' offline decode: SNR {snr:.1} dB");
        assert!(
            snr >= 100.0,
            "channel {c}: SNR {snr:.1} dB; the stream no longer decodes it exactly"
        );
    }
    // The random codec's output is mostly its own biases, so even without their common
    // offset the channels are alike, yet far from the same audio a mix-up of codebooks makes.
    let without_offset = |audio: Vec<f32>| {
        let mean = audio.iter().sum::<f32>() / audio.len() as f32;
        audio.into_iter().map(|s| s - mean).collect::<Vec<_>>()
    };
    let (left, right) = (without_offset(channel(&audio, 0)), without_offset(channel(&audio, 1)));
    let likeness_db = snr_db(&left, &right);
    println!("left against right, offset removed: {likeness_db:.1} dB");
    assert!(
        likeness_db < 40.0,
        "left and right are the same audio ({likeness_db:.1} dB)"
    );
}

#[test]
fn stereo_resampled_to_the_host_rate_keeps_each_channel() {
    let golden = golden(&tiny_stereo());
    let model = model();
    let rate_hz = 44_100.0;
    let (stream, mut consumer) = Stream::start(&model, golden_config(&golden, rate_hz)).unwrap();
    let audio = drain(&stream, &mut consumer);
    let (_, reference) = read_wav(&tiny_stereo().join("golden.wav"));
    for c in 0..2 {
        let mut resampler = StreamResampler::new(32_000.0, rate_hz, 1).unwrap();
        let mut expected = Vec::new();
        resampler.process(&channel(&reference, c), &mut expected);
        resampler.flush(&mut expected);
        let ours = channel(&audio, c);
        // `drain` pops whole blocks, so its last pop runs dry and fades out the stream's
        // last frames, which the whole-file resampling does not.
        let n = ours.len().min(expected.len()) - 1_024;
        assert!(n > 40_000, "channel {c}: {n} samples at 44.1 kHz");
        let snr = snr_db(&expected[..n], &ours[..n]);
        println!("channel {c} at 44.1 kHz against golden.wav resampled alone: SNR {snr:.1} dB");
        assert!(snr >= 60.0, "channel {c} at 44.1 kHz: SNR {snr:.1} dB");
    }
}

#[test]
fn stereo_audio_is_continued_as_stereo_and_mono_audio_in_the_middle() {
    let model = model();
    // Sounds the random tiny encoder tells apart: a low sine on the left, noise on the right.
    let rate_hz = 32_000.0;
    let left: Vec<f32> = (0..32_000)
        .map(|i| 0.5 * (std::f32::consts::TAU * 110.0 * i as f32 / 32_000.0).sin())
        .collect();
    let mut state = 0x9E37_79B9u32;
    let right: Vec<f32> = (0..32_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 - 0.5
        })
        .collect();
    let stereo = model.encode_audio(&[&left, &right], rate_hz).unwrap();
    let (alone_left, alone_right) = (
        model.encode_audio(&[&left], rate_hz).unwrap(),
        model.encode_audio(&[&right], rate_hz).unwrap(),
    );
    assert_eq!(stereo.num_codebooks(), 8);
    for k in 0..4 {
        // A mono input is both channels; a stereo one's left and right go their own ways.
        assert_eq!(alone_left.codebook(2 * k), alone_left.codebook(2 * k + 1));
        assert_eq!(stereo.codebook(2 * k), alone_left.codebook(2 * k), "left codebook {k}");
        assert_eq!(
            stereo.codebook(2 * k + 1),
            alone_right.codebook(2 * k),
            "right codebook {k}"
        );
    }
    assert_ne!(stereo.codebook(0), stereo.codebook(1), "left and right encode alike");
}
