//! Generation past the model's context: a sliding window of generators.
//!
//! A [`Generator`] (a *lane*) walks a pattern of at most `window_frames` frames. When it
//! has `keep_frames` left to complete, the next lane is made: its prefix is the current
//! lane's last `keep_frames` frames, handed to it as they complete. When the current
//! window ends, the next lane fills its cache with all of them in one decoder call (a
//! prefill, far cheaper than a step per frame) and continues at once. The codes run on without a gap, and
//! the codec decodes them as one stream, so the switch (a *seam*) needs no crossfade; what
//! can change there is the music, because the model forgets what came before the kept
//! frames.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::conditioning::Condition;
use crate::decoder::{Decoder, DecoderError, KvCache};
use crate::generator::Generator;
use crate::pattern::{CodeGrid, Pattern, PatternKind};
use crate::sampler::Sampler;

/// Seams an endless stream remembers.
pub(crate) const MAX_SEAMS_KEPT: usize = 64;

/// How far the window reaches, how much of it the next one keeps, and where it all ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowSpec {
    /// Frames one lane generates over, at most the model's context.
    pub window_frames: usize,
    /// Frames the next lane keeps as its context, at most half the window.
    pub keep_frames: usize,
    /// Frames to reach in all, given ones included; `None` runs until stopped.
    pub total_frames: Option<usize>,
}

pub struct SlidingGenerator {
    kind: PatternKind,
    num_codebooks: usize,
    special: u32,
    spec: WindowSpec,
    current: Generator,
    /// Global index of the current lane's frame 0.
    offset: usize,
    next: Option<Generator>,
    /// A retired lane's cache, kept for the lane after next.
    spare: Option<KvCache>,
    /// Codes of the frames from `history_start` on, frame-major (`K` per frame), given
    /// ones included: every frame of a finite stream, and from the current lane's first
    /// frame on in an endless one (what the next lane's context reads).
    history: Vec<u32>,
    history_start: usize,
    /// Global frames at which a lane took over: all of a finite stream's, the last
    /// [`MAX_SEAMS_KEPT`] of an endless one.
    seams: Vec<usize>,
    /// Every seam so far.
    seam_count: usize,
    /// Decoder calls that ran one step.
    steps: usize,
    /// Steps run inside prefill calls, and the time those calls took.
    prefilled_steps: usize,
    prefill_time: Duration,
}

impl SlidingGenerator {
    /// Starts after `given` frames (continued audio; may be empty), of which the last
    /// `keep_frames` become the first lane's context.
    pub(crate) fn new(
        kind: PatternKind,
        given: &CodeGrid,
        special: u32,
        sampler: Sampler,
        guidance_scale: f32,
        decoder: &Decoder,
        spec: WindowSpec,
    ) -> Result<Self, DecoderError> {
        let k_count = given.num_codebooks();
        let mut history = Vec::with_capacity(k_count * given.num_timesteps());
        for t in 0..given.num_timesteps() {
            history.extend((0..k_count).map(|k| given.get(crate::pattern::Coord { t, k })));
        }
        let context = given.num_timesteps().min(spec.keep_frames);
        let offset = given.num_timesteps() - context;
        let frames = lane_frames(spec, offset);
        let pattern = build(&kind, frames, k_count);
        let cache = decoder.new_cache(pattern.num_steps(), decoder.rows_for(guidance_scale))?;
        let mut current = Generator::continuing(pattern, special, sampler, guidance_scale, cache, context);
        for t in offset..given.num_timesteps() {
            current.push_prefix_frame(&history[t * k_count..(t + 1) * k_count]);
        }
        Ok(Self {
            kind,
            num_codebooks: k_count,
            special,
            spec,
            current,
            offset,
            next: None,
            spare: None,
            history,
            history_start: 0,
            seams: Vec::new(),
            seam_count: 0,
            steps: 0,
            prefilled_steps: 0,
            prefill_time: Duration::ZERO,
        })
    }

    /// A second continuation of this stream from here (see [`Generator::fork`]).
    pub(crate) fn fork(&mut self) -> Result<SlidingGenerator, DecoderError> {
        Ok(SlidingGenerator {
            kind: self.kind.clone(),
            num_codebooks: self.num_codebooks,
            special: self.special,
            spec: self.spec,
            current: self.current.fork()?,
            offset: self.offset,
            next: self.next.as_mut().map(Generator::fork).transpose()?,
            spare: None,
            history: self.history.clone(),
            history_start: self.history_start,
            seams: self.seams.clone(),
            seam_count: self.seam_count,
            steps: 0,
            prefilled_steps: 0,
            prefill_time: Duration::ZERO,
        })
    }

    /// Frames whose codes are all known, given ones included.
    pub(crate) fn frames_done(&self) -> usize {
        self.history_start + self.history.len() / self.num_codebooks
    }

    /// Decoder calls that ran a single step.
    pub(crate) fn steps_done(&self) -> usize {
        self.steps
    }

    /// Steps run inside prefill calls (given frames and the next windows' contexts).
    pub(crate) fn prefilled_steps(&self) -> usize {
        self.prefilled_steps
    }

