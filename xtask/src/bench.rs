//! `cargo xtask bench`: exports (once, cached under `target/bench/`) random bundles of a
//! real checkpoint's shape (musicgen-small in each precision and cache type worth
//! comparing, musicgen-medium in 4 bits), times each with `musicgen bench` (one process per
//! bundle, so that peak memory is its own), times transformers' own `generate` on the same
//! small model as the anchor, and writes the shape's section of BENCHMARKS.md.
//!
//! The baseline rows are the engine and exporter as they were before the CPU work
//! ([`BASELINE_COMMIT`]): a git worktree of that commit is built and runs its own bundles,
//! in the same run on the same machine as today's.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::bench_report::{self, Measured, RunFacts};
use crate::{cargo, ort, python, run, system};

/// The last commit before the decoder graph, cache, prefill and codec work.
pub const BASELINE_COMMIT: &str = "037cb1f8b0cfa3b5cf76a7645596eca3ae190ad7";

/// Which engine and exporter a row runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Current,
    Baseline,
}

pub struct Variant {
    pub name: &'static str,
    pub engine: Engine,
    pub export_args: &'static [&'static str],
    pub what: &'static str,
}

/// The bundle the README recommends for the CPU (the fastest stream in BENCHMARKS.md at
/// agreement close to the others'), and the one `--quick` measures. Every quantized bundle
/// also has the int8 codec (`--codec-lstm` and `--codec-upsampler` auto).
pub const RECOMMENDED: &str = "int4b128-kv8";
/// The exact bundle the others' greedy streams are compared with.
const REFERENCE: &str = "fp32";

pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "baseline-fp32",
        engine: Engine::Baseline,
        export_args: &[],
        what: "before: torch-exported step graph, float32 cache fed whole, windowed codec",
    },
    Variant {
        name: "baseline-int8",
        engine: Engine::Baseline,
        export_args: &["--quantize", "int8"],
        what: "before: int8 MatMulInteger (dynamic)",
    },
    Variant {
        name: "baseline-int4",
        engine: Engine::Baseline,
        export_args: &["--quantize", "int4"],
        what: "before: 4-bit MatMulNBits, accuracy level 0",
    },
    Variant {
        name: "fp32",
        engine: Engine::Current,
        export_args: &[],
        what: "float32 weights and cache (exact)",
    },
    Variant {
        name: "int8dyn-kv8",
        engine: Engine::Current,
        export_args: &["--quantize", "int8", "--quant-method", "dynamic", "--kv-cache", "int8"],
        what: "int8 MatMulInteger, int8 cache",
    },
    Variant {
        name: "int8-kv8",
        engine: Engine::Current,
        export_args: &["--quantize", "int8", "--kv-cache", "int8"],
        what: "8-bit MatMulNBits (level 4), int8 cache",
    },
    Variant {
        name: "int4",
        engine: Engine::Current,
        export_args: &["--quantize", "int4"],
        what: "4-bit MatMulNBits (blocks of 32, level 4), float32 cache",
    },
    Variant {
        name: "int4-kv8",
        engine: Engine::Current,
        export_args: &["--quantize", "int4", "--kv-cache", "int8"],
        what: "4-bit MatMulNBits (blocks of 32, level 4), int8 cache",
    },
    Variant {
        name: RECOMMENDED,
        engine: Engine::Current,
        export_args: &["--quantize", "int4", "--block-size", "128", "--kv-cache", "int8"],
        what: "4-bit MatMulNBits (blocks of 128, level 4), int8 cache",
    },
    Variant {
        name: "int4-kv8-f32heads",
        engine: Engine::Current,
        export_args: &["--quantize", "int4", "--kv-cache", "int8", "--no-quantize-lm-heads"],
        what: "as int4-kv8 with float32 LM heads",
    },
    Variant {
        name: "int4-kv8-qemb",
        engine: Engine::Current,
        export_args: &["--quantize", "int4", "--kv-cache", "int8", "--quantize-embeddings"],
        what: "as int4-kv8 with 4-bit codebook embeddings",
    },
];

