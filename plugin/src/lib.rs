//! MusicGen Live as an instrument: a note (or the host's transport, in free-run mode)
//! plays the music the engine generates; notes from *Slot notes from* up choose a prompt
//! slot as they play; the editor sets the prompts and the model.
//!
//! The audio thread only pops samples from the engine's ring buffer, applies gain and a
//! short gate fade, and writes both channels. Everything else (loading, generating,
//! status) happens on the [`controller`] thread.

mod controller;
mod downloads;
mod editor;
mod error;
mod model_cache;
mod params;
mod slots;
mod transport;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use musicgen_engine::PlaybackConsumer;
use nice_plug::plugin::ParamValue;
use nice_plug::prelude::*;
use ringbuf::traits::{Consumer, Observer, Producer};
use tracing_subscriber::EnvFilter;

use crate::controller::{AudioLink, AudioRequest, Controller, Request};
pub use crate::params::MusicGenParams;
use crate::params::Press;

/// Gate fade for note on and off, in seconds.
const GATE_FADE_S: f32 = 0.02;

pub struct MusicGenLive {
    params: Arc<MusicGenParams>,
    controller: Controller,
    link: AudioLink,
    consumer: Option<PlaybackConsumer>,
    /// Mono samples from the ring buffer for the current block; sized in `activate`.
    scratch: Vec<f32>,
    /// The sidechain input of the current block as stereo frames, left and right
    /// interleaved; sized in `activate`.
    sidechain: Vec<f32>,
    notes_held: u32,
    gate: f32,
    gate_step: f32,
    latency_samples: u32,
    start_requested: bool,
    /// The stream was stopped: no new one starts until a note is struck, the transport
    /// starts (in free-run mode) or Generate is pressed, though notes are still held.
    stopped: bool,
    /// Whether the transport played (with free run on) in the last block.
    transport_played: bool,
    /// The host's sample rate, from `activate`.
    rate_hz: f64,
}

impl Default for MusicGenLive {
    fn default() -> Self {
        let params = Arc::new(MusicGenParams::default());
        let (controller, link) = Controller::spawn(Arc::clone(&params));
        Self {
            params,
            controller,
            link,
            consumer: None,
            scratch: Vec::new(),
            sidechain: Vec::new(),
            notes_held: 0,
            gate: 0.0,
            gate_step: 1.0 / (GATE_FADE_S * 48_000.0),
            latency_samples: 0,
            start_requested: false,
            stopped: false,
            transport_played: false,
            rate_hz: 0.0,
        }
    }
}

impl MusicGenLive {
    /// Hands the sidechain input, as stereo frames, to the controller (which keeps the
    /// last seconds for "Continue from sidechain": a stereo model continues left and right,
    /// a mono one their mix); whole frames that do not fit are dropped.
    fn capture_sidechain(&mut self, aux: &mut AuxiliaryBuffers) {
        let Some(input) = aux.inputs.first_mut() else {
            return;
        };
        let frames = input.samples().min(self.sidechain.len() / 2);
        for (stereo, frame) in self
            .sidechain
            .chunks_exact_mut(2)
            .zip(input.iter_samples())
            .take(frames)
        {
            // Denormal input would take microcode's slow path in the encoder's sums (the
            // host sets flush-to-zero for results, not denormals-are-zero for inputs).
            let mut channels = frame.into_iter().map(|s| if s.is_subnormal() { 0.0 } else { *s });
            let left = channels.next().unwrap_or(0.0);
            stereo[0] = left;
            stereo[1] = channels.next().unwrap_or(left);
        }
        let room = self.link.sidechain.vacant_len() / 2 * 2;
        let whole = (2 * frames).min(room);
        self.link.sidechain.push_slice(&self.sidechain[..whole]);
    }

    /// Takes a new stream's consumer (or none, after Stop) if the controller has one,
    /// retiring the old one to the controller so that it is freed there, and reports a
    /// changed latency.
    fn take_handoff(&mut self, context: &mut impl ProcessContext<Self>) {
        if let Some(handoff) = self.link.handoffs.try_pop() {
            if let Some(old) = std::mem::replace(&mut self.consumer, handoff)
                && let Err(old) = self.link.retired.try_push(old)
            {
                // The retire queue is full: keep the old one alive rather than free it here.
                std::mem::forget(old);
            }
            self.start_requested = false;
            self.stopped = self.consumer.is_none();
        }
        let latency_samples = self.link.latency_samples.load(Ordering::Relaxed);
        if latency_samples != self.latency_samples {
            self.latency_samples = latency_samples;
            context.set_latency_samples(latency_samples);
        }
    }
}

