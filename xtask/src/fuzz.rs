//! `cargo xtask fuzz --minutes N`: the fuzz tests (`fuzz_*`, built on `musicgen_fuzz`)
//! for N minutes in all, on a fresh seed, with a summary of inputs and findings.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::bundle;

/// The fuzz targets: the manifest, prompts, the plugin's saved state, WAV reading.
const TARGETS: u32 = 4;

/// What `musicgen_fuzz` reads (named here: xtask does not build the test crates' helpers).
const SECONDS_ENV: &str = "MUSICGEN_FUZZ_SECONDS";
const SEED_ENV: &str = "MUSICGEN_FUZZ_SEED";

pub fn fuzz(root: &Path, minutes: f64) -> Result<()> {
    // The plugin's state target loads the bundle.
    bundle::bundle(root, vec!["musicgen-plugin".to_owned()])?;
    let seconds_per_target = (minutes * 60.0 / f64::from(TARGETS)).max(1.0);
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    println!("fuzzing {TARGETS} targets for {seconds_per_target:.0} s each from seed {seed}");
    let mut child = crate::cargo_command(root)
        .args(["test", "--workspace", "fuzz_", "--", "--nocapture", "--test-threads=1"])
        .env(SECONDS_ENV, seconds_per_target.to_string())
        .env(SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut summary = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped above")).lines() {
        let line = line?;
        println!("{line}");
        // The harness prints `test <name> ... ` before a test's own output on that line.
        if let Some(report) = line
            .find("fuzz ")
            .map(|at| &line[at..])
            .filter(|r| r.contains(" inputs in "))
        {
            summary.push(report.to_owned());
        }
    }
    let status = child.wait()?;
    println!("\nfuzzing from seed {seed}:");
    for line in &summary {
        println!("  {line}");
    }
    if !status.success() {
        bail!("a fuzz target failed (its smallest input is printed above); rerun with MUSICGEN_FUZZ_SEED={seed}");
    }
    if summary.len() != TARGETS as usize {
        bail!("{} fuzz targets reported, {TARGETS} expected", summary.len());
    }
    Ok(())
}