/// The model shapes the bench exports (`models/export.py --random SHAPE`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    MusicgenSmall,
    MusicgenMedium,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Self::MusicgenSmall => "musicgen-small",
            Self::MusicgenMedium => "musicgen-medium",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::MusicgenSmall => "24 layers, 16 heads, width 1024, K = 4, cardinality 2048",
            Self::MusicgenMedium => "48 layers, 24 heads, width 1536, K = 4, cardinality 2048",
        }
    }

    /// Every variant for musicgen-small; for medium, whose float32 bundle streams too
    /// slowly on a CPU to be worth an hour of the bench, the 4-bit ones.
    fn variants(self) -> Vec<&'static Variant> {
        VARIANTS
            .iter()
            .filter(|v| self == Self::MusicgenSmall || MEDIUM_VARIANTS.contains(&v.name))
            .collect()
    }

    /// The baseline engine and transformers' anchor run on musicgen-small only: the first
    /// is the CPU work's starting point, the second would take half an hour on medium.
    pub fn has_comparisons(self) -> bool {
        self == Self::MusicgenSmall
    }
}

const MEDIUM_VARIANTS: [&str; 2] = ["int4", RECOMMENDED];

pub struct BenchOptions {
    pub shape: Shape,
    pub stream_seconds: f64,
    pub quick: bool,
}

pub fn bench(root: &Path, options: &BenchOptions) -> Result<()> {
    system::ensure_build_prerequisites()?;
    let library = ort::ensure(root, ort::Provider::Cpu)?;
    let started = Instant::now();
    let shape = options.shape;
    let variants: Vec<&Variant> = shape
        .variants()
        .into_iter()
        .filter(|v| !options.quick || v.name == RECOMMENDED)
        .collect();
    // Quick streams still pass one slide of the default live window (15 s).
    let stream_seconds = if options.quick { 16.0 } else { options.stream_seconds };
    let current = build_current(root)?;
    let baseline = if variants.iter().any(|v| v.engine == Engine::Baseline) {
        build_baseline(root).map_err(|e| format!("{e:#}"))
    } else {
        Err("not run".to_owned())
    };
    let reference = variants
        .iter()
        .any(|v| v.name == REFERENCE)
        .then(|| bundle_dir(root, shape, REFERENCE));
    let total = variants.len() + usize::from(shape.has_comparisons());
    let mut measured = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        println!("[{}/{total}] {} {}", i + 1, shape.name(), variant.name);
        let engine = match variant.engine {
            Engine::Current => Ok(Tools {
                musicgen: current.clone(),
                export_py: root.join("models").join("export.py"),
            }),
            Engine::Baseline => baseline.clone(),
        };
        measured.push(measure(
            root,
            variant,
            engine,
            &library,
            stream_seconds,
            options,
            reference.as_deref(),
        ));
    }
    let pattern_steps = measured
        .iter()
        .find_map(|m| m.report.as_ref().ok())
        .and_then(|r| r["stream"]["pattern_steps"].as_u64())
        .context("no bundle could be measured; see the errors above")?;
    let anchor = if shape.has_comparisons() {
        let anchor_steps = if options.quick { 60 } else { pattern_steps };
        println!("[{total}/{total}] transformers generate, {anchor_steps} steps");
        Some(run_anchor(root, anchor_steps)?)
    } else {
        None
    };
    let facts = RunFacts {
        shape,
        stream_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        quick: options.quick,
    };
    let section = bench_report::render(&measured, anchor.as_ref(), &facts)?;
    print!("{section}");
    if options.quick {
        println!("(--quick: BENCHMARKS.md left as it is)");
        return Ok(());
    }
    let out = root.join("BENCHMARKS.md");
    let previous = fs::read_to_string(&out).unwrap_or_default();
    fs::write(&out, bench_report::replace_section(&previous, shape, &section))
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote the {} section of {}", shape.name(), out.display());
    Ok(())
}

