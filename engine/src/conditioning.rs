//! From a prompt (and a melody model's melody) to what the decoder is conditioned on, a
//! [`Condition`], computed once per prompt: the tokenizer, the text encoder, and then
//!
//! - for a text-conditioned model, every layer's cross-attention keys and values
//!   (`cross_kv.onnx`), which every step reads;
//! - for a melody model, the prefix its decoder puts in front of the codes: the melody's
//!   one-hot chroma and the encoded prompt, which the first call on an empty cache writes
//!   into the cache's first slots (see [`crate::decoder`]).
//!
//! Classifier-free guidance runs the decoder on two rows. Row 0 is conditioned on the
//! prompt; row 1 is the unconditional row, built as transformers builds it: for MusicGen
//! the same length of all-zero conditioning, all of it masked; for MusicGen-Melody zero
//! text (attended, not masked) after the null melody (pitch class 0 throughout).
//!
//! A [`Morph`] blends two prompts' conditioning without touching the decoder's own cache:
//! their keys and values side by side along the text axis, each prompt's tokens weighed by
//! a bias on the cross-attention scores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRef};
use tokenizers::Tokenizer;

use crate::bundle::{Bundle, BundleError, Graph, MelodySpec};
use crate::chroma::Melody;
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
    #[error(
        "a melody was given but this model is text-conditioned: load a melody model (musicgen-melody) to follow one"
    )]
    MelodyNeedsMelodyModel,
    #[error(
        "morphing between prompts needs a text-conditioned model: a melody model holds its prompt in its \
         context, so a new prompt starts a new context instead"
    )]
    MorphNeedsCrossAttention,
}

/// What the decoder is conditioned on, for both guidance rows.
pub struct Condition {
    pub(crate) inputs: ConditionInputs,
}

pub(crate) enum ConditionInputs {
    /// A text-conditioned model's, fed to every step.
    CrossAttention(CrossAttention),
    /// A melody model's, fed with the first call on an empty cache.
    Prefix(Prefix),
}

/// A decoder input for both guidance rows, `[2, ...]`, and a copy of its first row,
/// `[1, ...]`, which a call that runs the conditioned row alone (guidance off) binds. A
/// copy, not a view: binding a view of a tensor's memory makes `ort` copy it on every call.
pub(crate) struct RowInput {
    both: DynValue,
    first: DynValue,
}

impl RowInput {
    fn new(both: DynValue) -> Result<Self, ort::Error> {
        let (shape, data) = both.try_extract_tensor::<f32>()?;
        let mut dims = shape.to_vec();
        let per_row = data.len() / dims[0].max(1) as usize;
        dims[0] = 1;
        let first = Tensor::from_array((dims, data[..per_row].to_vec()))?.into_dyn();
        Ok(Self { both, first })
    }

    fn from_rows(shape: &[usize], data: Vec<f32>) -> Result<Self, ort::Error> {
        Self::new(Tensor::from_array((shape.to_vec(), data))?.into_dyn())
    }

    /// The input for a call of `rows` rows (2, or 1: the first alone).
    pub(crate) fn rows(&self, rows: usize) -> &DynValue {
        if rows == 1 { &self.first } else { &self.both }
    }

    /// Both rows' data, then the first row's, to change in place.
    fn data_mut(&mut self) -> Result<(&mut [f32], &mut [f32]), ort::Error> {
        Ok((
            self.both.try_extract_tensor_mut::<f32>()?.1,
            self.first.try_extract_tensor_mut::<f32>()?.1,
        ))
    }
}

/// Cross-attention inputs for both guidance rows.
pub(crate) struct CrossAttention {
    /// `cross_key_{i}` `[2, H, D, L]` and `cross_value_{i}` `[2, H, L, D]` for each layer.
    pub(crate) keys_values: Vec<(String, RowInput)>,
    /// `[2, L]`, added to the scores of each text token: 0 on the prompt row, the float
    /// minimum (masked) all along the unconditional row.
    pub(crate) encoder_bias: RowInput,
    text_len: usize,
}

