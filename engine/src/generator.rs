//! The generation loop of one context: walks the bundle's codebook pattern one decoder
//! step at a time, samples the coordinates each step produces, and reports frames as they
//! complete. A generator owns its self-attention cache, so several can share one decoder.
//!
//! Nothing here knows which pattern it walks: the step's inputs are the pattern's column
//! (the special token where a codebook has none), and a frame is complete when the
//! pattern says its last codebook has been produced.
//!
//! A generator may continue given codes (a *prefix*): the pattern's first frames are
//! taught, not sampled. The prefix can arrive frame by frame; once all of it is there, the
//! steps that only read and produce given codes run as one decoder call
//! ([`Generator::prefill`]), which costs a fraction of stepping through them.

use std::ops::Range;

use crate::conditioning::Condition;
use crate::decoder::{Decoder, DecoderError, KvCache};
use crate::pattern::{Coord, Pattern};
use crate::sampler::{Sampler, apply_guidance};

pub struct Generator {
    pattern: Pattern,
    special: u32,
    /// Step-major tokens: `columns[s * K + k]` is codebook `k`'s token at step `s`.
    columns: Vec<u32>,
    /// Frames given rather than generated: timesteps `0..prefix_frames`.
    prefix_frames: usize,
    /// Prefix frames whose codes have arrived.
    prefix_known: usize,
    next_step: usize,
    next_frame: usize,
    /// Frames with at least their first token.
    started_frames: usize,
    sampler: Sampler,
    guidance_scale: f32,
    guided: Vec<f32>,
    /// The step's column as the decoder takes it.
    column: Vec<i64>,
    cache: KvCache,
}

impl Generator {
    /// A generator over `pattern` whose first `prefix_frames` frames are given, through
    /// [`Generator::push_prefix_frame`], instead of sampled (none for a fresh start);
    /// `special` is the token fed where the pattern has no coordinate (MusicGen: the
    /// cardinality). `cache` must hold the pattern's steps.
    pub(crate) fn continuing(
        pattern: Pattern,
        special: u32,
        sampler: Sampler,
        guidance_scale: f32,
        mut cache: KvCache,
        prefix_frames: usize,
    ) -> Self {
        let k = pattern.num_codebooks();
        cache.reset();
        debug_assert!(
            cache.step_capacity() >= pattern.num_steps(),
            "the cache holds the pattern"
        );
        let prefix_frames = prefix_frames.min(pattern.num_timesteps());
        Self {
            columns: vec![special; pattern.sequence_len() * k],
            special,
            prefix_frames,
            prefix_known: 0,
            next_step: 0,
            next_frame: prefix_frames,
            started_frames: prefix_frames,
            sampler,
            guidance_scale,
            guided: Vec::new(),
            column: vec![0; k],
            cache,
            pattern,
        }
    }

    pub(crate) fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    pub(crate) fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    pub(crate) fn set_guidance_scale(&mut self, scale: f32) {
        self.guidance_scale = scale;
    }

    /// The next given frame's codes (K values); frames arrive in order.
    pub(crate) fn push_prefix_frame(&mut self, frame: &[u32]) {
        let t = self.prefix_known;
        assert!(t < self.prefix_frames, "the prefix holds {} frames", self.prefix_frames);
        let k_count = self.pattern.num_codebooks();
        for (k, &code) in frame.iter().enumerate().take(k_count) {
            let s = self.pattern.step_of(Coord { t, k });
            self.columns[s * k_count + k] = code;
        }
        self.prefix_known += 1;
    }

    /// Frames given rather than generated.
    pub(crate) fn prefix_frames(&self) -> usize {
        self.prefix_frames
    }

    /// Prefix frames that have arrived so far.
    pub(crate) fn prefix_known(&self) -> usize {
        self.prefix_known
    }

    pub(crate) fn guidance_scale(&self) -> f32 {
        self.guidance_scale
    }

    /// Guidance rows its cache holds: 1 runs the conditioned row alone (guidance off).
    pub(crate) fn rows(&self) -> usize {
        self.cache.rows()
    }

    /// A second continuation of this one: the same codes, context and position, a
    /// sampler of its own ([`Sampler::fork`]).
    pub(crate) fn fork(&mut self) -> Result<Generator, DecoderError> {
        Ok(Generator {
            pattern: self.pattern.clone(),
            special: self.special,
            columns: self.columns.clone(),
            prefix_frames: self.prefix_frames,
            prefix_known: self.prefix_known,
            next_step: self.next_step,
            next_frame: self.next_frame,
            started_frames: self.started_frames,
            sampler: self.sampler.fork(),
            guidance_scale: self.guidance_scale,
            guided: Vec::new(),
            column: self.column.clone(),
            cache: self.cache.try_clone()?,
        })
    }

