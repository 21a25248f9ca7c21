//! Converting the codec's sample rate to the output device's, on the producer side.
//!
//! Streams arrive in pieces of any length (one codec window at a time), so
//! [`StreamResampler`] buffers input up to the resampler's fixed chunk and emits whatever
//! output is ready. Rates are fixed per stream. Whole-hertz rates use rubato's synchronous
//! FFT resampler: exact ratio, no drift, a known delay. A host may also run at a rate that
//! is not a whole number of hertz (44100.5 Hz, the validators' 1234.5678 Hz): that ratio
//! goes to rubato's windowed-sinc resampler, so the pitch is exact there too. A new host
//! rate makes a new resampler; nothing else in the engine has to change. Audio of several
//! channels comes and goes interleaved; rubato resamples each channel in step.

use rubato::{FftFixedIn, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType, WindowFunction};

/// The host rates the engine accepts: every rate a host may use, and the validators' odd
/// ones (1235 Hz, 768 kHz, 1.23 MHz).
pub const SUPPORTED_RATES_HZ: std::ops::RangeInclusive<u32> = 1_000..=2_000_000;

/// [`SUPPORTED_RATES_HZ`] for rates that are not whole numbers.
pub fn is_supported_rate(rate_hz: f64) -> bool {
    rate_hz >= f64::from(*SUPPORTED_RATES_HZ.start()) && rate_hz <= f64::from(*SUPPORTED_RATES_HZ.end())
}

/// Input samples per resampler chunk: 20 ms at 32 kHz, one codec frame.
const CHUNK_FRAMES: usize = 640;

/// The windowed-sinc resampler for rates that are not whole hertz: a long filter, so
/// that its passband and stopband match the FFT resampler's (the sine test holds both to
/// 60 dB).
const SINC: SincInterpolationParameters = SincInterpolationParameters {
    sinc_len: 256,
    f_cutoff: 0.95,
    oversampling_factor: 256,
    interpolation: SincInterpolationType::Cubic,
    window: WindowFunction::BlackmanHarris2,
};

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error(
        "output sample rate {rate_hz} Hz is not supported; use a rate between {} and {} Hz",
        SUPPORTED_RATES_HZ.start(),
        SUPPORTED_RATES_HZ.end()
    )]
    UnsupportedRate { rate_hz: f64 },
    #[error("resampler from {from_hz} Hz to {to_hz} Hz: {reason}")]
    Rubato { from_hz: f64, to_hz: f64, reason: String },
}

/// rubato's two resamplers behind the calls this module makes (its `Resampler` trait has
/// generic methods, so it cannot be a trait object).
enum Kernel {
    Fft(FftFixedIn<f32>),
    Sinc(SincFixedIn<f32>),
}

impl Kernel {
    fn resampler(&mut self) -> &mut dyn ResamplerCalls {
        match self {
            Self::Fft(fft) => fft,
            Self::Sinc(sinc) => sinc,
        }
    }

    fn output_delay(&self) -> usize {
        match self {
            Self::Fft(fft) => fft.output_delay(),
            Self::Sinc(sinc) => sinc.output_delay(),
        }
    }
}

/// The non-generic part of rubato's `Resampler`, which is object safe.
trait ResamplerCalls {
    fn input_frames_next(&self) -> usize;
    fn input_frames_max(&self) -> usize;
    fn output_frames_max(&self) -> usize;
    /// One chunk: each channel's `input_frames_next()` first frames of `input` (longer
    /// buffers are fine) into `output`.
    fn process_chunk(&mut self, input: &[Vec<f32>], output: &mut [Vec<f32>]) -> (usize, usize);
}

impl<R: Resampler<f32>> ResamplerCalls for R {
    fn input_frames_next(&self) -> usize {
        Resampler::input_frames_next(self)
    }

    fn input_frames_max(&self) -> usize {
        Resampler::input_frames_max(self)
    }

    fn output_frames_max(&self) -> usize {
        Resampler::output_frames_max(self)
    }

    fn process_chunk(&mut self, input: &[Vec<f32>], output: &mut [Vec<f32>]) -> (usize, usize) {
        self.process_into_buffer(input, output, None)
            .expect("buffers are sized from the resampler's own limits")
    }
}

/// A streaming resampler of interleaved audio; a pass-through when both rates are equal.
pub struct StreamResampler {
    input_rate_hz: f64,
    output_rate_hz: f64,
    channels: usize,
    inner: Option<Kernel>,
    /// Each channel's input not yet resampled.
    pending: Vec<Vec<f32>>,
    chunk_in: Vec<Vec<f32>>,
    chunk_out: Vec<Vec<f32>>,
    /// Frames taken in and given out so far, for the flush to know what is still inside.
    taken: u64,
    given: u64,
}

