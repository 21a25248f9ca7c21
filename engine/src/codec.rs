//! Encodec decoding of a stream of frames, exactly, as the frames arrive.
//!
//! The bundle splits Encodec's decoder at its LSTM (see `models/codec_graphs.py`): the
//! *front end* (codebook embeddings, the first convolution and the LSTM) runs each frame
//! once, carrying the LSTM's state from call to call, and gives frame-rate features; the
//! *upsampler* turns features into audio, and since its receptive field is short, a chunk
//! of frames decoded with [`CodecGeometry::upsampler_context_frames`] of features on each
//! side gives exactly the samples an offline decode gives. The first convolution looks
//! [`CodecGeometry::conv_context_frames`] frames ahead, and at a stream's ends the codes
//! are reflected as Encodec pads them, so the whole stream equals an offline decode of
//! all its frames up to float rounding.
//!
//! A stereo model's frames hold the left and right channels' codebooks interleaved
//! (`[L0, R0, L1, R1, ...]`); each channel is decoded by the same Encodec on its own state,
//! and [`StreamingCodec`] hands out their samples interleaved.
//!
//! [`AudioEncoder`] goes the other way, for continuing given audio.

use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;
use parking_lot::Mutex;

use crate::bundle::{Bundle, BundleError, CodecGeometry, Graph};
use crate::pattern::CodeGrid;
use crate::resample::{ResampleError, resample_whole};
use crate::runtime::{ExecutionProvider, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("codec decode of frames {first}..{end}: {source}")]
    Run {
        first: usize,
        end: usize,
        source: ort::Error,
    },
    #[error("{samples} samples are less than one codec frame ({samples_per_frame} samples); give more audio")]
    TooShort { samples: usize, samples_per_frame: usize },
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// How many frames the upsampler decodes per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecWindow {
    /// New frames decoded per call once the stream runs.
    pub chunk_frames: usize,
    /// New frames in the first call; later calls double until `chunk_frames`, so the
    /// first audio comes after a few frames instead of a whole chunk.
    pub first_chunk_frames: usize,
}

/// Chunks of 10 frames: the upsampler decodes 14 frames for every 10 it emits (2 of
/// context on each side), and a chunk adds 200 ms of latency. The first chunk is one
/// frame, so that the first audio waits for as few decoder steps as possible.
impl Default for CodecWindow {
    fn default() -> Self {
        Self {
            chunk_frames: 10,
            first_chunk_frames: 1,
        }
    }
}

/// The two codec graphs of a loaded model, shared by every stream and fork that decodes
/// with it (each call takes the graph's session in turn).
pub struct CodecGraphs {
    frontend: Mutex<Session>,
    upsampler: Mutex<Session>,
    geometry: CodecGeometry,
    /// Codebooks per channel.
    num_codebooks: usize,
    channels: usize,
    samples_per_frame: usize,
}

impl CodecGraphs {
    pub(crate) fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<Self, CodecError> {
        let manifest = bundle.manifest();
        let (frontend, _) = bundle.session_on(runtime, Graph::CodecFrontend, threads, provider)?;
        let (upsampler, _) = bundle.session_on(runtime, Graph::CodecUpsampler, threads, provider)?;
        Ok(Self {
            frontend: Mutex::new(frontend),
            upsampler: Mutex::new(upsampler),
            geometry: manifest.codec,
            num_codebooks: manifest.codebooks_per_channel(),
            channels: manifest.audio_channels,
            samples_per_frame: manifest.samples_per_frame,
        })
    }
}

/// One stream's decoding state on a model's [`CodecGraphs`]: a [`ChannelCodec`] per
/// audio channel, fed the channel's codebooks of each frame.
pub struct StreamingCodec {
    channels: Vec<ChannelCodec>,
    /// One channel's codes of the frame being pushed.
    channel_frame: Vec<u32>,
    /// Each channel's samples of the chunks being decoded, before they are interleaved.
    channel_audio: Vec<Vec<f32>>,
}

impl StreamingCodec {
    pub(crate) fn new(graphs: Arc<CodecGraphs>, window: CodecWindow) -> Self {
        let channels = (0..graphs.channels)
            .map(|_| ChannelCodec::new(Arc::clone(&graphs), window))
            .collect::<Vec<_>>();
        Self::of(channels)
    }

    fn of(channels: Vec<ChannelCodec>) -> Self {
        Self {
            channel_frame: Vec::with_capacity(channels[0].num_codebooks),
            channel_audio: vec![Vec::new(); channels.len()],
            channels,
        }
    }

