//! `musicgen render --melody`: a melody model follows a WAV file's melody; a text model
//! says it cannot.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn render(model: &str, melody: Option<&Path>, out: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_musicgen"));
    command
        .args(["render", "--greedy", "--seconds", "1", "--model"])
        .arg(models().join(model))
        .arg("--out")
        .arg(out)
        .arg("--codes-out")
        .arg(out.with_extension("json"));
    if let Some(melody) = melody {
        command.arg("--melody").arg(melody);
    }
    command.output().unwrap()
}

fn codes(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap()
}

#[test]
fn a_melody_model_follows_the_melody_file_and_a_text_model_refuses_it() {
    let dir = std::env::temp_dir().join(format!("musicgen-melody-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let melody = models().join("tiny-melody").join("melody.wav");

    let (with, without) = (dir.join("with.wav"), dir.join("without.wav"));
    let run = render("tiny-melody", Some(&melody), &with);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("melody: 24 chroma frames"), "{stdout}");
    assert!(render("tiny-melody", None, &without).status.success());
    let reader = hound::WavReader::open(&with).unwrap();
    assert_eq!(reader.duration(), 32_000, "one second at the model's rate");
    assert_ne!(codes(&with), codes(&without), "the melody changes the music");

    let refused = render("tiny", Some(&melody), &dir.join("text.wav"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("is not a melody model"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
