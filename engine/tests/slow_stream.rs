//! A stream slower than real time (the tiny bundle with a delay on every decoder step, at
//! about half of real time), pulled at real-time pace as an audio device pulls it:
//! playback waits until its buffer will last, then plays without gaps; it never stutters
//! on and off.
//!
//! Alone in its test binary, so that the clock runs without other tests' load.

mod common;

use std::time::{Duration, Instant};

use common::start;
use musicgen_engine::{Readiness, Stream, StreamConfig};

const RATE_HZ: u32 = 32_000;
/// 10 ms blocks.
const BLOCK: usize = 320;
/// With the tiny model's own step time this runs at about half of real time.
const STEP_DELAY: Duration = Duration::from_millis(40);

fn slow_config(seconds: Option<f64>) -> StreamConfig {
    let mut config = StreamConfig::new("warm lo-fi piano");
    config.seconds = seconds;
    config.output_rate_hz = f64::from(RATE_HZ);
    config.step_delay = STEP_DELAY;
    config
}

/// What one real-time callback got: real samples, and whether audio was queued while it
/// played silence.
struct Block {
    got: usize,
    queued_while_silent: bool,
}

/// Pulls 10 ms blocks at real-time pace for `seconds` or until the stream has played out.
fn pull_in_real_time(stream: &Stream, consumer: &mut musicgen_engine::PlaybackConsumer, seconds: f64) -> Vec<Block> {
    let period = Duration::from_secs_f64(BLOCK as f64 / f64::from(RATE_HZ));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    let mut blocks = Vec::new();
    let mut out = [0.0f32; BLOCK];
    let mut next = Instant::now();
    let mut waits_seen = 0;
    for _ in 0..(seconds / 0.01) as usize {
        assert!(Instant::now() < deadline, "the test ran past its deadline");
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += period;
        let queued = consumer.buffered();
        if let Readiness::Waiting {
            ready_in_seconds: Some(_),
        } = stream.readiness()
        {
            waits_seen += 1;
        }
        let got = consumer.pop(&mut out);
        blocks.push(Block {
            got,
            queued_while_silent: got == 0 && queued > 0,
        });
        if stream.status().is_finished() && consumer.buffered() == 0 && got < BLOCK {
            break;
        }
    }
    assert_eq!(stream.status().error(), None);
    assert!(waits_seen > 0, "the stream never said how long the wait is");
    blocks
}

#[test]
fn a_finite_slow_stream_waits_then_plays_to_its_end_without_a_gap() {
    let (stream, mut consumer) = start(slow_config(Some(3.0))).unwrap();
    let blocks = pull_in_real_time(&stream, &mut consumer, 20.0);
    let first = blocks.iter().position(|b| b.got > 0).expect("playback started");
    assert!(
        blocks[..first].iter().any(|b| b.queued_while_silent),
        "playback held back while audio was already queued"
    );
    let last = blocks.iter().rposition(|b| b.got > 0).unwrap();
    let gaps = blocks[first..last].iter().filter(|b| b.got < BLOCK).count();
    assert_eq!(
        gaps, 0,
        "{gaps} short blocks between the start at {first} and the end at {last}"
    );
    let played: usize = blocks.iter().map(|b| b.got).sum();
    assert_eq!(played, 3 * RATE_HZ as usize, "every sample played");
    println!(
        "delivery x{:.2}: waited {:.2} s, then played 3 s without a gap",
        stream.status().delivery_factor(),
        first as f64 * 0.01
    );
}

#[test]
fn an_endless_slow_stream_plays_in_stretches_of_its_buffer_ahead_never_chattering() {
    let mut config = slow_config(None);
    config.buffer_ahead_seconds = Some(1.5);
    let (stream, mut consumer) = start(config).unwrap();
    let blocks = pull_in_real_time(&stream, &mut consumer, 10.0);
    // Stretches of uninterrupted audio, the last one cut by the end of the test.
    let mut stretches = Vec::new();
    let mut current = 0usize;
    for block in &blocks {
        if block.got == BLOCK {
            current += 1;
        } else if current > 0 {
            stretches.push(current);
            current = 0;
        }
    }
    assert!(!stretches.is_empty(), "a full stretch played: {current} blocks running");
    for &blocks in &stretches {
        let seconds = blocks as f64 * 0.01;
        assert!(
            seconds >= 1.0,
            "a stretch of {seconds:.2} s: playback resumed before its buffer would last ({stretches:?})"
        );
    }
    println!(
        "delivery x{:.2}: stretches of {:?} s",
        stream.status().delivery_factor(),
        stretches.iter().map(|&b| b as f64 * 0.01).collect::<Vec<_>>()
    );
}