    /// Time spent in prefill calls.
    pub(crate) fn prefill_time(&self) -> Duration {
        self.prefill_time
    }

    /// Frames that have at least their first token: a new conditioning reaches frames
    /// from this one on.
    pub(crate) fn started_frames(&self) -> usize {
        self.offset + self.current.started_frames()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.spec.total_frames.is_some_and(|total| self.frames_done() >= total)
            || (self.current.is_finished() && self.next.is_none())
    }

    /// Global frames at which a new lane took over so far (the last [`MAX_SEAMS_KEPT`]
    /// of an endless stream).
    pub(crate) fn seams(&self) -> &[usize] {
        &self.seams
    }

    /// Lanes that took over so far.
    pub(crate) fn seam_count(&self) -> usize {
        self.seam_count
    }

    /// Guidance rows of the current lane (see [`Generator::rows`]).
    pub(crate) fn rows(&self) -> usize {
        self.current.rows()
    }

    /// A lane's cache has the rows its guidance needed when it was made (see
    /// [`Decoder::rows_for`]). Turning guidance on for a lane that runs the conditioned row
    /// alone starts the context again from the frames done ([`SlidingGenerator::restart`],
    /// as a slide does), so that its unconditional row exists; turning it off keeps both
    /// rows until the next lane, which runs one.
    pub(crate) fn set_guidance_scale(
        &mut self,
        scale: f32,
        decoder: &mut Decoder,
        cross: &Condition,
    ) -> Result<(), DecoderError> {
        self.current.set_guidance_scale(scale);
        let rows = decoder.rows_for(scale);
        if self.next.as_ref().is_some_and(|next| next.rows() < rows) {
            // Made again (and fed the frames it keeps from the history) on the next step.
            self.next = None;
        }
        if self.current.rows() < rows {
            self.restart(decoder, cross)?;
        }
        Ok(())
    }

    pub(crate) fn sampler_mut(&mut self) -> &mut Sampler {
        self.current.sampler_mut()
    }

    /// One step of the current lane (and the next lane's prefill that its new frames
    /// allow). Returns the global frames this call completed.
    pub(crate) fn step(&mut self, decoder: &mut Decoder, cross: &Condition) -> Result<Range<usize>, DecoderError> {
        let first = self.frames_done();
        Self::timed_prefill(
            &mut self.current,
            decoder,
            cross,
            &mut self.prefilled_steps,
            &mut self.prefill_time,
        )?;
        let completed = if self.current.is_finished() {
            0..0
        } else {
            self.steps += 1;
            self.current.step(decoder, cross)?
        };
        let mut frame = Vec::with_capacity(self.num_codebooks);
        for t in completed {
            self.current.frame(t, &mut frame);
            self.history.extend_from_slice(&frame);
        }
        if let Some(total) = self.spec.total_frames {
            self.history.truncate((total - self.history_start) * self.num_codebooks);
        }
        self.feed_next_lane(decoder, cross)?;
        if self.current.is_finished() && self.next.is_some() {
            self.switch_lanes();
        }
        Ok(first..self.frames_done())
    }

    /// Starts the context again from the frames done: a lane holding the last
    /// `keep_frames` of them, prefilled now under `cross`, takes over at once, as at a
    /// slide (the codes of frames started but not complete are generated again). A melody
    /// model holds its conditioning in its context, so a new prompt takes effect this way.
    pub(crate) fn restart(&mut self, decoder: &mut Decoder, cross: &Condition) -> Result<(), DecoderError> {
        let done = self.frames_done();
        if self.spec.total_frames.is_some_and(|total| done >= total) {
            return Ok(());
        }
        let keep = self
            .spec
            .keep_frames
            .min(self.spec.window_frames / 2)
            .min(done - self.history_start);
        let offset = done - keep;
        let mut lane = self.new_lane(decoder, offset, keep)?;
        for t in offset..done {
            lane.push_prefix_frame(self.frame(t));
        }
        Self::timed_prefill(
            &mut lane,
            decoder,
            cross,
            &mut self.prefilled_steps,
            &mut self.prefill_time,
        )?;
        // A next lane made under the old conditioning is dropped; one is made again later.
        self.next = None;
        self.take_over(lane, offset);
        Ok(())
    }

    /// A lane from global frame `offset` whose first `keep` frames are given (they arrive
    /// through `push_prefix_frame`), on the spare cache when it is large enough.
    fn new_lane(&mut self, decoder: &Decoder, offset: usize, keep: usize) -> Result<Generator, DecoderError> {
        let pattern = build(&self.kind, lane_frames(self.spec, offset), self.num_codebooks);
        let rows = decoder.rows_for(self.current.guidance_scale());
        let cache = match self.spare.take() {
            Some(cache) if cache.step_capacity() >= pattern.num_steps() && cache.rows() == rows => cache,
            _ => decoder.new_cache(pattern.num_steps(), rows)?,
        };
        // Prefill samples nothing; when the lane takes over it takes the current sampler
        // itself, random state included.
        let sampler =
            Sampler::new(self.current.sampler_mut().settings(), 0).expect("the current sampler's settings are valid");
        Ok(Generator::continuing(
            pattern,
            self.special,
            sampler,
            self.current.guidance_scale(),
            cache,
            keep,
        ))
    }

