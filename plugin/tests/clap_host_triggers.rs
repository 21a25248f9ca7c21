//! The trigger parameters as a host presses them: Stop silences the instrument though a
//! note is still held, until Generate brings the music back. Each press is on and off
//! within one block, as short as automation can make it, and each comes right after a
//! press of the other trigger in the same block: the last press is the one that holds.

mod host;

use clack_host::events::event_types::NoteOnEvent;
use clack_host::prelude::*;
use host::*;

const BLOCK: usize = 512;
const STOP_S: f64 = 5.0;
const GENERATE_S: f64 = 10.0;
const END_S: f64 = 16.0;

#[test]
fn stop_silences_a_held_note_until_generate_brings_the_music_back_the_last_press_holding() {
    let Loaded { mut instance, _entry } = load();
    let parameters = parameters(&mut instance);
    let (stop, generate) = (
        find_parameter(&parameters, "Stop"),
        find_parameter(&parameters, "Generate"),
    );
    assert!(stop.stepped && generate.stepped, "triggers are switches");
    let config = audio_configuration(RATE_HZ, BLOCK);
    let processor = instance.activate(|_, _| (), config).expect("the plugin activates");
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut presses = |done: usize, frames: usize, events: &mut EventBuffer| {
        let block = done..done + frames;
        if done == 0 {
            events.push(&NoteOnEvent::new(0, key, 1.0));
        }
        if block.contains(&at(STOP_S)) {
            press_at(events, &generate, 0);
            press_at(events, &stop, 20);
        }
        if block.contains(&at(GENERATE_S)) {
            press_at(events, &stop, 0);
            press_at(events, &generate, 20);
        }
    };
    let performance = Performance {
        rate_hz: RATE_HZ,
        block: BLOCK,
        total: at(END_S),
        transport: false,
        real_time: true,
        sidechain: None,
    };
    let (processor, [left, _]) = perform(&mut instance, processor, &performance, &mut presses, None);
    instance.deactivate(processor);

    let before = rms(&left[at(STOP_S - 2.0)..at(STOP_S)]);
    assert!(before > 1e-3, "the held note plays before Stop (RMS {before})");
    // The controller acts within a few ms; the gate fades over 20 ms.
    let silent = &left[at(STOP_S + 0.25)..at(GENERATE_S)];
    let sounding = silent.iter().filter(|s| **s != 0.0).count();
    assert_eq!(
        sounding, 0,
        "{sounding} samples sounded after Stop while the note was held (no new stream may start)"
    );
    let after = rms(&left[at(GENERATE_S + 3.0)..at(END_S)]);
    assert!(after > 1e-3, "Generate brought the music back (RMS {after})");
}
