//! `musicgen render`: the streaming path with a simulated audio callback, into a WAV file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use musicgen_engine::bundle::Bundle;
use musicgen_engine::pattern::CodeGrid;
use musicgen_engine::sampler::SamplingSettings;
use musicgen_engine::stream::{Stream, StreamConfig};

use crate::RenderArgs;

/// The tiny bundle, found from the working directory or from this source tree.
fn default_model() -> PathBuf {
    let local = PathBuf::from("models/tiny");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny")
}

/// Samples per simulated audio callback.
const CALLBACK_FRAMES: usize = 512;

pub fn render(args: &RenderArgs) -> Result<()> {
    let model = args.model.clone().unwrap_or_else(default_model);
    let manifest_rate = Bundle::open(&model)?.manifest().sample_rate_hz;
    let mut config = StreamConfig::new(model, args.prompt.clone());
    config.ort_library = args.ort_library.clone();
    config.provider = args.provider;
    config.sampling = SamplingSettings {
        greedy: args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    };
    config.guidance_scale = args.cfg;
    config.seed = args.seed;
    config.seconds = Some(args.seconds);
    config.output_rate_hz = args.sample_rate.unwrap_or(manifest_rate);
    let rate_hz = config.output_rate_hz;
    let total = (args.seconds * f64::from(rate_hz)).round() as usize;

    let progress = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} {msg}")
            .expect("the template is valid"),
    );
    progress.set_message("loading the model");
    let (stream, mut consumer) = Stream::start(config)?;
    let mut audio = Vec::with_capacity(total + CALLBACK_FRAMES);
    let mut block = [0.0f32; CALLBACK_FRAMES];
    let period = Duration::from_secs_f64(CALLBACK_FRAMES as f64 / f64::from(rate_hz));
    let mut next_callback = Instant::now();
    while audio.len() < total {
        let finished = stream.status().is_finished();
        if finished && consumer.buffered() == 0 {
            break;
        }
        if args.realtime {
            std::thread::sleep(next_callback.saturating_duration_since(Instant::now()));
            next_callback += period;
            consumer.pop(&mut block);
            audio.extend_from_slice(&block);
        } else if consumer.buffered() >= CALLBACK_FRAMES || finished {
            // The stream's last block may be short; asking for no more than is there keeps
            // the end of the stream from counting as an underrun.
            let n = consumer.buffered().min(CALLBACK_FRAMES);
            let got = consumer.pop(&mut block[..n]);
            audio.extend_from_slice(&block[..got]);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = stream.status();
        progress.set_position(audio.len().min(total) as u64);
        progress.set_message(format!(
            "{:.1} steps/s, real-time factor {:.2}",
            status.steps_per_second(),
            status.realtime_factor()
        ));
    }
    progress.finish_and_clear();
    if let Some(error) = stream.status().error() {
        anyhow::bail!("generation failed: {error}");
    }
    audio.truncate(total);
    write_wav(&args.out, &audio, rate_hz)?;

    let status = stream.status();
    println!(
        "wrote {} ({:.2} s at {rate_hz} Hz) on {}: {} steps, {:.1} steps/s, real-time factor {:.2}, first audio after {} ms, {} underruns",
        args.out.display(),
        audio.len() as f64 / f64::from(rate_hz),
        stream.execution_provider(),
        status.steps(),
        status.steps_per_second(),
        status.realtime_factor(),
        status.time_to_first_audio().map_or(0, |d| d.as_millis()),
        stream.playback().underruns(),
    );
    if let Some(path) = &args.codes_out {
        let codes = wait_for_codes(&stream)?;
        let rows: Vec<&[u32]> = (0..codes.num_codebooks()).map(|k| codes.codebook(k)).collect();
        std::fs::write(path, serde_json::to_string(&rows)?).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({} codebooks x {} frames)",
            path.display(),
            codes.num_codebooks(),
            codes.num_timesteps()
        );
    }
    Ok(())
}

fn wait_for_codes(stream: &Stream) -> Result<CodeGrid> {
    for _ in 0..10_000 {
        if let Some(codes) = stream.codes() {
            return Ok(codes);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::bail!("generation did not finish")
}

pub fn write_wav(path: &Path, samples: &[f32], rate_hz: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate_hz,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut writer = hound::WavWriter::create(path, spec).with_context(|| format!("creating {}", path.display()))?;
    for &s in samples {
        writer.write_sample(s)?;
    }
    writer.finalize()?;
    Ok(())
}
