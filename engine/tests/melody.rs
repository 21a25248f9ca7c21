//! A melody model (`models/tiny-melody`: conditioning as a prefix of chroma and text)
//! through the engine: the chroma against transformers' feature extractor, the codes
//! against transformers' `generate` with the golden melody.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Golden, codes_of, drain, frames, golden, grid, read_wav};
use musicgen_engine::{Command, Melody, Model, ModelOptions, SamplingSettings, Stream, StreamConfig};

fn tiny_melody() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-melody")
}

fn model() -> Arc<Model> {
    let mut options = ModelOptions::new(tiny_melody());
    options.decoder_threads = 1;
    Arc::new(Model::load(options).expect("the tiny melody model loads (run `cargo xtask ort` first)"))
}

fn golden_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny_melody().join("golden.json")).unwrap()).unwrap()
}

/// The golden melody, as the engine computes it from `melody.wav`.
fn golden_melody(model: &Model) -> Melody {
    let (rate_hz, audio) = read_wav(&tiny_melody().join("melody.wav"));
    let extractor = model.chroma_extractor().expect("a melody model has a chroma extractor");
    extractor.melody(&audio, 1, f64::from(rate_hz)).unwrap()
}

/// Largest difference the chroma values may have from the extractor's: both resample
/// 44.1 kHz to 32 kHz with windowed-sinc filters of different lengths (rubato's and
/// torchaudio's), which leave different traces near the band edge; the values are
/// ratios to each frame's peak.
const CHROMA_TOLERANCE: f32 = 5e-3;