/// A melody model's prefix for both rows, and the empty tensors later calls pass instead.
pub(crate) struct Prefix {
    /// `[2, chroma_length, 12]`: the melody's one-hot chroma; the null melody on row 1.
    pub(crate) chroma: RowInput,
    /// `[2, L, width]`: the encoded prompt; zeros on row 1.
    pub(crate) text: RowInput,
    pub(crate) no_chroma: RowInput,
    pub(crate) no_text: RowInput,
    /// Cache slots the prefix takes: chroma frames and text tokens.
    pub(crate) len: usize,
}

/// The bias that masks a text token out of the softmax, as transformers makes it.
const MASKED: f32 = f32::MIN;

impl CrossAttention {
    fn new(keys_values: Vec<(String, DynValue)>, row_bias: &[f32]) -> Result<Self, ort::Error> {
        let text_len = row_bias.len();
        let mut bias = vec![MASKED; 2 * text_len];
        bias[..text_len].copy_from_slice(row_bias);
        Ok(Self {
            keys_values: keys_values
                .into_iter()
                .map(|(name, value)| Ok((name, RowInput::new(value)?)))
                .collect::<Result<_, ort::Error>>()?,
            encoder_bias: RowInput::from_rows(&[2, text_len], bias)?,
            text_len,
        })
    }
}

impl Condition {
    /// Cache slots the condition takes before the first step (a melody model's prefix).
    pub(crate) fn prefix_len(&self) -> usize {
        match &self.inputs {
            ConditionInputs::CrossAttention(_) => 0,
            ConditionInputs::Prefix(prefix) => prefix.len,
        }
    }

    fn cross_attention(&self) -> Result<&CrossAttention, ConditioningError> {
        match &self.inputs {
            ConditionInputs::CrossAttention(cross) => Ok(cross),
            ConditionInputs::Prefix(_) => Err(ConditioningError::MorphNeedsCrossAttention),
        }
    }
}

impl From<CrossAttention> for Condition {
    fn from(cross: CrossAttention) -> Self {
        Self {
            inputs: ConditionInputs::CrossAttention(cross),
        }
    }
}

/// Prompt A's and prompt B's conditioning, blended by an amount `m` from 0 (A alone) to 1
/// (B alone). In between, the decoder attends over A's tokens and B's side by side, with
/// `ln(1 - m)` added to A's scores and `ln(m)` to B's: each prompt's share of every
/// softmax is weighed by its amount, so the blend moves smoothly from one to the other.
/// At 0 and 1 the prompt alone is used, so the ends are exactly the prompts.
pub(crate) struct Morph {
    /// B's conditioning, shared with the morph a prompt change makes from this one.
    target: Arc<Condition>,
    blend: Condition,
    amount: f32,
}

impl Morph {
    /// A morph from `a` toward `target`, at `amount`; both must be cross-attention
    /// conditions.
    pub(crate) fn new(a: &Condition, target: Arc<Condition>, amount: f32) -> Result<Self, ConditioningError> {
        let blend = side_by_side(a.cross_attention()?, target.cross_attention()?)?.into();
        let mut morph = Self {
            target,
            blend,
            amount: 0.0,
        };
        morph.set_amount(amount);
        Ok(morph)
    }

    /// The same morph (target and amount) from a new prompt A; B is not encoded again.
    pub(crate) fn for_new_a(&self, a: &Condition) -> Result<Self, ConditioningError> {
        Self::new(a, Arc::clone(&self.target), self.amount)
    }

    /// Sets the amount (clamped to 0..=1); only the bias changes.
    pub(crate) fn set_amount(&mut self, amount: f32) {
        self.amount = if amount.is_nan() { 0.0 } else { amount.clamp(0.0, 1.0) };
        let (ConditionInputs::CrossAttention(target), ConditionInputs::CrossAttention(blend)) =
            (&self.target.inputs, &mut self.blend.inputs)
        else {
            unreachable!("Morph::new takes cross-attention conditions only");
        };
        let b_len = target.text_len;
        let a_len = blend.text_len - b_len;
        let (both, first) = blend
            .encoder_bias
            .data_mut()
            .expect("the bias is a float tensor made in CrossAttention::new");
        let weight = |share: f32| if share > 0.0 { share.ln().max(MASKED) } else { MASKED };
        for bias in [both, first] {
            bias[..a_len].fill(weight(1.0 - self.amount));
            bias[a_len..a_len + b_len].fill(weight(self.amount));
        }
    }

