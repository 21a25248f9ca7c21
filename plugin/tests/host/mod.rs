//! The CLAP host the plugin's tests share (clack-host): loading the bundled `.clap`,
//! playing a note at real-time pace on an audio thread (with a 120 bpm transport if
//! asked), and saving and restoring state.

#![allow(dead_code)]

use std::cell::Cell;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use clack_extensions::latency::{HostLatency, HostLatencyImpl, PluginLatency};
use clack_extensions::log::{HostLog, HostLogImpl, LogSeverity};
use clack_extensions::params::{ParamInfoBuffer, ParamInfoFlags, PluginParams};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{NoteOffEvent, NoteOnEvent, ParamValueEvent, TransportEvent, TransportFlags};
use clack_host::events::{EventFlags, EventHeader};
use clack_host::prelude::*;
use clack_host::process::StoppedPluginAudioProcessor;
use clack_host::process::audio_buffers::InputChannel;
use clack_host::utils::{BeatTime, SecondsTime};

pub const PLUGIN_ID: &str = "live.musicgen.instrument";

/// The host rate the performance tests play at.
pub const RATE_HZ: u32 = 48_000;

/// The sample at `seconds` into a performance at [`RATE_HZ`].
pub fn at(seconds: f64) -> usize {
    (seconds * f64::from(RATE_HZ)) as usize
}

