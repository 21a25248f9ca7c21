//! An ONNX Runtime library that is too old, or not a library at all, is refused by path
//! and version, and the right one still loads afterwards. Its own process: the runtime is
//! initialised once per process.

use std::path::PathBuf;

use common::target_dir;
use musicgen_engine::Runtime;

mod common;

/// `target/onnxruntime/too-old/`, where `cargo xtask test` unpacks ONNX Runtime 1.20.1.
fn too_old_library() -> PathBuf {
    let library = target_dir().join("onnxruntime").join("too-old").join(format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        library.is_file(),
        "{} is missing: `cargo xtask test` fetches it",
        library.display()
    );
    library
}

#[test]
fn too_old_and_not_a_library_are_refused_by_name_then_the_right_library_loads() {
    let old = too_old_library();
    let message = Runtime::init(Some(&old))
        .err()
        .expect("1.20.1 was accepted")
        .to_string();
    assert!(message.contains(&*old.to_string_lossy()), "{message}");
    assert!(message.contains("version 1.20.1, older than"), "{message}");
    assert!(message.contains("cargo xtask ort"), "{message}");

    let fake = std::env::temp_dir().join(format!("musicgen-fake-ort-{}", std::process::id()));
    std::fs::create_dir_all(&fake).unwrap();
    let fake = fake.join(old.file_name().unwrap());
    std::fs::write(&fake, "not a shared library").unwrap();
    let message = Runtime::init(Some(&fake))
        .err()
        .expect("a text file was accepted")
        .to_string();
    assert!(message.contains(&*fake.to_string_lossy()), "{message}");
    assert!(message.contains("cargo xtask ort"), "{message}");

    let runtime = Runtime::init(None).expect("the development copy loads after the refusals");
    assert!(runtime.version().starts_with("1.3"), "{}", runtime.version());
    assert!(
        runtime
            .available_providers()
            .unwrap()
            .iter()
            .any(|p| p == "CPUExecutionProvider")
    );
}
