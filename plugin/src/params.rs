//! The plugin's parameters (automatable, in the host) and its persisted settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use musicgen_engine::ExecutionProvider;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::*;
use nice_plug_egui::EguiEditorState;
use parking_lot::RwLock;

use crate::slots::{DEFAULT_FIRST_SLOT_NOTE, PromptBank, SLOT_COUNT, note_name, parse_note};

/// The editor's size in logical pixels.
const EDITOR_WIDTH: u32 = 760;
const EDITOR_HEIGHT: u32 = 860;

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
    #[id = "next_slot"]
    pub next_slot: BoolParam,
    /// The trigger parameters' presses and the slots chosen, not yet acted on.
    pub presses: Arc<Presses>,

    /// Chooses a prompt slot when the host changes it (automation, a mapped control).
    #[id = "slot"]
    pub slot: IntParam,
    /// The note that chooses slot 1; the next seven notes choose slots 2 to 8, and play.
    #[id = "first_slot_note"]
    pub first_slot_note: IntParam,
    #[persist = "bank"]
    pub bank: Arc<RwLock<PromptBank>>,
    /// The slot whose prompt plays (0-based), or the last one chosen.
    #[persist = "active_slot"]
    pub active_slot: Arc<AtomicU32>,
    /// The slot (0-based) the *Slot* parameter last chose: a project that restores the
    /// parameter at that value chooses nothing (its active slot and prompt say what plays).
    #[persist = "slot_parameter_chose"]
    pub slot_parameter_chose: Arc<AtomicU32>,

    #[persist = "prompt"]
    pub prompt: Arc<RwLock<String>>,
    /// Empty: the model bundled next to the plugin.
    #[persist = "model_dir"]
    pub model_dir: Arc<RwLock<String>>,
    #[persist = "provider"]
    pub provider: Arc<RwLock<ExecutionProvider>>,

    /// The editor's window: its size, and whether it is open (the controller publishes its
    /// status only then).
    pub editor_state: Arc<EguiEditorState>,
}

/// The actions the trigger parameters press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Generate,
    Stop,
    ContinueFromSidechain,
    NextSlot,
}

/// Presses of the trigger parameters, and the slot last chosen, since the controller last
/// looked. A parameter's callback counts its rising edges on whichever thread sets it (the
/// audio thread for automation, the main thread for a host's flush), so a press as short
/// as one event within a block counts; a slot note is written by the audio thread. Atomics
/// only, as the audio thread requires.
#[derive(Debug, Default)]
pub struct Presses {
    generate: AtomicU32,
    stop: AtomicU32,
    continue_from_sidechain: AtomicU32,
    next_slot: AtomicU32,
    /// The slot a note chose last, plus one; 0: none.
    chosen_slot: AtomicU32,
    /// The *Slot* parameter's last value (0-based), plus one; 0: unchanged.
    slot_parameter: AtomicU32,
}

impl Presses {
    fn counter(&self, trigger: Trigger) -> &AtomicU32 {
        match trigger {
            Trigger::Generate => &self.generate,
            Trigger::Stop => &self.stop,
            Trigger::ContinueFromSidechain => &self.continue_from_sidechain,
            Trigger::NextSlot => &self.next_slot,
        }
    }

    /// Whether `trigger` was pressed since the last call; presses in between act once.
    pub fn take(&self, trigger: Trigger) -> bool {
        self.counter(trigger).swap(0, Ordering::AcqRel) > 0
    }

    /// Chooses slot `index` (0-based); of several chosen before the controller looks, the
    /// last wins.
    pub fn choose_slot(&self, index: usize) {
        self.chosen_slot.store(index as u32 + 1, Ordering::Release);
    }

    /// The slot a note chose since the last call, if any.
    pub fn take_chosen_slot(&self) -> Option<usize> {
        taken_slot(&self.chosen_slot)
    }

    fn move_slot_parameter(&self, index: usize) {
        self.slot_parameter.store(index as u32 + 1, Ordering::Release);
    }

    /// The *Slot* parameter's value (0-based) if it changed since the last call.
    pub fn take_slot_parameter(&self) -> Option<usize> {
        taken_slot(&self.slot_parameter)
    }
}

fn taken_slot(slot_plus_one: &AtomicU32) -> Option<usize> {
    match slot_plus_one.swap(0, Ordering::AcqRel) {
        0 => None,
        plus_one => Some(plus_one as usize - 1),
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

/// The *Slot* parameter (1 to 8): a change of its value chooses that slot, unless it is the
/// slot the parameter last chose (a project restoring the value it was saved with).
fn slot_param(presses: &Arc<Presses>) -> IntParam {
    let presses = Arc::clone(presses);
    IntParam::new(
        "Slot",
        1,
        IntRange::Linear {
            min: 1,
            max: SLOT_COUNT as i32,
        },
    )
    .with_callback(Arc::new(move |slot| {
        presses.move_slot_parameter((slot - 1).max(0) as usize)
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
            next_slot: trigger_param("Next slot", Trigger::NextSlot, &presses),
            slot: slot_param(&presses),
            first_slot_note: IntParam::new(
                "Slot notes from",
                DEFAULT_FIRST_SLOT_NOTE,
                IntRange::Linear {
                    min: 0,
                    max: 127 - SLOT_COUNT as i32 + 1,
                },
            )
            .with_value_to_string(Arc::new(|note| format!("{} ({note})", note_name(note))))
            .with_string_to_value(Arc::new(parse_note))
            .non_automatable(),
            bank: Arc::new(RwLock::new(PromptBank::default())),
            active_slot: Arc::new(AtomicU32::new(0)),
            slot_parameter_chose: Arc::new(AtomicU32::new(0)),
            presses,
            prompt: Arc::new(RwLock::new(DEFAULT_PROMPT.to_owned())),
            model_dir: Arc::new(RwLock::new(String::new())),
            provider: Arc::new(RwLock::new(ExecutionProvider::Auto)),
            editor_state: EguiEditorState::from_size(
                LogicalSize::new(f64::from(EDITOR_WIDTH), f64::from(EDITOR_HEIGHT)),
                1.0,
            ),
        }
    }
}