pub fn bundle_path() -> PathBuf {
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

pub struct TestHost;

#[derive(Default)]
pub struct Shared {
    callback_requested: AtomicBool,
    state: OnceLock<Option<PluginState>>,
    latency: OnceLock<Option<PluginLatency>>,
    params: OnceLock<Option<PluginParams>>,
}

impl<'a> SharedHandler<'a> for Shared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.state.set(instance.get_extension());
        let _ = self.latency.set(instance.get_extension());
        let _ = self.params.set(instance.get_extension());
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
pub struct MainThread {
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
pub struct Loaded {
    pub instance: PluginInstance<TestHost>,
    pub _entry: PluginEntry,
}

pub fn load() -> Loaded {
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
pub fn pump_main_thread(instance: &mut PluginInstance<TestHost>) {
    if instance.access_shared_handler(|s| s.callback_requested.swap(false, Ordering::AcqRel)) {
        instance.call_on_main_thread_callback();
    }
}

pub fn latency_samples(instance: &mut PluginInstance<TestHost>) -> u32 {
    let latency = instance
        .access_shared_handler(|s| s.latency.get().copied().flatten())
        .expect("the plugin implements the latency extension");
    latency.get(&instance.plugin_handle())
}

/// A parameter as the host sees it: CLAP id, name, plain range and value.
#[derive(Clone)]
pub struct Parameter {
    pub id: ClapId,
    pub name: String,
    pub min: f64,
    pub max: f64,
    pub stepped: bool,
    /// Its plain value when it was listed.
    pub value: f64,
}

impl Parameter {
    /// The plain value a fraction `position` (0 to 1) of the way through the range.
    pub fn at(&self, position: f64) -> f64 {
        let value = self.min + position.clamp(0.0, 1.0) * (self.max - self.min);
        if self.stepped { value.round() } else { value }
    }
}

/// The parameter named `name`.
pub fn find_parameter(parameters: &[Parameter], name: &str) -> Parameter {
    parameters
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("a {name} parameter"))
        .clone()
}

/// A press of a trigger parameter: on at the block's first sample and off again at its
/// tenth, as short as automation makes it.
pub fn press(events: &mut EventBuffer, parameter: &Parameter) {
    press_at(events, parameter, 0);
}

/// A press of a trigger parameter on at sample `time` of the block and off ten samples
/// later.
pub fn press_at(events: &mut EventBuffer, parameter: &Parameter, time: u32) {
    events.push(&ParamValueEvent::new(
        time,
        parameter.id,
        Pckn::match_all(),
        parameter.max,
    ));
    events.push(&ParamValueEvent::new(
        time + 10,
        parameter.id,
        Pckn::match_all(),
        parameter.min,
    ));
}

pub fn parameters(instance: &mut PluginInstance<TestHost>) -> Vec<Parameter> {
    let params = instance
        .access_shared_handler(|s| s.params.get().copied().flatten())
        .expect("the plugin implements the params extension");
    let handle = instance.plugin_handle();
    let mut buffer = ParamInfoBuffer::new();
    (0..params.count(&handle))
        .map(|index| {
            let info = params
                .get_info(&handle, index, &mut buffer)
                .expect("an index below the count");
            Parameter {
                id: info.id,
                name: String::from_utf8_lossy(info.name).trim_end_matches('\0').to_owned(),
                min: info.min_value,
                max: info.max_value,
                stepped: info.flags.contains(ParamInfoFlags::IS_STEPPED),
                value: params
                    .get_value(&handle, info.id)
                    .expect("a listed parameter has a value"),
            }
        })
        .collect()
}

pub struct Played {
    /// Left and right channels, one `Vec` each.
    pub channels: [Vec<f32>; 2],
    pub note_on_at: usize,
    pub note_off_at: usize,
}

/// Seconds of a performance: silence before the note (the plugin loads and fills its
/// buffer, as it does in a host before anyone plays), the held note, and after its release.
pub struct Timing {
    pub before_s: f64,
    pub held_s: f64,
    pub after_s: f64,
    /// A host transport playing 4/4 at 120 bpm from the first block (bar lines every 2 s).
    pub transport: bool,
}

/// Something the host does on the main thread once the audio thread has played a number
/// of samples.
pub type MainThreadAction<'a> = (usize, &'a mut dyn FnMut(&mut PluginInstance<TestHost>));

/// Plays one note in blocks of `block` frames at real-time pace on an audio thread,
/// pumping main-thread callbacks (and running `action`) meanwhile.
pub fn play_note(
    instance: &mut PluginInstance<TestHost>,
    processor: StoppedPluginAudioProcessor<TestHost>,
    rate_hz: u32,
    block: usize,
    timing: &Timing,
    action: Option<MainThreadAction<'_>>,
) -> (StoppedPluginAudioProcessor<TestHost>, Played) {
    let samples = |seconds: f64| (seconds * f64::from(rate_hz)) as usize;
    let note_on_at = samples(timing.before_s).next_multiple_of(block);
    let note_off_at = note_on_at + samples(timing.held_s);
    let key = Pckn::new(0u16, 0u16, 60u16, 0u32);
    let mut notes = move |done: usize, frames: usize, events: &mut EventBuffer| {
        if done == note_on_at {
            events.push(&NoteOnEvent::new(0, key, 1.0));
        }
        if (done..done + frames).contains(&note_off_at) {
            events.push(&NoteOffEvent::new((note_off_at - done) as u32, key, 0.0));
        }
    };
    let performance = Performance {
        rate_hz,
        block,
        total: note_off_at + samples(timing.after_s),
        transport: timing.transport,
        real_time: true,
        sidechain: None,
    };
    let (processor, channels) = perform(instance, processor, &performance, &mut notes, action);
    (
        processor,
        Played {
            channels,
            note_on_at,
            note_off_at,
        },
    )
}

/// An activation at `rate_hz` with blocks of 1 to `block` frames.
pub fn audio_configuration(rate_hz: u32, block: usize) -> PluginAudioConfiguration {
    PluginAudioConfiguration {
        sample_rate: f64::from(rate_hz),
        min_frames_count: 1,
        max_frames_count: block as u32,
    }
}

/// How the host's audio thread runs: blocks of `block` frames up to `total` samples.
pub struct Performance {
    pub rate_hz: u32,
    pub block: usize,
    pub total: usize,
    /// A host transport playing 4/4 at 120 bpm from the first block (bar lines every 2 s).
    pub transport: bool,
    /// Blocks at the pace of the audio they hold, as an audio device asks for them;
    /// otherwise as fast as the plugin returns them (an offline bounce).
    pub real_time: bool,
    /// The sidechain's signal at each sample, on both channels; silence where `None`.
    pub sidechain: Option<fn(usize) -> f32>,
}

/// The events of one block, asked with the samples played before it and its length.
pub type BlockEvents<'a> = dyn FnMut(usize, usize, &mut EventBuffer) + Send + 'a;

/// Runs `performance` on an audio thread while this thread pumps main-thread callbacks
/// (and runs `action` once its sample is played); returns the output's two channels.
pub fn perform(
    instance: &mut PluginInstance<TestHost>,
    processor: StoppedPluginAudioProcessor<TestHost>,
    performance: &Performance,
    events: &mut BlockEvents<'_>,
    mut action: Option<MainThreadAction<'_>>,
) -> (StoppedPluginAudioProcessor<TestHost>, [Vec<f32>; 2]) {
    let mut channels = [
        Vec::with_capacity(performance.total),
        Vec::with_capacity(performance.total),
    ];
    let mut collect = |block: &BlockOutput<'_>| {
        channels[0].extend_from_slice(block.left);
        channels[1].extend_from_slice(block.right);
    };
    let mut once = |instance: &mut PluginInstance<TestHost>, played: usize| {
        if let Some((at, run)) = &mut action
            && played >= *at
        {
            run(instance);
            action = None;
        }
    };
    let processor = perform_with(instance, processor, performance, events, &mut collect, &mut once);
    (processor, channels)
}

