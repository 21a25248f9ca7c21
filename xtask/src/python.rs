//! The Python side of the project: a virtual environment under `target/` with the export
//! tool's requirements, and `models/export.py` run inside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::{run, system};

fn venv_dir(root: &Path) -> PathBuf {
    root.join("target").join("export-venv")
}

/// Removes `target/export-venv` (the next export makes it again) when the disk holding it
/// has less than `needed_bytes` free for `what`: the largest cache under `target/` and the
/// one the steps after the export's need least.
pub fn remove_venv_when_short(root: &Path, needed_bytes: u64, what: &str) -> Result<()> {
    let venv = venv_dir(root);
    if !venv.exists() {
        return Ok(());
    }
    let free_bytes = system::free_disk_bytes(&venv)?;
    if free_bytes.is_none_or(|free| free >= needed_bytes) {
        return Ok(());
    }
    println!(
        "{what} need about {:.1} GiB and the disk has {:.1} GiB free: removing {} to make room",
        system::gib(needed_bytes),
        system::gib(free_bytes.unwrap_or(0)),
        venv.display()
    );
    fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))
}

/// Creates (once) `target/export-venv` and installs `models/requirements.txt` into it;
/// returns its Python interpreter.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = venv_dir(root);
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        println!("creating {} ...", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv failed; install python3-venv")?;
    }
    let requirements = root.join("models").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        system::ensure_free_disk(&venv, VENV_BYTES, "the export tool's Python packages (torch)")?;
        println!(
            "installing {} (torch is large: a few minutes) ...",
            requirements.display()
        );
        install_requirements(&python, &requirements)?;
        fs::write(&stamp, wanted)?;
    }
    Ok(python)
}

/// The most the install holds on disk at once: measured 5.3 GiB at its peak, 4.7 GiB once
/// installed (pip keeps each batch's downloaded wheels until that batch is installed).
const VENV_BYTES: u64 = 11 << 29;

/// Installs the pinned packages with `--no-deps` (the file pins every one) in two batches,
/// CUDA's libraries first: pip keeps a batch's wheels on disk until all of it is installed,
/// and one batch of everything took 7.3 GiB at its peak, two take 5.3 GiB.
/// A dropped connection to PyPI in the middle should not fail a CI run: pip retries each
/// request, and a batch is tried again once (pip skips what it already installed). No
/// download cache: it would double the space the wheels take.
fn install_requirements(python: &Path, requirements: &Path) -> Result<()> {
    let text = fs::read_to_string(requirements)?;
    let (cuda, rest): (Vec<&str>, Vec<&str>) = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .partition(|line| line.starts_with("nvidia-") || line.starts_with("cuda-"));
    for batch in [cuda, rest] {
        let install = || {
            run(Command::new(python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-cache-dir",
                    "--no-deps",
                ])
                .args(["--retries", "10", "--timeout", "60"])
                .args(&batch))
        };
        install()
            .or_else(|first| {
                println!("pip install failed ({first:#}); trying once more");
                install()
            })
            .with_context(|| format!("installing {} with pip", requirements.display()))?;
    }
    Ok(())
}

/// Runs the export tool with `args`.
pub fn export(root: &Path, args: &[String]) -> Result<()> {
    models_script(root, "export.py", args)
}

