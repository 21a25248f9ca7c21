//! `musicgen bench`: what one bundle costs on this machine, printed as one JSON object.
//! `cargo xtask bench` runs it once per bundle (so that peak memory is the bundle's own)
//! and turns the objects into the table in BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use musicgen_engine::{
    Bundle, CodecWindow, Condition, DEFAULT_WINDOW_SECONDS, Decoder, ExecutionProvider, Model, ModelOptions, Runtime,
    SamplingSettings, Stream, StreamConfig,
};
use serde::Serialize;

use crate::floor::{self, MatmulFloor};
use crate::print_json;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model bundle folder.
    #[arg(long)]
    model: PathBuf,
    /// Context lengths, in frames, at which to time decoder steps.
    #[arg(long, value_delimiter = ',', default_value = "10,250,500,1500")]
    contexts: Vec<usize>,
    /// Timed decoder steps per context (after untimed warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Audio to stream through the whole path (decoder, codec, resampler, ring buffer).
    #[arg(long, default_value_t = 30.0)]
    stream_seconds: f64,
    /// The streams' live window and the context each next window keeps, in seconds
    /// (default: the engine's).
    #[arg(long)]
    window_seconds: Option<f64>,
    #[arg(long)]
    keep_seconds: Option<f64>,
    /// Output rate of the streamed audio.
    #[arg(long, default_value_t = 48_000)]
    sample_rate: u32,
    /// Frames to decode when timing the codec alone.
    #[arg(long, default_value_t = 250)]
    codec_frames: usize,
    /// Decoder thread counts to time steps with (default: every core); the stream then
    /// runs with the fastest at the middle context.
    #[arg(long, value_delimiter = ',')]
    decoder_threads: Vec<usize>,
    /// A bundle (the float32 export of the same model) whose greedy stream this bundle's
    /// greedy stream is compared with: the audio's signal-to-noise ratio.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Seconds of the greedy streams compared with the reference.
    #[arg(long, default_value_t = 5.0)]
    snr_seconds: f64,
    #[arg(long, default_value = "auto")]
    provider: ExecutionProvider,
    /// ONNX Runtime library to load instead of searching for one.
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// The bundle's matmul kernels, as `models/matmul_floor.py` writes them: timed after
    /// the stream, for the step's matmul floor with 2 rows (guidance) and 1.
    #[arg(long)]
    floor: Option<PathBuf>,
}

/// Untimed steps before each timed run.
const WARMUP_STEPS: usize = 3;

#[derive(Serialize)]
struct Report {
    model: String,
    provider: String,
    /// The decoder threads the stream ran with.
    decoder_threads: usize,
    /// Bytes of the decoder graph's weights: what a step reads once.
    decoder_weight_bytes: u64,
    /// Bytes of self-attention cache per frame of context, both guidance rows.
    kv_cache_bytes_per_frame: u64,
    contexts: Vec<ContextTiming>,
    stream: StreamTiming,
    /// The same stream with guidance off (1).
    stream_unguided: StreamTiming,
    codec_ms_per_frame: f64,
    /// Read bandwidth of this machine's memory, every core reading.
    read_bandwidth_gb_per_s: f64,
    /// Peak resident memory after the timed stream (before any reference run).
    peak_resident_mb: Option<f64>,
    /// This bundle's greedy stream against the reference bundle's, in dB.
    snr_db_vs_reference: Option<f64>,
    /// The step's matmuls alone at the rate their kernels reach here, for 2 rows and 1.
    matmul_floor: Option<Vec<MatmulFloor>>,
}

#[derive(Serialize)]
struct ContextTiming {
    threads: usize,
    /// Guidance rows: 2, or 1 (guidance off, where the graph runs one row).
    rows: usize,
    context_frames: usize,
    /// The context over the timed steps, on average.
    mean_context_frames: f64,
    steps_per_second: f64,
}

#[derive(Serialize)]
struct StreamTiming {
    seconds: f64,
    /// The live window and the context each next window keeps.
    window_seconds: f64,
    keep_seconds: f64,
    wall_seconds: f64,
    /// Audio seconds per wall second over the whole stream, first audio included.
    realtime_factor: f64,
    /// Generation steps per second of generation time (waits for room excluded).
    generation_steps_per_second: f64,
    time_to_first_audio_ms: f64,
    /// Audio seconds delivered to the ring buffer per second, waits for room excluded.
    delivery_factor: f64,
    /// Single decoder steps the stream ran.
    steps: u64,
    /// Steps run inside prefill calls (the next windows' kept context).
    prefilled_steps: u64,
    /// Time in prefill calls, and all generation time.
    prefill_seconds: f64,
    generation_seconds: f64,
    /// Steps one pattern over the whole audio takes (what a generation without a sliding
    /// window, such as transformers', runs for the same audio).
    pattern_steps: usize,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let bundle = Bundle::open(&args.model)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let thread_counts = if args.decoder_threads.is_empty() {
        vec![cores]
    } else {
        args.decoder_threads.clone()
    };
    let manifest = bundle.manifest();
    let geometry = manifest.decoder;
    let kv_cache_bytes_per_frame = (2
        * geometry.num_layers
        * 2
        * geometry.num_heads
        * geometry.head_dim
        * manifest.kv_cache.dtype.bytes_per_element()) as u64;

