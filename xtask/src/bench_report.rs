//! BENCHMARKS.md, a section per model shape, each from one `cargo xtask bench --shape` run:
//! the decoder's steps per second against the memory bound, the whole streaming path,
//! quality against float32, and (musicgen-small) the CPU work's targets.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bench::{BASELINE_COMMIT, RECOMMENDED, Shape, Variant};

/// One bundle's outcome: its `musicgen bench` report, or why there is none.
pub struct Measured {
    pub variant: &'static str,
    pub what: &'static str,
    pub bundle_mb: f64,
    pub export_seconds: Option<f64>,
    pub report: Result<Value, String>,
    /// The export's self-check (agreement with transformers), when it wrote one.
    pub export_report: Option<Value>,
    /// Node count and weight bytes per step of the decoder graph.
    pub graph: Option<Value>,
}

impl Measured {
    pub fn failed(variant: &Variant, why: String) -> Self {
        Self {
            variant: variant.name,
            what: variant.what,
            bundle_mb: 0.0,
            export_seconds: None,
            report: Err(why),
            export_report: None,
            graph: None,
        }
    }
}

pub struct RunFacts {
    pub shape: Shape,
    pub stream_seconds: f64,
    pub total_seconds: f64,
    pub quick: bool,
}

/// The CPU work's targets (issues 10 and 27).
const TARGET_REALTIME_FACTOR: f64 = 1.0;
const TARGET_OVER_FLOOR_AT_500: f64 = 1.25;
const TARGET_UNGUIDED_SPEEDUP: f64 = 1.4;
const TARGET_UNGUIDED_REALTIME_FACTOR: f64 = 1.3;
const TARGET_X_BASELINE_INT8: f64 = 1.6;
const TARGET_SLIDE_PERCENT: f64 = 8.0;
const TARGET_FIRST_AUDIO_MS: f64 = 250.0;
const TARGET_CODEC_MS_PER_FRAME: f64 = 2.0;
const TARGET_PEAK_RSS_MB: f64 = 1300.0;

const CONTEXTS: [u64; 4] = [10, 250, 500, 1500];
/// The contexts at which a step is compared with its matmul floor.
const FLOOR_CONTEXTS: [u64; 3] = [10, 250, 500];

const TITLE: &str = "# Benchmarks\n\nOne section per model shape, each from one `cargo xtask bench --shape SHAPE` run on one machine: compare figures within a section; across sections (runs, perhaps machines) compare ratios such as the share of the memory bound.\n";

/// The shape's section of BENCHMARKS.md, between its markers.
pub fn render(measured: &[Measured], anchor: Option<&Value>, facts: &RunFacts) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "{}", start_marker(facts.shape))?;
    header(&mut md, anchor, facts)?;
    decoder_table(&mut md, measured)?;
    stream_table(&mut md, measured, anchor, facts)?;
    if facts.shape.has_comparisons() {
        targets(&mut md, measured)?;
        writeln!(md)?;
    }
    writeln!(
        md,
        "Reproduce: `cargo xtask bench --shape {}` (bundles are exported once into `target/bench/`; `--quick` times the recommended bundle alone on a 16 s stream).",
        facts.shape.name()
    )?;
    writeln!(md, "{}", end_marker(facts.shape))?;
    Ok(md)
}

fn start_marker(shape: Shape) -> String {
    format!("<!-- bench {} -->", shape.name())
}

fn end_marker(shape: Shape) -> String {
    format!("<!-- end bench {} -->", shape.name())
}

/// `previous` BENCHMARKS.md with `shape`'s section replaced by `section` (appended when it
/// has none), the other shapes' sections kept as their runs wrote them.
pub fn replace_section(previous: &str, shape: Shape, section: &str) -> String {
    let body = if previous.starts_with(TITLE) { previous } else { TITLE };
    let (start, end) = (start_marker(shape), end_marker(shape));
    match (body.find(&start), body.find(&end)) {
        (Some(from), Some(to)) if from < to => {
            let after = body[to + end.len()..].trim_start_matches('\n');
            let after = if after.is_empty() {
                String::new()
            } else {
                format!("\n{after}")
            };
            format!("{}{section}{after}", &body[..from])
        }
        _ => format!("{}\n\n{section}", body.trim_end()),
    }
}

