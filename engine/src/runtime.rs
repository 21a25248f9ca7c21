//! Finding, loading and initialising the ONNX Runtime shared library, once per process.
//!
//! `ort` is built with `load-dynamic`, so nothing is linked at build time: the library
//! is looked up at run time in a fixed order (an explicit path, `ORT_DYLIB_PATH`, next to
//! the running binary, then the development copy that `cargo xtask ort` unpacks under
//! `target/onnxruntime/<provider>/`). A missing or wrong library becomes a
//! [`RuntimeError`] that lists where it looked and how to get one.

use std::ffi::{CStr, c_char, c_int};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::cuda::CudaReadiness;

/// The command that puts a development copy of the library where [`Runtime::init`] looks.
pub(crate) const FETCH_COMMAND: &str = "cargo xtask ort";

/// The environment variable that names the library explicitly.
pub(crate) const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Providers whose ONNX Runtime build `cargo xtask ort --provider` can fetch; also the
/// folder names of the development copies, in the order they are preferred.
pub(crate) const DEVELOPMENT_PROVIDERS: [&str; 3] = ["cuda", "directml", "cpu"];

/// Where the graphs run. `Auto` takes the first accelerator that starts and falls back to
/// the CPU; an explicit accelerator also falls back to the CPU when it cannot start, and
/// says why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExecutionProvider {
    #[default]
    Auto,
    Cpu,
    Cuda,
    DirectMl,
}

impl ExecutionProvider {
    pub const ALL: [ExecutionProvider; 4] = [Self::Auto, Self::Cpu, Self::Cuda, Self::DirectMl];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::DirectMl => "directml",
        }
    }

    /// The providers to try, in order; the CPU always ends the list.
    fn attempts(self) -> &'static [ExecutionProvider] {
        match self {
            Self::Auto => &[Self::Cuda, Self::DirectMl, Self::Cpu],
            Self::Cpu => &[Self::Cpu],
            Self::Cuda => &[Self::Cuda, Self::Cpu],
            Self::DirectMl => &[Self::DirectMl, Self::Cpu],
        }
    }

    fn dispatch(self) -> Result<Option<ort::ep::ExecutionProviderDispatch>, String> {
        match self {
            Self::Cpu | Self::Auto => Ok(None),
            Self::Cuda => Ok(Some(ort::ep::CUDA::default().build().error_on_failure())),
            #[cfg(windows)]
            Self::DirectMl => Ok(Some(ort::ep::DirectML::default().build().error_on_failure())),
            #[cfg(not(windows))]
            Self::DirectMl => Err("DirectML exists on Windows only".into()),
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text))
            .ok_or_else(|| format!("unknown execution provider `{text}`; use auto, cpu, cuda or directml"))
    }
}

/// A session builder with the first provider of `requested` that starts, and a line that
/// says which one that is (and why others were passed over).
pub(crate) fn session_builder(
    runtime: &Runtime,
    requested: ExecutionProvider,
    threads: usize,
) -> Result<(ort::session::builder::SessionBuilder, String), ort::Error> {
    let mut passed_over = Vec::new();
    for &provider in requested.attempts() {
        let builder = ort::session::Session::builder(runtime.environment())?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            .map_err(ort::Error::<()>::from)?
            .with_intra_threads(threads)
            .map_err(ort::Error::<()>::from)?;
        if provider == ExecutionProvider::Cuda
            && let Some(reason) = &runtime.cuda_readiness().unavailable
        {
            passed_over.push(format!("cuda unavailable: {reason}"));
            continue;
        }
        let dispatch = match provider.dispatch() {
            Ok(Some(dispatch)) => dispatch,
            Ok(None) => {
                let mut used = "cpu".to_owned();
                if !passed_over.is_empty() && requested != ExecutionProvider::Auto {
                    used += &format!(" ({})", passed_over.join("; "));
                }
                return Ok((builder, used));
            }
            Err(reason) => {
                passed_over.push(format!("{provider} unavailable: {reason}"));
                continue;
            }
        };
        match builder.with_execution_providers([dispatch]) {
            Ok(builder) => return Ok((builder, provider.name().to_owned())),
            Err(e) => passed_over.push(format!("{provider} unavailable: {e}")),
        }
    }
    unreachable!("every attempt list ends with the CPU, which always starts")
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library `{file}` not found; looked in:\n{searched}\nfix: run `{FETCH_COMMAND}` \
         (or `{FETCH_COMMAND} --provider cuda`), or set {DYLIB_ENV} to the library's path",
        file = library_file_name(),
        searched = SearchList(.searched)
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error(
        "could not load ONNX Runtime from `{path}`: {reason}\nfix: point {DYLIB_ENV} at a library from the \
         onnxruntime {wanted}.x wheel, or run `{FETCH_COMMAND}`",
        path = .path.display(),
        wanted = ort_api_version()
    )]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime at `{path}` failed to start: {source}", path = .path.display())]
    Environment { path: PathBuf, source: ort::Error },
}

