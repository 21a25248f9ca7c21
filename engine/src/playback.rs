//! The lock-free hand-over of audio from the engine's threads to the audio thread.
//!
//! [`playback_channel`] makes a single-producer single-consumer ring buffer of f32
//! samples at the output rate, channels interleaved (a stereo model's left and right; one
//! channel for a mono model). Samples go in and out in whole frames, so the channels
//! never swap. The engine pushes with [`PlaybackProducer`]; the audio
//! callback pulls with [`PlaybackConsumer::pop`], which never allocates, locks or blocks:
//! when the buffer runs dry it fades the last samples out, plays silence, counts the
//! underrun, and fades back in when audio returns. [`PlaybackStats`] can be read from any
//! thread without disturbing either side.
//!
//! Playback starts, and resumes after an underrun, only once the buffer holds the
//! producer's *start threshold* ([`PlaybackProducer::set_start_threshold`]). A stream that
//! generates slower than real time raises it so that what is buffered lasts: the listener
//! then hears a wait followed by audio without gaps, never audio that stutters on and off.
//!
//! The producer can also retract what is queued ([`PlaybackProducer::discard_queued`]),
//! for audio made for an output rate that no longer holds: it publishes the count of
//! samples pushed so far, and the consumer skips up to that count before its next read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// Length of the fade at an underrun and at the recovery after it, in frames: 2 ms at
/// 32 kHz, short enough to keep as much audio as possible, long enough to avoid a click.
pub(crate) const FADE_FRAMES: usize = 64;

/// Counters shared by both ends, in samples (a stereo frame is two); relaxed atomics,
/// read by the GUI and the CLI.
#[derive(Debug, Default)]
pub struct PlaybackStats {
    underruns: AtomicU64,
    samples_pushed: AtomicU64,
    samples_played: AtomicU64,
    samples_discarded: AtomicU64,
    silent_samples: AtomicU64,
    /// Samples pushed before this count are to be skipped, not played.
    discard_before: AtomicU64,
    /// Samples the buffer must hold before playback starts or resumes.
    start_threshold: AtomicU64,
    /// The consumer is holding back until the buffer reaches the start threshold.
    holding: AtomicBool,
}

impl PlaybackStats {
    /// Callbacks that found the buffer with fewer samples than they needed, after audio
    /// had started.
    pub fn underruns(&self) -> u64 {
        self.underruns.load(Ordering::Relaxed)
    }

    /// Samples the producer has put into the buffer.
    pub(crate) fn samples_pushed(&self) -> u64 {
        self.samples_pushed.load(Ordering::Relaxed)
    }

    /// Samples taken from the buffer and played.
    pub(crate) fn samples_played(&self) -> u64 {
        self.samples_played.load(Ordering::Relaxed)
    }

    /// Samples skipped unplayed after [`PlaybackProducer::discard_queued`].
    pub fn samples_discarded(&self) -> u64 {
        self.samples_discarded.load(Ordering::Relaxed)
    }

    /// Samples waiting in the buffer to be played.
    pub(crate) fn samples_queued(&self) -> u64 {
        let pushed = self.samples_pushed();
        let discard_before = self.discard_before.load(Ordering::Relaxed);
        let taken = self.samples_played() + self.samples_discarded();
        pushed.saturating_sub(taken.max(discard_before))
    }

    /// Samples of silence played because the buffer was empty or still filling up to the
    /// start threshold (before the first audio too).
    pub fn silent_samples(&self) -> u64 {
        self.silent_samples.load(Ordering::Relaxed)
    }

    /// Samples the buffer must hold before playback starts or resumes.
    pub(crate) fn start_threshold(&self) -> u64 {
        self.start_threshold.load(Ordering::Relaxed)
    }

    /// The consumer plays silence until the buffer holds [`PlaybackStats::start_threshold`].
    pub(crate) fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }
}

/// Creates a ring buffer holding `capacity_frames` frames of `channels` samples.
pub fn playback_channel(capacity_frames: usize, channels: usize) -> (PlaybackProducer, PlaybackConsumer) {
    let channels = channels.max(1);
    let (producer, consumer) = HeapRb::<f32>::new(capacity_frames.max(1) * channels).split();
    let stats = Arc::new(PlaybackStats {
        holding: AtomicBool::new(true),
        ..PlaybackStats::default()
    });
    (
        PlaybackProducer {
            inner: producer,
            stats: Arc::clone(&stats),
            channels,
        },
        PlaybackConsumer {
            inner: consumer,
            stats,
            channels,
            started: false,
            fading_in: false,
            holding: true,
            taken: 0,
        },
    )
}

/// The engine's end of the buffer.
pub struct PlaybackProducer {
    inner: HeapProd<f32>,
    stats: Arc<PlaybackStats>,
    channels: usize,
}

