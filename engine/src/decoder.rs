//! The decoder graph for its guidance rows, one step or one prefill at a time, with a
//! self-attention cache the engine owns and ONNX Runtime fills in place.
//!
//! A [`KvCache`] is one tensor per layer for keys and one for values, `[rows, H, capacity,
//! D]` in the bundle's cache type (float32 or int8), allocated once for a whole lane. Its
//! rows are both guidance rows (conditioned, unconditional), or the conditioned row alone
//! when guidance is off and the graph takes any number of rows (bundles exported since
//! this was possible; older ones have two fixed rows and run both): guidance off then
//! costs one row's attention and cache, not two. Each call
//! binds the same tensor as the graph's `past_*` input and its `present_*` output; ONNX
//! Runtime's `GroupQueryAttention` sees that they share a buffer, writes the new keys and
//! values into the next slots and attends over the filled slots only. Nothing copies the
//! cache, inside ONNX Runtime or out.
//!
//! A call runs `S` steps: one while generating, or every step of a run of given frames at
//! once (a *prefill*, which must start from an empty cache). Only the last step's logits
//! come back.
//!
//! A melody model's conditioning is a prefix of its sequence: the first call on an empty
//! cache passes it (chroma and text) in front of its steps, so the cache's first slots
//! hold it, and later calls pass it empty. A cache is sized for its steps when made and
//! grows, while still empty, by the prefix of the condition its first call brings.
//!
//! The [`DecoderGraph`] (the session, one per loaded model), each stream's [`Decoder`]
//! (its logits) and the caches are apart, so that one loaded graph steps several
//! independent contexts: a stream that slides its window prefills the next window's cache
//! while it still plays from the current one, and several streams share one model.

use std::sync::Arc;

use ort::memory::Allocator;
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, Tensor, TensorElementType, ValueType};
use parking_lot::Mutex;

use crate::bundle::{Bundle, BundleError, CacheType, DecoderGeometry, Graph};
use crate::conditioning::{Condition, ConditionInputs};
use crate::runtime::{ExecutionProvider, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("decoder step {step}: {source}")]
    Run { step: usize, source: ort::Error },
    #[error("the context is full: {max_frames} steps is this model's maximum")]
    ContextFull { max_frames: usize },
    #[error("a cache of {capacity} slots holds {len} steps and cannot take {steps} more")]
    CacheFull { capacity: usize, len: usize, steps: usize },
    #[error("a prefill of {steps} steps needs an empty cache; this one holds {len}")]
    PrefillAfterSteps { steps: usize, len: usize },
    #[error("the conditioning takes {len} positions; this model leaves {max} for it: shorten the prompt")]
    PrefixTooLong { len: usize, max: usize },
}

/// One context's self-attention keys and values, for every layer and its guidance rows.
pub struct KvCache {
    /// Per layer: keys, values, each `[rows, H, capacity, D]`.
    layers: Vec<[DynTensor; 2]>,
    /// 2 (guidance) or 1 (the conditioned row alone).
    rows: usize,
    /// Slots: the steps asked for, and the prefix of the condition it was filled with.
    capacity: usize,
    /// Steps (without a prefix) it was asked to hold.
    steps: usize,
    /// Filled slots, the prefix included.
    len: usize,
}

impl KvCache {
    /// Forgets the past: the next step is step 0. The slots keep their old contents,
    /// which no step reads before writing them.
    pub(crate) fn reset(&mut self) {
        self.len = 0;
    }

    /// Treats the first `frames` cache slots as past steps, whatever they hold, so that the
    /// next step attends over `frames` positions. A step's cost depends on the context's
    /// length, not its content: benchmarks measure long contexts without generating them.
    pub fn assume_context(&mut self, frames: usize) -> Result<(), DecoderError> {
        if frames >= self.capacity {
            return Err(DecoderError::CacheFull {
                capacity: self.capacity,
                len: 0,
                steps: frames,
            });
        }
        self.len = frames;
        Ok(())
    }

