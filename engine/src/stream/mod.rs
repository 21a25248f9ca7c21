//! A live stream: the generation thread, the codec thread, the commands that steer them
//! and the status they report.
//!
//! ```text
//! generation thread: decoder step -> sampler -> complete frames --(bounded channel)--+
//! codec thread:      windowed decode -> resample -> PlaybackProducer (ring buffer) <-+
//! audio callback:    PlaybackConsumer::pop
//! ```
//!
//! Back-pressure paces everything: the codec thread waits while the ring buffer is full,
//! and the generation thread waits while the frame channel is full. Commands arrive over
//! a crossbeam channel and are read between steps; status is a set of atomics that any
//! thread may read without blocking the producers.
//!
//! This module is the handle ([`Stream`]), its configuration and commands; the threads are
//! in `generation` and `decoding`, the figures in `status`.

mod decoding;
mod generation;
mod status;

use decoding::DecodingLoop;
use generation::{GenerationLinks, GenerationLoop};
pub use status::{RECENT_FRAMES, Readiness, StreamStatus};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, unbounded};
use parking_lot::Mutex;

use crate::chroma::Melody;
use crate::codec::{CodecError, CodecWindow};
use crate::conditioning::ConditioningError;
use crate::decoder::DecoderError;
use crate::model::Model;
use crate::pattern::{CodeGrid, PatternError};
use crate::playback::{PlaybackConsumer, PlaybackStats};
use crate::resample::{ResampleError, StreamResampler};
use crate::sampler::{SamplingError, SamplingSettings};
use crate::window::WindowSpec;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Conditioning(#[from] ConditioningError),
    #[error(transparent)]
    Decoder(#[from] DecoderError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(
        "a context window of {window_seconds} s keeping {keep_seconds} s is not possible: the window must be \
         positive and the kept part at least 0 s (it is capped at half the window)"
    )]
    Window { window_seconds: f64, keep_seconds: f64 },
    #[error("the codes to continue have {found} codebooks; this model has {expected}")]
    ContinuationCodebooks { found: usize, expected: usize },
}

/// What to generate and where the audio goes.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub prompt: String,
    /// The melody a melody model follows (`None`: the null melody); a text-conditioned
    /// model refuses one.
    pub melody: Option<Melody>,
    pub sampling: SamplingSettings,
    pub guidance_scale: f32,
    pub seed: u64,
    /// Length of the generated audio; `None` runs until stopped.
    pub seconds: Option<f64>,
    /// The context the model sees, in seconds (capped at the model's maximum): at its end
    /// the window slides on, so that a stream can run for ever.
    pub window_seconds: f64,
    /// Seconds of the window that the next window keeps as its context (capped at half the
    /// window). More keeps the music coherent across the slide; less costs fewer steps.
    pub keep_seconds: f64,
    /// Codes to continue (encoded audio): generation carries on from their last
    /// `keep_seconds`.
    pub continue_from: Option<CodeGrid>,
    /// Whether the continued codes play before the new music (a render), or only give the
    /// codec its context (live, where that audio has just been heard).
    pub play_continued: bool,
    /// Removes a constant offset from the audio (a 5 Hz high-pass) before resampling; off
    /// only to compare with an offline decode sample for sample.
    pub block_dc: bool,
    /// Seconds over which a prompt change crossfades from the music going on under the old
    /// prompt to the music under the new one (0: the change cuts in). Both are generated
    /// and decoded over the fade.
    pub prompt_crossfade_seconds: f64,
    /// Prompt B of a morph: the conditioning blends from `prompt` toward it by `morph`.
    pub morph_target: Option<String>,
    /// The morph's amount, 0 (the prompt alone) to 1 (the target alone).
    pub morph: f32,
    pub output_rate_hz: f64,
    /// Audio the codec thread queues ahead of playback, in seconds at the output rate,
    /// when the stream keeps up: more survives longer hiccups, less hears prompt changes
    /// sooner.
    pub buffer_seconds: f64,
    /// Seconds of audio that must be able to play without a gap before playback starts,
    /// or resumes after an underrun, when the stream delivers slower than real time: the
    /// listener waits, then hears uninterrupted audio. `None`: the rest of the requested
    /// length for a finite stream, [`DEFAULT_BUFFER_AHEAD_SECONDS`] for an endless one.
    pub buffer_ahead_seconds: Option<f64>,
    /// Extra time spent on every decoder step, to make a stream as slow as a slower
    /// machine (tests, and trying the wait before playback on a fast machine).
    pub step_delay: Duration,
    pub codec_window: CodecWindow,
    /// Makes one of the stream's threads panic, to test that a fault ends its stream only.
    pub injected_panic: Option<InjectedPanic>,
}

