//! `cargo xtask validate [--release]`: the two reference validators (clap-validator and
//! the VST3 SDK's validator, built once from `../shared/tools/` into `target/validators/`)
//! on the plugin bundles. Any failure or warning fails the task.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{bundle, run, system};

/// Builds the bundles (debug or release) and validates them.
pub fn validate(root: &Path, release: bool) -> Result<()> {
    system::ensure_build_prerequisites()?;
    let mut args = vec!["musicgen-plugin".to_owned()];
    if release {
        args.push("--release".to_owned());
    }
    bundle::bundle(root, args)?;
    validate_bundles(root)
}

/// Validates the bundles already in `target/bundled/`.
pub fn validate_bundles(root: &Path) -> Result<()> {
    let tools = build_validators(root)?;
    let bundled = root.join("target").join("bundled");
    let clap = bundled.join("MusicGen Live.clap");
    let vst3 = bundled.join("MusicGen Live.vst3");

    println!("clap-validator on {} ...", clap.display());
    let output = capture(Command::new(tools.join("clap-validator")).arg("validate").arg(&clap))?;
    let summary = output
        .lines()
        .find(|line| line.contains("tests run"))
        .with_context(|| format!("clap-validator printed no summary:\n{output}"))?;
    let counts = clap_counts(summary)?;
    println!("  {}", strip_ansi(summary));
    if counts.failed > 0 || counts.warnings > 0 {
        bail!(
            "clap-validator: {} failed, {} warnings:\n{output}",
            counts.failed,
            counts.warnings
        );
    }

    println!("VST3 validator on {} ...", vst3.display());
    let output = capture(Command::new(tools.join("vst3-validator")).arg(&vst3))?;
    let summary = output
        .lines()
        .find(|line| line.starts_with("Result:"))
        .with_context(|| format!("the VST3 validator printed no result:\n{output}"))?;
    println!("  {summary}");
    if !summary.contains(" 0 tests failed") {
        bail!("the VST3 validator: {summary}\n{output}");
    }
    Ok(())
}

/// Builds the validators once (`build-validators.sh` returns at once when they exist).
fn build_validators(root: &Path) -> Result<PathBuf> {
    let script = root.join("..").join("shared").join("tools").join("build-validators.sh");
    if !script.is_file() {
        bail!(
            "{} is missing: the validators' sources live in ../shared/tools beside the checkout",
            script.display()
        );
    }
    let out = root.join("target").join("validators");
    run(Command::new("bash").arg(&script).arg(&out))?;
    Ok(out)
}

/// Runs a validator and returns what it printed, stdout and stderr together; its exit
/// status is judged from its summary.
fn capture(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[derive(Debug, PartialEq)]
struct ClapCounts {
    failed: u32,
    warnings: u32,
}

/// Reads "44 tests run, 36 passed, 1 failed, 0 warnings, 7 skipped" (with colour codes).
fn clap_counts(summary: &str) -> Result<ClapCounts> {
    let plain = strip_ansi(summary);
    let count = |word: &str| -> Result<u32> {
        plain
            .split(',')
            .find(|part| part.trim_end().ends_with(word))
            .and_then(|part| part.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no \"{word}\" count in {plain:?}"))
    };
    Ok(ClapCounts {
        failed: count("failed")?,
        warnings: count("warnings")?,
    })
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clap_summary_is_read_through_its_colours() {
        let summary = "44 tests run, \u{1b}[1;32m36\u{1b}[0m passed, \u{1b}[1;31m1\u{1b}[0m failed, \u{1b}[1;33m2\u{1b}[0m warnings, \u{1b}[1m7\u{1b}[0m skipped";
        assert_eq!(clap_counts(summary).unwrap(), ClapCounts { failed: 1, warnings: 2 });
    }
}
