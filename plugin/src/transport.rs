//! The host's transport as the audio thread last saw it, kept in atomics for the
//! controller: whether it plays, the tempo, and where the next bar line is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nice_plug::prelude::Transport;

/// Written by the audio thread at each block, read by the controller. Unknown values
/// are NaN.
#[derive(Debug)]
pub struct HostTransport {
    playing: AtomicBool,
    tempo_bpm: AtomicU64,
    pos_beats: AtomicU64,
    bar_beats: AtomicU64,
}

impl Default for HostTransport {
    fn default() -> Self {
        let unknown = || AtomicU64::new(f64::NAN.to_bits());
        Self {
            playing: AtomicBool::new(false),
            tempo_bpm: unknown(),
            pos_beats: unknown(),
            bar_beats: unknown(),
        }
    }
}

/// What the controller reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransportView {
    pub playing: bool,
    pub tempo_bpm: Option<f64>,
    pos_beats: Option<f64>,
    /// Quarter notes per bar.
    bar_beats: Option<f64>,
}

impl HostTransport {
    /// Stores the block's transport: atomics only, for the audio thread.
    pub fn publish(&self, transport: &Transport) {
        let bar_beats = match (transport.time_sig_numerator, transport.time_sig_denominator) {
            (Some(numerator), Some(denominator)) if numerator > 0 && denominator > 0 => {
                f64::from(numerator) / f64::from(denominator) * 4.0
            }
            _ => f64::NAN,
        };
        let store =
            |cell: &AtomicU64, value: Option<f64>| cell.store(value.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        store(&self.tempo_bpm, transport.tempo);
        store(&self.pos_beats, transport.pos_beats());
        store(&self.bar_beats, Some(bar_beats));
        self.playing.store(transport.playing, Ordering::Relaxed);
    }

    pub fn view(&self) -> TransportView {
        let load = |cell: &AtomicU64| Some(f64::from_bits(cell.load(Ordering::Relaxed))).filter(|v| v.is_finite());
        TransportView {
            playing: self.playing.load(Ordering::Relaxed),
            tempo_bpm: load(&self.tempo_bpm).filter(|bpm| *bpm > 0.0),
            pos_beats: load(&self.pos_beats),
            bar_beats: load(&self.bar_beats).filter(|beats| *beats > 0.0),
        }
    }
}

impl TransportView {
    /// Seconds from now to the next bar line and the length of a bar, while the transport
    /// plays with a known tempo, position and metre.
    pub fn next_bar(&self) -> Option<(f64, f64)> {
        if !self.playing {
            return None;
        }
        let seconds_per_beat = 60.0 / self.tempo_bpm?;
        let bar_beats = self.bar_beats?;
        let into_bar = self.pos_beats?.rem_euclid(bar_beats);
        Some(((bar_beats - into_bar) * seconds_per_beat, bar_beats * seconds_per_beat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(playing: bool, tempo: f64, pos: f64, bar: f64) -> TransportView {
        TransportView {
            playing,
            tempo_bpm: Some(tempo),
            pos_beats: Some(pos),
            bar_beats: Some(bar),
        }
    }

    #[test]
    fn the_next_bar_is_found_from_the_position_in_the_bar() {
        // 120 bpm in 4/4, one beat into bar 3: three beats (1.5 s) to go, bars of 2 s.
        assert_eq!(view(true, 120.0, 9.0, 4.0).next_bar(), Some((1.5, 2.0)));
        // 6/8 is 3 quarter notes a bar; on the bar line the next one is a whole bar away.
        assert_eq!(view(true, 90.0, 6.0, 3.0).next_bar(), Some((2.0, 2.0)));
    }

    #[test]
    fn no_bar_while_stopped_or_without_a_tempo() {
        assert_eq!(view(false, 120.0, 9.0, 4.0).next_bar(), None);
        let no_tempo = TransportView {
            tempo_bpm: None,
            ..view(true, 120.0, 9.0, 4.0)
        };
        assert_eq!(no_tempo.next_bar(), None);
    }
}
