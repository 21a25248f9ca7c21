//! Loads the real ONNX Runtime library through `engine::runtime` and runs a graph.

use std::path::Path;

use musicgen_engine::runtime::Runtime;
use ort::session::Session;
use ort::value::Tensor;

#[test]
fn runs_a_small_graph_on_the_real_library() {
    let runtime = Runtime::init(None).expect("ONNX Runtime (run `cargo xtask ort`)");
    assert!(runtime.version().starts_with("1."), "version {}", runtime.version());
    let providers = runtime.available_providers().unwrap();
    assert!(providers.iter().any(|p| p == "CPUExecutionProvider"), "{providers:?}");

    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scale_add.onnx");
    let mut session = Session::builder(runtime.environment())
        .unwrap()
        .commit_from_file(&graph)
        .unwrap();
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    assert_eq!(names, ["a", "b"]);

    let a = Tensor::from_array(([3usize], vec![1.0f32, 2.0, 3.0])).unwrap();
    let b = Tensor::from_array(([3usize], vec![0.5f32, -2.0, 10.0])).unwrap();
    let outputs = session.run(ort::inputs!["a" => a, "b" => b]).unwrap();
    let (shape, y) = outputs["y"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&shape[..], &[3]);
    assert_eq!(y, &[3.0, 0.0, 26.0]);
}

#[test]
fn a_second_init_returns_the_same_runtime() {
    let first = Runtime::init(None).unwrap();
    let second = Runtime::init(Some(Path::new("/ignored/after/first/init"))).unwrap();
    assert!(std::ptr::eq(first, second));
}

#[test]
fn an_unavailable_provider_falls_back_to_the_cpu_and_says_why() {
    use musicgen_engine::runtime::{ExecutionProvider, session_builder};

    let runtime = Runtime::init(None).unwrap();
    let cuda_built = runtime
        .available_providers()
        .unwrap()
        .iter()
        .any(|p| p == "CUDAExecutionProvider");
    let (_, used) = session_builder(runtime, ExecutionProvider::Cuda, 1).unwrap();
    if !cuda_built {
        assert!(used.starts_with("cpu (cuda unavailable"), "{used}");
    }
    let (_, used) = session_builder(runtime, ExecutionProvider::Cpu, 1).unwrap();
    assert_eq!(used, "cpu");
    assert_eq!("CUDA".parse::<ExecutionProvider>(), Ok(ExecutionProvider::Cuda));
    assert!(
        "tpu"
            .parse::<ExecutionProvider>()
            .unwrap_err()
            .contains("auto, cpu, cuda")
    );
}
