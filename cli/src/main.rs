//! `musicgen`: the engine's command-line tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use musicgen_engine::{Bundle, Coord, Delays, ExecutionProvider, Pattern, PatternKind, Runtime};
use serde::Serialize;

mod bench;
mod download;
mod floor;
mod import;
mod play;
mod render;
mod wav;

#[derive(Parser)]
#[command(name = "musicgen", version, about = "MusicGen Live engine tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare codebook interleaving patterns, or draw one.
    Patterns(PatternsArgs),
    /// Generate audio through the streaming path and write it to a WAV file.
    Render(RenderArgs),
    /// Time one bundle on this machine (decoder steps by context, the whole stream, the
    /// codec, memory) and print the figures as JSON; `cargo xtask bench` runs it.
    Bench(bench::BenchArgs),
    /// Time a bundle's matmul kernels (the graphs `models/matmul_floor.py` writes): what
    /// its decoder step's matmuls alone take here, printed as JSON; `bench --floor` also
    /// does this.
    Floor(floor::FloorArgs),
    /// Play a WAV file on the default audio output, if there is one.
    Play { file: PathBuf },
    /// Turn a transformers MusicGen checkpoint folder (safetensors) into a bundle, with no
    /// Python: the project's graphs, filled with the checkpoint's weights.
    Import(import::ImportArgs),
    /// Download one of Meta's checkpoints from the Hugging Face hub (into its standard
    /// cache, resumably) and import it; `--list` shows which there are.
    Download(download::DownloadArgs),
    /// Show the ONNX Runtime library in use and its execution providers, and with --model
    /// which model a bundle holds.
    Info {
        /// ONNX Runtime library to load instead of searching for one.
        #[arg(long)]
        ort_library: Option<PathBuf>,
        /// Also describe this model bundle: which MusicGen it is, its codebooks and pattern,
        /// rates and precision.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Model bundle folder (default: the tiny test bundle, models/tiny).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "warm lo-fi piano with soft drums")]
    prompt: String,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long)]
    out: PathBuf,
    /// Output sample rate (default: the model's).
    #[arg(long)]
    sample_rate: Option<u32>,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 250)]
    top_k: usize,
    /// Keep the most likely tokens up to this probability (0: off).
    #[arg(long, default_value_t = 0.0)]
    top_p: f32,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 3.0)]
    cfg: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take the most likely token at every step.
    #[arg(long)]
    greedy: bool,
    /// Write the generated codes [K, T] as JSON.
    #[arg(long)]
    codes_out: Option<PathBuf>,
    /// Pull audio at real-time pace, as an audio device would, and count underruns; the
    /// file then holds what a listener hears, waits for a slow stream's buffer included.
    #[arg(long)]
    realtime: bool,
    /// Where generation is slower than real time, playback waits until this many seconds
    /// can play without a gap (default: the whole render).
    #[arg(long, value_name = "SECONDS")]
    buffer_ahead: Option<f64>,
    /// Extra milliseconds on every decoder step: hear how the instrument behaves on a
    /// slower machine.
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    step_delay_ms: f64,
    /// Continue this WAV file (any rate, mixed to mono): it plays first, re-encoded, and
    /// the music carries on from its last --keep seconds. --seconds counts the new part.
    #[arg(long = "continue", value_name = "FILE.wav")]
    continue_from: Option<PathBuf>,
    /// Follow the melody of this WAV file (any rate, mixed to mono; its first 30 s):
    /// melody models only (`musicgen info` says which a bundle is).
    #[arg(long, value_name = "FILE.wav")]
    melody: Option<PathBuf>,
    /// Seconds of context the model sees; at its end the window slides on.
    #[arg(long, default_value_t = musicgen_engine::DEFAULT_WINDOW_SECONDS)]
    window: f64,
    /// Seconds of the window that the next window keeps (at most half the window).
    #[arg(long, default_value_t = musicgen_engine::DEFAULT_KEEP_SECONDS)]
    keep: f64,
    /// Change the prompt at a time in the output, e.g. `--prompt-change "15=fast techno"`
    /// (repeatable).
    #[arg(long, value_name = "SECONDS=PROMPT")]
    prompt_change: Vec<PromptChange>,
    /// Seconds over which a prompt change fades from the old prompt's music to the new
    /// one's (0: it cuts in).
    #[arg(long, default_value_t = 0.0)]
    crossfade: f64,
    /// ONNX Runtime library to load instead of searching for one.
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Where the graphs run: auto, cpu, cuda or directml (falls back to the CPU).
    #[arg(long, default_value = "auto")]
    provider: ExecutionProvider,
}

