//! `musicgen render`: the streaming path with a simulated audio callback, into a WAV file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use std::sync::Arc;

use musicgen_engine::bundle::Manifest;
use musicgen_engine::model::{Model, ModelOptions};
use musicgen_engine::pattern::CodeGrid;
use musicgen_engine::resample::StreamResampler;
use musicgen_engine::sampler::SamplingSettings;
use musicgen_engine::seam::measure_seams;
use musicgen_engine::stream::{Command, Readiness, Stream, StreamConfig};

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
    let mut options = ModelOptions::new(args.model.clone().unwrap_or_else(default_model));
    options.ort_library = args.ort_library.clone();
    options.provider = args.provider;
    let spinner =
        indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", options.model_dir.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let model = Arc::new(Model::load(options)?);
    spinner.finish_and_clear();
    let manifest = model.manifest().clone();
    let manifest_rate = manifest.sample_rate_hz;
    let given = args
        .continue_from
        .as_deref()
        .map(|path| encode_wav(&model, path))
        .transpose()?;
    let given_frames = given.as_ref().map_or(0, CodeGrid::num_timesteps);
    let mut config = StreamConfig::new(args.prompt.clone());
    config.continue_from = given;
    config.window_seconds = args.window;
    config.keep_seconds = args.keep;
    config.prompt_crossfade_seconds = args.crossfade;
    config.sampling = SamplingSettings {
        greedy: args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    };
    config.guidance_scale = args.cfg;
    config.seed = args.seed;
    config.seconds = Some(args.seconds);
    config.buffer_ahead_seconds = args.buffer_ahead;
    config.step_delay = Duration::from_secs_f64(args.step_delay_ms.max(0.0) / 1000.0);
    config.output_rate_hz = args.sample_rate.unwrap_or(manifest_rate);
    let rate_hz = config.output_rate_hz;
    let given_seconds = given_frames as f64 / manifest.frame_rate_hz;
    let total = ((args.seconds + given_seconds) * f64::from(rate_hz)).round() as usize;

    let progress = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} {msg}")
            .expect("the template is valid"),
    );
    let (stream, mut consumer) = Stream::start(&model, config)?;
    for change in &args.prompt_change {
        stream.send(Command::SetPromptAt {
            prompt: change.prompt.clone(),
            frame: (change.at_seconds * manifest.frame_rate_hz).round() as usize,
        });
    }
    let mut audio = Vec::with_capacity(total + CALLBACK_FRAMES);
    let mut block = [0.0f32; CALLBACK_FRAMES];
    let period = Duration::from_secs_f64(CALLBACK_FRAMES as f64 / f64::from(rate_hz));
    let mut next_callback = Instant::now();
    // At real-time pace the file records what a listener hears, waits included, to the
    // stream's end; otherwise it takes the audio as fast as it comes.
    while args.realtime || audio.len() < total {
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
            if got == 0 {
                // Holding until a slow stream has buffered what it needs.
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = stream.status();
        progress.set_position(audio.len().min(total) as u64);
        progress.set_message(match stream.readiness() {
            Readiness::Waiting {
                ready_in_seconds: Some(seconds),
            } => format!(
                "{:.1} steps/s, slower than real time: playback ready in {:.0} s",
                status.steps_per_second(),
                seconds.ceil()
            ),
            _ => format!(
                "{:.1} steps/s, real-time factor {:.2}",
                status.steps_per_second(),
                status.realtime_factor()
            ),
        });
    }
    progress.finish_and_clear();
    if let Some(error) = stream.status().error() {
        anyhow::bail!("generation failed: {error}");
    }
    if !args.realtime {
        audio.truncate(total);
    }
    write_wav(&args.out, &audio, rate_hz)?;

    let status = stream.status();
    println!(
        "wrote {} ({:.2} s at {rate_hz} Hz) on {}: {} steps, {:.1} steps/s, real-time factor {:.2}, first audio after {} ms, {} underruns",
        args.out.display(),
        audio.len() as f64 / f64::from(rate_hz),
        model.execution_provider(),
        status.steps(),
        status.steps_per_second(),
        status.realtime_factor(),
        status.time_to_first_audio().map_or(0, |d| d.as_millis()),
        stream.playback().underruns(),
    );
    report_seams(&stream, &audio, rate_hz, &manifest)?;
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

/// Reads a WAV file, mixes it to mono and encodes it with the model's codec encoder.
fn encode_wav(model: &Model, path: &Path) -> Result<CodeGrid> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = reader.spec();
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 / scale))
                .collect::<Result<_, _>>()
        }
    }
    .with_context(|| format!("reading the samples of {}", path.display()))?;
    let channels = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    let codes = model
        .encode_audio(&mono, spec.sample_rate)
        .with_context(|| format!("encoding {}", path.display()))?;
    println!(
        "continuing {} ({:.2} s at {} Hz): {} frames of codes",
        path.display(),
        mono.len() as f64 / f64::from(spec.sample_rate),
        spec.sample_rate,
        codes.num_timesteps()
    );
    Ok(codes)
}

/// Prints, for each place the context window slid, how the audio changes there compared
/// with anywhere else (see `musicgen_engine::seam`).
fn report_seams(stream: &Stream, audio: &[f32], rate_hz: u32, manifest: &Manifest) -> Result<()> {
    let seams = stream.status().seams();
    if seams.is_empty() {
        return Ok(());
    }
    // Frame f's audio starts at f frames of output plus the resampler's delay.
    let offset = StreamResampler::new(manifest.sample_rate_hz, rate_hz)?.delay_frames();
    let measured = measure_seams(audio, rate_hz, manifest.frame_rate_hz, offset, &seams);
    println!("context window slid {} times:", seams.len());
    println!(
        "{:>8} {:>9} {:>12} {:>12}",
        "frame", "time s", "jump ratio", "flux ratio"
    );
    for seam in &measured {
        println!(
            "{:>8} {:>9.2} {:>12.2} {:>12.2}",
            seam.frame,
            seam.frame as f64 / manifest.frame_rate_hz,
            seam.jump_ratio,
            seam.flux_ratio
        );
    }
    println!("(ratios to the same measure everywhere else in the output: near 1 is as smooth as anywhere)");
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