/// A `musicgen` binary and the exporter that makes bundles for it.
#[derive(Clone)]
struct Tools {
    musicgen: PathBuf,
    export_py: PathBuf,
}

/// Cargo's arguments for the release `musicgen` binary (in the baseline, the engine's).
fn build_musicgen(package: &str) -> [&str; 7] {
    [
        "build",
        "--release",
        "--quiet",
        "--package",
        package,
        "--bin",
        "musicgen",
    ]
}

fn build_current(root: &Path) -> Result<PathBuf> {
    cargo(root, &build_musicgen("musicgen-cli"))?;
    Ok(current_musicgen(root))
}

fn current_musicgen(root: &Path) -> PathBuf {
    root.join("target").join("release").join("musicgen")
}

/// Checks out [`BASELINE_COMMIT`] in a worktree under `target/bench/` (once) and builds
/// its `musicgen` with a target folder of its own.
fn build_baseline(root: &Path) -> Result<Tools> {
    let source = root.join("target").join("bench").join("baseline-src");
    if !source.join("Cargo.toml").is_file() {
        println!(
            "checking out the baseline {BASELINE_COMMIT} into {} ...",
            source.display()
        );
        run(Command::new("git")
            .args(["worktree", "add", "--force", "--detach"])
            .arg(&source)
            .arg(BASELINE_COMMIT)
            .current_dir(root))
        .context("the baseline rows need the repository's history (a clone, not an archive)")?;
    }
    println!("building the baseline engine (release) ...");
    let target = root.join("target").join("bench").join("baseline-target");
    run(crate::cargo_command(&source)
        .args(build_musicgen("musicgen-engine"))
        .env("CARGO_TARGET_DIR", &target))?;
    Ok(Tools {
        musicgen: target.join("release").join("musicgen"),
        export_py: source.join("models").join("export.py"),
    })
}

fn bundle_dir(root: &Path, shape: Shape, name: &str) -> PathBuf {
    root.join("target")
        .join("bench")
        .join(format!("{}-{name}", shape.name()))
}

