//! The generation loop: walks the bundle's codebook pattern one decoder step at a time,
//! samples the coordinates each step produces, and reports frames as they complete.
//!
//! Nothing here knows which pattern it walks: the step's inputs are the pattern's column
//! (the special token where a codebook has none), and a frame is complete when the
//! pattern says its last codebook has been produced.

use std::ops::Range;

use crate::conditioning::CrossAttention;
use crate::decoder::{Decoder, DecoderError};
use crate::pattern::{CodeGrid, Pattern};
use crate::sampler::{Sampler, apply_guidance};

pub struct Generator {
    pattern: Pattern,
    special: u32,
    /// Step-major tokens: `columns[s * K + k]` is codebook `k`'s token at step `s`.
    columns: Vec<u32>,
    next_step: usize,
    next_frame: usize,
    sampler: Sampler,
    guidance_scale: f32,
    guided: Vec<f32>,
    step_tokens: Vec<i64>,
}

impl Generator {
    /// A generator over `pattern`; `special` is the token fed where the pattern has no
    /// coordinate (MusicGen: the cardinality).
    pub fn new(pattern: Pattern, special: u32, sampler: Sampler, guidance_scale: f32) -> Self {
        let k = pattern.num_codebooks();
        Self {
            columns: vec![special; pattern.sequence_len() * k],
            special,
            next_step: 0,
            next_frame: 0,
            sampler,
            guidance_scale,
            guided: Vec::new(),
            step_tokens: vec![0; 2 * k],
            pattern,
        }
    }

    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    pub fn set_guidance_scale(&mut self, scale: f32) {
        self.guidance_scale = scale;
    }

    /// All steps of the pattern have run.
    pub fn is_finished(&self) -> bool {
        self.next_step >= self.pattern.num_steps()
    }

    /// Generation steps run so far.
    pub fn steps_done(&self) -> usize {
        self.next_step
    }

    /// Frames whose codebooks are all generated.
    pub fn frames_done(&self) -> usize {
        self.next_frame
    }

    /// Runs the decoder on the next step's column and samples what the step produces.
    /// Returns the frames this step completed.
    pub fn step(&mut self, decoder: &mut Decoder, cross: &CrossAttention) -> Result<Range<usize>, DecoderError> {
        let k_count = self.pattern.num_codebooks();
        let s = self.next_step;
        let column = &self.columns[s * k_count..(s + 1) * k_count];
        for (row, chunk) in self.step_tokens.chunks_mut(k_count).enumerate() {
            debug_assert!(row < 2);
            for (dst, &token) in chunk.iter_mut().zip(column) {
                *dst = i64::from(token);
            }
        }
        decoder.step(&self.step_tokens, cross)?;

        let produced = s + 1;
        for c in self.pattern.coords_at(produced) {
            let cond = decoder.logits_of(0, c.k);
            let token = if self.guidance_scale == 1.0 {
                self.sampler.sample(cond)
            } else {
                self.guided.resize(cond.len(), 0.0);
                apply_guidance(cond, decoder.logits_of(1, c.k), self.guidance_scale, &mut self.guided);
                self.sampler.sample(&self.guided)
            };
            self.columns[produced * k_count + c.k] = token;
        }
        self.next_step = produced;

        let first = self.next_frame;
        while self.next_frame < self.pattern.num_timesteps()
            && self.pattern.frame_complete_step(self.next_frame) <= produced
        {
            self.next_frame += 1;
        }
        Ok(first..self.next_frame)
    }

    /// The codes of frame `t` (all K codebooks), which must be complete.
    pub fn frame(&self, t: usize, out: &mut Vec<u32>) {
        let k_count = self.pattern.num_codebooks();
        out.clear();
        out.extend((0..k_count).map(|k| {
            let s = self.pattern.step_of(crate::pattern::Coord { t, k });
            self.columns[s * k_count + k]
        }));
    }

    /// The codes of the complete frames, `[K, frames_done]`.
    pub fn codes(&self) -> CodeGrid {
        let k_count = self.pattern.num_codebooks();
        let t_count = self.next_frame;
        let mut codes = vec![self.special; k_count * t_count];
        let mut frame = Vec::with_capacity(k_count);
        for t in 0..t_count {
            self.frame(t, &mut frame);
            for (k, &code) in frame.iter().enumerate() {
                codes[k * t_count + t] = code;
            }
        }
        CodeGrid::new(k_count, t_count, codes).expect("sized K x T above")
    }
}
