//! One decoder step at a time, for both guidance rows, with a self-attention cache the
//! engine owns.
//!
//! The graph takes the past keys and values as inputs and returns only the step's new
//! ones; the engine appends them in place. A [`KvCache`] is laid out `[2, H, capacity, D]`
//! per layer and fed whole, with `past_mask` marking the filled slots, so a step copies no
//! cache at all. Capacity grows in blocks of [`CACHE_BLOCK_FRAMES`]: attention then spans
//! at most one block more than the context, and the re-layout on growth costs one cache
//! copy per block, not per step.
//!
//! The [`Decoder`] (the session) and the caches are apart, so that one loaded graph can
//! step several independent contexts: a stream that slides its window prefills the next
//! window's cache while it still plays from the current one.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use crate::bundle::{Bundle, BundleError, DecoderGeometry, Graph};
use crate::conditioning::CrossAttention;
use crate::runtime::{ExecutionProvider, Runtime};

/// Frames by which the self-attention cache grows.
pub const CACHE_BLOCK_FRAMES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("decoder step {step}: {source}")]
    Run { step: usize, source: ort::Error },
    #[error("the context is full: {max_frames} steps is this model's maximum")]
    ContextFull { max_frames: usize },
}

/// Keys and values of one layer for both rows, `[2, H, capacity, D]`.
#[derive(Clone)]
struct LayerCache {
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// One context's self-attention keys and values, for every layer and both guidance rows.
#[derive(Clone)]
pub struct KvCache {
    num_heads: usize,
    head_dim: usize,
    max_steps: usize,
    layers: Vec<LayerCache>,
    capacity: usize,
    len: usize,
    /// `[2, capacity]`, 1 where a slot holds a past key and value.
    past_mask: Vec<i64>,
}

impl KvCache {
    /// Forgets the past: the next step is step 0.
    pub fn reset(&mut self) {
        self.len = 0;
        self.resize(CACHE_BLOCK_FRAMES);
        self.past_mask.fill(0);
    }

    /// Treats the first `frames` cache slots as past steps, whatever they hold, so that the
    /// next step attends over `frames` positions. A step's cost depends on the context's
    /// length, not its content: benchmarks measure long contexts without generating them.
    pub fn assume_context(&mut self, frames: usize) -> Result<(), DecoderError> {
        if frames >= self.max_steps {
            return Err(DecoderError::ContextFull {
                max_frames: self.max_steps,
            });
        }
        self.reset();
        self.len = frames;
        self.resize(frames.next_multiple_of(CACHE_BLOCK_FRAMES) + CACHE_BLOCK_FRAMES);
        Ok(())
    }

    /// Steps run since the last reset: the position of the next step.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most steps one context holds (the model's position limit).
    pub fn max_steps(&self) -> usize {
        self.max_steps
    }

    /// Re-lays the cache out for `capacity` frames, keeping the filled slots.
    fn resize(&mut self, capacity: usize) {
        let (heads, d) = (self.num_heads, self.head_dim);
        let old = self.capacity;
        let keep = self.len.min(old) * d;
        let relayout = |buffer: &mut Vec<f32>| {
            let mut grown = vec![0.0f32; 2 * heads * capacity * d];
            for bh in 0..2 * heads {
                grown[bh * capacity * d..bh * capacity * d + keep]
                    .copy_from_slice(&buffer[bh * old * d..bh * old * d + keep]);
            }
            *buffer = grown;
        };
        for layer in &mut self.layers {
            relayout(&mut layer.keys);
            relayout(&mut layer.values);
        }
        let mut mask = vec![0i64; 2 * capacity];
        for row in 0..2 {
            mask[row * capacity..row * capacity + self.len].fill(1);
        }
        self.past_mask = mask;
        self.capacity = capacity;
    }
}

/// The decoder graph and the logits of its last step.
pub struct Decoder {
    session: Session,
    provider_in_use: String,
    geometry: DecoderGeometry,
    num_codebooks: usize,
    cardinality: usize,
    max_steps: usize,
    /// Input names per layer: past key, past value; output names: new key, new value.
    layer_names: Vec<[String; 4]>,
    logits: Vec<f32>,
}

impl Decoder {
    pub fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<Self, DecoderError> {
        let manifest = bundle.manifest();
        let (session, provider_in_use) = bundle.session_on(runtime, Graph::Decoder, threads, provider)?;
        let geometry = manifest.decoder;
        let layer_names = (0..geometry.num_layers)
            .map(|i| {
                [
                    format!("past_key_{i}"),
                    format!("past_value_{i}"),
                    format!("new_key_{i}"),
                    format!("new_value_{i}"),
                ]
            })
            .collect();
        Ok(Self {
            session,
            provider_in_use,
            geometry,
            num_codebooks: manifest.num_codebooks,
            cardinality: manifest.cardinality,
            // A delay pattern adds up to K - 1 steps to the frames.
            max_steps: manifest.max_frames + manifest.num_codebooks,
            layer_names,
            logits: vec![0.0; 2 * manifest.num_codebooks * manifest.cardinality],
        })
    }