    let mut contexts = Vec::new();
    let mut provider = String::new();
    // The last model loaded, kept for the stream when its thread count wins.
    let mut last_model = None;
    for &threads in &thread_counts {
        eprintln!(
            "{}: decoder steps at contexts {:?}, {threads} threads ...",
            args.model.display(),
            args.contexts
        );
        // One model in memory at a time: peak memory is the bundle's own.
        drop(last_model.take());
        let model = load_model(args, threads)?;
        provider = time_contexts(&model, args, threads, &mut contexts)?;
        last_model = Some((threads, model));
    }
    let middle = args.contexts[args.contexts.len() / 2];
    let decoder_threads = contexts
        .iter()
        .filter(|c| c.context_frames == middle && c.rows == 2)
        .max_by(|a, b| a.steps_per_second.total_cmp(&b.steps_per_second))
        .map_or(1, |c| c.threads);

    let model = match last_model {
        Some((threads, model)) if threads == decoder_threads => model,
        _ => load_model(args, decoder_threads)?,
    };
    let codec_ms_per_frame = time_codec(&model, args)?;
    eprintln!("  codec: {codec_ms_per_frame:.3} ms per frame");

    let mut stream_config = StreamConfig::new(PROMPT);
    stream_config.seconds = Some(args.stream_seconds);
    stream_config.output_rate_hz = f64::from(args.sample_rate);
    if let Some(window_seconds) = args.window_seconds {
        stream_config.window_seconds = window_seconds;
    }
    if let Some(keep_seconds) = args.keep_seconds {
        stream_config.keep_seconds = keep_seconds;
    }
    stream_config.sampling = SamplingSettings::default();
    let frames = (args.stream_seconds * manifest.frame_rate_hz).ceil() as usize;
    let pattern_steps = bundle.pattern(frames).num_steps();
    let stream = time_stream(&model, stream_config.clone(), args, pattern_steps)?;
    // Guidance off: the conditioned row alone, where the graph runs one.
    let mut unguided_config = stream_config;
    unguided_config.guidance_scale = 1.0;
    let stream_unguided = time_stream(&model, unguided_config, args, pattern_steps)?;
    let peak_resident_mb = peak_resident_mb();
    // After the peak was read: the kernel graphs hold more than the bundle.
    let matmul_floor = match &args.floor {
        Some(dir) => {
            let runtime = Runtime::init(args.ort_library.as_deref())?;
            let floors = floor::measure(runtime, dir, decoder_threads, &[2, 1])?;
            for floor in &floors {
                print_floor_ratios(floor, &contexts, decoder_threads);
            }
            Some(floors)
        }
        None => None,
    };
    let snr_db_vs_reference = match &args.reference {
        Some(reference) => Some(snr_against(args, reference)?),
        None => None,
    };

    print_json(&Report {
        model: args.model.display().to_string(),
        provider,
        decoder_threads,
        decoder_weight_bytes: graph_bytes(&bundle, "decoder")?,
        kv_cache_bytes_per_frame,
        contexts,
        stream,
        stream_unguided,
        codec_ms_per_frame,
        read_bandwidth_gb_per_s: read_bandwidth_gb_per_s(cores),
        peak_resident_mb,
        snr_db_vs_reference,
        matmul_floor,
    })
}

fn print_floor_ratios(floor: &MatmulFloor, contexts: &[ContextTiming], threads: usize) {
    let ratios: Vec<String> = contexts
        .iter()
        .filter(|c| c.threads == threads && c.rows == floor.rows)
        .map(|c| {
            format!(
                "{:.2} at {}",
                floor.steps_per_second / c.steps_per_second,
                c.context_frames
            )
        })
        .collect();
    eprintln!(
        "  matmul floor ({} rows): {:.2} ms per step ({:.1} steps/s); step / floor: {}",
        floor.rows,
        floor.ms_per_step,
        floor.steps_per_second,
        ratios.join(", ")
    );
}

const PROMPT: &str = "lo-fi piano with soft drums";

