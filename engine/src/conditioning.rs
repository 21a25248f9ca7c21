//! From prompt text to the decoder's cross-attention keys and values: tokenizer, text
//! encoder, and the per-layer projections, computed once per prompt.
//!
//! Classifier-free guidance runs the decoder on two rows. Row 0 is conditioned on the
//! prompt; row 1 is the unconditional row, built as transformers builds it for MusicGen:
//! the same length of all-zero conditioning with an all-zero attention mask.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef};
use tokenizers::Tokenizer;

use crate::bundle::{Bundle, BundleError, Graph};
use crate::runtime::{ExecutionProvider, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum ConditioningError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: cannot read the tokenizer: {reason}", path = .path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error("cannot tokenize the prompt {prompt:?}: {reason}")]
    Tokenize { prompt: String, reason: String },
    #[error(
        "the prompt {prompt:?} has pieces the model's vocabulary does not know: {pieces}; \
         rephrase them (the tokenizer at {tokenizer} maps them to its unknown token)",
        // Escaped, so that a control character shows as what it is.
        pieces = .pieces.iter().map(|piece| piece.escape_debug().to_string()).collect::<Vec<_>>().join(", "),
        tokenizer = .tokenizer.display()
    )]
    UnknownTokens {
        prompt: String,
        pieces: Vec<String>,
        tokenizer: PathBuf,
    },
    #[error("the prompt is {tokens} tokens long; this model takes at most {max}: shorten it")]
    TooLong { tokens: usize, max: usize },
    #[error("running {graph}: {source}")]
    Run { graph: &'static str, source: ort::Error },
}

/// Cross-attention inputs for both guidance rows, ready to feed to every decoder step.
pub struct CrossAttention {
    /// `cross_key_{i}`, `cross_value_{i}` for each layer, `[2, H, L, D]`.
    pub(crate) keys_values: Vec<(String, DynValue)>,
    /// `[2, L]`: ones for the prompt row, zeros for the unconditional row.
    pub(crate) encoder_mask: Tensor<i64>,
}

/// The tokenizer and the two graphs that turn a prompt into [`CrossAttention`].
pub struct Conditioner {
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    unknown_id: Option<u32>,
    max_tokens: usize,
    hidden_size: usize,
    text_encoder: Session,
    cross_kv: Session,
}

/// Longest prompt, in tokens: T5's usual limit.
const MAX_PROMPT_TOKENS: usize = 512;

impl Conditioner {
    pub(crate) fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<Self, ConditioningError> {
        let tokenizer_path = bundle.tokenizer_path();
        let tokenizer = load_tokenizer(&tokenizer_path)?;
        let unknown_id = tokenizer.token_to_id("<unk>");
        Ok(Self {
            tokenizer,
            tokenizer_path,
            unknown_id,
            max_tokens: MAX_PROMPT_TOKENS,
            hidden_size: bundle.manifest().decoder.hidden_size,
            text_encoder: bundle.session_on(runtime, Graph::TextEncoder, threads, provider)?.0,
            cross_kv: bundle.session_on(runtime, Graph::CrossKv, threads, provider)?.0,
        })
    }

    /// Token ids for `prompt`, refusing pieces the vocabulary does not know.
    pub(crate) fn tokenize(&self, prompt: &str) -> Result<Vec<u32>, ConditioningError> {
        let encoding = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ConditioningError::Tokenize {
                prompt: prompt.to_owned(),
                reason: e.to_string(),
            })?;
        let ids = encoding.get_ids().to_vec();
        if let Some(unk) = self.unknown_id {
            let pieces: Vec<String> = encoding
                .get_ids()
                .iter()
                .zip(encoding.get_offsets())
                .filter(|(id, _)| **id == unk)
                .map(|(_, &(start, end))| prompt.get(start..end).unwrap_or("?").to_owned())
                .collect();
            if !pieces.is_empty() {
                return Err(ConditioningError::UnknownTokens {
                    prompt: prompt.to_owned(),
                    pieces,
                    tokenizer: self.tokenizer_path.clone(),
                });
            }
        }
        if ids.len() > self.max_tokens {
            return Err(ConditioningError::TooLong {
                tokens: ids.len(),
                max: self.max_tokens,
            });
        }
        Ok(ids)
    }

    /// Encodes `prompt` and projects it to every layer's cross-attention keys and values.
    pub(crate) fn encode(&mut self, prompt: &str) -> Result<CrossAttention, ConditioningError> {
        let ids: Vec<i64> = self.tokenize(prompt)?.into_iter().map(i64::from).collect();
        let len = ids.len();
        let run_error = |graph: Graph| {
            move |source| ConditioningError::Run {
                graph: graph.key(),
                source,
            }
        };

        let ids_tensor = Tensor::from_array(([1usize, len], ids)).map_err(run_error(Graph::TextEncoder))?;
        let mask = Tensor::from_array(([1usize, len], vec![1i64; len])).map_err(run_error(Graph::TextEncoder))?;
        let outputs = self
            .text_encoder
            .run(ort::inputs!["input_ids" => ids_tensor, "attention_mask" => mask])
            .map_err(run_error(Graph::TextEncoder))?;
        let (_, conditioning) = outputs["conditioning"]
            .try_extract_tensor::<f32>()
            .map_err(run_error(Graph::TextEncoder))?;

        let row = len * self.hidden_size;
        let mut both_rows = vec![0.0f32; 2 * row];
        both_rows[..row].copy_from_slice(&conditioning[..row]);
        drop(outputs);
        let both_rows = TensorRef::from_array_view(([2usize, len, self.hidden_size], &both_rows[..]))
            .map_err(run_error(Graph::CrossKv))?;
        let outputs = self
            .cross_kv
            .run(ort::inputs!["conditioning" => both_rows])
            .map_err(run_error(Graph::CrossKv))?;
        let keys_values = outputs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();

        let mut encoder_mask = vec![0i64; 2 * len];
        encoder_mask[..len].fill(1);
        let encoder_mask = Tensor::from_array(([2usize, len], encoder_mask)).map_err(run_error(Graph::Decoder))?;
        Ok(CrossAttention {
            keys_values,
            encoder_mask,
        })
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, ConditioningError> {
    Tokenizer::from_file(path).map_err(|e| ConditioningError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
