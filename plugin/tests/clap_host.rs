//! The bundled `.clap` in a real CLAP host (clack-host): activation at the rates and block
//! sizes hosts use, sound after a note within the reported latency, the gate closing on
//! note off, deactivation and reactivation, and state that restores the prompt.
//!
//! The bundle comes from `cargo xtask bundle musicgen-plugin` (which `cargo xtask test`
//! runs first); a debug bundle aborts on any allocation in `process()`.

use std::cell::Cell;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clack_extensions::latency::{HostLatency, HostLatencyImpl, PluginLatency};
use clack_extensions::log::{HostLog, HostLogImpl, LogSeverity};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent, TransportEvent, TransportFlags};
use clack_host::events::{EventFlags, EventHeader};
use clack_host::prelude::*;
use clack_host::process::StoppedPluginAudioProcessor;
use clack_host::process::audio_buffers::InputChannel;
use clack_host::utils::{BeatTime, SecondsTime};

const PLUGIN_ID: &str = "live.musicgen.instrument";

fn bundle_path() -> PathBuf {
    let path = std::env::var_os("MUSICGEN_CLAP_BUNDLE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bundled/MusicGen Live.clap"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask bundle musicgen-plugin` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

struct TestHost;

#[derive(Default)]
struct Shared {
    callback_requested: AtomicBool,
    state: OnceLock<Option<PluginState>>,
    latency: OnceLock<Option<PluginLatency>>,
}

impl<'a> SharedHandler<'a> for Shared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.state.set(instance.get_extension());
        let _ = self.latency.set(instance.get_extension());
    }

    fn request_restart(&self) {}

    fn request_process(&self) {}

    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::Release);
    }
}

impl HostLogImpl for Shared {
    fn log(&self, severity: LogSeverity, message: &str) {
        eprintln!("plugin [{severity}] {message}");
    }
}

#[derive(Default)]
struct MainThread {
    latency_changes: Cell<u32>,
}

impl<'a> MainThreadHandler<'a> for MainThread {}

impl HostLatencyImpl for MainThread {
    fn changed(&self) {
        self.latency_changes.set(self.latency_changes.get() + 1);
    }
}

impl HostHandlers for TestHost {
    type Shared<'a> = Shared;
    type MainThread<'a> = MainThread;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder.register::<HostLatency>().register::<HostLog>();
    }
}

/// One loaded plugin instance and the entry that keeps its library loaded.
struct Loaded {
    instance: PluginInstance<TestHost>,
    _entry: PluginEntry,
}

fn load() -> Loaded {
    let path = bundle_path();
    // SAFETY: the bundle is this workspace's own plugin, built by nice-plug's CLAP wrapper.
    let entry = unsafe { PluginEntry::load(&path) }.unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let host_info = HostInfo::new("musicgen-live test host", "MusicGen Live", "", "0.1").unwrap();
    let id = CString::new(PLUGIN_ID).unwrap();
    let instance = PluginInstance::<TestHost>::new(
        |_| Shared::default(),
        |_| MainThread::default(),
        &entry,
        &id,
        &host_info,
    )
    .expect("the plugin instantiates");
    Loaded {
        instance,
        _entry: entry,
    }
}

/// Runs the plugin's main-thread callback whenever it asks for one.
fn pump_main_thread(instance: &mut PluginInstance<TestHost>) {
    if instance.access_shared_handler(|s| s.callback_requested.swap(false, Ordering::AcqRel)) {
        instance.call_on_main_thread_callback();
    }
}

fn latency_samples(instance: &mut PluginInstance<TestHost>) -> u32 {
    let latency = instance
        .access_shared_handler(|s| s.latency.get().copied().flatten())
        .expect("the plugin implements the latency extension");
    latency.get(&instance.plugin_handle())
}

struct Played {
    /// Left and right channels, one `Vec` each.
    channels: [Vec<f32>; 2],
    note_on_at: usize,
    note_off_at: usize,
}

/// Seconds of a performance: silence before the note (the plugin loads and fills its
/// buffer, as it does in a host before anyone plays), the held note, and after its release.
struct Timing {
    before_s: f64,
    held_s: f64,
    after_s: f64,
    /// A host transport playing 4/4 at 120 bpm from the first block (bar lines every 2 s).
    transport: bool,
}

/// Something the host does on the main thread once the audio thread has played a number
/// of samples.
type MainThreadAction<'a> = (usize, &'a mut dyn FnMut(&mut PluginInstance<TestHost>));

/// Plays one note in blocks of `block` frames at real-time pace on an audio thread,
/// pumping main-thread callbacks (and running `action`) meanwhile.
fn play_note(
    instance: &mut PluginInstance<TestHost>,
    processor: StoppedPluginAudioProcessor<TestHost>,
    rate_hz: u32,
    block: usize,
    timing: &Timing,
    mut action: Option<MainThreadAction<'_>>,
) -> (StoppedPluginAudioProcessor<TestHost>, Played) {
    let samples = |seconds: f64| (seconds * f64::from(rate_hz)) as usize;
    let note_on_at = samples(timing.before_s).next_multiple_of(block);
    let note_off_at = note_on_at + samples(timing.held_s);
    let total = note_off_at + samples(timing.after_s);
    let played = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let played = &played;
        let audio = scope.spawn(move || {
            let notes = NoteTimes {
                on_at: note_on_at,
                off_at: note_off_at,
                total,
                transport: timing.transport,
            };
            process_in_real_time(processor, rate_hz, block, notes, played)
        });
        // Real-time pace plus a minute for the plugin's first load.
        let deadline = Instant::now() + Duration::from_secs_f64(total as f64 / f64::from(rate_hz) + 60.0);
        while !audio.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the host's audio thread ran past its deadline"
            );
            pump_main_thread(instance);
            if let Some((at, run)) = &mut action
                && played.load(Ordering::Acquire) >= *at
            {
                run(instance);
                action = None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (processor, channels) = audio.join().expect("the audio thread does not panic");
        pump_main_thread(instance);
        (
            processor,
            Played {
                channels,
                note_on_at,
                note_off_at,
            },
        )
    })
}

/// Where a note starts and ends and how long the performance is, in samples.
#[derive(Clone, Copy)]
struct NoteTimes {
    on_at: usize,
    off_at: usize,
    total: usize,
    transport: bool,
}

/// The host's audio thread: blocks of `block` frames at real-time pace with the note's
/// events, the sidechain port fed silence; returns the output's two channels.
fn process_in_real_time(
    processor: StoppedPluginAudioProcessor<TestHost>,
    rate_hz: u32,
    block: usize,
    notes: NoteTimes,
    played: &AtomicUsize,
) -> (StoppedPluginAudioProcessor<TestHost>, [Vec<f32>; 2]) {
    let NoteTimes {
        on_at: note_on_at,
        off_at: note_off_at,
        total,
        transport,
    } = notes;
    let mut processor = processor.start_processing().expect("processing starts");
    let mut left = vec![0.0f32; block];
    let mut right = vec![0.0f32; block];
    let mut channels = [Vec::with_capacity(total), Vec::with_capacity(total)];
    let mut ports_out = AudioPorts::with_capacity(2, 1);
    // The sidechain port: hosts give every declared port its buffers.
    let mut sidechain = [vec![0.0f32; block], vec![0.0f32; block]];
    let mut ports_in = AudioPorts::with_capacity(2, 1);
    let mut events_out = EventBuffer::new();
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let frames = block.min(total - done);
        let note_on = NoteOnEvent::new(0, key, 1.0);
        let note_off = NoteOffEvent::new(note_off_at.saturating_sub(done) as u32, key, 0.0);
        let events_in = if done == note_on_at {
            InputEvents::from_buffer(&note_on)
        } else if (done..done + frames).contains(&note_off_at) {
            InputEvents::from_buffer(&note_off)
        } else {
            InputEvents::empty()
        };
        let inputs = ports_in.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(
                sidechain
                    .iter_mut()
                    .map(|channel| InputChannel::constant(&mut channel[..frames])),
            ),
        }]);
        let mut outputs = ports_out.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only([&mut left[..frames], &mut right[..frames]].into_iter()),
        }]);
        processor
            .process(
                &inputs,
                &mut outputs,
                &events_in,
                &mut OutputEvents::from_buffer(&mut events_out),
                Some(done as u64),
                transport.then(|| transport_at(done, rate_hz)).as_ref(),
            )
            .expect("process succeeds");
        events_out.clear();
        channels[0].extend_from_slice(&left[..frames]);
        channels[1].extend_from_slice(&right[..frames]);
        done += frames;
        played.store(done, Ordering::Release);
        let due = Duration::from_secs_f64(done as f64 / f64::from(rate_hz));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    (processor.stop_processing(), channels)
}

/// A transport playing 4/4 at 120 bpm, at `sample` samples from the song's start.
fn transport_at(sample: usize, rate_hz: u32) -> TransportEvent {
    let seconds = sample as f64 / f64::from(rate_hz);
    let beats = seconds * 2.0;
    let bar = (beats / 4.0).floor();
    TransportEvent {
        header: EventHeader::new_core(0, EventFlags::empty()),
        flags: TransportFlags::IS_PLAYING
            | TransportFlags::HAS_TEMPO
            | TransportFlags::HAS_BEATS_TIMELINE
            | TransportFlags::HAS_SECONDS_TIMELINE
            | TransportFlags::HAS_TIME_SIGNATURE,
        song_pos_beats: BeatTime::from_float(beats),
        song_pos_seconds: SecondsTime::from_float(seconds),
        tempo: 120.0,
        tempo_inc: 0.0,
        loop_start_beats: BeatTime::from_int(0),
        loop_end_beats: BeatTime::from_int(0),
        loop_start_seconds: SecondsTime::from_int(0),
        loop_end_seconds: SecondsTime::from_int(0),
        bar_start: BeatTime::from_float(bar * 4.0),
        bar_number: bar as i32,
        time_signature_numerator: 4,
        time_signature_denominator: 4,
    }
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

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
        let config = PluginAudioConfiguration {
            sample_rate: f64::from(rate_hz),
            min_frames_count: 1,
            max_frames_count: block as u32,
        };
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

fn plugin_state(instance: &mut PluginInstance<TestHost>) -> PluginState {
    instance
        .access_shared_handler(|s| s.state.get().copied().flatten())
        .expect("the plugin implements the state extension")
}

/// nice-plug's CLAP state: the length of the JSON as a little-endian u64, then the JSON.
fn save(instance: &mut PluginInstance<TestHost>) -> serde_json::Value {
    let mut saved = Vec::new();
    plugin_state(instance)
        .save(&instance.plugin_handle(), &mut saved)
        .unwrap();
    let (length, json) = saved.split_at(8);
    assert_eq!(u64::from_le_bytes(length.try_into().unwrap()), json.len() as u64);
    serde_json::from_slice(json).expect("nice-plug saves its state as JSON")
}

fn restore(instance: &mut PluginInstance<TestHost>, state: &serde_json::Value) {
    let json = serde_json::to_vec(state).unwrap();
    let bytes = [&(json.len() as u64).to_le_bytes()[..], &json].concat();
    plugin_state(instance)
        .load(&instance.plugin_handle(), &mut bytes.as_slice())
        .expect("the plugin loads the state");
}

/// Persisted fields are stored as JSON text inside the state's JSON.
fn persisted_prompt(state: &serde_json::Value) -> String {
    let field = state["fields"]["prompt"]
        .as_str()
        .expect("the state has a prompt field");
    serde_json::from_str(field).expect("the prompt field is a JSON string")
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

/// One performance with the transport playing: a note from 1.51 s (off the 20 ms frame
/// grid, so the bar line's frame does not sit on a rounding edge) held 6 s, and the given
/// prompt loaded at 3 s, which the plugin (Prompt on next bar, the default) applies on
/// the first bar line generation has not reached. Returns the left channel from the note
/// on to the note off.
fn performance_with_prompt_change(new_prompt: Option<&str>) -> Vec<f32> {
    let Loaded { mut instance, _entry } = load();
    let (rate_hz, block) = (48_000, 256);
    let config = PluginAudioConfiguration {
        sample_rate: f64::from(rate_hz),
        min_frames_count: 1,
        max_frames_count: block as u32,
    };
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

/// This process's resident memory in MB, where the system tells it (Linux).
fn resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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
    let config = PluginAudioConfiguration {
        sample_rate: f64::from(rate_hz),
        min_frames_count: 1,
        max_frames_count: block as u32,
    };
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
