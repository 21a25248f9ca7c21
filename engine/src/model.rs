//! A loaded model: the bundle, the tokenizer and ONNX Runtime's session of every graph,
//! loaded once and shared (`Arc<Model>`) by every stream that plays it.
//!
//! Loading is the slow part (seconds and most of the memory for real weights); a stream
//! only adds its caches, its codec state and its threads. Graphs that run per call take
//! turns on their session, so streams of one model may overlap (a continuation filling
//! its buffer while the stream it replaces still plays).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::bundle::{Bundle, BundleError, Manifest};
use crate::chroma::{ChromaExtractor, Melody};
use crate::codec::{AudioEncoder, CodecError, CodecGraphs, CodecWindow, StreamingCodec};
use crate::conditioning::{Condition, Conditioner, ConditioningError};
use crate::decoder::{Decoder, DecoderError, DecoderGraph};
use crate::pattern::{CodeGrid, Pattern, PatternKind};
use crate::runtime::{ExecutionProvider, Runtime, RuntimeError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Conditioning(#[from] ConditioningError),
    #[error(transparent)]
    Decoder(#[from] DecoderError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Which model to load and how to run it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelOptions {
    /// The bundle folder (`musicgen.json` and its graphs).
    pub model_dir: PathBuf,
    /// The ONNX Runtime library; `None` searches the usual places (see `runtime`).
    pub ort_library: Option<PathBuf>,
    pub provider: ExecutionProvider,
    /// Intra-op threads of the text encoder and the decoder.
    pub decoder_threads: usize,
    /// Intra-op threads of the codec graphs, which run on the stream's codec thread.
    pub codec_threads: usize,
}

impl ModelOptions {
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            model_dir: model_dir.into(),
            ort_library: None,
            provider: ExecutionProvider::Auto,
            // Every core: on 2 cores, 2 decoder threads beside the codec thread stream
            // faster than 1 (`musicgen bench`, see BENCHMARKS.md), though they share a core.
            decoder_threads: cores,
            codec_threads: 1,
        }
    }
}

/// Everything a stream needs that does not change while it plays.
pub struct Model {
    runtime: &'static Runtime,
    bundle: Bundle,
    conditioner: Mutex<Conditioner>,
    decoder: Arc<DecoderGraph>,
    codec: Arc<CodecGraphs>,
    /// Loaded on the first continuation: most streams never encode audio.
    encoder: Mutex<Option<AudioEncoder>>,
}

impl Model {
    /// Loads the bundle's graphs and runs each once, so that the first stream starts at
    /// full speed (a first run pages the weights in and sizes ONNX Runtime's buffers).
    pub fn load(options: ModelOptions) -> Result<Self, ModelError> {
        let runtime = Runtime::init(options.ort_library.as_deref())?;
        let bundle = Bundle::open(&options.model_dir)?;
        let threads = options.decoder_threads.max(1);
        let mut conditioner = Conditioner::load(&bundle, runtime, threads, options.provider)?;
        let decoder = Arc::new(DecoderGraph::load(&bundle, runtime, threads, options.provider)?);
        let codec = Arc::new(CodecGraphs::load(
            &bundle,
            runtime,
            options.codec_threads.max(1),
            options.provider,
        )?);
        let warm_up = conditioner.encode("", None)?;
        Decoder::new(Arc::clone(&decoder))?.warm_up(&warm_up)?;
        StreamingCodec::new(Arc::clone(&codec), CodecWindow::default()).warm_up()?;
        Ok(Self {
            runtime,
            bundle,
            conditioner: Mutex::new(conditioner),
            decoder,
            codec,
            encoder: Mutex::new(None),
        })
    }

    pub fn dir(&self) -> &Path {
        self.bundle.dir()
    }

    pub fn manifest(&self) -> &Manifest {
        self.bundle.manifest()
    }

    pub(crate) fn pattern_kind(&self) -> &PatternKind {
        self.bundle.pattern_kind()
    }

    /// The model's codebook pattern over `num_frames` frames.
    pub fn pattern(&self, num_frames: usize) -> Pattern {
        self.bundle.pattern(num_frames)
    }

    /// The execution provider the decoder runs on (and why, after a fallback).
    pub fn execution_provider(&self) -> &str {
        self.decoder.provider_in_use()
    }

    /// Codes of `input` (one slice per channel) at `rate_hz`, to continue them: a mono
    /// model hears the channels' mix, a stereo model the first two as left and right.
    pub fn encode_audio(&self, input: &[&[f32]], rate_hz: f64) -> Result<CodeGrid, ModelError> {
        let mut encoder = self.encoder.lock();
        if encoder.is_none() {
            *encoder = Some(AudioEncoder::load(&self.bundle, self.runtime, 1)?);
        }
        let encoder = encoder.as_mut().expect("loaded above");
        Ok(encoder.encode_at(input, rate_hz)?)
    }

    /// What the decoder is conditioned on for `prompt` (a melody model: with no melody).
    pub fn condition(&self, prompt: &str) -> Result<Condition, ConditioningError> {
        self.conditioner.lock().encode(prompt, None)
    }

    /// What the decoder is conditioned on for `prompt` and `melody`; a melody needs a
    /// melody model.
    pub fn condition_with_melody(&self, prompt: &str, melody: Option<&Melody>) -> Result<Condition, ConditioningError> {
        self.conditioner.lock().encode(prompt, melody)
    }

    /// The chroma extractor of a melody model (none for a text-conditioned one).
    pub fn chroma_extractor(&self) -> Option<ChromaExtractor> {
        self.bundle.manifest().melody.map(ChromaExtractor::new)
    }

    /// A stream's own handle on the decoder.
    pub fn decoder(&self) -> Result<Decoder, DecoderError> {
        Decoder::new(Arc::clone(&self.decoder))
    }

    /// A stream's own decoding state on the codec graphs.
    pub fn streaming_codec(&self, window: CodecWindow) -> StreamingCodec {
        StreamingCodec::new(Arc::clone(&self.codec), window)
    }
}