/// A prompt that takes over at a time in the output.
#[derive(Clone, Debug)]
struct PromptChange {
    at_seconds: f64,
    prompt: String,
}

impl std::str::FromStr for PromptChange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (at, prompt) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: expected SECONDS=PROMPT, e.g. \"15=fast techno\""))?;
        let at_seconds: f64 = at
            .trim()
            .parse()
            .map_err(|_| format!("{at:?} in {text:?} is not a number of seconds"))?;
        if at_seconds.is_nan() || at_seconds < 0.0 {
            return Err(format!("{text:?}: the time must be 0 s or later"));
        }
        Ok(Self {
            at_seconds,
            prompt: prompt.trim().to_owned(),
        })
    }
}

#[derive(clap::Args)]
struct PatternsArgs {
    /// Length of the generated audio.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Codec frames per second.
    #[arg(long, default_value_t = 50.0)]
    frame_rate: f64,
    /// Codebooks per frame (K).
    #[arg(long, default_value_t = 4)]
    codebooks: usize,
    /// Delays for `delay` and `partial-delay`, one per codebook, e.g. 0,1,1,1.
    #[arg(long)]
    delays: Option<Delays>,
    /// Draw this pattern as a grid instead of printing the table.
    #[arg(long, value_parser = PatternKind::NAMES)]
    show: Option<String>,
    /// Timesteps to draw with --show or --model.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Draw the pattern of this model bundle (its codebooks and delays; a stereo model's
    /// left and right codebooks interleaved).
    #[arg(long, conflicts_with = "show")]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Serialize)]
struct PatternRow {
    name: &'static str,
    description: String,
    steps: usize,
    frame_lag_steps: usize,
    streamable: bool,
}

/// An error prints as its whole chain, without a backtrace even where `RUST_BACKTRACE` is
/// set: the message is meant for the person at the terminal.
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Patterns(args) => patterns(&args),
        Command::Render(args) => render::render(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Floor(args) => floor::floor(&args),
        Command::Play { file } => play::play(&file),
        Command::Import(args) => import::run(&args),
        Command::Download(args) => download::run(&args),
        Command::Info { ort_library, model } => {
            info(ort_library)?;
            model.map_or(Ok(()), |dir| describe_model(&dir))
        }
    }
}

fn pattern_kind(name: &str, args: &PatternsArgs) -> Result<PatternKind> {
    let kind = PatternKind::from_name(name, args.codebooks)?;
    Ok(match (&kind, &args.delays) {
        (PatternKind::Delay { .. }, Some(Delays(delays))) => PatternKind::Delay { delays: delays.clone() },
        _ => kind,
    })
}

