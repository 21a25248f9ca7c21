//! The generation thread: steps the sliding generator, applies the commands that arrive
//! between steps (prompts, morphs, sampling), and sends each complete frame on to the
//! codec thread (with the old prompt's frame beside it while a prompt change crossfades).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

use super::decoding::CodecInput;
use super::status::{RECENT_FRAMES, StreamStatus, store_f32};
use super::{Command, InjectedPanic, Shared, StreamConfig, StreamError, StreamThread};
use crate::chroma::Melody;
use crate::conditioning::{Condition, Morph};
use crate::decoder::Decoder;
use crate::model::Model;
use crate::pattern::CodeGrid;
use crate::sampler::Sampler;
use crate::window::{SlidingGenerator, WindowSpec};

/// The generation thread's channels: commands in, frames out.
pub(super) struct GenerationLinks {
    pub commands: Receiver<Command>,
    pub to_codec: Sender<CodecInput>,
}

pub(super) struct GenerationLoop {
    generator: SlidingGenerator,
    decoder: Decoder,
    model: Arc<Model>,
    cross: Condition,
    /// The prompt `cross` was made of, and what a melody model follows with it.
    prompt: String,
    melody: Option<Melody>,
    commands: Receiver<Command>,
    /// Frames on their way to the codec thread.
    to_codec: Sender<CodecInput>,
    /// Given frames play (true) or are only the codec's context (false).
    play_given: bool,
    status: Arc<StreamStatus>,
    codes: Arc<Mutex<Option<CodeGrid>>>,
    stop: Arc<AtomicBool>,
    frame_rate_hz: f64,
    /// Prompts waiting for their frames ([`Command::SetPromptAt`]), earliest first.
    pending_prompts: VecDeque<(usize, String)>,
    /// The morph's prompt B, and the blend of the stream's prompt toward it.
    morph: Option<(String, Morph)>,
    morph_amount: f32,
    /// Morph amounts waiting for their frames ([`Command::SetMorph`]), earliest first.
    pending_morphs: VecDeque<(usize, f32)>,
    crossfade_frames: usize,
    /// The music under the old prompt while a prompt change crossfades.
    old_prompt: Option<OldPromptLane>,
    /// Frames past a crossfade for which the old music is still decoded, so that the codec
    /// windows holding the fade's last frames have their right context.
    blend_margin_frames: usize,
    step_delay: Duration,
    injected_panic: Option<InjectedPanic>,
}

/// The old prompt's continuation during a crossfade.
struct OldPromptLane {
    generator: SlidingGenerator,
    cross: Condition,
    morph: Option<Morph>,
    /// The first frame in which the two continuations can differ.
    start: usize,
    fade_frames: usize,
}

impl GenerationLoop {
    /// Generation on `model` after the `given` frames, in `window`, conditioned by
    /// `cross`; `blend_margin_frames` is the codec's latency plus one.
    pub(super) fn new(
        model: &Arc<Model>,
        config: &StreamConfig,
        given: &CodeGrid,
        window: WindowSpec,
        cross: Condition,
        links: GenerationLinks,
        shared: &Shared,
    ) -> Result<Self, StreamError> {
        let manifest = model.manifest();
        let decoder = model.decoder()?;
        let generator = SlidingGenerator::new(
            model.pattern_kind().clone(),
            given,
            manifest.special_token_id,
            Sampler::new(config.sampling, config.seed)?,
            config.guidance_scale,
            &decoder,
            window,
        )?;
        let frame_rate_hz = manifest.frame_rate_hz;
        let morph = match &config.morph_target {
            Some(target) => Some(morph_toward(model, &cross, target.clone(), config.morph)?),
            None => None,
        };
        Ok(Self {
            generator,
            play_given: config.play_continued,
            decoder,
            model: Arc::clone(model),
            cross,
            prompt: config.prompt.clone(),
            melody: config.melody.clone(),
            commands: links.commands,
            to_codec: links.to_codec,
            status: Arc::clone(&shared.status),
            codes: Arc::clone(&shared.codes),
            stop: Arc::clone(&shared.stop),
            frame_rate_hz,
            pending_prompts: VecDeque::new(),
            morph,
            morph_amount: config.morph,
            pending_morphs: VecDeque::new(),
            crossfade_frames: (config.prompt_crossfade_seconds.max(0.0) * frame_rate_hz).round() as usize,
            step_delay: config.step_delay,
            injected_panic: config.injected_panic,
            old_prompt: None,
            blend_margin_frames: shared.codec_latency_frames + 1,
        })
    }