    /// Guidance rows the cache holds: 2, or 1 when it serves the conditioned row alone.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Steps run since the last reset: the position of the next step.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps this cache holds at most (besides a condition's prefix).
    pub(crate) fn step_capacity(&self) -> usize {
        self.steps
    }

    /// A copy of this cache (its filled slots and position), for a second continuation.
    pub(crate) fn try_clone(&self) -> Result<KvCache, DecoderError> {
        let run_error = |source| DecoderError::Run { step: self.len, source };
        let layers = self
            .layers
            .iter()
            .map(|pair| -> Result<[DynTensor; 2], DecoderError> {
                let copy = |tensor: &DynTensor| -> Result<DynTensor, DecoderError> {
                    let element = *tensor.data_type();
                    let mut copied =
                        DynTensor::new(&Allocator::default(), element, tensor.shape().to_vec()).map_err(run_error)?;
                    let bytes = element
                        .byte_size(tensor.shape().num_elements())
                        .expect("caches hold numbers, not strings");
                    // Both are CPU tensors of the same type and shape, allocated by ONNX
                    // Runtime; neither is bound to a session while this runs.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tensor.data_ptr().cast::<u8>(),
                            copied.data_ptr_mut().cast::<u8>(),
                            bytes,
                        );
                    }
                    Ok(copied)
                };
                Ok([copy(&pair[0])?, copy(&pair[1])?])
            })
            .collect::<Result<_, _>>()?;
        Ok(KvCache {
            layers,
            rows: self.rows,
            capacity: self.capacity,
            steps: self.steps,
            len: self.len,
        })
    }
}

/// The loaded decoder graph, shared by every stream of a model. ONNX Runtime runs one
/// call at a time per session here: streams of one model take turns step by step, which
/// on a CPU is what their threads would do anyway.
pub struct DecoderGraph {
    session: Mutex<Session>,
    provider_in_use: String,
    geometry: DecoderGeometry,
    cache_type: CacheType,
    num_codebooks: usize,
    cardinality: usize,
    max_steps: usize,
    /// Positions a condition's prefix may take besides the steps.
    max_prefix_len: usize,
    /// Per layer: past key, past value inputs; present key, present value outputs.
    layer_names: Vec<[String; 4]>,
    /// The graph takes any number of rows, so that guidance off runs one.
    single_row: bool,
}

impl DecoderGraph {
    pub(crate) fn load(
        bundle: &Bundle,
        runtime: &Runtime,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<Self, DecoderError> {
        let manifest = bundle.manifest();
        let (session, provider_in_use) = bundle.session_on(runtime, Graph::Decoder, threads, provider)?;
        let geometry = manifest.decoder;
        let single_row = session.inputs().iter().any(|input| {
            input.name() == "input_ids"
                && matches!(input.dtype(), ValueType::Tensor { shape, .. } if shape.first().is_some_and(|&rows| rows < 0))
        });
        let layer_names = (0..geometry.num_layers)
            .map(|i| {
                [
                    format!("past_key_{i}"),
                    format!("past_value_{i}"),
                    format!("present_key_{i}"),
                    format!("present_value_{i}"),
                ]
            })
            .collect();
        Ok(Self {
            session: Mutex::new(session),
            provider_in_use,
            geometry,
            cache_type: manifest.kv_cache.dtype,
            num_codebooks: manifest.num_codebooks,
            cardinality: manifest.cardinality,
            // A delay pattern adds up to K - 1 steps to the frames, and step 0 comes first.
            max_steps: manifest.max_frames + manifest.num_codebooks,
            max_prefix_len: manifest.max_prefix_len(),
            layer_names,
            single_row,
        })
    }

    /// The execution provider the decoder runs on, with the reason for any fallback.
    pub(crate) fn provider_in_use(&self) -> &str {
        &self.provider_in_use
    }
}

/// One user of a [`DecoderGraph`] (a stream) with the logits of its last step.
pub struct Decoder {
    graph: Arc<DecoderGraph>,
    /// The last step's logits, `[rows, K, V]`, for each row count (index `rows - 1`),
    /// bound as the graph's output.
    logits: [Tensor<f32>; 2],
    /// The rows of the last call.
    last_rows: usize,
}

impl Decoder {
    pub(crate) fn new(graph: Arc<DecoderGraph>) -> Result<Self, DecoderError> {
        let logits = |rows: usize| {
            Tensor::new(&Allocator::default(), [rows, graph.num_codebooks, graph.cardinality])
                .map_err(|source| DecoderError::Run { step: 0, source })
        };
        Ok(Self {
            logits: [logits(1)?, logits(2)?],
            graph,
            last_rows: 2,
        })
    }

