//! Converting the codec's sample rate to the output device's, on the producer side.
//!
//! Streams arrive in pieces of any length (one codec window at a time), so
//! [`StreamResampler`] buffers input up to the resampler's fixed chunk and emits whatever
//! output is ready. Rates are integers (Hz) and fixed per stream, so rubato's synchronous
//! FFT resampler fits: exact ratio, no drift, a known delay. A new host rate makes a new
//! resampler; nothing else in the engine has to change.

use rubato::{FftFixedIn, Resampler};

/// The host rates the engine accepts: every rate a host may use, and the validators' odd
/// ones (1235 Hz, 768 kHz, 1.23 MHz).
pub const SUPPORTED_RATES_HZ: std::ops::RangeInclusive<u32> = 1_000..=2_000_000;

/// Input samples per resampler chunk: 20 ms at 32 kHz, one codec frame.
const CHUNK_FRAMES: usize = 640;

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error(
        "output sample rate {rate_hz} Hz is not supported; use a rate between {} and {} Hz",
        SUPPORTED_RATES_HZ.start(),
        SUPPORTED_RATES_HZ.end()
    )]
    UnsupportedRate { rate_hz: u32 },
    #[error("resampler from {from_hz} Hz to {to_hz} Hz: {reason}")]
    Rubato { from_hz: u32, to_hz: u32, reason: String },
}

/// A mono streaming resampler; a pass-through when both rates are equal.
pub struct StreamResampler {
    input_rate_hz: u32,
    output_rate_hz: u32,
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    chunk_out: Vec<f32>,
    /// Samples taken in and given out so far, for the flush to know what is still inside.
    taken: u64,
    given: u64,
}

impl StreamResampler {
    pub fn new(input_rate_hz: u32, output_rate_hz: u32) -> Result<Self, ResampleError> {
        for rate_hz in [input_rate_hz, output_rate_hz] {
            if !SUPPORTED_RATES_HZ.contains(&rate_hz) {
                return Err(ResampleError::UnsupportedRate { rate_hz });
            }
        }
        let inner = if input_rate_hz == output_rate_hz {
            None
        } else {
            Some(
                FftFixedIn::new(input_rate_hz as usize, output_rate_hz as usize, CHUNK_FRAMES, 2, 1).map_err(|e| {
                    ResampleError::Rubato {
                        from_hz: input_rate_hz,
                        to_hz: output_rate_hz,
                        reason: e.to_string(),
                    }
                })?,
            )
        };
        let max_out = inner.as_ref().map_or(0, |r| r.output_frames_max());
        Ok(Self {
            input_rate_hz,
            output_rate_hz,
            inner,
            pending: Vec::with_capacity(CHUNK_FRAMES * 2),
            chunk_out: vec![0.0; max_out],
            taken: 0,
            given: 0,
        })
    }

    pub(crate) fn input_rate_hz(&self) -> u32 {
        self.input_rate_hz
    }

    pub(crate) fn output_rate_hz(&self) -> u32 {
        self.output_rate_hz
    }

    /// Output samples by which the resampled stream lags its input.
    pub fn delay_frames(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Resamples `input` and appends every output sample that is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let Some(inner) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        self.taken += input.len() as u64;
        self.pending.extend_from_slice(input);
        let mut consumed = 0;
        // Odd ratios (32 kHz to 1235 Hz) make rubato's chunks longer than the one asked for.
        while self.pending.len() - consumed >= inner.input_frames_next() {
            let chunk = &self.pending[consumed..consumed + inner.input_frames_next()];
            let (used, written) = inner
                .process_into_buffer(&[chunk], &mut [&mut self.chunk_out[..]], None)
                .expect("buffers are sized from the resampler's own limits");
            consumed += used;
            self.given += written as u64;
            out.extend_from_slice(&self.chunk_out[..written]);
        }
        self.pending.drain(..consumed);
    }

