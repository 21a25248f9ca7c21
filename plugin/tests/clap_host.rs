//! The bundled `.clap` in a real CLAP host (clack-host): activation at the rates and block
//! sizes hosts use, sound after a note within the reported latency, the gate closing on
//! note off, deactivation and reactivation, and state that restores the prompt.
//!
//! The bundle comes from `cargo xtask bundle musicgen-plugin` (which `cargo xtask test`
//! runs first); a debug bundle aborts on any allocation in `process()`.

mod host;

use std::time::{Duration, Instant};

use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent};
use clack_host::prelude::*;
use clack_host::process::audio_buffers::InputChannel;
use host::*;

#[test]
fn plays_within_its_latency_at_each_rate_and_block_size_and_survives_reactivation() {
    let Loaded { mut instance, _entry } = load();
    let timing = Timing {
        before_s: 1.5,
        held_s: 3.5,
        after_s: 0.25,
        transport: false,
    };
    // The rates and blocks hosts use, and odd ones (the validators go from 1235 Hz to 1.23 MHz).
    for (rate_hz, block) in [
        (44_100, 64),
        (48_000, 1024),
        (44_100, 1024),
        (48_000, 64),
        (1_235, 1),
        (96_000, 7),
        (768_000, 16_384),
    ] {
        let config = audio_configuration(rate_hz, block);
        let processor = instance
            .activate(|_, _| (), config)
            .unwrap_or_else(|e| panic!("activation at {rate_hz} Hz, {block} frames: {e}"));
        let (processor, played) = play_note(&mut instance, processor, rate_hz, block, &timing, None);
        instance.deactivate(processor);

        let latency = latency_samples(&mut instance) as usize;
        let what = format!("{rate_hz} Hz, blocks of {block}");
        assert!(latency > 0, "{what}: the plugin reports no latency");
        let [left, right] = &played.channels;
        assert!(left.iter().all(|s| s.is_finite()), "{what}: non-finite samples");
        assert_eq!(left, right, "{what}: the two channels differ");
        assert!(
            left[..played.note_on_at].iter().all(|s| *s == 0.0),
            "{what}: sound before the note"
        );
        let first_sound = left[played.note_on_at..]
            .iter()
            .position(|s| s.abs() > 1e-6)
            .unwrap_or_else(|| panic!("{what}: silence after the note on"));
        assert!(
            first_sound <= latency,
            "{what}: sound {first_sound} samples after the note on, later than the reported latency of {latency}"
        );
        // From the reported latency to the note off: sound in every 20 ms window (a gap is
        // silence; at 1235 Hz only the music below 617 Hz is left, so quiet is not a gap).
        let window = rate_hz as usize / 50;
        let held = &left[played.note_on_at + latency..played.note_off_at];
        let quietest = held.chunks(window).map(rms).fold(f32::INFINITY, f32::min);
        let gap_rms = if rate_hz < 8_000 { 1e-6 } else { 1e-4 };
        assert!(
            quietest > gap_rms,
            "{what}: a 20 ms window at RMS {quietest} while the note is held"
        );
        // The gate fades out within 20 ms of the note off.
        let released = &left[played.note_off_at + window + block..];
        assert!(
            released.iter().all(|s| *s == 0.0),
            "{what}: still sounding after note off (RMS {})",
            rms(released)
        );
        eprintln!(
            "{what}: latency {latency} samples, sound {first_sound} samples after the note on, quietest held window RMS {quietest:.4}"
        );
    }
}

#[test]
fn saved_state_restores_the_prompt_in_a_new_instance() {
    let prompt = "test prompt: dusty breakbeat with a walking bass";
    let saved = {
        let Loaded { mut instance, _entry } = load();
        let mut state = save(&mut instance);
        assert_eq!(persisted_prompt(&state), "warm lo-fi piano with soft drums, 80 bpm");
        state["fields"]["prompt"] = serde_json::to_string(prompt).unwrap().into();
        restore(&mut instance, &state);
        save(&mut instance)
    };
    assert_eq!(persisted_prompt(&saved), prompt);
    let Loaded { mut instance, _entry } = load();
    restore(&mut instance, &saved);
    assert_eq!(persisted_prompt(&save(&mut instance)), prompt);
}

