//! Meta's MusicGen checkpoints on the Hugging Face hub: what they are, and fetching one's
//! files into the standard Hugging Face cache with `hf-hub`.
//!
//! The cache is the one Python's `huggingface_hub` uses (`$HF_HOME/hub`, by default
//! `~/.cache/huggingface/hub`), so a checkpoint a user already has is found there without
//! the network. Downloads resume from the partial file a broken one leaves, and every file
//! is checked against the hash the hub names it by (SHA-256 for the weights, git's SHA-1
//! for small files); a file that fails is removed and named.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::checkpoint::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE, TOKENIZER_FILE, read_json, shard_files};
use crate::{ImportError, ImportOptions, ImportProgress, ImportReport, Precision, import, select_template};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The licence of every MusicGen checkpoint Meta published.
pub const LICENCE: &str = "CC-BY-NC 4.0 (Creative Commons Attribution-NonCommercial 4.0): \
use and share the weights with attribution, for non-commercial purposes only; \
https://creativecommons.org/licenses/by-nc/4.0/";

/// One of Meta's checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct Official {
    pub repo: &'static str,
    pub description: &'static str,
    /// The safetensors weights' size: `save_pretrained`'s file of a model of the same shape,
    /// float32 as the hub's (`models/weight_sizes.py`, which reproduces the four that
    /// `models/checkpoint.py` saved and measured to the byte).
    pub weight_bytes: u64,
    /// What it needs to play in real time, from the project's bench figures.
    pub realtime: &'static str,
}

/// The bench figure an imported small model's speed follows: its 4-bit import runs the
/// graphs of BENCHMARKS.md's `int4` row (blocks of 32, float32 cache), whose codec was int8.
const SMALL_REALTIME: &str = "about twice the bench machine's speed: BENCHMARKS.md's closest row \
(4-bit, float32 cache) played 0.49x real time on 2 cores of an AMD EPYC";
const STEREO_SMALL_REALTIME: &str = "a little more than musicgen-small (twice the codebooks' \
embeddings and heads; not benchmarked)";
/// From the bench's musicgen-medium section: its `int4` row runs the graphs of a 4-bit
/// import (blocks of 32, float32 cache; its codec was int8).
const MEDIUM_REALTIME: &str = "about 8 times the bench machine's speed: BENCHMARKS.md's \
musicgen-medium 4-bit row (float32 cache) played 0.12x real time on 2 cores of an AMD EPYC; a GPU, \
or rendering to a file";
const STEREO_MEDIUM_REALTIME: &str = "a little more than musicgen-medium (twice the codebooks' \
embeddings and heads; not benchmarked)";
const MELODY_REALTIME: &str = "a little more than musicgen-medium (its decoder, with the melody's \
235 chroma frames and the prompt in front of the window; not benchmarked)";
/// Measured with `musicgen render --seconds 5` on a 4-bit import of a random musicgen-large
/// checkpoint (blocks of 32, float32 cache and codec); not a bench row.
const LARGE_REALTIME: &str = "about 11 times the project machine's speed: a 4-bit import of \
musicgen-large rendered at 0.09x real time on 2 cores of an AMD EPYC; a GPU, or rendering to a file";

impl Official {
    /// Whether this build carries the templates of its shape (float32, int8, int4), named
    /// as the repository is.
    pub fn importable(&self) -> bool {
        let shape = self.repo.trim_start_matches("facebook/");
        crate::template::carried_shapes().contains(&shape)
    }
}

