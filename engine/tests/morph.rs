//! The morph between two prompts on the tiny bundle: its ends are the prompts exactly, it
//! takes effect from the frame it is set for without restarting anything, and a sweep
//! from one prompt to the other is as smooth as a stream left alone.

mod common;

use common::{codes_of, config, drain, start};
use musicgen_engine::{Command, SamplingSettings, StreamConfig, measure_seams};

const PROMPT_A: &str = "warm lo-fi piano";
const PROMPT_B: &str = "fast techno with heavy bass";

fn greedy(frames: usize) -> StreamConfig {
    let mut config = config(PROMPT_A, frames);
    config.sampling = SamplingSettings::greedy();
    config
}

fn morphed(mut config: StreamConfig, amount: f32) -> StreamConfig {
    config.morph_target = Some(PROMPT_B.into());
    config.morph = amount;
    config
}

/// Runs `config` to its end, sending `commands` first: its codes `[K][T]` and audio.
fn run(config: StreamConfig, commands: &[Command]) -> (Vec<Vec<u32>>, Vec<f32>) {
    let (stream, mut consumer) = start(config).unwrap();
    for command in commands {
        stream.send(command.clone());
    }
    let audio = drain(&stream, &mut consumer);
    (codes_of(&stream), audio)
}

fn codes(config: StreamConfig, commands: &[Command]) -> Vec<Vec<u32>> {
    run(config, commands).0
}

#[test]
fn morph_0_is_prompt_a_morph_1_is_prompt_b_and_between_is_neither() {
    let frames = 100;
    let a = codes(greedy(frames), &[]);
    let b = codes(
        StreamConfig {
            prompt: PROMPT_B.into(),
            ..greedy(frames)
        },
        &[],
    );
    assert_ne!(a, b, "the two prompts make different music");
    assert_eq!(codes(morphed(greedy(frames), 0.0), &[]), a, "morph 0 is prompt A");
    assert_eq!(codes(morphed(greedy(frames), 1.0), &[]), b, "morph 1 is prompt B");
    let halfway = codes(morphed(greedy(frames), 0.5), &[]);
    assert_ne!(halfway, a, "halfway is not prompt A");
    assert_ne!(halfway, b, "halfway is not prompt B");
    assert_eq!(
        codes(morphed(greedy(frames), 0.5), &[]),
        halfway,
        "the same morph makes the same music"
    );
}

/// Prompt B as the morph's target, at `amount` from frame `frame`.
fn morph_to_b_at(amount: f32, frame: usize) -> [Command; 2] {
    [
        Command::SetMorphTarget(Some(PROMPT_B.into())),
        Command::SetMorph { amount, frame },
    ]
}

#[test]
fn a_morph_set_for_a_frame_acts_from_that_frame_as_a_prompt_change_would() {
    let frames = 120;
    let change_at = 60;
    let prompt_changed = codes(
        greedy(frames),
        &[Command::SetPromptAt {
            prompt: PROMPT_B.into(),
            frame: change_at,
        }],
    );
    let morphed_to_b = codes(greedy(frames), &morph_to_b_at(1.0, change_at));
    assert_eq!(
        morphed_to_b, prompt_changed,
        "morph 1 from frame {change_at} is prompt B from frame {change_at}, the cache kept"
    );
    let plain = codes(greedy(frames), &[]);
    let first_row = |codes: &[Vec<u32>]| codes[0][..change_at].to_vec();
    assert_eq!(
        first_row(&morphed_to_b),
        first_row(&plain),
        "nothing changed before the frame"
    );
    assert_ne!(morphed_to_b, plain);
    let left_at_a = codes(greedy(frames), &morph_to_b_at(0.0, change_at));
    assert_eq!(left_at_a, plain, "a morph target at amount 0 changes nothing");
}

#[test]
fn sweeping_the_morph_over_10_s_is_as_smooth_as_an_unchanged_stream() {
    const RATE_HZ: u32 = 32_000;
    let (sweep_from, sweep_frames) = (50, 500);
    let frames = sweep_from + sweep_frames + 50;
    let sweep: Vec<Command> = std::iter::once(Command::SetMorphTarget(Some(PROMPT_B.into())))
        .chain((0..=sweep_frames).map(|i| Command::SetMorph {
            amount: i as f32 / sweep_frames as f32,
            frame: sweep_from + i,
        }))
        .collect();
    let (_, unchanged) = run(config(PROMPT_A, frames), &[]);
    let (swept_codes, swept) = run(config(PROMPT_A, frames), &sweep);
    let (plain_codes, _) = run(config(PROMPT_A, frames), &[]);
    assert_ne!(swept_codes, plain_codes, "the sweep changed the music");

    let every_frame: Vec<usize> = (sweep_from..sweep_from + sweep_frames).collect();
    let worst = |audio: &[f32]| {
        let measured = measure_seams(audio, RATE_HZ, 50.0, 0, &every_frame);
        assert_eq!(measured.len(), every_frame.len());
        measured.iter().fold((0.0f32, 0.0f32), |(jump, flux), seam| {
            (jump.max(seam.jump_ratio), flux.max(seam.flux_ratio))
        })
    };
    let (unchanged_jump, unchanged_flux) = worst(&unchanged);
    let (swept_jump, swept_flux) = worst(&swept);
    println!("largest over the sweep's frames   jump ratio   flux ratio");
    println!("unchanged stream                 {unchanged_jump:>11.2} {unchanged_flux:>12.2}");
    println!("morph swept from 0 to 1 in 10 s  {swept_jump:>11.2} {swept_flux:>12.2}");
    assert!(
        swept_jump <= unchanged_jump * 1.25 && swept_flux <= unchanged_flux * 1.25,
        "the sweep clicks: largest jump ratio {swept_jump:.2} and flux ratio {swept_flux:.2} \
         against {unchanged_jump:.2} and {unchanged_flux:.2} unchanged"
    );
}

#[test]
fn a_morph_outlives_a_prompt_change() {
    let frames = 120;
    let held_at_b = codes(morphed(greedy(frames), 1.0), &[]);
    let prompt_changed = codes(
        morphed(greedy(frames), 1.0),
        &[Command::SetPromptAt {
            prompt: "slow ambient strings".into(),
            frame: 60,
        }],
    );
    assert_eq!(prompt_changed, held_at_b, "morph 1 plays B whatever A becomes");
    let halfway_changed = codes(
        morphed(greedy(frames), 0.5),
        &[Command::SetPromptAt {
            prompt: "slow ambient strings".into(),
            frame: 60,
        }],
    );
    assert_ne!(
        halfway_changed,
        codes(morphed(greedy(frames), 0.5), &[]),
        "halfway, the new A is heard"
    );
}
