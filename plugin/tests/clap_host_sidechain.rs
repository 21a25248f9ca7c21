//! *Continue from sidechain* as a host presses it: the music carries on from the last
//! *Kept context* seconds of the sidechain input. A continuation is made of that audio:
//! the same sidechain gives the same continuation, another gives another, and a silent
//! one is refused (the music plays on unchanged).

mod host;

use std::f32::consts::TAU;

use clack_host::events::event_types::NoteOnEvent;
use clack_host::prelude::*;
use host::*;

const BLOCK: usize = 512;
const NOTE_ON_S: f64 = 0.5;
/// After 5 s of sidechain: more than the 4 s of Kept context the continuation takes.
const PRESS_S: f64 = 5.0;
const END_S: f64 = 10.0;
/// Continuations compared over this long from the block they take over.
const COMPARED_S: f64 = 2.0;

/// Sidechain signals whose periods (128 and 64 samples) divide the block, so that the
/// last 4 s the plugin keeps are the same audio whichever block the press lands after.
fn tone_a(sample: usize) -> f32 {
    0.3 * (TAU * (sample % 128) as f32 / 128.0).sin()
}

fn tone_b(sample: usize) -> f32 {
    let phase = TAU * (sample % 64) as f32 / 64.0;
    0.2 * phase.sin() + 0.1 * (3.0 * phase).sin()
}

/// A held note with `sidechain` on the sidechain input and, if `pressed`, Continue from
/// sidechain pressed at [`PRESS_S`]; the left channel.
fn perform_with_sidechain(sidechain: Option<fn(usize) -> f32>, pressed: bool) -> Vec<f32> {
    let Loaded { mut instance, _entry } = load();
    let parameters = parameters(&mut instance);
    let continue_from_sidechain = find_parameter(&parameters, "Continue from sidechain");
    let config = audio_configuration(RATE_HZ, BLOCK);
    let processor = instance.activate(|_, _| (), config).expect("the plugin activates");
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut events = |done: usize, frames: usize, events: &mut EventBuffer| {
        let block = done..done + frames;
        if block.contains(&at(NOTE_ON_S)) {
            events.push(&NoteOnEvent::new(0, key, 1.0));
        }
        if pressed && block.contains(&at(PRESS_S)) {
            press(events, &continue_from_sidechain);
        }
    };
    let performance = Performance {
        rate_hz: RATE_HZ,
        block: BLOCK,
        total: at(END_S),
        transport: false,
        real_time: true,
        sidechain,
    };
    let (processor, [left, _]) = perform(&mut instance, processor, &performance, &mut events, None);
    instance.deactivate(processor);
    left
}

/// The block where `run` leaves `unchanged`: a continuation takes over at a block's start.
fn take_over_block(run: &[f32], unchanged: &[f32]) -> Option<usize> {
    let first = run.iter().zip(unchanged).position(|(a, b)| a != b)?;
    Some(first / BLOCK * BLOCK)
}

#[test]
fn the_continuation_is_made_of_the_sidechain_and_a_silent_one_is_refused() {
    let unpressed = perform_with_sidechain(Some(tone_a), false);
    let refused = perform_with_sidechain(None, true);
    let first_a = perform_with_sidechain(Some(tone_a), true);
    let again_a = perform_with_sidechain(Some(tone_a), true);
    let b = perform_with_sidechain(Some(tone_b), true);

    let playing = rms(&refused[at(NOTE_ON_S + 1.0)..at(PRESS_S)]);
    assert!(playing > 1e-3, "the note plays before the press (RMS {playing})");
    assert!(
        refused == unpressed,
        "a press with a silent sidechain changes nothing (the editor says why)"
    );
    let continuation = |run: &[f32], name: &str| -> Vec<f32> {
        let start = take_over_block(run, &refused)
            .unwrap_or_else(|| panic!("with {name} on the sidechain, a continuation took over"));
        assert!(
            start >= at(PRESS_S) / BLOCK * BLOCK,
            "with {name}, the music changed at {:.2} s, before the press",
            start as f64 / f64::from(RATE_HZ)
        );
        println!(
            "with {name}, the continuation took over {:.2} s after the press",
            (start as f64 - at(PRESS_S) as f64) / f64::from(RATE_HZ)
        );
        let end = start + at(COMPARED_S);
        assert!(
            end <= run.len(),
            "with {name}, the continuation took over at {:.2} s, too late to compare {COMPARED_S} s of it",
            start as f64 / f64::from(RATE_HZ)
        );
        run[start..end].to_vec()
    };
    let (first_a, again_a, b) = (
        continuation(&first_a, "tone A"),
        continuation(&again_a, "tone A again"),
        continuation(&b, "tone B"),
    );
    assert!(rms(&first_a) > 1e-3, "the continuation plays (RMS {})", rms(&first_a));
    assert!(
        first_a == again_a,
        "the same sidechain audio gives the same continuation"
    );
    assert!(first_a != b, "other sidechain audio gives another continuation");
}