struct SearchList<'a>(&'a [PathBuf]);

impl fmt::Display for SearchList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, path) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  - {}", path.display())?;
        }
        Ok(())
    }
}

/// The platform's file name for the main ONNX Runtime library.
pub fn library_file_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn ort_api_version() -> String {
    format!("1.{}", ort::MINOR_VERSION)
}

/// An initialised ONNX Runtime: the library in use and the process-wide environment.
pub struct Runtime {
    library_path: PathBuf,
    version: String,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Loads ONNX Runtime and creates its environment, or returns the one this process
    /// already has. A library can be loaded only once per process: after the first
    /// success, `explicit` is ignored.
    pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        let _serialised = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        let searched = candidate_paths(explicit);
        let library_path =
            searched
                .iter()
                .find(|path| path.is_file())
                .cloned()
                .ok_or_else(|| RuntimeError::NotFound {
                    searched: searched.clone(),
                })?;
        let version = library_version(&library_path)?;
        let builder = ort::init_from(&library_path).map_err(|e| RuntimeError::Load {
            path: library_path.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("musicgen-live")
            .build()
            .map_err(|source| RuntimeError::Environment {
                path: library_path.clone(),
                source,
            })?;
        Ok(RUNTIME.get_or_init(|| Runtime {
            library_path,
            version,
            environment,
        }))
    }

    pub fn library_path(&self) -> &Path {
        &self.library_path
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }

    /// A CPU session of any graph, built as the engine builds its own (optimisation level,
    /// `threads` intra-op threads): for tools that time kernels beside a bundle's graphs,
    /// such as `musicgen bench`'s matmul floor.
    pub fn cpu_session(&self, graph: &Path, threads: usize) -> Result<ort::session::Session, ort::Error> {
        let (mut builder, _) = session_builder(self, ExecutionProvider::Cpu, threads)?;
        builder.commit_from_file(graph)
    }

    /// CUDA's libraries beside this library, loaded once, and why the CUDA provider
    /// cannot start here if it cannot.
    pub fn cuda_readiness(&self) -> &'static CudaReadiness {
        crate::cuda::readiness(&self.library_path)
    }