fn patterns(args: &PatternsArgs) -> Result<()> {
    let shown = match (&args.model, &args.show) {
        (Some(dir), _) => {
            let bundle = Bundle::open(dir).with_context(|| format!("opening the model in {}", dir.display()))?;
            Some((bundle.pattern(args.frames), bundle.manifest().audio_channels))
        }
        (None, Some(name)) => Some((pattern_kind(name, args)?.build(args.frames, args.codebooks)?, 1)),
        (None, None) => None,
    };
    if let Some((pattern, channels)) = shown {
        return match args.format {
            Format::Json => print_json(
                &pattern.steps()[1..]
                    .iter()
                    .map(|s| s.iter().map(|c| [c.t, c.k]).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            ),
            Format::Table => {
                print!("{}", draw_grid(&pattern, channels));
                Ok(())
            }
        };
    }
    let frames = (args.seconds * args.frame_rate).round();
    anyhow::ensure!(
        frames.is_finite() && frames >= 0.0,
        "--seconds {} at --frame-rate {} gives no frames; both must be positive",
        args.seconds,
        args.frame_rate
    );
    let timesteps = frames as usize;
    let rows = PatternKind::NAMES
        .iter()
        .map(|name| {
            let kind = pattern_kind(name, args)?;
            let pattern = kind.build(timesteps, args.codebooks)?;
            Ok(PatternRow {
                name,
                description: kind.to_string(),
                steps: pattern.num_steps(),
                frame_lag_steps: pattern.frame_lag_steps(),
                streamable: pattern.is_streamable(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    match args.format {
        Format::Json => print_json(&rows),
        Format::Table => {
            println!(
                "{timesteps} frames ({} s at {} Hz), {} codebooks\n",
                args.seconds, args.frame_rate, args.codebooks
            );
            println!(
                "{:<20} {:<28} {:>8} {:>16} {:>11}",
                "pattern", "layout", "steps", "frame lag steps", "streamable"
            );
            for row in rows {
                println!(
                    "{:<20} {:<28} {:>8} {:>16} {:>11}",
                    row.name,
                    row.description,
                    row.steps,
                    row.frame_lag_steps,
                    if row.streamable { "yes" } else { "no" }
                );
            }
            Ok(())
        }
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Codebook rows, timestep columns; each cell is the step that produces that token. The
/// rows of a model with `channels` 2 are its left and right channels' codebooks in turn.
fn draw_grid(pattern: &Pattern, channels: usize) -> String {
    let width = pattern.num_steps().to_string().len().max(2);
    let mut out = format!(
        "{}: {} steps for {} frames, a frame completes {} steps after its first token\n",
        pattern.kind(),
        pattern.num_steps(),
        pattern.num_timesteps(),
        pattern.frame_lag_steps()
    );
    out += &format!("{:>6} ", "t =");
    for t in 0..pattern.num_timesteps() {
        out += &format!(" {t:>width$}");
    }
    out += "\n";
    for k in 0..pattern.num_codebooks() {
        let label = match channels {
            2 => format!("k{k} {}{}", ["L", "R"][k % 2], k / 2),
            _ => format!("k{k}"),
        };
        out += &format!("{label:>6} ");
        for t in 0..pattern.num_timesteps() {
            out += &format!(" {:>width$}", pattern.step_of(Coord { t, k }));
        }
        out += "\n";
    }
    out += "(each cell: the decoder step that produces the token)\n";
    out
}

fn describe_model(dir: &Path) -> Result<()> {
    let bundle = Bundle::open(dir).with_context(|| format!("opening the model in {}", dir.display()))?;
    let m = bundle.manifest();
    let pattern = bundle.pattern(1);
    println!();
    println!("model:                {} ({})", m.model_name, dir.display());
    println!("family:               {}", m.describe_family());
    println!(
        "codebooks:            {} of {} codes, pattern {}",
        m.num_codebooks,
        m.cardinality,
        pattern.kind()
    );
    println!(
        "audio:                {} Hz, {} channel(s), {} frames/s, context {} frames",
        m.sample_rate_hz, m.audio_channels, m.frame_rate_hz, m.max_frames
    );
    println!(
        "decoder:              {} layers, {} heads of {}, weights {}, cache {:?}",
        m.decoder.num_layers, m.decoder.num_heads, m.decoder.head_dim, m.quantization.weights, m.kv_cache.dtype
    );
    if let Some(melody) = m.melody {
        println!(
            "melody:               chroma of {} pitch classes, {} frames in the context (a shorter melody repeats), \
             from {} Hz audio (FFT {}, hop {}, at most {} s); prompts up to {} tokens",
            melody.num_chroma,
            melody.chroma_length,
            melody.sample_rate_hz,
            melody.n_fft,
            melody.hop_length,
            melody.max_seconds,
            m.text_encoder.max_tokens
        );
    }
    Ok(())
}

fn info(ort_library: Option<PathBuf>) -> Result<()> {
    let runtime = Runtime::init(ort_library.as_deref()).context("loading ONNX Runtime")?;
    println!("ONNX Runtime version: {}", runtime.version());
    println!("library:              {}", runtime.library_path().display());
    let providers = runtime
        .available_providers()
        .context("asking ONNX Runtime for its execution providers")?;
    println!("execution providers:  {}", providers.join(", "));
    Ok(())
}
