//! What a running stream reports: live figures in atomics that any thread reads without
//! blocking the stream's threads, and where playback stands for a listener.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// Live figures, readable from any thread without locks (the error text aside).
#[derive(Debug, Default)]
pub struct StreamStatus {
    pub(super) steps: AtomicU64,
    pub(super) prefilled_steps: AtomicU64,
    pub(super) prefill_us: AtomicU64,
    pub(super) generation_us: AtomicU64,
    pub(super) frames: AtomicU64,
    pub(super) steps_per_second_bits: AtomicU32,
    pub(super) realtime_factor_bits: AtomicU32,
    pub(super) delivery_factor_bits: AtomicU32,
    pub(super) first_audio_us: AtomicU64,
    pub(super) started_frames: AtomicU64,
    pub(super) guidance_rows: AtomicU32,
    pub(super) finished: AtomicBool,
    /// Frames at which the context window slid.
    pub(super) seams: Mutex<Vec<usize>>,
    pub(super) error: Mutex<Option<String>>,
    /// The last [`RECENT_FRAMES`] complete frames, `(t, codes)`, for displays.
    pub(super) recent: Mutex<VecDeque<(usize, Vec<u32>)>>,
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

    /// Rows the current context's decoder steps run: 2 with guidance, 1 (the conditioned
    /// row alone) when guidance is off and the bundle's graph takes one row; 0 before the
    /// first step.
    pub fn guidance_rows(&self) -> u32 {
        self.guidance_rows.load(Ordering::Relaxed)
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

    /// Frames at which the context window slid on, so far (an endless stream's last 64).
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

pub(super) fn store_f32(cell: &AtomicU32, value: f32) {
    cell.store(value.to_bits(), Ordering::Relaxed);
}