/// One processed block as the host's audio thread hands it on.
pub struct BlockOutput<'a> {
    /// Samples played before this block.
    pub done: usize,
    pub left: &'a [f32],
    pub right: &'a [f32],
    /// How long the plugin's `process()` took.
    pub callback: Duration,
    /// The CPU time the audio thread spent in it (`None` where the OS does not say): the
    /// wall time less what the OS gave the core to other threads meanwhile.
    pub callback_cpu: Option<Duration>,
    /// Page faults the audio thread took in it (minor and major; `None` off Linux).
    pub callback_faults: Option<u64>,
    /// How long the host's fixed reference work took right after it (`ReferenceWork`).
    pub reference: Duration,
}

/// Where the audio thread hands each block.
pub type BlockSink<'a> = dyn FnMut(&BlockOutput<'_>) + Send + 'a;

/// Runs `performance` on an audio thread, handing each block to `output`, while this
/// thread pumps main-thread callbacks and calls `main_thread` with the samples played.
pub fn perform_with(
    instance: &mut PluginInstance<TestHost>,
    processor: StoppedPluginAudioProcessor<TestHost>,
    performance: &Performance,
    events: &mut BlockEvents<'_>,
    output: &mut BlockSink<'_>,
    main_thread: &mut dyn FnMut(&mut PluginInstance<TestHost>, usize),
) -> StoppedPluginAudioProcessor<TestHost> {
    let played = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let played = &played;
        let audio = scope.spawn(move || process_blocks(processor, performance, events, output, played));
        // Real-time pace plus a minute for the plugin's first load.
        let audio_s = performance.total as f64 / f64::from(performance.rate_hz);
        let deadline = Instant::now() + Duration::from_secs_f64(audio_s + 60.0);
        while !audio.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the host's audio thread ran past its deadline"
            );
            pump_main_thread(instance);
            main_thread(instance, played.load(Ordering::Acquire));
            std::thread::sleep(Duration::from_millis(5));
        }
        let processor = audio.join().expect("the audio thread does not panic");
        pump_main_thread(instance);
        processor
    })
}