/// Every MusicGen checkpoint Meta published, smallest first.
pub const OFFICIAL: [Official; 10] = [
    Official {
        repo: "facebook/musicgen-small",
        description: "300M, mono, text",
        weight_bytes: 2_358_843_992,
        realtime: SMALL_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-stereo-small",
        description: "300M, stereo, text",
        weight_bytes: 2_425_970_152,
        realtime: STEREO_SMALL_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-medium",
        description: "1.5B, mono, text",
        weight_bytes: 8_032_360_536,
        realtime: MEDIUM_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-stereo-medium",
        description: "1.5B, stereo, text",
        weight_bytes: 8_133_049_312,
        realtime: STEREO_MEDIUM_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-melody",
        description: "1.5B, mono, text and melody",
        weight_bytes: 6_219_872_456,
        realtime: MELODY_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-stereo-melody",
        description: "1.5B, stereo, text and melody",
        weight_bytes: 6_320_561_224,
        realtime: MELODY_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-large",
        description: "3.3B, mono, text",
        weight_bytes: 13_705_237_224,
        realtime: LARGE_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-stereo-large",
        description: "3.3B, stereo, text",
        weight_bytes: 13_839_488_632,
        realtime: LARGE_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-melody-large",
        description: "3.3B, mono, text and melody",
        weight_bytes: 10_483_292_624,
        realtime: LARGE_REALTIME,
    },
    Official {
        repo: "facebook/musicgen-stereo-melody-large",
        description: "3.3B, stereo, text and melody",
        weight_bytes: 10_617_544_032,
        realtime: LARGE_REALTIME,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "could not reach {endpoint} ({problem}); check the network, or import a checkpoint folder you have with `musicgen import`"
    )]
    Unreachable { endpoint: String, problem: String },
    #[error("{endpoint}: no repository {repo} (HTTP {status}); `musicgen download --list` names Meta's")]
    NotFound {
        endpoint: String,
        repo: String,
        status: u16,
    },
    #[error("{repo}: the repository has no {file}, which an import needs")]
    MissingFile { repo: String, file: String },
    #[error("{repo}: downloading {file} stopped ({problem}); run the same command again to resume where it stopped")]
    Interrupted {
        repo: String,
        file: String,
        problem: String,
    },
    #[error("{path}: the download's {algorithm} is {found}, the hub's is {expected}; the file was removed, download it again", path = .path.display())]
    Checksum {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        found: String,
    },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{repo}: not downloaded: {source}")]
    Unsupported { repo: String, source: Box<ImportError> },
    #[error("{repo}: downloaded, but not imported: {source}")]
    Import { repo: String, source: Box<ImportError> },
}

/// Where to fetch from and to.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// The hub's address (default: `HF_ENDPOINT`, else https://huggingface.co).
    pub endpoint: Option<String>,
    /// The cache's `hub` folder (default: `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
}

impl HubOptions {
    fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".to_owned())
    }

    fn cache(&self) -> Cache {
        self.cache_dir.clone().map_or_else(Cache::from_env, Cache::new)
    }
}

/// A download's progress: the file, its bytes so far and its size.
#[derive(Clone, Debug)]
pub struct FetchProgress<'a> {
    pub file: &'a str,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Where a download and its import stand.
#[derive(Clone, Debug)]
pub enum DownloadProgress<'a> {
    Fetching(FetchProgress<'a>),
    Importing(ImportProgress<'a>),
}

/// What a download made: the checkpoint's folder in the cache and the import's report.
#[derive(Clone, Debug)]
pub struct Downloaded {
    pub snapshot: PathBuf,
    pub report: ImportReport,
}

/// Fetches `repo` (see [`fetch_checkpoint`]) and imports it with `options` into the new
/// bundle folder `out`; unless `options` names the model, it is named for the repository.
pub fn download(
    repo: &str,
    hub: &HubOptions,
    options: &ImportOptions,
    out: &Path,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<Downloaded, HubError> {
    let snapshot = fetch_checkpoint(repo, hub, options.precision, &mut |p| {
        progress(DownloadProgress::Fetching(p));
    })?;
    let report = import(&snapshot, out, options, &mut |p| {
        progress(DownloadProgress::Importing(p))
    })
    .map_err(|e| HubError::Import {
        repo: repo.to_owned(),
        source: Box::new(e),
    })?;
    Ok(Downloaded { snapshot, report })
}

/// The folder of `repo`'s checkpoint in the cache (a snapshot), fetching what it lacks.
/// Its config.json comes first: a checkpoint this build cannot import at `precision` is
/// refused before its weights are fetched.
pub fn fetch_checkpoint(
    repo: &str,
    options: &HubOptions,
    precision: Precision,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, HubError> {
    let cache = options.cache();
    let cached = cache.repo(Repo::new(repo.to_owned(), RepoType::Model));
    if let Some(snapshot) = complete_in_cache(|file| cached.get(file)) {
        return Ok(snapshot);
    }
    let endpoint = options.endpoint();
    let api = ApiBuilder::from_cache(cache)
        .with_endpoint(endpoint.clone())
        .with_progress(false)
        .with_retries(3)
        .build()
        .map_err(|e| HubError::Unreachable {
            endpoint: endpoint.clone(),
            problem: e.to_string(),
        })?;
    let remote = api.model(repo.to_owned());
    let info = remote.info().map_err(|e| request_error(&endpoint, repo, e))?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut wanted = vec![CONFIG_FILE, TOKENIZER_FILE];
    let sharded = listed.contains(&INDEX_FILE);
    wanted.push(if sharded { INDEX_FILE } else { SINGLE_FILE });
    for file in &wanted {
        if !listed.contains(file) {
            return Err(HubError::MissingFile {
                repo: repo.to_owned(),
                file: (*file).to_owned(),
            });
        }
    }
    let mut paths = Vec::new();
    for file in wanted {
        let path = fetch_file(&remote, repo, file, progress)?;
        if file == CONFIG_FILE {
            check_config(repo, &path, precision)?;
        }
        paths.push(path);
    }
    if sharded {
        let index = paths.last().expect("the index was fetched");
        let shards = shard_files(index).map_err(|e| HubError::Unsupported {
            repo: repo.to_owned(),
            source: Box::new(e.into()),
        })?;
        for shard in shards {
            fetch_file(&remote, repo, &shard, progress)?;
        }
    }
    Ok(paths[0].parent().expect("a file in a snapshot folder").to_owned())
}

fn check_config(repo: &str, path: &Path, precision: Precision) -> Result<(), HubError> {
    let unsupported = |source: ImportError| HubError::Unsupported {
        repo: repo.to_owned(),
        source: Box::new(source),
    };
    let config = read_json(path).map_err(|e| unsupported(e.into()))?;
    select_template(&config, path, precision).map_err(unsupported)?;
    Ok(())
}

/// The snapshot folder, when the cache holds every file an import reads.
fn complete_in_cache(get: impl Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    let config = get(CONFIG_FILE)?;
    get(TOKENIZER_FILE)?;
    if let Some(index) = get(INDEX_FILE) {
        for shard in shard_files(&index).ok()? {
            get(&shard)?;
        }
    } else {
        get(SINGLE_FILE)?;
    }
    config.parent().map(Path::to_owned)
}

/// Forwards hf-hub's progress to the caller's callback.
struct Forward<'a> {
    file: &'a str,
    done_bytes: u64,
    total_bytes: u64,
    callback: &'a mut dyn FnMut(FetchProgress),
}

impl Progress for Forward<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total_bytes = size as u64;
        self.done_bytes = 0;
    }

    fn update(&mut self, size: usize) {
        self.done_bytes += size as u64;
        (self.callback)(FetchProgress {
            file: self.file,
            done_bytes: self.done_bytes,
            total_bytes: self.total_bytes,
        });
    }

    fn finish(&mut self) {}
}

