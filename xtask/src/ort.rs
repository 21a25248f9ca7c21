//! Fetches ONNX Runtime's shared libraries from the official PyPI wheels, so that no
//! build step downloads binaries from anywhere else.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

/// The ONNX Runtime release the engine's `ort` crate is built against (its API 1.31).
pub const ORT_VERSION: &str = "1.31.1";

/// A release older than the engine's API, which the tests check is refused by name.
const TOO_OLD_VERSION: &str = "1.20.1";

/// Where the tests find the too-old release (the engine's `old_runtime` test).
const TOO_OLD_FOLDER: &str = "too-old";

/// Where `cargo xtask test` puts the CUDA build and CUDA's libraries for the engine's
/// `cuda_libraries` test: outside `target/onnxruntime/`, so that the other tests keep
/// running on the CPU build the engine finds there.
const CUDA_CHECK_FOLDER: &str = "onnxruntime-cuda-check";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    Cpu,
    Cuda,
    Directml,
}

impl Provider {
    fn wheel(self) -> &'static str {
        match self {
            Self::Cpu => "onnxruntime",
            Self::Cuda => "onnxruntime-gpu",
            Self::Directml => "onnxruntime-directml",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Directml => "directml",
        }
    }
}

/// The platform's file name for the main library, as the engine looks for it.
fn library_file_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn library_dir(root: &Path, provider: Provider) -> PathBuf {
    root.join("target").join("onnxruntime").join(provider.folder())
}

/// Fetches the library unless the development copy is already there.
pub fn ensure(root: &Path, provider: Provider) -> Result<PathBuf> {
    let dir = library_dir(root, provider);
    let library = dir.join(library_file_name());
    let complete = provider != Provider::Cuda || dir.join(CUDA_STAMP).is_file();
    if library.is_file() && complete {
        return Ok(library);
    }
    fetch(root, provider)
}

/// Fetches (once) the CPU library of a release too old for the engine into
/// `target/onnxruntime/too-old/`, where a test loads it and expects a refusal.
pub fn ensure_too_old(root: &Path) -> Result<PathBuf> {
    let out = root.join("target").join("onnxruntime").join(TOO_OLD_FOLDER);
    let library = out.join(library_file_name());
    if library.is_file() {
        return Ok(library);
    }
    fetch_release(root, Provider::Cpu, TOO_OLD_VERSION, &out)
}

/// The most CUDA's libraries hold on disk while they are fetched: the wheels (1.6 GB) and
/// their unpacked libraries (2.4 GB).
pub const CUDA_FETCH_BYTES: u64 = 5 << 30;

/// The CUDA check's folder, `target/onnxruntime-cuda-check/`.
fn cuda_check_dir(root: &Path) -> PathBuf {
    root.join("target").join(CUDA_CHECK_FOLDER)
}

/// Whether the CUDA check's libraries are all unpacked already.
pub fn cuda_check_is_ready(root: &Path) -> bool {
    let out = cuda_check_dir(root);
    out.join(library_file_name()).is_file() && out.join(CUDA_STAMP).is_file()
}

/// Fetches (once) the CUDA build with CUDA's libraries into `target/onnxruntime-cuda-check/`.
pub fn ensure_cuda_check(root: &Path) -> Result<PathBuf> {
    let out = cuda_check_dir(root);
    if cuda_check_is_ready(root) {
        return Ok(out.join(library_file_name()));
    }
    fetch_release(root, Provider::Cuda, ORT_VERSION, &out)
}

/// Downloads the provider's wheel for this platform with pip and unpacks its shared
/// libraries to `target/onnxruntime/<provider>/` (for CUDA, with CUDA's own libraries).
pub fn fetch(root: &Path, provider: Provider) -> Result<PathBuf> {
    fetch_release(root, provider, ORT_VERSION, &library_dir(root, provider))
}

fn fetch_release(root: &Path, provider: Provider, version: &str, out: &Path) -> Result<PathBuf> {
    let wheels = root
        .join("target")
        .join("onnxruntime")
        .join("wheels")
        .join(provider.folder());
    fs::create_dir_all(&wheels)?;
    let requirement = format!("{}=={version}", provider.wheel());
    println!("fetching {requirement} from PyPI with pip ...");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
        ])
        .arg(&wheels)
        .arg(&requirement))
    .with_context(|| format!("pip could not download {requirement}; it needs python3 with pip and access to PyPI"))?;
    let wheel = find_wheel(&wheels, provider, version)?;
    let library = unpack_libraries(&wheel, out)?;
    if provider == Provider::Cuda {
        fetch_cuda_libraries(&wheels, &requirement, out)?;
    }
    println!(
        "ONNX Runtime {version} ({}) ready: {}",
        provider.folder(),
        library.display()
    );
    Ok(library)
}