impl PlaybackProducer {
    /// Pushes as many whole frames of `samples` (channels interleaved) as fit; returns
    /// how many samples that was.
    pub fn push(&mut self, samples: &[f32]) -> usize {
        let whole = samples.len() - samples.len() % self.channels;
        let pushed = self.inner.push_slice(&samples[..whole]);
        self.stats.samples_pushed.fetch_add(pushed as u64, Ordering::Release);
        pushed
    }

    /// Retracts every sample pushed so far: the consumer skips them instead of playing
    /// them. What is pushed afterwards plays normally.
    pub(crate) fn discard_queued(&mut self) {
        let pushed = self.stats.samples_pushed.load(Ordering::Relaxed);
        self.stats.discard_before.store(pushed, Ordering::Release);
    }

    /// Samples waiting to be played.
    pub(crate) fn buffered(&self) -> usize {
        self.inner.occupied_len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.inner.capacity().get()
    }

    /// Sets how many samples the buffer must hold before playback starts or resumes
    /// after an underrun (capped at the buffer's capacity, so that it can always start).
    pub(crate) fn set_start_threshold(&self, samples: usize) {
        let samples = samples.min(self.capacity()) as u64;
        self.stats.start_threshold.store(samples, Ordering::Release);
    }
}

/// The audio thread's end of the buffer.
pub struct PlaybackConsumer {
    inner: HeapCons<f32>,
    stats: Arc<PlaybackStats>,
    channels: usize,
    /// Audio has been played at least once; an empty buffer before that is not an underrun.
    started: bool,
    /// The previous callback ran dry, so the next audio starts with a fade-in.
    fading_in: bool,
    /// Waiting for the buffer to reach the start threshold.
    holding: bool,
    /// Samples popped or skipped so far.
    taken: u64,
}

impl PlaybackConsumer {
    /// Channels interleaved in each frame.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Fills `out` (whole frames, channels interleaved) with the next samples, or silence
    /// where there are none. Never allocates, locks or blocks. Returns the number of real
    /// samples written.
    pub fn pop(&mut self, out: &mut [f32]) -> usize {
        let channels = self.channels;
        debug_assert!(out.len().is_multiple_of(channels), "whole frames");
        let discard_before = self.stats.discard_before.load(Ordering::Acquire);
        if self.taken < discard_before {
            let skipped = self.inner.skip((discard_before - self.taken) as usize);
            self.taken += skipped as u64;
            self.stats
                .samples_discarded
                .fetch_add(skipped as u64, Ordering::Relaxed);
        }
        if self.holding {
            let threshold = self.stats.start_threshold.load(Ordering::Acquire) as usize;
            let queued = self.inner.occupied_len();
            if queued == 0 || queued < threshold {
                out.fill(0.0);
                self.stats.silent_samples.fetch_add(out.len() as u64, Ordering::Relaxed);
                return 0;
            }
            self.holding = false;
            self.stats.holding.store(false, Ordering::Relaxed);
        }
        let got = self.inner.pop_slice(out);
        self.taken += got as u64;
        out[got..].fill(0.0);
        let got_frames = got / channels;
        if got > 0 && self.fading_in {
            let n = got_frames.min(FADE_FRAMES);
            for (i, frame) in out[..n * channels].chunks_exact_mut(channels).enumerate() {
                frame.iter_mut().for_each(|s| *s *= i as f32 / n as f32);
            }
            self.fading_in = false;
        }
        if got < out.len() {
            if got > 0 || self.started {
                let n = got_frames.min(FADE_FRAMES);
                for (i, frame) in out[got - n * channels..got].chunks_exact_mut(channels).enumerate() {
                    frame.iter_mut().for_each(|s| *s *= (n - i) as f32 / (n + 1) as f32);
                }
                self.stats.underruns.fetch_add(1, Ordering::Relaxed);
                self.fading_in = true;
                self.holding = true;
                self.stats.holding.store(true, Ordering::Relaxed);
            }
            self.stats
                .silent_samples
                .fetch_add((out.len() - got) as u64, Ordering::Relaxed);
        }
        if got > 0 {
            self.started = true;
            self.stats.samples_played.fetch_add(got as u64, Ordering::Relaxed);
        }
        got
    }

    /// Samples waiting to be played.
    pub fn buffered(&self) -> usize {
        self.inner.occupied_len()
    }

    pub(crate) fn stats(&self) -> &Arc<PlaybackStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_come_out_in_order() {
        let (mut tx, mut rx) = playback_channel(8, 1);
        assert_eq!(tx.push(&[1.0, 2.0, 3.0]), 3);
        let mut out = [9.0; 2];
        assert_eq!(rx.pop(&mut out), 2);
        assert_eq!(out, [1.0, 2.0]);
        assert_eq!(tx.buffered(), 1);
        assert_eq!(rx.stats().underruns(), 0);
    }

    #[test]
    fn a_full_buffer_takes_what_fits() {
        let (mut tx, _rx) = playback_channel(4, 1);
        assert_eq!(tx.push(&[0.5; 6]), 4);
        assert_eq!(tx.buffered(), 4);
    }

