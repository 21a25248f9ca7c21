//! Choosing a token from a codebook's logits: classifier-free guidance, then greedy or
//! temperature / top-k / top-p sampling with a seeded generator.
//!
//! The semantics follow transformers' MusicGen `generate` (and audiocraft's
//! `LMModel.generate`): guidance mixes the conditional and unconditional logits as
//! `uncond + (cond - uncond) * scale`; temperature divides the logits; top-k keeps every
//! token whose logit is at least the k-th largest; top-p keeps the smallest set of most
//! likely tokens whose probability reaches `p` (always at least one); greedy takes the
//! first maximum, as `argmax` does.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

/// How a token is chosen. MusicGen's released configuration samples with `top_k = 250`,
/// temperature 1 and guidance 3.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingSettings {
    /// Take the most likely token; the other fields are then ignored.
    pub greedy: bool,
    /// Divides the logits; below 1 sharpens, above 1 flattens. Must be positive.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability; 0 or 1 keeps all.
    pub top_p: f32,
}

impl Default for SamplingSettings {
    fn default() -> Self {
        Self {
            greedy: false,
            temperature: 1.0,
            top_k: 250,
            top_p: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature {0} is not positive; use a value such as 1.0, or greedy sampling")]
    Temperature(f32),
    #[error("top-p {0} is outside 0..=1")]
    TopP(f32),
}

impl SamplingSettings {
    pub fn greedy() -> Self {
        Self {
            greedy: true,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SamplingError> {
        if self.greedy {
            return Ok(());
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplingError::TopP(self.top_p));
        }
        Ok(())
    }
}

/// Mixes guided logits into `out`: `uncond + (cond - uncond) * scale`.
pub(crate) fn apply_guidance(cond: &[f32], uncond: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
        *o = u + (c - u) * scale;
    }
}

/// A seeded sampler. It owns its scratch space, so sampling allocates nothing after the
/// first call for a vocabulary size.
pub struct Sampler {
    settings: SamplingSettings,
    rng: ChaCha8Rng,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub(crate) fn new(settings: SamplingSettings, seed: u64) -> Result<Self, SamplingError> {
        settings.validate()?;
        Ok(Self {
            settings,
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
        })
    }

    /// A sampler with the same settings and a random sequence of its own, seeded from
    /// this one's (which moves on by one draw): for a second continuation of a stream.
    pub(crate) fn fork(&mut self) -> Sampler {
        Sampler {
            settings: self.settings,
            rng: ChaCha8Rng::seed_from_u64(self.rng.random::<u64>()),
            candidates: Vec::new(),
        }
    }

    pub(crate) fn settings(&self) -> SamplingSettings {
        self.settings
    }

    /// New settings take effect from the next token; the random stream continues.
    pub(crate) fn set_settings(&mut self, settings: SamplingSettings) -> Result<(), SamplingError> {
        settings.validate()?;
        self.settings = settings;
        Ok(())
    }

    /// Chooses a token id from `logits`.
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.settings.greedy {
            return argmax(logits);
        }
        let inv_temperature = 1.0 / self.settings.temperature;
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (l * inv_temperature, i as u32)));
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));

        let top_k = self.settings.top_k;
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(top_k - 1, by_logit_desc);
            let kth = self.candidates[top_k - 1].0;
            // Ties with the k-th logit stay in, as in transformers' TopKLogitsWarper.
            self.candidates.retain(|c| c.0 >= kth);
        }
        self.candidates.sort_unstable_by(by_logit_desc);

        let max_logit = self.candidates[0].0;
        let mut total = 0.0f64;
        for c in &mut self.candidates {
            c.0 = (c.0 - max_logit).exp();
            total += f64::from(c.0);
        }

        let top_p = self.settings.top_p;
        if top_p > 0.0 && top_p < 1.0 {
            let threshold = f64::from(top_p) * total;
            let mut cumulative = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cumulative += f64::from(c.0);
                if cumulative >= threshold {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| f64::from(c.0)).sum();
        }

        let mut draw = self.rng.random::<f64>() * total;
        for &(weight, token) in &self.candidates {
            draw -= f64::from(weight);
            if draw < 0.0 {
                return token;
            }
        }
        self.candidates.last().map_or(0, |c| c.1)
    }
}

/// The index of the first largest value (NaN never wins).
pub(crate) fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(settings: SamplingSettings, logits: &[f32], draws: usize, seed: u64) -> Vec<usize> {
        let mut sampler = Sampler::new(settings, seed).unwrap();
        let mut counts = vec![0; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits) as usize] += 1;
        }
        counts
    }

    #[test]
    fn guidance_extrapolates_from_the_unconditional_logits() {
        let mut out = [0.0; 2];
        apply_guidance(&[2.0, 0.0], &[1.0, 1.0], 3.0, &mut out);
        assert_eq!(out, [4.0, -2.0]);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.5, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
        let mut s = Sampler::new(SamplingSettings::greedy(), 0).unwrap();
        assert_eq!(s.sample(&[0.0, 0.1, 5.0]), 2);
    }

    #[test]
    fn top_k_never_picks_outside_the_k_best() {
        let logits: Vec<f32> = (0..50).map(|i| i as f32 * 0.01).collect();
        let settings = SamplingSettings {
            top_k: 3,
            ..SamplingSettings::default()
        };
        let counts = sampled(settings, &logits, 3000, 7);
        assert_eq!(counts[..47].iter().sum::<usize>(), 0);
        assert!(counts[47..].iter().all(|&c| c > 800), "{:?}", &counts[47..]);
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth_logit() {
        let settings = SamplingSettings {
            top_k: 1,
            ..SamplingSettings::default()
        };
        let counts = sampled(settings, &[1.0, 1.0, 0.0], 1000, 3);
        assert!(counts[0] > 400 && counts[1] > 400 && counts[2] == 0, "{counts:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        let logits = [0.5f32, 0.25, 0.125, 0.125].map(f32::ln);
        let settings = SamplingSettings {
            top_k: 0,
            top_p: 0.7,
            ..SamplingSettings::default()
        };
        let counts = sampled(settings, &logits, 3000, 11);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / 3000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.04, "share {share}");
    }

    #[test]
    fn temperature_flattens_the_distribution() {
        let logits = [2.0f32, 0.0];
        let plain = SamplingSettings {
            top_k: 0,
            ..SamplingSettings::default()
        };
        let hot = SamplingSettings {
            temperature: 4.0,
            ..plain
        };
        let cold_share = sampled(plain, &logits, 4000, 5)[1] as f64 / 4000.0;
        let hot_share = sampled(hot, &logits, 4000, 5)[1] as f64 / 4000.0;
        // p(second) = 1 / (1 + e^2) = 0.119 at T = 1, 1 / (1 + e^0.5) = 0.378 at T = 4.
        assert!((cold_share - 0.119).abs() < 0.02, "{cold_share}");
        assert!((hot_share - 0.378).abs() < 0.03, "{hot_share}");
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let logits: Vec<f32> = (0..2048).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingSettings::default(), seed).unwrap();
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad_t = SamplingSettings {
            temperature: 0.0,
            ..SamplingSettings::default()
        };
        assert_eq!(Sampler::new(bad_t, 0).err(), Some(SamplingError::Temperature(0.0)));
        let bad_p = SamplingSettings {
            top_p: 1.5,
            ..SamplingSettings::default()
        };
        assert_eq!(Sampler::new(bad_p, 0).err(), Some(SamplingError::TopP(1.5)));
    }
}