fn header(md: &mut String, anchor: Option<&Value>, facts: &RunFacts) -> Result<()> {
    let shape = facts.shape.name();
    writeln!(md, "## {shape}\n")?;
    writeln!(
        md,
        "Measured by `cargo xtask bench --shape {shape}{}` on {} (UTC), {:.0} s in all, one run on one machine.\n",
        if facts.quick { " --quick" } else { "" },
        shell_output("date", &["-u", "+%Y-%m-%d %H:%M"]),
        facts.total_seconds
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(
        md,
        "- Model: a randomly initialised MusicGen of {shape}'s shape ({}), exported by `models/export.py --random {shape}`; the cost of a step is that of the trained weights.",
        facts.shape.description()
    )?;
    writeln!(
        md,
        "- Engine: `musicgen bench` (release build), CPU execution provider, every core, guidance as one batch of 2 rows, output at 48 kHz.{}",
        if facts.shape.has_comparisons() {
            format!(
                " Baseline rows: the engine and exporter of commit `{}` (before this work), built from a worktree and run on their own bundles in the same run.",
                &BASELINE_COMMIT[..7]
            )
        } else {
            String::new()
        }
    )?;
    match anchor {
        Some(anchor) => writeln!(
            md,
            "- Anchor: transformers {} with PyTorch {} (eager, {} threads), `generate(do_sample=True, top_k=250, guidance_scale=3)` for {} steps on the same random model: {:.2} steps/s (its final Encodec decode, {:.2} s, left out).\n",
            anchor["transformers"].as_str().unwrap_or("?"),
            anchor["torch"].as_str().unwrap_or("?"),
            anchor["threads"],
            anchor["steps"],
            anchor["steps_per_second"].as_f64().unwrap_or(0.0),
            anchor["decode_seconds"].as_f64().unwrap_or(0.0)
        )?,
        None => writeln!(
            md,
            "- No baseline or transformers rows: those run on musicgen-small (its section).\n"
        )?,
    }
    Ok(())
}

/// Steps per second (both guidance rows) of the fastest thread count at `frames` of context.
fn steps_at(report: &Value, frames: u64) -> Option<f64> {
    steps_with_rows(report, frames, 2)
}

/// As [`steps_at`], for steps of `rows` rows (1: guidance off; reports from before the
/// engine ran one row have 2-row steps only).
fn steps_with_rows(report: &Value, frames: u64, rows: u64) -> Option<f64> {
    report["contexts"]
        .as_array()?
        .iter()
        .filter(|c| c["context_frames"].as_u64() == Some(frames) && c["rows"].as_u64().unwrap_or(2) == rows)
        .filter_map(|c| c["steps_per_second"].as_f64())
        .reduce(f64::max)
}

/// Guidance off against on: one row's steps per second over two rows' at `frames`.
fn unguided_speedup(report: &Value, frames: u64) -> Option<f64> {
    Some(steps_with_rows(report, frames, 1)? / steps_at(report, frames)?)
}

/// The step's matmul floor with guidance (2 rows), in steps per second.
fn floor_rate(report: &Value) -> Option<f64> {
    report["matmul_floor"]
        .as_array()?
        .iter()
        .find(|f| f["rows"].as_u64() == Some(2))?["steps_per_second"]
        .as_f64()
}

/// A step's time over its matmul floor's at `frames`.
fn over_floor(report: &Value, frames: u64) -> Option<f64> {
    Some(floor_rate(report)? / steps_at(report, frames)?)
}

/// Steps per second the memory allows at `frames`: bandwidth over the weights a step
/// reads and the cache at that context.
fn bound_at(m: &Measured, report: &Value, frames: u64) -> Option<f64> {
    let bandwidth = report["read_bandwidth_gb_per_s"].as_f64()? * 1e9;
    let weights = m.graph.as_ref()?["decoder_weight_bytes_per_step"].as_f64()?;
    let cache = report["kv_cache_bytes_per_frame"].as_f64()? * frames as f64;
    Some(bandwidth / (weights + cache))
}

fn decoder_table(md: &mut String, measured: &[Measured]) -> Result<()> {
    writeln!(md, "### Decoder steps per second (guidance, batch of 2)\n")?;
    writeln!(
        md,
        "| bundle | what | MB | nodes | 10 | 250 | 500 | 1500 | matmul floor | step / floor at 10 / 250 / 500 | guidance off at 500 (x on) | bound 10 / 500 / 1500 | share of bound at 500 | x baseline-int8 at 500 |"
    )?;
    writeln!(
        md,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    let baseline_500 = measured
        .iter()
        .find(|m| m.variant == "baseline-int8")
        .and_then(|m| m.report.as_ref().ok())
        .and_then(|r| steps_at(r, 500));
    for m in measured {
        let Ok(r) = &m.report else {
            writeln!(
                md,
                "| {} | {} | | | {} | | | | | | | | | |",
                m.variant,
                m.what,
                m.report.as_ref().err().map_or("", |e| e.as_str())
            )?;
            continue;
        };
        let rates = CONTEXTS.map(|frames| opt(steps_at(r, frames), 1));
        let over_floor = FLOOR_CONTEXTS.map(|frames| opt(over_floor(r, frames), 2)).join(" / ");
        let bounds = [10, 500, 1500].map(|frames| opt(bound_at(m, r, frames), 0)).join(" / ");
        let share = steps_at(r, 500).zip(bound_at(m, r, 500)).map(|(s, b)| s / b);
        let x_baseline = steps_at(r, 500).zip(baseline_500).map(|(s, b)| s / b);
        writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {over_floor} | {} | {bounds} | {} | {} |",
            m.variant,
            m.what,
            m.bundle_mb,
            m.graph
                .as_ref()
                .map_or_else(|| "-".to_owned(), |g| g["decoder_nodes"].to_string()),
            rates[0],
            rates[1],
            rates[2],
            rates[3],
            opt(floor_rate(r), 1),
            match (steps_with_rows(r, 500, 1), unguided_speedup(r, 500)) {
                (Some(rate), Some(x)) => format!("{rate:.1} ({x:.2})"),
                _ => "-".to_owned(),
            },
            opt(share.map(|s| s * 100.0), 0) + "%",
            opt(x_baseline, 2),
        )?;
    }
    writeln!(
        md,
        "\nContexts in frames of 20 ms. The matmul floor is the step's weight-bearing matmuls alone, each timed in the same run as a graph of its own kernel (the bundle's op, bits, block size and accuracy level) over weight copies larger than the last-level cache, median of at least 30 warm runs, with the decoder's threads and 2 rows (`models/matmul_floor.py`, `musicgen floor`); step / floor is how far a whole step is above it. Guidance off: the conditioned row alone (bundles whose graph takes one row). The bound is the memory's read bandwidth (every core reading, measured in each bundle's run: {} GB/s in the first) over the bytes a step reads: the decoder's weights (all but the embedding tables) and the self-attention cache at that context.\n",
        measured
            .iter()
            .find_map(|m| m.report.as_ref().ok())
            .map_or_else(|| "-".to_owned(), |r| f(&r["read_bandwidth_gb_per_s"], 1))
    )?;
    Ok(())
}

fn stream_table(md: &mut String, measured: &[Measured], anchor: Option<&Value>, facts: &RunFacts) -> Result<()> {
    let anchor_rate = anchor
        .map(|a| a["steps_per_second"].as_f64().context("the anchor reported no rate"))
        .transpose()?;
    let window = measured
        .iter()
        .find_map(|m| m.report.as_ref().ok())
        .map(|r| &r["stream"])
        .filter(|s| s["window_seconds"].is_number())
        .map_or_else(
            || "10 s keeping 4".to_owned(),
            |s| format!("{} s keeping {}", f(&s["window_seconds"], 0), f(&s["keep_seconds"], 0)),
        );
    writeln!(
        md,
        "### The whole streaming path ({} s of audio, live window {window} s)\n",
        facts.stream_seconds
    )?;
    writeln!(
        md,
        "| bundle | real-time factor | guidance off | delivery x real time | steps per pattern step | slide share of the whole path | first audio ms | codec ms/frame | peak RSS MB | code agreement | SNR vs fp32 dB | pattern steps/s | x transformers | export s |"
    )?;
    writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for m in measured {
        let Ok(r) = &m.report else { continue };
        let s = &r["stream"];
        let pattern_steps = s["pattern_steps"].as_f64().unwrap_or(0.0);
        let steps = s["steps"].as_f64().unwrap_or(0.0);
        // Pattern steps per second of generation time: the same audio's worth of work as
        // transformers' steps, whatever the stream ran to make it.
        let generation_seconds = s["generation_seconds"]
            .as_f64()
            .or_else(|| Some(steps / s["generation_steps_per_second"].as_f64()?));
        let pattern_rate = generation_seconds.map(|g| pattern_steps / g);
        let slide_share = slide_percent(s);
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.variant,
            f(&s["realtime_factor"], 2),
            f(&r["stream_unguided"]["realtime_factor"], 2),
            f(&s["delivery_factor"], 2),
            steps / pattern_steps.max(1.0),
            opt(slide_share, 1) + "%",
            f(&s["time_to_first_audio_ms"], 0),
            f(&r["codec_ms_per_frame"], 2),
            f(&r["peak_resident_mb"], 0),
            m.export_report
                .as_ref()
                .map_or_else(|| "-".to_owned(), |e| f(&e["code_agreement"], 2)),
            f(&r["snr_db_vs_reference"], 1),
            opt(pattern_rate, 1),
            opt(pattern_rate.zip(anchor_rate).map(|(p, a)| p / a), 2),
            m.export_seconds
                .map_or_else(|| "cached".to_owned(), |s| format!("{s:.0}")),
        )?;
    }
    writeln!(
        md,
        "\nreal-time factor: audio seconds per wall second from the start of the stream to its last sample, taken as fast as it comes (above 1 keeps up with playback), with guidance 3; guidance off: the same stream with guidance 1 (the conditioned row alone where the graph takes one row); delivery: the same at the ring buffer's input, waits for room excluded, as the engine measures it to decide how long playback waits; steps per pattern step: single decoder steps over the steps of one pattern over the whole audio (the sliding window's kept context is prefilled in one call per slide, not stepped); slide share: the time of those prefill calls over the stream's wall time; code agreement: greedy codes equal to fp32 transformers' over 61 frames (the export's self-check; baseline exports did not record it); SNR vs fp32: this bundle's greedy stream against the fp32 bundle's, 5 s (codes that differ make different audio, so it follows the agreement); pattern steps/s: the audio's pattern steps over generation time, and its ratio to transformers' steps/s.\n"
    )?;
    Ok(())
}

