//! From prompt text to the decoder's cross-attention keys and values: tokenizer, text
//! encoder, and the per-layer projections, computed once per prompt.
//!
//! Classifier-free guidance runs the decoder on two rows. Row 0 is conditioned on the
//! prompt; row 1 is the unconditional row, built as transformers builds it for MusicGen:
//! the same length of all-zero conditioning, all of it masked.
//!
//! A [`Morph`] blends two prompts' conditioning without touching the decoder's own cache:
//! their keys and values side by side along the text axis, each prompt's tokens weighed by
//! a bias on the cross-attention scores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// `cross_key_{i}` `[2, H, D, L]` and `cross_value_{i}` `[2, H, L, D]` for each layer.
    pub(crate) keys_values: Vec<(String, DynValue)>,
    /// `[2, L]`, added to the scores of each text token: 0 on the prompt row, the float
    /// minimum (masked) all along the unconditional row.
    pub(crate) encoder_bias: Tensor<f32>,
    text_len: usize,
}

/// The bias that masks a text token out of the softmax, as transformers makes it.
const MASKED: f32 = f32::MIN;

impl CrossAttention {
    fn new(keys_values: Vec<(String, DynValue)>, row_bias: &[f32]) -> Result<Self, ort::Error> {
        let text_len = row_bias.len();
        let mut bias = vec![MASKED; 2 * text_len];
        bias[..text_len].copy_from_slice(row_bias);
        Ok(Self {
            keys_values,
            encoder_bias: Tensor::from_array(([2usize, text_len], bias))?,
            text_len,
        })
    }
}

/// Prompt A's and prompt B's conditioning, blended by an amount `m` from 0 (A alone) to 1
/// (B alone). In between, the decoder attends over A's tokens and B's side by side, with
/// `ln(1 - m)` added to A's scores and `ln(m)` to B's: each prompt's share of every
/// softmax is weighed by its amount, so the blend moves smoothly from one to the other.
/// At 0 and 1 the prompt alone is used, so the ends are exactly the prompts.
pub(crate) struct Morph {
    /// B's conditioning, shared with the morph a prompt change makes from this one.
    target: Arc<CrossAttention>,
    blend: CrossAttention,
    amount: f32,
}

impl Morph {
    /// A morph from `a` toward `target`, at `amount`.
    pub(crate) fn new(a: &CrossAttention, target: Arc<CrossAttention>, amount: f32) -> Result<Self, ConditioningError> {
        let blend = side_by_side(a, &target)?;
        let mut morph = Self {
            target,
            blend,
            amount: 0.0,
        };
        morph.set_amount(amount);
        Ok(morph)
    }

    /// The same morph (target and amount) from a new prompt A; B is not encoded again.
    pub(crate) fn for_new_a(&self, a: &CrossAttention) -> Result<Self, ConditioningError> {
        Self::new(a, Arc::clone(&self.target), self.amount)
    }

    /// Sets the amount (clamped to 0..=1); only the bias changes.
    pub(crate) fn set_amount(&mut self, amount: f32) {
        self.amount = if amount.is_nan() { 0.0 } else { amount.clamp(0.0, 1.0) };
        let b_len = self.target.text_len;
        let a_len = self.blend.text_len - b_len;
        let (_, bias) = self.blend.encoder_bias.extract_tensor_mut();
        let weight = |share: f32| if share > 0.0 { share.ln().max(MASKED) } else { MASKED };
        bias[..a_len].fill(weight(1.0 - self.amount));
        bias[a_len..a_len + b_len].fill(weight(self.amount));
    }

    /// The conditioning to step with, given prompt A's.
    pub(crate) fn conditioning<'a>(&'a self, a: &'a CrossAttention) -> &'a CrossAttention {
        if self.amount <= 0.0 {
            a
        } else if self.amount >= 1.0 {
            &self.target
        } else {
            &self.blend
        }
    }
}

/// `a`'s keys and values followed by `b`'s along the text axis (keys `[2, H, D, L]`: the
/// last axis; values `[2, H, L, D]`: the third).
fn side_by_side(a: &CrossAttention, b: &CrossAttention) -> Result<CrossAttention, ConditioningError> {
    let error = |source| ConditioningError::Run {
        graph: Graph::CrossKv.key(),
        source,
    };
    let mut keys_values = Vec::with_capacity(a.keys_values.len());
    for ((name, a_value), (_, b_value)) in a.keys_values.iter().zip(&b.keys_values) {
        let (a_shape, a_data) = a_value.try_extract_tensor::<f32>().map_err(error)?;
        let (_, b_data) = b_value.try_extract_tensor::<f32>().map_err(error)?;
        let dims: Vec<usize> = a_shape.iter().map(|&d| d as usize).collect();
        let text_axis = if name.starts_with("cross_key") { 3 } else { 2 };
        let inner: usize = dims[text_axis + 1..].iter().product();
        let (a_run, b_run) = (a.text_len * inner, b.text_len * inner);
        let outer: usize = dims[..text_axis].iter().product();
        let mut joined = Vec::with_capacity(outer * (a_run + b_run));
        for o in 0..outer {
            joined.extend_from_slice(&a_data[o * a_run..(o + 1) * a_run]);
            joined.extend_from_slice(&b_data[o * b_run..(o + 1) * b_run]);
        }
        let mut shape = dims;
        shape[text_axis] = a.text_len + b.text_len;
        let tensor = Tensor::from_array((shape, joined)).map_err(error)?;
        keys_values.push((name.clone(), tensor.into_dyn()));
    }
    let row_bias = vec![0.0; a.text_len + b.text_len];
    CrossAttention::new(keys_values, &row_bias).map_err(error)
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

        CrossAttention::new(keys_values, &vec![0.0; len]).map_err(run_error(Graph::Decoder))
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, ConditioningError> {
    Tokenizer::from_file(path).map_err(|e| ConditioningError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