impl Plugin for MusicGenLive {
    const NAME: &'static str = "MusicGen Live";
    const VENDOR: &'static str = "MusicGen Live";
    const URL: &'static str = "";
    const EMAIL: &'static str = "";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: None,
        main_output_channels: NonZeroU32::new(2),
        aux_input_ports: &[new_nonzero_u32(2)],
        names: PortNames {
            aux_inputs: &["Sidechain"],
            ..PortNames::const_default()
        },
        ..AudioIOLayout::const_default()
    }];
    const MIDI_INPUT: MidiConfig = MidiConfig::Basic;
    /// Room for 10,000 notes (on and off) in one block before the wrapper's event queue
    /// would grow on the audio thread (its default is 1024 events).
    const INPUT_EVENT_CAPACITY: usize = 20_480;

    type SysExMessage = ();
    type BackgroundTask = ();
    type Editor = nice_plug_egui::EguiEditor<editor::EditorApp>;

    /// nice-plug's default logger passes ONNX Runtime's info lines (one per graph
    /// optimisation) into the host's log; this one keeps warnings from `ort` unless
    /// `MUSICGEN_LOG` (an `EnvFilter` directive) asks for more.
    fn setup_logger() -> Option<bool> {
        let filter = EnvFilter::try_from_env("MUSICGEN_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(nice_plug::log::writer_from_env())
            .finish();
        Some(tracing::subscriber::set_global_default(subscriber).is_ok())
    }

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    /// A damaged or hand-edited project may hold a number no parameter can take (found by
    /// fuzzing: 1e277 became an infinite gain that saved as `null`, so the project could
    /// not be loaded again). Such a value is dropped: the parameter keeps its default, as
    /// when a state lacks it.
    fn filter_state(state: &mut PluginState) {
        state.params.retain(|id, value| {
            let finite = !matches!(value, ParamValue::F32(number) if !number.is_finite());
            if !finite {
                tracing::warn!("the saved state's `{id}` is not a finite number; it keeps its default");
            }
            finite
        });
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(Arc::clone(&self.params), &self.controller)
    }

    fn activate(
        &mut self,
        _audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        _context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let rate_hz = f64::from(buffer_config.sample_rate);
        if !musicgen_engine::is_supported_rate(rate_hz) {
            nice_error!("MusicGen Live cannot run at {rate_hz} Hz");
            return false;
        }
        self.rate_hz = rate_hz;
        // Room for a stereo model's interleaved frames.
        self.scratch = vec![0.0; 2 * buffer_config.max_buffer_size as usize];
        self.sidechain = vec![0.0; 2 * buffer_config.max_buffer_size as usize];
        self.gate_step = 1.0 / (GATE_FADE_S * buffer_config.sample_rate);
        controller::load_runtime(*self.params.provider.read());
        self.controller.send(Request::Activate { rate_hz });
        true
    }

    fn reset(&mut self) {
        self.gate = 0.0;
        self.notes_held = 0;
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        self.capture_sidechain(aux);
        while let Some(event) = context.next_event() {
            match event {
                NoteEvent::NoteOn { key, .. } => {
                    // A slot's note chooses it before the request to start, so that a
                    // stream it starts plays that slot from its first frame.
                    let first_note = self.params.first_slot_note.value();
                    if let Some(slot) = key.number().and_then(|note| slots::slot_of_note(note, first_note)) {
                        self.params.presses.press(Press::NoteSlot(slot));
                    }
                    self.notes_held += 1;
                    self.stopped = false;
                }
                NoteEvent::NoteOff { .. } => self.notes_held = self.notes_held.saturating_sub(1),
                _ => {}
            }
        }
        self.take_handoff(context);
        let transport = context.transport();
        self.link.transport.publish(transport);
        let transport_plays = self.params.free_run.value() && transport.playing;
        if transport_plays && !self.transport_played {
            self.stopped = false;
        }
        self.transport_played = transport_plays;
        let open = !self.params.bypass.value() && (self.notes_held > 0 || transport_plays);
        if open && self.consumer.is_none() && !self.start_requested && !self.stopped {
            self.start_requested = self.link.requests.try_push(AudioRequest::Start).is_ok();
        }

        let frames = buffer.samples();
        // A mono model's samples go to both outputs; a stereo model's come interleaved.
        let model_channels = self.consumer.as_ref().map_or(1, PlaybackConsumer::channels);
        let model_audio = &mut self.scratch[..frames * model_channels];
        // After a rate change, the queued audio is at the old rate until the stream switches.
        let audible = (open || self.gate > 0.0)
            && f64::from_bits(self.link.stream_rate_hz.load(Ordering::Acquire)) == self.rate_hz;
        match (&mut self.consumer, audible) {
            (Some(consumer), true) => {
                consumer.pop(model_audio);
            }
            _ => model_audio.fill(0.0),
        }
        let mut peak = 0.0f32;
        for (frame, mut outputs) in model_audio.chunks_exact(model_channels).zip(buffer.iter_samples()) {
            self.gate = if open {
                (self.gate + self.gate_step).min(1.0)
            } else {
                (self.gate - self.gate_step).max(0.0)
            };
            let level = self.gate * self.params.gain.smoothed.next();
            for (channel, out) in outputs.iter_mut().enumerate() {
                *out = frame[channel.min(model_channels - 1)] * level;
                peak = peak.max(out.abs());
            }
        }
        self.link.output_peak.fetch_max(peak.to_bits(), Ordering::Relaxed);
        ProcessStatus::KeepAlive
    }
}

impl ClapPlugin for MusicGenLive {
    const CLAP_ID: &'static str = "live.musicgen.instrument";
    const CLAP_DESCRIPTION: Option<&'static str> = Some("Text-to-music generation in real time with MusicGen");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] =
        &[ClapFeature::Instrument, ClapFeature::Synthesizer, ClapFeature::Stereo];
}

impl Vst3Plugin for MusicGenLive {
    const VST3_CLASS_ID: [u8; 16] = *b"MusicGenLiveInst";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] = &[Vst3SubCategory::Instrument, Vst3SubCategory::Synth];
}

nice_export_clap!(MusicGenLive);
nice_export_vst3!(MusicGenLive);
