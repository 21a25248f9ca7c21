//! `musicgen render`: the streaming path with a simulated audio callback, into a WAV file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, Result};

use musicgen_engine::{
    CodeGrid, Command, Manifest, Melody, Model, ModelOptions, PlaybackConsumer, Readiness, SamplingSettings, Stream,
    StreamConfig, StreamResampler, find_tiny_bundle, measure_seams,
};

use crate::{RenderArgs, wav};

/// The tiny bundle of the source tree the working directory or this binary is in.
fn default_model() -> Result<PathBuf> {
    let here = std::env::current_dir().ok();
    let binary = std::env::current_exe().ok();
    [here, binary]
        .into_iter()
        .flatten()
        .find_map(|dir| find_tiny_bundle(&dir))
        .context("no --model given and no models/tiny found from here or from this binary: pass --model DIR")
}

/// Samples per simulated audio callback.
const CALLBACK_FRAMES: usize = 512;

/// Longest render whose seams are measured: the measure reads the whole file back.
const SEAM_MEASURE_MAX_SECONDS: f64 = 600.0;

pub fn render(args: &RenderArgs) -> Result<()> {
    let model = load_model(args)?;
    let manifest = model.manifest().clone();
    let given = args
        .continue_from
        .as_deref()
        .map(|path| encode_wav(&model, path))
        .transpose()?;
    let given_seconds = given.as_ref().map_or(0, CodeGrid::num_timesteps) as f64 / manifest.frame_rate_hz;
    let mut config = stream_config(args, given, manifest.sample_rate_hz);
    config.melody = args
        .melody
        .as_deref()
        .map(|path| read_melody(&model, path))
        .transpose()?;
    // A WAV file's rate is whole hertz.
    let rate_hz = config.output_rate_hz as u32;
    let channels = manifest.audio_channels;
    let total = ((args.seconds + given_seconds) * f64::from(rate_hz)).round() as usize * channels;

    let (stream, mut consumer) = Stream::start(&model, config)?;
    for change in &args.prompt_change {
        stream.send(Command::SetPromptAt {
            prompt: change.prompt.clone(),
            frame: (change.at_seconds * manifest.frame_rate_hz).round() as usize,
        });
    }
    let mut wav = wav_writer(&args.out, rate_hz, channels)?;
    let written = pull_audio(&stream, &mut consumer, args, total, &mut |block| {
        block.iter().try_for_each(|&sample| wav.write_sample(sample))
    })?;
    wav.finalize()
        .with_context(|| format!("finishing {}", args.out.display()))?;
    if let Some(error) = stream.status().error() {
        anyhow::bail!("generation failed: {error}");
    }

    let status = stream.status();
    println!(
        "wrote {} ({:.2} s at {rate_hz} Hz, {}) on {}: {} steps, {:.1} steps/s, real-time factor {:.2}, first audio after {} ms, {} underruns",
        args.out.display(),
        (written / channels) as f64 / f64::from(rate_hz),
        if channels == 2 { "stereo" } else { "mono" },
        model.execution_provider(),
        status.steps(),
        status.steps_per_second(),
        status.realtime_factor(),
        status.time_to_first_audio().map_or(0, |d| d.as_millis()),
        stream.playback().underruns(),
    );
    report_seams(&stream, &args.out, &manifest)?;
    if let Some(path) = &args.codes_out {
        write_codes(&stream, path)?;
    }
    Ok(())
}

/// The melody of the WAV file at `path`, as `model` takes it.
fn read_melody(model: &Model, path: &Path) -> Result<Melody> {
    let extractor = model.chroma_extractor().with_context(|| {
        format!(
            "--melody {}: {} is not a melody model ({}); load a melody bundle (musicgen-melody) with --model",
            path.display(),
            model.manifest().model_name,
            model.manifest().describe_family()
        )
    })?;
    let audio = wav::read(path)?;
    let melody = extractor
        .melody(&audio.mono(), 1, f64::from(audio.sample_rate_hz))
        .with_context(|| format!("reading the melody of {}", path.display()))?;
    println!(
        "melody: {} chroma frames from {} ({:.1} s)",
        melody.pitch_classes().len(),
        path.display(),
        audio.seconds()
    );
    Ok(melody)
}

fn load_model(args: &RenderArgs) -> Result<Arc<Model>> {
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => default_model()?,
    };
    let mut options = ModelOptions::new(model_dir);
    options.ort_library = args.ort_library.clone();
    options.provider = args.provider;
    let spinner =
        indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", options.model_dir.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let model = Model::load(options.clone()).with_context(|| {
        format!(
            "loading the model in {} (--model; --ort-library and --provider choose how it runs)",
            options.model_dir.display()
        )
    })?;
    spinner.finish_and_clear();
    Ok(Arc::new(model))
}

fn stream_config(args: &RenderArgs, given: Option<CodeGrid>, model_rate_hz: u32) -> StreamConfig {
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
    config.output_rate_hz = f64::from(args.sample_rate.unwrap_or(model_rate_hz));
    config
}

