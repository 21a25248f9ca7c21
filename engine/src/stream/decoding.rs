//! The codec thread: decodes the frames the generation thread sends, resamples them to the
//! output rate and pushes them into the ring buffer, measuring how fast the stream
//! delivers and holding playback until a slow stream's buffer will last.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::status::{StreamStatus, store_f32};
use super::{DEFAULT_BUFFER_AHEAD_SECONDS, InjectedPanic, Shared, StreamConfig, StreamError, StreamThread};
use crate::codec::StreamingCodec;
use crate::dc_blocker::DcBlocker;
use crate::playback::{PlaybackConsumer, PlaybackProducer, playback_channel};
use crate::resample::StreamResampler;

/// The most audio the ring buffer holds, in seconds, however far ahead playback waits.
const MAX_BUFFER_SECONDS: f64 = 120.0;

/// Audio delivered before the stream's speed is trusted enough to let playback start.
const SPEED_MEASURE_SECONDS: f64 = 0.2;

/// Margin on the buffer a slow stream waits for: the speed varies as the context window
/// fills and slides.
const BUFFER_AHEAD_MARGIN: f64 = 1.25;

/// How much audio playback waits for before it starts, so that a stream slower than real
/// time plays without gaps.
#[derive(Clone, Copy, Debug)]
pub(super) struct BufferAhead {
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

pub(super) struct DecodingLoop {
    codec: StreamingCodec,
    /// Channels interleaved in the codec's audio and the ring buffer's.
    channels: usize,
    buffer_ahead: BufferAhead,
    /// Audio pushed so far, in seconds (the output rate may change on the way).
    delivered_seconds: f64,
    /// Time spent waiting for room in the ring buffer: the listener's pace, not the
    /// stream's speed.
    waited_for_room: Duration,
    /// One per channel.
    dc_blockers: Option<Vec<DcBlocker>>,
    /// The old prompt's audio during a crossfade: a fork of `codec`.
    old_prompt_codec: Option<StreamingCodec>,
    resampler: StreamResampler,
    /// Resamplers for new output rates, from [`Stream::set_output_rate`].
    resamplers: Receiver<StreamResampler>,
    output_rate_hz: Arc<AtomicU64>,
    producer: PlaybackProducer,
    /// Frames from the generation thread.
    from_generation: Receiver<CodecInput>,
    status: Arc<StreamStatus>,
    stop: Arc<AtomicBool>,
    started: Instant,
    injected_panic: Option<InjectedPanic>,
    /// Frames received to play, counted for `injected_panic`.
    frames_to_play: usize,
}

/// What the generation thread sends the codec thread.
pub(super) enum CodecInput {
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

impl DecodingLoop {
    /// Decoding with `codec` into a new ring buffer, resampled by `resampler` (the output
    /// rate's); returns the loop and the ring buffer's consumer.
    pub(super) fn new(
        codec: StreamingCodec,
        resampler: StreamResampler,
        config: &StreamConfig,
        from_generation: Receiver<CodecInput>,
        resamplers: Receiver<StreamResampler>,
        shared: &Shared,
    ) -> (Self, PlaybackConsumer) {
        let buffer_ahead = BufferAhead {
            requested_seconds: config.seconds,
            ahead_seconds: config.buffer_ahead_seconds,
            fill_seconds: config.buffer_seconds,
        };
        let capacity_frames = (buffer_ahead.capacity_seconds() * config.output_rate_hz).ceil() as usize;
        let channels = codec.channels();
        let (producer, consumer) = playback_channel(capacity_frames.max(1024), channels);
        let codec_rate_hz = resampler.input_rate_hz();
        let decoding = Self {
            codec,
            channels,
            dc_blockers: config
                .block_dc
                .then(|| vec![DcBlocker::new(codec_rate_hz as f32); channels]),
            old_prompt_codec: None,
            resampler,
            resamplers,
            output_rate_hz: Arc::clone(&shared.output_rate_hz),
            producer,
            from_generation,
            status: Arc::clone(&shared.status),
            stop: Arc::clone(&shared.stop),
            started: shared.started,
            buffer_ahead,
            delivered_seconds: 0.0,
            waited_for_room: Duration::ZERO,
            injected_panic: config.injected_panic,
            frames_to_play: 0,
        };
        (decoding, consumer)
    }

    pub(super) fn run(mut self) {
        let status = Arc::clone(&self.status);
        StreamThread::Codec.run(&status, || self.decode());
        status.finished.store(true, Ordering::Release);
    }

    fn decode(&mut self) -> Result<(), StreamError> {
        let mut audio = Vec::new();
        let mut resampled = Vec::new();
        let mut old_audio = Vec::new();
        for input in self.from_generation.clone().iter() {
            match input {
                CodecInput::Play(frame) => {
                    StreamThread::Codec.injected_panic(self.injected_panic, self.frames_to_play);
                    self.frames_to_play += 1;
                    self.old_prompt_codec = None;
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
                    let old_codec = self.old_prompt_codec.get_or_insert_with(|| self.codec.fork());
                    let first_frame = self.codec.emitted_frames();
                    self.codec.push_frame(&new);
                    old_codec.push_frame(&old);
                    self.codec.decode_ready(&mut audio)?;
                    old_codec.decode_ready(&mut old_audio)?;
                    debug_assert_eq!(audio.len(), old_audio.len(), "the forks decode in step");
                    let samples_per_frame = (self.codec.samples_per_frame() * self.channels) as f32;
                    for (i, (new, old)) in audio.iter_mut().zip(&old_audio).enumerate() {
                        let frame = first_frame as f32 + (i - i % self.channels) as f32 / samples_per_frame;
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
        if let Some(dc_blockers) = &mut self.dc_blockers {
            for frame in audio.chunks_exact_mut(self.channels) {
                for (sample, dc_blocker) in frame.iter_mut().zip(dc_blockers.iter_mut()) {
                    *sample = dc_blocker.process(*sample);
                }
            }
        }
        self.resampler.process(audio, resampled);
        audio.clear();
        if last {
            self.resampler.flush(resampled);
        }
        let mut offset = 0;
        while offset < resampled.len() {
            // Interleaved samples per second.
            let rate_hz = self.resampler.output_rate_hz() * self.channels as f64;
            let threshold = self.update_start_threshold(rate_hz);
            // Queue what the listener's wait needs, or the usual lead when none.
            let fill = (self.buffer_ahead.fill_seconds * rate_hz) as usize;
            let limit = fill.max(threshold + (0.1 * rate_hz) as usize);
            let room = limit.saturating_sub(self.producer.buffered());
            // The producer takes whole frames only.
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
    /// returns that threshold in samples (`rate_hz` counts the interleaved samples of a
    /// second).
    fn update_start_threshold(&mut self, rate_hz: f64) -> usize {
        let working = self.started.elapsed().saturating_sub(self.waited_for_room);
        if self.delivered_seconds < SPEED_MEASURE_SECONDS || working.is_zero() {
            // Not measured yet: hold playback (the threshold is capped at the capacity), and
            // let the producer queue what the measure needs, or nothing would ever pop to
            // make room for it (a small `buffer_seconds` queues less than the measure).
            self.producer.set_start_threshold(usize::MAX);
            return (SPEED_MEASURE_SECONDS * rate_hz).ceil() as usize;
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
            .store(self.resampler.output_rate_hz().to_bits(), Ordering::Release);
        true
    }
}
