//! Two minutes of audio on the tiny bundle, pulled at real-time pace as an audio device
//! pulls it, with a new prompt every 15 s: the context window slides again and again, and
//! playback never runs dry after its first fill. Prints how each seam measures.
//!
//! Alone in its test binary, so that no other test competes for the cores while the
//! clock runs.

mod common;

use std::time::{Duration, Instant};

use common::start;
use musicgen_engine::{Command, StreamConfig, StreamResampler, measure_seams};

const RATE_HZ: u32 = 48_000;
const BLOCK: usize = 512;
const SECONDS: f64 = 120.0;
const PROMPT_EVERY_S: f64 = 15.0;
const PROMPTS: [&str; 4] = [
    "warm lo-fi piano",
    "fast techno with heavy bass",
    "warm lo-fi piano with soft drums",
    "soft drums",
];

#[test]
fn two_minutes_at_real_time_pace_with_a_new_prompt_every_15_s_never_underrun() {
    let mut config = StreamConfig::new(PROMPTS[0]);
    config.seconds = Some(SECONDS);
    config.output_rate_hz = f64::from(RATE_HZ);
    config.window_seconds = 10.0;
    config.keep_seconds = 4.0;
    let buffer_samples = (config.buffer_seconds * f64::from(RATE_HZ)) as usize;
    let (stream, mut consumer) = start(config).unwrap();

    // The first fill, as the plugin has it before the first note.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.buffered() < buffer_samples * 3 / 4 {
        assert!(
            Instant::now() < deadline,
            "the buffer did not fill: {:?}",
            stream.status().error()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let total = (SECONDS * f64::from(RATE_HZ)) as usize;
    let period = Duration::from_secs_f64(BLOCK as f64 / f64::from(RATE_HZ));
    let prompt_every = (PROMPT_EVERY_S * f64::from(RATE_HZ)) as usize;
    let mut audio = Vec::with_capacity(total + BLOCK);
    let mut block = [0.0f32; BLOCK];
    let mut next_callback = Instant::now();
    while audio.len() < total {
        std::thread::sleep(next_callback.saturating_duration_since(Instant::now()));
        next_callback += period;
        let before = audio.len();
        consumer.pop(&mut block);
        audio.extend_from_slice(&block);
        if before / prompt_every != audio.len() / prompt_every {
            let change = audio.len() / prompt_every;
            stream.send(Command::SetPrompt(PROMPTS[change % PROMPTS.len()].into()));
        }
    }
    assert_eq!(stream.status().error(), None);
    assert_eq!(
        stream.playback().underruns(),
        0,
        "playback ran dry ({} silent samples) at {:.1} steps/s",
        stream.playback().silent_samples(),
        stream.status().steps_per_second()
    );

    // Windows of 500 frames keeping 200: a slide every 300 frames from frame 500 on.
    let seams = stream.status().seams();
    let expected: Vec<usize> = (500..6000).step_by(300).collect();
    assert_eq!(seams, expected);
    let offset = StreamResampler::new(32_000.0, f64::from(RATE_HZ), 1)
        .unwrap()
        .delay_frames();
    let measured = measure_seams(&audio, RATE_HZ, 50.0, offset, &seams);
    assert_eq!(measured.len(), seams.len());
    println!("seam frame   jump ratio   flux ratio");
    for seam in &measured {
        println!("{:>10} {:>12.2} {:>12.2}", seam.frame, seam.jump_ratio, seam.flux_ratio);
    }
    for seam in &measured {
        assert!(
            seam.jump_ratio < 8.0 && seam.flux_ratio < 4.0,
            "the slide at frame {} stands out: {seam:?}",
            seam.frame
        );
    }
}