fn fetch_file(
    remote: &ApiRepo,
    repo: &str,
    file: &str,
    progress: &mut dyn FnMut(FetchProgress),
) -> Result<PathBuf, HubError> {
    let forward = Forward {
        file,
        done_bytes: 0,
        total_bytes: 0,
        callback: progress,
    };
    let path = remote
        .download_with_progress(file, forward)
        .map_err(|e| HubError::Interrupted {
            repo: repo.to_owned(),
            file: file.to_owned(),
            problem: e.to_string(),
        })?;
    verify(&path)?;
    Ok(path)
}

/// Checks a cached file against the hash its blob is named by: 64 hex digits are the
/// file's SHA-256 (the hub's large files), 40 its git blob SHA-1. A file that fails is
/// removed with its snapshot link, so that the next run fetches it again.
fn verify(pointer: &Path) -> Result<(), HubError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HubError::Io { path, source }
    };
    let blob = std::fs::canonicalize(pointer).map_err(io(pointer))?;
    let expected = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (algorithm, found) = match expected.len() {
        64 => ("SHA-256", hex(&digest::<Sha256>(&blob, None).map_err(io(&blob))?)),
        40 => {
            let length = std::fs::metadata(&blob).map_err(io(&blob))?.len();
            let header = format!("blob {length}\0");
            (
                "git SHA-1",
                hex(&digest::<Sha1>(&blob, Some(header.as_bytes())).map_err(io(&blob))?),
            )
        }
        _ => return Ok(()),
    };
    if found == expected {
        return Ok(());
    }
    // Best effort: the mismatch is the error to report either way.
    let _ = std::fs::remove_file(&blob);
    let _ = std::fs::remove_file(pointer);
    Err(HubError::Checksum {
        path: pointer.to_owned(),
        algorithm,
        expected,
        found,
    })
}

fn digest<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let mut hasher = D::new();
    if let Some(prefix) = prefix {
        hasher.update(prefix);
    }
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().to_vec())
}

fn request_error(endpoint: &str, repo: &str, error: ApiError) -> HubError {
    if let ApiError::RequestError(request) = &error
        && let ureq::Error::Status(status, _) = request.as_ref()
    {
        return HubError::NotFound {
            endpoint: endpoint.to_owned(),
            repo: repo.to_owned(),
            status: *status,
        };
    }
    HubError::Unreachable {
        endpoint: endpoint.to_owned(),
        problem: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_shapes_but_the_tests_are_the_official_checkpoints() {
        for shape in crate::template::carried_shapes() {
            if shape.starts_with("tiny") {
                continue;
            }
            let official = OFFICIAL
                .iter()
                .find(|o| o.repo.trim_start_matches("facebook/") == shape)
                .unwrap_or_else(|| panic!("the template {shape} names no official checkpoint"));
            assert!(official.importable(), "{} is not offered", official.repo);
        }
        for official in OFFICIAL {
            assert!(official.importable(), "no template of {} is carried", official.repo);
        }
    }
}