    /// The conditioning to step with, given prompt A's.
    pub(crate) fn conditioning<'a>(&'a self, a: &'a Condition) -> &'a Condition {
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
        let (a_shape, a_data) = a_value.rows(2).try_extract_tensor::<f32>().map_err(error)?;
        let (_, b_data) = b_value.rows(2).try_extract_tensor::<f32>().map_err(error)?;
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

/// The tokenizer and the graphs that turn a prompt into a [`Condition`].
pub struct Conditioner {
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    unknown_id: Option<u32>,
    max_tokens: usize,
    hidden_size: usize,
    text_encoder: Session,
    conditions: Conditions,
}

/// What the encoded prompt becomes.
enum Conditions {
    /// A text-conditioned model's cross-attention keys and values, by `cross_kv.onnx`.
    CrossAttention(Session),
    /// A melody model's prefix, with its chroma settings.
    Prefix(MelodySpec),
}

impl Conditioner {
    pub(crate) fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<Self, ConditioningError> {
        let manifest = bundle.manifest();
        let tokenizer_path = bundle.tokenizer_path();
        let tokenizer = load_tokenizer(&tokenizer_path)?;
        let unknown_id = tokenizer.token_to_id("<unk>");
        Ok(Self {
            tokenizer,
            tokenizer_path,
            unknown_id,
            max_tokens: manifest.text_encoder.max_tokens,
            hidden_size: manifest.decoder.hidden_size,
            text_encoder: bundle.session_on(runtime, Graph::TextEncoder, threads, provider)?.0,
            conditions: match manifest.melody {
                None => Conditions::CrossAttention(bundle.session_on(runtime, Graph::CrossKv, threads, provider)?.0),
                Some(spec) => Conditions::Prefix(spec),
            },
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

    /// Encodes `prompt`, and `melody` for a melody model (none: the null melody), into
    /// what the decoder is conditioned on.
    pub(crate) fn encode(&mut self, prompt: &str, melody: Option<&Melody>) -> Result<Condition, ConditioningError> {
        if melody.is_some() && matches!(self.conditions, Conditions::CrossAttention(_)) {
            return Err(ConditioningError::MelodyNeedsMelodyModel);
        }
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

        let cross_kv = match &mut self.conditions {
            Conditions::Prefix(spec) => return prefix(both_rows, len, self.hidden_size, melody, *spec),
            Conditions::CrossAttention(cross_kv) => cross_kv,
        };
        let both_rows = TensorRef::from_array_view(([2usize, len, self.hidden_size], &both_rows[..]))
            .map_err(run_error(Graph::CrossKv))?;
        let outputs = cross_kv
            .run(ort::inputs!["conditioning" => both_rows])
            .map_err(run_error(Graph::CrossKv))?;
        let keys_values = outputs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();

        Ok(CrossAttention::new(keys_values, &vec![0.0; len])
            .map_err(run_error(Graph::Decoder))?
            .into())
    }
}

/// A melody model's prefix: both rows' chroma (the melody's, then the null melody) and
/// both rows' encoded text (`both_rows`, the unconditional row zero).
fn prefix(
    both_rows: Vec<f32>,
    text_len: usize,
    width: usize,
    melody: Option<&Melody>,
    spec: MelodySpec,
) -> Result<Condition, ConditioningError> {
    let error = |source| ConditioningError::Run {
        graph: Graph::Decoder.key(),
        source,
    };
    let (frames, classes) = (spec.chroma_length, spec.num_chroma);
    let mut chroma = Melody::one_hot(melody, frames, classes);
    chroma.extend(Melody::one_hot(None, frames, classes));
    let empty = |depth: usize| RowInput::from_rows(&[2, 0, depth], Vec::new()).map_err(error);
    Ok(Condition {
        inputs: ConditionInputs::Prefix(Prefix {
            chroma: RowInput::from_rows(&[2, frames, classes], chroma).map_err(error)?,
            text: RowInput::from_rows(&[2, text_len, width], both_rows).map_err(error)?,
            no_chroma: empty(classes)?,
            no_text: empty(width)?,
            len: frames + text_len,
        }),
    })
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer, ConditioningError> {
    Tokenizer::from_file(path).map_err(|e| ConditioningError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