    #[test]
    fn silence_before_the_first_audio_is_not_an_underrun() {
        let (_tx, mut rx) = playback_channel(4, 1);
        let mut out = [1.0; 4];
        assert_eq!(rx.pop(&mut out), 0);
        assert_eq!(out, [0.0; 4]);
        assert_eq!(rx.stats().underruns(), 0);
        assert_eq!(rx.stats().silent_samples(), 4);
    }

    #[test]
    fn running_dry_fades_out_counts_and_fades_back_in() {
        let (mut tx, mut rx) = playback_channel(1024, 1);
        tx.push(&[1.0; 200]);
        let mut out = [0.0; 256];
        assert_eq!(rx.pop(&mut out), 200);
        assert_eq!(rx.stats().underruns(), 1);
        assert_eq!(out[..136], [1.0; 136]);
        assert!(out[199] < 0.05 && out[199] > 0.0, "tail {}", out[199]);
        assert!(out[137..200].windows(2).all(|w| w[1] < w[0]), "fade-out is monotone");
        assert_eq!(out[200..], [0.0; 56]);

        tx.push(&[1.0; 256]);
        assert_eq!(rx.pop(&mut out), 256);
        assert_eq!(out[0], 0.0);
        assert!(out[1..64].windows(2).all(|w| w[1] > w[0]), "fade-in is monotone");
        assert_eq!(out[64..], [1.0; 192]);
        assert_eq!(rx.stats().underruns(), 1);
        assert_eq!(rx.stats().samples_played(), 456);
    }

    #[test]
    fn discarded_samples_are_skipped_and_later_ones_play() {
        let (mut tx, mut rx) = playback_channel(16, 1);
        tx.push(&[1.0; 6]);
        let mut out = [0.0; 2];
        rx.pop(&mut out);
        assert_eq!(rx.stats().samples_queued(), 4);
        tx.discard_queued();
        assert_eq!(rx.stats().samples_queued(), 0);
        tx.push(&[2.0, 3.0, 4.0]);
        assert_eq!(rx.stats().samples_queued(), 3);
        let mut out = [0.0; 3];
        assert_eq!(rx.pop(&mut out), 3);
        assert_eq!(out, [2.0, 3.0, 4.0]);
        assert_eq!(rx.stats().samples_discarded(), 4);
        assert_eq!(rx.stats().samples_played(), 5);
        assert_eq!(rx.stats().samples_queued(), 0);
    }

    #[test]
    fn playback_waits_for_the_start_threshold_and_again_after_an_underrun() {
        let (mut tx, mut rx) = playback_channel(1024, 1);
        tx.set_start_threshold(300);
        let mut out = [0.0; 128];
        tx.push(&[1.0; 200]);
        assert_eq!(rx.pop(&mut out), 0, "200 queued is below the threshold");
        assert!(rx.stats().is_holding());
        tx.push(&[1.0; 100]);
        assert_eq!(rx.pop(&mut out), 128, "300 queued reaches it");
        assert!(!rx.stats().is_holding());
        assert_eq!(rx.pop(&mut out), 128);
        // Once playing, the buffer is used down to empty.
        assert_eq!(rx.pop(&mut out), 44);
        assert_eq!(rx.stats().underruns(), 1);
        assert!(rx.stats().is_holding());
        // After the underrun it waits for the whole threshold again instead of playing
        // each block as it trickles in.
        tx.push(&[1.0; 128]);
        assert_eq!(rx.pop(&mut out), 0);
        tx.push(&[1.0; 172]);
        assert_eq!(rx.pop(&mut out), 128);
        assert_eq!(rx.stats().underruns(), 1);
        assert_eq!(rx.stats().silent_samples(), 128 + 84 + 128);
    }

    #[test]
    fn stereo_moves_in_whole_frames_and_fades_both_channels_alike() {
        let (mut tx, mut rx) = playback_channel(4, 2);
        // Five frames offered, four fit; a half frame is never taken.
        assert_eq!(tx.push(&[1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0, 5.0, -5.0]), 8);
        assert_eq!(tx.push(&[6.0]), 0);
        let mut out = [0.0; 4];
        assert_eq!(rx.pop(&mut out), 4);
        assert_eq!(out, [1.0, -1.0, 2.0, -2.0]);
        assert_eq!(tx.push(&[5.0, -5.0, 6.0]), 2);
        let mut out = [0.0; 8];
        assert_eq!(rx.pop(&mut out), 6, "three frames, then the buffer ran dry");
        assert_eq!(rx.stats().underruns(), 1);
        for frame in out.chunks_exact(2) {
            assert_eq!(frame[0], -frame[1], "left and right faded alike: {out:?}");
        }
    }

    #[test]
    fn a_threshold_above_the_capacity_still_lets_playback_start() {
        let (mut tx, mut rx) = playback_channel(256, 1);
        tx.set_start_threshold(10_000);
        assert_eq!(rx.stats().start_threshold(), 256);
        tx.push(&[1.0; 256]);
        let mut out = [0.0; 64];
        assert_eq!(rx.pop(&mut out), 64);
    }
}