    /// An empty cache for this graph's geometry.
    pub fn new_cache(&self) -> KvCache {
        let mut cache = KvCache {
            num_heads: self.geometry.num_heads,
            head_dim: self.geometry.head_dim,
            max_steps: self.max_steps,
            layers: vec![
                LayerCache {
                    keys: Vec::new(),
                    values: Vec::new(),
                };
                self.geometry.num_layers
            ],
            capacity: 0,
            len: 0,
            past_mask: Vec::new(),
        };
        cache.reset();
        cache
    }

    /// The execution provider the decoder runs on, with the reason for any fallback.
    pub fn provider_in_use(&self) -> &str {
        &self.provider_in_use
    }

    /// Logits of the last step, `[2, K, V]` (row 0 conditional, row 1 unconditional).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Logits of codebook `k` for row `row` from the last step.
    pub fn logits_of(&self, row: usize, k: usize) -> &[f32] {
        let v = self.cardinality;
        let start = (row * self.num_codebooks + k) * v;
        &self.logits[start..start + v]
    }

    /// Runs one step of `cache`'s context on `tokens` (`[2, K]`, row-major), appends the
    /// step's keys and values to `cache`, and keeps the logits.
    pub fn step(&mut self, cache: &mut KvCache, tokens: &[i64], cross: &CrossAttention) -> Result<(), DecoderError> {
        if cache.len >= cache.max_steps {
            return Err(DecoderError::ContextFull {
                max_frames: cache.max_steps,
            });
        }
        if cache.len == cache.capacity {
            cache.resize(cache.capacity + CACHE_BLOCK_FRAMES);
        }
        let step = cache.len;
        let run_error = |source| DecoderError::Run { step, source };
        let (heads, d, cap) = (self.geometry.num_heads, self.geometry.head_dim, cache.capacity);
        let cache_shape = [2usize, heads, cap, d];

        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(4 + 4 * cache.layers.len());
        inputs.push((
            "input_ids".into(),
            Tensor::from_array(([2usize, self.num_codebooks], tokens.to_vec()))
                .map_err(run_error)?
                .into(),
        ));
        inputs.push((
            "position".into(),
            Tensor::from_array(([1usize], vec![step as i64]))
                .map_err(run_error)?
                .into(),
        ));
        inputs.push((
            "past_mask".into(),
            TensorRef::from_array_view(([2usize, cap], &cache.past_mask[..]))
                .map_err(run_error)?
                .into(),
        ));
        inputs.push(("encoder_attention_mask".into(), (&cross.encoder_mask).into()));
        for (layer, names) in cache.layers.iter().zip(&self.layer_names) {
            inputs.push((
                names[0].as_str().into(),
                TensorRef::from_array_view((cache_shape, &layer.keys[..]))
                    .map_err(run_error)?
                    .into(),
            ));
            inputs.push((
                names[1].as_str().into(),
                TensorRef::from_array_view((cache_shape, &layer.values[..]))
                    .map_err(run_error)?
                    .into(),
            ));
        }
        for (name, value) in &cross.keys_values {
            inputs.push((name.as_str().into(), value.into()));
        }

        let outputs = self.session.run(inputs).map_err(run_error)?;
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>().map_err(run_error)?;
        self.logits.copy_from_slice(logits);
        for (layer, names) in cache.layers.iter_mut().zip(&self.layer_names) {
            for (buffer, name) in [(&mut layer.keys, &names[2]), (&mut layer.values, &names[3])] {
                let (_, new) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(run_error)?;
                // `new` is [2, H, 1, D]: one D-vector per (row, head), written to slot `step`.
                for bh in 0..2 * heads {
                    let dst = bh * cap * d + step * d;
                    buffer[dst..dst + d].copy_from_slice(&new[bh * d..(bh + 1) * d]);
                }
            }
        }
        drop(outputs);
        for row in 0..2 {
            cache.past_mask[row * cap + step] = 1;
        }
        cache.len += 1;
        Ok(())
    }
}
