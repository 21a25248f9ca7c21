//! Fuzzing the plugin's saved state through the CLAP host: states a damaged project file
//! or another version may hold. Each is loaded or refused; a refused one leaves the
//! current state as it was, a loaded one saves and loads again to the same state. Runs
//! for `MUSICGEN_FUZZ_SECONDS` (see `musicgen_fuzz`).

mod host;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use clack_host::prelude::PluginInstance;
use host::*;
use musicgen_fuzz::fuzz;
use musicgen_fuzz::proptest::prelude::*;
use serde_json::Value;

/// Replaces the leaf at `index` (in a depth-first walk) with `replacement`; persisted
/// fields are JSON text, so their leaves are reached through that text.
fn replace_leaf(value: &mut Value, index: &mut usize, replacement: &Value) -> bool {
    match value {
        Value::Object(map) => map.values_mut().any(|child| replace_leaf(child, index, replacement)),
        Value::Array(items) => items.iter_mut().any(|child| replace_leaf(child, index, replacement)),
        Value::String(text) => {
            if let Ok(mut inner) = serde_json::from_str::<Value>(text)
                && (inner.is_object() || inner.is_array())
            {
                let replaced = replace_leaf(&mut inner, index, replacement);
                *text = inner.to_string();
                return replaced;
            }
            replace_here(value, index, replacement)
        }
        _ => replace_here(value, index, replacement),
    }
}

fn replace_here(value: &mut Value, index: &mut usize, replacement: &Value) -> bool {
    if *index == 0 {
        *value = replacement.clone();
        return true;
    }
    *index -= 1;
    false
}

fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |x| x.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
        prop_oneof![
            Just("{}"),
            Just("null"),
            Just("[1,2]"),
            Just("\"../../etc\""),
            Just("\"cuda\"")
        ]
        .prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(serde_json::json!({"f32": 1e30})),
        Just(serde_json::json!({"i32": -5})),
        Just(serde_json::json!({"bool": "yes"})),
    ]
}

/// nice-plug's framing: the JSON's length as a little-endian u64, then the JSON.
fn framed(json: &[u8]) -> Vec<u8> {
    [&(json.len() as u64).to_le_bytes()[..], json].concat()
}

/// The state once the plugin has acted on a loaded one: a trigger saved on presses once,
/// and a slot choice changes the prompt, on the controller's next poll (every 5 ms).
fn settled(instance: &mut PluginInstance<TestHost>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut state = save(instance);
    loop {
        std::thread::sleep(Duration::from_millis(15));
        let again = save(instance);
        if again == state {
            return state;
        }
        assert!(Instant::now() < deadline, "the plugin's state kept changing for 2 s");
        state = again;
    }
}

#[test]
fn fuzz_saved_states() {
    let log = std::env::temp_dir().join(format!("musicgen-state-fuzz-{}.log", std::process::id()));
    // SAFETY: set before the plugin is loaded, while no other thread of this test binary
    // reads the environment. nice-plug writes each refusal to this log instead of stderr.
    unsafe { std::env::set_var("NICE_LOG", &log) };
    let Loaded { mut instance, _entry } = load();
    let valid = save(&mut instance);
    // proptest's checks are `Fn`: the instance is borrowed anew for each input.
    let instance = RefCell::new(instance);
    let edits = prop::collection::vec((0..64usize, hostile_value()), 1..4).prop_map(Ok);
    let garbage = (any::<u64>(), prop::collection::vec(any::<u8>(), 0..256)).prop_map(Err);
    let strategy = prop_oneof![8 => edits, 2 => garbage];
    fuzz("plugin state", strategy, |input| {
        let bytes = match input {
            Ok(edits) => {
                let mut state = valid.clone();
                for (index, value) in &edits {
                    replace_leaf(&mut state, &mut index.clone(), value);
                }
                framed(&serde_json::to_vec(&state).unwrap())
            }
            Err((length, tail)) => [&length.to_le_bytes()[..], &tail].concat(),
        };
        let mut instance = instance.borrow_mut();
        let before = settled(&mut instance);
        let loaded = plugin_state(&mut instance).load(&instance.plugin_handle(), &mut bytes.as_slice());
        if loaded.is_err() {
            prop_assert_eq!(&save(&mut instance), &before, "a refused state changed the current one");
        } else {
            let after = settled(&mut instance);
            restore(&mut instance, &after);
            prop_assert_eq!(
                settled(&mut instance),
                after,
                "a loaded state does not save and load again the same"
            );
        }
        Ok(())
    });
    println!("nice-plug's log of the refusals: {}", log.display());
}