fn targets(md: &mut String, measured: &[Measured]) -> Result<()> {
    writeln!(md, "### Targets (recommended CPU bundle: {RECOMMENDED})\n")?;
    writeln!(md, "| target | measured | met |")?;
    writeln!(md, "| --- | ---: | --- |")?;
    let report = |name: &str| {
        measured
            .iter()
            .find(|m| m.variant == name)
            .and_then(|m| m.report.as_ref().ok())
    };
    let recommended = report(RECOMMENDED);
    let stream = |key: &str| recommended.and_then(|r| r["stream"][key].as_f64());
    let slide = recommended.and_then(|r| slide_percent(&r["stream"]));
    let x_baseline = recommended
        .and_then(|r| steps_at(r, 500))
        .zip(report("baseline-int8").and_then(|r| steps_at(r, 500)))
        .map(|(a, b)| a / b);
    let rows = [
        (
            "whole path real-time factor >= 1.0 (goal 1.3)",
            stream("realtime_factor"),
            TARGET_REALTIME_FACTOR,
            true,
        ),
        (
            "guidance off: steps/s at 500 frames >= 1.4 x guided",
            recommended.and_then(|r| unguided_speedup(r, 500)),
            TARGET_UNGUIDED_SPEEDUP,
            true,
        ),
        (
            "guidance off: whole path real-time factor >= 1.3",
            recommended.and_then(|r| r["stream_unguided"]["realtime_factor"].as_f64()),
            TARGET_UNGUIDED_REALTIME_FACTOR,
            true,
        ),
        (
            "step at 500 frames <= 1.25 x its matmul floor",
            recommended.and_then(|r| over_floor(r, 500)),
            TARGET_OVER_FLOOR_AT_500,
            false,
        ),
        (
            "decoder at 500 frames >= 1.6 x baseline-int8",
            x_baseline,
            TARGET_X_BASELINE_INT8,
            true,
        ),
        ("slide <= 8% of the whole path (%)", slide, TARGET_SLIDE_PERCENT, false),
        (
            "first audio <= 250 ms",
            stream("time_to_first_audio_ms"),
            TARGET_FIRST_AUDIO_MS,
            false,
        ),
        (
            "codec <= 2 ms per frame",
            recommended.and_then(|r| r["codec_ms_per_frame"].as_f64()),
            TARGET_CODEC_MS_PER_FRAME,
            false,
        ),
        (
            "peak RSS <= 1.3 GB",
            recommended.and_then(|r| r["peak_resident_mb"].as_f64()),
            TARGET_PEAK_RSS_MB,
            false,
        ),
    ];
    for (name, value, target, higher_is_better) in rows {
        let met = value.is_some_and(|v| if higher_is_better { v >= target } else { v <= target });
        writeln!(
            md,
            "| {name} | {} | {} |",
            opt(value, 2),
            if met { "yes" } else { "no" }
        )?;
    }
    Ok(())
}