    /// Audio channels, interleaved in what the codec hands out.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Samples of audio per frame and channel, at the codec's rate.
    pub(crate) fn samples_per_frame(&self) -> usize {
        self.channels[0].samples_per_frame
    }

    pub(crate) fn window(&self) -> CodecWindow {
        self.channels[0].window
    }

    /// Runs both graphs once on a frame of code 0, leaving this stream's state as it is,
    /// so that the first real chunk does not pay for ONNX Runtime's first-run work.
    pub(crate) fn warm_up(&self) -> Result<(), CodecError> {
        self.channels[0].warm_up()
    }

    /// A copy of this stream's state on the same sessions: the same frames so far, decoded
    /// on from here independently (to crossfade two continuations of one stream).
    pub(crate) fn fork(&self) -> Self {
        Self::of(self.channels.iter().map(ChannelCodec::fork).collect())
    }

    /// Frames whose audio has been emitted: the next sample emitted is frame
    /// `emitted_frames()`'s first.
    pub(crate) fn emitted_frames(&self) -> usize {
        self.channels[0].emitted_frames
    }

    /// Frames between a frame's completion and its audio.
    pub(crate) fn latency_frames(&self) -> usize {
        self.channels[0].latency_frames()
    }

    /// Adds a frame that has already been heard: context for the next chunks, not
    /// decoded. Only before the first frame to decode.
    pub(crate) fn push_context_frame(&mut self, frame: &[u32]) {
        self.for_each_channel(frame, ChannelCodec::push_context_frame);
    }

    /// Adds one frame's codes (K values, the channels' codebooks interleaved).
    pub fn push_frame(&mut self, frame: &[u32]) {
        self.for_each_channel(frame, ChannelCodec::push_frame);
    }

    fn for_each_channel(&mut self, frame: &[u32], push: fn(&mut ChannelCodec, &[u32])) {
        let count = self.channels.len();
        if count == 1 {
            push(&mut self.channels[0], frame);
            return;
        }
        for (c, channel) in self.channels.iter_mut().enumerate() {
            self.channel_frame.clear();
            self.channel_frame.extend(frame.iter().skip(c).step_by(count).copied());
            push(channel, &self.channel_frame);
        }
    }

    /// Decodes every chunk whose right context has arrived and appends its samples
    /// (channels interleaved) to `out`.
    pub fn decode_ready(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        self.decode_each(out, ChannelCodec::decode_ready)
    }

    /// Decodes what is left at the end of a stream and appends it to `out`.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        self.decode_each(out, ChannelCodec::finish)
    }

    fn decode_each(
        &mut self,
        out: &mut Vec<f32>,
        decode: fn(&mut ChannelCodec, &mut Vec<f32>) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        if self.channels.len() == 1 {
            return decode(&mut self.channels[0], out);
        }
        for (channel, audio) in self.channels.iter_mut().zip(&mut self.channel_audio) {
            audio.clear();
            decode(channel, audio)?;
        }
        let samples = self.channel_audio[0].len();
        debug_assert!(
            self.channel_audio.iter().all(|audio| audio.len() == samples),
            "the channels decode in step"
        );
        out.reserve(samples * self.channels.len());
        for i in 0..samples {
            out.extend(self.channel_audio.iter().map(|audio| audio[i]));
        }
        Ok(())
    }
}

/// One channel's decoding state: the codes, LSTM state and features it still needs.
struct ChannelCodec {
    graphs: Arc<CodecGraphs>,
    window: CodecWindow,
    geometry: CodecGeometry,
    num_codebooks: usize,
    samples_per_frame: usize,
    /// Codebook-major codes of the frames still needed: `codes[k][t - codes_start]`.
    codes: Vec<Vec<i64>>,
    codes_start: usize,
    frames_received: usize,
    /// The LSTM's state after the last frame with features, `[layers, 1, width]` each.
    lstm_h: Vec<f32>,
    lstm_c: Vec<f32>,
    /// Frame-major features of the frames still needed: `features[(t - features_start) * width..]`.
    features: Vec<f32>,
    features_start: usize,
    /// Frames whose features have been computed.
    featured_frames: usize,
    /// Frames whose audio has been emitted.
    emitted_frames: usize,
    /// Leading frames given as context only.
    context_frames: usize,
    window_codes: Vec<i64>,
    window_features: Vec<f32>,
}

