//! MusicGen Live's engine: everything between a prompt and audio samples, with no
//! dependency on the plugin, its host API or its GUI.
//!
//! A [`Model`] is loaded once ([`ModelOptions`]: the bundle folder, the ONNX Runtime
//! library, the provider) and shared; [`Stream::start`] plays it with a [`StreamConfig`]
//! and returns the [`PlaybackConsumer`] the audio callback reads.
//!
//! Inside, the path of a stream: `conditioning` turns the prompt (and a melody model's
//! melody, from `chroma`) into the decoder's condition, `generator` walks the bundle's
//! `pattern` through the `decoder` and the `sampler`, `window` slides the context, `codec`
//! decodes complete frames, `resample` converts to the output rate, and `playback` hands
//! the samples to the audio thread.
//! `stream` runs all of it on its own threads; `bundle` and `runtime` load what it needs.

mod bundle;
mod chroma;
mod codec;
mod conditioning;
mod cuda;
mod dc_blocker;
mod decoder;
mod generator;
mod kernels;
mod model;
mod pattern;
mod playback;
mod resample;
mod runtime;
mod sampler;
mod seam;
mod stream;
mod window;

pub use bundle::{Bundle, BundleError, Channels, Conditioning, Family, Manifest, MelodySpec, Size, find_tiny_bundle};
pub use chroma::{ChromaError, ChromaExtractor, Melody};
pub use codec::{CodecError, CodecWindow, StreamingCodec};
pub use conditioning::{Condition, ConditioningError};
pub use cuda::CudaReadiness;
pub use decoder::{Decoder, DecoderError, KvCache};
pub use model::{Model, ModelError, ModelOptions};
pub use pattern::{CodeGrid, Coord, Delays, Pattern, PatternError, PatternKind};
pub use playback::{PlaybackConsumer, PlaybackProducer, PlaybackStats, playback_channel};
pub use resample::{ResampleError, SUPPORTED_RATES_HZ, StreamResampler, is_supported_rate};
pub use runtime::{ExecutionProvider, Runtime, RuntimeError, library_file_name};
pub use sampler::{SamplingError, SamplingSettings};
pub use seam::{SeamMeasure, measure_seams};
pub use stream::{
    Command, DEFAULT_BUFFER_AHEAD_SECONDS, DEFAULT_KEEP_SECONDS, DEFAULT_WINDOW_SECONDS, InjectedPanic, RECENT_FRAMES,
    Readiness, Stream, StreamConfig, StreamError, StreamStatus, StreamThread,
};