    /// The rows a cache needs for `guidance_scale`: the conditioned row alone when
    /// guidance is off (1) and the graph can run one row, both otherwise.
    pub fn rows_for(&self, guidance_scale: f32) -> usize {
        if guidance_scale == 1.0 && self.graph.single_row {
            1
        } else {
            2
        }
    }

    /// An empty cache of `steps` steps (at most the model's position limit) and `rows`
    /// rows (see [`Decoder::rows_for`]) for this graph's geometry and cache type. It grows
    /// by a melody model's prefix on its first call.
    pub fn new_cache(&self, steps: usize, rows: usize) -> Result<KvCache, DecoderError> {
        let steps = steps.min(self.graph.max_steps);
        let rows = if rows == 1 && self.graph.single_row { 1 } else { 2 };
        Ok(KvCache {
            layers: self.allocate_layers(rows, steps)?,
            rows,
            capacity: steps,
            steps,
            len: 0,
        })
    }

    fn allocate_layers(&self, rows: usize, slots: usize) -> Result<Vec<[DynTensor; 2]>, DecoderError> {
        let graph = &self.graph;
        let (heads, d) = (graph.geometry.num_heads, graph.geometry.head_dim);
        let element = match graph.cache_type {
            CacheType::Float32 => TensorElementType::Float32,
            CacheType::Int8 => TensorElementType::Int8,
        };
        let allocate = || {
            DynTensor::new(&Allocator::default(), element, [rows, heads, slots, d])
                .map_err(|source| DecoderError::Run { step: 0, source })
        };
        (0..graph.geometry.num_layers)
            .map(|_| Ok([allocate()?, allocate()?]))
            .collect()
    }

    /// Logits of codebook `k` for row `row` (0: conditioned, 1: unconditional) from the
    /// last step.
    pub(crate) fn logits_of(&self, row: usize, k: usize) -> &[f32] {
        debug_assert!(row < self.last_rows, "the last step ran {} rows", self.last_rows);
        let v = self.graph.cardinality;
        let start = (row * self.graph.num_codebooks + k) * v;
        let (_, logits) = self.logits[self.last_rows - 1].extract_tensor();
        &logits[start..start + v]
    }

    /// Runs one step on a scratch cache of each row count the graph takes, so that the
    /// first real step does not pay for ONNX Runtime's first-run work.
    pub(crate) fn warm_up(&mut self, cross: &Condition) -> Result<(), DecoderError> {
        let column = vec![self.graph.cardinality as i64; self.graph.num_codebooks];
        let row_counts: &[usize] = if self.graph.single_row { &[1, 2] } else { &[2] };
        for &rows in row_counts {
            let mut cache = self.new_cache(1, rows)?;
            self.step(&mut cache, &column, cross)?;
        }
        Ok(())
    }

    /// Runs one step of `cache`'s context on `column` (the step's K tokens, the same for
    /// both rows), appends its keys and values to `cache`, and keeps the logits.
    pub fn step(&mut self, cache: &mut KvCache, column: &[i64], cross: &Condition) -> Result<(), DecoderError> {
        self.run(cache, column, cross)
    }