impl ChannelCodec {
    fn new(graphs: Arc<CodecGraphs>, window: CodecWindow) -> Self {
        let geometry = graphs.geometry;
        let (num_codebooks, samples_per_frame) = (graphs.num_codebooks, graphs.samples_per_frame);
        let state = vec![0.0; geometry.lstm_layers * geometry.lstm_width];
        Self {
            graphs,
            window: CodecWindow {
                chunk_frames: window.chunk_frames.max(1),
                first_chunk_frames: window.first_chunk_frames.clamp(1, window.chunk_frames.max(1)),
            },
            geometry,
            num_codebooks,
            samples_per_frame,
            codes: vec![Vec::new(); num_codebooks],
            codes_start: 0,
            frames_received: 0,
            lstm_h: state.clone(),
            lstm_c: state,
            features: Vec::new(),
            features_start: 0,
            featured_frames: 0,
            emitted_frames: 0,
            context_frames: 0,
            window_codes: Vec::new(),
            window_features: Vec::new(),
        }
    }

    fn warm_up(&self) -> Result<(), CodecError> {
        let mut scratch = self.fork();
        let zeros = vec![0u32; self.num_codebooks];
        for _ in 0..=self.geometry.conv_context_frames {
            scratch.push_frame(&zeros);
        }
        let mut audio = Vec::new();
        scratch.finish(&mut audio)
    }

    fn fork(&self) -> Self {
        Self {
            graphs: Arc::clone(&self.graphs),
            window: self.window,
            geometry: self.geometry,
            num_codebooks: self.num_codebooks,
            samples_per_frame: self.samples_per_frame,
            codes: self.codes.clone(),
            codes_start: self.codes_start,
            frames_received: self.frames_received,
            lstm_h: self.lstm_h.clone(),
            lstm_c: self.lstm_c.clone(),
            features: self.features.clone(),
            features_start: self.features_start,
            featured_frames: self.featured_frames,
            emitted_frames: self.emitted_frames,
            context_frames: self.context_frames,
            window_codes: Vec::new(),
            window_features: Vec::new(),
        }
    }

    /// Frames between a frame's completion and its audio: the first convolution's look
    /// ahead, the upsampler's right context and a chunk.
    fn latency_frames(&self) -> usize {
        self.geometry.conv_context_frames + self.geometry.upsampler_context_frames + self.window.chunk_frames
    }

    /// Adds a frame that has already been heard: it passes through the front end, so the
    /// LSTM and the next chunk's left context are as if it had been decoded, but its audio
    /// is not. Only before the first frame to decode.
    fn push_context_frame(&mut self, frame: &[u32]) {
        debug_assert_eq!(
            self.emitted_frames, self.frames_received,
            "context comes before new frames"
        );
        self.push_frame(frame);
        self.emitted_frames = self.frames_received;
        self.context_frames = self.frames_received;
    }

    /// Adds one frame's codes (this channel's codebooks).
    fn push_frame(&mut self, frame: &[u32]) {
        for (row, &code) in self.codes.iter_mut().zip(frame) {
            row.push(i64::from(code));
        }
        self.frames_received += 1;
    }

    /// Decodes every chunk whose right context has arrived and appends its samples to `out`.
    fn decode_ready(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        let lookahead = self.geometry.conv_context_frames + self.geometry.upsampler_context_frames;
        loop {
            let end = self.emitted_frames + self.next_chunk_frames();
            if self.frames_received < end + lookahead {
                return Ok(());
            }
            self.run_frontend(self.frames_received - self.geometry.conv_context_frames, false)?;
            self.decode_chunk(end, out)?;
        }
    }

