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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use parking_lot::Mutex;

use crate::codec::{CodecError, CodecWindow, StreamingCodec};
use crate::conditioning::{ConditioningError, CrossAttention};
use crate::dc_blocker::DcBlocker;
use crate::decoder::{Decoder, DecoderError};
use crate::model::Model;
use crate::pattern::{CodeGrid, PatternError};
use crate::playback::{PlaybackConsumer, PlaybackProducer, PlaybackStats, playback_channel};
use crate::resample::{ResampleError, StreamResampler};
use crate::sampler::{Sampler, SamplingError, SamplingSettings};
use crate::window::{SlidingGenerator, WindowSpec};

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
    pub output_rate_hz: u32,
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
}

impl StreamConfig {
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            sampling: SamplingSettings::default(),
            guidance_scale: 3.0,
            seed: 0,
            seconds: None,
            window_seconds: 10.0,
            keep_seconds: 4.0,
            continue_from: None,
            play_continued: true,
            prompt_crossfade_seconds: 0.0,
            block_dc: true,
            output_rate_hz: 48_000,
            buffer_seconds: 2.0,
            buffer_ahead_seconds: None,
            step_delay: Duration::ZERO,
            codec_window: CodecWindow::default(),
        }
    }
}

/// Gap-free playback an endless stream that is slower than real time waits for, unless
/// [`StreamConfig::buffer_ahead_seconds`] says otherwise.
pub const DEFAULT_BUFFER_AHEAD_SECONDS: f64 = 10.0;

/// The most audio the ring buffer holds, in seconds, however far ahead playback waits.
const MAX_BUFFER_SECONDS: f64 = 120.0;

/// Audio delivered before the stream's speed is trusted enough to let playback start.
const SPEED_MEASURE_SECONDS: f64 = 0.2;

/// Margin on the buffer a slow stream waits for: the speed varies as the context window
/// fills and slides.
const BUFFER_AHEAD_MARGIN: f64 = 1.25;

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
    /// New sampling settings and guidance scale from the next token.
    SetSampling {
        sampling: SamplingSettings,
        guidance_scale: f32,
    },
    /// Ends generation; what is generated still plays out.
    Stop,
}

/// Live figures, readable from any thread without locks (the error text aside).
#[derive(Debug, Default)]
pub struct StreamStatus {
    steps: AtomicU64,
    prefilled_steps: AtomicU64,
    prefill_us: AtomicU64,
    generation_us: AtomicU64,
    frames: AtomicU64,
    steps_per_second_bits: AtomicU32,
    realtime_factor_bits: AtomicU32,
    delivery_factor_bits: AtomicU32,
    first_audio_us: AtomicU64,
    started_frames: AtomicU64,
    finished: AtomicBool,
    /// Frames at which the context window slid.
    seams: Mutex<Vec<usize>>,
    error: Mutex<Option<String>>,
    /// The last [`RECENT_FRAMES`] complete frames, `(t, codes)`, for displays.
    recent: Mutex<VecDeque<(usize, Vec<u32>)>>,
}

/// Frames kept for [`StreamStatus::recent_frames`]: 5 s at 50 Hz.
pub const RECENT_FRAMES: usize = 250;

impl StreamStatus {
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    /// Steps run inside prefill calls: given frames and the next windows' contexts.
    pub fn prefilled_steps(&self) -> u64 {
        self.prefilled_steps.load(Ordering::Relaxed)
    }