/// A panic a test asks for: in `thread`, once it handles frame `frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedPanic {
    pub thread: StreamThread,
    pub frame: usize,
}

/// The two threads of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamThread {
    Generation,
    Codec,
}

impl StreamThread {
    fn name(self) -> &'static str {
        match self {
            Self::Generation => "generation",
            Self::Codec => "codec",
        }
    }

    /// Panics here if `injected` asks for it at `frame`.
    fn injected_panic(self, injected: Option<InjectedPanic>, frame: usize) {
        if injected == Some(InjectedPanic { thread: self, frame }) {
            panic!("a panic injected into the {} thread at frame {frame}", self.name());
        }
    }

    /// Runs a thread's body; an error or a panic ends the stream and is kept in `status`
    /// for the display, and the body's state is dropped either way.
    fn run(self, status: &StreamStatus, body: impl FnOnce() -> Result<(), StreamError>) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                format!(
                    "the {} thread panicked ({message}); start the stream again",
                    self.name()
                )
            }
        };
        tracing::error!(%error, "the stream's {} thread stopped", self.name());
        status.error.lock().get_or_insert(error);
    }
}

impl StreamConfig {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            sampling: SamplingSettings::default(),
            guidance_scale: 3.0,
            seed: 0,
            seconds: None,
            window_seconds: DEFAULT_WINDOW_SECONDS,
            keep_seconds: DEFAULT_KEEP_SECONDS,
            continue_from: None,
            play_continued: true,
            prompt_crossfade_seconds: 0.0,
            morph_target: None,
            morph: 0.0,
            melody: None,
            block_dc: true,
            output_rate_hz: 48_000.0,
            buffer_seconds: 2.0,
            buffer_ahead_seconds: None,
            step_delay: Duration::ZERO,
            codec_window: CodecWindow::default(),
            injected_panic: None,
        }
    }
}

/// Gap-free playback an endless stream that is slower than real time waits for, unless
/// [`StreamConfig::buffer_ahead_seconds`] says otherwise.
pub const DEFAULT_BUFFER_AHEAD_SECONDS: f64 = 10.0;

/// The live window a stream has unless told otherwise, and the context each next window
/// keeps (the CLI's and the plugin's defaults too). See docs/architecture.md ("window
/// policy") for why these: the slide's prefill against the cost of a longer context.
pub const DEFAULT_WINDOW_SECONDS: f64 = 15.0;
pub const DEFAULT_KEEP_SECONDS: f64 = 4.0;

/// Steering a running stream.
#[derive(Clone, Debug)]
pub enum Command {
    /// Re-conditions on a new prompt from the next step; the music continues.
    SetPrompt(String),
    /// Re-conditions on a new prompt from the step that starts frame `frame` (at once if
    /// generation is already past it): for changes on a bar line. It replaces the changes
    /// waiting for that frame or a later one.
    SetPromptAt { prompt: String, frame: usize },
    /// Seconds of crossfade for the prompt changes that follow.
    SetPromptCrossfade(f64),
    /// Sets prompt B of the morph, from the next step; `None` ends the morph; the target
    /// the stream has already changes nothing. The self-attention cache is kept: the
    /// music goes on.
    SetMorphTarget(Option<String>),
    /// Blends the conditioning from the prompt (0) toward the morph target (1) from the
    /// step that starts frame `frame` (at once if generation is already past it; 0: the
    /// next step). It replaces the amounts waiting for that frame or a later one.
    SetMorph { amount: f32, frame: usize },
    /// New sampling settings and guidance scale from the next token.
    SetSampling {
        sampling: SamplingSettings,
        guidance_scale: f32,
    },
    /// The melody a melody model follows from its next context on: the next window
    /// slide or prompt change (its context holds the melody it started with). `None`:
    /// the null melody. A text-conditioned model refuses one.
    SetMelody(Option<Melody>),
    /// Ends generation; what is generated still plays out.
    Stop,
}