/// Times decoder steps at each context with `threads` intra-op threads, with both
/// guidance rows and, where the graph runs one, the conditioned row alone (guidance off);
/// returns the execution provider in use.
fn time_contexts(model: &Model, args: &BenchArgs, threads: usize, out: &mut Vec<ContextTiming>) -> Result<String> {
    let manifest = model.manifest();
    let mut timer = StepTimer {
        cross: model.condition(PROMPT)?,
        decoder: model.decoder()?,
        tokens: vec![i64::from(manifest.special_token_id); manifest.num_codebooks],
        steps: args.steps,
        // A lane of the default live window: its frames and the delay pattern's steps.
        lane_steps: (DEFAULT_WINDOW_SECONDS * manifest.frame_rate_hz).round() as usize + manifest.num_codebooks,
        threads,
    };
    let mut row_counts = vec![2];
    if timer.decoder.rows_for(1.0) == 1 {
        row_counts.push(1);
    }
    for rows in row_counts {
        for &context_frames in &args.contexts {
            out.push(timer.time(rows, context_frames)?);
        }
    }
    Ok(model.execution_provider().to_owned())
}

/// Times single decoder steps on a prompt's condition.
struct StepTimer {
    decoder: Decoder,
    cross: Condition,
    /// The step's column (the special token in every codebook).
    tokens: Vec<i64>,
    /// Timed steps per context.
    steps: usize,
    lane_steps: usize,
    threads: usize,
}

impl StepTimer {
    /// Steps per second of `rows` rows ending at `context_frames` of context.
    fn time(&mut self, rows: usize, context_frames: usize) -> Result<ContextTiming> {
        // A cache as a stream has it: a lane of the default window, or as long as the
        // context asks.
        let mut cache = self
            .decoder
            .new_cache((context_frames + 1).max(self.lane_steps), rows)?;
        // The timed steps end at the context asked for, so that the longest one fits.
        let start = context_frames.saturating_sub(WARMUP_STEPS + self.steps);
        cache.assume_context(start)?;
        for _ in 0..WARMUP_STEPS {
            self.decoder.step(&mut cache, &self.tokens, &self.cross)?;
        }
        let first_timed = cache.len();
        let started = Instant::now();
        for _ in 0..self.steps {
            self.decoder.step(&mut cache, &self.tokens, &self.cross)?;
        }
        let steps_per_second = self.steps as f64 / started.elapsed().as_secs_f64();
        let mean_context_frames = (first_timed + cache.len()) as f64 / 2.0;
        eprintln!(
            "  context {context_frames:>5} frames (mean {mean_context_frames}), {rows} row(s): {steps_per_second:.2} steps/s"
        );
        Ok(ContextTiming {
            threads: self.threads,
            rows,
            context_frames,
            mean_context_frames,
            steps_per_second,
        })
    }
}

/// The bench's model with `decoder_threads` intra-op threads.
fn load_model(args: &BenchArgs, decoder_threads: usize) -> Result<Arc<Model>> {
    let mut options = ModelOptions::new(args.model.clone());
    options.ort_library = args.ort_library.clone();
    options.provider = args.provider;
    options.decoder_threads = decoder_threads;
    let model = Model::load(options).with_context(|| format!("loading --model {}", args.model.display()))?;
    Ok(Arc::new(model))
}

/// Decodes random frames as the stream does (frame by frame, windowed) and returns the
/// time per frame.
fn time_codec(model: &Model, args: &BenchArgs) -> Result<f64> {
    let manifest = model.manifest();
    let mut codec = model.streaming_codec(CodecWindow::default());
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut frame = vec![0u32; manifest.num_codebooks];
    let mut audio = Vec::new();
    let started = Instant::now();
    for _ in 0..args.codec_frames {
        for code in &mut frame {
            // xorshift: codes spread over the codebook, no dependency for a benchmark.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *code = (state % manifest.cardinality as u64) as u32;
        }
        codec.push_frame(&frame);
        codec.decode_ready(&mut audio)?;
    }
    codec.finish(&mut audio)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0 / args.codec_frames as f64)
}

