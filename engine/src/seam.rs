//! How a stream changes where its context window slid (a *seam*), measured on its audio:
//! the sample jump across the seam and the spectral change between the 20 ms before and
//! after it, each as a ratio to the same measure everywhere else in the stream. A ratio
//! near 1 means the seam is as smooth as any other moment; a click or a gap stands out
//! far above it.

use realfft::RealFftPlanner;

/// One seam's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeamMeasure {
    /// The global frame at which the new window's generation began.
    pub frame: usize,
    /// Largest `|x[n] - x[n-1]|` within 2 samples of the seam over the RMS of all such
    /// differences in the stream.
    pub jump_ratio: f32,
    /// Spectral flux from the window before the seam to the window after it, over the
    /// median flux between neighbouring windows in the stream.
    pub flux_ratio: f32,
}

/// Measures each seam of `audio` (mono, at `rate_hz`). A seam at frame `f` sits at sample
/// `f * rate_hz / frame_rate_hz + offset_samples`; seams too near either end are skipped.
pub fn measure_seams(
    audio: &[f32],
    rate_hz: u32,
    frame_rate_hz: f64,
    offset_samples: usize,
    seams: &[usize],
) -> Vec<SeamMeasure> {
    let window = (f64::from(rate_hz) / frame_rate_hz).round() as usize;
    if audio.len() < 4 * window {
        return Vec::new();
    }
    let diffs: Vec<f32> = audio.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
    let diff_rms = (diffs.iter().map(|d| d * d).sum::<f32>() / diffs.len() as f32).sqrt();
    let spectra = Spectra::new(window);
    let mut fluxes: Vec<f32> = (1..audio.len() / window)
        .map(|i| {
            spectra.flux(
                &audio[(i - 1) * window..i * window],
                &audio[i * window..(i + 1) * window],
            )
        })
        .collect();
    fluxes.sort_by(f32::total_cmp);
    let median_flux = fluxes[fluxes.len() / 2].max(f32::EPSILON);

    seams
        .iter()
        .filter_map(|&frame| {
            let at = (frame as f64 * f64::from(rate_hz) / frame_rate_hz).round() as usize + offset_samples;
            if at < window || at + window > audio.len() {
                return None;
            }
            let jump = diffs[at.saturating_sub(3)..(at + 2).min(diffs.len())]
                .iter()
                .copied()
                .fold(0.0f32, f32::max);
            let flux = spectra.flux(&audio[at - window..at], &audio[at..at + window]);
            Some(SeamMeasure {
                frame,
                jump_ratio: jump / diff_rms.max(f32::EPSILON),
                flux_ratio: flux / median_flux,
            })
        })
        .collect()
}

/// Log-magnitude spectra of Hann-windowed blocks of one length.
struct Spectra {
    fft: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
    hann: Vec<f32>,
}

impl Spectra {
    fn new(len: usize) -> Self {
        let hann = (0..len)
            .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / len as f32).cos())
            .collect();
        Self {
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(len),
            hann,
        }
    }

    fn log_magnitudes(&self, block: &[f32]) -> Vec<f32> {
        let mut input: Vec<f32> = block.iter().zip(&self.hann).map(|(x, w)| x * w).collect();
        let mut spectrum = self.fft.make_output_vec();
        self.fft
            .process(&mut input, &mut spectrum)
            .expect("buffers come from the plan");
        spectrum.iter().map(|c| (c.norm() + 1e-6).ln()).collect()
    }

    /// Euclidean distance between the two blocks' log spectra.
    fn flux(&self, a: &[f32], b: &[f32]) -> f32 {
        let (a, b) = (self.log_magnitudes(a), self.log_magnitudes(b));
        a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<f32> {
        let mut state = 12345u32;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn a_seam_in_steady_noise_looks_like_anywhere_else() {
        let audio = noise(32_000 * 4);
        let seams = measure_seams(&audio, 32_000, 50.0, 0, &[100]);
        assert_eq!(seams.len(), 1);
        assert!(seams[0].jump_ratio < 5.0, "{:?}", seams[0]);
        assert!(seams[0].flux_ratio < 2.0, "{:?}", seams[0]);
    }

    #[test]
    fn a_gap_and_a_click_stand_out() {
        let mut audio: Vec<f32> = (0..32_000 * 4)
            .map(|i| 0.5 * (std::f32::consts::TAU * 220.0 * i as f32 / 32_000.0).sin())
            .collect();
        let at = 100 * 640;
        audio[at..at + 640].fill(0.0);
        audio[at] = 0.9;
        let seams = measure_seams(&audio, 32_000, 50.0, 0, &[100, 150]);
        assert!(seams[0].jump_ratio > 10.0, "{:?}", seams[0]);
        assert!(seams[0].flux_ratio > 3.0, "{:?}", seams[0]);
        assert!(seams[1].jump_ratio < 2.0 && seams[1].flux_ratio < 2.0, "{:?}", seams[1]);
    }
}
