//! The plugin's control thread: gets the chosen model (from the process-wide
//! [`model_cache`](crate::model_cache), loading it on a thread of its own while the old one
//! plays), owns the engine's [`Stream`], starts it when a note or the editor asks, hands
//! its playback consumer to the audio thread through a lock-free queue, forwards parameter
//! changes, and publishes a status snapshot for the editor.
//!
//! The audio thread talks to this thread only through SPSC ring buffers (`ringbuf`) and
//! an atomic: it pushes [`AudioRequest`]s and retired consumers, pops new streams'
//! consumers, and reads the latency to report. Nothing it does can block, lock or free
//! memory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use musicgen_engine::{
    ChromaExtractor, Command, ExecutionProvider, Melody, Model, ModelError, ModelOptions, Pattern, PlaybackConsumer,
    RECENT_FRAMES, Readiness, Runtime, SamplingSettings, Stream, StreamConfig, find_tiny_bundle,
};
use parking_lot::Mutex;
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::error::PluginError;
use crate::model_cache::shared_model;
use crate::params::{MusicGenParams, Press, Trigger};
use crate::transport::HostTransport;

/// What the audio thread asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioRequest {
    /// A note arrived (or the transport started in free-run mode) and no stream is playing.
    Start,
}

/// What the editor and the host's non-realtime callbacks ask for.
#[derive(Clone, Debug)]
pub enum Request {
    /// Start generating, or re-condition a running stream on the current prompt.
    Generate,
    /// End the stream.
    Stop,
    /// The host activated the plugin at this sample rate: the stream switches to it, and
    /// one starts if none runs, so that it fills its buffer and the first note plays at once.
    Activate {
        rate_hz: f64,
    },
    /// Encode the last seconds of the sidechain input and continue the music from them.
    ContinueFromSidechain,
    /// Play the prompt in this slot (0-based) of the bank.
    ChooseSlot(usize),
    /// Play the next slot that holds a prompt.
    NextSlot,
    Shutdown,
}

/// What the editor shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: String,
    pub error: Option<String>,
    pub provider: String,
    pub steps_per_second: f32,
    /// Waiting for a buffer that lasts, or playing with this margin on real time.
    pub readiness: Option<Readiness>,
    pub seconds_buffered: f64,
    pub underruns: u64,
    /// The playing model's pattern over the frames `recent_frames` holds at most.
    pub pattern: Option<Pattern>,
    pub recent_frames: Vec<(usize, Vec<u32>)>,
    /// The slot whose prompt is heard now, and the one chosen that is not heard yet (it
    /// waits for a bar line, or for the audio generated before it to play).
    pub playing_slot: Option<usize>,
    pub queued_slot: Option<usize>,
}

/// The audio thread's ends of the queues.
pub struct AudioLink {
    pub requests: HeapProd<AudioRequest>,
    /// New streams' consumers; `None` when the stream stopped (the next note starts one).
    pub handoffs: HeapCons<Option<PlaybackConsumer>>,
    pub retired: HeapProd<PlaybackConsumer>,
    /// The running stream's latency at the current output rate (0 before any stream).
    pub latency_samples: Arc<AtomicU32>,
    /// The output rate of the audio the stream queues now; the audio thread keeps quiet
    /// while it differs from the host's rate.
    pub stream_rate_hz: Arc<AtomicU64>,
    pub transport: Arc<HostTransport>,
    /// The sidechain input, mono at the host's rate.
    pub sidechain: HeapProd<f32>,
    /// The output's peak since the editor last read it, as `f32` bits (non-negative
    /// floats order as their bits do, so `fetch_max` keeps the largest).
    pub output_peak: Arc<AtomicU32>,
}

