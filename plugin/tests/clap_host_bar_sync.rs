//! A prompt loaded while the plugin plays, with the host's transport running: alone in its
//! binary, so that no other test's load changes how far generation runs ahead (which
//! decides the bar line the change lands on) or makes playback wait.

mod host;

use clack_host::prelude::*;
use host::*;

/// One performance with the transport playing: a note from 1.51 s (off the 20 ms frame
/// grid, so the bar line's frame does not sit on a rounding edge) held 6 s, and the given
/// prompt loaded at 3 s, which the plugin (Prompt on next bar, the default) applies on
/// the first bar line generation has not reached. Returns the left channel from the note
/// on to the note off.
fn performance_with_prompt_change(new_prompt: Option<&str>) -> Vec<f32> {
    let Loaded { mut instance, _entry } = load();
    // How far generation runs ahead decides which bar line is the first it has not
    // reached: keep it near the usual 2 s (plus the pipeline) even when a loaded machine
    // measures the stream as slow, so that the bar is the 6 s one in every run.
    let mut state = save(&mut instance);
    state["params"]["buffer_ahead"] = serde_json::json!({ "f32": 1.0 });
    restore(&mut instance, &state);
    assert_eq!(
        save(&mut instance)["params"]["buffer_ahead"],
        serde_json::json!({ "f32": 1.0 })
    );
    let (rate_hz, block) = (48_000, 256);
    let config = audio_configuration(rate_hz, block);
    let processor = instance.activate(|_, _| (), config).unwrap();
    let timing = Timing {
        before_s: 1.51,
        held_s: 6.0,
        after_s: 0.1,
        transport: true,
    };
    let mut change_prompt = |instance: &mut PluginInstance<TestHost>| {
        if let Some(prompt) = new_prompt {
            let mut state = save(instance);
            state["fields"]["prompt"] = serde_json::to_string(prompt).unwrap().into();
            restore(instance, &state);
        }
    };
    let change_at = (3.0 * f64::from(rate_hz)) as usize;
    let (processor, played) = play_note(
        &mut instance,
        processor,
        rate_hz,
        block,
        &timing,
        Some((change_at, &mut change_prompt)),
    );
    instance.deactivate(processor);
    if let Some(prompt) = new_prompt {
        assert_eq!(persisted_prompt(&save(&mut instance)), prompt);
    }
    let latency = latency_samples(&mut instance) as usize;
    let window = rate_hz as usize / 50;
    let [left, _] = played.channels;
    let held = &left[played.note_on_at + latency..played.note_off_at];
    let quietest = held.chunks(window).map(rms).fold(f32::INFINITY, f32::min);
    assert!(
        quietest > 1e-4,
        "a 20 ms window at RMS {quietest} while the note is held across the prompt change"
    );
    left[played.note_on_at..played.note_off_at].to_vec()
}

#[test]
fn a_prompt_loaded_while_playing_changes_the_music_from_the_next_bar_the_same_way_each_time() {
    let plain = performance_with_prompt_change(None);
    let new_prompt = "fast techno with heavy bass";
    let changed = performance_with_prompt_change(Some(new_prompt));
    let again = performance_with_prompt_change(Some(new_prompt));
    // The note starts the stream's audio at 1.51 s; the prompt loaded at 3 s applies on the
    // bar line at 6 s (4 s is already generated), the stream's frame 224.3 at 50 frames per
    // second: the music before frame 215 is untouched (the codec reads 3 frames ahead and
    // the pattern's delays reach 3 frames back), the music from frame 235 on is another.
    let samples_per_frame = 48_000 / 50;
    let (before, after) = (215 * samples_per_frame, 235 * samples_per_frame);
    assert_eq!(
        changed[..before],
        plain[..before],
        "the music before the bar line is unchanged"
    );
    assert_ne!(
        changed[after..],
        plain[after..],
        "the music after the bar line follows the new prompt"
    );
    assert_eq!(changed, again, "the same change at the same time gives the same music");
}
