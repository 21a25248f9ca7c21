//! A one-pole high-pass at a few hertz that removes a constant offset from a stream's
//! audio: an instrument's output gated on and off with an offset would thump on every
//! note. Music has nothing down there; a codec can (the random-weight test bundle's sits at
//! +0.32).

use std::f32::consts::TAU;

/// Corner frequency: far below music, fast enough to settle within a second.
const CORNER_HZ: f32 = 5.0;

#[derive(Clone, Copy, Debug, Default)]
pub struct DcBlocker {
    pole: f32,
    last_in: f32,
    last_out: f32,
}

impl DcBlocker {
    pub(crate) fn new(rate_hz: f32) -> Self {
        Self {
            pole: 1.0 - TAU * CORNER_HZ / rate_hz,
            last_in: 0.0,
            last_out: 0.0,
        }
    }

    pub(crate) fn process(&mut self, input: f32) -> f32 {
        let output = input - self.last_in + self.pole * self.last_out;
        self.last_in = input;
        self.last_out = output;
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_offset_dies_away() {
        let mut dc = DcBlocker::new(48_000.0);
        let settled: Vec<f32> = (0..48_000).map(|_| dc.process(0.3)).collect();
        assert!(settled[47_999].abs() < 1e-3, "{}", settled[47_999]);
    }

    #[test]
    fn music_passes_unchanged_in_level() {
        let mut dc = DcBlocker::new(48_000.0);
        let sine = |i: usize| (TAU * 110.0 * i as f32 / 48_000.0).sin();
        let out: Vec<f32> = (0..96_000).map(|i| dc.process(sine(i) + 0.3)).collect();
        let rms = |s: &[f32]| (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt();
        let ratio = rms(&out[48_000..]) / std::f32::consts::FRAC_1_SQRT_2;
        assert!((ratio - 1.0).abs() < 0.01, "110 Hz comes out at {ratio} of its level");
    }
}
