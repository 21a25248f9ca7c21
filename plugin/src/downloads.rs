//! Getting one of Meta's checkpoints from the editor: the download from the hub and the
//! import into a bundle run on a thread of their own, and the editor reads where they
//! stand each frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use musicgen_import::hub::{DownloadProgress, HubOptions, download};
use musicgen_import::{ImportOptions, Precision, bundle_name, model_name_of, models_dir};
use parking_lot::Mutex;

/// Where a download stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    Fetching {
        file: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    Importing {
        done_bytes: u64,
        total_bytes: u64,
    },
    /// The bundle is ready in this folder.
    Done(PathBuf),
    Failed(String),
}

/// One download and import, started from the editor.
pub struct ModelDownload {
    pub repo: String,
    phase: Arc<Mutex<Phase>>,
}

/// The folder a download of `repo` at `precision` imports into, under [`models_dir`].
pub fn bundle_dir(repo: &str, precision: Precision) -> Option<PathBuf> {
    let name = model_name_of(std::path::Path::new(repo));
    models_dir().map(|dir| dir.join(bundle_name(&name, precision)))
}

impl ModelDownload {
    /// Starts fetching `repo` with `hub` and importing it at `precision` into `out`; a
    /// bundle already in `out` is used as it is.
    pub fn start(repo: &str, precision: Precision, hub: HubOptions, out: PathBuf) -> ModelDownload {
        let phase = Arc::new(Mutex::new(Phase::Fetching {
            file: "the file list".to_owned(),
            done_bytes: 0,
            total_bytes: 0,
        }));
        let shared = Arc::clone(&phase);
        let name = repo.to_owned();
        std::thread::Builder::new()
            .name("musicgen-download".into())
            .spawn(move || {
                let outcome = fetch_and_import(&name, precision, &hub, &out, &shared);
                *shared.lock() = match outcome {
                    Ok(dir) => Phase::Done(dir),
                    Err(message) => Phase::Failed(message),
                };
            })
            .expect("the OS can start a thread");
        ModelDownload {
            repo: repo.to_owned(),
            phase,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().clone()
    }
}

fn fetch_and_import(
    repo: &str,
    precision: Precision,
    hub: &HubOptions,
    out: &Path,
    phase: &Mutex<Phase>,
) -> Result<PathBuf, String> {
    if out.join("musicgen.json").is_file() {
        return Ok(out.to_owned());
    }
    let options = ImportOptions {
        precision,
        model_name: None,
    };
    download(repo, hub, &options, out, &mut |progress| {
        *phase.lock() = match progress {
            DownloadProgress::Fetching(p) => Phase::Fetching {
                file: p.file.to_owned(),
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
            },
            DownloadProgress::Importing(p) => Phase::Importing {
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
            },
        };
    })
    .map_err(|e| e.to_string())?;
    Ok(out.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The phase once it is no longer fetching or importing, within a deadline.
    fn finished(download: &ModelDownload) -> Phase {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let phase = download.phase();
            if matches!(phase, Phase::Done(_) | Phase::Failed(_)) {
                return phase;
            }
            assert!(
                Instant::now() < deadline,
                "the download thread never finished: {phase:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn an_unreachable_hub_fails_with_its_address_and_writes_no_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let hub = HubOptions {
            endpoint: Some("http://127.0.0.1:1".to_owned()),
            cache_dir: Some(dir.path().join("cache")),
        };
        let out = dir.path().join("musicgen-small-int4");
        let download = ModelDownload::start("facebook/musicgen-small", Precision::Int4, hub, out.clone());
        let Phase::Failed(message) = finished(&download) else {
            panic!("an unreachable hub cannot succeed");
        };
        assert!(message.contains("could not reach http://127.0.0.1:1"), "{message}");
        assert!(!out.exists());
    }

    #[test]
    fn a_bundle_already_in_its_folder_is_used_without_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("musicgen.json"), "{}").unwrap();
        let hub = HubOptions {
            endpoint: Some("http://127.0.0.1:1".to_owned()),
            cache_dir: Some(dir.path().join("cache")),
        };
        let download = ModelDownload::start("facebook/musicgen-small", Precision::Int4, hub, out.clone());
        assert_eq!(finished(&download), Phase::Done(out));
    }

    #[test]
    fn bundles_are_named_for_the_repository_and_precision() {
        let dir = bundle_dir("facebook/musicgen-stereo-small", Precision::Int8).unwrap();
        assert!(
            dir.ends_with("musicgen-live/models/musicgen-stereo-small-int8"),
            "{}",
            dir.display()
        );
    }
}
