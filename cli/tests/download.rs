//! `musicgen download` as a person runs it, where the hub cannot be reached (the full
//! fetch, resume and checksum paths are tested against a loopback hub in
//! `import/tests/hub.rs`).

use std::process::{Command, Output, Stdio};

fn download(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_musicgen"))
        .arg("download")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_licence_comes_first_and_must_be_accepted() {
    let cache = tempfile::tempdir().unwrap();
    let out = cache.path().join("bundle");
    let common = [
        "facebook/musicgen-small",
        "--endpoint",
        "http://127.0.0.1:1",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let refused = download(&common);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr),
    );
    assert!(!refused.status.success());
    assert!(stdout.contains("licence CC-BY-NC 4.0"), "{stdout}");
    assert!(
        stderr.contains("nothing was downloaded (add --accept-licence"),
        "{stderr}"
    );

    let mut accepted = common.to_vec();
    accepted.push("--accept-licence");
    let offline = download(&accepted);
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert!(!offline.status.success());
    assert!(stderr.contains("could not reach http://127.0.0.1:1"), "{stderr}");
    assert!(!out.exists(), "no bundle after a failed download");
}

#[test]
fn list_names_every_official_checkpoint_and_what_imports() {
    let listed = download(&["--list"]);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success());
    for repo in [
        "facebook/musicgen-small",
        "facebook/musicgen-stereo-large",
        "facebook/musicgen-melody",
    ] {
        assert!(stdout.contains(repo), "{stdout}");
    }
    let small = stdout
        .lines()
        .find(|l| l.starts_with("facebook/musicgen-small "))
        .unwrap();
    assert!(small.contains("2.36 GB") && small.contains("imports"), "{small}");
}