    /// Runs `lane`'s prefill, if it has one ready, and counts its steps and time.
    fn timed_prefill(
        lane: &mut Generator,
        decoder: &mut Decoder,
        cross: &Condition,
        prefilled_steps: &mut usize,
        prefill_time: &mut Duration,
    ) -> Result<(), DecoderError> {
        let started = Instant::now();
        let steps = lane.prefill(decoder, cross)?;
        if steps > 0 {
            *prefilled_steps += steps;
            *prefill_time += started.elapsed();
        }
        Ok(())
    }

    /// Makes the next lane once the current one is `keep_frames` from its end, gives it
    /// the frames it keeps as they complete, and prefills it once it has them all.
    fn feed_next_lane(&mut self, decoder: &mut Decoder, cross: &Condition) -> Result<(), DecoderError> {
        let window = self.current.pattern().num_timesteps();
        let keep = self.spec.keep_frames.min(window / 2);
        let next_offset = self.offset + window - keep;
        let more_to_come = self.spec.total_frames.is_none_or(|total| self.offset + window < total);
        // With nothing to keep, the next lane starts afresh once this one is done.
        if self.next.is_none() && more_to_come && self.frames_done() >= next_offset + keep.min(1) {
            self.next = Some(self.new_lane(decoder, next_offset, keep)?);
        }
        let Some(next) = &mut self.next else {
            return Ok(());
        };
        let (k_count, start) = (self.num_codebooks, self.history_start);
        let frames_done = start + self.history.len() / k_count;
        while next.prefix_known() < next.prefix_frames() {
            let t = next_offset + next.prefix_known();
            if t >= frames_done {
                break;
            }
            next.push_prefix_frame(&self.history[(t - start) * k_count..(t - start + 1) * k_count]);
        }
        Self::timed_prefill(next, decoder, cross, &mut self.prefilled_steps, &mut self.prefill_time)
    }

    /// The next lane, its context complete, takes over from the current one.
    fn switch_lanes(&mut self) {
        let Some(next) = self.next.take() else {
            return;
        };
        let window = self.current.pattern().num_timesteps();
        let offset = self.offset + window - next.prefix_frames();
        self.take_over(next, offset);
    }

    /// `lane`, which starts at global frame `offset`, replaces the current lane: it takes
    /// the current sampler (random state included), the retired lane's cache becomes the
    /// spare, and the seam is recorded where its given frames end.
    fn take_over(&mut self, mut lane: Generator, offset: usize) {
        self.current.swap_sampler(&mut lane);
        let retired = std::mem::replace(&mut self.current, lane);
        self.spare = Some(retired.into_cache());
        self.offset = offset;
        self.seams.push(self.offset + self.current.prefix_frames());
        self.seam_count += 1;
        if self.spec.total_frames.is_none() {
            self.forget_before(self.offset);
        }
    }

    /// Drops an endless stream's history before global frame `t` (the current lane's
    /// first: no lane reads further back) and its older seams.
    fn forget_before(&mut self, t: usize) {
        let drop_frames = t.saturating_sub(self.history_start);
        self.history.drain(..drop_frames * self.num_codebooks);
        self.history_start += drop_frames;
        let old_seams = self.seams.len().saturating_sub(MAX_SEAMS_KEPT);
        self.seams.drain(..old_seams);
    }

    /// The codes of global frame `t`, which must be complete and, in an endless stream, in
    /// the current lane.
    pub(crate) fn frame(&self, t: usize) -> &[u32] {
        let i = t - self.history_start;
        &self.history[i * self.num_codebooks..(i + 1) * self.num_codebooks]
    }

    /// The codes kept, `[K, T]`: every frame of a finite stream; an endless one's from its
    /// current lane's first frame on.
    pub(crate) fn codes(&self) -> CodeGrid {
        let (k_count, t_count) = (self.num_codebooks, self.history.len() / self.num_codebooks);
        let mut codes = vec![self.special; k_count * t_count];
        for t in 0..t_count {
            for k in 0..k_count {
                codes[k * t_count + t] = self.history[t * k_count + k];
            }
        }
        CodeGrid::new(k_count, t_count, codes).expect("sized K x T above")
    }
}

/// The frames of a lane that starts at global frame `offset`: a whole window, or what is
/// left of the stream (so that the stream ends as a pattern ends).
fn lane_frames(spec: WindowSpec, offset: usize) -> usize {
    spec.total_frames.map_or(spec.window_frames, |total| {
        spec.window_frames.min(total.saturating_sub(offset))
    })
}

fn build(kind: &PatternKind, frames: usize, num_codebooks: usize) -> Pattern {
    kind.build(frames, num_codebooks)
        .expect("the kind was built and checked for this bundle when the stream started")
}
