//! What can go wrong in the plugin, in the plugin's words (its fields and buttons) around
//! the engine's (which speak of the bundle and its files).

use std::path::PathBuf;

use musicgen_engine::{ModelError, ResampleError, StreamError};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("the Model folder {} did not load: {source}; choose a bundle folder", folder.display())]
    ModelLoad {
        folder: PathBuf,
        #[source]
        source: Box<ModelError>,
    },
    #[error("the stream did not start: {0}")]
    Stream(#[source] Box<StreamError>),
    #[error("the stream stopped: {0}")]
    Stopped(String),
    #[error("the host's sample rate: {0}")]
    Rate(#[from] ResampleError),
    #[error("the sidechain could not be encoded: {0}")]
    Encode(#[source] Box<ModelError>),
    #[error("set Kept context above 0 s: it is how much of the sidechain the music continues")]
    NoKeptContext,
    #[error(
        "the sidechain has been silent (RMS {rms:.1e} over {seconds:.1} s): route audio to the plugin's sidechain input and play it"
    )]
    SilentSidechain { rms: f32, seconds: f64 },
    #[error("no model is loaded yet: play a note or press Generate first")]
    NoModelYet,
}

impl From<StreamError> for PluginError {
    fn from(error: StreamError) -> Self {
        Self::Stream(Box::new(error))
    }
}
