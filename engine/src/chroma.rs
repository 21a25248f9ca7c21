//! The chroma of a melody, as a melody model takes it: computed as transformers'
//! `MusicgenMelodyFeatureExtractor` computes it, from audio at any rate.
//!
//! The audio's channels are mixed, resampled to the extractor's rate and cut to its
//! longest chunk; a power spectrogram (periodic Hann window of `n_fft`, hop `hop_length`,
//! centred with reflected ends, scaled by the window's norm) goes through librosa's chroma
//! filter bank (tuning 0, octave weighting around C5, starting at C); each frame is scaled
//! by its largest bin, and its pitch class is the argmax. The model then sees each frame
//! as a one-hot vector of that class.
//!
//! The settings come from the bundle's manifest (`melody`), where the export wrote the
//! extractor's own.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::bundle::MelodySpec;
use crate::resample::{ResampleError, resample_whole};

#[derive(Debug, thiserror::Error)]
pub enum ChromaError {
    #[error("the melody has no samples: give at least one frame of audio")]
    Empty,
    #[error("the melody's audio: {0}")]
    Resample(#[from] ResampleError),
}

/// A melody as a melody model takes it: one pitch class (0 = C ... 11 = B) per chroma
/// frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Melody {
    pitch_classes: Vec<u8>,
}

impl Melody {
    /// A melody of given pitch classes (taken modulo 12), one per chroma frame.
    pub fn from_pitch_classes(pitch_classes: Vec<u8>) -> Self {
        Self { pitch_classes }
    }

    pub fn pitch_classes(&self) -> &[u8] {
        &self.pitch_classes
    }

    /// The melody as the decoder takes it, one-hot frames `[frames, num_chroma]` tiled to
    /// `frames` as transformers tiles a short melody (and cuts a long one); `None` is the
    /// null melody of the unconditional row and of a prompt without a melody: pitch class
    /// 0 throughout.
    pub(crate) fn one_hot(melody: Option<&Melody>, frames: usize, num_chroma: usize) -> Vec<f32> {
        let classes: &[u8] = melody.map_or(&[0], |m| &m.pitch_classes);
        let mut one_hot = vec![0.0; frames * num_chroma];
        for (frame, &class) in one_hot.chunks_exact_mut(num_chroma).zip(classes.iter().cycle()) {
            frame[usize::from(class) % num_chroma] = 1.0;
        }
        one_hot
    }
}

/// The feature extractor's computation for one bundle's settings.
pub struct ChromaExtractor {
    spec: MelodySpec,
    /// Periodic Hann window of `n_fft`, divided by its own norm.
    window: Vec<f32>,
    /// `[num_chroma, n_fft / 2 + 1]`.
    filters: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

/// Below this, a frame's chroma is not scaled up (the extractor's `eps`).
const NORM_FLOOR: f32 = 1e-6;

impl ChromaExtractor {
    pub fn new(spec: MelodySpec) -> Self {
        let n = spec.n_fft;
        let hann: Vec<f32> = (0..n)
            .map(|i| (0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos()) as f32)
            .collect();
        let norm = hann.iter().map(|w| w * w).sum::<f32>().sqrt();
        Self {
            window: hann.iter().map(|w| w / norm).collect(),
            filters: chroma_filters(spec.sample_rate_hz, n, spec.num_chroma),
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(n),
            spec,
        }
    }

    /// The melody of `audio` (`channels` interleaved, at `rate_hz`).
    pub fn melody(&self, audio: &[f32], channels: usize, rate_hz: f64) -> Result<Melody, ChromaError> {
        let chroma = self.normalized_chroma(audio, channels, rate_hz)?;
        let pitch_classes = chroma
            .chunks_exact(self.spec.num_chroma)
            .map(|frame| {
                // The first of equal maxima, as torch's argmax picks.
                let mut best = 0;
                for (class, &value) in frame.iter().enumerate() {
                    if value > frame[best] {
                        best = class;
                    }
                }
                best as u8
            })
            .collect();
        Ok(Melody { pitch_classes })
    }