    /// Time the prefill calls took, part of [`StreamStatus::generation_seconds`].
    pub fn prefill_seconds(&self) -> f64 {
        self.prefill_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Time spent generating (waits for the codec thread or the listener excluded).
    pub fn generation_seconds(&self) -> f64 {
        self.generation_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Decoder steps per second of generation time, over the stream so far (time spent
    /// waiting for the codec thread or the listener does not count).
    pub fn steps_per_second(&self) -> f32 {
        f32::from_bits(self.steps_per_second_bits.load(Ordering::Relaxed))
    }

    /// Seconds of audio generated per second of generation time; above 1 keeps up with
    /// playback.
    pub fn realtime_factor(&self) -> f32 {
        f32::from_bits(self.realtime_factor_bits.load(Ordering::Relaxed))
    }

    /// Seconds of audio the stream delivers to the ring buffer per second, waits for room
    /// excluded: decoder, codec and resampler together, what decides whether playback
    /// keeps up (above 1) or has to wait for a buffer (below). 0 until measured.
    pub fn delivery_factor(&self) -> f32 {
        f32::from_bits(self.delivery_factor_bits.load(Ordering::Relaxed))
    }

    /// Frames that have at least their first token: a prompt change made now is heard
    /// from this frame on.
    pub fn started_frames(&self) -> u64 {
        self.started_frames.load(Ordering::Relaxed)
    }

    /// Frames at which the context window slid on, so far.
    pub fn seams(&self) -> Vec<usize> {
        self.seams.lock().clone()
    }

    /// Time from the start of the stream to its first samples in the ring buffer.
    pub fn time_to_first_audio(&self) -> Option<Duration> {
        match self.first_audio_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Generation and decoding are over and every sample is in the ring buffer.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// The error that ended the stream early, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Copies the most recent complete frames, oldest first, into `out`. Takes a lock the
    /// generation thread also takes: for GUIs, never for the audio thread.
    pub fn recent_frames(&self, out: &mut Vec<(usize, Vec<u32>)>) {
        out.clear();
        out.extend(self.recent.lock().iter().cloned());
    }
}

/// Where playback stands for a listener.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Readiness {
    /// The stream is slower than real time and playback waits until the buffer will last;
    /// the wait left at the measured speed, once measured.
    Waiting { ready_in_seconds: Option<f64> },
    /// Playback runs or can start at once; `delivery_factor` is the stream's speed against
    /// real time (above 1 keeps up; 0 until measured).
    Ready { delivery_factor: f32 },
}

/// A running stream. Dropping it stops the threads and waits for them.
pub struct Stream {
    commands: Sender<Command>,
    status: Arc<StreamStatus>,
    playback: Arc<PlaybackStats>,
    /// The rate of the audio the codec thread queues now; it follows
    /// [`Stream::set_output_rate`] once the codec thread has switched.
    output_rate_hz: Arc<AtomicU32>,
    resamplers: Sender<StreamResampler>,
    latency: Latency,
    latency_samples: AtomicU32,
    frame_rate_hz: f64,
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
        let total_frames = config.seconds.map(|seconds| (seconds * frame_rate_hz).ceil() as usize);
        let window = window_spec(&config, frame_rate_hz, manifest.max_frames)?;
        let k_count = manifest.num_codebooks;
        let given = match config.continue_from.clone() {
            Some(codes) if codes.num_codebooks() != k_count => {
                return Err(StreamError::ContinuationCodebooks {
                    found: codes.num_codebooks(),
                    expected: k_count,
                });
            }
            Some(codes) => codes,
            None => CodeGrid::new(k_count, 0, Vec::new()).expect("an empty grid"),
        };
        let pattern = model.pattern(window.window_frames);
        pattern.require_streamable()?;
        let sampler = Sampler::new(config.sampling, config.seed)?;
        let decoder = model.decoder()?;
        let codec = model.streaming_codec(config.codec_window);
        // Time to first audio counts from here: the prompt's encoding is part of it, the
        // one-off loading of the model is not.
        let started = Instant::now();
        let cross = model.condition(&config.prompt)?;
        let resampler = StreamResampler::new(manifest.sample_rate_hz, config.output_rate_hz)?;

        let buffer_ahead = BufferAhead {
            requested_seconds: config.seconds,
            ahead_seconds: config.buffer_ahead_seconds,
            fill_seconds: config.buffer_seconds,
        };
        let capacity = (buffer_ahead.capacity_seconds() * f64::from(config.output_rate_hz)).ceil() as usize;
        let (producer, consumer) = playback_channel(capacity.max(1024));
        let status = Arc::new(StreamStatus::default());
        let stop = Arc::new(AtomicBool::new(false));
        let codes = Arc::new(Mutex::new(None));
        let (commands, command_rx) = unbounded();
        let (frame_tx, frame_rx) = bounded::<CodecInput>(codec.window().chunk_frames * 4);

        let latency = Latency {
            frames: pattern.frame_lag_steps() + codec.latency_frames(),
            samples_per_frame: manifest.samples_per_frame,
            codec_rate_hz: manifest.sample_rate_hz,
        };
        let latency_samples = latency.samples(config.output_rate_hz, resampler.delay_frames());

        let generator = SlidingGenerator::new(
            model.pattern_kind().clone(),
            &given,
            manifest.special_token_id,
            sampler,
            config.guidance_scale,
            &decoder,
            WindowSpec {
                total_frames: total_frames.map(|frames| frames + given.num_timesteps()),
                ..window
            },
        )?;
        let first_played_frame = if config.play_continued {
            0
        } else {
            given.num_timesteps()
        };
        let generation = GenerationLoop {
            generator,
            play_given: config.play_continued,
            decoder,
            model: Arc::clone(model),
            cross,
            commands: command_rx,
            frames: frame_tx,
            status: Arc::clone(&status),
            codes: Arc::clone(&codes),
            stop: Arc::clone(&stop),
            frame_rate_hz,
            pending_prompts: VecDeque::new(),
            crossfade_frames: (config.prompt_crossfade_seconds.max(0.0) * frame_rate_hz).round() as usize,
            step_delay: config.step_delay,
            fading: None,
            blend_margin_frames: codec.latency_frames() + 1,
        };
        let (resamplers, resampler_rx) = unbounded();
        let output_rate_hz = Arc::new(AtomicU32::new(config.output_rate_hz));
        let decoding = CodecLoop {
            codec,
            dc_blocker: config.block_dc.then(|| DcBlocker::new(manifest.sample_rate_hz as f32)),
            fading: None,
            samples_per_frame: manifest.samples_per_frame,
            resampler,
            resamplers: resampler_rx,
            output_rate_hz: Arc::clone(&output_rate_hz),
            producer,
            frames: frame_rx,
            status: Arc::clone(&status),
            stop: Arc::clone(&stop),
            started,
            buffer_ahead,
            delivered_seconds: 0.0,
            waited_for_room: Duration::ZERO,
        };
        let threads = vec![
            spawn("musicgen-generation", move || generation.run()),
            spawn("musicgen-codec", move || decoding.run()),
        ];
        Ok((
            Stream {
                commands,
                status,
                playback: Arc::clone(consumer.stats()),
                output_rate_hz,
                resamplers,
                latency,
                latency_samples: AtomicU32::new(latency_samples),
                frame_rate_hz,
                first_played_frame,
                model: Arc::clone(model),
                codes,
                stop,
                threads,
            },
            consumer,
        ))
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
    pub fn sample_rate_hz(&self) -> u32 {
        self.output_rate_hz.load(Ordering::Acquire)
    }

    /// Changes the output rate: the codec thread takes a new resampler before its next
    /// samples and retracts the audio it queued at the old rate (the consumer skips it);
    /// the model and the generation go on untouched.
    pub fn set_output_rate(&self, rate_hz: u32) -> Result<(), StreamError> {
        let resampler = StreamResampler::new(self.latency.codec_rate_hz, rate_hz)?;
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

    /// The play head, in the stream's frames: the frame whose audio plays now.
    pub fn frames_played(&self) -> f64 {
        let played = self.playback.samples_played() as f64 * self.frame_rate_hz / f64::from(self.sample_rate_hz());
        self.first_played_frame as f64 + played
    }

    /// Whether playback waits for a buffer that will last, and for how long, or can play.
    pub fn readiness(&self) -> Readiness {
        let queued = self.playback.samples_queued();
        let threshold = self.playback.start_threshold();
        let delivery_factor = self.status.delivery_factor();
        if self.playback.is_holding() && queued < threshold && !self.status.is_finished() {
            let missing_seconds = (threshold - queued) as f64 / f64::from(self.sample_rate_hz());
            let ready_in_seconds = (delivery_factor > 0.0).then(|| missing_seconds / f64::from(delivery_factor));
            Readiness::Waiting { ready_in_seconds }
        } else {
            Readiness::Ready { delivery_factor }
        }
    }

    /// Audio waiting in the ring buffer, in seconds at the output rate.
    pub fn seconds_buffered(&self) -> f64 {
        self.playback.samples_queued() as f64 / f64::from(self.sample_rate_hz())
    }

    /// The model this stream plays.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The generated codes `[K, T]`, once generation has ended.
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

/// How much audio playback waits for before it starts, so that a stream slower than real
/// time plays without gaps.
#[derive(Clone, Copy, Debug)]
struct BufferAhead {
    /// The stream's length, if finite.
    requested_seconds: Option<f64>,
    /// The user's gap-free stretch, if set.
    ahead_seconds: Option<f64>,
    /// The usual lead of a stream that keeps up.
    fill_seconds: f64,
}

impl BufferAhead {
    /// Seconds that must play without a gap once playback starts, `played_seconds` in.
    fn horizon_seconds(&self, played_seconds: f64) -> f64 {
        let remaining = self.requested_seconds.map(|total| (total - played_seconds).max(0.0));
        match (self.ahead_seconds, remaining) {
            (Some(ahead), Some(remaining)) => ahead.min(remaining),
            (Some(ahead), None) => ahead,
            (None, Some(remaining)) => remaining,
            (None, None) => DEFAULT_BUFFER_AHEAD_SECONDS,
        }
    }

    /// The buffer, in seconds, from which a stream that delivers `factor` seconds of
    /// audio per second plays its horizon without a gap: what it cannot deliver in time.
    fn threshold_seconds(&self, factor: f64, played_seconds: f64) -> f64 {
        self.horizon_seconds(played_seconds) * (1.0 - factor).max(0.0) * BUFFER_AHEAD_MARGIN
    }

    /// The ring buffer's size: the usual lead, or the most a slow stream may wait for.
    fn capacity_seconds(&self) -> f64 {
        let wait = self.horizon_seconds(0.0) * BUFFER_AHEAD_MARGIN;
        self.fill_seconds.max(wait.min(MAX_BUFFER_SECONDS)) + 0.5
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
    fn samples(&self, output_rate_hz: u32, resampler_delay_frames: usize) -> u32 {
        let codec_samples = (self.frames * self.samples_per_frame) as u64;
        let output_samples = codec_samples * u64::from(output_rate_hz) / u64::from(self.codec_rate_hz);
        (output_samples + resampler_delay_frames as u64) as u32
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

fn store_f32(cell: &AtomicU32, value: f32) {
    cell.store(value.to_bits(), Ordering::Relaxed);
}

struct GenerationLoop {
    generator: SlidingGenerator,
    decoder: Decoder,
    model: Arc<Model>,
    cross: CrossAttention,
    commands: Receiver<Command>,
    frames: Sender<CodecInput>,
    /// Given frames play (true) or are only the codec's context (false).
    play_given: bool,
    status: Arc<StreamStatus>,
    codes: Arc<Mutex<Option<CodeGrid>>>,
    stop: Arc<AtomicBool>,
    frame_rate_hz: f64,
    /// Prompts waiting for their frames ([`Command::SetPromptAt`]), earliest first.
    pending_prompts: VecDeque<(usize, String)>,
    crossfade_frames: usize,
    /// The music under the old prompt while a prompt change crossfades.
    fading: Option<Fading>,
    /// Frames past a crossfade for which the old music is still decoded, so that the codec
    /// windows holding the fade's last frames have their right context.
    blend_margin_frames: usize,
    step_delay: Duration,
}

/// The old prompt's continuation during a crossfade.
struct Fading {
    generator: SlidingGenerator,
    cross: CrossAttention,
    /// The first frame in which the two continuations can differ.
    start: usize,
    frames: usize,
}

impl GenerationLoop {
    fn run(mut self) {
        if let Err(error) = self.generate() {
            tracing::error!(%error, "generation stopped");
            *self.status.error.lock() = Some(error.to_string());
        }
        *self.codes.lock() = Some(self.generator.codes());
    }

    fn generate(&mut self) -> Result<(), StreamError> {
        // Given frames (continued audio) play first through the same codec path, or are
        // only its context.
        for t in 0..self.generator.frames_done() {
            let handed_on = if self.play_given {
                self.hand_on(t)?
            } else {
                let frame = self.generator.frame(t).to_vec();
                self.frames.send(CodecInput::Context(frame)).is_ok()
            };
            if !handed_on {
                return Ok(());
            }
        }
        // Time spent generating, without the waits for room in the frame channel: the
        // speed figures say what the model can do, not how fast the listener consumes.
        let mut busy = Duration::ZERO;
        while !self.generator.is_finished() && !self.stop.load(Ordering::Acquire) {
            let step_started = Instant::now();
            if !self.apply_commands()? {
                break;
            }
            let completed = self.generator.step(&mut self.decoder, &self.cross)?;
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            busy += step_started.elapsed();
            for t in completed {
                if !self.hand_on(t)? {
                    return Ok(());
                }
            }
            let seams = self.generator.seams();
            if seams.len() != self.status.seams.lock().len() {
                *self.status.seams.lock() = seams.to_vec();
            }
            let elapsed_s = busy.as_secs_f64();
            let steps = self.generator.steps_done();
            let frames = self.generator.frames_done();
            self.status.steps.store(steps as u64, Ordering::Relaxed);
            self.status
                .prefilled_steps
                .store(self.generator.prefilled_steps() as u64, Ordering::Relaxed);
            self.status
                .prefill_us
                .store(self.generator.prefill_time().as_micros() as u64, Ordering::Relaxed);
            self.status
                .generation_us
                .store(busy.as_micros() as u64, Ordering::Relaxed);
            self.status.frames.store(frames as u64, Ordering::Relaxed);
            self.status
                .started_frames
                .store(self.generator.started_frames() as u64, Ordering::Relaxed);
            store_f32(&self.status.steps_per_second_bits, (steps as f64 / elapsed_s) as f32);
            store_f32(
                &self.status.realtime_factor_bits,
                (frames as f64 / self.frame_rate_hz / elapsed_s) as f32,
            );
        }
        Ok(())
    }

    /// Sends frame `t` to the codec thread and the displays, with the old prompt's frame
    /// `t` while a crossfade runs; false once the codec thread has gone.
    fn hand_on(&mut self, t: usize) -> Result<bool, StreamError> {
        let frame = self.generator.frame(t).to_vec();
        {
            let mut recent = self.status.recent.lock();
            if recent.len() == RECENT_FRAMES {
                recent.pop_front();
            }
            recent.push_back((t, frame.clone()));
        }
        let input = match &mut self.fading {
            Some(fading) if t < fading.start + fading.frames + self.blend_margin_frames => {
                while fading.generator.frames_done() <= t {
                    fading.generator.step(&mut self.decoder, &fading.cross)?;
                }
                CodecInput::Blend {
                    new: frame,
                    old: fading.generator.frame(t).to_vec(),
                    fade_start: fading.start,
                    fade_frames: fading.frames,
                }
            }
            Some(_) => {
                self.fading = None;
                CodecInput::Play(frame)
            }
            None => CodecInput::Play(frame),
        };
        Ok(self.frames.send(input).is_ok())
    }

    /// Conditions generation on `prompt` from the next step; with a crossfade set, the old
    /// prompt's music goes on beside it for the fade.
    fn change_prompt(&mut self, prompt: &str) -> Result<(), StreamError> {
        let cross = self.model.condition(prompt)?;
        let old = std::mem::replace(&mut self.cross, cross);
        if self.crossfade_frames > 0 && self.fading.is_none() {
            self.fading = Some(Fading {
                generator: self.generator.fork()?,
                cross: old,
                start: self.generator.frames_done(),
                frames: self.crossfade_frames,
            });
        }
        Ok(())
    }

    /// Applies pending commands; false when the stream should stop.
    fn apply_commands(&mut self) -> Result<bool, StreamError> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::SetPrompt(prompt)) => {
                    self.pending_prompts.clear();
                    self.change_prompt(&prompt)?;
                }
                Ok(Command::SetPromptCrossfade(seconds)) => {
                    self.crossfade_frames = (seconds.max(0.0) * self.frame_rate_hz).round() as usize;
                }
                Ok(Command::SetPromptAt { prompt, frame }) => {
                    self.pending_prompts.retain(|(at, _)| *at < frame);
                    self.pending_prompts.push_back((frame, prompt));
                }
                Ok(Command::SetSampling {
                    sampling,
                    guidance_scale,
                }) => {
                    self.generator.sampler_mut().set_settings(sampling)?;
                    self.generator.set_guidance_scale(guidance_scale);
                }
                Ok(Command::Stop) => return Ok(false),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let started = self.generator.started_frames();
        while self.pending_prompts.front().is_some_and(|(frame, _)| *frame <= started) {
            let (_, prompt) = self.pending_prompts.pop_front().expect("checked above");
            self.change_prompt(&prompt)?;
        }
        Ok(true)
    }
}

struct CodecLoop {
    codec: StreamingCodec,
    buffer_ahead: BufferAhead,
    /// Audio pushed so far, in seconds (the output rate may change on the way).
    delivered_seconds: f64,
    /// Time spent waiting for room in the ring buffer: the listener's pace, not the
    /// stream's speed.
    waited_for_room: Duration,
    dc_blocker: Option<DcBlocker>,
    /// The old prompt's audio during a crossfade: a fork of `codec`.
    fading: Option<StreamingCodec>,
    samples_per_frame: usize,
    resampler: StreamResampler,
    /// Resamplers for new output rates, from [`Stream::set_output_rate`].
    resamplers: Receiver<StreamResampler>,
    output_rate_hz: Arc<AtomicU32>,
    producer: PlaybackProducer,
    frames: Receiver<CodecInput>,
    status: Arc<StreamStatus>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

/// What the generation thread sends the codec thread.
enum CodecInput {
    /// A frame to decode and play.
    Play(Vec<u32>),
    /// A frame already heard: context for the next windows, not decoded.
    Context(Vec<u32>),
    /// A frame of the new prompt's music and the same frame of the old prompt's, during a
    /// crossfade that runs over `fade_frames` frames from `fade_start`.
    Blend {
        new: Vec<u32>,
        old: Vec<u32>,
        fade_start: usize,
        fade_frames: usize,
    },
}

impl CodecLoop {
    fn run(mut self) {
        if let Err(error) = self.decode() {
            tracing::error!(%error, "decoding stopped");
            *self.status.error.lock() = Some(error.to_string());
        }
        self.status.finished.store(true, Ordering::Release);
    }

    fn decode(&mut self) -> Result<(), StreamError> {
        let mut audio = Vec::new();
        let mut resampled = Vec::new();
        let mut old_audio = Vec::new();
        for input in self.frames.clone().iter() {
            match input {
                CodecInput::Play(frame) => {
                    self.fading = None;
                    self.codec.push_frame(&frame);
                    self.codec.decode_ready(&mut audio)?;
                }
                CodecInput::Context(frame) => {
                    self.codec.push_context_frame(&frame);
                    continue;
                }
                CodecInput::Blend {
                    new,
                    old,
                    fade_start,
                    fade_frames,
                } => {
                    let fading = self.fading.get_or_insert_with(|| self.codec.fork());
                    let first_frame = self.codec.emitted_frames();
                    self.codec.push_frame(&new);
                    fading.push_frame(&old);
                    self.codec.decode_ready(&mut audio)?;
                    fading.decode_ready(&mut old_audio)?;
                    debug_assert_eq!(audio.len(), old_audio.len(), "the forks decode in step");
                    let spf = self.samples_per_frame as f32;
                    for (i, (new, old)) in audio.iter_mut().zip(&old_audio).enumerate() {
                        let frame = first_frame as f32 + i as f32 / spf;
                        let progress = ((frame - fade_start as f32) / fade_frames as f32).clamp(0.0, 1.0);
                        let angle = progress * std::f32::consts::FRAC_PI_2;
                        *new = *new * angle.sin() + *old * angle.cos();
                    }
                    old_audio.clear();
                }
            }
            self.emit(&mut audio, &mut resampled, false);
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        self.codec.finish(&mut audio)?;
        self.emit(&mut audio, &mut resampled, true);
        Ok(())
    }

    /// Resamples `audio` and pushes it into the ring buffer, waiting for room.
    fn emit(&mut self, audio: &mut Vec<f32>, resampled: &mut Vec<f32>, last: bool) {
        self.take_new_resampler();
        if let Some(dc_blocker) = &mut self.dc_blocker {
            audio
                .iter_mut()
                .for_each(|sample| *sample = dc_blocker.process(*sample));
        }
        self.resampler.process(audio, resampled);
        audio.clear();
        if last {
            self.resampler.flush(resampled);
        }
        let mut offset = 0;
        while offset < resampled.len() {
            let rate_hz = f64::from(self.resampler.output_rate_hz());
            let threshold = self.update_start_threshold(rate_hz);
            // Queue what the listener's wait needs, or the usual lead when none.
            let fill = (self.buffer_ahead.fill_seconds * rate_hz) as usize;
            let limit = fill.max(threshold + (0.1 * rate_hz) as usize);
            let room = limit.saturating_sub(self.producer.buffered());
            let pushed = self
                .producer
                .push(&resampled[offset..offset + room.min(resampled.len() - offset)]);
            if pushed > 0 && self.status.first_audio_us.load(Ordering::Relaxed) == 0 {
                let us = self.started.elapsed().as_micros().max(1) as u64;
                self.status.first_audio_us.store(us, Ordering::Relaxed);
            }
            offset += pushed;
            self.delivered_seconds += pushed as f64 / rate_hz;
            if offset < resampled.len() {
                // What is left was made for the old rate when a new one has come.
                if self.stop.load(Ordering::Acquire) || self.take_new_resampler() {
                    break;
                }
                // The audio callback drains the buffer at the output rate: a few
                // milliseconds frees a useful amount of room.
                let waiting = Instant::now();
                std::thread::sleep(Duration::from_millis(2));
                self.waited_for_room += waiting.elapsed();
            }
        }
        resampled.clear();
        if last {
            // Everything is queued: let it all play.
            self.producer.set_start_threshold(0);
        }
    }

    /// Measures the stream's delivery speed and sets how much audio playback waits for;
    /// returns that threshold in samples.
    fn update_start_threshold(&mut self, rate_hz: f64) -> usize {
        let working = self.started.elapsed().saturating_sub(self.waited_for_room);
        if self.delivered_seconds < SPEED_MEASURE_SECONDS || working.is_zero() {
            // Not measured yet: hold playback (the threshold is capped at the capacity).
            self.producer.set_start_threshold(usize::MAX);
            return 0;
        }
        let factor = self.delivered_seconds / working.as_secs_f64();
        store_f32(&self.status.delivery_factor_bits, factor as f32);
        let queued_seconds = self.producer.buffered() as f64 / rate_hz;
        let played_seconds = (self.delivered_seconds - queued_seconds).max(0.0);
        let seconds = self.buffer_ahead.threshold_seconds(factor, played_seconds);
        let samples = (seconds * rate_hz).ceil() as usize;
        self.producer.set_start_threshold(samples);
        samples
    }

    /// Switches to the newest resampler sent for a new output rate, retracting the audio
    /// queued at the old rate; false when none came.
    fn take_new_resampler(&mut self) -> bool {
        let Some(newest) = self.resamplers.try_iter().last() else {
            return false;
        };
        self.resampler = newest;
        self.producer.discard_queued();
        // After the discard: whoever sees the new rate also sees the old audio retracted.
        self.output_rate_hz
            .store(self.resampler.output_rate_hz(), Ordering::Release);
        true
    }
}