/// Exports (once) and times one bundle.
fn measure(
    root: &Path,
    variant: &Variant,
    tools: Result<Tools, String>,
    library: &Path,
    stream_seconds: f64,
    options: &BenchOptions,
    reference: Option<&Path>,
) -> Measured {
    let shape = options.shape;
    let dir = bundle_dir(root, shape, variant.name);
    let failed = |why: String| Measured::failed(variant, why);
    let tools = match tools {
        Ok(tools) => tools,
        Err(why) => return failed(format!("baseline unavailable: {why}")),
    };
    let export_seconds = match export_once(root, shape, &dir, &tools.export_py, variant.export_args) {
        Ok(seconds) => seconds,
        Err(error) => return failed(format!("export failed: {error:#}")),
    };
    let mut command = Command::new(&tools.musicgen);
    command
        .args(["bench", "--stream-seconds", &stream_seconds.to_string(), "--model"])
        .arg(&dir)
        .arg("--ort-library")
        .arg(library);
    if options.quick {
        command.args(["--steps", "10", "--codec-frames", "100"]);
    }
    if let Some(reference) = reference.filter(|_| variant.engine == Engine::Current && variant.name != REFERENCE) {
        command.arg("--reference").arg(reference);
    }
    // The floor's kernel graphs hold more than the cache: written for this bundle, timed,
    // then removed (a few GB each).
    let floor_dir = root.join("target").join("bench").join("floor");
    let floor_graphs = write_floor_graphs(root, &dir, &floor_dir);
    if let (Ok(()), Engine::Current) = (&floor_graphs, variant.engine) {
        command.arg("--floor").arg(&floor_dir);
    }
    let report = run_json(&mut command).and_then(|mut report| {
        // The baseline's `musicgen` predates the floor: the current one times its kernels.
        if variant.engine == Engine::Baseline && floor_graphs.is_ok() {
            let floor = run_json(
                Command::new(current_musicgen(root))
                    .arg("floor")
                    .arg(&floor_dir)
                    .arg("--ort-library")
                    .arg(library),
            )?;
            report["matmul_floor"] = floor["matmul_floor"].clone();
        }
        Ok(report)
    });
    if let Err(error) = &floor_graphs {
        eprintln!("    no matmul floor for {}: {error:#}", variant.name);
    }
    let _ = fs::remove_dir_all(&floor_dir);
    let report = match report {
        Ok(report) => report,
        Err(error) => return failed(format!("{error:#}")),
    };
    let export_report = fs::read_to_string(dir.join("export_report.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let graph = graph_facts(root, &dir).ok();
    Measured {
        variant: variant.name,
        what: variant.what,
        bundle_mb: folder_bytes(&dir).unwrap_or(0) as f64 / 1e6,
        export_seconds,
        report: Ok(report),
        export_report,
        graph,
    }
}

/// Exports the bundle with `export_py` unless `dir` already holds what this exporter
/// makes with these arguments (its stamp); returns the export's time when it ran.
fn export_once(root: &Path, shape: Shape, dir: &Path, export_py: &Path, export_args: &[&str]) -> Result<Option<f64>> {
    let stamp = export_stamp(export_py, export_args)?;
    let stamp_file = dir.join(".export-stamp");
    if dir.join("musicgen.json").is_file() && fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        println!("    cached: {}", dir.display());
        return Ok(None);
    }
    let started = Instant::now();
    let python_bin = python::ensure_venv(root)?;
    run(Command::new(python_bin)
        .arg(export_py)
        .args(["--random", shape.name(), "--out"])
        .arg(dir)
        .args(export_args)
        .current_dir(root))?;
    fs::write(&stamp_file, &stamp).with_context(|| format!("writing {}", stamp_file.display()))?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

/// What an export depends on: the exporter's Python sources (every file beside
/// `export_py`) and the arguments. A bundle exported under another stamp is exported again.
fn export_stamp(export_py: &Path, export_args: &[&str]) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let folder = export_py.parent().context("export.py lies in a folder")?;
    let mut sources: Vec<PathBuf> = fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "py"))
        .collect();
    sources.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    for path in &sources {
        fs::read(path)
            .with_context(|| format!("reading {}", path.display()))?
            .hash(&mut hasher);
    }
    export_args.hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Writes the kernel graphs of `bundle`'s matmul floor into `out` (emptied first).
fn write_floor_graphs(root: &Path, bundle: &Path, out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(out);
    let python_bin = python::ensure_venv(root)?;
    run(Command::new(python_bin)
        .arg(root.join("models").join("matmul_floor.py"))
        .arg(bundle.join("decoder.onnx"))
        .arg(out))
}

/// The decoder graph's node count and the weight bytes a step reads.
fn graph_facts(root: &Path, dir: &Path) -> Result<Value> {
    let python_bin = python::ensure_venv(root)?;
    run_json(
        Command::new(python_bin)
            .arg(root.join("models").join("graph_facts.py"))
            .arg(dir.join("decoder.onnx")),
    )
}

fn run_anchor(root: &Path, steps: u64) -> Result<Value> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let python_bin = python::ensure_venv(root)?;
    run_json(
        Command::new(python_bin)
            .arg(root.join("models").join("bench_transformers.py"))
            .args(["--random", "musicgen-small", "--steps", &steps.to_string()])
            .args(["--threads", &threads.to_string()])
            .current_dir(root.join("models")),
    )
}

/// Runs a command whose stdout's last line is a JSON object; stderr (progress) passes through.
fn run_json(command: &mut Command) -> Result<Value> {
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed with {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).with_context(|| format!("{command:?} printed no JSON report: {stdout}"))
}

fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        bytes += entry?.metadata()?.len();
    }
    Ok(bytes)
}
