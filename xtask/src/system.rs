//! Host prerequisites that cargo cannot install: Debian packages, installed with apt-get
//! when they are missing (CI and fresh machines start bare).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

/// Tools the build and the tests need, each with the command that proves it is present
/// (python may come from elsewhere than Debian, so its probe is a command).
const BUILD_TOOLS: &[(&str, &[&str])] = &[
    ("python3", &["python3", "--version"]),
    ("python3-pip", &["python3", "-m", "pip", "--version"]),
    ("python3-venv", &["python3", "-m", "venv", "--help"]),
    ("pkg-config", &["pkg-config", "--version"]),
    // The reference plugin validators are built from source (`cargo xtask validate`).
    ("cmake", &["cmake", "--version"]),
    ("g++", &["g++", "--version"]),
];

/// Debian packages of the C libraries that cpal, nice-plug and its egui editor link.
const BUILD_LIBRARIES: &[&str] = &[
    "libasound2-dev",
    "libjack-jackd2-dev",
    "libx11-dev",
    "libx11-xcb-dev",
    "libxcb1-dev",
    "libxcb-dri2-0-dev",
    "libxcb-icccm4-dev",
    "libxcursor-dev",
    "libxkbcommon-dev",
    "libxcb-shape0-dev",
    "libxcb-xfixes0-dev",
    "libgl-dev",
    "libglu1-mesa-dev",
];

pub fn ensure_build_prerequisites() -> Result<()> {
    let mut missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .filter(|(_, probe)| !succeeds(probe))
        .map(|(package, _)| *package)
        .collect();
    missing.extend(BUILD_LIBRARIES.iter().filter(|package| !debian_installed(package)));
    install_debian(&missing)
}

fn debian_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn succeeds(argv: &[&str]) -> bool {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn install_debian(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !succeeds(&["apt-get", "--version"]) {
        bail!("missing system packages {packages:?} and no apt-get to install them; install them by hand");
    }
    println!("installing Debian packages: {}", packages.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let argv: Vec<&str> = sudo
            .iter()
            .copied()
            .chain(["apt-get"])
            .chain(args.iter().copied())
            .collect();
        run(Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-q"])?;
    apt(&[&["install", "-y", "-q", "--no-install-recommends"], packages].concat())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Fails with the numbers and the fix when the file system holding `path` (or the nearest
/// folder above it that exists) has less than `needed_bytes` free, before a long install
/// that would otherwise stop halfway with "No space left on device".
pub fn ensure_free_disk(path: &Path, needed_bytes: u64, what: &str) -> Result<()> {
    let Some(free_bytes) = free_disk_bytes(path)? else {
        return Ok(());
    };
    println!(
        "{:.1} GiB free on the disk of {} ({what} need about {:.1} GiB)",
        gib(free_bytes),
        path.display(),
        gib(needed_bytes)
    );
    if free_bytes < needed_bytes {
        bail!(
            "{what} need about {:.1} GiB in {}, but its disk has {:.1} GiB free; free some space \
             (`cargo clean` frees the build cache) and run this again",
            gib(needed_bytes),
            path.display(),
            gib(free_bytes)
        );
    }
    Ok(())
}

/// The bytes free on the file system holding `path` (or the nearest folder above it that
/// exists), as df reports them; `None`, said on stdout, where df's output cannot be read.
pub fn free_disk_bytes(path: &Path) -> Result<Option<u64>> {
    let existing = path
        .ancestors()
        .find(|folder| folder.exists())
        .unwrap_or(Path::new("/"));
    let out = Command::new("df")
        .args(["-Pk"])
        .arg(existing)
        .output()
        .with_context(|| format!("running df on {}", existing.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|field| field.parse::<u64>().ok());
    if free_kib.is_none() {
        println!("could not read the free disk space from df's output ({text:?}); going on");
    }
    Ok(free_kib.map(|kib| kib * 1024))
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_disk_is_read_for_a_folder_not_made_yet() {
        let folder = std::env::temp_dir().join("musicgen-no-such-folder").join("venv");
        ensure_free_disk(&folder, 1, "a byte").unwrap();
        let error = ensure_free_disk(&folder, u64::MAX, "everything")
            .unwrap_err()
            .to_string();
        assert!(error.contains("GiB free") && error.contains("cargo clean"), "{error}");
    }
}
