//! Live features on the tiny bundle: the sliding context window, prompt changes at a
//! frame, and continuing given codes or audio.

mod common;

use common::{codes_of, config, drain, frames, grid, read_wav, start, tiny, tiny_model};
use std::time::{Duration, Instant};

use musicgen_engine::{CodeGrid, Command, SamplingSettings, Stream, StreamConfig};

const PROMPT: &str = "warm lo-fi piano";

fn greedy(mut config: StreamConfig) -> StreamConfig {
    config.sampling = SamplingSettings::greedy();
    config
}

/// Runs a stream to its end: its codes `[K][T]` and its audio.
fn run_to_end(config: StreamConfig) -> (Vec<Vec<u32>>, Vec<f32>) {
    let (stream, mut consumer) = start(config).unwrap();
    let audio = drain(&stream, &mut consumer);
    (codes_of(&stream), audio)
}

#[test]
fn after_a_slide_the_music_goes_on_exactly_as_a_fresh_continuation_of_the_kept_frames() {
    // A 2 s window keeping 1 s: the second window starts at frame 100 from frames 50..100.
    let mut sliding = greedy(config(PROMPT, 150));
    sliding.window_seconds = 2.0;
    sliding.keep_seconds = 1.0;
    let (stream, mut consumer) = start(sliding.clone()).unwrap();
    let audio = drain(&stream, &mut consumer);
    let codes = codes_of(&stream);
    assert_eq!(stream.status().seams(), [100]);
    assert_eq!(codes[0].len(), 150);
    assert_eq!(audio.len(), 150 * 640, "every frame was decoded once");

    let mut fresh = greedy(config(PROMPT, 50));
    fresh.window_seconds = 2.0;
    fresh.keep_seconds = 1.0;
    fresh.continue_from = Some(grid(&codes, 50..100));
    let (continued, _) = run_to_end(fresh);
    assert_eq!(
        frames(&continued, 0..50),
        frames(&codes, 50..100),
        "the given codes come first"
    );
    assert_eq!(
        frames(&continued, 50..100),
        frames(&codes, 100..150),
        "the window after the slide is the continuation of the kept frames"
    );
}

#[test]
fn seeded_sampling_is_reproducible_across_slides() {
    let run = || {
        let mut sliding = config(PROMPT, 260);
        sliding.window_seconds = 2.0;
        sliding.keep_seconds = 0.8;
        sliding.seed = 11;
        let (stream, mut consumer) = start(sliding).unwrap();
        drain(&stream, &mut consumer);
        assert_eq!(stream.status().seams(), [100, 160, 220]);
        codes_of(&stream)
    };
    let first = run();
    assert_eq!(first[0].len(), 260);
    assert_eq!(first, run());
}

#[test]
fn a_window_that_keeps_nothing_starts_afresh_and_goes_on() {
    let mut config = config(PROMPT, 120);
    config.window_seconds = 1.0;
    config.keep_seconds = 0.0;
    let (stream, mut consumer) = start(config).unwrap();
    let audio = drain(&stream, &mut consumer);
    assert_eq!(stream.status().seams(), [50, 100]);
    assert_eq!(codes_of(&stream)[0].len(), 120);
    assert_eq!(audio.len(), 120 * 640);
}

#[test]
fn a_prompt_set_for_a_frame_changes_nothing_before_it() {
    let run = |change: Option<usize>| {
        let (stream, mut consumer) = start(greedy(config(PROMPT, 120))).unwrap();
        if let Some(frame) = change {
            stream.send(Command::SetPromptAt {
                prompt: "fast techno with heavy bass".into(),
                frame,
            });
        }
        drain(&stream, &mut consumer);
        codes_of(&stream)
    };
    let plain = run(None);
    let changed = run(Some(80));
    assert_eq!(run(Some(80)), changed, "the same change gives the same music");
    // Frame 80's first token comes from the step the change applies to; frames whose last
    // token came before it (delays 0..3) are untouched.
    assert_eq!(frames(&changed, 0..77), frames(&plain, 0..77));
    assert_ne!(frames(&changed, 80..120), frames(&plain, 80..120));
}

