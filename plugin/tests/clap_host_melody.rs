//! *Follow sidechain melody* as a host drives it: a melody model plays after the melody
//! on the sidechain (another tone gives other music), the sidechain is ignored with the
//! switch off, and a text model ignores the switch.

mod host;

use std::f32::consts::TAU;
use std::path::Path;

use clack_host::events::event_types::NoteOnEvent;
use clack_host::prelude::*;
use host::*;

const BLOCK: usize = 512;
/// Late enough for the chosen model to have loaded and filled its buffer.
const NOTE_ON_S: f64 = 2.5;
const END_S: f64 = 5.5;

/// A4 (pitch class 9) and F#4 (pitch class 6) on the sidechain from the first sample.
fn a4(sample: usize) -> f32 {
    0.3 * (TAU * 440.0 * sample as f32 / RATE_HZ as f32).sin()
}

fn f_sharp4(sample: usize) -> f32 {
    0.3 * (TAU * 369.99 * sample as f32 / RATE_HZ as f32).sin()
}

/// A held note on the model in `models/<model>`, with `tone` on the sidechain and
/// *Follow sidechain melody* set to `follow`; the left channel from the note on.
fn perform_following(model: &str, tone: fn(usize) -> f32, follow: bool) -> Vec<f32> {
    let Loaded { mut instance, _entry } = load();
    let mut state = save(&mut instance);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(model);
    state["fields"]["model_dir"] = serde_json::to_string(&dir.to_string_lossy()).unwrap().into();
    state["params"]["follow_melody"] = serde_json::json!({ "bool": follow });
    restore(&mut instance, &state);
    assert_eq!(
        save(&mut instance)["params"]["follow_melody"],
        serde_json::json!({ "bool": follow }),
        "the state sets the switch"
    );
    let config = audio_configuration(RATE_HZ, BLOCK);
    let processor = instance.activate(|_, _| (), config).expect("the plugin activates");
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut events = |done: usize, frames: usize, events: &mut EventBuffer| {
        if (done..done + frames).contains(&at(NOTE_ON_S)) {
            events.push(&NoteOnEvent::new(0, key, 1.0));
        }
    };
    let performance = Performance {
        rate_hz: RATE_HZ,
        block: BLOCK,
        total: at(END_S),
        transport: false,
        real_time: true,
        sidechain: Some(tone),
    };
    let (processor, [left, _]) = perform(&mut instance, processor, &performance, &mut events, None);
    instance.deactivate(processor);
    left[at(NOTE_ON_S)..].to_vec()
}

#[test]
fn a_melody_model_follows_the_sidechain_melody_only_when_asked() {
    let ignored_a = perform_following("tiny-melody", a4, false);
    let ignored_f_sharp = perform_following("tiny-melody", f_sharp4, false);
    assert!(
        rms(&ignored_a) > 1e-3,
        "the melody model plays (RMS {})",
        rms(&ignored_a)
    );
    let first_sound = |run: &[f32]| run.iter().position(|s| s.abs() > 1e-6);
    let first_difference = ignored_a.iter().zip(&ignored_f_sharp).position(|(a, b)| a != b);
    eprintln!(
        "first sound {:?} {:?}, first difference {first_difference:?}",
        first_sound(&ignored_a),
        first_sound(&ignored_f_sharp)
    );
    assert!(
        ignored_a == ignored_f_sharp,
        "with the switch off, the sidechain does not change the music"
    );

    let following_a = perform_following("tiny-melody", a4, true);
    let following_f_sharp = perform_following("tiny-melody", f_sharp4, true);
    assert!(rms(&following_a) > 1e-3, "the followed melody plays");
    assert!(following_a != ignored_a, "following A4 changes the music");
    assert!(
        following_a != following_f_sharp,
        "another melody on the sidechain gives other music"
    );

    // A text model has no melody input: the switch changes nothing.
    assert!(
        perform_following("tiny", a4, true) == perform_following("tiny", a4, false),
        "a text model ignores Follow sidechain melody"
    );
}