    /// Runs every step of `columns` (step-major, K tokens each) in one call on an empty
    /// `cache`: the cache then holds them all, and the logits are the last step's.
    pub(crate) fn prefill(
        &mut self,
        cache: &mut KvCache,
        columns: &[i64],
        cross: &Condition,
    ) -> Result<(), DecoderError> {
        let steps = columns.len() / self.graph.num_codebooks;
        if !cache.is_empty() && steps > 1 {
            return Err(DecoderError::PrefillAfterSteps { steps, len: cache.len });
        }
        self.run(cache, columns, cross)
    }

    fn run(&mut self, cache: &mut KvCache, columns: &[i64], cross: &Condition) -> Result<(), DecoderError> {
        let graph = &*self.graph;
        let k_count = graph.num_codebooks;
        debug_assert_eq!(columns.len() % k_count, 0, "whole columns of K tokens");
        let steps = columns.len() / k_count;
        let first_step = cache.len;
        // A melody model's prefix goes in with the first call on an empty cache.
        let prefix_len = if first_step == 0 { cross.prefix_len() } else { 0 };
        if prefix_len > graph.max_prefix_len {
            return Err(DecoderError::PrefixTooLong {
                len: prefix_len,
                max: graph.max_prefix_len,
            });
        }
        if first_step == 0 && cache.capacity < prefix_len + cache.steps {
            cache.layers = self.allocate_layers(cache.rows, prefix_len + cache.steps)?;
            cache.capacity = prefix_len + cache.steps;
        }
        if first_step + prefix_len + steps > graph.max_steps + graph.max_prefix_len {
            return Err(DecoderError::ContextFull {
                max_frames: graph.max_steps,
            });
        }
        if first_step + prefix_len + steps > cache.capacity {
            return Err(DecoderError::CacheFull {
                capacity: cache.capacity,
                len: first_step,
                steps,
            });
        }
        let run_error = |source| DecoderError::Run {
            step: first_step,
            source,
        };
        let rows = cache.rows;
        let input_ids = Tensor::from_array(([rows, steps, k_count], columns.repeat(rows))).map_err(run_error)?;
        let past_len = Tensor::from_array(([1usize], vec![first_step as i64])).map_err(run_error)?;
        let mut session = graph.session.lock();
        let mut binding: IoBinding = session.create_binding().map_err(run_error)?;
        binding.bind_input("input_ids", &input_ids).map_err(run_error)?;
        binding.bind_input("past_len", &past_len).map_err(run_error)?;
        match &cross.inputs {
            ConditionInputs::CrossAttention(cross) => {
                binding
                    .bind_input("encoder_attention_bias", cross.encoder_bias.rows(rows))
                    .map_err(run_error)?;
                for (name, value) in &cross.keys_values {
                    binding.bind_input(name.as_str(), value.rows(rows)).map_err(run_error)?;
                }
            }
            ConditionInputs::Prefix(prefix) => {
                let (chroma, text) = if prefix_len > 0 {
                    (&prefix.chroma, &prefix.text)
                } else {
                    (&prefix.no_chroma, &prefix.no_text)
                };
                binding.bind_input("chroma", chroma.rows(rows)).map_err(run_error)?;
                binding.bind_input("conditioning", text.rows(rows)).map_err(run_error)?;
            }
        }
        for (pair, names) in cache.layers.iter_mut().zip(&graph.layer_names) {
            let [keys, values] = pair;
            binding.bind_input(names[0].as_str(), &*keys).map_err(run_error)?;
            binding.bind_input(names[1].as_str(), &*values).map_err(run_error)?;
            // The same buffers as the inputs: the graph appends in place.
            binding.bind_output(names[2].as_str(), keys).map_err(run_error)?;
            binding.bind_output(names[3].as_str(), values).map_err(run_error)?;
        }
        binding
            .bind_output("logits", &mut self.logits[rows - 1])
            .map_err(run_error)?;
        self.last_rows = rows;
        let outputs = session.run_binding(&binding).map_err(run_error)?;
        drop(outputs);
        drop(binding);
        cache.len += prefix_len + steps;
        Ok(())
    }
}
