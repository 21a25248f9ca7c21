//! Turns a transformers MusicGen checkpoint folder into a MusicGen Live bundle with no Python.
//!
//! The bundle's graphs are the project's own (the step decoder with the engine's cache, the
//! streaming codec, MatMulNBits for quantized weights). They come from graph templates the
//! export tool writes once per architecture and precision and this library carries; an
//! import picks the template whose architecture the checkpoint's config.json has, evaluates
//! each weight's recipe on the checkpoint's tensors and writes the result as the graphs'
//! external data. Everything is written into a staging folder that becomes the bundle only
//! when complete, so a failed import leaves nothing behind.

mod blockwise;
mod checkpoint;
pub mod hub;
mod recipe;
mod template;

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, CheckpointError};
pub use recipe::{Recipe, RecipeError};
pub use template::{Mismatch, Precision, Template, TemplateError, carried, carried_shapes};

use recipe::Values;

/// The architecture every carried template is exported from.
const ARCHITECTURES: [&str; 2] = [
    "MusicgenForConditionalGeneration",
    "MusicgenMelodyForConditionalGeneration",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{path}: {field} is {value}: {why}", path = .path.display())]
    Unsupported {
        path: PathBuf,
        field: String,
        value: String,
        why: String,
    },
    #[error("{path}: already exists; choose another --out or remove it first", path = .path.display())]
    OutExists { path: PathBuf },
    #[error("{path}: {source}", path = .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{checkpoint}: tensor {tensor} of {graph}: {source}", checkpoint = .checkpoint.display())]
    Recipe {
        checkpoint: PathBuf,
        graph: String,
        tensor: String,
        source: Box<RecipeError>,
    },
    #[error("{checkpoint}: tensor {tensor} of {graph}: the checkpoint makes {made}, the template expects {expected}; the checkpoint's tensors do not have the shapes its config.json promises", checkpoint = .checkpoint.display())]
    Mismatch {
        checkpoint: PathBuf,
        graph: String,
        tensor: String,
        made: String,
        expected: String,
    },
}

/// What an import is asked for.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub precision: Precision,
    /// The bundle's `model_name`; by default the checkpoint's name (see [`model_name_of`]).
    pub model_name: Option<String>,
}

/// Where an import stands, after each weight.
#[derive(Clone, Debug)]
pub struct ImportProgress<'a> {
    pub tensor: &'a str,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// What an import did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// The template used: `<shape>/<precision>`.
    pub template: &'static str,
    pub model_name: String,
    pub tensors: usize,
    /// The graphs' weight bytes written.
    pub weight_bytes: u64,
}

/// Imports the checkpoint in `checkpoint_dir` into a new bundle folder `out`.
pub fn import(
    checkpoint_dir: &Path,
    out: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportReport, ImportError> {
    let checkpoint = Checkpoint::open(checkpoint_dir)?;
    let config_path = checkpoint_dir.join(checkpoint::CONFIG_FILE);
    let template = select_template(checkpoint.config(), &config_path, options.precision)?;
    let tokenizer = checkpoint_dir.join(checkpoint::TOKENIZER_FILE);
    if !tokenizer.is_file() {
        return Err(CheckpointError::Read {
            path: tokenizer,
            source: std::io::ErrorKind::NotFound.into(),
        }
        .into());
    }
    if out.exists() {
        return Err(ImportError::OutExists { path: out.to_owned() });
    }
    let model_name = options
        .model_name
        .clone()
        .unwrap_or_else(|| model_name_of(checkpoint_dir));
    let staging = staging_dir(out);
    let written = write_bundle(&checkpoint, &template, &staging, &model_name, progress)
        .and_then(|bytes| fs::rename(&staging, out).map(|()| bytes).map_err(write_error(out)));
    match written {
        Ok(weight_bytes) => Ok(ImportReport {
            template: template.name,
            model_name,
            tensors: template.tensors.len(),
            weight_bytes,
        }),
        Err(error) => {
            // Best effort: the error that stopped the import is the one to report.
            let _ = fs::remove_dir_all(&staging);
            Err(error)
        }
    }
}

/// The template for `config` (a checkpoint's config.json, read from `config_path`) at
/// `precision`, or an error that names the first config field no carried template has.
pub fn select_template(
    config: &serde_json::Value,
    config_path: &Path,
    precision: Precision,
) -> Result<Template, ImportError> {
    let config_path = config_path.to_owned();
    let architectures = config.get("architectures");
    let named = |known: &str| {
        architectures
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|name| name == known))
    };
    let [text, melody] = ARCHITECTURES;
    if !named(text) && !named(melody) {
        return Err(ImportError::Unsupported {
            path: config_path,
            field: "architectures".to_owned(),
            value: architectures.map_or_else(|| "missing".to_owned(), ToString::to_string),
            why: format!(
                "this build imports {} checkpoints (mono and stereo, text- and melody-conditioned)",
                ARCHITECTURES.join(" and ")
            ),
        });
    }
    let mut nearest: Option<(Template, Vec<Mismatch>)> = None;
    // A melody checkpoint fills a melody template only, a text one a text template only.
    for template in carried(precision)?
        .into_iter()
        .filter(|t| t.is_melody() == named(melody))
    {
        let mismatches = template.mismatches(config);
        if mismatches.is_empty() {
            return Ok(template);
        }
        if nearest.as_ref().is_none_or(|(_, m)| mismatches.len() < m.len()) {
            nearest = Some((template, mismatches));
        }
    }
    let shapes = carried_shapes().join(", ");
    let Some((template, mismatches)) = nearest else {
        return Err(ImportError::Unsupported {
            path: config_path,
            field: "precision".to_owned(),
            value: precision.folder().to_owned(),
            why: format!(
                "this build carries no {} template (it has: {shapes})",
                precision.folder()
            ),
        });
    };
    let first = mismatches.into_iter().next().expect("a mismatch");
    Err(ImportError::Unsupported {
        path: config_path,
        field: first.field,
        value: first.found,
        why: format!(
            "the nearest architecture this build can import, {}, has {}; it imports: {shapes}",
            template.shape(),
            first.expected
        ),
    })
}

