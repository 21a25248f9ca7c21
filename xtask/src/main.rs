//! `cargo xtask`: the project's tasks, so that a fresh machine needs only cargo.

mod bench;
mod bench_report;
mod bundle;
mod fuzz;
mod ort;
mod python;
mod soak;
mod system;
mod validate;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "MusicGen Live project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Fetch the ONNX Runtime library from its official PyPI wheel into target/onnxruntime/<provider>/.
    Ort {
        #[arg(long, value_enum, default_value_t = ort::Provider::Cpu)]
        provider: ort::Provider,
    },
    /// Export a MusicGen model to an ONNX bundle (arguments go to models/export.py; try --help).
    Export {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the VST3 and CLAP bundles into target/bundled/ with the ONNX Runtime library
    /// and the tiny model inside (arguments go to nice-plug's bundler, e.g.
    /// `musicgen-plugin --release`; `--provider cuda` bundles the CUDA build with CUDA's
    /// libraries).
    Bundle {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time a model shape's bundles against the memory bound: musicgen-small in every
    /// precision and cache type worth comparing, the engine before this work and
    /// transformers; musicgen-medium in 4 bits. Writes the shape's section of BENCHMARKS.md
    /// (bundles are exported once into target/bench/).
    Bench {
        #[arg(long, value_enum, default_value_t = bench::Shape::MusicgenSmall)]
        shape: bench::Shape,
        /// Audio streamed through the whole path per bundle.
        #[arg(long, default_value_t = 30.0)]
        stream_seconds: f64,
        /// Only the recommended bundle, a 16 s stream and a short anchor (a few minutes);
        /// prints the tables without writing BENCHMARKS.md.
        #[arg(long)]
        quick: bool,
    },
    /// Write the graph templates `musicgen import` carries (models/templates/<shape>/<precision>/)
    /// for these shapes (default: all), each exported from a random model of its shape.
    Templates { shapes: Vec<String> },
    /// The main job: render 10 s on the tiny model into demo.wav through the streaming path
    /// (and play it where there is an audio device).
    Demo,
    /// Install what the tests need, then run fmt, clippy, build the debug plugin bundles, run
    /// both reference validators on them and run every test (the CLAP host test loads the
    /// bundle).
    Test,
    /// Run the fuzz targets (manifest, prompts, plugin state, WAV reading) for a while on a
    /// fresh seed, and print how many inputs each tried.
    Fuzz {
        /// Minutes in all, shared between the targets.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
    /// Play the release plugin through a CLAP host at real-time pace for a while (notes,
    /// prompt changes, automation, a rate change) and print underruns, memory, threads and
    /// the audio callback's time each minute.
    Soak {
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
    /// Build the plugin bundles and run clap-validator and the VST3 validator on them (built
    /// once from ../shared/tools); any failure or warning fails.
    Validate {
        #[arg(long)]
        release: bool,
    },
}

/// Errors end the output with their whole chain and no backtrace, so that the tail of a
/// long CI log says what failed even where `RUST_BACKTRACE` is set.
fn main() -> ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\ncargo xtask failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Ort { provider } => ort::fetch(&root, provider).map(|_| ()),
        Task::Export { args } => python::export(&root, &args),
        Task::Templates { shapes } => {
            let all = python::TEMPLATE_SHAPES.map(str::to_owned).to_vec();
            python::write_templates(&root, if shapes.is_empty() { &all } else { &shapes })
        }
        Task::Bundle { args } => bundle::bundle(&root, args),
        Task::Bench {
            shape,
            stream_seconds,
            quick,
        } => bench::bench(
            &root,
            &bench::BenchOptions {
                shape,
                stream_seconds,
                quick,
            },
        ),
        Task::Demo => demo(&root),
        Task::Test => test(&root),
        Task::Validate { release } => validate::validate(&root, release),
        Task::Fuzz { minutes } => fuzz::fuzz(&root, minutes),
        Task::Soak { minutes } => soak::soak(&root, minutes),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

fn demo(root: &Path) -> Result<()> {
    system::ensure_build_prerequisites()?;
    ort::ensure(root, ort::Provider::Cpu)?;
    let musicgen = |args: &[&str]| {
        let run = [
            "run",
            "--quiet",
            "--release",
            "--package",
            "musicgen-cli",
            "--bin",
            "musicgen",
            "--",
        ];
        cargo(root, &[&run[..], args].concat())
    };
    musicgen(&["info"])?;
    println!();
    musicgen(&["patterns", "--show", "delay", "--frames", "8"])?;
    println!();
    musicgen(&[
        "render",
        "--model",
        "models/tiny",
        "--prompt",
        "warm lo-fi piano with soft drums, 80 bpm",
        "--seconds",
        "10",
        "--out",
        "demo.wav",
    ])?;
    musicgen(&["play", "demo.wav"])
}

/// What the build takes on a fresh clone: clippy's and the tests' build cache (3.9 GiB
/// measured), the bundles and the validators (0.5 GiB).
const BUILD_BYTES: u64 = 5 << 30;

fn test(root: &Path) -> Result<()> {
    let steps: [(&str, &dyn Fn() -> Result<()>); 9] = [
        ("system packages", &system::ensure_build_prerequisites),
        ("ONNX Runtime", &|| {
            ort::ensure(root, ort::Provider::Cpu)?;
            ort::ensure_too_old(root).map(|_| ())
        }),
        ("cargo fmt --check", &|| cargo(root, &["fmt", "--all", "--check"])),
        // Before the build: torch's environment at its install peak and the build cache
        // would together need 1 GiB more than either needs beside the other. On a small
        // disk the environment then makes room for the build, CUDA's libraries and the tests.
        (
            "fresh tiny export, a bundle whose decoder fails, checkpoints to import",
            &|| {
                python::check_tiny_export(root)?;
                python::write_fault_bundle(root)?;
                python::write_checkpoint_fixtures(root)?;
                let cuda_bytes = if ort::cuda_check_is_ready(root) {
                    0
                } else {
                    ort::CUDA_FETCH_BYTES
                };
                python::remove_venv_when_short(
                    root,
                    BUILD_BYTES + cuda_bytes,
                    "the build, CUDA's libraries and the tests",
                )
            },
        ),
        ("cargo clippy", &|| {
            cargo(
                root,
                &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            )
        }),
        // The CLAP host test loads the bundle; a debug one aborts on allocation in process().
        ("plugin bundles", &|| {
            bundle::bundle(root, vec!["musicgen-plugin".to_owned()])
        }),
        ("reference validators", &|| validate::validate_bundles(root)),
        ("CUDA's libraries", &|| ort::ensure_cuda_check(root).map(|_| ())),
        ("cargo test", &|| cargo(root, &["test", "--workspace"])),
    ];
    for (number, (name, step)) in steps.iter().enumerate() {
        println!("\n==> cargo xtask test, step {}/{}: {name}", number + 1, steps.len());
        step().with_context(|| format!("step {}/{} ({name})", number + 1, steps.len()))?;
    }
    println!("\ncargo xtask test: all {} steps passed", steps.len());
    Ok(())
}

/// Runs cargo in the workspace root and fails if it fails.
fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(cargo_command(root).args(args))
}

/// The cargo that runs this xtask, working in `dir`.
fn cargo_command(dir: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.current_dir(dir);
    command
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
