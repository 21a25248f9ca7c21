//! The Python side of the project: a virtual environment under `target/` with the export
//! tool's requirements, and `models/export.py` run inside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::run;

/// Creates (once) `target/export-venv` and installs `models/requirements.txt` into it;
/// returns its Python interpreter.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("export-venv");
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
        println!(
            "installing {} (torch is large: a few minutes) ...",
            requirements.display()
        );
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        fs::write(&stamp, wanted)?;
    }
    Ok(python)
}

/// Runs the export tool with `args`.
pub fn export(root: &Path, args: &[String]) -> Result<()> {
    let python = ensure_venv(root)?;
    run(Command::new(python)
        .arg(root.join("models").join("export.py"))
        .args(args)
        .current_dir(root))
}