    /// Pushes out what is still inside the resampler (the end of a stream), padding with
    /// silence, and appends it to `out`.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let Some(inner) = &self.inner else {
            return;
        };
        // Everything taken in, at the output rate, after the delay. Odd ratios hold a long
        // internal block back (32 kHz to 12346 Hz: half a second), so silence goes in
        // until all of it has come out.
        let owed = (self.taken * u64::from(self.output_rate_hz)).div_ceil(u64::from(self.input_rate_hz))
            + self.delay_frames() as u64;
        let silence = vec![0.0; inner.input_frames_max()];
        let start = out.len();
        let before = self.given;
        while self.given < owed {
            self.process(&silence, out);
        }
        out.truncate(start + (owed.saturating_sub(before)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate_hz: u32, freq_hz: f32, seconds: f32) -> Vec<f32> {
        (0..(rate_hz as f32 * seconds) as usize)
            .map(|i| (std::f32::consts::TAU * freq_hz * i as f32 / rate_hz as f32).sin())
            .collect()
    }

    #[test]
    fn equal_rates_pass_through() {
        let mut r = StreamResampler::new(32_000, 32_000).unwrap();
        let mut out = Vec::new();
        r.process(&[0.25, -0.5], &mut out);
        assert_eq!(out, [0.25, -0.5]);
        assert_eq!(r.delay_frames(), 0);
    }

    #[test]
    fn rates_outside_the_range_are_refused_with_the_value() {
        let err = StreamResampler::new(32_000, 999).err().unwrap().to_string();
        assert!(err.contains("999 Hz") && err.contains("1000 and 2000000"), "{err}");
        assert!(StreamResampler::new(32_000, 2_000_001).is_err());
    }

    #[test]
    fn every_kind_of_host_rate_resamples_to_the_right_length() {
        for rate_hz in [
            1_000, 1_235, 8_000, 11_025, 12_346, 22_050, 44_100, 88_200, 123_457, 176_400, 352_800, 768_000, 1_234_568,
        ] {
            let mut r = StreamResampler::new(32_000, rate_hz).unwrap();
            let mut out = Vec::new();
            for piece in sine(32_000, 220.0, 0.5).chunks(1_111) {
                r.process(piece, &mut out);
            }
            r.flush(&mut out);
            let expected = rate_hz as usize / 2 + r.delay_frames();
            assert!(
                out.len() >= expected,
                "{rate_hz} Hz: {} samples, expected {expected}",
                out.len()
            );
            assert!(out.iter().all(|s| s.is_finite()), "{rate_hz} Hz: a non-finite sample");
        }
    }

    #[test]
    fn a_sine_keeps_its_frequency_and_length_at_44_1_khz() {
        let input = sine(32_000, 440.0, 1.0);
        let mut r = StreamResampler::new(32_000, 44_100).unwrap();
        let mut out = Vec::new();
        // Odd piece sizes, as codec windows arrive.
        for piece in input.chunks(777) {
            r.process(piece, &mut out);
        }
        r.flush(&mut out);
        let delay = r.delay_frames();
        assert!(out.len() >= 44_100 + delay, "{} < {}", out.len(), 44_100 + delay);
        // Fit a 440 Hz sinusoid at the output rate (the delay is fractional) and require
        // the rest to be at least 60 dB below it.
        let segment = &out[delay + 1_000..delay + 43_000];
        let w = std::f64::consts::TAU * 440.0 / 44_100.0;
        let (mut a, mut b) = (0.0f64, 0.0f64);
        for (i, &x) in segment.iter().enumerate() {
            let t = (i + delay + 1_000) as f64 * w;
            a += f64::from(x) * t.sin();
            b += f64::from(x) * t.cos();
        }
        let n = segment.len() as f64;
        let (a, b) = (2.0 * a / n, 2.0 * b / n);
        let residual: f64 = segment
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let t = (i + delay + 1_000) as f64 * w;
                (f64::from(x) - a * t.sin() - b * t.cos()).powi(2)
            })
            .sum::<f64>()
            / n;
        let amplitude = (a * a + b * b).sqrt();
        let snr_db = 10.0 * ((amplitude * amplitude / 2.0) / residual).log10();
        assert!((amplitude - 1.0).abs() < 1e-2, "amplitude {amplitude}");
        assert!(snr_db > 60.0, "signal-to-residual {snr_db:.1} dB");
    }
}
