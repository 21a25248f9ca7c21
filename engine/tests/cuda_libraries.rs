//! CUDA that loads without a system CUDA install: the CUDA build of ONNX Runtime with
//! CUDA's libraries from NVIDIA's wheels beside it (`cargo xtask test` unpacks them into
//! `target/onnxruntime-cuda-check/`). Every one of CUDA's libraries loads; on a machine
//! without an NVIDIA driver the provider's only missing piece is the driver, and a model
//! asked to run on CUDA runs on the CPU saying exactly that. Its own process: the runtime
//! is initialised once per process.

mod common;

use common::{config, drain, target_dir, tiny};
use musicgen_engine::{ExecutionProvider, Model, ModelOptions, Runtime, Stream, library_file_name};
use std::sync::Arc;

#[test]
fn every_cuda_library_loads_and_the_fallback_names_the_missing_driver() {
    let folder = target_dir().join("onnxruntime-cuda-check");
    let library = folder.join(library_file_name());
    assert!(
        library.is_file(),
        "{} is missing: `cargo xtask test` fetches it",
        library.display()
    );
    let runtime = Runtime::init(Some(&library)).unwrap();
    assert_eq!(runtime.library_path(), library);
    let providers = runtime.available_providers().unwrap();
    assert!(providers.iter().any(|p| p == "CUDAExecutionProvider"), "{providers:?}");

    // SAFETY: the driver's library, loaded only to learn whether this machine has one.
    let has_driver = unsafe { libloading::Library::new("libcuda.so.1") }.is_ok();
    let readiness = runtime.cuda_readiness();
    // Without the driver, the libraries that link it cannot load, and nothing else may fail.
    for (name, reason) in &readiness.failed {
        assert!(
            !has_driver && reason.contains("libcuda.so.1"),
            "{name} did not load: {reason}"
        );
    }
    for part in [
        "libcudart.",
        "libcublas.",
        "libcublasLt.",
        "libcurand.",
        "libcufft.",
        "libcudnn.",
        "libnvrtc.",
    ] {
        assert!(
            readiness.loaded.iter().any(|name| name.starts_with(part)),
            "{part}* not loaded from {}: {:?}",
            folder.display(),
            readiness.loaded
        );
    }

    let mut options = ModelOptions::new(tiny());
    options.provider = ExecutionProvider::Cuda;
    options.decoder_threads = 1;
    let model = Arc::new(Model::load(options).expect("a model asked for CUDA loads, on CUDA or the CPU"));
    let used = model.execution_provider().to_owned();
    if has_driver {
        assert!(used == "cuda" || used.starts_with("cpu (cuda unavailable"), "{used}");
    } else {
        let reason = readiness
            .unavailable
            .as_deref()
            .expect("no driver, so CUDA is unavailable");
        assert!(
            reason.starts_with("no NVIDIA driver on this machine (libcuda.so.1 not found)"),
            "{reason}"
        );
        assert_eq!(used, format!("cpu (cuda unavailable: {reason})"));
    }
    let (stream, mut consumer) = Stream::start(&model, config("cello", 20)).unwrap();
    assert_eq!(
        drain(&stream, &mut consumer).len(),
        20 * 640,
        "the model plays on {used}"
    );
    println!("asked for CUDA: {used}");
}
