//! `musicgen import`: a transformers checkpoint folder to a bundle, with progress and the
//! peak memory it took.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::ValueEnum;
use musicgen_engine::Bundle;
use musicgen_import::{ImportOptions, Precision, import};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A transformers MusicGen checkpoint folder: config.json, model.safetensors (or shards
    /// with model.safetensors.index.json) and tokenizer.json, as the hub has them.
    checkpoint: PathBuf,
    /// The bundle folder to write; it must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// Quantize the decoder's weights (MatMulNBits, blocks of 32), as `export.py --quantize`.
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// The bundle's model name (default: the checkpoint's).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Quantize {
    Int8,
    Int4,
}

pub fn precision_of(quantize: Option<Quantize>) -> Precision {
    match quantize {
        None => Precision::Float32,
        Some(Quantize::Int8) => Precision::Int8,
        Some(Quantize::Int4) => Precision::Int4,
    }
}

pub fn run(args: &ImportArgs) -> Result<()> {
    let precision = precision_of(args.quantize);
    let options = ImportOptions {
        precision,
        model_name: args.name.clone(),
    };
    let start = Instant::now();
    let bar = byte_progress_bar();
    let report = import(&args.checkpoint, &args.out, &options, &mut |p| {
        show_progress(&bar, p.tensor, p.done_bytes, p.total_bytes);
    })
    .with_context(|| format!("importing {}", args.checkpoint.display()))?;
    bar.finish_and_clear();
    let bundle = Bundle::open(&args.out).with_context(|| format!("opening the new bundle {}", args.out.display()))?;
    println!(
        "imported {} into {} in {:.1} s: template {}, {} weights, {:.1} MB",
        args.checkpoint.display(),
        args.out.display(),
        start.elapsed().as_secs_f64(),
        report.template,
        report.tensors,
        report.weight_bytes as f64 / 1e6
    );
    println!(
        "model:       {} ({})",
        report.model_name,
        bundle.manifest().describe_family()
    );
    if let Some(peak_mb) = peak_rss_mb() {
        println!("peak memory: {peak_mb:.0} MB resident");
    }
    Ok(())
}

/// A progress bar counting bytes, with their rate.
pub fn byte_progress_bar() -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {elapsed_precise} {msg}",
        )
        .expect("a valid template"),
    )
}

/// Shows `done_bytes` of `total_bytes`, the work being `what`.
pub fn show_progress(bar: &indicatif::ProgressBar, what: &str, done_bytes: u64, total_bytes: u64) {
    bar.set_length(total_bytes);
    bar.set_position(done_bytes);
    bar.set_message(what.to_owned());
}

/// This process's peak resident memory (`VmHWM`), where the system reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
