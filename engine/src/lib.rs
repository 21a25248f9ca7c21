//! MusicGen Live's engine: everything between a prompt and audio samples, with no
//! dependency on the plugin, its host API or its GUI.
//!
//! The path of a stream: [`conditioning`] turns the prompt into cross-attention inputs,
//! [`generator`] walks the bundle's [`pattern`] through the [`decoder`] and the
//! [`sampler`], [`codec`] decodes complete frames window by window, [`resample`] converts
//! to the output rate, and [`playback`] hands the samples to the audio thread. [`stream`]
//! runs all of it on its own threads; [`bundle`] and [`runtime`] load what it needs.

pub mod bundle;
pub mod codec;
pub mod conditioning;
pub mod dc_blocker;
pub mod decoder;
pub mod generator;
pub mod model;
pub mod pattern;
pub mod playback;
pub mod resample;
pub mod runtime;
pub mod sampler;
pub mod seam;
pub mod stream;
pub mod window;