/// Streams `seconds` of audio, taking it from the ring buffer as soon as it is there.
fn time_stream(
    model: &Arc<Model>,
    config: StreamConfig,
    args: &BenchArgs,
    pattern_steps: usize,
) -> Result<StreamTiming> {
    let total = (args.stream_seconds * config.output_rate_hz).round() as u64;
    let (window_seconds, keep_seconds) = (config.window_seconds, config.keep_seconds);
    let progress = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("  stream {bar:30} {percent:>3}% {elapsed_precise} {msg}")
            .expect("the template is valid"),
    );
    let (stream, mut consumer) = Stream::start(model, config)?;
    let started = Instant::now();
    let mut block = vec![0.0f32; 4096];
    let mut taken = 0u64;
    loop {
        let finished = stream.status().is_finished();
        let n = consumer.buffered().min(block.len());
        let got = if n == 0 { 0 } else { consumer.pop(&mut block[..n]) };
        if got == 0 {
            // Empty, or holding until a slow stream has buffered what it needs.
            if finished && n == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        taken += got as u64;
        progress.set_position(taken.min(total));
        progress.set_message(format!("{:.1} steps/s", stream.status().steps_per_second()));
    }
    progress.finish_and_clear();
    if let Some(error) = stream.status().error() {
        anyhow::bail!("the stream stopped: {error}");
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let status = stream.status();
    let timing = StreamTiming {
        seconds: args.stream_seconds,
        window_seconds,
        keep_seconds,
        wall_seconds,
        realtime_factor: args.stream_seconds / wall_seconds,
        generation_steps_per_second: f64::from(status.steps_per_second()),
        time_to_first_audio_ms: status
            .time_to_first_audio()
            .context("the stream produced no audio")?
            .as_secs_f64()
            * 1000.0,
        delivery_factor: f64::from(status.delivery_factor()),
        steps: status.steps(),
        prefilled_steps: status.prefilled_steps(),
        prefill_seconds: status.prefill_seconds(),
        generation_seconds: status.generation_seconds(),
        pattern_steps,
    };
    eprintln!(
        "  stream: {:.1} s in {wall_seconds:.1} s (real-time factor {:.2}), first audio after {:.0} ms",
        args.stream_seconds, timing.realtime_factor, timing.time_to_first_audio_ms
    );
    Ok(timing)
}

/// Greedy streams of `snr_seconds` on this bundle and on `reference`, at the codec's own
/// rate and without the DC blocker; the SNR of this one's audio against the reference's.
fn snr_against(args: &BenchArgs, reference: &Path) -> Result<f64> {
    eprintln!(
        "  greedy streams of {} s against {}",
        args.snr_seconds,
        reference.display()
    );
    let greedy = |model: &Path| -> Result<Vec<f32>> {
        let mut options = ModelOptions::new(model);
        options.ort_library = args.ort_library.clone();
        options.provider = args.provider;
        let model = Model::load(options).with_context(|| format!("loading --reference {}", model.display()))?;
        let model = Arc::new(model);
        let mut config = StreamConfig::new(PROMPT);
        config.seconds = Some(args.snr_seconds);
        config.sampling = SamplingSettings::greedy();
        config.output_rate_hz = f64::from(model.manifest().sample_rate_hz);
        config.block_dc = false;
        let (stream, mut consumer) = Stream::start(&model, config)?;
        let mut audio = Vec::new();
        let mut block = vec![0.0f32; 4096];
        loop {
            let finished = stream.status().is_finished();
            let got = consumer.pop(&mut block);
            audio.extend_from_slice(&block[..got]);
            if got == 0 {
                if finished && consumer.buffered() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(error) = stream.status().error() {
            anyhow::bail!("{}: the stream stopped: {error}", model.dir().display());
        }
        Ok(audio)
    };
    let ours = greedy(&args.model)?;
    let theirs = greedy(reference)?;
    let n = ours.len().min(theirs.len());
    let signal: f64 = theirs[..n].iter().map(|&x| f64::from(x).powi(2)).sum();
    let noise: f64 = ours[..n]
        .iter()
        .zip(&theirs[..n])
        .map(|(&a, &b)| f64::from(a - b).powi(2))
        .sum();
    Ok(10.0 * (signal / noise.max(1e-30)).log10())
}

/// Bytes of a graph's file and its external weight files (`decoder.onnx`, `decoder.onnx.data`, ...).
fn graph_bytes(bundle: &Bundle, stem: &str) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(bundle.dir()).with_context(|| format!("reading {}", bundle.dir().display()))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&format!("{stem}.")) {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

/// Best of five passes of `threads` threads summing 512 MiB, in GB/s.
fn read_bandwidth_gb_per_s(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    let data: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let chunk = data.len().div_ceil(threads);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for part in data.chunks(chunk) {
                scope.spawn(move || std::hint::black_box(part.iter().fold(0u64, |a, &b| a.wrapping_add(b))));
            }
        });
        best = best.min(started.elapsed());
    }
    BYTES as f64 / best.as_secs_f64() / 1e9
}

/// The process's peak resident memory, where the system tells it (Linux).
fn peak_resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string(Path::new("/proc/self/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
