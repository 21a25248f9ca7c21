//! Imports of random checkpoints that transformers saved (`models/checkpoint.py`, written
//! by `cargo xtask test` into `target/checkpoints/`), held to transformers' own greedy codes
//! and to the bundles `export.py --checkpoint` makes of the same folders.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Golden, codes_of, drain, golden, read_wav, snr_db, target_dir};
use musicgen_engine::{Model, ModelOptions, SamplingSettings, Stream, StreamConfig};
use musicgen_import::{ImportError, ImportOptions, Precision, import};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A fixture `cargo xtask test` writes under `target/`.
fn fixture(parts: &[&str]) -> PathBuf {
    let path = parts.iter().fold(target_dir(), |p, part| p.join(part));
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` writes it (models/checkpoint.py and export.py --checkpoint)",
        path.display()
    );
    path
}

fn options(precision: Precision) -> ImportOptions {
    ImportOptions {
        precision,
        model_name: None,
    }
}

/// Imports `checkpoint` at `precision` into a fresh folder under `dir`.
fn imported(checkpoint: &Path, precision: Precision, dir: &Path) -> PathBuf {
    let out = dir.join(format!("bundle-{precision:?}"));
    let mut last_done = 0;
    let report = import(checkpoint, &out, &options(precision), &mut |progress| {
        assert!(progress.done_bytes > last_done && progress.done_bytes <= progress.total_bytes);
        last_done = progress.done_bytes;
    })
    .unwrap_or_else(|e| panic!("importing {}: {e}", checkpoint.display()));
    assert_eq!(last_done, report.weight_bytes, "progress reached the end");
    out
}

/// Greedy codes and audio (interleaved channels, at the codec's rate) for the golden
/// prompt on `bundle` (a melody model: with the golden melody, `models/tiny-melody`'s).
fn greedy(bundle: &Path, golden: &Golden) -> (Vec<Vec<u32>>, Vec<f32>) {
    let mut options = ModelOptions::new(bundle);
    options.decoder_threads = 1;
    let model = Arc::new(Model::load(options).unwrap_or_else(|e| panic!("loading {}: {e}", bundle.display())));
    let mut config = StreamConfig::new(golden.prompt.clone());
    config.melody = model.chroma_extractor().map(|extractor| {
        let (rate_hz, audio) = read_wav(&models_dir().join("tiny-melody").join("melody.wav"));
        extractor.melody(&audio, 1, f64::from(rate_hz)).unwrap()
    });
    config.seconds = Some(golden.codes[0].len() as f64 / 50.0);
    config.output_rate_hz = f64::from(model.manifest().sample_rate_hz);
    config.sampling = SamplingSettings::greedy();
    config.guidance_scale = golden.guidance_scale;
    config.block_dc = false;
    let (stream, mut consumer) = Stream::start(&model, config).unwrap();
    let audio = drain(&stream, &mut consumer);
    (codes_of(&stream), audio)
}

fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let pairs: Vec<(u32, u32)> = a.iter().flatten().copied().zip(b.iter().flatten().copied()).collect();
    pairs.iter().filter(|(x, y)| x == y).count() as f64 / pairs.len() as f64
}

/// An fp32 import of `checkpoint` reproduces transformers' golden codes for `bundle`
/// exactly, as the export of the same folder does, and decodes them as transformers does.
fn assert_exact_import(checkpoint: &Path, exported: &Path, bundle: &str) {
    let golden = golden(&models_dir().join(bundle));
    let dir = tempfile::tempdir().unwrap();
    let ours = imported(checkpoint, Precision::Float32, dir.path());
    let (codes, audio) = greedy(&ours, &golden);
    assert_eq!(
        codes, golden.codes,
        "{bundle}: the import's greedy codes differ from transformers'"
    );
    let (exported_codes, exported_audio) = greedy(exported, &golden);
    assert_eq!(
        codes, exported_codes,
        "{bundle}: the import and export.py --checkpoint disagree"
    );
    let manifest_of = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.join("musicgen.json")).unwrap()).unwrap()
    };
    assert_eq!(
        manifest_of(&ours)["family"],
        manifest_of(exported)["family"],
        "{bundle}: the import names another family than the export"
    );
    assert!(
        manifest_of(&ours)["family"].is_object(),
        "{bundle}: the import names no family"
    );
    let (_, reference) = read_wav(&models_dir().join(bundle).join("golden.wav"));
    let snr_transformers = snr_db(&reference, &audio);
    let snr_export = snr_db(&exported_audio, &audio);
    println!(
        "{bundle}: codes equal transformers' and the export's; audio vs transformers {snr_transformers:.1} dB, vs the export {snr_export:.1} dB"
    );
    assert!(
        snr_transformers >= 100.0,
        "{bundle}: {snr_transformers:.1} dB from transformers' decode"
    );
    assert!(
        snr_export >= 100.0,
        "{bundle}: {snr_export:.1} dB from the export's audio"
    );
}

#[test]
fn a_mono_checkpoint_imports_to_transformers_codes() {
    assert_exact_import(
        &fixture(&["checkpoints", "tiny"]),
        &fixture(&["checkpoint-exports", "tiny"]),
        "tiny",
    );
}

#[test]
fn a_sharded_stereo_checkpoint_with_the_hubs_weight_norm_names_imports_to_transformers_codes() {
    let checkpoint = fixture(&["checkpoints", "tiny-stereo"]);
    assert!(checkpoint.join("model.safetensors.index.json").is_file());
    // Exported with `--external-data`: the engine plays the layout a decoder over 2 GB has.
    let exported = fixture(&["checkpoint-exports", "tiny-stereo"]);
    assert!(exported.join("decoder.onnx.data").is_file());
    assert_exact_import(&checkpoint, &exported, "tiny-stereo");
}

#[test]
fn a_melody_checkpoint_imports_to_transformers_codes() {
    let checkpoint = fixture(&["checkpoints", "tiny-melody"]);
    assert!(checkpoint.join("preprocessor_config.json").is_file());
    assert_exact_import(
        &checkpoint,
        &fixture(&["checkpoint-exports", "tiny-melody"]),
        "tiny-melody",
    );
}

#[test]
fn quantized_imports_report_agreement_and_snr_and_int4_matches_the_export() {
    let checkpoint = fixture(&["checkpoints", "tiny"]);
    let golden = golden(&models_dir().join("tiny"));
    let dir = tempfile::tempdir().unwrap();
    let (_, float_audio) = greedy(&imported(&checkpoint, Precision::Float32, dir.path()), &golden);
    let (exported_int4, _) = greedy(&fixture(&["checkpoint-exports", "tiny-int4"]), &golden);
    for precision in [Precision::Int8, Precision::Int4] {
        let (codes, audio) = greedy(&imported(&checkpoint, precision, dir.path()), &golden);
        let with_transformers = agreement(&codes, &golden.codes);
        let snr = snr_db(&float_audio, &audio);
        println!(
            "{precision:?} import: {:.1}% of greedy codes equal transformers', audio {snr:.1} dB from the float32 import's",
            with_transformers * 100.0
        );
        // As export.py's self-check of a quantized bundle: a broken one agrees no better
        // than chance (1 in 2048).
        assert!(with_transformers > 0.05, "{precision:?}: {with_transformers:.3}");
        if precision == Precision::Int4 {
            // The same quantized bytes as export.py --quantize int4 (checked by ../xtask).
            assert_eq!(
                codes, exported_int4,
                "the int4 import and export.py's int4 bundle disagree"
            );
        }
    }
}

/// A copy of the tiny checkpoint whose config.json `edit` changes.
fn edited_checkpoint(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let source = fixture(&["checkpoints", "tiny"]);
    let copy = dir.join("checkpoint");
    fs::create_dir_all(&copy).unwrap();
    for entry in fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let path = copy.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
    copy
}

fn import_error(checkpoint: &Path, out: &Path) -> ImportError {
    let error = import(checkpoint, out, &options(Precision::Float32), &mut |_| {}).unwrap_err();
    assert!(!out.exists(), "a failed import left {}", out.display());
    error
}

#[test]
fn a_config_no_template_fits_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = edited_checkpoint(dir.path(), |c| c["decoder"]["num_hidden_layers"] = 48.into());
    let message = import_error(&checkpoint, &dir.path().join("out")).to_string();
    assert!(message.contains("config.json"), "{message}");
    assert!(message.contains("decoder.num_hidden_layers is 48"), "{message}");
    assert!(message.contains("tiny"), "names the nearest shape: {message}");

    let melody = edited_checkpoint(&dir.path().join("melody"), |c| {
        c["architectures"] = serde_json::json!(["MusicgenMelodyForConditionalGeneration"]);
    });
    let message = import_error(&melody, &dir.path().join("out")).to_string();
    assert!(
        message.contains("decoder.model_type is \"musicgen_decoder\"") && message.contains("tiny-melody"),
        "a text config named a melody architecture fits no melody template: {message}"
    );

    let unknown = edited_checkpoint(&dir.path().join("unknown"), |c| {
        c["architectures"] = serde_json::json!(["MusicgenForCausalLM"]);
    });
    let message = import_error(&unknown, &dir.path().join("out")).to_string();
    assert!(
        message.contains("architectures is [\"MusicgenForCausalLM\"]"),
        "{message}"
    );
}

#[test]
fn a_truncated_weight_file_fails_and_leaves_no_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = edited_checkpoint(dir.path(), |_| {});
    let weights = checkpoint.join("model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("out");
    let message = import_error(&checkpoint, &out).to_string();
    assert!(message.contains("model.safetensors"), "{message}");
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "checkpoint")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn an_existing_out_folder_and_a_missing_tokenizer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = edited_checkpoint(dir.path(), |_| {});
    let taken = dir.path().join("taken");
    fs::create_dir(&taken).unwrap();
    let error = import(&checkpoint, &taken, &options(Precision::Float32), &mut |_| {}).unwrap_err();
    assert!(matches!(error, ImportError::OutExists { .. }), "{error}");

    fs::remove_file(checkpoint.join("tokenizer.json")).unwrap();
    let message = import_error(&checkpoint, &dir.path().join("out")).to_string();
    assert!(message.contains("tokenizer.json"), "{message}");
}