/// Written once CUDA's libraries are unpacked, so that a fetch cut short is done again.
const CUDA_STAMP: &str = "cuda-libraries.unpacked";

/// Downloads the `nvidia-*` wheels that the onnxruntime-gpu release names in its `cuda` and
/// `cudnn` extras (pip resolves their own dependencies, such as cuBLAS), unpacks their
/// shared libraries beside ONNX Runtime in `out`, and deletes the wheels (1.6 GB).
fn fetch_cuda_libraries(wheels: &Path, requirement: &str, out: &Path) -> Result<()> {
    let with_extras = requirement.replacen("==", "[cuda,cudnn]==", 1);
    crate::system::ensure_free_disk(out, CUDA_FETCH_BYTES, "CUDA's libraries (wheels and unpacked)")?;
    println!("fetching CUDA's libraries for {with_extras} from PyPI with pip (about 1.6 GB) ...");
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest"])
        .arg(wheels)
        .arg(&with_extras))
    .with_context(|| format!("pip could not download {with_extras}"))?;
    let mut unpacked = 0;
    for entry in fs::read_dir(wheels)? {
        let path = entry?.path();
        let is_nvidia = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("nvidia_") && n.ends_with(".whl"));
        if !is_nvidia {
            continue;
        }
        unpacked += unpack_nvidia_libraries(&path, out)?;
        fs::remove_file(&path)?;
    }
    if unpacked == 0 {
        bail!(
            "pip downloaded no nvidia-* wheel for {with_extras} into {}",
            wheels.display()
        );
    }
    fs::write(out.join(CUDA_STAMP), format!("{unpacked} libraries\n"))?;
    println!("unpacked {unpacked} CUDA libraries into {}", out.display());
    Ok(())
}

/// Copies `nvidia/<part>/lib/*.so*` (or `bin/*.dll`) out of one NVIDIA wheel.
fn unpack_nvidia_libraries(wheel: &Path, out: &Path) -> Result<usize> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("reading {}", wheel.display()))?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let entry_name = entry.name()?.into_owned();
        let mut parts = entry_name.split('/');
        let (Some("nvidia"), Some(_), Some("lib" | "bin"), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !is_native_library(name) {
            continue;
        }
        let target = out.join(name);
        let mut dest = fs::File::create(&target).with_context(|| format!("writing {}", target.display()))?;
        io::copy(&mut entry, &mut dest)?;
        count += 1;
    }
    Ok(count)
}

fn find_wheel(dir: &Path, provider: Provider, version: &str) -> Result<PathBuf> {
    let prefix = format!("{}-{version}-", provider.wheel().replace('-', "_"));
    fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .with_context(|| format!("pip reported success but no {prefix}*.whl is in {}", dir.display()))
}

/// Copies `onnxruntime/capi/*onnxruntime*` shared libraries (not the Python binding) out
/// of the wheel, and gives the main one its plain platform name (renamed, not copied, so
/// that bundles carry one copy).
fn unpack_libraries(wheel: &Path, out: &Path) -> Result<PathBuf> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("reading {}", wheel.display()))?;
    fs::create_dir_all(out)?;
    let main_name = library_file_name();
    let mut main_library = None;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let entry_name = entry.name()?.into_owned();
        let Some(name) = entry_name.strip_prefix("onnxruntime/capi/").map(str::to_owned) else {
            continue;
        };
        if name.contains('/') || !is_native_library(&name) || name.contains("pybind11") {
            continue;
        }
        let target = out.join(&name);
        let mut dest = fs::File::create(&target).with_context(|| format!("writing {}", target.display()))?;
        io::copy(&mut entry, &mut dest)?;
        if name == main_name || name.starts_with(&format!("{main_name}.")) || is_versioned_dylib(&name) {
            main_library = Some(target);
        }
    }
    let Some(found) = main_library else {
        bail!("{} holds no {main_name}; is it an ONNX Runtime wheel?", wheel.display());
    };
    let canonical = out.join(&main_name);
    if found != canonical {
        fs::rename(&found, &canonical)?;
    }
    Ok(canonical)
}

fn is_native_library(name: &str) -> bool {
    name.ends_with(".dll") || name.ends_with(".dylib") || name.contains(".so")
}

/// macOS wheels name the library `libonnxruntime.1.31.1.dylib`.
fn is_versioned_dylib(name: &str) -> bool {
    name.starts_with("libonnxruntime.") && name.ends_with(".dylib")
}