/// A prompt change's crossfade, from the stream's config or from a command.
#[derive(Clone, Copy)]
enum Crossfade {
    Configured(f64),
    Sent(f64),
}

/// Waits (at most 60 s) until `stream` has completed `frames` frames.
fn wait_for_frames(stream: &Stream, frames: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream.status().frames() < frames {
        assert!(
            Instant::now() < deadline,
            "the stream did not reach frame {frames} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn new_sampling_settings_take_effect_from_the_next_token() {
    let (plain, _) = run_to_end(greedy(config(PROMPT, 120)));
    let (stream, mut consumer) = start(greedy(config(PROMPT, 120))).unwrap();
    wait_for_frames(&stream, 40);
    let complete = stream.status().frames() as usize;
    stream.send(Command::SetSampling {
        sampling: SamplingSettings::default(),
        guidance_scale: 3.0,
    });
    drain(&stream, &mut consumer);
    let sampled = codes_of(&stream);
    assert_eq!(frames(&sampled, 0..complete), frames(&plain, 0..complete));
    assert_ne!(
        frames(&sampled, complete + 4..120),
        frames(&plain, complete + 4..120),
        "sampled, not greedy, from the change on"
    );
}

#[test]
fn turning_guidance_on_mid_stream_gives_the_context_its_unconditional_row() {
    let unguided = |config: StreamConfig| {
        let mut config = greedy(config);
        config.guidance_scale = 1.0;
        config
    };
    let (plain, _) = run_to_end(unguided(config(PROMPT, 120)));
    let (stream, mut consumer) = start(unguided(config(PROMPT, 120))).unwrap();
    wait_for_frames(&stream, 40);
    assert_eq!(stream.status().guidance_rows(), 1, "guidance off: one row");
    let seams_before = stream.status().seams().len();
    stream.send(Command::SetSampling {
        sampling: SamplingSettings::greedy(),
        guidance_scale: 3.0,
    });
    drain(&stream, &mut consumer);
    let guided = codes_of(&stream);
    assert_eq!(stream.status().guidance_rows(), 2, "guidance on: both rows");
    let seams = stream.status().seams();
    assert_eq!(
        seams.len(),
        seams_before + 1,
        "the context started again once: {seams:?}"
    );
    let restart = *seams.last().unwrap();
    assert!((40..120).contains(&restart), "restarted at frame {restart}");
    assert_eq!(
        frames(&guided, 0..restart),
        frames(&plain, 0..restart),
        "the frames done before the change are kept"
    );
    assert_ne!(
        frames(&guided, restart..120),
        frames(&plain, restart..120),
        "guided from the change on"
    );
}

#[test]
fn a_crossfaded_prompt_change_mixes_the_old_and_the_new_continuation() {
    // Greedy, so the old prompt's continuation is the stream without a change, and the new
    // prompt's is the stream with the change cut in at the same frame.
    let with_change = |crossfade: Crossfade| {
        let mut config = greedy(config(PROMPT, 120));
        // Compared sample for sample: no filter memory across the fade.
        config.block_dc = false;
        if let Crossfade::Configured(seconds) = crossfade {
            config.prompt_crossfade_seconds = seconds;
        }
        let (stream, mut consumer) = start(config).unwrap();
        if let Crossfade::Sent(seconds) = crossfade {
            stream.send(Command::SetPromptCrossfade(seconds));
        }
        stream.send(Command::SetPromptAt {
            prompt: "fast techno with heavy bass".into(),
            frame: 60,
        });
        let audio = drain(&stream, &mut consumer);
        (codes_of(&stream), audio)
    };
    let (_, plain) = run_to_end(StreamConfig {
        block_dc: false,
        ..greedy(config(PROMPT, 120))
    });
    let (cut_codes, cut) = with_change(Crossfade::Configured(0.0));
    let (faded_codes, faded) = with_change(Crossfade::Configured(0.5));
    assert_eq!(
        with_change(Crossfade::Sent(0.5)).1,
        faded,
        "a crossfade set by command fades as one set at the start"
    );
    assert_eq!(faded_codes, cut_codes, "the stream goes on with the new prompt's music");
    assert_eq!(faded.len(), plain.len());

    // The change applies on the step that starts frame 60, when frames up to 56 are
    // complete (delays 0..3): the fade runs over frames 57..82.
    let (start, end) = (57 * 640, 82 * 640);
    assert_eq!(faded[..start], plain[..start], "before the fade: the old music");
    let after = faded[end..]
        .iter()
        .zip(&cut[end..])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(after < 1e-5, "after the fade: the new music (off by {after})");
    let middle = (start + end) / 2;
    let expected = (plain[middle] + cut[middle]) * std::f32::consts::FRAC_1_SQRT_2;
    assert!((faded[middle] - expected).abs() < 1e-3, "equal power half way");
    assert_ne!(plain[start..end], cut[start..end], "the two continuations differ");
}

#[test]
fn a_continuation_keeps_the_given_codes_unchanged_at_its_start() {
    let (given, _) = run_to_end(config("fast techno with heavy bass", 60));
    let mut continued = config(PROMPT, 50);
    continued.continue_from = Some(grid(&given, 0..60));
    let (codes, audio) = run_to_end(continued);
    assert_eq!(codes[0].len(), 110);
    assert_eq!(frames(&codes, 0..60), given);
    assert_eq!(audio.len(), 110 * 640, "the given frames play, then the new ones");
}

#[test]
fn a_live_continuation_plays_only_the_new_music() {
    let (given, _) = run_to_end(config("fast techno with heavy bass", 60));
    let mut continued = config(PROMPT, 50);
    continued.continue_from = Some(grid(&given, 0..60));
    continued.play_continued = false;
    let (stream, mut consumer) = start(continued).unwrap();
    let audio = drain(&stream, &mut consumer);
    assert_eq!(frames(&codes_of(&stream), 0..60), given);
    assert_eq!(
        audio.len(),
        50 * 640,
        "the given frames were heard already: only the new ones play"
    );
    assert!(
        stream.frames_played() >= 110.0 - 1e-9,
        "the play head counts from the given frames"
    );
}

#[test]
fn audio_is_encoded_to_codes_that_a_stream_continues() {
    let model = tiny_model();
    let (rate_hz, audio) = read_wav(&tiny().join("golden.wav"));
    assert_eq!(rate_hz, 32_000);
    let codes = model.encode_audio(&[&audio], f64::from(rate_hz)).unwrap();
    assert_eq!(codes.num_codebooks(), 4);
    assert_eq!(codes.num_timesteps(), audio.len() / 640);
    assert!((0..4).all(|k| codes.codebook(k).iter().all(|&c| c < 2048)));
    let err = model
        .encode_audio(&[&audio[..100]], f64::from(rate_hz))
        .unwrap_err()
        .to_string();
    assert!(err.contains("less than one codec frame"), "{err}");

    let mut continued = config(PROMPT, 25);
    continued.continue_from = Some(codes.clone());
    let (out, _) = run_to_end(continued);
    let given: Vec<Vec<u32>> = (0..4).map(|k| codes.codebook(k).to_vec()).collect();
    assert_eq!(frames(&out, 0..codes.num_timesteps()), given);
}

#[test]
fn a_window_that_cannot_be_is_refused_with_its_values() {
    let mut bad = config(PROMPT, 10);
    bad.window_seconds = 0.0;
    let err = start(bad).err().unwrap().to_string();
    assert!(err.contains("window of 0 s"), "{err}");
    let mut wrong_k = config(PROMPT, 10);
    wrong_k.continue_from = Some(CodeGrid::new(2, 1, vec![0, 0]).unwrap());
    let err = start(wrong_k).err().unwrap().to_string();
    assert!(err.contains("2 codebooks") && err.contains("has 4"), "{err}");
}