/// The handle the plugin keeps; dropping it stops the thread and the stream.
pub struct Controller {
    requests: Sender<Request>,
    snapshot: Arc<Mutex<Snapshot>>,
    output_peak: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl Controller {
    pub fn spawn(params: Arc<MusicGenParams>) -> (Controller, AudioLink) {
        let (audio_requests, audio_requests_rx) = HeapRb::<AudioRequest>::new(16).split();
        let (handoffs_tx, handoffs) = HeapRb::<Option<PlaybackConsumer>>::new(4).split();
        let latency_samples = Arc::new(AtomicU32::new(0));
        let stream_rate_hz = Arc::new(AtomicU64::new(0));
        let transport = Arc::new(HostTransport::default());
        // Room for a second of stereo audio at the highest rate: the controller drains it
        // every few ms.
        let (sidechain, sidechain_rx) = HeapRb::<f32>::new(SIDECHAIN_QUEUE_SAMPLES).split();
        let (retired, retired_rx) = HeapRb::<PlaybackConsumer>::new(4).split();
        let (requests, requests_rx) = unbounded();
        let output_peak = Arc::new(AtomicU32::new(0));
        let snapshot = Arc::new(Mutex::new(Snapshot {
            state: "idle: play a note or press Generate".into(),
            ..Snapshot::default()
        }));
        let worker = Worker {
            params,
            requests: requests_rx,
            audio_requests: audio_requests_rx,
            handoffs: handoffs_tx,
            unsent_handoff: None,
            presses: Vec::new(),
            retired: retired_rx,
            snapshot: Arc::clone(&snapshot),
            latency_samples: Arc::clone(&latency_samples),
            stream_rate_hz: Arc::clone(&stream_rate_hz),
            transport: Arc::clone(&transport),
            sidechain: sidechain_rx,
            sidechain_history: VecDeque::new(),
            model: None,
            chroma: None,
            melody: None,
            melody_computed: Instant::now().checked_sub(MELODY_REFRESH).unwrap_or_else(Instant::now),
            loading: None,
            failed_load: None,
            start_when_loaded: false,
            pending: None,
            applied_prompt: String::new(),
            stream: None,
            output_rate_hz: 48_000.0,
            applied: None,
            playing_slot: None,
            queued_slot: None,
            last_snapshot: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("musicgen-controller".into())
            .spawn(move || worker.run())
            .expect("the OS can start a thread");
        (
            Controller {
                requests,
                snapshot,
                output_peak: Arc::clone(&output_peak),
                thread: Some(thread),
            },
            AudioLink {
                requests: audio_requests,
                handoffs,
                retired,
                latency_samples,
                stream_rate_hz,
                transport,
                sidechain,
                output_peak,
            },
        )
    }

    pub fn send(&self, request: Request) {
        // The worker only ends on Shutdown, which only Drop sends.
        let _ = self.requests.send(request);
    }

    pub fn sender(&self) -> Sender<Request> {
        self.requests.clone()
    }

    pub fn snapshot(&self) -> Arc<Mutex<Snapshot>> {
        Arc::clone(&self.snapshot)
    }

    pub fn output_peak(&self) -> Arc<AtomicU32> {
        Arc::clone(&self.output_peak)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Settings as last sent to the stream, to notice parameter changes.
#[derive(Clone, PartialEq)]
struct Applied {
    sampling: SamplingSettings,
    guidance_scale: f32,
    prompt_crossfade_s: f32,
    /// The morph's prompt B (its slot's prompt; none when that slot is empty) and amount.
    morph_target: Option<String>,
    morph: f32,
}

/// A stream filling its buffer before it takes over from the playing one (a continuation
/// of the sidechain, or the same music on a newly loaded model), with its prompt and what
/// the editor says once it plays.
struct Pending {
    stream: Stream,
    consumer: PlaybackConsumer,
    prompt: String,
    state: String,
}

/// The model the parameters choose: the folder field as typed (empty: the bundled model)
/// and the provider. Cheap to read on every poll.
#[derive(Clone, PartialEq)]
struct ModelChoice {
    folder: String,
    provider: ExecutionProvider,
}

/// A model loading on a thread of its own, so that the controller keeps serving the
/// audio thread and the editor (and the old model keeps playing) meanwhile.
struct ModelLoad {
    choice: ModelChoice,
    /// The folder it loads from (the bundled model's when the choice names none).
    folder: PathBuf,
    result: Receiver<Result<Arc<Model>, ModelError>>,
    thread: JoinHandle<()>,
}

struct Worker {
    params: Arc<MusicGenParams>,
    requests: Receiver<Request>,
    audio_requests: HeapCons<AudioRequest>,
    handoffs: HeapProd<Option<PlaybackConsumer>>,
    /// The newest handoff, while the audio thread's queue has no room for it: sent on a
    /// later poll, or replaced by a newer one (a Stop and a Generate pressed faster than
    /// the host's blocks would otherwise lose the last of them).
    unsent_handoff: Option<Option<PlaybackConsumer>>,
    /// The presses taken on a poll, kept to reuse its room.
    presses: Vec<Press>,
    retired: HeapCons<PlaybackConsumer>,
    snapshot: Arc<Mutex<Snapshot>>,
    latency_samples: Arc<AtomicU32>,
    stream_rate_hz: Arc<AtomicU64>,
    transport: Arc<HostTransport>,
    sidechain: HeapCons<f32>,
    /// The last [`SIDECHAIN_SECONDS`] of sidechain input at the host's rate, as stereo
    /// frames (left and right interleaved).
    sidechain_history: VecDeque<f32>,
    /// The model new streams play, with the choice it was loaded for.
    model: Option<(ModelChoice, Arc<Model>)>,
    /// The model's chroma extractor, if it is a melody model.
    chroma: Option<ChromaExtractor>,
    /// The melody streams follow (*Follow sidechain melody*), and when it was last
    /// computed.
    melody: Option<Melody>,
    melody_computed: Instant,
    /// A model loading in the background.
    loading: Option<ModelLoad>,
    /// Options whose model did not load: not tried again until they change or Generate
    /// is pressed.
    failed_load: Option<ModelChoice>,
    /// A stream starts as soon as the model has loaded.
    start_when_loaded: bool,
    /// A stream filling its buffer before it takes over.
    pending: Option<Pending>,
    /// The prompt the stream was last conditioned on (tempo hint included).
    applied_prompt: String,
    stream: Option<Stream>,
    output_rate_hz: f64,
    applied: Option<Applied>,
    /// The slot heard now, and one chosen with the stream frame its prompt takes effect on.
    playing_slot: Option<usize>,
    queued_slot: Option<(usize, f64)>,
    last_snapshot: Instant,
}

/// Sidechain samples (stereo frames, interleaved) in flight between the audio thread and
/// the controller.
const SIDECHAIN_QUEUE_SAMPLES: usize = 384_000;
/// Sidechain audio the controller keeps for a continuation.
const SIDECHAIN_SECONDS: f64 = 30.0;
/// Audio a continuing stream buffers before it replaces the playing one.
const TAKE_OVER_SECONDS: f64 = 0.5;
/// How often the sidechain's melody is computed again while it is followed.
const MELODY_REFRESH: Duration = Duration::from_secs(1);
/// Quieter sidechain audio (RMS) has no melody to follow.
const SILENCE_RMS: f32 = 1e-4;

/// How often the worker looks at the audio thread's queue and the parameters.
const POLL: Duration = Duration::from_millis(5);
const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);

impl Worker {
    fn run(mut self) {
        yield_to_the_host();
        loop {
            match self.requests.recv_timeout(POLL) {
                Ok(Request::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Request::Generate) => self.generate(),
                Ok(Request::Stop) => self.stop(),
                Ok(Request::ContinueFromSidechain) => self.continue_from_sidechain(),
                Ok(Request::ChooseSlot(slot)) => self.choose_slot(slot),
                Ok(Request::NextSlot) => self.next_slot(),
                Ok(Request::Activate { rate_hz }) => {
                    if rate_hz != self.output_rate_hz {
                        // Audio at the old rate cannot be encoded as if it were at the new one.
                        self.sidechain_history.clear();
                    }
                    self.set_output_rate(rate_hz);
                    if self.stream.is_none() {
                        self.generate();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            while let Some(AudioRequest::Start) = self.audio_requests.try_pop() {
                // The note that asked may have chosen a slot: its stream starts on that slot.
                self.follow_triggers();
                if self.stream.is_none() {
                    self.generate();
                }
            }
            self.follow_triggers();
            // Consumers the audio thread let go of are freed here, not there.
            while self.retired.try_pop().is_some() {}
            self.send_handoff();
            self.keep_sidechain();
            self.follow_melody();
            self.follow_model();
            self.take_over_when_ready();
            self.follow_prompt();
            self.advance_slots();
            if let Some(stream) = &self.stream {
                self.latency_samples.store(stream.latency_samples(), Ordering::Relaxed);
                // Release: the audio thread that sees the new rate also sees the old audio
                // retracted (the stream published both in that order).
                self.stream_rate_hz
                    .store(stream.sample_rate_hz().to_bits(), Ordering::Release);
            }
            self.apply_parameters();
            if self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                self.publish();
                self.last_snapshot = Instant::now();
            }
        }
        self.pending = None;
        self.stream = None;
        if let Some(load) = self.loading.take() {
            let _ = load.thread.join();
        }
    }

    /// Acts on the trigger parameters pressed and the slots chosen since the last poll, in
    /// the order they came.
    fn follow_triggers(&mut self) {
        let mut presses = std::mem::take(&mut self.presses);
        self.params.presses.take(&mut presses);
        for &press in &presses {
            match press {
                Press::Trigger(Trigger::Stop) => self.stop(),
                Press::Trigger(Trigger::Generate) => self.generate(),
                Press::Trigger(Trigger::ContinueFromSidechain) => self.continue_from_sidechain(),
                Press::Trigger(Trigger::NextSlot) => self.next_slot(),
                Press::NoteSlot(slot) => self.choose_slot(slot),
                Press::SlotParameter(slot) => {
                    let chose_before = self.params.slot_parameter_chose.swap(slot as u32, Ordering::Relaxed);
                    if chose_before != slot as u32 {
                        self.choose_slot(slot);
                    }
                }
            }
        }
        self.presses = presses;
    }

    /// Makes slot `slot`'s prompt the one that plays: a running stream takes it by the
    /// prompt's rules (on the next bar with bar sync, crossfaded with a crossfade set); the
    /// next stream starts on it. An empty slot changes nothing.
    fn choose_slot(&mut self, slot: usize) {
        let prompt = self.params.bank.read().prompt(slot).map(str::to_owned);
        let Some(prompt) = prompt else {
            self.set_state(format!("slot {} is empty", slot + 1), None);
            return;
        };
        self.params.active_slot.store(slot as u32, Ordering::Relaxed);
        *self.params.prompt.write() = prompt;
        match self.follow_prompt() {
            Some(frame) => self.queued_slot = Some((slot, frame)),
            None => {
                self.playing_slot = Some(slot);
                self.queued_slot = None;
            }
        }
    }

    /// Chooses the first slot after the active one that holds a prompt.
    fn next_slot(&mut self) {
        let active = self.params.active_slot.load(Ordering::Relaxed) as usize;
        let next = self.params.bank.read().next_filled(active);
        match next {
            Some(slot) => self.choose_slot(slot),
            None => self.set_state("every slot is empty: fill one in the editor".into(), None),
        }
    }

    /// Moves a queued slot to playing once the stream plays the frame its prompt took
    /// effect on.
    fn advance_slots(&mut self) {
        if let (Some((slot, frame)), Some(stream)) = (self.queued_slot, &self.stream)
            && stream.frames_played() >= frame
        {
            self.playing_slot = Some(slot);
            self.queued_slot = None;
        }
    }

    fn settings(&self) -> Applied {
        let p = &self.params;
        Applied {
            sampling: SamplingSettings {
                greedy: false,
                temperature: p.temperature.value(),
                top_k: p.top_k.value().max(0) as usize,
                top_p: p.top_p.value(),
            },
            guidance_scale: p.guidance.value(),
            prompt_crossfade_s: p.prompt_crossfade.value(),
            // A melody model cannot morph: its prompt is in its context.
            morph_target: self.chroma.is_none().then(|| self.morph_target()).flatten(),
            morph: p.morph.value(),
        }
    }

    /// The prompt as the stream should see it: the editor's text, with the host's tempo
    /// when the tempo hint is on and the host tells one.
    fn effective_prompt(&self) -> String {
        let prompt = self.params.prompt.read().clone();
        self.with_tempo(prompt)
    }

    /// The *Morph to* slot's prompt as the stream should see it, if that slot holds one.
    fn morph_target(&self) -> Option<String> {
        let prompt = self
            .params
            .bank
            .read()
            .prompt(self.params.morph_slot())
            .map(str::to_owned)?;
        Some(self.with_tempo(prompt))
    }

    fn with_tempo(&self, prompt: String) -> String {
        match (self.params.tempo_hint.value(), self.transport.view().tempo_bpm) {
            (true, Some(bpm)) => format!("{prompt}, {bpm:.0} bpm"),
            _ => prompt,
        }
    }

    /// Re-conditions a running stream when the prompt changed (from the editor, a loaded
    /// state, or the tempo under the tempo hint); returns the stream frame it takes effect on.
    fn follow_prompt(&mut self) -> Option<f64> {
        if self.is_running() {
            let prompt = self.effective_prompt();
            if prompt != self.applied_prompt {
                return self.send_prompt(prompt);
            }
        }
        None
    }

    /// Sends `prompt` to the stream: on the host's next bar line that generation has not
    /// reached yet when bar sync is on and the transport plays, otherwise at once. Returns
    /// the stream frame it takes effect on.
    fn send_prompt(&mut self, prompt: String) -> Option<f64> {
        let stream = self.stream.as_ref()?;
        // Frames already started keep the old prompt.
        let earliest = stream.status().started_frames() as f64 + 1.0;
        let next_bar = self
            .transport
            .view()
            .next_bar()
            .filter(|_| self.params.bar_sync.value());
        let (state, takes_effect) = match next_bar {
            Some((to_bar_s, bar_s)) => {
                let frame_rate_hz = stream.frame_rate_hz();
                let play_head = stream.frames_played();
                // The first bar line after the frames already started.
                let mut at = play_head + to_bar_s * frame_rate_hz;
                while at < earliest {
                    at += bar_s * frame_rate_hz;
                }
                stream.send(Command::SetPromptAt {
                    prompt: prompt.clone(),
                    frame: at.ceil() as usize,
                });
                let state = format!(
                    "prompt on the bar line in {:.1} s: {prompt}",
                    (at - play_head) / frame_rate_hz
                );
                (state, at.ceil())
            }
            None => {
                stream.send(Command::SetPrompt(prompt.clone()));
                (format!("prompt sent: {prompt}"), earliest)
            }
        };
        self.applied_prompt = prompt;
        self.set_state(state, None);
        Some(takes_effect)
    }

    /// A stream runs and is still generating.
    fn is_running(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| !s.status().is_finished())
    }

    fn generate(&mut self) {
        let prompt = self.effective_prompt();
        if self.is_running() {
            self.send_prompt(prompt);
            return;
        }
        let wanted = self.model_choice();
        let model = match &self.model {
            Some((choice, model)) if *choice == wanted => Arc::clone(model),
            _ => {
                // Starts once the chosen model has loaded; pressing Generate again after a
                // failed load tries again.
                self.start_when_loaded = true;
                if self.failed_load.as_ref() == Some(&wanted) {
                    self.failed_load = None;
                }
                self.follow_model();
                return;
            }
        };
        let config = self.stream_config(prompt.clone());
        match Stream::start(&model, config) {
            Ok((stream, consumer)) => self.install(stream, consumer, prompt, "generating"),
            Err(error) => self.set_state("stopped".into(), Some(error.into())),
        }
    }

    /// Loads the chosen model (folder and provider) in the background when it is not the
    /// one in use, and puts it in use once loaded: a waiting Generate starts on it, and a
    /// playing stream hands over to a new stream on it once that has audio buffered.
    /// Nothing loads before the instance first plays (hosts open plugins to scan them).
    fn follow_model(&mut self) {
        if let Some(load) = &self.loading
            && let Ok(result) = load.result.try_recv()
        {
            let load = self.loading.take().expect("checked above");
            let _ = load.thread.join();
            match result {
                Ok(model) => self.use_model(load.choice, model),
                Err(error) => {
                    let still = match &self.model {
                        Some((_, model)) => format!("; still playing {}", model.dir().display()),
                        None => String::new(),
                    };
                    let error = PluginError::ModelLoad {
                        folder: load.folder,
                        source: Box::new(error),
                    };
                    self.set_state(format!("not loaded{still}"), Some(error));
                    self.start_when_loaded = false;
                    self.failed_load = Some(load.choice);
                }
            }
        }
        if self.loading.is_some() || (self.model.is_none() && !self.start_when_loaded) {
            return;
        }
        // Read every poll: the parameters only; the options (which look at the file system
        // for the bundled model) are built when a load starts.
        let wanted = self.model_choice();
        let in_use = self.model.as_ref().is_some_and(|(choice, _)| *choice == wanted);
        if in_use || self.failed_load.as_ref() == Some(&wanted) {
            return;
        }
        let options = self.model_options(&wanted);
        let folder = options.model_dir.clone();
        self.set_state(format!("loading {} ...", folder.display()), None);
        let (result_tx, result) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("musicgen-model-load".into())
            .spawn(move || {
                let _ = result_tx.send(shared_model(&options));
            })
            .expect("the OS can start a thread");
        self.loading = Some(ModelLoad {
            choice: wanted,
            folder,
            result,
            thread,
        });
    }

    fn use_model(&mut self, choice: ModelChoice, model: Arc<Model>) {
        self.chroma = model.chroma_extractor();
        // The first stream on a melody model starts on the sidechain's melody; a stream
        // still playing the old model is not told.
        self.melody = match &self.chroma {
            Some(extractor) if self.params.follow_melody.value() => self.sidechain_melody(extractor),
            _ => None,
        };
        self.melody_computed = Instant::now();
        self.model = Some((choice, Arc::clone(&model)));
        self.failed_load = None;
        if std::mem::take(&mut self.start_when_loaded) && !self.is_running() {
            self.generate();
            return;
        }
        if !self.is_running() {
            self.set_state(
                format!("{} loaded: play a note or press Generate", model.dir().display()),
                None,
            );
            return;
        }
        let prompt = self.effective_prompt();
        let started = Stream::start(&model, self.stream_config(prompt.clone()));
        match started {
            Ok((stream, consumer)) => {
                self.pending = Some(Pending {
                    stream,
                    consumer,
                    prompt,
                    state: format!("playing {}", model.dir().display()),
                });
                self.set_state(format!("switching to {} ...", model.dir().display()), None);
            }
            Err(error) => self.set_state("the new model did not start".into(), Some(error.into())),
        }
    }

    /// Hands `stream`'s consumer to the audio thread and keeps the stream, with the
    /// prompt and parameters it was started with.
    fn install(&mut self, stream: Stream, consumer: PlaybackConsumer, prompt: String, state: &str) {
        self.hand_off(Some(consumer));
        let active = self.params.active_slot.load(Ordering::Relaxed) as usize;
        let plays_active_slot = self.params.bank.read().prompt(active) == Some(self.params.prompt.read().trim());
        self.playing_slot = plays_active_slot.then_some(active);
        self.queued_slot = None;
        self.applied = Some(self.settings());
        self.applied_prompt = prompt;
        self.snapshot.lock().pattern = Some(stream.model().pattern(RECENT_FRAMES));
        self.stream = Some(stream);
        self.set_state(state.into(), None);
    }

    /// Moves the sidechain's stereo frames the audio thread sent into the history,
    /// keeping the last [`SIDECHAIN_SECONDS`].
    fn keep_sidechain(&mut self) {
        let history = &mut self.sidechain_history;
        history.extend(self.sidechain.pop_iter());
        let keep = 2 * (SIDECHAIN_SECONDS * self.output_rate_hz) as usize;
        let excess = history.len().saturating_sub(keep);
        history.drain(..excess);
    }

    /// Keeps the streams' melody on the sidechain's while *Follow sidechain melody* is on
    /// and the model is a melody model, computed every [`MELODY_REFRESH`] and sent to the
    /// melody streams (the playing one, one about to take over) when its pitch classes
    /// change. A stream takes it up at its next window slide or prompt change.
    fn follow_melody(&mut self) {
        let Some(extractor) = &self.chroma else {
            return;
        };
        let wanted = if self.params.follow_melody.value() {
            if self.melody_computed.elapsed() < MELODY_REFRESH {
                return;
            }
            self.melody_computed = Instant::now();
            self.sidechain_melody(extractor)
        } else {
            None
        };
        if wanted == self.melody {
            return;
        }
        if wanted.is_some() != self.melody.is_some() {
            let state = match &wanted {
                Some(_) => "following the sidechain's melody from the next window slide or prompt",
                None => "no sidechain melody: the next window slide or prompt plays without one",
            };
            self.set_state(state.into(), None);
        }
        self.melody = wanted;
        let pending = self.pending.as_ref().map(|pending| &pending.stream);
        // A text model's stream (the old model's, while a melody model takes over) has no
        // melody to change.
        for stream in self.stream.iter().chain(pending) {
            if stream.model().manifest().melody.is_some() {
                stream.send(Command::SetMelody(self.melody.clone()));
            }
        }
    }

    /// The melody of the sidechain's last *Context window* seconds (none in silence).
    fn sidechain_melody(&self, extractor: &ChromaExtractor) -> Option<Melody> {
        let seconds = f64::from(self.params.window.value());
        let frames = ((seconds * self.output_rate_hz) as usize).min(self.sidechain_history.len() / 2);
        let recent: Vec<f32> = self
            .sidechain_history
            .range(self.sidechain_history.len() - 2 * frames..)
            .copied()
            .collect();
        let rms = (recent.iter().map(|s| s * s).sum::<f32>() / recent.len().max(1) as f32).sqrt();
        (rms >= SILENCE_RMS)
            .then(|| extractor.melody(&recent, 2, self.output_rate_hz).ok())
            .flatten()
    }

    /// Encodes the last *Kept context* seconds of the sidechain and starts a stream that
    /// continues them; it takes over once it has audio buffered.
    fn continue_from_sidechain(&mut self) {
        match self.start_continuation() {
            Ok(()) => self.set_state("continuing the sidechain: filling the buffer ...".into(), None),
            Err(error) => self.set_state("sidechain not continued".into(), Some(error)),
        }
    }

    fn start_continuation(&mut self) -> Result<(), PluginError> {
        let seconds = f64::from(self.params.keep.value());
        if seconds <= 0.0 {
            return Err(PluginError::NoKeptContext);
        }
        let rate_hz = self.output_rate_hz;
        let frames = ((seconds * rate_hz) as usize).min(self.sidechain_history.len() / 2);
        let recent: Vec<f32> = self
            .sidechain_history
            .range(self.sidechain_history.len() - 2 * frames..)
            .copied()
            .collect();
        let (left, right): (Vec<f32>, Vec<f32>) = recent.chunks_exact(2).map(|frame| (frame[0], frame[1])).unzip();
        let rms = (left.iter().chain(&right).map(|s| s * s).sum::<f32>() / (2 * frames).max(1) as f32).sqrt();
        if frames == 0 || rms < 1e-4 {
            return Err(PluginError::SilentSidechain {
                rms,
                seconds: frames as f64 / rate_hz,
            });
        }
        let Some((_, model)) = &self.model else {
            return Err(PluginError::NoModelYet);
        };
        let model = Arc::clone(model);
        let codes = model
            .encode_audio(&[&left, &right], rate_hz)
            .map_err(|error| PluginError::Encode(Box::new(error)))?;
        let prompt = self.effective_prompt();
        let mut config = self.stream_config(prompt.clone());
        config.continue_from = Some(codes);
        config.play_continued = false;
        let (stream, consumer) = Stream::start(&model, config)?;
        self.pending = Some(Pending {
            stream,
            consumer,
            prompt,
            state: "continuing the sidechain".into(),
        });
        Ok(())
    }

    /// Hands a continuing stream to the audio thread once it has audio buffered.
    fn take_over_when_ready(&mut self) {
        let ready = self.pending.as_ref().is_some_and(|pending| {
            pending.stream.seconds_buffered() >= TAKE_OVER_SECONDS || pending.stream.status().is_finished()
        });
        if !ready {
            return;
        }
        let pending = self.pending.take().expect("checked above");
        self.install(pending.stream, pending.consumer, pending.prompt, &pending.state);
    }

    /// Queues `handoff` for the audio thread, after any already queued; one that finds no
    /// room waits for a later poll, and a newer handoff replaces it.
    fn hand_off(&mut self, handoff: Option<PlaybackConsumer>) {
        self.unsent_handoff = Some(handoff);
        self.send_handoff();
    }

    fn send_handoff(&mut self) {
        if let Some(handoff) = self.unsent_handoff.take()
            && let Err(handoff) = self.handoffs.try_push(handoff)
        {
            self.unsent_handoff = Some(handoff);
        }
    }

    fn stop(&mut self) {
        self.pending = None;
        self.stream = None;
        // The audio thread lets go of the drained consumer, so that the next note starts
        // a new stream.
        self.hand_off(None);
        self.set_state("stopped: play a note or press Generate".into(), None);
    }

    fn set_output_rate(&mut self, rate_hz: f64) {
        let changed = rate_hz != self.output_rate_hz;
        self.output_rate_hz = rate_hz;
        if changed
            && let Some(stream) = &self.stream
            && let Err(error) = stream.set_output_rate(rate_hz)
        {
            self.set_state("stopped".into(), Some(PluginError::from(error)));
            self.stream = None;
        }
    }

    /// Sends the stream the settings that changed since they were last sent, each as its
    /// own command (a morph swept on every poll leaves the sampler alone).
    fn apply_parameters(&mut self) {
        let Some(stream) = &self.stream else {
            return;
        };
        let settings = self.settings();
        let applied = self.applied.as_ref();
        if applied.is_none_or(|a| (a.sampling, a.guidance_scale) != (settings.sampling, settings.guidance_scale)) {
            stream.send(Command::SetSampling {
                sampling: settings.sampling,
                guidance_scale: settings.guidance_scale,
            });
        }
        if applied.is_none_or(|a| a.prompt_crossfade_s != settings.prompt_crossfade_s) {
            stream.send(Command::SetPromptCrossfade(f64::from(settings.prompt_crossfade_s)));
        }
        if applied.is_none_or(|a| a.morph_target != settings.morph_target) {
            stream.send(Command::SetMorphTarget(settings.morph_target.clone()));
        }
        if applied.is_none_or(|a| a.morph != settings.morph) {
            stream.send(Command::SetMorph {
                amount: settings.morph,
                frame: 0,
            });
        }
        self.applied = Some(settings);
    }

    /// The model the parameters choose.
    fn model_choice(&self) -> ModelChoice {
        ModelChoice {
            folder: self.params.model_dir.read().clone(),
            provider: *self.params.provider.read(),
        }
    }

    /// What loads `choice`: its folder, or the bundled model when it names none.
    fn model_options(&self, choice: &ModelChoice) -> ModelOptions {
        let folder = match choice.folder.as_str() {
            "" => default_model_dir(),
            chosen => PathBuf::from(chosen),
        };
        let mut options = ModelOptions::new(folder);
        options.provider = choice.provider;
        options.ort_library = bundled_ort_library();
        options
    }

    /// A stream with the current parameters.
    fn stream_config(&self, prompt: String) -> StreamConfig {
        let settings = self.settings();
        let mut config = StreamConfig::new(prompt);
        config.sampling = settings.sampling;
        config.guidance_scale = settings.guidance_scale;
        config.seed = self.params.seed.value().max(0) as u64;
        config.window_seconds = f64::from(self.params.window.value());
        config.keep_seconds = f64::from(self.params.keep.value());
        config.buffer_ahead_seconds = Some(f64::from(self.params.buffer_ahead.value()));
        config.prompt_crossfade_seconds = f64::from(settings.prompt_crossfade_s);
        config.morph_target = settings.morph_target;
        config.morph = settings.morph;
        config.melody = self.melody.clone();
        config.output_rate_hz = self.output_rate_hz;
        config
    }

    fn set_state(&self, state: String, error: Option<PluginError>) {
        let mut snapshot = self.snapshot.lock();
        snapshot.state = state;
        snapshot.error = error.map(|error| error.to_string());
    }

    /// Copies the stream's status into the snapshot, only while the editor is open: no one
    /// else reads it, and the recent frames cost a copy each time.
    fn publish(&self) {
        if !self.params.editor_state.is_open() {
            return;
        }
        let mut snapshot = self.snapshot.lock();
        snapshot.playing_slot = self.playing_slot;
        snapshot.queued_slot = self.queued_slot.map(|(slot, _)| slot);
        let Some(stream) = &self.stream else {
            return;
        };
        let status = stream.status();
        snapshot.provider = stream.model().execution_provider().to_owned();
        snapshot.steps_per_second = status.steps_per_second();
        snapshot.readiness = Some(stream.readiness());
        snapshot.seconds_buffered = stream.seconds_buffered();
        snapshot.underruns = stream.playback().underruns();
        status.recent_frames(&mut snapshot.recent_frames);
        if let Some(error) = status.error() {
            snapshot.state = "stopped".into();
            snapshot.error = Some(PluginError::Stopped(error).to_string());
        }
    }
}

/// Lowers this thread's scheduling priority (Linux: nice 10), and with it that of every
/// thread it starts: the model loader, ONNX Runtime's pools, the streams' threads. On a
/// machine with few cores the host's audio and GUI threads then win the CPU from
/// generation, which has its buffer to fall back on.
fn yield_to_the_host() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority on the calling thread (who = 0) with a valid nice value.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
        if result != 0 {
            tracing::debug!("could not lower the controller thread's priority");
        }
    }
}

/// The ONNX Runtime library shipped beside the plugin, if this is a bundle.
fn bundled_ort_library() -> Option<PathBuf> {
    resources_dir().map(|dir| dir.join(musicgen_engine::library_file_name()))
}

/// Loads ONNX Runtime, and CUDA's libraries where `provider` may use them, unless this
/// process already has. Called from the host's main thread at activation, so that no
/// library is loaded while audio runs: loading one holds the dynamic loader's lock, and a
/// host thread that touches a library's thread-locals for the first time waits on that
/// lock (clap-validator's new audio threads waited 14 ms behind ONNX Runtime's load from
/// a cold disk). A failure is left for the model's load to report.
pub fn load_runtime(provider: ExecutionProvider) {
    if let Ok(runtime) = Runtime::init(bundled_ort_library().as_deref())
        && matches!(provider, ExecutionProvider::Auto | ExecutionProvider::Cuda)
    {
        runtime.cuda_readiness();
    }
}

/// The `musicgen-live/` folder beside the plugin's own binary, where `cargo xtask bundle`
/// puts the ONNX Runtime library and the default model.
pub fn resources_dir() -> Option<PathBuf> {
    let binary = process_path::get_dylib_path().or_else(process_path::get_executable_path)?;
    binary.parent().map(|dir| dir.join("musicgen-live"))
}

/// The tiny model shipped beside the binary, or the source tree's that the binary was
/// built in.
pub fn default_model_dir() -> PathBuf {
    let bundled = resources_dir().map(|dir| dir.join("models").join("tiny"));
    let binary = process_path::get_dylib_path().or_else(process_path::get_executable_path);
    match (bundled, binary) {
        (Some(dir), _) if dir.is_dir() => dir,
        (_, Some(binary)) => find_tiny_bundle(&binary).unwrap_or_else(|| PathBuf::from("models/tiny")),
        (bundled, None) => bundled.unwrap_or_else(|| PathBuf::from("models/tiny")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_the_tiny_bundle() {
        let dir = default_model_dir();
        assert!(dir.join("musicgen.json").is_file(), "{}", dir.display());
    }
}
