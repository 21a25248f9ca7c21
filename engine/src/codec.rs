//! Encodec decoding of a stream of frames, window by window.
//!
//! The codec decoder is convolutional with a recurrent core, so a frame's audio depends
//! on frames around it. [`StreamingCodec`] decodes each new chunk of frames together with
//! [`CodecWindow::left_frames`] before it and [`CodecWindow::right_frames`] after it, keeps
//! only the chunk's samples, and crossfades the seam with the previous window's
//! prediction of the same samples. With enough context the stream matches an offline
//! decode of all frames closely (the golden test states the SNR).
//!
//! [`AudioEncoder`] goes the other way, for continuing given audio.

use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;
use parking_lot::Mutex;

use crate::bundle::{Bundle, BundleError, Graph};
use crate::pattern::CodeGrid;
use crate::resample::{ResampleError, StreamResampler};
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

/// The shortest window the codec graph decodes.
const MIN_WINDOW_FRAMES: usize = 8;

/// How much context each window carries, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecWindow {
    /// New frames decoded per window.
    pub chunk_frames: usize,
    /// Frames before the chunk, for the recurrent state and the left side of the kernels.
    pub left_frames: usize,
    /// Frames after the chunk; each adds a frame of latency.
    pub right_frames: usize,
    /// Samples crossfaded at each seam; at most one frame.
    pub crossfade_samples: usize,
    /// New frames in the first window; later windows double until `chunk_frames`, so
    /// the first audio comes after a few frames instead of a whole chunk.
    pub first_chunk_frames: usize,
}

/// Chunks of 10 with 10 frames of left context decode each frame 2.2 times instead of
/// 6.4 (chunks of 5 with 25): on musicgen-small's codec 13.6 instead of 29.6 ms per frame.
/// Against transformers' offline decode of the tiny bundle's golden codes the stream
/// measures 63.7 dB (60.4 dB with 5 and 25): the right context matters more than the
/// left (4 frames on the right reach 106 dB, for 40 ms more latency).
impl Default for CodecWindow {
    fn default() -> Self {
        Self {
            chunk_frames: 10,
            left_frames: 10,
            right_frames: 2,
            crossfade_samples: 128,
            first_chunk_frames: 2,
        }
    }
}

pub struct StreamingCodec {
    /// Shared by the forks of one stream (one codec thread uses them in turn).
    session: Arc<Mutex<Session>>,
    window: CodecWindow,
    num_codebooks: usize,
    samples_per_frame: usize,
    /// Codebook-major codes of every frame received: `codes[k][t]`.
    codes: Vec<Vec<i64>>,
    /// Frames whose audio has been emitted (up to the pending crossfade).
    emitted_frames: usize,
    /// Leading frames given as context only.
    context_frames: usize,
    /// The previous window's audio for the first samples of the next chunk.
    seam: Vec<f32>,
    window_codes: Vec<i64>,
}