/// The host's audio thread: `performance`'s blocks with the events `events` gives and its
/// sidechain signal, each output block handed to `output`.
fn process_blocks(
    processor: StoppedPluginAudioProcessor<TestHost>,
    performance: &Performance,
    events: &mut BlockEvents<'_>,
    output: &mut BlockSink<'_>,
    played: &AtomicUsize,
) -> StoppedPluginAudioProcessor<TestHost> {
    let &Performance {
        rate_hz,
        block,
        total,
        transport,
        real_time,
        sidechain: sidechain_signal,
    } = performance;
    if real_time {
        *AUDIO_THREAD_SCHEDULING.lock().unwrap() = take_real_time_scheduling();
    }
    let mut processor = processor.start_processing().expect("processing starts");
    let mut left = vec![0.0f32; block];
    let mut right = vec![0.0f32; block];
    let mut ports_out = AudioPorts::with_capacity(2, 1);
    // The sidechain port: hosts give every declared port its buffers.
    let mut sidechain = [vec![0.0f32; block], vec![0.0f32; block]];
    let mut ports_in = AudioPorts::with_capacity(2, 1);
    let mut events_in = EventBuffer::with_capacity(4 * block);
    let mut events_out = EventBuffer::new();
    let block_duration = Duration::from_secs_f64(block as f64 / f64::from(rate_hz));
    let mut reference = ReferenceWork::calibrated(block_duration.mul_f64(REFERENCE_SHARE), block);
    let mut due = Instant::now();
    let mut done = 0;
    while done < total {
        let frames = block.min(total - done);
        events_in.clear();
        events(done, frames, &mut events_in);
        if let Some(signal) = sidechain_signal {
            for channel in &mut sidechain {
                for (i, sample) in channel[..frames].iter_mut().enumerate() {
                    *sample = signal(done + i);
                }
            }
        }
        let inputs = ports_in.with_input_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_input_only(sidechain.iter_mut().map(|channel| {
                if sidechain_signal.is_some() {
                    InputChannel::variable(&mut channel[..frames])
                } else {
                    InputChannel::constant(&mut channel[..frames])
                }
            })),
        }]);
        let mut outputs = ports_out.with_output_buffers([AudioPortBuffer {
            latency: 0,
            channels: AudioPortBufferType::f32_output_only([&mut left[..frames], &mut right[..frames]].into_iter()),
        }]);
        let faults_before = thread_page_faults();
        let cpu_started = thread_cpu_time();
        let callback_started = Instant::now();
        processor
            .process(
                &inputs,
                &mut outputs,
                &InputEvents::from_buffer(&events_in),
                &mut OutputEvents::from_buffer(&mut events_out),
                Some(done as u64),
                transport.then(|| transport_at(done, rate_hz)).as_ref(),
            )
            .expect("process succeeds");
        let callback = callback_started.elapsed();
        let callback_cpu = cpu_started
            .zip(thread_cpu_time())
            .map(|(before, after)| after.saturating_sub(before));
        let callback_faults = faults_before
            .zip(thread_page_faults())
            .map(|(before, after)| after - before);
        let reference_started = Instant::now();
        reference.run();
        let reference = reference_started.elapsed();
        events_out.clear();
        output(&BlockOutput {
            done,
            left: &left[..frames],
            right: &right[..frames],
            callback,
            callback_cpu,
            callback_faults,
            reference,
        });
        done += frames;
        played.store(done, Ordering::Release);
        if real_time {
            // A sound card's clock does not wait for a late callback, nor does it call the
            // next ones faster to catch up: after a dropout, its blocks come at its pace
            // again from then on.
            due += Duration::from_secs_f64(frames as f64 / f64::from(rate_hz));
            let now = Instant::now();
            match due.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                None => due = now,
            }
        }
    }
    processor.stop_processing()
}

