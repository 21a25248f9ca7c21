//! `cargo xtask bench`: exports (once, cached under `target/bench/`) random bundles of
//! musicgen-small's real shape in fp32, int8 and 4 bits, times each with `musicgen bench`
//! (one process per bundle), times transformers' own `generate` on the same model as the
//! anchor, and writes the table to BENCHMARKS.md.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, ort, python, system};

/// Targets from the performance issue, shown beside the measured figures.
const TARGET_STEPS_PER_S: f64 = 50.0;
const TARGET_ANCHOR_RATIO: f64 = 8.0;
const TARGET_FIRST_AUDIO_MS: f64 = 300.0;
const TARGET_CODEC_MS_PER_FRAME: f64 = 2.0;

struct Variant {
    name: &'static str,
    export_args: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "fp32",
        export_args: &[],
    },
    Variant {
        name: "int8",
        export_args: &["--quantize", "int8"],
    },
    Variant {
        name: "int4",
        export_args: &["--quantize", "int4"],
    },
];

/// One bundle's outcome: its `musicgen bench` report, or why there is none.
struct Measured {
    variant: &'static str,
    bundle_mb: f64,
    export_seconds: Option<f64>,
    report: Result<Value, String>,
}

pub fn bench(root: &Path, stream_seconds: f64) -> Result<()> {
    system::ensure_build_prerequisites()?;
    let library = ort::ensure(root, ort::Provider::Cpu)?;
    cargo(
        root,
        &[
            "build",
            "--release",
            "--quiet",
            "--package",
            "musicgen-engine",
            "--bin",
            "musicgen",
        ],
    )?;
    let musicgen = root.join("target").join("release").join("musicgen");
    let started = Instant::now();
    let mut measured = Vec::new();
    for (i, variant) in VARIANTS.iter().enumerate() {
        println!("[{}/{}] musicgen-small {}", i + 1, VARIANTS.len() + 1, variant.name);
        let dir = root
            .join("target")
            .join("bench")
            .join(format!("musicgen-small-{}", variant.name));
        let export_seconds = match export_once(root, &dir, variant) {
            Ok(seconds) => seconds,
            Err(error) => {
                measured.push(Measured {
                    variant: variant.name,
                    bundle_mb: 0.0,
                    export_seconds: None,
                    report: Err(format!("export failed: {error:#}")),
                });
                continue;
            }
        };
        let report = run_json(
            Command::new(&musicgen)
                .args(["bench", "--stream-seconds", &stream_seconds.to_string(), "--model"])
                .arg(&dir)
                .arg("--ort-library")
                .arg(&library),
        )
        .map_err(|e| format!("{e:#}"));
        measured.push(Measured {
            variant: variant.name,
            bundle_mb: folder_bytes(&dir)? as f64 / 1e6,
            export_seconds,
            report,
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let steps = measured
        .iter()
        .find_map(|m| m.report.as_ref().ok())
        .and_then(|r| r["stream"]["pattern_steps"].as_u64())
        .context("no bundle could be measured; see the errors above")?;
    println!(
        "[{0}/{0}] transformers generate, {steps} steps, {threads} threads",
        VARIANTS.len() + 1
    );
    let python_bin = python::ensure_venv(root)?;
    let anchor = run_json(
        Command::new(python_bin)
            .arg(root.join("models").join("bench_transformers.py"))
            .args(["--random", "musicgen-small", "--steps", &steps.to_string()])
            .args(["--threads", &threads.to_string()])
            .current_dir(root.join("models")),
    )?;
    let markdown = render(&measured, &anchor, stream_seconds, started.elapsed().as_secs_f64())?;
    print!("{markdown}");
    let out = root.join("BENCHMARKS.md");
    fs::write(&out, markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Exports the variant unless `dir` already holds it; returns the export's time when it ran.
fn export_once(root: &Path, dir: &Path, variant: &Variant) -> Result<Option<f64>> {
    if dir.join("musicgen.json").is_file() {
        println!("    cached: {}", dir.display());
        return Ok(None);
    }
    let started = Instant::now();
    let mut args: Vec<String> = ["--random", "musicgen-small", "--out"].map(str::to_owned).to_vec();
    args.push(dir.to_string_lossy().into_owned());
    args.extend(variant.export_args.iter().map(|a| (*a).to_owned()));
    python::export(root, &args)?;
    Ok(Some(started.elapsed().as_secs_f64()))
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

fn shell_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gb = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {:.0} GiB", kb / 1024.0 / 1024.0));
    format!("{cpu}, {cores} cores available{memory_gb}, no GPU")
}

fn f(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn render(measured: &[Measured], anchor: &Value, stream_seconds: f64, total_seconds: f64) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Measured by `cargo xtask bench` on {} (UTC), {:.0} s in all.\n",
        shell_output("date", &["-u", "+%Y-%m-%d %H:%M"]),
        total_seconds
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(
        md,
        "- Model: a randomly initialised MusicGen of musicgen-small's shape (24 layers, 16 heads, width 1024, K = 4, cardinality 2048), exported by `models/export.py --random musicgen-small`; cost per step is that of the trained weights."
    )?;
    writeln!(
        md,
        "- Engine: `musicgen bench` (release build), CPU execution provider, guidance as one batch of 2 rows, output at 48 kHz."
    )?;
    writeln!(
        md,
        "- Anchor: transformers {} with PyTorch {} (eager, {} threads), `generate(do_sample=True, top_k=250, guidance_scale=3)` for {} steps (the stream's audio in one pattern) on the same random model; its final Encodec decode ({:.2} s) is left out.\n",
        anchor["transformers"].as_str().unwrap_or("?"),
        anchor["torch"].as_str().unwrap_or("?"),
        anchor["threads"],
        anchor["steps"],
        anchor["decode_seconds"].as_f64().unwrap_or(0.0)
    )?;
    let anchor_rate = anchor["steps_per_second"]
        .as_f64()
        .context("the anchor reported no rate")?;

    writeln!(md, "## Decoder steps per second (guidance, batch of 2)\n")?;
    writeln!(
        md,
        "| bundle | size MB | threads | context 10 | context 500 | context 1500 | bound at 10 / 500 / 1500 |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for m in measured {
        let Ok(r) = &m.report else { continue };
        let contexts = r["contexts"].as_array().cloned().unwrap_or_default();
        let mut thread_counts: Vec<u64> = contexts.iter().filter_map(|c| c["threads"].as_u64()).collect();
        thread_counts.dedup();
        let bandwidth = r["read_bandwidth_gb_per_s"].as_f64().unwrap_or(0.0) * 1e9;
        let weights = r["decoder_weight_bytes"].as_f64().unwrap_or(0.0);
        let kv = r["kv_cache_bytes_per_frame"].as_f64().unwrap_or(0.0);
        let bound = [10.0, 500.0, 1500.0]
            .map(|frames| format!("{:.0}", bandwidth / (weights + kv * frames)))
            .join(" / ");
        for threads in thread_counts {
            let rate = |frames: u64| {
                contexts
                    .iter()
                    .find(|c| c["threads"].as_u64() == Some(threads) && c["context_frames"].as_u64() == Some(frames))
                    .map_or_else(|| "-".to_owned(), |c| f(&c["steps_per_second"], 1))
            };
            writeln!(
                md,
                "| musicgen-small {} | {:.0} | {threads} | {} | {} | {} | {bound} |",
                m.variant,
                m.bundle_mb,
                rate(10),
                rate(500),
                rate(1500),
            )?;
        }
    }
    writeln!(
        md,
        "| transformers (anchor) | | {} | {:.1} over {} steps from an empty context | | | |",
        anchor["threads"], anchor_rate, anchor["steps"]
    )?;
    writeln!(
        md,
        "\nThe bound is the memory's read bandwidth (measured with every core reading: {} GB/s) divided by the bytes a step must read: the decoder's weights once plus the self-attention cache at that context.\n",
        measured
            .iter()
            .find_map(|m| m.report.as_ref().ok())
            .map_or_else(|| "-".to_owned(), |r| f(&r["read_bandwidth_gb_per_s"], 1))
    )?;

    writeln!(md, "## The whole streaming path ({stream_seconds} s of audio)\n")?;
    writeln!(
        md,
        "| bundle | decoder threads | steps/s | x transformers | real-time factor | first audio ms | codec ms/frame | peak RSS MB | export s |"
    )?;
    writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    for m in measured {
        let export = m
            .export_seconds
            .map_or_else(|| "cached".to_owned(), |s| format!("{s:.0}"));
        match &m.report {
            Ok(r) => {
                let s = &r["stream"];
                let steps = s["generation_steps_per_second"].as_f64().unwrap_or(0.0);
                writeln!(
                    md,
                    "| musicgen-small {} | {} | {:.1} | {:.2} | {} | {} | {} | {} | {} |",
                    m.variant,
                    r["decoder_threads"],
                    steps,
                    steps / anchor_rate,
                    f(&s["realtime_factor"], 2),
                    f(&s["time_to_first_audio_ms"], 0),
                    f(&r["codec_ms_per_frame"], 2),
                    f(&r["peak_resident_mb"], 0),
                    export
                )?;
            }
            Err(why) => writeln!(md, "| musicgen-small {} | {why} | | | | | | | |", m.variant)?,
        }
    }
    writeln!(
        md,
        "\nsteps/s: decoder steps per second of generation time over the stream (the default live window of 10 s keeping 4 s slides the context, and the next window's prefill steps count too); x transformers: that rate over transformers' steps per second for the same audio without a sliding window; real-time factor: audio seconds per wall second from the start of the stream to its last sample (above 1 keeps up with playback).\n"
    )?;

    writeln!(md, "## Targets\n")?;
    writeln!(md, "| target | best measured | met |")?;
    writeln!(md, "| --- | --- | --- |")?;
    let ok: Vec<&Value> = measured.iter().filter_map(|m| m.report.as_ref().ok()).collect();
    let best = |pick: &dyn Fn(&Value) -> Option<f64>, max: bool| {
        ok.iter().filter_map(|r| pick(r)).fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| if max { a.max(v) } else { a.min(v) }))
        })
    };
    let at_500 = |r: &Value| {
        r["contexts"]
            .as_array()?
            .iter()
            .filter(|c| c["context_frames"].as_u64() == Some(500))
            .filter_map(|c| c["steps_per_second"].as_f64())
            .reduce(f64::max)
    };
    let rows: [(String, Option<f64>, bool); 4] = [
        (
            format!("{TARGET_STEPS_PER_S} steps/s at a 10 s context (500 frames)"),
            best(&at_500, true),
            true,
        ),
        (
            format!("{TARGET_ANCHOR_RATIO} x transformers' steps/s"),
            best(&|r| r["stream"]["generation_steps_per_second"].as_f64(), true).map(|v| v / anchor_rate),
            true,
        ),
        (
            format!("first audio within {TARGET_FIRST_AUDIO_MS} ms"),
            best(&|r| r["stream"]["time_to_first_audio_ms"].as_f64(), false),
            false,
        ),
        (
            format!("codec at most {TARGET_CODEC_MS_PER_FRAME} ms per frame"),
            best(&|r| r["codec_ms_per_frame"].as_f64(), false),
            false,
        ),
    ];
    let targets = [
        TARGET_STEPS_PER_S,
        TARGET_ANCHOR_RATIO,
        TARGET_FIRST_AUDIO_MS,
        TARGET_CODEC_MS_PER_FRAME,
    ];
    for ((name, value, higher_is_better), target) in rows.into_iter().zip(targets) {
        let (shown, met) = match value {
            Some(v) => (
                format!("{v:.2}"),
                if higher_is_better { v >= target } else { v <= target },
            ),
            None => ("-".to_owned(), false),
        };
        writeln!(md, "| {name} | {shown} | {} |", if met { "yes" } else { "no" })?;
    }
    writeln!(
        md,
        "\nReproduce: `cargo xtask bench` (bundles are exported once into `target/bench/`)."
    )?;
    Ok(md)
}