    pub(super) fn run(mut self) {
        let status = Arc::clone(&self.status);
        StreamThread::Generation.run(&status, || self.generate());
        *self.codes.lock() = Some(self.generator.codes());
    }

    fn generate(&mut self) -> Result<(), StreamError> {
        // Given frames (continued audio) play first through the same codec path, or are
        // only its context.
        for t in 0..self.generator.frames_done() {
            let sent = if self.play_given {
                self.send_frame(t)?
            } else {
                let frame = self.generator.frame(t).to_vec();
                self.to_codec.send(CodecInput::Context(frame)).is_ok()
            };
            if !sent {
                return Ok(());
            }
        }
        // Time spent generating, without the waits for room in the frame channel: the
        // speed figures say what the model can do, not how fast the listener consumes.
        let mut busy = Duration::ZERO;
        let mut seams_published = 0;
        while !self.generator.is_finished() && !self.stop.load(Ordering::Acquire) {
            let step_started = Instant::now();
            if !self.apply_commands()? {
                break;
            }
            let cross = conditioning(&self.cross, self.morph.as_ref().map(|(_, morph)| morph));
            let completed = self.generator.step(&mut self.decoder, cross)?;
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            busy += step_started.elapsed();
            for t in completed {
                StreamThread::Generation.injected_panic(self.injected_panic, t);
                if !self.send_frame(t)? {
                    return Ok(());
                }
            }
            if self.generator.seam_count() != seams_published {
                seams_published = self.generator.seam_count();
                *self.status.seams.lock() = self.generator.seams().to_vec();
            }
            let elapsed_s = busy.as_secs_f64();
            let steps = self.generator.steps_done();
            let frames = self.generator.frames_done();
            self.status.steps.store(steps as u64, Ordering::Relaxed);
            self.status
                .prefilled_steps
                .store(self.generator.prefilled_steps() as u64, Ordering::Relaxed);
            self.status
                .prefill_us
                .store(self.generator.prefill_time().as_micros() as u64, Ordering::Relaxed);
            self.status
                .generation_us
                .store(busy.as_micros() as u64, Ordering::Relaxed);
            self.status.frames.store(frames as u64, Ordering::Relaxed);
            self.status
                .started_frames
                .store(self.generator.started_frames() as u64, Ordering::Relaxed);
            self.status
                .guidance_rows
                .store(self.generator.rows() as u32, Ordering::Relaxed);
            store_f32(&self.status.steps_per_second_bits, (steps as f64 / elapsed_s) as f32);
            store_f32(
                &self.status.realtime_factor_bits,
                (frames as f64 / self.frame_rate_hz / elapsed_s) as f32,
            );
        }
        Ok(())
    }

    /// Sends frame `t` to the codec thread and the displays, with the old prompt's frame
    /// `t` while a crossfade runs; false once the codec thread has gone.
    fn send_frame(&mut self, t: usize) -> Result<bool, StreamError> {
        let frame = self.generator.frame(t).to_vec();
        {
            let mut recent = self.status.recent.lock();
            if recent.len() == RECENT_FRAMES {
                recent.pop_front();
            }
            recent.push_back((t, frame.clone()));
        }
        let input = match &mut self.old_prompt {
            Some(old) if t < old.start + old.fade_frames + self.blend_margin_frames => {
                while old.generator.frames_done() <= t {
                    old.generator
                        .step(&mut self.decoder, conditioning(&old.cross, old.morph.as_ref()))?;
                }
                CodecInput::Blend {
                    new: frame,
                    old: old.generator.frame(t).to_vec(),
                    fade_start: old.start,
                    fade_frames: old.fade_frames,
                }
            }
            Some(_) => {
                self.old_prompt = None;
                CodecInput::Play(frame)
            }
            None => CodecInput::Play(frame),
        };
        Ok(self.to_codec.send(input).is_ok())
    }