impl StreamResampler {
    /// Rates in hertz, whole or not, within [`SUPPORTED_RATES_HZ`], for `channels`
    /// interleaved channels.
    pub fn new(input_rate_hz: f64, output_rate_hz: f64, channels: usize) -> Result<Self, ResampleError> {
        for rate_hz in [input_rate_hz, output_rate_hz] {
            if !is_supported_rate(rate_hz) {
                return Err(ResampleError::UnsupportedRate { rate_hz });
            }
        }
        let rubato_error = |e: rubato::ResamplerConstructionError| ResampleError::Rubato {
            from_hz: input_rate_hz,
            to_hz: output_rate_hz,
            reason: e.to_string(),
        };
        let whole = |rate_hz: f64| rate_hz.fract() == 0.0;
        let mut inner = if input_rate_hz == output_rate_hz {
            None
        } else if whole(input_rate_hz) && whole(output_rate_hz) {
            let fft = FftFixedIn::new(
                input_rate_hz as usize,
                output_rate_hz as usize,
                CHUNK_FRAMES,
                2,
                channels,
            )
            .map_err(rubato_error)?;
            Some(Kernel::Fft(fft))
        } else {
            let sinc = SincFixedIn::new(output_rate_hz / input_rate_hz, 1.0, SINC, CHUNK_FRAMES, channels)
                .map_err(rubato_error)?;
            Some(Kernel::Sinc(sinc))
        };
        let (max_in, max_out) = inner.as_mut().map_or((0, 0), |kernel: &mut Kernel| {
            let calls = kernel.resampler();
            (calls.input_frames_max(), calls.output_frames_max())
        });
        Ok(Self {
            input_rate_hz,
            output_rate_hz,
            channels,
            inner,
            pending: vec![Vec::with_capacity(CHUNK_FRAMES * 2); channels],
            chunk_in: vec![vec![0.0; max_in]; channels],
            chunk_out: vec![vec![0.0; max_out]; channels],
            taken: 0,
            given: 0,
        })
    }

    pub(crate) fn input_rate_hz(&self) -> f64 {
        self.input_rate_hz
    }

    pub(crate) fn output_rate_hz(&self) -> f64 {
        self.output_rate_hz
    }

    /// Output frames by which the resampled stream lags its input.
    pub fn delay_frames(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Resamples `input` (whole frames, channels interleaved) and appends every output
    /// frame that is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let Some(kernel) = self.inner.as_mut() else {
            out.extend_from_slice(input);
            return;
        };
        let inner = kernel.resampler();
        let channels = self.channels;
        self.taken += (input.len() / channels) as u64;
        for (c, pending) in self.pending.iter_mut().enumerate() {
            pending.extend(input.iter().skip(c).step_by(channels));
        }
        let mut consumed = 0;
        // Odd ratios (32 kHz to 1235 Hz) make rubato's chunks longer than the one asked for.
        while self.pending[0].len() - consumed >= inner.input_frames_next() {
            let frames = inner.input_frames_next();
            for (chunk, pending) in self.chunk_in.iter_mut().zip(&self.pending) {
                chunk[..frames].copy_from_slice(&pending[consumed..consumed + frames]);
            }
            let (used, written) = inner.process_chunk(&self.chunk_in, &mut self.chunk_out);
            consumed += used;
            self.given += written as u64;
            if channels == 1 {
                out.extend_from_slice(&self.chunk_out[0][..written]);
            } else {
                out.reserve(written * channels);
                for i in 0..written {
                    out.extend(self.chunk_out.iter().map(|channel| channel[i]));
                }
            }
        }
        for pending in &mut self.pending {
            pending.drain(..consumed);
        }
    }

    /// Pushes out what is still inside the resampler (the end of a stream), padding with
    /// silence, and appends it to `out`.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let Some(kernel) = self.inner.as_mut() else {
            return;
        };
        let input_frames_max = kernel.resampler().input_frames_max();
        // Everything taken in, at the output rate, after the delay. Odd ratios hold a long
        // internal block back (32 kHz to 12346 Hz: half a second), so silence goes in
        // until all of it has come out.
        let owed =
            (self.taken as f64 * self.output_rate_hz / self.input_rate_hz).ceil() as u64 + self.delay_frames() as u64;
        let silence = vec![0.0; input_frames_max * self.channels];
        let start = out.len();
        let before = self.given;
        while self.given < owed {
            self.process(&silence, out);
        }
        out.truncate(start + (owed.saturating_sub(before)) as usize * self.channels);
    }
}