    /// Decodes what is left at the end of a stream and appends it to `out`.
    fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        self.run_frontend(self.frames_received, true)?;
        while self.emitted_frames < self.featured_frames {
            let end = (self.emitted_frames + self.next_chunk_frames()).min(self.featured_frames);
            self.decode_chunk(end, out)?;
        }
        Ok(())
    }

    /// The size of the next chunk: the first chunk's, doubled per chunk emitted so far,
    /// up to the steady chunk.
    fn next_chunk_frames(&self) -> usize {
        let steady = self.window.chunk_frames;
        let mut chunk = self.window.first_chunk_frames;
        let mut emitted = 0;
        while emitted < self.emitted_frames - self.context_frames && chunk < steady {
            emitted += chunk;
            chunk = (chunk * 2).min(steady);
        }
        chunk
    }

    /// The code of codebook `k` at frame `t`, which may lie before the stream or (when it
    /// has ended) after it: Encodec pads by reflection, and so do we.
    fn code_at(&self, k: usize, t: isize, ended: bool) -> i64 {
        let last = self.frames_received as isize - 1;
        let mut t = t;
        if t < 0 {
            t = -t;
        }
        if ended && t > last {
            t = 2 * last - t;
        }
        // A stream shorter than the padding cannot reflect: repeat its edge frames.
        let t = t.clamp(self.codes_start as isize, last) as usize;
        self.codes[k][t - self.codes_start]
    }

    /// Computes the features of frames up to `end` (the front end looks
    /// `conv_context_frames` ahead; past a stream's end it reflects).
    fn run_frontend(&mut self, end: usize, ended: bool) -> Result<(), CodecError> {
        let first = self.featured_frames;
        if end <= first {
            return Ok(());
        }
        let context = self.geometry.conv_context_frames as isize;
        let width = end - first + 2 * self.geometry.conv_context_frames;
        self.window_codes.clear();
        for k in 0..self.num_codebooks {
            for t in first as isize - context..end as isize + context {
                let code = self.code_at(k, t, ended);
                self.window_codes.push(code);
            }
        }
        let run_error = |source| CodecError::Run { first, end, source };
        let (layers, lstm_width) = (self.geometry.lstm_layers, self.geometry.lstm_width);
        let state_shape = [layers, 1, lstm_width];
        let mut session = self.graphs.frontend.lock();
        let outputs = session
            .run(ort::inputs![
                "audio_codes" => TensorRef::from_array_view(([1usize, self.num_codebooks, width], &self.window_codes[..])).map_err(run_error)?,
                "lstm_h" => TensorRef::from_array_view((state_shape, &self.lstm_h[..])).map_err(run_error)?,
                "lstm_c" => TensorRef::from_array_view((state_shape, &self.lstm_c[..])).map_err(run_error)?,
            ])
            .map_err(run_error)?;
        let (_, features) = outputs["features"].try_extract_tensor::<f32>().map_err(run_error)?;
        let frames = end - first;
        // `[1, width, frames]` channel-major in, frame-major kept.
        for t in 0..frames {
            self.features
                .extend((0..lstm_width).map(|channel| features[channel * frames + t]));
        }
        let (_, h) = outputs["lstm_h_out"].try_extract_tensor::<f32>().map_err(run_error)?;
        self.lstm_h.copy_from_slice(h);
        let (_, c) = outputs["lstm_c_out"].try_extract_tensor::<f32>().map_err(run_error)?;
        self.lstm_c.copy_from_slice(c);
        self.featured_frames = end;
        Ok(())
    }

    /// Emits the audio of frames `emitted_frames..end` from their features and up to
    /// `upsampler_context_frames` on each side.
    fn decode_chunk(&mut self, end: usize, out: &mut Vec<f32>) -> Result<(), CodecError> {
        let first = self.emitted_frames;
        let context = self.geometry.upsampler_context_frames;
        let window_start = first.saturating_sub(context).max(self.features_start);
        let window_end = (end + context).min(self.featured_frames);
        let lstm_width = self.geometry.lstm_width;
        let frames = window_end - window_start;
        self.window_features.clear();
        for channel in 0..lstm_width {
            for t in window_start..window_end {
                self.window_features
                    .push(self.features[(t - self.features_start) * lstm_width + channel]);
            }
        }
        let run_error = |source| CodecError::Run { first, end, source };
        let features =
            TensorRef::from_array_view(([1usize, lstm_width, frames], &self.window_features[..])).map_err(run_error)?;
        let mut session = self.graphs.upsampler.lock();
        let outputs = session.run(ort::inputs!["features" => features]).map_err(run_error)?;
        let (_, audio) = outputs["audio_values"].try_extract_tensor::<f32>().map_err(run_error)?;
        let spf = self.samples_per_frame;
        out.extend_from_slice(&audio[(first - window_start) * spf..(end - window_start) * spf]);
        drop(outputs);
        drop(session);
        self.emitted_frames = end;
        self.forget_old_frames();
        Ok(())
    }

    /// Drops codes and features no later call reads: the history stays bounded however
    /// long the stream runs.
    fn forget_old_frames(&mut self) {
        let keep_features_from = self
            .emitted_frames
            .saturating_sub(self.geometry.upsampler_context_frames);
        if keep_features_from > self.features_start {
            let drop = keep_features_from - self.features_start;
            self.features.drain(..drop * self.geometry.lstm_width);
            self.features_start = keep_features_from;
        }
        // The front end reads back `conv_context_frames` before its next frame; a stream
        // shorter than that reflects from its start, so keep those while it is short.
        let keep_codes_from = self.featured_frames.saturating_sub(self.geometry.conv_context_frames);
        if keep_codes_from > self.codes_start + 2 * self.geometry.conv_context_frames {
            let drop = keep_codes_from - self.codes_start;
            for row in &mut self.codes {
                row.drain(..drop);
            }
            self.codes_start = keep_codes_from;
        }
    }
}

