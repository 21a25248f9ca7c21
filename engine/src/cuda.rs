//! CUDA beside ONNX Runtime, without a system CUDA install: `cargo xtask ort --provider
//! cuda` unpacks CUDA's libraries from NVIDIA's PyPI wheels next to the runtime library.
//! ONNX Runtime's CUDA provider does not look there for its dependencies, so they are
//! loaded (globally, once per process) before it starts; and where it still cannot start,
//! [`CudaReadiness::unavailable`] says what is missing, in words a musician can act on.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::runtime::loader_error;

/// The CUDA provider's library in an ONNX Runtime GPU build, in the platform's naming
/// (`libonnxruntime_providers_cuda.so`, `onnxruntime_providers_cuda.dll`).
fn provider_library() -> String {
    format!(
        "{}onnxruntime_providers_cuda{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The NVIDIA driver's library: it comes with the driver, never from a wheel.
const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// What loading CUDA beside the runtime library found.
#[derive(Debug, Clone, Default)]
pub struct CudaReadiness {
    /// The folder searched: the runtime library's.
    pub folder: PathBuf,
    /// CUDA's libraries that loaded from it (file names).
    pub loaded: Vec<String>,
    /// Libraries in it that would not load, with the loader's reason. Without an NVIDIA
    /// driver, those that link the driver's library fail; that is no fault of the folder.
    pub failed: Vec<(String, String)>,
    /// Why the CUDA provider cannot start on this machine, when it cannot.
    pub unavailable: Option<String>,
}

/// Examines (once per process) the folder of the runtime library at `library`.
pub(crate) fn readiness(library: &Path) -> &'static CudaReadiness {
    static READINESS: OnceLock<CudaReadiness> = OnceLock::new();
    READINESS.get_or_init(|| examine(library.parent().unwrap_or(Path::new("."))))
}

fn examine(folder: &Path) -> CudaReadiness {
    let provider = folder.join(provider_library());
    let mut readiness = CudaReadiness {
        folder: folder.to_path_buf(),
        ..CudaReadiness::default()
    };
    if !provider.is_file() {
        readiness.unavailable = Some(format!(
            "this ONNX Runtime build has no CUDA provider ({} is missing); run `cargo xtask ort --provider cuda`",
            provider.display()
        ));
        return readiness;
    }
    (readiness.loaded, readiness.failed) = preload(folder);
    readiness.unavailable = provider_load_error(&provider).map(|error| {
        if error.contains(DRIVER_LIBRARY) {
            format!(
                "no NVIDIA driver on this machine ({DRIVER_LIBRARY} not found), so there is no CUDA device to \
                 run on; CUDA's own {} libraries loaded from {}",
                readiness.loaded.len(),
                folder.display()
            )
        } else {
            format!(
                "{} does not load ({error}); run `cargo xtask ort --provider cuda` to put CUDA's libraries beside it",
                provider.display()
            )
        }
    });
    readiness
}

/// Loads every CUDA library in `folder` for the whole process, dependencies first (a
/// library that needs one not loaded yet is tried again on the next pass).
#[cfg(unix)]
fn preload(folder: &Path) -> (Vec<String>, Vec<(String, String)>) {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

    let mut pending: Vec<PathBuf> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
                name.starts_with("lib") && name.contains(".so") && !name.starts_with("libonnxruntime")
            })
        })
        .collect();
    pending.sort();
    let name = |path: &Path| path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut loaded = Vec::new();
    loop {
        let mut failed = Vec::new();
        let before = pending.len();
        for path in std::mem::take(&mut pending) {
            // SAFETY: CUDA's libraries from NVIDIA's wheels; their initialisers only
            // register themselves. They stay loaded for the process, as the provider needs.
            match unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(library) => {
                    std::mem::forget(library);
                    loaded.push(name(&path));
                }
                Err(error) => {
                    failed.push((name(&path), loader_error(&error)));
                    pending.push(path);
                }
            }
        }
        if pending.is_empty() || pending.len() == before {
            return (loaded, failed);
        }
    }
}

#[cfg(not(unix))]
fn preload(_folder: &Path) -> (Vec<String>, Vec<(String, String)>) {
    // Windows searches the folder of the library that asks for a DLL.
    (Vec::new(), Vec::new())
}

/// Why the provider library does not load, if it does not.
fn provider_load_error(provider: &Path) -> Option<String> {
    // SAFETY: ONNX Runtime's own provider library, loaded to see whether its
    // dependencies resolve; ONNX Runtime loads it again when it starts the provider.
    unsafe { libloading::Library::new(provider) }
        .err()
        .map(|error| loader_error(&error))
}
