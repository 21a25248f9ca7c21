//! `musicgen-live`: the instrument as a standalone app (nice-plug's standalone wrapper).
//!
//! Without an audio output device it says so and names `musicgen render`, which writes
//! the same streaming path to a WAV file. `--backend dummy` runs without audio anyway (for
//! trying the editor).

use cpal::traits::{DeviceTrait, HostTrait};
use musicgen_plugin::MusicGenLive;
use nice_plug::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dummy =
        args.windows(2).any(|w| w[0] == "--backend" && w[1] == "dummy") || args.iter().any(|a| a == "--backend=dummy");
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if !dummy
        && !help
        && let Err(reason) = output_device()
    {
        eprintln!(
            "musicgen-live: no audio output device ({reason}).\n\
             To render to a file instead: musicgen render --prompt \"...\" --seconds 10 --out music.wav\n\
             To open the editor without audio: musicgen-live --backend dummy"
        );
        std::process::exit(1);
    }
    nice_export_standalone::<MusicGenLive>();
}

fn output_device() -> Result<(), String> {
    let host = cpal::default_host();
    let device = host
        .default_output_device()
        .ok_or_else(|| format!("{} reports no default output", host.id().name()))?;
    device.default_output_config().map(|_| ()).map_err(|e| e.to_string())
}
