//! `musicgen import` as a person runs it, on the random checkpoint `cargo xtask test`
//! saves with transformers into `target/checkpoints/tiny`.

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

fn checkpoint() -> PathBuf {
    let dir = common::target_dir().join("checkpoints").join("tiny");
    assert!(
        dir.is_dir(),
        "{} is missing: `cargo xtask test` writes it",
        dir.display()
    );
    dir
}

#[test]
fn import_writes_a_bundle_that_info_describes_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_musicgen"))
            .arg("import")
            .arg(checkpoint())
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap()
    };
    let first = run(&["--quantize", "int4", "--name", "my-tiny"]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("template tiny/int4"), "{stdout}");
    assert!(stdout.contains("my-tiny (mono, text-conditioned"), "{stdout}");
    assert!(stdout.contains("peak memory:"), "{stdout}");
    let manifest = std::fs::read_to_string(out.join("musicgen.json")).unwrap();
    assert!(manifest.contains("\"weights\": \"int4\""), "{manifest}");

    let again = run(&[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(stderr.contains("already exists; choose another --out"), "{stderr}");
}
