//! Fuzz targets for what the engine reads from outside: the bundle manifest and the
//! prompt's path through the tokenizer and text encoder. Each runs for
//! `MUSICGEN_FUZZ_SECONDS` (see `musicgen_fuzz`); `cargo xtask fuzz --minutes N` runs them
//! long.

mod common;

use std::path::Path;

use common::{tiny, tiny_model};
use musicgen_engine::Bundle;
use musicgen_fuzz::fuzz;
use musicgen_fuzz::proptest::prelude::*;
use serde_json::Value;

/// Every leaf of a JSON document, as a path of keys and indices.
fn leaves(value: &Value, path: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match value {
        Value::Object(map) => map
            .iter()
            .for_each(|(key, child)| leaves(child, [path.clone(), vec![Value::from(key.as_str())]].concat(), out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, child)| leaves(child, [path.clone(), vec![Value::from(i)]].concat(), out)),
        _ => out.push(path),
    }
}

fn replace_at(document: &mut Value, path: &[Value], replacement: Value) {
    let mut node = document;
    for step in path {
        node = match step {
            Value::String(key) => &mut node[key.as_str()],
            Value::Number(i) => &mut node[i.as_u64().unwrap() as usize],
            _ => unreachable!("paths hold keys and indices"),
        };
    }
    *node = replacement;
}

/// Values a broken or hostile manifest may hold where a number, name or list belongs.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(2),
            Just(3),
            Just(4),
            Just(2048),
            Just(u32::MAX as i64)
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just("../decoder.onnx"),
            Just("/etc/passwd"),
            Just(""),
            Just("delay"),
            Just("parallel"),
            Just("float16"),
            Just("int8"),
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(-3i64..5000, 0..6).prop_map(Value::from),
    ]
}

#[test]
fn fuzz_the_manifest() {
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("musicgen.json")).unwrap()).unwrap();
    let mut paths = Vec::new();
    leaves(&committed, Vec::new(), &mut paths);
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "musicgen.json" {
            std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
        }
    }
    let edits = prop::collection::vec((0..paths.len(), hostile_value()), 1..4);
    let garbage = prop::collection::vec(any::<u8>(), 0..64);
    let strategy = prop_oneof![9 => edits.prop_map(Ok), 1 => garbage.prop_map(Err)];
    fuzz("manifest", strategy, |input| {
        let text = match input {
            Ok(edits) => {
                let mut manifest = committed.clone();
                for (path, value) in edits {
                    replace_at(&mut manifest, &paths[path], value);
                }
                serde_json::to_vec(&manifest).unwrap()
            }
            Err(bytes) => bytes,
        };
        std::fs::write(folder.path().join("musicgen.json"), text).unwrap();
        open_and_use(folder.path())
    });
}

/// Opens the bundle; one that opens must build its pattern, one that does not must name
/// the file that is wrong (the manifest or a graph), which lies in the bundle's folder.
fn open_and_use(folder: &Path) -> Result<(), TestCaseError> {
    match Bundle::open(folder) {
        Ok(bundle) => {
            for frames in [1, 7, 50] {
                let pattern = bundle.pattern(frames);
                prop_assert!(pattern.num_steps() >= frames);
            }
        }
        Err(error) => {
            let message = error.to_string();
            prop_assert!(message.contains(&*folder.to_string_lossy()), "{message}");
        }
    }
    Ok(())
}

#[test]
fn fuzz_prompts_through_the_tokenizer_and_text_encoder() {
    let model = tiny_model();
    let strategy = prop_oneof![
        ".{0,40}",
        "[a-z ,.'-]{0,200}",
        "[\\p{Arabic}\\p{Hebrew}\\p{Han} a-z]{0,30}",
        prop::collection::vec(any::<char>(), 0..30).prop_map(String::from_iter),
        ("[a-z]{1,8} ", 1..800usize).prop_map(|(word, count)| word.repeat(count)),
    ];
    fuzz("prompt", strategy, |prompt| {
        match model.condition(&prompt) {
            Ok(_) => {}
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty());
            }
        }
        Ok(())
    });
}