    /// The cache, for the next generator to reuse.
    pub(crate) fn into_cache(self) -> KvCache {
        self.cache
    }

    /// Step `s` reads only prefix codes that have arrived and produces only prefix
    /// coordinates: it samples nothing.
    fn is_prefill_step(&self, s: usize) -> bool {
        s < self.pattern.num_steps()
            && self.pattern.coords_at(s).iter().all(|c| c.t < self.prefix_known)
            && self.pattern.coords_at(s + 1).iter().all(|c| c.t < self.prefix_frames)
    }

    /// Runs every step that only reads and produces given codes, in one decoder call, once
    /// the whole prefix has arrived and before any other step. Returns the steps it ran
    /// (0 when there is nothing to prefill or the prefix is still arriving).
    pub(crate) fn prefill(&mut self, decoder: &mut Decoder, cross: &Condition) -> Result<usize, DecoderError> {
        if self.next_step != 0 || self.prefix_known < self.prefix_frames {
            return Ok(0);
        }
        let mut end = 0;
        while self.is_prefill_step(end) {
            end += 1;
        }
        if end == 0 {
            return Ok(0);
        }
        let k_count = self.pattern.num_codebooks();
        let columns: Vec<i64> = self.columns[..end * k_count].iter().map(|&t| i64::from(t)).collect();
        decoder.prefill(&mut self.cache, &columns, cross)?;
        self.next_step = end;
        self.advance_frames(end);
        Ok(end)
    }

    /// All steps of the pattern have run.
    pub(crate) fn is_finished(&self) -> bool {
        self.next_step >= self.pattern.num_steps()
    }

    /// Frames that have at least their first token (the prefix included): a change of
    /// conditioning made now reaches frames from this one on.
    pub(crate) fn started_frames(&self) -> usize {
        self.started_frames
    }

    /// Runs the decoder on the next step's column and samples what the step produces
    /// (prefix coordinates are taught, not sampled). Returns the generated frames this
    /// step completed.
    pub(crate) fn step(&mut self, decoder: &mut Decoder, cross: &Condition) -> Result<Range<usize>, DecoderError> {
        let first = self.next_frame;
        let k_count = self.pattern.num_codebooks();
        let s = self.next_step;
        debug_assert!(
            self.pattern
                .coords_at(s)
                .iter()
                .all(|c| c.t >= self.prefix_frames || c.t < self.prefix_known),
            "step {s} reads prefix codes that have not arrived"
        );
        let column = &self.columns[s * k_count..(s + 1) * k_count];
        for (dst, &token) in self.column.iter_mut().zip(column) {
            *dst = i64::from(token);
        }
        decoder.step(&mut self.cache, &self.column, cross)?;

        let produced = s + 1;
        for c in self.pattern.coords_at(produced) {
            if c.t < self.prefix_frames {
                continue;
            }
            let cond = decoder.logits_of(0, c.k);
            debug_assert!(
                self.cache.rows() == 2 || self.guidance_scale == 1.0,
                "guidance needs the unconditional row"
            );
            let token = if self.guidance_scale == 1.0 || self.cache.rows() == 1 {
                self.sampler.sample(cond)
            } else {
                self.guided.resize(cond.len(), 0.0);
                apply_guidance(cond, decoder.logits_of(1, c.k), self.guidance_scale, &mut self.guided);
                self.sampler.sample(&self.guided)
            };
            self.columns[produced * k_count + c.k] = token;
        }
        self.next_step = produced;
        self.advance_frames(produced);
        Ok(first..self.next_frame)
    }

    /// Counts the frames started and completed once step `produced`'s coordinates are known.
    fn advance_frames(&mut self, produced: usize) {
        let timesteps = self.pattern.num_timesteps();
        while self.started_frames < timesteps && self.pattern.frame_first_step(self.started_frames) <= produced {
            self.started_frames += 1;
        }
        while self.next_frame < timesteps && self.pattern.frame_complete_step(self.next_frame) <= produced {
            self.next_frame += 1;
        }
    }

    /// The codes of frame `t` (all K codebooks), which must be complete.
    pub(crate) fn frame(&self, t: usize, out: &mut Vec<u32>) {
        let k_count = self.pattern.num_codebooks();
        out.clear();
        out.extend((0..k_count).map(|k| {
            let s = self.pattern.step_of(Coord { t, k });
            self.columns[s * k_count + k]
        }));
    }

    /// Hands this generator's sampler (its random state included) to `other`, which
    /// carries on the same random sequence; this one gets `other`'s.
    pub(crate) fn swap_sampler(&mut self, other: &mut Generator) {
        std::mem::swap(&mut self.sampler, &mut other.sampler);
        other.guidance_scale = self.guidance_scale;
    }
}
