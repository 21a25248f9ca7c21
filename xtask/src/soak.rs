//! `cargo xtask soak --minutes N`: the plugin's soak test (`plugin/tests/clap_host_soak.rs`)
//! for N minutes on the release bundle, as a musician's DAW would load it; its report
//! prints each minute. The debug bundle the other tests load is built again afterwards.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{bundle, run};

pub fn soak(root: &Path, minutes: f64) -> Result<()> {
    bundle::bundle(root, vec!["musicgen-plugin".to_owned(), "--release".to_owned()])?;
    let soaked = run(crate::cargo_command(root)
        .args([
            "test",
            "-p",
            "musicgen-plugin",
            "--test",
            "clap_host_soak",
            "--",
            "--nocapture",
        ])
        .env("MUSICGEN_SOAK_MINUTES", minutes.to_string()))
    .context("the soak failed (its report above says where)");
    bundle::bundle(root, vec!["musicgen-plugin".to_owned()])?;
    soaked
}
