//! The plugin's life in a host that is in a hurry: dropped while its model loads and while
//! it generates (each returns promptly), and 100 fast deactivate/activate cycles while it
//! generates (no crash, no threads left behind). Its own test binary, so that the thread
//! count is this test's alone.

mod host;

use std::time::{Duration, Instant};

use clack_host::events::event_types::NoteOnEvent;
use clack_host::prelude::*;
use host::*;

const RATE_HZ: u32 = 48_000;
const BLOCK: usize = 512;

fn activate(instance: &mut PluginInstance<TestHost>) -> StoppedPluginAudioProcessor<TestHost> {
    let config = audio_configuration(RATE_HZ, BLOCK);
    instance.activate(|_, _| (), config).expect("the plugin activates")
}

/// `seconds` of a held note, as fast as the plugin returns the blocks.
fn hold_a_note(
    instance: &mut PluginInstance<TestHost>,
    processor: StoppedPluginAudioProcessor<TestHost>,
    seconds: f64,
    real_time: bool,
) -> StoppedPluginAudioProcessor<TestHost> {
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut note = |done: usize, _: usize, events: &mut EventBuffer| {
        if done == 0 {
            events.push(&NoteOnEvent::new(0, key, 1.0));
        }
    };
    let performance = Performance {
        rate_hz: RATE_HZ,
        block: BLOCK,
        total: (seconds * f64::from(RATE_HZ)) as usize,
        transport: false,
        real_time,
        sidechain: None,
    };
    perform(instance, processor, &performance, &mut note, None).0
}

/// Drops `instance` (deactivating it first if `processor` is given) and returns how long
/// that took.
fn time_the_drop(
    mut instance: PluginInstance<TestHost>,
    processor: Option<StoppedPluginAudioProcessor<TestHost>>,
) -> Duration {
    let started = Instant::now();
    if let Some(processor) = processor {
        instance.deactivate(processor);
    }
    drop(instance);
    started.elapsed()
}

#[test]
fn dropped_while_loading_or_generating_it_returns_promptly_and_cycles_leave_no_threads() {
    let Loaded {
        instance: mut loading,
        _entry,
    } = load();
    // The first block with a note asks for the model; the drop comes while it loads.
    let processor = activate(&mut loading);
    let processor = hold_a_note(&mut loading, processor, 0.02, false);
    let took = time_the_drop(loading, Some(processor));
    assert!(took < Duration::from_secs(5), "dropping while loading took {took:?}");

    let Loaded {
        instance: mut playing,
        _entry,
    } = load();
    let processor = activate(&mut playing);
    let processor = hold_a_note(&mut playing, processor, 2.0, true);
    let took = time_the_drop(playing, Some(processor));
    assert!(took < Duration::from_secs(5), "dropping while generating took {took:?}");

    let Loaded { mut instance, _entry } = load();
    let mut processor = activate(&mut instance);
    processor = hold_a_note(&mut instance, processor, 1.0, true);
    instance.deactivate(processor);
    let settled = threads_alive();
    for _ in 0..100 {
        let processor = activate(&mut instance);
        let processor = hold_a_note(&mut instance, processor, 0.05, false);
        instance.deactivate(processor);
    }
    // Streams stop on their own threads; give them a moment to be joined.
    let deadline = Instant::now() + Duration::from_secs(20);
    while threads_alive() > settled && Instant::now() < deadline {
        pump_main_thread(&mut instance);
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = threads_alive();
    println!("threads: {settled} after the first play, {after} after 100 cycles");
    assert!(after <= settled, "{settled} threads before the cycles, {after} after");
    let took = time_the_drop(instance, None);
    assert!(took < Duration::from_secs(5), "dropping after the cycles took {took:?}");
}