/// The slides' prefill time over the stream's wall time, in percent.
fn slide_percent(stream: &Value) -> Option<f64> {
    Some(stream["prefill_seconds"].as_f64()? / stream["wall_seconds"].as_f64()? * 100.0)
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn f(value: &Value, digits: usize) -> String {
    opt(value.as_f64(), digits)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_replaces_its_own_section_and_keeps_the_others() {
        let small = |run: &str| {
            format!("<!-- bench musicgen-small -->\n## musicgen-small\n{run}\n<!-- end bench musicgen-small -->\n")
        };
        let medium = |run: &str| {
            format!("<!-- bench musicgen-medium -->\n## musicgen-medium\n{run}\n<!-- end bench musicgen-medium -->\n")
        };

        let first = replace_section("", Shape::MusicgenSmall, &small("run 1"));
        assert_eq!(first, format!("{TITLE}\n{}", small("run 1")));
        let both = replace_section(&first, Shape::MusicgenMedium, &medium("run 2"));
        assert_eq!(both, format!("{TITLE}\n{}\n{}", small("run 1"), medium("run 2")));
        let again = replace_section(&both, Shape::MusicgenSmall, &small("run 3"));
        assert_eq!(again, format!("{TITLE}\n{}\n{}", small("run 3"), medium("run 2")));
        assert_eq!(
            replace_section(&again, Shape::MusicgenMedium, &medium("run 4")),
            format!("{TITLE}\n{}\n{}", small("run 3"), medium("run 4"))
        );
    }

    #[test]
    fn a_file_without_the_title_is_started_again() {
        let section = "<!-- bench musicgen-medium -->\nx\n<!-- end bench musicgen-medium -->\n";
        assert_eq!(
            replace_section("# Benchmarks\n\nan older layout\n", Shape::MusicgenMedium, section),
            format!("{TITLE}\n{section}")
        );
    }
}