    /// Conditions generation on `prompt` from the next step (a morph then blends from it);
    /// with a crossfade set, the old prompt's music goes on beside it for the fade. A
    /// melody model holds its prompt in its context, so the context starts again from
    /// the frames done, as at a window slide, with the new prompt in front.
    fn change_prompt(&mut self, prompt: &str) -> Result<(), StreamError> {
        let cross = self.model.condition_with_melody(prompt, self.melody.as_ref())?;
        self.prompt = prompt.to_owned();
        let new_morph = match &self.morph {
            Some((target, morph)) => Some((target.clone(), morph.for_new_a(&cross)?)),
            None => None,
        };
        let old = std::mem::replace(&mut self.cross, cross);
        let old_morph = std::mem::replace(&mut self.morph, new_morph).map(|(_, morph)| morph);
        if self.crossfade_frames > 0 && self.old_prompt.is_none() {
            self.old_prompt = Some(OldPromptLane {
                generator: self.generator.fork()?,
                cross: old,
                morph: old_morph,
                start: self.generator.frames_done(),
                fade_frames: self.crossfade_frames,
            });
        }
        if self.cross.prefix_len() > 0 {
            self.generator.restart(&mut self.decoder, &self.cross)?;
        }
        Ok(())
    }

    /// Morphs from the stream's prompt toward `target` from the next step, at the amount
    /// set last; `None` ends the morph.
    fn change_morph_target(&mut self, target: Option<String>) -> Result<(), StreamError> {
        if self.morph.as_ref().map(|(current, _)| current) == target.as_ref() {
            return Ok(());
        }
        self.morph = match target {
            Some(target) => Some(morph_toward(&self.model, &self.cross, target, self.morph_amount)?),
            None => None,
        };
        Ok(())
    }

    fn set_morph_amount(&mut self, amount: f32) {
        self.morph_amount = amount;
        if let Some((_, morph)) = &mut self.morph {
            morph.set_amount(amount);
        }
    }

    /// Applies pending commands; false when the stream should stop.
    fn apply_commands(&mut self) -> Result<bool, StreamError> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::SetPrompt(prompt)) => {
                    self.pending_prompts.clear();
                    self.change_prompt(&prompt)?;
                }
                Ok(Command::SetMorphTarget(target)) => self.change_morph_target(target)?,
                Ok(Command::SetMorph { amount, frame }) => {
                    self.pending_morphs.retain(|(at, _)| *at < frame);
                    self.pending_morphs.push_back((frame, amount));
                }
                Ok(Command::SetPromptCrossfade(seconds)) => {
                    self.crossfade_frames = (seconds.max(0.0) * self.frame_rate_hz).round() as usize;
                }
                Ok(Command::SetPromptAt { prompt, frame }) => {
                    self.pending_prompts.retain(|(at, _)| *at < frame);
                    self.pending_prompts.push_back((frame, prompt));
                }
                Ok(Command::SetSampling {
                    sampling,
                    guidance_scale,
                }) => {
                    self.generator.sampler_mut().set_settings(sampling)?;
                    let cross = conditioning(&self.cross, self.morph.as_ref().map(|(_, morph)| morph));
                    self.generator
                        .set_guidance_scale(guidance_scale, &mut self.decoder, cross)?;
                }
                Ok(Command::SetMelody(melody)) if melody != self.melody => {
                    // The current context keeps the melody it holds; the next one (a
                    // slide's lane, a prompt change's restart) is made under this one.
                    self.cross = self.model.condition_with_melody(&self.prompt, melody.as_ref())?;
                    self.melody = melody;
                }
                Ok(Command::SetMelody(_)) => {}
                Ok(Command::Stop) => return Ok(false),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let started = self.generator.started_frames();
        while self.pending_prompts.front().is_some_and(|(frame, _)| *frame <= started) {
            let (_, prompt) = self.pending_prompts.pop_front().expect("checked above");
            self.change_prompt(&prompt)?;
        }
        while self.pending_morphs.front().is_some_and(|(frame, _)| *frame <= started) {
            let (_, amount) = self.pending_morphs.pop_front().expect("checked above");
            self.set_morph_amount(amount);
        }
        Ok(true)
    }
}

/// A morph from the prompt's conditioning `a` toward `target`, at `amount`, with the
/// target it was made for.
fn morph_toward(model: &Model, a: &Condition, target: String, amount: f32) -> Result<(String, Morph), StreamError> {
    let morph = Morph::new(a, Arc::new(model.condition(&target)?), amount)?;
    Ok((target, morph))
}

/// What a step is conditioned on: the prompt's conditioning, or the morph's blend from it.
fn conditioning<'a>(prompt: &'a Condition, morph: Option<&'a Morph>) -> &'a Condition {
    match morph {
        Some(morph) => morph.conditioning(prompt),
        None => prompt,
    }
}