/// Pulls the stream's audio in callback-sized blocks into `sink`, with a progress bar:
/// `total` samples (channels interleaved) as fast as they come, or with `--realtime` at the
/// output rate's pace to the stream's end (what a listener hears, waits included). Returns
/// the samples pulled.
fn pull_audio(
    stream: &Stream,
    consumer: &mut PlaybackConsumer,
    args: &RenderArgs,
    total: usize,
    sink: &mut dyn FnMut(&[f32]) -> Result<(), hound::Error>,
) -> Result<usize> {
    let progress = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} {msg}")
            .expect("the template is valid"),
    );
    let rate_hz = stream.sample_rate_hz();
    let mut samples = [0.0f32; CALLBACK_FRAMES * 2];
    let block = &mut samples[..CALLBACK_FRAMES * stream.channels()];
    let period = Duration::from_secs_f64(CALLBACK_FRAMES as f64 / rate_hz);
    let mut next_callback = Instant::now();
    let mut pulled = 0;
    while args.realtime || pulled < total {
        let finished = stream.status().is_finished();
        if finished && consumer.buffered() == 0 {
            break;
        }
        let got = if args.realtime {
            std::thread::sleep(next_callback.saturating_duration_since(Instant::now()));
            next_callback += period;
            consumer.pop(block);
            block.len()
        } else if consumer.buffered() >= block.len() || finished {
            // The stream's last block may be short; asking for no more than is there keeps
            // the end of the stream from counting as an underrun.
            let n = consumer.buffered().min(block.len()).min(total - pulled);
            consumer.pop(&mut block[..n])
        } else {
            0
        };
        if got == 0 {
            // Waiting for audio, or holding until a slow stream has buffered what it needs.
            std::thread::sleep(Duration::from_millis(1));
        }
        sink(&block[..got]).with_context(|| format!("writing {}", args.out.display()))?;
        pulled += got;
        progress.set_position(pulled.min(total) as u64);
        progress.set_message(progress_message(stream));
    }
    progress.finish_and_clear();
    Ok(pulled)
}

fn progress_message(stream: &Stream) -> String {
    let status = stream.status();
    match stream.readiness() {
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
    }
}

fn write_codes(stream: &Stream, path: &Path) -> Result<()> {
    let codes = wait_for_codes(stream)?;
    let rows: Vec<&[u32]> = (0..codes.num_codebooks()).map(|k| codes.codebook(k)).collect();
    std::fs::write(path, serde_json::to_string(&rows)?).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} ({} codebooks x {} frames)",
        path.display(),
        codes.num_codebooks(),
        codes.num_timesteps()
    );
    Ok(())
}

/// Reads a WAV file and encodes it with the model's codec encoder: a mono model hears its
/// channels mixed, a stereo model its left and right.
fn encode_wav(model: &Model, path: &Path) -> Result<CodeGrid> {
    let wav = wav::read(path)?;
    let codes = model
        .encode_audio(&wav.channel_slices(), f64::from(wav.sample_rate_hz))
        .with_context(|| format!("encoding {} to continue it", path.display()))?;
    let heard = match (model.manifest().audio_channels, wav.channels.len()) {
        (_, 1) => "mono",
        (2, _) => "its first two channels as left and right",
        _ => "its channels mixed to mono",
    };
    println!(
        "continuing {} ({:.2} s at {} Hz, {} channels; the model hears {heard}): {} frames of codes",
        path.display(),
        wav.seconds(),
        wav.sample_rate_hz,
        wav.channels.len(),
        codes.num_timesteps()
    );
    Ok(codes)
}

/// Prints, for each place the context window slid, how the audio in `wav` changes there
/// compared with anywhere else (see `musicgen_engine::seam`).
fn report_seams(stream: &Stream, wav: &Path, manifest: &Manifest) -> Result<()> {
    let seams = stream.status().seams();
    if seams.is_empty() {
        return Ok(());
    }
    let reader = hound::WavReader::open(wav).with_context(|| format!("reading {} back", wav.display()))?;
    let rate_hz = reader.spec().sample_rate;
    if f64::from(reader.duration()) > SEAM_MEASURE_MAX_SECONDS * f64::from(rate_hz) {
        println!(
            "context window slid {} times (seams are measured in renders of up to {SEAM_MEASURE_MAX_SECONDS} s)",
            seams.len()
        );
        return Ok(());
    }
    // Seams are measured on the channels' mix.
    let audio = wav::read(wav)?.mono();
    // Frame f's audio starts at f frames of output plus the resampler's delay.
    let offset = StreamResampler::new(f64::from(manifest.sample_rate_hz), f64::from(rate_hz), 1)?.delay_frames();
    let measured = measure_seams(&audio, rate_hz, manifest.frame_rate_hz, offset, &seams);
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

/// A 32-bit float WAV file of `channels` channels, written as the samples come.
fn wav_writer(
    path: &Path,
    rate_hz: u32,
    channels: usize,
) -> Result<hound::WavWriter<std::io::BufWriter<std::fs::File>>> {
    let spec = hound::WavSpec {
        channels: channels as u16,
        sample_rate: rate_hz,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    hound::WavWriter::create(path, spec).with_context(|| format!("creating {}", path.display()))
}
