//! `musicgen play`: a WAV file on the default output device, through the engine's playback
//! ring buffer, so the callback is the same one the plugin runs.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use musicgen_engine::{StreamResampler, playback_channel};

use crate::wav;

pub fn play(file: &Path) -> Result<()> {
    let host = cpal::default_host();
    let device_and_config = host
        .default_output_device()
        .ok_or_else(|| "no default output device".to_owned())
        .and_then(|device| {
            let config = device.default_output_config().map_err(|e| e.to_string())?;
            Ok((device, config))
        });
    let (device, config) = match device_and_config {
        Ok(found) => found,
        Err(reason) => {
            println!(
                "no audio output device ({} host: {reason}); nothing played. The audio is in {}; \
                 `musicgen render` writes WAV files without a device.",
                host.id().name(),
                file.display()
            );
            return Ok(());
        }
    };
    let rate_hz = config.sample_rate();
    let channels = usize::from(config.channels());

    let wav = wav::read(file)?;
    let mut resampled = Vec::new();
    let mut resampler = StreamResampler::new(f64::from(wav.sample_rate_hz), f64::from(rate_hz), 1)?;
    resampler.process(&wav.mono(), &mut resampled);
    resampler.flush(&mut resampled);

    let (mut producer, mut consumer) = playback_channel(resampled.len(), 1);
    producer.push(&resampled);
    let mut scratch = vec![0.0f32; 16_384];
    let stream = device.build_output_stream(
        config.config(),
        move |out: &mut [f32], _| {
            for block in out.chunks_mut(scratch.len() * channels) {
                let frames = block.len() / channels;
                consumer.pop(&mut scratch[..frames]);
                for (frame, &s) in block.chunks_mut(channels).zip(&scratch[..frames]) {
                    frame.fill(s);
                }
            }
        },
        |error| eprintln!("audio output error: {error}"),
        None,
    )?;
    stream.play()?;
    println!("playing {} on the default output ({rate_hz} Hz)", file.display());
    std::thread::sleep(Duration::from_secs_f64(
        resampled.len() as f64 / f64::from(rate_hz) + 0.2,
    ));
    Ok(())
}
