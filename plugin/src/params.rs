//! The plugin's parameters (automatable, in the host) and its persisted settings.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crossbeam_queue::ArrayQueue;
use musicgen_engine::{DEFAULT_KEEP_SECONDS, DEFAULT_WINDOW_SECONDS, ExecutionProvider};
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::*;
use nice_plug_egui::EguiEditorState;
use parking_lot::RwLock;

use crate::slots::{DEFAULT_FIRST_SLOT_NOTE, PromptBank, SLOT_COUNT, note_name, parse_note};

/// The editor's size in logical pixels when it first opens.
const EDITOR_WIDTH: u32 = 760;
const EDITOR_HEIGHT: u32 = 960;
/// The smallest and largest size a performer may give the editor, in logical pixels.
pub const EDITOR_MIN_SIZE: (f32, f32) = (560.0, 480.0);
const EDITOR_MAX_SIZE: (f32, f32) = (7680.0, 4320.0);

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
    /// Blends the playing prompt (0) toward the *Morph to* slot's prompt (1) without
    /// restarting the music.
    #[id = "morph"]
    pub morph: FloatParam,
    /// The slot (1 to 8) whose prompt the morph blends toward.
    #[id = "morph_to"]
    pub morph_to: IntParam,
    /// A melody model follows the melody of the sidechain's last *Context window* seconds,
    /// taken up at each window slide and prompt change (other models ignore it).
    #[id = "follow_melody"]
    pub follow_melody: BoolParam,
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
    /// The editor's size in logical pixels as the performer left it, saved with the
    /// project; it opens at that size again.
    #[persist = "editor_size"]
    pub editor_size: Arc<RwLock<Option<(f32, f32)>>>,
}

/// The actions the trigger parameters press.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Generate,
    Stop,
    ContinueFromSidechain,
    NextSlot,
}

/// What a performer did for the controller to act on: a trigger pressed, a slot chosen by
/// its note or by the *Slot* parameter (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Press {
    Trigger(Trigger),
    NoteSlot(usize),
    SlotParameter(usize),
}

impl Press {
    /// Presses of one kind coalesce: only the last of them acts.
    fn same_kind(self, other: Press) -> bool {
        match (self, other) {
            (Press::Trigger(a), Press::Trigger(b)) => a == b,
            (a, b) => std::mem::discriminant(&a) == std::mem::discriminant(&b),
        }
    }
}

/// Presses the controller has not taken yet, in the order they came. A parameter's
/// callback posts a press on whichever thread sets it (the audio thread for automation,
/// the main thread for a host's flush), so a press as short as one event within a block
/// counts; a slot note is posted by the audio thread. The queue is lock-free and
/// allocates only when made, as the audio thread requires.
///
/// The order matters: a Stop and a Generate pressed while the controller was busy (a
/// stream's start takes tens of milliseconds) must act in the order they were pressed,
/// or the performer's last press is undone.
#[derive(Debug)]
pub struct Presses {
    queue: ArrayQueue<Press>,
}

/// Presses held between two looks of the controller; beyond it the oldest give way.
const PRESSES_QUEUED: usize = 1024;

impl Default for Presses {
    fn default() -> Self {
        Self {
            queue: ArrayQueue::new(PRESSES_QUEUED),
        }
    }
}

impl Presses {
    /// Posts `press`; a full queue drops its oldest press, so the newest always counts.
    pub fn press(&self, press: Press) {
        self.queue.force_push(press);
    }

    /// Moves the presses since the last call into `taken`, oldest first, each kind once at
    /// the place of its last press: of many presses of one trigger before the controller
    /// looks, one acts.
    pub fn take(&self, taken: &mut Vec<Press>) {
        taken.clear();
        while let Some(press) = self.queue.pop() {
            taken.push(press);
        }
        let mut index = 0;
        while index < taken.len() {
            let press = taken[index];
            if taken[index + 1..].iter().any(|later| later.same_kind(press)) {
                taken.remove(index);
            } else {
                index += 1;
            }
        }
    }
}