/// A running stream. Dropping it stops the threads and waits for them.
pub struct Stream {
    commands: Sender<Command>,
    status: Arc<StreamStatus>,
    playback: Arc<PlaybackStats>,
    /// The rate of the audio the codec thread queues now; it follows
    /// [`Stream::set_output_rate`] once the codec thread has switched.
    output_rate_hz: Arc<AtomicU64>,
    resamplers: Sender<StreamResampler>,
    latency: Latency,
    latency_samples: AtomicU32,
    frame_rate_hz: f64,
    /// Channels interleaved in the consumer's samples.
    channels: usize,
    /// The frame the consumer's first sample belongs to (given frames that do not play
    /// come before it).
    first_played_frame: usize,
    model: Arc<Model>,
    codes: Arc<Mutex<Option<CodeGrid>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Stream {
    /// Encodes the prompt and starts generating on `model`. Returns the stream and the
    /// consumer that the audio callback reads.
    pub fn start(model: &Arc<Model>, config: StreamConfig) -> Result<(Stream, PlaybackConsumer), StreamError> {
        let manifest = model.manifest();
        let frame_rate_hz = manifest.frame_rate_hz;
        let given = given_codes(&config, manifest.num_codebooks)?;
        let window = WindowSpec {
            total_frames: config
                .seconds
                .map(|seconds| (seconds * frame_rate_hz).ceil() as usize + given.num_timesteps()),
            ..window_spec(&config, frame_rate_hz, manifest.max_frames)?
        };
        let pattern = model.pattern(window.window_frames);
        pattern.require_streamable()?;
        let codec = model.streaming_codec(config.codec_window);
        let channels = codec.channels();
        let resampler = StreamResampler::new(f64::from(manifest.sample_rate_hz), config.output_rate_hz, channels)?;
        let latency = Latency {
            frames: pattern.frame_lag_steps() + codec.latency_frames(),
            samples_per_frame: manifest.samples_per_frame,
            codec_rate_hz: manifest.sample_rate_hz,
        };
        let latency_samples = latency.samples(config.output_rate_hz, resampler.delay_frames());
        // Time to first audio counts from here: the prompt's encoding is part of it, the
        // one-off loading of the model is not.
        let shared = Shared {
            status: Arc::default(),
            stop: Arc::default(),
            codes: Arc::default(),
            output_rate_hz: Arc::new(AtomicU64::new(config.output_rate_hz.to_bits())),
            started: Instant::now(),
            codec_latency_frames: codec.latency_frames(),
        };
        let cross = model.condition_with_melody(&config.prompt, config.melody.as_ref())?;
        let (commands, command_rx) = unbounded();
        let (to_codec, from_generation) = bounded(codec.window().chunk_frames * 4);
        let links = GenerationLinks {
            commands: command_rx,
            to_codec,
        };
        let generation = GenerationLoop::new(model, &config, &given, window, cross, links, &shared)?;
        let (resamplers, resampler_rx) = unbounded();
        let (decoding, consumer) = DecodingLoop::new(codec, resampler, &config, from_generation, resampler_rx, &shared);
        let threads = vec![
            spawn("musicgen-generation", move || generation.run()),
            spawn("musicgen-codec", move || decoding.run()),
        ];
        let stream = Stream {
            commands,
            status: shared.status,
            playback: Arc::clone(consumer.stats()),
            output_rate_hz: shared.output_rate_hz,
            resamplers,
            latency,
            latency_samples: AtomicU32::new(latency_samples),
            frame_rate_hz,
            channels,
            first_played_frame: if config.play_continued {
                0
            } else {
                given.num_timesteps()
            },
            model: Arc::clone(model),
            codes: shared.codes,
            stop: shared.stop,
            threads,
        };
        Ok((stream, consumer))
    }

    pub fn send(&self, command: Command) {
        // The generation thread may have finished; a command to a finished stream has no effect.
        let _ = self.commands.send(command);
    }

    pub fn status(&self) -> &StreamStatus {
        &self.status
    }

    pub fn playback(&self) -> &PlaybackStats {
        &self.playback
    }

    /// The output rate of the audio being queued now. After [`Stream::set_output_rate`] it
    /// changes once the codec thread has switched, and by then the consumer skips what was
    /// queued at the old rate.
    pub fn sample_rate_hz(&self) -> f64 {
        f64::from_bits(self.output_rate_hz.load(Ordering::Acquire))
    }

    /// Changes the output rate: the codec thread takes a new resampler before its next
    /// samples and retracts the audio it queued at the old rate (the consumer skips it);
    /// the model and the generation go on untouched.
    pub fn set_output_rate(&self, rate_hz: f64) -> Result<(), StreamError> {
        let resampler = StreamResampler::new(f64::from(self.latency.codec_rate_hz), rate_hz, self.channels)?;
        let latency_samples = self.latency.samples(rate_hz, resampler.delay_frames());
        self.latency_samples.store(latency_samples, Ordering::Relaxed);
        // The codec thread ends only with the stream; a send to it cannot fail before.
        let _ = self.resamplers.send(resampler);
        Ok(())
    }

    /// Output samples between a frame's first token and its audio at the current output
    /// rate: the pattern's lag and the codec window, plus the resampler's delay.
    pub fn latency_samples(&self) -> u32 {
        self.latency_samples.load(Ordering::Relaxed)
    }

    /// Codec frames per second.
    pub fn frame_rate_hz(&self) -> f64 {
        self.frame_rate_hz
    }

    /// Audio channels, interleaved in the consumer's samples (1 or 2).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Seconds of audio in `samples` interleaved samples at the output rate.
    fn seconds_of(&self, samples: u64) -> f64 {
        samples as f64 / self.channels as f64 / self.sample_rate_hz()
    }

    /// The play head, in the stream's frames: the frame whose audio plays now.
    pub fn frames_played(&self) -> f64 {
        let played = self.seconds_of(self.playback.samples_played()) * self.frame_rate_hz;
        self.first_played_frame as f64 + played
    }

    /// Whether playback waits for a buffer that will last, and for how long, or can play.
    pub fn readiness(&self) -> Readiness {
        let queued = self.playback.samples_queued();
        let threshold = self.playback.start_threshold();
        let delivery_factor = self.status.delivery_factor();
        if self.playback.is_holding() && queued < threshold && !self.status.is_finished() {
            let missing_seconds = self.seconds_of(threshold - queued);
            let ready_in_seconds = (delivery_factor > 0.0).then(|| missing_seconds / f64::from(delivery_factor));
            Readiness::Waiting { ready_in_seconds }
        } else {
            Readiness::Ready { delivery_factor }
        }
    }

    /// Audio waiting in the ring buffer, in seconds at the output rate.
    pub fn seconds_buffered(&self) -> f64 {
        self.seconds_of(self.playback.samples_queued())
    }

    /// The model this stream plays.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The generated codes `[K, T]`, once generation has ended: every frame of a finite
    /// stream, the last window's of an endless one (which keeps no more).
    pub fn codes(&self) -> Option<CodeGrid> {
        self.codes.lock().clone()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.commands.send(Command::Stop);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the stream's threads and its handle share.
struct Shared {
    status: Arc<StreamStatus>,
    stop: Arc<AtomicBool>,
    /// The generated codes, once generation has ended.
    codes: Arc<Mutex<Option<CodeGrid>>>,
    /// The rate of the audio the codec thread queues now.
    output_rate_hz: Arc<AtomicU64>,
    /// When the stream started: first audio is timed from here.
    started: Instant,
    /// Frames between a frame's completion and its audio.
    codec_latency_frames: usize,
}

/// The codes a stream continues (none: an empty grid), checked against the model.
fn given_codes(config: &StreamConfig, num_codebooks: usize) -> Result<CodeGrid, StreamError> {
    match &config.continue_from {
        Some(codes) if codes.num_codebooks() != num_codebooks => Err(StreamError::ContinuationCodebooks {
            found: codes.num_codebooks(),
            expected: num_codebooks,
        }),
        Some(codes) => Ok(codes.clone()),
        None => Ok(CodeGrid::new(num_codebooks, 0, Vec::new()).expect("an empty grid")),
    }
}

/// The stream's fixed latency, in codec frames, and what converts it to output samples.
#[derive(Clone, Copy, Debug)]
struct Latency {
    frames: usize,
    samples_per_frame: usize,
    codec_rate_hz: u32,
}

impl Latency {
    fn samples(&self, output_rate_hz: f64, resampler_delay_frames: usize) -> u32 {
        let codec_samples = (self.frames * self.samples_per_frame) as f64;
        let output_samples = (codec_samples * output_rate_hz / f64::from(self.codec_rate_hz)).floor();
        output_samples as u32 + resampler_delay_frames as u32
    }
}

/// The window and kept context in frames, from the config's seconds.
fn window_spec(config: &StreamConfig, frame_rate_hz: f64, max_frames: usize) -> Result<WindowSpec, StreamError> {
    let invalid = || StreamError::Window {
        window_seconds: config.window_seconds,
        keep_seconds: config.keep_seconds,
    };
    let window_frames = (config.window_seconds * frame_rate_hz).round();
    let keep_frames = (config.keep_seconds * frame_rate_hz).round();
    if !(window_frames >= 1.0 && keep_frames >= 0.0) {
        return Err(invalid());
    }
    let window_frames = (window_frames as usize).min(max_frames);
    Ok(WindowSpec {
        window_frames,
        keep_frames: (keep_frames as usize).min(window_frames / 2),
        total_frames: None,
    })
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .expect("the OS can start a thread")
}
