//! A transformers checkpoint folder: `config.json`, the weights in one safetensors file or
//! in shards named by `model.safetensors.index.json`, and `tokenizer.json`.
//!
//! The weight files' headers are read when the folder is opened; a tensor's bytes are read
//! (and converted to float32) only when a recipe asks for it, so an import holds a few
//! tensors at a time, not the model.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";
/// A safetensors file starts with its header's length, a little-endian u64.
const HEADER_LENGTH_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}; a transformers checkpoint folder has config.json, its safetensors weights and tokenizer.json", path = .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {source}", path = .path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{dir}: neither {SINGLE_FILE} nor {INDEX_FILE}; only safetensors weights are read (a pytorch_model.bin can be converted with transformers' save_pretrained(safe_serialization=True))", dir = .dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{path}: not a safetensors file: {problem}", path = .path.display())]
    Safetensors { path: PathBuf, problem: String },
    #[error("{dir}: no tensor `{name}` in the weights; the checkpoint is not the architecture its config.json names, or it is incomplete", dir = .dir.display())]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{path}: tensor `{name}` is {dtype:?}; weights are read from float32, float16 or bfloat16", path = .path.display())]
    Dtype { path: PathBuf, name: String, dtype: Dtype },
}

/// An open checkpoint folder.
pub struct Checkpoint {
    dir: PathBuf,
    config: Value,
    files: Vec<WeightFile>,
    index: HashMap<String, StoredTensor>,
}

struct WeightFile {
    path: PathBuf,
    file: File,
}

/// Where a tensor's bytes are, and what they are.
struct StoredTensor {
    file: usize,
    /// From the start of the file.
    offset: u64,
    length: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl Checkpoint {
    /// Opens `dir`: reads config.json and the weights' headers.
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let config = read_json(&dir.join(CONFIG_FILE))?;
        let names: Vec<String> = if dir.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_owned()]
        } else if dir.join(INDEX_FILE).is_file() {
            shard_files(&dir.join(INDEX_FILE))?
        } else {
            return Err(CheckpointError::NoWeights { dir: dir.to_owned() });
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in names {
            let path = dir.join(&name);
            let read = |source| CheckpointError::Read {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(read)?;
            // The header is parsed from a map (safetensors checks it against the file's
            // length), which is dropped before any tensor's pages are touched: mapped
            // weights would count as this process's memory as they are read.
            // SAFETY: the map is read-only and lives only while the header is parsed.
            let map = unsafe { Mmap::map(&file) }.map_err(read)?;
            let (header_bytes, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| CheckpointError::Safetensors {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            let data_start = (HEADER_LENGTH_BYTES + header_bytes) as u64;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                let stored = StoredTensor {
                    file: files.len(),
                    offset: data_start + start as u64,
                    length: end - start,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                };
                index.insert(name, stored);
            }
            drop(map);
            files.push(WeightFile { path, file });
        }
        Ok(Checkpoint {
            dir: dir.to_owned(),
            config,
            files,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// config.json, parsed.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Tensor `name`'s shape and values as float32. A name the file lacks is looked up by
    /// the other names transformers gives the same tensor (see [`aliases`]).
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
        let found = std::iter::once(name.to_owned())
            .chain(aliases(name))
            .find_map(|candidate| self.index.get(&candidate).map(|stored| (candidate, stored)));
        let Some((stored_name, stored)) = found else {
            return Err(CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_owned(),
            });
        };
        let file = &self.files[stored.file];
        let mut bytes = vec![0u8; stored.length];
        let mut reader = &file.file;
        reader
            .seek(SeekFrom::Start(stored.offset))
            .and_then(|_| reader.read_exact(&mut bytes))
            .map_err(|source| CheckpointError::Read {
                path: file.path.clone(),
                source,
            })?;
        let values = match stored.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            dtype => {
                return Err(CheckpointError::Dtype {
                    path: file.path.clone(),
                    name: stored_name,
                    dtype,
                });
            }
        };
        Ok((stored.shape.clone(), values))
    }
}

/// Other names of the same tensor: Encodec's weight norm as torch's parametrization or as
/// the older `weight_g`/`weight_v` (the hub's checkpoints have the older), and T5's tied
/// token embedding, saved once under either name.
fn aliases(name: &str) -> Vec<String> {
    const PAIRS: [(&str, &str); 3] = [
        (".parametrizations.weight.original0", ".weight_g"),
        (".parametrizations.weight.original1", ".weight_v"),
        ("text_encoder.shared.weight", "text_encoder.encoder.embed_tokens.weight"),
    ];
    PAIRS
        .iter()
        .flat_map(|&(a, b)| [(a, b), (b, a)])
        .filter(|(from, _)| name.ends_with(from))
        .map(|(from, to)| format!("{}{to}", &name[..name.len() - from.len()]))
        .collect()
}

/// The shard files `model.safetensors.index.json` at `index` names, each once, in order.
pub(crate) fn shard_files(index: &Path) -> Result<Vec<String>, CheckpointError> {
    let json = read_json(index)?;
    let mut shards: Vec<String> = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| CheckpointError::Safetensors {
            path: index.to_owned(),
            problem: "no `weight_map` object".to_owned(),
        })?
        .values()
        .filter_map(|file| file.as_str().map(str::to_owned))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::Json {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_norm_and_tied_embedding_names_alias_both_ways() {
        assert_eq!(
            aliases("audio_encoder.decoder.layers.0.conv.weight_g"),
            vec!["audio_encoder.decoder.layers.0.conv.parametrizations.weight.original0"]
        );
        assert_eq!(
            aliases("a.conv.parametrizations.weight.original1"),
            vec!["a.conv.weight_v"]
        );
        assert_eq!(
            aliases("text_encoder.shared.weight"),
            vec!["text_encoder.encoder.embed_tokens.weight"]
        );
        assert!(aliases("decoder.lm_heads.0.weight").is_empty());
    }
}