impl StreamingCodec {
    pub fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
        window: CodecWindow,
    ) -> Result<Self, CodecError> {
        let manifest = bundle.manifest();
        let (session, _) = bundle.session_on(runtime, Graph::CodecDecoder, threads, provider)?;
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
            window: CodecWindow {
                crossfade_samples: window.crossfade_samples.min(manifest.samples_per_frame),
                ..window
            },
            num_codebooks: manifest.num_codebooks,
            samples_per_frame: manifest.samples_per_frame,
            codes: vec![Vec::new(); manifest.num_codebooks],
            emitted_frames: 0,
            context_frames: 0,
            seam: Vec::new(),
            window_codes: Vec::new(),
        })
    }

    pub fn window(&self) -> CodecWindow {
        self.window
    }

    /// A copy of this stream's state on the same session: the same frames so far, decoded
    /// on from here independently (to crossfade two continuations of one stream).
    pub fn fork(&self) -> Self {
        Self {
            session: Arc::clone(&self.session),
            window: self.window,
            num_codebooks: self.num_codebooks,
            samples_per_frame: self.samples_per_frame,
            codes: self.codes.clone(),
            emitted_frames: self.emitted_frames,
            context_frames: self.context_frames,
            seam: self.seam.clone(),
            window_codes: Vec::new(),
        }
    }

    /// Frames whose audio has been emitted: the next sample emitted is frame
    /// `emitted_frames()`'s first.
    pub fn emitted_frames(&self) -> usize {
        self.emitted_frames
    }

    /// Latency the windowing adds between a frame's completion and its audio, in frames.
    pub fn latency_frames(&self) -> usize {
        self.window.chunk_frames + self.window.right_frames
    }

    /// Starts a new stream: forgets every frame.
    pub fn reset(&mut self) {
        self.codes.iter_mut().for_each(Vec::clear);
        self.emitted_frames = 0;
        self.context_frames = 0;
        self.seam.clear();
    }

    pub fn frames_received(&self) -> usize {
        self.codes[0].len()
    }

    /// Adds a frame that has already been heard: later windows take it as left context,
    /// but it is not decoded itself. Only before the first frame to decode.
    pub fn push_context_frame(&mut self, frame: &[u32]) {
        debug_assert_eq!(
            self.emitted_frames,
            self.frames_received(),
            "context comes before new frames"
        );
        self.push_frame(frame);
        self.emitted_frames = self.frames_received();
        self.context_frames = self.frames_received();
    }

    /// Adds one frame's codes (K values).
    pub fn push_frame(&mut self, frame: &[u32]) {
        for (row, &code) in self.codes.iter_mut().zip(frame) {
            row.push(i64::from(code));
        }
    }

    /// Decodes every chunk that has its right context and appends its samples to `out`.
    pub fn decode_ready(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        loop {
            let end = self.emitted_frames + self.next_chunk_frames();
            if self.frames_received() < end + self.window.right_frames {
                return Ok(());
            }
            self.decode_chunk(end, out)?;
        }
    }

    /// The size of the next chunk: the first chunk's, doubled per chunk emitted so far,
    /// up to the steady chunk.
    fn next_chunk_frames(&self) -> usize {
        let steady = self.window.chunk_frames.max(1);
        let mut chunk = self.window.first_chunk_frames.clamp(1, steady);
        let mut emitted = 0;
        while emitted < self.emitted_frames - self.context_frames && chunk < steady {
            emitted += chunk;
            chunk = (chunk * 2).min(steady);
        }
        chunk
    }

    /// Decodes what is left at the end of a stream and appends it to `out`.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), CodecError> {
        while self.emitted_frames < self.frames_received() {
            let end = (self.emitted_frames + self.next_chunk_frames()).min(self.frames_received());
            self.decode_chunk(end, out)?;
        }
        Ok(())
    }

    /// Emits the audio of frames `emitted_frames..end`, holding back the crossfade tail
    /// when more frames follow.
    fn decode_chunk(&mut self, end: usize, out: &mut Vec<f32>) -> Result<(), CodecError> {
        let first = self.emitted_frames;
        let window_start = first.saturating_sub(self.window.left_frames);
        let window_end = (end + self.window.right_frames).min(self.frames_received());
        // Encodec's reflection padding needs a few frames; a shorter stream is padded
        // with its last frame, whose audio is dropped.
        let width = (window_end - window_start).max(MIN_WINDOW_FRAMES);
        self.window_codes.clear();
        for row in &self.codes {
            let real = &row[window_start..window_end];
            self.window_codes.extend_from_slice(real);
            let last = real[real.len() - 1];
            self.window_codes.extend(std::iter::repeat_n(last, width - real.len()));
        }
        let run_error = |source| CodecError::Run { first, end, source };
        let codes = TensorRef::from_array_view(([1usize, self.num_codebooks, width], &self.window_codes[..]))
            .map_err(run_error)?;
        let mut session = self.session.lock();
        let outputs = session.run(ort::inputs!["audio_codes" => codes]).map_err(run_error)?;
        let (_, audio) = outputs["audio_values"].try_extract_tensor::<f32>().map_err(run_error)?;

        let spf = self.samples_per_frame;
        let chunk_start = (first - window_start) * spf;
        let chunk_end = (end - window_start) * spf;
        let fade = self.seam.len();
        for (i, (&new, old)) in audio[chunk_start..chunk_start + fade]
            .iter()
            .zip(&self.seam)
            .enumerate()
        {
            let w = (i + 1) as f32 / (fade + 1) as f32;
            out.push(old * (1.0 - w) + new * w);
        }
        self.seam.clear();
        let more_follow = window_end > end;
        let tail = if more_follow {
            self.window.crossfade_samples.min(audio.len() - chunk_end)
        } else {
            0
        };
        out.extend_from_slice(&audio[chunk_start + fade..chunk_end]);
        // The next chunk starts with a crossfade from this window's view of its first samples.
        self.seam.extend_from_slice(&audio[chunk_end..chunk_end + tail]);
        self.emitted_frames = end;
        Ok(())
    }
}

/// Encodec encoding of audio to codes, for continuing a piece of audio.
pub struct AudioEncoder {
    session: Session,
    num_codebooks: usize,
    samples_per_frame: usize,
    sample_rate_hz: u32,
}

impl AudioEncoder {
    pub fn load(bundle: &Bundle, runtime: &Runtime, threads: usize) -> Result<Self, CodecError> {
        let manifest = bundle.manifest();
        Ok(Self {
            session: bundle.session(runtime, Graph::CodecEncoder, threads)?,
            num_codebooks: manifest.num_codebooks,
            samples_per_frame: manifest.samples_per_frame,
            sample_rate_hz: manifest.sample_rate_hz,
        })
    }

    /// Codes of mono `samples` at `rate_hz`, resampled to the bundle's rate first.
    pub fn encode_at(&mut self, samples: &[f32], rate_hz: u32) -> Result<CodeGrid, CodecError> {
        if rate_hz == self.sample_rate_hz {
            return self.encode(samples);
        }
        let mut resampler = StreamResampler::new(rate_hz, self.sample_rate_hz)?;
        let mut resampled = Vec::new();
        resampler.process(samples, &mut resampled);
        resampler.flush(&mut resampled);
        let expected = (samples.len() as u64 * u64::from(self.sample_rate_hz) / u64::from(rate_hz)) as usize;
        let delay = resampler.delay_frames().min(resampled.len());
        resampled.drain(..delay);
        resampled.truncate(expected);
        self.encode(&resampled)
    }

    /// Codes `[K, F]` of mono `samples` at the bundle's sample rate; a last partial frame
    /// is dropped.
    pub fn encode(&mut self, samples: &[f32]) -> Result<CodeGrid, CodecError> {
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