#[test]
fn a_project_restores_its_prompt_and_its_slot_parameter_chooses_only_a_slot_it_did_not_choose() {
    let Loaded { mut instance, _entry } = load();
    let mut project = save(&mut instance);
    let prompt = "a project's own prompt, edited after the Slot parameter chose slot 5";
    project["fields"]["prompt"] = serde_json::to_string(prompt).unwrap().into();
    project["fields"]["active_slot"] = "4".into();
    project["params"]["slot"] = serde_json::json!({ "i32": 5 });
    project["fields"]["slot_parameter_chose"] = "4".into();
    restore(&mut instance, &project);
    // The controller polls every 5 ms: a slot choice would have acted by now.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        persisted_prompt(&save(&mut instance)),
        prompt,
        "the Slot parameter restored at the slot it chose replaced the project's prompt"
    );

    // A state whose Slot parameter moved since it last chose (as automation would have it)
    // chooses that slot.
    project["params"]["slot"] = serde_json::json!({ "i32": 3 });
    restore(&mut instance, &project);
    let deadline = Instant::now() + Duration::from_secs(2);
    let third = "driving techno with a punchy kick and hypnotic synth stabs, 130 bpm";
    while persisted_prompt(&save(&mut instance)) != third {
        assert!(
            Instant::now() < deadline,
            "the Slot parameter at 3 did not choose slot 3"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(save(&mut instance)["fields"]["active_slot"], "2");
}

#[test]
fn a_corrupt_state_is_refused_and_keeps_the_current_one() {
    let Loaded { mut instance, _entry } = load();
    let before = save(&mut instance);
    let json = b"{\"version\": \"0.1.0\", \"fields\": {\"prompt\": 42";
    let corrupt = [&(json.len() as u64).to_le_bytes()[..], json].concat();
    assert!(
        plugin_state(&mut instance)
            .load(&instance.plugin_handle(), &mut corrupt.as_slice())
            .is_err()
    );
    assert_eq!(save(&mut instance), before);
}

/// Four instances in one host, each activated and played at once: every one sounds, and
/// the later ones start on the model the first loaded. Prints, per instance, the time from
/// its activation (with a note at once) to its first sound and the process's resident
/// memory. `MUSICGEN_MEASURE_MODEL=DIR` plays another bundle for those figures.
#[test]
fn four_instances_in_one_host_all_play() {
    let model_dir = std::env::var("MUSICGEN_MEASURE_MODEL").ok();
    let held_s = if model_dir.is_some() { 20.0 } else { 3.0 };
    let (rate_hz, block) = (48_000, 512);
    let config = audio_configuration(rate_hz, block);
    let timing = Timing {
        before_s: 0.0,
        held_s,
        after_s: 0.0,
        transport: false,
    };
    let mut playing = Vec::new();
    for i in 1..=4 {
        let Loaded { mut instance, _entry } = load();
        if let Some(dir) = &model_dir {
            let mut state = save(&mut instance);
            state["fields"]["model_dir"] = serde_json::to_string(dir).unwrap().into();
            restore(&mut instance, &state);
        }
        let processor = instance.activate(|_, _| (), config).unwrap();
        let (processor, played) = play_note(&mut instance, processor, rate_hz, block, &timing, None);
        let first_sound = played.channels[0].iter().position(|s| s.abs() > 1e-6);
        // A model slower than real time waits for its buffer (tested in the engine); four
        // of them on one machine may wait longer than the note.
        assert!(
            first_sound.is_some() || model_dir.is_some(),
            "instance {i}: no sound within {held_s} s of its activation"
        );
        eprintln!(
            "instance {i}: first sound {} after its activation; resident memory {:.0} MB",
            first_sound.map_or(format!("not within {held_s} s"), |at| format!(
                "{:.0} ms",
                at as f64 * 1000.0 / f64::from(rate_hz)
            )),
            resident_mb().unwrap_or(f64::NAN)
        );
        playing.push((instance, processor, _entry));
    }
    for (mut instance, processor, _entry) in playing {
        instance.deactivate(processor);
    }
}

/// A stereo model's left and right channels reach the host's left and right outputs: both
/// sound, and they are different audio (a mono model's are the same samples).
#[test]
fn a_stereo_model_plays_its_own_left_and_right() {
    let stereo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-stereo");
    let (rate_hz, block) = (44_100, 333);
    let Loaded { mut instance, _entry } = load();
    let mut state = save(&mut instance);
    state["fields"]["model_dir"] = serde_json::to_string(&stereo.to_string_lossy()).unwrap().into();
    restore(&mut instance, &state);
    let config = audio_configuration(rate_hz, block);
    let timing = Timing {
        before_s: 0.0,
        held_s: 3.0,
        after_s: 0.0,
        transport: false,
    };
    let processor = instance.activate(|_, _| (), config).unwrap();
    let (processor, played) = play_note(&mut instance, processor, rate_hz, block, &timing, None);
    instance.deactivate(processor);
    let [left, right] = &played.channels;
    let first_sound = left
        .iter()
        .position(|s| s.abs() > 1e-6)
        .expect("the stereo model sounds");
    let (left, right) = (&left[first_sound..], &right[first_sound..]);
    assert!(rms(right) > 0.1 * rms(left), "the right output is silent");
    let difference: Vec<f32> = left.iter().zip(right).map(|(l, r)| l - r).collect();
    let likeness_db = 20.0 * (rms(left) / rms(&difference)).log10();
    eprintln!("left against right: {likeness_db:.1} dB");
    assert!(
        likeness_db < 40.0,
        "left and right are the same audio ({likeness_db:.1} dB): the model's channels did not reach the outputs"
    );
}

#[test]
fn garbage_huge_and_truncated_states_are_refused_and_keep_the_current_one() {
    let Loaded { mut instance, _entry } = load();
    let before = save(&mut instance);
    let valid = serde_json::to_vec(&before).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        ("nothing", Vec::new()),
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ),
        (
            "a length of 2^62 bytes",
            [&(1u64 << 62).to_le_bytes()[..], b"{\"version\":"].concat(),
        ),
        (
            "the state cut in half",
            [&(valid.len() as u64).to_le_bytes()[..], &valid[..valid.len() / 2]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let started = Instant::now();
        let loaded = plugin_state(&mut instance).load(&instance.plugin_handle(), &mut bytes.as_slice());
        assert!(loaded.is_err(), "{what} was accepted");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
        assert_eq!(save(&mut instance), before, "{what} changed the state");
    }
}

#[test]
fn a_state_from_an_older_version_loads_with_defaults_for_what_it_lacks() {
    let Loaded { mut instance, _entry } = load();
    let current = save(&mut instance);
    let mut older = current.clone();
    older["version"] = "0.0.1".into();
    let params = older["params"].as_object_mut().expect("the state has a params map");
    params.remove("bypass");
    params.remove("buffer_ahead");
    older["fields"].as_object_mut().unwrap().remove("provider");
    let prompt = "an older project's prompt";
    older["fields"]["prompt"] = serde_json::to_string(prompt).unwrap().into();
    restore(&mut instance, &older);
    let loaded = save(&mut instance);
    assert_eq!(persisted_prompt(&loaded), prompt);
    for param in ["bypass", "buffer_ahead"] {
        assert_eq!(
            loaded["params"][param], current["params"][param],
            "{param} keeps its default"
        );
    }
}

/// The debug bundle aborts on an allocation in `process()`; the wrapper's own event queue
/// (`INPUT_EVENT_CAPACITY`) is sized so that it does not grow either.
#[test]
fn ten_thousand_notes_in_one_block_neither_crash_nor_allocate() {
    let Loaded { mut instance, _entry } = load();
    let (rate_hz, block) = (48_000u32, 512usize);
    let config = audio_configuration(rate_hz, block);
    let processor = instance.activate(|_, _| (), config).unwrap();
    let mut processor = processor.start_processing().expect("processing starts");
    let mut notes = EventBuffer::with_capacity(20_000);
    for i in 0..10_000u32 {
        let key = Pckn::new(0u16, (i % 16) as u16, (i % 128) as u16, 0u32);
        let time = i * block as u32 / 10_000;
        notes.push(&NoteOnEvent::new(time, key, 1.0));
        notes.push(&NoteOffEvent::new(time, key, 0.0));
    }
    let (mut left, mut right) = (vec![0.0f32; block], vec![0.0f32; block]);
    let mut sidechain = [vec![0.0f32; block], vec![0.0f32; block]];
    let mut ports_out = AudioPorts::with_capacity(2, 1);
    let mut ports_in = AudioPorts::with_capacity(2, 1);
    let mut events_out = EventBuffer::new();
    for round in 0..4 {
        let inputs = ports_in.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(
                sidechain
                    .iter_mut()
                    .map(|channel| InputChannel::constant(&mut channel[..])),
            ),
        }]);
        let mut outputs = ports_out.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only([&mut left[..], &mut right[..]].into_iter()),
        }]);
        let events = if round == 0 {
            InputEvents::from_buffer(&notes)
        } else {
            InputEvents::empty()
        };
        processor
            .process(
                &inputs,
                &mut outputs,
                &events,
                &mut OutputEvents::from_buffer(&mut events_out),
                Some((round * block) as u64),
                None,
            )
            .expect("process succeeds");
        events_out.clear();
        assert!(
            left.iter().chain(&right).all(|s| s.is_finite()),
            "round {round}: a non-finite sample"
        );
    }
    // Every note ended in the block it began: the gate has closed again.
    assert!(left.iter().all(|s| *s == 0.0), "sound after every note ended");
    instance.deactivate(processor.stop_processing());
}
