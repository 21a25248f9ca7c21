//! Broken bundles give errors that name the file, the tensor and the fix.

use std::path::Path;

use musicgen_engine::{Bundle, Channels, Conditioning, Family, Model, ModelOptions, Size};
use serde_json::Value;

fn copy_of_tiny() -> tempfile::TempDir {
    copy_of("tiny")
}

/// A copy of the committed bundle `models/<folder>`.
fn copy_of(folder: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(folder);
    for entry in std::fs::read_dir(bundle).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("musicgen.json");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

fn load_error(dir: &Path) -> String {
    Model::load(ModelOptions::new(dir))
        .err()
        .expect("the bundle is broken")
        .to_string()
}

#[test]
fn a_missing_graph_file_is_named() {
    let dir = copy_of_tiny();
    std::fs::remove_file(dir.path().join("decoder.onnx")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("decoder.onnx") && err.contains("missing"), "{err}");
}

#[test]
fn a_missing_manifest_says_how_to_make_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("musicgen.json") && err.contains("cargo xtask export"),
        "{err}"
    );
}

#[test]
fn a_wrong_tensor_name_names_the_file_and_the_tensor() {
    let dir = copy_of_tiny();
    edit_manifest(dir.path(), |m| {
        let inputs = m["graphs"]["decoder"]["inputs"].as_array_mut().unwrap();
        let slot = inputs.iter_mut().find(|v| *v == "past_len").unwrap();
        *slot = Value::from("step_position");
    });
    let err = load_error(dir.path());
    assert!(err.contains("decoder.onnx") && err.contains("step_position"), "{err}");
}

#[test]
fn a_wrong_codebook_count_is_refused_with_the_tensor_and_axis() {
    let dir = copy_of_tiny();
    edit_manifest(dir.path(), |m| {
        m["num_codebooks"] = Value::from(3);
        m["pattern"]["delays"] = Value::from(vec![0, 1, 2]);
    });
    let err = load_error(dir.path());
    assert!(
        err.contains(".onnx") && err.contains(" is 4 but the manifest's geometry says 3"),
        "{err}"
    );
}

#[test]
fn a_cache_type_the_graph_does_not_have_is_refused() {
    let dir = copy_of_tiny();
    edit_manifest(dir.path(), |m| m["kv_cache"]["dtype"] = Value::from("int8"));
    let err = load_error(dir.path());
    assert!(
        err.contains("decoder.onnx") && err.contains("past_key_0") && err.contains("Int8"),
        "{err}"
    );
}

#[test]
fn a_bundle_of_an_older_format_is_refused_with_the_fix() {
    let dir = copy_of_tiny();
    edit_manifest(dir.path(), |m| m["format_version"] = Value::from(1));
    let err = load_error(dir.path());
    assert!(err.contains("format version 1") && err.contains("re-export"), "{err}");
}

#[test]
fn a_corrupt_manifest_is_refused_with_its_path() {
    let dir = copy_of_tiny();
    std::fs::write(dir.path().join("musicgen.json"), "{ not json").unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("musicgen.json") && err.contains("not a valid bundle manifest"),
        "{err}"
    );
}

#[test]
fn a_truncated_graph_is_refused_with_its_file() {
    let dir = copy_of_tiny();
    let graph = dir.path().join("decoder.onnx");
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("decoder.onnx"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused_with_its_file() {
    let dir = copy_of_tiny();
    std::fs::write(dir.path().join("cross_kv.onnx"), "not a graph at all").unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("cross_kv.onnx"), "{err}");
}

#[test]
fn a_manifest_field_of_the_wrong_type_is_named() {
    let dir = copy_of_tiny();
    edit_manifest(dir.path(), |m| m["num_codebooks"] = Value::from("four"));
    let err = load_error(dir.path());
    assert!(
        err.contains("musicgen.json") && err.contains("invalid type") && err.contains("\"four\""),
        "{err}"
    );
}

#[test]
fn absurd_numbers_are_refused_before_anything_is_sized_from_them() {
    let cases: [(&str, &[&str], Value); 5] = [
        ("num_codebooks", &["num_codebooks"], Value::from(100_000)),
        ("max_frames", &["max_frames"], Value::from(1u64 << 40)),
        ("frame_rate_hz", &["frame_rate_hz"], Value::from(0)),
        ("sample_rate_hz", &["sample_rate_hz"], Value::from(0)),
        ("decoder.num_layers", &["decoder", "num_layers"], Value::from(1_000_000)),
    ];
    for (field, path, value) in cases {
        let dir = copy_of_tiny();
        edit_manifest(dir.path(), |m| {
            let slot = path.iter().fold(m, |v, key| &mut v[*key]);
            *slot = value.clone();
        });
        let err = load_error(dir.path());
        assert!(
            err.contains(field) && err.contains(&value.to_string()),
            "{field}: {err}"
        );
    }
}

#[test]
fn graph_files_outside_the_bundle_folder_are_refused() {
    for file in ["../decoder.onnx", "/etc/passwd", "sub/../../x.onnx"] {
        let dir = copy_of_tiny();
        edit_manifest(dir.path(), |m| m["graphs"]["decoder"]["file"] = Value::from(file));
        let err = load_error(dir.path());
        assert!(
            err.contains(file) && err.contains("inside the bundle folder"),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_family_the_bundle_contradicts_is_refused_naming_the_field() {
    let cases = [
        ("channels", "stereo", "audio_channels is 1: mono"),
        ("size", "medium", "a decoder of 2 layers of width 64 is custom"),
        (
            "conditioning",
            "text+melody",
            "the manifest has no `melody` settings: a text-conditioned model",
        ),
    ];
    for (field, value, why) in cases {
        let dir = copy_of_tiny();
        edit_manifest(dir.path(), |m| m["family"][field] = Value::from(value));
        let err = load_error(dir.path());
        assert!(
            err.contains(&format!("family.{field} is {value}: {why}")),
            "{field}: {err}"
        );
    }
}

#[test]
fn the_family_is_read_from_the_manifest_and_derived_for_older_bundles() {
    let dir = copy_of_tiny();
    let stated = Bundle::open(dir.path()).unwrap().manifest().family();
    assert_eq!(
        stated,
        Family {
            channels: Channels::Mono,
            conditioning: Conditioning::Text,
            size: Size::Custom,
        }
    );
    edit_manifest(dir.path(), |m| {
        m.as_object_mut().unwrap().remove("family");
    });
    let bundle = Bundle::open(dir.path()).unwrap();
    assert_eq!(bundle.manifest().family(), stated);
    assert_eq!(
        bundle.manifest().describe_family(),
        "mono, text-conditioned, 2 layers of width 64, not one of Meta's sizes"
    );
    // A melody model's manifest has its chroma settings, which make its family.
    let melody = Bundle::open(copy_of("tiny-melody").path()).unwrap();
    assert_eq!(melody.manifest().family().conditioning, Conditioning::TextAndMelody);
    assert!(melody.manifest().melody.is_some());
}

#[test]
fn a_melody_bundle_needs_no_cross_kv_and_refuses_bad_chroma_settings() {
    let copy = || copy_of("tiny-melody");
    let dir = copy();
    assert!(!dir.path().join("cross_kv.onnx").exists());
    Bundle::open(dir.path()).unwrap();
    for (field, value) in [("num_chroma", 24), ("hop_length", 0), ("n_fft", 3)] {
        let dir = copy();
        edit_manifest(dir.path(), |m| m["melody"][field] = Value::from(value));
        let err = load_error(dir.path());
        assert!(err.contains(&format!("melody.{field} is {value}")), "{field}: {err}");
    }
}