/// The per-user folder imported bundles go to by default, and the plugin lists:
/// `<data folder>/musicgen-live/models` (`~/.local/share` on Linux, `~/Library/Application
/// Support` on macOS, `%APPDATA%` on Windows).
pub fn models_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("musicgen-live").join("models"))
}

/// The bundle folder name for model `name` at `precision`: `musicgen-small`,
/// `musicgen-small-int4`, ...
pub fn bundle_name(name: &str, precision: Precision) -> String {
    match precision {
        Precision::Float32 => name.to_owned(),
        _ => format!("{name}-{}", precision.folder()),
    }
}

/// A bundle name for a checkpoint folder: the repository's name for a Hugging Face cache
/// snapshot (`.../models--facebook--musicgen-small/snapshots/<commit>`), else the folder's.
pub fn model_name_of(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let cached = parts
        .iter()
        .rev()
        .find_map(|part| part.strip_prefix("models--"))
        .and_then(|repo| repo.rsplit("--").next());
    cached
        .map(str::to_owned)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "imported".to_owned())
}

fn staging_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.importing"))
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Writes the whole bundle into `staging`; returns the weight bytes written.
fn write_bundle(
    checkpoint: &Checkpoint,
    template: &Template,
    staging: &Path,
    model_name: &str,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<u64, ImportError> {
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(write_error(staging))?;
    }
    fs::create_dir_all(staging).map_err(write_error(staging))?;
    let total_bytes: u64 = template.tensors.iter().map(|t| t.length).sum();
    let mut done_bytes = 0;
    for (graph, bytes) in &template.graphs {
        let path = staging.join(graph);
        fs::write(&path, bytes).map_err(write_error(&path))?;
        let data_path = staging.join(format!("{graph}.data"));
        let file = File::create(&data_path).map_err(write_error(&data_path))?;
        let mut data = BufWriter::with_capacity(1 << 20, file);
        for tensor in template.tensors.iter().filter(|t| t.graph == *graph) {
            let made = tensor
                .recipe
                .evaluate(checkpoint)
                .map_err(|source| ImportError::Recipe {
                    checkpoint: checkpoint.dir().to_owned(),
                    graph: graph.to_string(),
                    tensor: tensor.name.clone(),
                    source: Box::new(source),
                })?;
            let bytes = tensor_bytes(&made.values);
            let expected_len: usize = tensor.shape.iter().product();
            if made.values.dtype() != tensor.dtype
                || made.values.len() != expected_len
                || bytes.len() as u64 != tensor.length
            {
                return Err(ImportError::Mismatch {
                    checkpoint: checkpoint.dir().to_owned(),
                    graph: graph.to_string(),
                    tensor: tensor.name.clone(),
                    made: format!("{} {:?}", made.values.dtype(), made.shape),
                    expected: format!("{} {:?}", tensor.dtype, tensor.shape),
                });
            }
            data.seek(SeekFrom::Start(tensor.offset))
                .map_err(write_error(&data_path))?;
            data.write_all(&bytes).map_err(write_error(&data_path))?;
            done_bytes += tensor.length;
            progress(ImportProgress {
                tensor: &tensor.name,
                done_bytes,
                total_bytes,
            });
        }
        let file = data.into_inner().map_err(|e| write_error(&data_path)(e.into_error()))?;
        file.sync_all().map_err(write_error(&data_path))?;
    }
    let tokenizer = checkpoint.dir().join(checkpoint::TOKENIZER_FILE);
    let tokenizer_out = staging.join(checkpoint::TOKENIZER_FILE);
    fs::copy(&tokenizer, &tokenizer_out).map_err(write_error(&tokenizer_out))?;
    let mut manifest = template.manifest.clone();
    manifest.insert("model_name".to_owned(), model_name.into());
    let manifest_path = staging.join("musicgen.json");
    let text = serde_json::to_string_pretty(&manifest).expect("a JSON map serializes") + "\n";
    fs::write(&manifest_path, text).map_err(write_error(&manifest_path))?;
    Ok(done_bytes)
}

fn tensor_bytes(values: &Values) -> Vec<u8> {
    match values {
        Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::U8(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_snapshots_are_named_for_their_repository() {
        let snapshot = Path::new("/home/u/.cache/huggingface/hub/models--facebook--musicgen-small/snapshots/abc123");
        assert_eq!(model_name_of(snapshot), "musicgen-small");
        assert_eq!(model_name_of(Path::new("/data/my-checkpoint")), "my-checkpoint");
    }
}
