//! Parameter automation as a DAW's busiest lane sends it: a value for every parameter on
//! every sample, while a note plays. The debug bundle aborts on any allocation in
//! `process()`.

mod host;

use clack_host::events::event_types::{NoteOnEvent, ParamValueEvent};
use clack_host::prelude::*;
use host::*;

const BLOCK: usize = 256;

/// Seconds into the performance where each part starts.
const NOTE_ON_S: f64 = 1.5;
const REFERENCE_S: (f64, f64) = (2.5, 3.5);
const GAIN_DOWN_S: (f64, f64) = (3.5, 4.5);
const EVERYTHING_S: (f64, f64) = (4.5, 6.5);
/// After the automation, the performer presses Generate: whichever trigger the random
/// values pressed last, the music plays again.
const GENERATE_S: f64 = 6.6;
const END_S: f64 = 8.0;

/// A small deterministic generator: the test's random automation is the same each run.
fn next_random(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn rms_between(channel: &[f32], (from_s, to_s): (f64, f64)) -> f32 {
    rms(&channel[at(from_s)..at(to_s)])
}

#[test]
fn every_parameter_automated_on_every_sample_neither_crashes_nor_allocates_and_the_gain_follows() {
    let Loaded { mut instance, _entry } = load();
    let parameters = parameters(&mut instance);
    let gain = parameters
        .iter()
        .position(|p| p.name == "Gain")
        .expect("a Gain parameter");
    let config = audio_configuration(RATE_HZ, BLOCK);
    let processor = instance.activate(|_, _| (), config).unwrap();
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut random = 0x9E37_79B9_7F4A_7C15u64;
    let set = |events: &mut EventBuffer, time: u32, parameter: &Parameter, value: f64| {
        events.push(&ParamValueEvent::new(time, parameter.id, Pckn::match_all(), value));
    };
    let generate = find_parameter(&parameters, "Generate");
    let mut automation = |done: usize, frames: usize, events: &mut EventBuffer| {
        if (done..done + frames).contains(&at(NOTE_ON_S)) {
            events.push(&NoteOnEvent::new((at(NOTE_ON_S) - done) as u32, key, 1.0));
        }
        if (done..done + frames).contains(&at(GENERATE_S)) {
            press(events, &generate);
        }
        for offset in 0..frames {
            let sample = done + offset;
            let time = offset as u32;
            let seconds = sample as f64 / f64::from(RATE_HZ);
            if (GAIN_DOWN_S.0..GAIN_DOWN_S.1).contains(&seconds) {
                // Down to the bottom of the range in 0.2 s, then held there.
                let fall = ((seconds - GAIN_DOWN_S.0) / 0.2).min(1.0);
                let (floor, unity) = (parameters[gain].min, parameters[gain].value);
                set(events, time, &parameters[gain], unity + fall * (floor - unity));
            } else if (EVERYTHING_S.0..EVERYTHING_S.1).contains(&seconds) {
                for parameter in &parameters {
                    set(events, time, parameter, parameter.at(next_random(&mut random)));
                }
            } else if sample == at(EVERYTHING_S.1) {
                for parameter in &parameters {
                    set(events, time, parameter, parameter.value);
                }
            }
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
    let (processor, [left, right]) = perform(&mut instance, processor, &performance, &mut automation, None);
    instance.deactivate(processor);

    assert!(
        left.iter().chain(&right).all(|s| s.is_finite() && s.abs() <= 4.0),
        "the output went out of bounds under automation"
    );
    let reference = rms_between(&left, REFERENCE_S);
    let held_down = rms_between(&left, (GAIN_DOWN_S.0 + 0.4, GAIN_DOWN_S.1));
    let after = rms_between(&left, (GENERATE_S + 0.4, END_S));
    assert!(reference > 1e-3, "no sound before the automation (RMS {reference})");
    assert!(
        held_down < reference * 0.02,
        "gain automated to its floor left RMS {held_down} against {reference}"
    );
    assert!(
        after > reference * 0.05,
        "the sound did not come back after the automation (RMS {after} against {reference})"
    );
}