    /// The version the library reports, e.g. `1.31.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The execution providers this build of the library was compiled with, as ONNX
    /// Runtime names them (`CUDAExecutionProvider`, `CPUExecutionProvider`, ...). A listed
    /// provider can still fail to start, e.g. when the CUDA libraries are missing.
    pub fn available_providers(&self) -> Result<Vec<String>, ort::Error> {
        let api = ort::api();
        let mut names: *mut *mut c_char = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: the out-pointers are valid; on success the library owns `names` until
        // `ReleaseAvailableProviders` below.
        let status = unsafe { (api.GetAvailableProviders)(&mut names, &mut count) };
        status_to_result(status)?;
        let providers = (0..count as usize)
            // SAFETY: `names` holds `count` NUL-terminated strings.
            .map(|i| unsafe { CStr::from_ptr(*names.add(i)) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: releases exactly what `GetAvailableProviders` returned.
        let status = unsafe { (api.ReleaseAvailableProviders)(names, count) };
        status_to_result(status)?;
        Ok(providers)
    }
}

fn status_to_result(status: ort::sys::OrtStatusPtr) -> Result<(), ort::Error> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status carries a message; it is released right after reading it.
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
        .to_string_lossy()
        .into_owned();
    unsafe { (api.ReleaseStatus)(status.0) };
    Err(ort::Error::new(message))
}

/// Asks the library for its version through its C entry point, before `ort` takes it:
/// a file that is not ONNX Runtime, or one too old for the engine's API, is refused with
/// its path rather than failing later inside a session.
fn library_version(path: &Path) -> Result<String, RuntimeError> {
    let load_error = |reason: String| RuntimeError::Load {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading runs the library's initialisers; ONNX Runtime's are safe to run, and
    // the same file is loaded by `ort` right after.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| load_error(loader_error(&e)))?;
    // SAFETY: the symbol has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { library.get(b"OrtGetApiBase") }
            .map_err(|_| load_error("the file has no `OrtGetApiBase`: it is not an ONNX Runtime library".into()))?;
    // SAFETY: `OrtGetApiBase` returns a pointer to a static struct; its version string is
    // static and NUL-terminated.
    let version = unsafe {
        let base = get_base();
        CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned()
    };
    let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
    if minor.is_none_or(|minor| minor < ort::MINOR_VERSION) {
        return Err(load_error(format!(
            "it is version {version}, older than the {} the engine needs",
            ort_api_version()
        )));
    }
    Ok(version)
}

/// The dynamic loader's own words: libloading's message alone is "dlopen failed", its
/// source says which file was missing.
pub(crate) fn loader_error(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// Every place [`Runtime::init`] looks, in order.
pub(crate) fn candidate_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let file = library_file_name();
    let mut paths = Vec::new();
    paths.extend(explicit.map(Path::to_path_buf));
    if let Some(from_env) = std::env::var_os(DYLIB_ENV).filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(from_env));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = &exe_dir {
        paths.push(dir.join(&file));
    }
    for target in development_targets(exe_dir.as_deref()) {
        for provider in DEVELOPMENT_PROVIDERS {
            let path = target.join("onnxruntime").join(provider).join(&file);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

/// Cargo target folders that may hold a development copy: the ones the running binary
/// lives in (tests run from `target/debug/deps`, the CLI from `target/release`). Found
/// from the binary's place at run time: no source-tree path is compiled in.
fn development_targets(exe_dir: Option<&Path>) -> Vec<PathBuf> {
    exe_dir
        .into_iter()
        .flat_map(Path::ancestors)
        .filter(|dir| dir.file_name().is_some_and(|name| name == "target"))
        .map(Path::to_path_buf)
        .collect()
}

/// Some of these run on the real library (`cargo xtask ort` fetches it).
#[cfg(test)]
mod tests {
    use ort::session::Session;
    use ort::value::Tensor;

    use super::*;

    #[test]
    fn a_file_that_is_not_onnx_runtime_is_refused_with_its_path() {
        let not_a_library = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let message = library_version(&not_a_library).unwrap_err().to_string();
        assert!(message.contains("Cargo.toml"), "{message}");
        assert!(message.contains(FETCH_COMMAND), "{message}");
    }

    #[test]
    fn explicit_path_is_searched_first_and_listed_in_the_error() {
        let explicit = Path::new("/nowhere/libonnxruntime.so");
        let paths = candidate_paths(Some(explicit));
        assert_eq!(paths[0], explicit);
        let message = RuntimeError::NotFound { searched: paths }.to_string();
        assert!(message.contains("/nowhere/libonnxruntime.so"), "{message}");
        assert!(message.contains(FETCH_COMMAND), "{message}");
        assert!(message.contains(DYLIB_ENV), "{message}");
    }

    #[test]
    fn development_copies_are_searched_per_provider() {
        let paths = candidate_paths(None);
        for provider in DEVELOPMENT_PROVIDERS {
            let needle = Path::new("onnxruntime").join(provider).join(library_file_name());
            assert!(
                paths.iter().any(|p| p.ends_with(&needle)),
                "{needle:?} not in {paths:?}"
            );
        }
    }

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
}
