//! Prompt slots as a performer plays them: a note in the slots' range chooses its slot, and
//! so do the *Next slot* trigger and the *Slot* parameter, each by the prompt's rules (here
//! on the next bar, with the transport playing). A note outside the range only plays.
//! Alone in its binary, as the bar-sync test is: how far generation runs ahead decides the
//! bar line a change lands on.

mod host;

use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent, ParamValueEvent};
use clack_host::prelude::*;
use host::*;

const RATE_HZ: u32 = 48_000;
const BLOCK: usize = 256;
/// Off the 20 ms frame grid, so that the bar line's frame does not sit on a rounding edge.
const NOTE_ON_S: f64 = 2.51;
const NOTE_OFF_S: f64 = 8.5;
/// The notes that choose slots 1 and 2 by default (C1, C#1), and one above the slots.
const SLOT_1_NOTE: u16 = 36;
const SLOT_2_NOTE: u16 = 37;
const PLAIN_NOTE: u16 = 60;

/// How the performer reaches slot 2 (or does not).
#[derive(Clone, Copy, Debug)]
enum Choice {
    /// A note outside the slots' range: the prompt stays.
    Plain,
    SlotNote(u16),
    NextSlotTrigger,
    SlotParameter,
}

/// One performance with the transport playing: a note (or a plain note with a trigger or a
/// parameter change in the same block) from [`NOTE_ON_S`] to [`NOTE_OFF_S`]. Returns the
/// left channel from the note on to the note off, and the prompt saved afterwards.
fn perform_choice(choice: Choice) -> (Vec<f32>, String) {
    let Loaded { mut instance, _entry } = load();
    // How far generation runs ahead decides which bar line is the first it has not
    // reached: keep it near the usual 2 s even when a loaded machine measures the stream as
    // slow, so that the change lands on the bar at 6 s in every run.
    let mut state = save(&mut instance);
    state["params"]["buffer_ahead"] = serde_json::json!({ "f32": 1.0 });
    restore(&mut instance, &state);
    let parameters = parameters(&mut instance);
    let (next_slot, slot) = (
        find_parameter(&parameters, "Next slot"),
        find_parameter(&parameters, "Slot"),
    );
    assert!(next_slot.stepped && slot.stepped);
    // nice-plug shows the host a stepped parameter as its steps, from 0: slot 1 is 0.
    assert_eq!((slot.min, slot.max), (0.0, 7.0), "eight slots");
    let config = audio_configuration(RATE_HZ, BLOCK);
    let processor = instance.activate(|_, _| (), config).expect("the plugin activates");
    let samples = |seconds: f64| (seconds * f64::from(RATE_HZ)) as usize;
    let note_on_at = samples(NOTE_ON_S).next_multiple_of(BLOCK);
    let note_off_at = samples(NOTE_OFF_S);
    let note = match choice {
        Choice::SlotNote(note) => note,
        _ => PLAIN_NOTE,
    };
    let key = Pckn::new(0u16, 0u16, note, 0u32);
    let mut events = |done: usize, frames: usize, events: &mut EventBuffer| {
        if done == note_on_at {
            events.push(&NoteOnEvent::new(0, key, 1.0));
            match choice {
                Choice::NextSlotTrigger => press(events, &next_slot),
                Choice::SlotParameter => {
                    events.push(&ParamValueEvent::new(0, slot.id, Pckn::match_all(), 1.0));
                }
                Choice::Plain | Choice::SlotNote(_) => {}
            }
        }
        if (done..done + frames).contains(&note_off_at) {
            events.push(&NoteOffEvent::new((note_off_at - done) as u32, key, 0.0));
        }
    };
    let performance = Performance {
        rate_hz: RATE_HZ,
        block: BLOCK,
        total: note_off_at + samples(0.1),
        transport: true,
        real_time: true,
        sidechain: None,
    };
    let (processor, [left, _]) = perform(&mut instance, processor, &performance, &mut events, None);
    instance.deactivate(processor);
    let prompt = persisted_prompt(&save(&mut instance));
    (left[note_on_at..note_off_at].to_vec(), prompt)
}

#[test]
fn slot_notes_next_slot_and_the_slot_parameter_change_the_prompt_on_the_next_bar_alike() {
    let (plain, plain_prompt) = perform_choice(Choice::Plain);
    let (slot_1, slot_1_prompt) = perform_choice(Choice::SlotNote(SLOT_1_NOTE));
    let (slot_2, slot_2_prompt) = perform_choice(Choice::SlotNote(SLOT_2_NOTE));
    let (next, next_prompt) = perform_choice(Choice::NextSlotTrigger);
    let (parameter, parameter_prompt) = perform_choice(Choice::SlotParameter);

    assert!(rms(&plain) > 1e-3, "the plain note plays (RMS {})", rms(&plain));
    // Slot 1 of the default bank holds the prompt a new instance starts with.
    assert_eq!(slot_1_prompt, plain_prompt);
    assert!(slot_1 == plain, "choosing the slot that already plays changes nothing");

    assert_ne!(slot_2_prompt, plain_prompt, "slot 2 holds another prompt");
    assert_eq!(next_prompt, slot_2_prompt, "Next slot goes from slot 1 to slot 2");
    assert_eq!(
        parameter_prompt, slot_2_prompt,
        "the Slot parameter at 2 chooses slot 2"
    );
    // The note plays the stream from its first sample; the change, asked for at 2.51 s
    // with generation about 2 s ahead, lands on the bar line at 6 s: the stream's frame
    // 174.5 at 50 frames per second. The music before frame 165 is untouched (the codec
    // reads 3 frames ahead and the pattern's delays reach 3 frames back); from frame 185
    // on it is another.
    let samples_per_frame = RATE_HZ as usize / 50;
    let (before, after) = (165 * samples_per_frame, 185 * samples_per_frame);
    assert!(
        slot_2[..before] == plain[..before],
        "the music before the bar line is unchanged"
    );
    assert!(
        slot_2[after..] != plain[after..],
        "the music after the bar line follows slot 2"
    );
    assert!(next == slot_2, "Next slot changes the music as slot 2's note does");
    assert!(
        parameter == slot_2,
        "the Slot parameter changes the music as slot 2's note does"
    );
}