#[test]
fn chroma_matches_transformers_feature_extractor() {
    let model = model();
    let json = golden_json();
    let reference = &json["melody"];
    let (rate_hz, audio) = read_wav(&tiny_melody().join("melody.wav"));
    assert_eq!(u64::from(rate_hz), reference["sample_rate_hz"].as_u64().unwrap());
    let extractor = model.chroma_extractor().unwrap();
    let values = extractor.normalized_chroma(&audio, 1, f64::from(rate_hz)).unwrap();
    let expected: Vec<f32> = reference["normalized_chroma"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|frame| frame.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    assert_eq!(values.len(), expected.len(), "chroma frames x 12");
    let worst = values
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("normalized chroma vs MusicgenMelodyFeatureExtractor: max abs difference {worst:.2e}");
    assert!(
        worst <= CHROMA_TOLERANCE,
        "chroma differs by {worst} (tolerance {CHROMA_TOLERANCE})"
    );

    let classes: Vec<u8> = reference["pitch_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(
        golden_melody(&model).pitch_classes(),
        classes,
        "pitch classes (the one-hot the model sees)"
    );
}

/// The tiny melody model, its golden codes, and the golden melody as the engine hears it.
fn golden_setup() -> (Arc<Model>, Golden, Melody) {
    let model = model();
    let melody = golden_melody(&model);
    (model, golden(&tiny_melody()), melody)
}

fn golden_config(prompt: &str, guidance_scale: f32, frame_count: usize, melody: Option<Melody>) -> StreamConfig {
    let mut config = StreamConfig::new(prompt);
    config.melody = melody;
    config.seconds = Some(frame_count as f64 / 50.0);
    config.output_rate_hz = 32_000.0;
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = guidance_scale;
    config.block_dc = false;
    config
}

#[test]
fn greedy_codes_with_the_golden_melody_equal_transformers_and_follow_the_melody() {
    let (model, golden, melody) = golden_setup();
    let frame_count = golden.codes[0].len();
    let config = golden_config(&golden.prompt, golden.guidance_scale, frame_count, Some(melody.clone()));
    let (stream, mut consumer) = Stream::start(&model, config).unwrap();
    let audio = drain(&stream, &mut consumer);
    assert_eq!(
        codes_of(&stream),
        golden.codes,
        "greedy melody codes differ from transformers' generate"
    );
    let (_, reference) = read_wav(&tiny_melody().join("golden.wav"));
    assert_eq!(audio.len(), reference.len());

    // The melody is what changed them: the same prompt with no melody (or another one)
    // gives other codes.
    let other = Melody::from_pitch_classes(melody.pitch_classes().iter().map(|c| (c + 5) % 12).collect());
    for (name, melody) in [("no melody", None), ("the melody a fourth up", Some(other))] {
        let config = golden_config(&golden.prompt, golden.guidance_scale, frame_count, melody);
        let (stream, mut consumer) = Stream::start(&model, config).unwrap();
        drain(&stream, &mut consumer);
        let codes = codes_of(&stream);
        let same = codes
            .iter()
            .flatten()
            .zip(golden.codes.iter().flatten())
            .filter(|(a, b)| a == b)
            .count();
        let share = same as f64 / (frame_count * golden.codes.len()) as f64;
        println!("{name}: {:.1}% of the codes equal the golden melody's", share * 100.0);
        // A random tiny model repeats itself a lot whatever it hears, so many codes stay;
        // the same melody gives every code again (above).
        assert!(share < 0.9, "{name}: the codes hardly changed ({share:.2} equal)");
    }
}

#[test]
fn a_text_model_refuses_a_melody_and_a_melody_model_refuses_a_morph() {
    let text_model = common::tiny_model();
    let melody = Melody::from_pitch_classes(vec![0, 4, 7]);
    let mut config = StreamConfig::new("warm lo-fi piano");
    config.melody = Some(melody);
    config.seconds = Some(0.2);
    let error = Stream::start(&text_model, config)
        .err()
        .expect("a text model has no melody input");
    assert!(error.to_string().contains("melody model"), "{error}");

    let mut config = StreamConfig::new("warm lo-fi piano");
    config.morph_target = Some("fast techno".into());
    config.morph = 0.5;
    config.seconds = Some(0.2);
    let error = Stream::start(&model(), config)
        .err()
        .expect("a melody model cannot morph");
    assert!(error.to_string().contains("morphing"), "{error}");
}

#[test]
fn a_prompt_change_restarts_a_melody_models_context_under_the_new_prompt() {
    let (model, golden, melody) = golden_setup();
    let frame_count = golden.codes[0].len();
    let new_prompt = "jazz trio";
    let config = golden_config(&golden.prompt, golden.guidance_scale, frame_count, Some(melody.clone()));
    let (stream, mut consumer) = Stream::start(&model, config).unwrap();
    stream.send(Command::SetPromptAt {
        prompt: new_prompt.into(),
        frame: 80,
    });
    drain(&stream, &mut consumer);
    let changed = codes_of(&stream);
    // The change comes with the step that starts frame 80, when frames up to 76 are
    // complete; the context starts again from there.
    assert_eq!(stream.status().seams(), [77], "one new context, from the frames done");
    assert_eq!(frames(&changed, 0..77), frames(&golden.codes, 0..77));
    assert_ne!(
        frames(&changed, 77..frame_count),
        frames(&golden.codes, 77..frame_count)
    );

    // What follows is the new prompt's continuation of the frames done, as a stream that
    // continues them under the new prompt from the start makes it.
    let mut continuation = golden_config(new_prompt, golden.guidance_scale, frame_count - 77, Some(melody));
    continuation.continue_from = Some(grid(&changed, 0..77));
    let (stream, mut consumer) = Stream::start(&model, continuation).unwrap();
    drain(&stream, &mut consumer);
    assert_eq!(
        frames(&codes_of(&stream), 77..frame_count),
        frames(&changed, 77..frame_count),
        "after the change: the new prompt's continuation of the frames done"
    );
}

#[test]
fn a_new_melody_takes_over_at_the_next_window_slide() {
    let model = model();
    let golden = golden(&tiny_melody());
    let run = |new_melody: Option<Melody>| {
        let mut config = golden_config(&golden.prompt, golden.guidance_scale, 120, None);
        // Windows of 80 frames keeping 40: the first slide is at frame 80.
        config.window_seconds = 1.6;
        config.keep_seconds = 0.8;
        let (stream, mut consumer) = Stream::start(&model, config).unwrap();
        if let Some(melody) = new_melody {
            // Once the first context holds its (null) melody.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while stream.status().started_frames() == 0 {
                assert!(std::time::Instant::now() < deadline, "generation did not start");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            stream.send(Command::SetMelody(Some(melody)));
        }
        drain(&stream, &mut consumer);
        assert_eq!(stream.status().seams(), [80]);
        codes_of(&stream)
    };
    let plain = run(None);
    let followed = run(Some(golden_melody(&model)));
    assert_eq!(
        frames(&followed, 0..80),
        frames(&plain, 0..80),
        "the first context keeps its melody"
    );
    assert_ne!(
        frames(&followed, 80..120),
        frames(&plain, 80..120),
        "the next one follows the new melody"
    );
}
