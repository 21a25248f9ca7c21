//! Plugin bundles: nice-plug's bundler builds the VST3 and CLAP bundles, then the ONNX
//! Runtime library, the tiny default model and the factory prompt banks are copied in
//! beside the plugin binary, in a `musicgen-live/` folder, where the plugin looks for them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{ort, run, system};

/// The bundle name from bundler.toml.
const BUNDLE_NAME: &str = "MusicGen Live";

/// The folder beside the plugin binary that holds its resources (the plugin's
/// `controller::resources_dir` reads the same name).
const RESOURCES: &str = "musicgen-live";

/// `args` go to nice-plug's bundler, less `--provider cpu|cuda|directml`: the ONNX
/// Runtime build (with CUDA's libraries, for cuda) the bundles carry.
pub fn bundle(root: &Path, mut args: Vec<String>) -> Result<()> {
    system::ensure_build_prerequisites()?;
    let provider = take_provider(&mut args)?;
    let library = ort::ensure(root, provider)?;
    let release = args.iter().any(|a| a == "--release");
    nice_plug_xtask::chdir_workspace_root()?;
    nice_plug_xtask::main_with_args("cargo xtask", std::iter::once("bundle".to_owned()).chain(args))?;
    let bundled = root.join("target").join("bundled");
    let mut placed = 0;
    for dir in binary_dirs(&bundled)? {
        if release {
            strip_debug_info(&dir)?;
        }
        let resources = dir.join(RESOURCES);
        // A bundle made for another provider before leaves its libraries here.
        if resources.exists() {
            fs::remove_dir_all(&resources)?;
        }
        copy_runtime(library.parent().expect("the library is in a folder"), &resources)?;
        copy_tree(
            &root.join("models").join("tiny"),
            &resources.join("models").join("tiny"),
        )?;
        // The plugin has the factory banks compiled in; these copies are for people to
        // open, edit and load as their own.
        copy_tree(&root.join("plugin").join("banks"), &resources.join("banks"))?;
        println!(
            "added ONNX Runtime, the tiny model and the factory banks to {}",
            resources.display()
        );
        placed += 1;
    }
    if placed == 0 {
        bail!(
            "nice-plug's bundler wrote no {BUNDLE_NAME} bundle to {}",
            bundled.display()
        );
    }
    Ok(())
}

/// The folders that hold the plugin binaries: inside the VST3 bundle, and beside the CLAP
/// file (a CLAP plugin is a single file on Linux and Windows).
fn binary_dirs(bundled: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    let vst3_contents = bundled.join(format!("{BUNDLE_NAME}.vst3")).join("Contents");
    if vst3_contents.is_dir() {
        for entry in fs::read_dir(&vst3_contents)? {
            let path = entry?.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "Resources") {
                dirs.push(path);
            }
        }
    }
    let clap = bundled.join(format!("{BUNDLE_NAME}.clap"));
    if clap.is_file() {
        dirs.push(bundled.to_path_buf());
    } else if clap.join("Contents").join("MacOS").is_dir() {
        dirs.push(clap.join("Contents").join("MacOS"));
    }
    Ok(dirs)
}

/// The release profile keeps line tables for the CLI's backtraces and for profiling; a
/// shipped plugin does not need them (on Linux they are six sevenths of its size).
fn strip_debug_info(dir: &Path) -> Result<()> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let is_plugin = path.extension().is_some_and(|e| e == "so" || e == "clap");
        if path.is_file() && is_plugin {
            run(Command::new("strip").arg("--strip-debug").arg(&path))?;
        }
    }
    Ok(())
}

/// Takes `--provider NAME` (or `--provider=NAME`) out of the bundler's arguments.
fn take_provider(args: &mut Vec<String>) -> Result<ort::Provider> {
    use clap::ValueEnum;

    let Some(at) = args
        .iter()
        .position(|a| a == "--provider" || a.starts_with("--provider="))
    else {
        return Ok(ort::Provider::Cpu);
    };
    let flag = args.remove(at);
    let name = match flag.strip_prefix("--provider=") {
        Some(name) => name.to_owned(),
        None if at < args.len() => args.remove(at),
        None => bail!("--provider needs a value: cpu, cuda or directml"),
    };
    ort::Provider::from_str(&name, true)
        .map_err(|_| anyhow::anyhow!("unknown provider `{name}`; use cpu, cuda or directml"))
}

/// Copies the runtime's shared libraries (ONNX Runtime's, and CUDA's for a CUDA build).
fn copy_runtime(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_file() && (name.contains(".so") || name.ends_with(".dll") || name.ends_with(".dylib")) {
            fs::copy(&path, to.join(path.file_name().expect("a file has a name")))?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let target = to.join(path.file_name().expect("an entry has a name"));
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target)?;
        }
    }
    Ok(())
}
