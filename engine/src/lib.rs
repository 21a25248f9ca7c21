//! MusicGen Live's engine: everything between a prompt and audio samples, with no
//! dependency on the plugin, its host API or its GUI.

pub mod pattern;
pub mod playback;
pub mod resample;
pub mod runtime;
pub mod sampler;
