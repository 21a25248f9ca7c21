//! ONNX Runtime is loaded when the host activates the plugin, on the host's thread, and not
//! later while audio runs: loading a library holds the dynamic loader's lock, which a host
//! audio thread may wait on. Its own test binary, so that nothing else in this process has
//! loaded the library before.

mod host;

use host::*;

/// Whether this process has a library whose file name contains `name` mapped.
#[cfg(target_os = "linux")]
fn mapped(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .expect("Linux lists this process's mappings")
        .lines()
        .any(|line| line.rsplit('/').next().is_some_and(|file| file.contains(name)))
}

#[cfg(target_os = "linux")]
#[test]
fn activation_loads_onnx_runtime_before_any_audio() {
    let mut loaded = load();
    assert!(
        !mapped("libonnxruntime"),
        "ONNX Runtime is loaded only when the plugin is activated"
    );
    let config = audio_configuration(48_000, 512);
    let stopped = loaded
        .instance
        .activate(|_, _| (), config)
        .expect("the plugin activates");
    assert!(
        mapped("libonnxruntime"),
        "activation loaded ONNX Runtime before the first block and the first note"
    );
    loaded.instance.deactivate(stopped);
}