/// Runs `models/<script>` with `args` in the export environment.
fn models_script(root: &Path, script: &str, args: &[String]) -> Result<()> {
    let python = ensure_venv(root)?;
    run(Command::new(python)
        .arg(root.join("models").join(script))
        .args(args)
        .current_dir(root))
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

/// The flags of an export whose quantized weights a template reproduces: the cache and
/// the codec stay in float32 (their int8 forms are calibrated by running the model, which
/// an import cannot do), as `--template-only` writes them.
const TEMPLATE_INT4: [&str; 6] = [
    "--quantize",
    "int4",
    "--codec-lstm",
    "float32",
    "--codec-upsampler",
    "float32",
];

/// The shapes whose templates `musicgen import` carries (`models/templates/<shape>/`).
pub const TEMPLATE_SHAPES: [&str; 13] = [
    "tiny",
    "tiny-stereo",
    "tiny-melody",
    "musicgen-small",
    "musicgen-stereo-small",
    "musicgen-medium",
    "musicgen-stereo-medium",
    "musicgen-melody",
    "musicgen-stereo-melody",
    "musicgen-large",
    "musicgen-stereo-large",
    "musicgen-melody-large",
    "musicgen-stereo-melody-large",
];

/// Writes the graph templates of `shapes` in every precision into `models/templates/`.
pub fn write_templates(root: &Path, shapes: &[String]) -> Result<()> {
    for shape in shapes {
        ensure!(
            TEMPLATE_SHAPES.contains(&shape.as_str()),
            "no template shape {shape}; the shapes are {}",
            TEMPLATE_SHAPES.join(", ")
        );
        let templates = root.join("models").join("templates").join(shape);
        let mut args = owned(&["--random", shape, "--template-only", "--template-out"]);
        args.push(templates.to_string_lossy().into_owned());
        println!("\n{shape}:");
        export(root, &args)?;
    }
    Ok(())
}

/// Where the import tests find their checkpoints and the export's bundles of them.
const CHECKPOINTS: &str = "checkpoints";
const CHECKPOINT_EXPORTS: &str = "checkpoint-exports";

/// Writes the import tests' fixtures under `target/`: random tiny checkpoints as
/// transformers saves them (mono in one file; stereo in shards with the hub's older weight
/// norm names), and `export.py --checkpoint` bundles of them to compare an import with.
/// The quantized export also writes a fresh template, which must match the committed one.
pub fn write_checkpoint_fixtures(root: &Path) -> Result<()> {
    let target = root.join("target");
    for dir in [CHECKPOINTS, CHECKPOINT_EXPORTS] {
        if target.join(dir).exists() {
            fs::remove_dir_all(target.join(dir))?;
        }
    }
    let path = |parts: &[&str]| -> String {
        parts
            .iter()
            .fold(target.clone(), |p, part| p.join(part))
            .to_string_lossy()
            .into_owned()
    };
    let tiny = path(&[CHECKPOINTS, "tiny"]);
    let stereo = path(&[CHECKPOINTS, "tiny-stereo"]);
    models_script(root, "checkpoint.py", &owned(&["--random", "tiny", "--out", &tiny]))?;
    models_script(
        root,
        "checkpoint.py",
        &owned(&[
            "--random",
            "tiny-stereo",
            "--shard-bytes",
            "4000000",
            "--legacy-names",
            "--out",
            &stereo,
        ]),
    )?;
    export(
        root,
        &owned(&["--checkpoint", &tiny, "--out", &path(&[CHECKPOINT_EXPORTS, "tiny"])]),
    )?;
    export(
        root,
        &owned(&[
            "--checkpoint",
            &stereo,
            // The layout of decoders over 2 GB (medium, large), on a tiny one.
            "--external-data",
            "--out",
            &path(&[CHECKPOINT_EXPORTS, "tiny-stereo"]),
        ]),
    )?;
    let melody = path(&[CHECKPOINTS, "tiny-melody"]);
    models_script(
        root,
        "checkpoint.py",
        &owned(&["--random", "tiny-melody", "--out", &melody]),
    )?;
    export(
        root,
        &owned(&[
            "--checkpoint",
            &melody,
            "--out",
            &path(&[CHECKPOINT_EXPORTS, "tiny-melody"]),
        ]),
    )?;
    let fresh_template = path(&[CHECKPOINT_EXPORTS, "template-tiny-int4"]);
    let mut args = owned(&[
        "--checkpoint",
        &tiny,
        "--out",
        &path(&[CHECKPOINT_EXPORTS, "tiny-int4"]),
    ]);
    args.extend(owned(&TEMPLATE_INT4));
    args.extend(["--template-out".to_owned(), fresh_template.clone()]);
    export(root, &args)?;
    same_template(Path::new(&fresh_template), &root.join("models/templates/tiny/int4"))
}

/// Fails unless two templates have the same recipes, offsets and manifest.
fn same_template(fresh: &Path, committed: &Path) -> Result<()> {
    ensure!(
        read_json(fresh, "template.json")? == read_json(committed, "template.json")?,
        "a fresh template differs from {}; rewrite the templates (`cargo xtask templates`)",
        committed.display()
    );
    println!("a fresh template reproduces {}", committed.display());
    Ok(())
}

/// `dir/file`, parsed as JSON.
fn read_json(dir: &Path, file: &str) -> Result<Value> {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The decoder step at which the fault tests' bundle fails.
const FAULT_STEP: u32 = 40;

/// Writes `target/fault-bundles/decoder-fails-at-step-40`: the tiny bundle with a decoder
/// that fails at that step, for the engine's fault tests (`models/fault_bundle.py`).
pub fn write_fault_bundle(root: &Path) -> Result<()> {
    let python = ensure_venv(root)?;
    let out = root
        .join("target")
        .join("fault-bundles")
        .join(format!("decoder-fails-at-step-{FAULT_STEP}"));
    run(Command::new(python)
        .arg(root.join("models").join("fault_bundle.py"))
        .arg("--bundle")
        .arg(root.join("models").join("tiny"))
        .arg("--out")
        .arg(out)
        .args(["--step", &FAULT_STEP.to_string()]))
}

/// The committed test bundles: the `--random` shape each is exported from, and its folder
/// under `models/`.
const TINY_BUNDLES: [(&str, &str); 3] = [
    ("tiny", "tiny"),
    ("tiny-stereo", "tiny-stereo"),
    ("tiny-melody", "tiny-melody"),
];

/// Exports each tiny bundle afresh and checks that it reproduces the committed one (the
/// same manifest and the same golden codes from transformers) and its float32 template,
/// and that the export quantizes its decoder as onnxruntime's quantizer does.
pub fn check_tiny_export(root: &Path) -> Result<()> {
    for (shape, folder) in TINY_BUNDLES {
        let out = root.join("target").join("tiny-export-check").join(folder);
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        let out_arg = out.to_string_lossy().into_owned();
        let template = out.with_file_name(format!("{folder}-template"));
        let template_arg = template.to_string_lossy().into_owned();
        export(
            root,
            &owned(&[
                "--random",
                shape,
                "--golden",
                "--out",
                &out_arg,
                "--template-out",
                &template_arg,
            ]),
        )?;
        same_template(
            &template,
            &root.join("models").join("templates").join(shape).join("float32"),
        )?;
        let committed = root.join("models").join(folder);
        ensure!(
            read_json(&out, "musicgen.json")? == read_json(&committed, "musicgen.json")?,
            "a fresh export's musicgen.json differs from models/{folder}'s; re-export models/{folder}"
        );
        let (fresh, kept) = (read_json(&out, "golden.json")?, read_json(&committed, "golden.json")?);
        for field in ["input_ids", "codes", "unguided"] {
            ensure!(
                fresh[field] == kept[field],
                "a fresh export's golden {field} differ from models/{folder}/golden.json; re-export models/{folder}"
            );
        }
        println!("fresh export of --random {shape} reproduces models/{folder} (manifest and golden codes)");
        // The export's own quantizer against onnxruntime's, on a decoder with
        // cross-attention and on one with a melody prefix.
        if shape != "tiny-stereo" {
            let decoder = committed.join("decoder.onnx").to_string_lossy().into_owned();
            models_script(root, "matmul_nbits.py", &owned(&["--check", &decoder]))?;
        }
    }
    // `cargo xtask templates`' path: one export writes every precision's template.
    let templates = root.join("target").join("tiny-export-check").join("tiny-templates");
    if templates.exists() {
        fs::remove_dir_all(&templates)?;
    }
    let templates_arg = templates.to_string_lossy().into_owned();
    export(
        root,
        &owned(&["--random", "tiny", "--template-only", "--template-out", &templates_arg]),
    )?;
    for precision in ["float32", "int8", "int4"] {
        same_template(
            &templates.join(precision),
            &root.join("models").join("templates").join("tiny").join(precision),
        )?;
    }
    Ok(())
}
