//! An endless stream's memory is bounded: an hour of audio on the tiny model, pulled as
//! fast as it comes, and the bytes the engine holds (counted by this binary's allocator)
//! stop growing once the first windows have slid.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::start;
use musicgen_engine::{Command, StreamConfig};

/// Counts the bytes allocated and not yet freed, by every thread of this process.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RATE_HZ: u32 = 32_000;
const PROMPTS: [&str; 2] = ["warm lo-fi piano", "fast techno with heavy bass"];

#[test]
fn an_hour_of_endless_stream_holds_no_more_memory_than_its_first_minutes() {
    let minutes: u64 = std::env::var("MUSICGEN_BOUNDED_MINUTES").map_or(60, |m| m.parse().unwrap());
    let warm_up_minutes = 5.min(minutes / 2);
    let mut config = StreamConfig::new(PROMPTS[0]);
    config.seconds = None;
    config.output_rate_hz = f64::from(RATE_HZ);
    let (stream, mut consumer) = start(config).unwrap();

    let per_minute = u64::from(RATE_HZ) * 60;
    let deadline = Instant::now() + Duration::from_secs(40 * 60);
    let mut block = vec![0.0f32; 8192];
    let mut pulled = 0u64;
    let mut after_warm_up = None;
    let mut most_since = 0isize;
    while pulled < minutes * per_minute {
        assert!(Instant::now() < deadline, "the stream stalled at {pulled} samples");
        assert_eq!(stream.status().error(), None);
        let got = consumer.pop(&mut block[..consumer.buffered().min(8192)]);
        if got == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let minute_before = pulled / per_minute;
        pulled += got as u64;
        if pulled / per_minute == minute_before {
            continue;
        }
        // Each minute: a new prompt (the conditioning is replaced, not added to), and the
        // bytes held.
        let minute = pulled / per_minute;
        stream.send(Command::SetPrompt(PROMPTS[minute as usize % 2].into()));
        let live = LIVE_BYTES.load(Ordering::Relaxed);
        eprintln!("{minute:>3} min of audio: {:.2} MB allocated", live as f64 / 1e6);
        match after_warm_up {
            None if minute >= warm_up_minutes => after_warm_up = Some(live),
            Some(_) => most_since = most_since.max(live),
            None => {}
        }
    }
    let after_warm_up = after_warm_up.expect("the stream ran past its warm-up");
    let seams = stream.status().seams();
    assert!(seams.len() >= 2, "the window slid: {seams:?}");
    // An hour of codes alone is 2.9 MB (180,000 frames of 4 codes): growth would show.
    let growth = most_since - after_warm_up;
    assert!(
        growth < 256 * 1024,
        "the engine held {growth} more bytes after {minutes} min than after {warm_up_minutes}"
    );
}