/// All of `samples` (one channel) from `from_hz` to `to_hz` at once, aligned (the
/// resampler's delay dropped) and cut or padded with silence to `length` samples.
pub(crate) fn resample_whole(
    samples: &[f32],
    from_hz: f64,
    to_hz: f64,
    length: usize,
) -> Result<Vec<f32>, ResampleError> {
    let mut resampler = StreamResampler::new(from_hz, to_hz, 1)?;
    let mut resampled = Vec::new();
    resampler.process(samples, &mut resampled);
    resampler.flush(&mut resampled);
    let delay = resampler.delay_frames().min(resampled.len());
    resampled.drain(..delay);
    resampled.resize(length, 0.0);
    Ok(resampled)
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
        let mut r = StreamResampler::new(32_000.0, 32_000.0, 1).unwrap();
        let mut out = Vec::new();
        r.process(&[0.25, -0.5], &mut out);
        assert_eq!(out, [0.25, -0.5]);
        assert_eq!(r.delay_frames(), 0);
    }

    #[test]
    fn rates_outside_the_range_are_refused_with_the_value() {
        let err = StreamResampler::new(32_000.0, 999.0, 1).err().unwrap().to_string();
        assert!(err.contains("999 Hz") && err.contains("1000 and 2000000"), "{err}");
        assert!(StreamResampler::new(32_000.0, 2_000_001.0, 1).is_err());
    }

    #[test]
    fn every_kind_of_host_rate_resamples_to_the_right_length() {
        for rate_hz in [
            1_000, 1_235, 8_000, 11_025, 12_346, 22_050, 44_100, 88_200, 123_457, 176_400, 352_800, 768_000, 1_234_568,
        ] {
            let mut r = StreamResampler::new(32_000.0, f64::from(rate_hz), 1).unwrap();
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
        assert_keeps_a_sine(44_100.0);
    }

    #[test]
    fn rates_that_are_not_whole_hertz_keep_the_pitch_and_the_length_exactly() {
        assert_keeps_a_sine(44_100.5);
        // The VST3 validator's rate: rounding it to 1235 Hz would give 4 samples too many
        // in 10 s, and a pitch 0.6 cents sharp.
        let rate_hz = 1_234.567_8;
        let mut r = StreamResampler::new(32_000.0, rate_hz, 1).unwrap();
        let mut out = Vec::new();
        for piece in sine(32_000, 110.0, 10.0).chunks(640) {
            r.process(piece, &mut out);
        }
        r.flush(&mut out);
        let expected = 10.0 * rate_hz + r.delay_frames() as f64;
        assert!(
            (out.len() as f64 - expected).abs() < 1.0,
            "{} samples, expected {expected}",
            out.len()
        );
    }

    #[test]
    fn channels_resample_in_step_as_each_would_alone() {
        let (left, right) = (sine(32_000, 440.0, 0.5), sine(32_000, 97.0, 0.5));
        let interleaved: Vec<f32> = left.iter().zip(&right).flat_map(|(&l, &r)| [l, r]).collect();
        for rate_hz in [44_100.0, 44_100.5] {
            let mut stereo = StreamResampler::new(32_000.0, rate_hz, 2).unwrap();
            let mut out = Vec::new();
            // Pieces of whole frames, of odd lengths.
            for piece in interleaved.chunks(2 * 777) {
                stereo.process(piece, &mut out);
            }
            stereo.flush(&mut out);
            for (c, channel) in [&left, &right].into_iter().enumerate() {
                let mut mono = StreamResampler::new(32_000.0, rate_hz, 1).unwrap();
                let mut alone = Vec::new();
                for piece in channel.chunks(777) {
                    mono.process(piece, &mut alone);
                }
                mono.flush(&mut alone);
                let ours: Vec<f32> = out.iter().skip(c).step_by(2).copied().collect();
                assert_eq!(ours, alone, "{rate_hz} Hz, channel {c}");
            }
        }
    }

    /// A 440 Hz sine resampled from 32 kHz to `rate_hz` is that sine at the new rate, to
    /// within 60 dB.
    fn assert_keeps_a_sine(rate_hz: f64) {
        let input = sine(32_000, 440.0, 1.0);
        let mut r = StreamResampler::new(32_000.0, rate_hz, 1).unwrap();
        let mut out = Vec::new();
        // Odd piece sizes, as codec windows arrive.
        for piece in input.chunks(777) {
            r.process(piece, &mut out);
        }
        r.flush(&mut out);
        let delay = r.delay_frames();
        assert!(
            out.len() >= 44_100 + delay,
            "{rate_hz} Hz: {} < {}",
            out.len(),
            44_100 + delay
        );
        // Fit a 440 Hz sinusoid at the output rate (the delay is fractional) and require
        // the rest to be at least 60 dB below it.
        let segment = &out[delay + 1_000..delay + 43_000];
        let w = std::f64::consts::TAU * 440.0 / rate_hz;
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
        assert!((amplitude - 1.0).abs() < 1e-2, "{rate_hz} Hz: amplitude {amplitude}");
        assert!(snr_db > 60.0, "{rate_hz} Hz: signal-to-residual {snr_db:.1} dB");
    }
}
