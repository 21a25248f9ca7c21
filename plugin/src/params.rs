//! The plugin's parameters (automatable, in the host) and its persisted settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use musicgen_engine::ExecutionProvider;
use nice_plug::prelude::*;
use parking_lot::RwLock;

/// The prompt a fresh instance starts with.
pub const DEFAULT_PROMPT: &str = "warm lo-fi piano with soft drums, 80 bpm";

#[derive(Params)]
pub struct MusicGenParams {
    /// Classifier-free guidance: how strongly the music follows the prompt.
    #[id = "guidance"]
    pub guidance: FloatParam,
    #[id = "temperature"]
    pub temperature: FloatParam,
    /// 0 keeps every token.
    #[id = "top_k"]
    pub top_k: IntParam,
    /// 0 turns nucleus sampling off.
    #[id = "top_p"]
    pub top_p: FloatParam,
    #[id = "gain"]
    pub gain: FloatParam,
    #[id = "seed"]
    pub seed: IntParam,
    /// Silences the instrument with the gate's 20 ms fade; the stream goes on generating,
    /// so the music is there at once when the bypass ends. Hosts show it as the plugin's
    /// bypass.
    #[id = "bypass"]
    pub bypass: BoolParam,
    /// Play while the host's transport runs, without a held note.
    #[id = "free_run"]
    pub free_run: BoolParam,
    /// Seconds of context the model sees before the window slides on (next stream).
    #[id = "window"]
    pub window: FloatParam,
    /// Seconds of the window the next window keeps (next stream).
    #[id = "keep"]
    pub keep: FloatParam,
    /// Where generation is slower than real time, playback waits until this many seconds
    /// can play without a gap (next stream).
    #[id = "buffer_ahead"]
    pub buffer_ahead: FloatParam,
    /// A new prompt takes over on the host's next bar line while the transport plays.
    #[id = "bar_sync"]
    pub bar_sync: BoolParam,
    /// Appends the host's tempo to the prompt ("..., 120 bpm").
    #[id = "tempo_hint"]
    pub tempo_hint: BoolParam,
    /// Seconds over which a new prompt's music fades in over the old one's (0: it cuts in).
    /// The fade generates both, so it costs twice the steps while it runs.
    #[id = "prompt_fade"]
    pub prompt_crossfade: FloatParam,

    /// Trigger parameters: each acts once on its rising edge (the host's automation, a
    /// MIDI-learned control, a mapped button), through `presses`.
    #[id = "generate"]
    pub generate: BoolParam,
    #[id = "stop"]
    pub stop: BoolParam,
    #[id = "continue_sidechain"]
    pub continue_from_sidechain: BoolParam,
    /// The trigger parameters' presses, not yet acted on.
    pub presses: Arc<Presses>,

    #[persist = "prompt"]
    pub prompt: Arc<RwLock<String>>,
    /// Empty: the model bundled next to the plugin.
    #[persist = "model_dir"]
    pub model_dir: Arc<RwLock<String>>,
    #[persist = "provider"]
    pub provider: Arc<RwLock<ExecutionProvider>>,
}

/// The actions the trigger parameters press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Generate,
    Stop,
    ContinueFromSidechain,
}

/// Presses of the trigger parameters since the controller last looked. A parameter's
/// callback counts its rising edges on whichever thread sets it (the audio thread for
/// automation, the main thread for a host's flush), so a press as short as one event
/// within a block counts; atomics only, as the audio thread requires.
#[derive(Debug, Default)]
pub struct Presses {
    generate: AtomicU32,
    stop: AtomicU32,
    continue_from_sidechain: AtomicU32,
}

impl Presses {
    fn counter(&self, trigger: Trigger) -> &AtomicU32 {
        match trigger {
            Trigger::Generate => &self.generate,
            Trigger::Stop => &self.stop,
            Trigger::ContinueFromSidechain => &self.continue_from_sidechain,
        }
    }

    /// Whether `trigger` was pressed since the last call; presses in between act once.
    pub fn take(&self, trigger: Trigger) -> bool {
        self.counter(trigger).swap(0, Ordering::AcqRel) > 0
    }
}

/// A parameter that presses `trigger` when it turns on.
fn trigger_param(name: &str, trigger: Trigger, presses: &Arc<Presses>) -> BoolParam {
    let presses = Arc::clone(presses);
    BoolParam::new(name, false).with_callback(Arc::new(move |on| {
        if on {
            presses.counter(trigger).fetch_add(1, Ordering::AcqRel);
        }
    }))
}

impl Default for MusicGenParams {
    fn default() -> Self {
        let presses = Arc::new(Presses::default());
        Self {
            guidance: FloatParam::new("Guidance", 3.0, FloatRange::Linear { min: 1.0, max: 10.0 }).with_step_size(0.1),
            temperature: FloatParam::new(
                "Temperature",
                1.0,
                FloatRange::Skewed {
                    min: 0.05,
                    max: 2.0,
                    factor: FloatRange::skew_factor(-1.0),
                },
            )
            .with_step_size(0.01),
            top_k: IntParam::new("Top-k", 250, IntRange::Linear { min: 0, max: 2048 }),
            top_p: FloatParam::new("Top-p", 0.0, FloatRange::Linear { min: 0.0, max: 1.0 }).with_step_size(0.01),
            gain: FloatParam::new(
                "Gain",
                util::db_to_gain(0.0),
                FloatRange::Skewed {
                    min: util::db_to_gain(-48.0),
                    max: util::db_to_gain(12.0),
                    factor: FloatRange::gain_skew_factor(-48.0, 12.0),
                },
            )
            .with_smoother(SmoothingStyle::Logarithmic(30.0))
            .with_unit(" dB")
            .with_value_to_string(formatters::v2s_f32_gain_to_db(1))
            .with_string_to_value(formatters::s2v_f32_gain_to_db()),
            seed: IntParam::new("Seed", 0, IntRange::Linear { min: 0, max: 65_535 }),
            bypass: BoolParam::new("Bypass", false).make_bypass(),
            free_run: BoolParam::new("Free run", false),
            window: FloatParam::new("Context window", 10.0, FloatRange::Linear { min: 2.0, max: 30.0 })
                .with_step_size(0.5)
                .with_unit(" s")
                .non_automatable(),
            keep: FloatParam::new("Kept context", 4.0, FloatRange::Linear { min: 0.0, max: 15.0 })
                .with_step_size(0.5)
                .with_unit(" s")
                .non_automatable(),
            buffer_ahead: FloatParam::new("Buffer ahead", 10.0, FloatRange::Linear { min: 1.0, max: 60.0 })
                .with_step_size(1.0)
                .with_unit(" s")
                .non_automatable(),
            bar_sync: BoolParam::new("Prompt on next bar", true),
            tempo_hint: BoolParam::new("Tempo in prompt", false),
            prompt_crossfade: FloatParam::new("Prompt crossfade", 0.0, FloatRange::Linear { min: 0.0, max: 8.0 })
                .with_step_size(0.25)
                .with_unit(" s"),
            generate: trigger_param("Generate", Trigger::Generate, &presses),
            stop: trigger_param("Stop", Trigger::Stop, &presses),
            continue_from_sidechain: trigger_param("Continue from sidechain", Trigger::ContinueFromSidechain, &presses),
            presses,
            prompt: Arc::new(RwLock::new(DEFAULT_PROMPT.to_owned())),
            model_dir: Arc::new(RwLock::new(String::new())),
            provider: Arc::new(RwLock::new(ExecutionProvider::Auto)),
        }
    }
}
