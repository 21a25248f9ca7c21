//! `musicgen download`: one of Meta's checkpoints from the Hugging Face hub into the
//! standard cache, then imported into a bundle; `--list` shows which there are.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use musicgen_import::hub::{DownloadProgress, HubOptions, LICENCE, OFFICIAL, download};
use musicgen_import::{ImportOptions, bundle_name, model_name_of};

use crate::import::{Quantize, byte_progress_bar, peak_rss_mb, precision_of, show_progress};

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// The hub repository, as `facebook/musicgen-small`.
    #[arg(required_unless_present = "list")]
    repo: Option<String>,
    /// List Meta's MusicGen checkpoints and which this build imports.
    #[arg(long)]
    list: bool,
    /// Quantize the decoder's weights when importing (as `musicgen import --quantize`).
    #[arg(long, value_enum)]
    quantize: Option<Quantize>,
    /// The bundle folder to write (default: `<models folder>/<name>[-int8|-int4]`, the
    /// folder the plugin lists).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Accept the checkpoint's licence without being asked (it is printed either way).
    #[arg(long)]
    accept_licence: bool,
    /// The hub's address (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// The Hugging Face cache's hub folder (default: HF_HOME/hub, else ~/.cache/huggingface/hub).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

pub fn run(args: &DownloadArgs) -> Result<()> {
    if args.list {
        list();
        return Ok(());
    }
    let repo = args.repo.as_deref().expect("clap requires a repository without --list");
    let precision = precision_of(args.quantize);
    let name = model_name_of(std::path::Path::new(repo));
    let out = match &args.out {
        Some(out) => out.clone(),
        None => musicgen_import::models_dir()
            .context("this system names no data folder for the bundle; give --out")?
            .join(bundle_name(&name, precision)),
    };
    if out.exists() {
        bail!(
            "{}: already exists; choose another --out or remove it first",
            out.display()
        );
    }
    println!("{repo}: licence {LICENCE}");
    if !args.accept_licence && !accepted_interactively()? {
        bail!("the licence was not accepted; nothing was downloaded (add --accept-licence to accept it)");
    }
    let hub = HubOptions {
        endpoint: args.endpoint.clone(),
        cache_dir: args.cache_dir.clone(),
    };
    let bar = byte_progress_bar();
    let downloaded = download(
        repo,
        &hub,
        &ImportOptions {
            precision,
            model_name: None,
        },
        &out,
        &mut |progress| match progress {
            DownloadProgress::Fetching(p) => show_progress(&bar, p.file, p.done_bytes, p.total_bytes),
            DownloadProgress::Importing(p) => show_progress(&bar, p.tensor, p.done_bytes, p.total_bytes),
        },
    )
    .with_context(|| format!("downloading {repo}"))?;
    bar.finish_and_clear();
    println!("{repo}: in the Hugging Face cache at {}", downloaded.snapshot.display());
    println!(
        "imported into {} (template {}, {:.1} MB of weights)",
        out.display(),
        downloaded.report.template,
        downloaded.report.weight_bytes as f64 / 1e6
    );
    if let Some(peak_mb) = peak_rss_mb() {
        println!("peak memory: {peak_mb:.0} MB resident");
    }
    Ok(())
}

/// Asks on the terminal; without one, the licence counts as not accepted.
fn accepted_interactively() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("Accept the licence and download? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn list() {
    println!("{:<34} {:<30} {:>12}  this build", "repository", "model", "weights");
    for official in OFFICIAL {
        let weights = format!("{:.2} GB", official.weight_bytes as f64 / 1e9);
        let importable = if official.importable() {
            "imports (float32, int8, int4)"
        } else {
            "no template yet"
        };
        println!(
            "{:<34} {:<30} {:>12}  {importable}",
            official.repo, official.description, weights
        );
    }
    println!("\nlicence of all: {LICENCE}");
    println!(
        "speed on this machine: `musicgen bench --model BUNDLE` after the import (BENCHMARKS.md has the project's figures)"
    );
}