/// Encodec encoding of audio to codes, for continuing a piece of audio.
pub struct AudioEncoder {
    session: Session,
    /// Codebooks per channel.
    num_codebooks: usize,
    channels: usize,
    samples_per_frame: usize,
    sample_rate_hz: u32,
}

impl AudioEncoder {
    pub(crate) fn load(bundle: &Bundle, runtime: &Runtime, threads: usize) -> Result<Self, CodecError> {
        let manifest = bundle.manifest();
        Ok(Self {
            session: bundle.session(runtime, Graph::CodecEncoder, threads)?,
            num_codebooks: manifest.codebooks_per_channel(),
            channels: manifest.audio_channels,
            samples_per_frame: manifest.samples_per_frame,
            sample_rate_hz: manifest.sample_rate_hz,
        })
    }

    /// Codes `[K, F]` of `input` (one slice per channel, of equal lengths) at `rate_hz`,
    /// resampled to the bundle's rate first; a last partial frame is dropped. A mono model
    /// encodes the channels' mix; a stereo model the first two channels as its left and
    /// right, and a mono input as both (the sound placed in the middle).
    pub(crate) fn encode_at(&mut self, input: &[&[f32]], rate_hz: f64) -> Result<CodeGrid, CodecError> {
        let encoded = match input {
            [] => {
                return Err(CodecError::TooShort {
                    samples: 0,
                    samples_per_frame: self.samples_per_frame,
                });
            }
            [mono] => vec![self.encode_channel_at(mono, rate_hz)?],
            [left, right, ..] if self.channels == 2 => vec![
                self.encode_channel_at(left, rate_hz)?,
                self.encode_channel_at(right, rate_hz)?,
            ],
            several => {
                let length = several.iter().map(|channel| channel.len()).min().unwrap_or(0);
                let mix: Vec<f32> = (0..length)
                    .map(|i| several.iter().map(|channel| channel[i]).sum::<f32>() / several.len() as f32)
                    .collect();
                vec![self.encode_channel_at(&mix, rate_hz)?]
            }
        };
        let frames = encoded.iter().map(CodeGrid::num_timesteps).min().unwrap_or(0);
        let rows = self.num_codebooks * self.channels;
        // A stereo frame's codebooks: left and right in turn.
        let codes = (0..rows)
            .flat_map(|k| {
                let grid = &encoded[(k % self.channels).min(encoded.len() - 1)];
                grid.codebook(k / self.channels)[..frames].iter().copied()
            })
            .collect();
        Ok(CodeGrid::new(rows, frames, codes).expect("K * channels rows of F"))
    }

    /// One channel's codes, resampled to the bundle's rate first.
    fn encode_channel_at(&mut self, samples: &[f32], rate_hz: f64) -> Result<CodeGrid, CodecError> {
        if rate_hz == f64::from(self.sample_rate_hz) {
            return self.encode_channel(samples);
        }
        let target_hz = f64::from(self.sample_rate_hz);
        let expected = (samples.len() as f64 * target_hz / rate_hz) as usize;
        let resampled = resample_whole(samples, rate_hz, target_hz, expected)?;
        self.encode_channel(&resampled)
    }

    /// Codes `[K, F]` of one channel's `samples` at the bundle's sample rate.
    fn encode_channel(&mut self, samples: &[f32]) -> Result<CodeGrid, CodecError> {
        let frames = samples.len() / self.samples_per_frame;
        let run_error = |source| CodecError::Run {
            first: 0,
            end: frames,
            source,
        };
        if frames == 0 {
            return Err(CodecError::TooShort {
                samples: samples.len(),
                samples_per_frame: self.samples_per_frame,
            });
        }
        let audio = &samples[..frames * self.samples_per_frame];
        let input = TensorRef::from_array_view(([1usize, 1, audio.len()], audio)).map_err(run_error)?;
        let outputs = self
            .session
            .run(ort::inputs!["input_values" => input])
            .map_err(run_error)?;
        let (shape, codes) = outputs["audio_codes"].try_extract_tensor::<i64>().map_err(run_error)?;
        // `[1, K, F]`: F may differ from `frames` by the encoder's own rounding.
        let encoded_frames = *shape.last().expect("audio_codes has a frame axis") as usize;
        let codes = codes.iter().map(|&c| c as u32).collect();
        Ok(CodeGrid::new(self.num_codebooks, encoded_frames, codes).expect("the graph returns [1, K, F]"))
    }
}