/// A transport playing 4/4 at 120 bpm, at `sample` samples from the song's start.
pub fn transport_at(sample: usize, rate_hz: u32) -> TransportEvent {
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

pub fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

pub fn plugin_state(instance: &mut PluginInstance<TestHost>) -> PluginState {
    instance
        .access_shared_handler(|s| s.state.get().copied().flatten())
        .expect("the plugin implements the state extension")
}

/// nice-plug's CLAP state: the length of the JSON as a little-endian u64, then the JSON.
pub fn save(instance: &mut PluginInstance<TestHost>) -> serde_json::Value {
    let mut saved = Vec::new();
    plugin_state(instance)
        .save(&instance.plugin_handle(), &mut saved)
        .unwrap();
    let (length, json) = saved.split_at(8);
    assert_eq!(u64::from_le_bytes(length.try_into().unwrap()), json.len() as u64);
    serde_json::from_slice(json).expect("nice-plug saves its state as JSON")
}

pub fn restore(instance: &mut PluginInstance<TestHost>, state: &serde_json::Value) {
    let json = serde_json::to_vec(state).unwrap();
    let bytes = [&(json.len() as u64).to_le_bytes()[..], &json].concat();
    plugin_state(instance)
        .load(&instance.plugin_handle(), &mut bytes.as_slice())
        .expect("the plugin loads the state");
}

/// Persisted fields are stored as JSON text inside the state's JSON.
pub fn persisted_prompt(state: &serde_json::Value) -> String {
    let field = state["fields"]["prompt"]
        .as_str()
        .expect("the state has a prompt field");
    serde_json::from_str(field).expect("the prompt field is a JSON string")
}

/// Threads alive in this process, where the system tells it (Linux).
pub fn threads_alive() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

/// The reference work's length, as a share of a block: about what the plugin's callback
/// takes on average (the soak measures 0.3%), so that it meets the machine's interruptions
/// as often as the callback does.
const REFERENCE_SHARE: f64 = 0.003;

/// A fixed amount of work the audio thread does after each callback, timed as the callback
/// is. Its instructions are the same every block, so whatever makes one run of it longer
/// than another is the machine's doing (a hypervisor taking the virtual core, an
/// interrupt, a cache flushed by another thread), not work: the longest run is the floor
/// under which no callback's longest time can be measured on that machine.
struct ReferenceWork {
    samples: Vec<f32>,
    rounds: u32,
}

impl ReferenceWork {
    /// Work over a block of `block` samples, repeated to take about `target` on this
    /// machine when nothing interrupts it (the quickest of 200 timed runs).
    fn calibrated(target: Duration, block: usize) -> Self {
        let mut work = Self {
            samples: vec![0.5; block],
            rounds: 1,
        };
        let quickest_round = (0..200)
            .map(|_| {
                let started = Instant::now();
                work.run();
                started.elapsed()
            })
            .min()
            .expect("200 runs");
        work.rounds = (target.as_secs_f64() / quickest_round.as_secs_f64().max(1e-9))
            .round()
            .max(1.0) as u32;
        work
    }

    /// A one-pole smoother over the block, `rounds` times: arithmetic and memory like a
    /// plugin's, none of it optimised away.
    fn run(&mut self) {
        for _ in 0..self.rounds {
            let mut state = 0.0f32;
            for sample in &mut self.samples {
                state += 0.01 * (std::hint::black_box(*sample) - state);
                *sample = 0.5 + 0.001 * state;
            }
        }
    }
}

/// What the host's audio thread got from the last real-time performance: real-time
/// scheduling, or why not.
pub static AUDIO_THREAD_SCHEDULING: Mutex<String> = Mutex::new(String::new());

/// The priority a DAW's audio thread runs at (JACK's default is 70; PipeWire's is 88).
#[cfg(target_os = "linux")]
const AUDIO_THREAD_PRIORITY: i32 = 70;

/// Asks for the scheduling a DAW on Linux gives its audio thread, SCHED_FIFO, under which
/// no normal thread (the plugin's generation, at nice 10) can take the core from a
/// callback. Without the right to it (CAP_SYS_NICE or an rtprio limit) the thread stays
/// as it was; the answer says which, for the reports.
#[cfg(target_os = "linux")]
fn take_real_time_scheduling() -> String {
    let param = libc::sched_param {
        sched_priority: AUDIO_THREAD_PRIORITY,
    };
    // SAFETY: sets the calling thread's own policy with a valid sched_param.
    let result = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    match result {
        0 => format!("SCHED_FIFO at priority {AUDIO_THREAD_PRIORITY}, as a DAW's"),
        error => format!(
            "normal scheduling (SCHED_FIFO refused: {})",
            std::io::Error::from_raw_os_error(error)
        ),
    }
}

#[cfg(not(target_os = "linux"))]
fn take_real_time_scheduling() -> String {
    "normal scheduling (real-time scheduling is asked for on Linux only)".to_owned()
}

/// The CPU time the calling thread has used.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (result == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// The page faults, minor and major, the calling thread has taken.
#[cfg(target_os = "linux")]
fn thread_page_faults() -> Option<u64> {
    // SAFETY: getrusage fills one rusage struct through a valid pointer; zeroed is a
    // valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (result == 0).then(|| (usage.ru_minflt + usage.ru_majflt) as u64)
}

#[cfg(not(target_os = "linux"))]
fn thread_page_faults() -> Option<u64> {
    None
}

/// This process's resident memory in MB, where the system tells it (Linux).
pub fn resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