    /// Each frame's chroma scaled by its largest bin, `[frames, num_chroma]` flattened:
    /// what the pitch classes are the argmax of.
    pub fn normalized_chroma(&self, audio: &[f32], channels: usize, rate_hz: f64) -> Result<Vec<f32>, ChromaError> {
        let channels = channels.max(1);
        if audio.len() < channels {
            return Err(ChromaError::Empty);
        }
        let mix: Vec<f32> = audio
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect();
        let target_hz = f64::from(self.spec.sample_rate_hz);
        // torchaudio's resampler rounds the length up.
        let length = (mix.len() as f64 * target_hz / rate_hz).ceil() as usize;
        let mut samples = resample_whole(&mix, rate_hz, target_hz, length)?;
        samples.truncate(self.spec.max_seconds * self.spec.sample_rate_hz as usize);
        Ok(self.chroma_of(&samples))
    }

    fn chroma_of(&self, samples: &[f32]) -> Vec<f32> {
        let (n, hop, num_chroma) = (self.spec.n_fft, self.spec.hop_length, self.spec.num_chroma);
        // Shorter audio is zero-padded to one window, centred; then both ends are reflected.
        let short_pad = n.saturating_sub(samples.len());
        let mut padded = vec![0.0; short_pad / 2];
        padded.extend_from_slice(samples);
        padded.resize(padded.len() + short_pad - short_pad / 2, 0.0);
        let half = n / 2;
        let mut signal = Vec::with_capacity(padded.len() + n);
        signal.extend((1..=half).rev().map(|i| padded[i]));
        signal.extend_from_slice(&padded);
        signal.extend((1..=half).map(|i| padded[padded.len() - 1 - i]));

        let bins = n / 2 + 1;
        let frames = 1 + (signal.len() - n) / hop;
        let mut block = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut power = vec![0.0f32; bins];
        let mut chroma = vec![0.0f32; frames * num_chroma];
        for (t, out) in chroma.chunks_exact_mut(num_chroma).enumerate() {
            let start = t * hop;
            for ((b, x), w) in block.iter_mut().zip(&signal[start..start + n]).zip(&self.window) {
                *b = x * w;
            }
            self.fft
                .process(&mut block, &mut spectrum)
                .expect("buffers come from the plan");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (value, filter) in out.iter_mut().zip(self.filters.chunks_exact(bins)) {
                *value = filter.iter().zip(&power).map(|(f, p)| f * p).sum();
            }
            let peak = out.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(NORM_FLOOR);
            for value in out.iter_mut() {
                *value /= peak;
            }
        }
        chroma
    }
}

/// librosa's chroma filter bank as transformers' `chroma_filter_bank` builds it (tuning 0,
/// each column's L2 norm 1, a Gaussian octave weighting centred at octave 5 with half-width
/// 2, rows from C), `[num_chroma, n_fft / 2 + 1]`; computed in f64 and stored in f32 as
/// the extractor stores it.
fn chroma_filters(sample_rate_hz: u32, n_fft: usize, num_chroma: usize) -> Vec<f32> {
    let chroma = num_chroma as f64;
    // A0 (27.5 Hz): the octave scale's origin.
    let reference_hz = 440.0 / 16.0;
    let mut bins: Vec<f64> = (1..n_fft)
        .map(|i| {
            let hz = i as f64 * f64::from(sample_rate_hz) / n_fft as f64;
            chroma * (hz / reference_hz).log2()
        })
        .collect();
    // The DC bin sits 1.5 octaves below the first.
    bins.insert(0, bins[0] - 1.5 * chroma);
    let widths: Vec<f64> = (0..n_fft)
        .map(|j| {
            if j + 1 < n_fft {
                (bins[j + 1] - bins[j]).max(1.0)
            } else {
                1.0
            }
        })
        .collect();
    let half_chroma = (chroma / 2.0).round();
    let mut filters = vec![0.0f64; num_chroma * n_fft];
    for j in 0..n_fft {
        for c in 0..num_chroma {
            let distance = (bins[j] - c as f64 + half_chroma + 10.0 * chroma).rem_euclid(chroma) - half_chroma;
            filters[c * n_fft + j] = (-0.5 * (2.0 * distance / widths[j]).powi(2)).exp();
        }
        let norm = (0..num_chroma)
            .map(|c| filters[c * n_fft + j].powi(2))
            .sum::<f64>()
            .sqrt();
        let octave_weight = (-0.5 * ((bins[j] / chroma - 5.0) / 2.0).powi(2)).exp();
        for c in 0..num_chroma {
            filters[c * n_fft + j] = filters[c * n_fft + j] / norm * octave_weight;
        }
    }
    // Rows from C rather than A: three pitch classes on.
    let shift = 3 * (num_chroma / 12);
    let bins_kept = n_fft / 2 + 1;
    let mut kept = Vec::with_capacity(num_chroma * bins_kept);
    for c in 0..num_chroma {
        let row = (c + shift) % num_chroma;
        kept.extend(filters[row * n_fft..row * n_fft + bins_kept].iter().map(|&f| f as f32));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MelodySpec {
        MelodySpec {
            num_chroma: 12,
            chroma_length: 235,
            sample_rate_hz: 32_000,
            n_fft: 16_384,
            hop_length: 4096,
            max_seconds: 30,
        }
    }

    fn sine(hz: f64, rate_hz: f64, seconds: f64) -> Vec<f32> {
        (0..(rate_hz * seconds) as usize)
            .map(|i| (0.5 * (std::f64::consts::TAU * hz * i as f64 / rate_hz).sin()) as f32)
            .collect()
    }

    #[test]
    fn a_sine_has_its_pitch_class_in_every_frame() {
        let extractor = ChromaExtractor::new(spec());
        // A4, E5, C4 at 32 kHz and at 48 kHz (resampled).
        for (hz, class) in [(440.0, 9), (659.26, 4), (261.63, 0)] {
            for rate_hz in [32_000.0, 48_000.0] {
                let melody = extractor.melody(&sine(hz, rate_hz, 2.0), 1, rate_hz).unwrap();
                // 2 s at 32 kHz: 1 + 64000 / 4096 frames.
                assert_eq!(melody.pitch_classes().len(), 16);
                assert!(
                    melody.pitch_classes().iter().all(|&c| c == class),
                    "{hz} Hz at {rate_hz}: {melody:?}"
                );
            }
        }
    }

    #[test]
    fn a_short_melody_tiles_and_none_is_pitch_class_zero() {
        let melody = Melody {
            pitch_classes: vec![4, 7],
        };
        let one_hot = Melody::one_hot(Some(&melody), 5, 12);
        let classes: Vec<usize> = one_hot
            .chunks_exact(12)
            .map(|f| f.iter().position(|&v| v == 1.0).unwrap())
            .collect();
        assert_eq!(classes, [4, 7, 4, 7, 4]);
        assert!(
            Melody::one_hot(None, 3, 12)
                .chunks_exact(12)
                .all(|f| f[0] == 1.0 && f[1..].iter().all(|&v| v == 0.0))
        );
    }

    #[test]
    fn silence_and_stereo_are_handled_as_the_extractor_does() {
        let extractor = ChromaExtractor::new(spec());
        // Silence: every bin 0, pitch class 0 (the first of equal maxima).
        let silent = extractor.melody(&vec![0.0; 32_000], 1, 32_000.0).unwrap();
        assert!(silent.pitch_classes().iter().all(|&c| c == 0));
        // Stereo is mixed: the same tone in both channels is the mono tone.
        let mono = sine(440.0, 32_000.0, 1.0);
        let stereo: Vec<f32> = mono.iter().flat_map(|&x| [x, x]).collect();
        assert_eq!(
            extractor.melody(&stereo, 2, 32_000.0).unwrap(),
            extractor.melody(&mono, 1, 32_000.0).unwrap()
        );
        assert!(matches!(extractor.melody(&[], 1, 32_000.0), Err(ChromaError::Empty)));
    }
}