/// A parameter that presses `trigger` when it turns on.
fn trigger_param(name: &str, trigger: Trigger, presses: &Arc<Presses>) -> BoolParam {
    let presses = Arc::clone(presses);
    BoolParam::new(name, false).with_callback(Arc::new(move |on| {
        if on {
            presses.press(Press::Trigger(trigger));
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
        presses.press(Press::SlotParameter((slot - 1).max(0) as usize))
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
            window: FloatParam::new(
                "Context window",
                DEFAULT_WINDOW_SECONDS as f32,
                FloatRange::Linear { min: 2.0, max: 30.0 },
            )
            .with_step_size(0.5)
            .with_unit(" s")
            .non_automatable(),
            keep: FloatParam::new(
                "Kept context",
                DEFAULT_KEEP_SECONDS as f32,
                FloatRange::Linear { min: 0.0, max: 15.0 },
            )
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
            morph: FloatParam::new("Morph", 0.0, FloatRange::Linear { min: 0.0, max: 1.0 })
                .with_unit(" %")
                .with_value_to_string(formatters::v2s_f32_percentage(0))
                .with_string_to_value(formatters::s2v_f32_percentage()),
            follow_melody: BoolParam::new("Follow sidechain melody", false),
            morph_to: IntParam::new(
                "Morph to",
                2,
                IntRange::Linear {
                    min: 1,
                    max: SLOT_COUNT as i32,
                },
            ),
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
            editor_size: Arc::new(RwLock::new(None)),
        }
    }
}

impl MusicGenParams {
    /// The slot (0-based) the *Morph to* parameter names.
    pub fn morph_slot(&self) -> usize {
        (self.morph_to.value() - 1).max(0) as usize
    }

    /// The saved editor size, within the sizes the editor takes; none when the project
    /// saved none or a size that is not a number.
    pub fn saved_editor_size(&self) -> Option<(f32, f32)> {
        let (width, height) = (*self.editor_size.read())?;
        (width.is_finite() && height.is_finite()).then(|| {
            (
                width.clamp(EDITOR_MIN_SIZE.0, EDITOR_MAX_SIZE.0),
                height.clamp(EDITOR_MIN_SIZE.1, EDITOR_MAX_SIZE.1),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use nice_plug::params::InternalParamMut;

    use super::*;

    fn taken(presses: &Presses) -> Vec<Press> {
        let mut taken = Vec::new();
        presses.take(&mut taken);
        taken
    }

    #[test]
    fn presses_act_in_the_order_they_came_each_kind_once_at_its_last_place() {
        let presses = Presses::default();
        for press in [
            Press::Trigger(Trigger::Stop),
            Press::NoteSlot(2),
            Press::Trigger(Trigger::Generate),
            Press::Trigger(Trigger::Stop),
            Press::NoteSlot(5),
            Press::SlotParameter(1),
        ] {
            presses.press(press);
        }
        assert_eq!(
            taken(&presses),
            [
                Press::Trigger(Trigger::Generate),
                Press::Trigger(Trigger::Stop),
                Press::NoteSlot(5),
                Press::SlotParameter(1),
            ]
        );
        assert!(taken(&presses).is_empty(), "a press acts once");
    }

    #[test]
    fn a_saved_editor_size_opens_within_the_sizes_the_editor_takes() {
        let params = MusicGenParams::default();
        assert_eq!(
            params.saved_editor_size(),
            None,
            "a fresh instance opens at its default"
        );
        *params.editor_size.write() = Some((1200.0, 900.0));
        assert_eq!(params.saved_editor_size(), Some((1200.0, 900.0)));
        *params.editor_size.write() = Some((10.0, 1e9));
        assert_eq!(params.saved_editor_size(), Some((EDITOR_MIN_SIZE.0, EDITOR_MAX_SIZE.1)));
        *params.editor_size.write() = Some((f32::NAN, 700.0));
        assert_eq!(params.saved_editor_size(), None, "a damaged size is dropped");
    }

    #[test]
    fn a_full_queue_keeps_the_newest_press() {
        let presses = Presses::default();
        for _ in 0..PRESSES_QUEUED * 3 {
            presses.press(Press::Trigger(Trigger::Stop));
        }
        presses.press(Press::Trigger(Trigger::Generate));
        assert_eq!(
            taken(&presses),
            [Press::Trigger(Trigger::Stop), Press::Trigger(Trigger::Generate)]
        );
    }

    #[test]
    fn a_trigger_parameter_presses_when_it_turns_on_not_off() {
        let params = MusicGenParams::default();
        // SAFETY: the parameters are set from this thread only, as a host's flush would.
        unsafe {
            params.generate._internal_set_plain_value(true);
            params.generate._internal_set_plain_value(false);
        }
        assert_eq!(taken(&params.presses), [Press::Trigger(Trigger::Generate)]);
    }
}
