//! Recipes: how one weight of a template's graphs is made from a checkpoint's tensors.
//!
//! The grammar is `models/template.py`'s, which writes the recipes and checks each one
//! against the export's own weight; this module evaluates them with no Python.

use serde::Deserialize;

use crate::blockwise;
use crate::checkpoint::{Checkpoint, CheckpointError};

/// A recipe, parsed from a template's JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// A checkpoint tensor as it is.
    Tensor(String),
    /// A 2-D tensor transposed (a Linear weight as MatMul's right operand).
    Transpose(Box<Recipe>),
    Concat {
        parts: Vec<Recipe>,
        axis: usize,
    },
    /// PyTorch's LSTM gate blocks (i, f, g, o) along the first axis, in ONNX's order (i, o, f, c).
    LstmGates(Box<Recipe>),
    /// `v * g / |v|`, the norm over all axes but the first (Encodec's weight norm folded).
    WeightNorm {
        g: String,
        v: String,
    },
    /// A transposed convolution `[in, out, 2 * stride]` as the polyphase convolution
    /// `[stride * out, in, 2]` the codec graphs run.
    Polyphase {
        source: Box<Recipe>,
        stride: usize,
    },
    /// The tensor tiled `times` times.
    Repeat {
        source: Box<Recipe>,
        times: usize,
    },
    /// MusicGen's sinusoidal position table, from its frequencies as torch computed them.
    Sinusoid {
        positions: usize,
        frequencies: Vec<f32>,
    },
    /// MatMulNBits' symmetric blockwise quantization of a `[K, N]` weight.
    Blockwise {
        source: Box<Recipe>,
        bits: u32,
        block: usize,
        part: BlockPart,
    },
}

/// Which of MatMulNBits' two initializers a blockwise recipe makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockPart {
    Blocks,
    Scales,
}

/// A recipe's result: its values, row-major, and its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    /// Packed quantized blocks.
    U8(Vec<u8>),
}

impl Values {
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::U8(v) => v.len(),
        }
    }

    pub(crate) fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) => "float32",
            Values::U8(_) => "uint8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{recipe}: {problem}")]
    Shape { recipe: &'static str, problem: String },
    #[error("not a recipe this build knows: {0}")]
    Unknown(String),
}

impl Array {
    fn f32(shape: Vec<usize>, values: Vec<f32>) -> Array {
        Array {
            shape,
            values: Values::F32(values),
        }
    }

    fn floats(&self, recipe: &'static str) -> Result<&[f32], RecipeError> {
        match &self.values {
            Values::F32(values) => Ok(values),
            Values::U8(_) => Err(RecipeError::Shape {
                recipe,
                problem: "its source is quantized blocks, not float32 values".to_owned(),
            }),
        }
    }
}

fn shape_error(recipe: &'static str, problem: String) -> RecipeError {
    RecipeError::Shape { recipe, problem }
}

impl Recipe {
    /// Parses a recipe from the JSON `models/template.py` writes.
    pub fn from_json(value: &serde_json::Value) -> Result<Recipe, RecipeError> {
        let unknown = || RecipeError::Unknown(value.to_string());
        let object = value.as_object().ok_or_else(unknown)?;
        let field = |key: &str| object.get(key).ok_or_else(unknown);
        let count = |key: &str| field(key)?.as_u64().map(|n| n as usize).ok_or_else(unknown);
        let name = |v: &serde_json::Value| v.as_str().map(str::to_owned).ok_or_else(unknown);
        let nested = |key: &str| Recipe::from_json(field(key)?).map(Box::new);
        let recipe = if let Some(tensor) = object.get("tensor") {
            Recipe::Tensor(name(tensor)?)
        } else if object.contains_key("transpose") {
            Recipe::Transpose(nested("transpose")?)
        } else if let Some(parts) = object.get("concat") {
            let parts = parts.as_array().ok_or_else(unknown)?;
            Recipe::Concat {
                parts: parts.iter().map(Recipe::from_json).collect::<Result<_, _>>()?,
                axis: count("axis")?,
            }
        } else if object.contains_key("lstm_gates") {
            Recipe::LstmGates(nested("lstm_gates")?)
        } else if let Some(norm) = object.get("weight_norm") {
            Recipe::WeightNorm {
                g: name(norm.get("g").ok_or_else(unknown)?)?,
                v: name(norm.get("v").ok_or_else(unknown)?)?,
            }
        } else if object.contains_key("polyphase") {
            Recipe::Polyphase {
                source: nested("polyphase")?,
                stride: count("stride")?,
            }
        } else if object.contains_key("repeat") {
            Recipe::Repeat {
                source: nested("repeat")?,
                times: count("times")?,
            }
        } else if let Some(table) = object.get("sinusoid") {
            let positions = table.get("positions").and_then(|v| v.as_u64()).ok_or_else(unknown)?;
            let frequencies = table
                .get("frequencies")
                .and_then(|v| v.as_array())
                .ok_or_else(unknown)?
                .iter()
                .map(|f| f.as_f64().map(|f| f as f32).ok_or_else(unknown))
                .collect::<Result<_, _>>()?;
            Recipe::Sinusoid {
                positions: positions as usize,
                frequencies,
            }
        } else if object.contains_key("blockwise") {
            Recipe::Blockwise {
                source: nested("blockwise")?,
                bits: count("bits")? as u32,
                block: count("block")?,
                part: BlockPart::deserialize(field("part")?).map_err(|_| unknown())?,
            }
        } else {
            return Err(unknown());
        };
        Ok(recipe)
    }

    /// Makes the tensor from `checkpoint`.
    pub fn evaluate(&self, checkpoint: &Checkpoint) -> Result<Array, RecipeError> {
        match self {
            Recipe::Tensor(name) => {
                let (shape, values) = checkpoint.tensor(name)?;
                Ok(Array::f32(shape, values))
            }
            Recipe::Transpose(source) => transpose(&source.evaluate(checkpoint)?),
            Recipe::Concat { parts, axis } => {
                let arrays = parts
                    .iter()
                    .map(|part| part.evaluate(checkpoint))
                    .collect::<Result<Vec<_>, _>>()?;
                concat(&arrays, *axis)
            }
            Recipe::LstmGates(source) => lstm_gates(&source.evaluate(checkpoint)?),
            Recipe::WeightNorm { g, v } => {
                let (_, g) = checkpoint.tensor(g)?;
                let (shape, v) = checkpoint.tensor(v)?;
                weight_norm(&g, shape, &v)
            }
            Recipe::Polyphase { source, stride } => polyphase(&source.evaluate(checkpoint)?, *stride),
            Recipe::Repeat { source, times } => {
                let array = source.evaluate(checkpoint)?;
                let values = array.floats("repeat")?;
                let tiled: Vec<f32> = (0..*times).flat_map(|_| values.iter().copied()).collect();
                Ok(Array::f32(vec![tiled.len()], tiled))
            }
            Recipe::Sinusoid { positions, frequencies } => Ok(Array::f32(
                vec![*positions, 2 * frequencies.len()],
                sinusoid(*positions, frequencies),
            )),
            Recipe::Blockwise {
                source,
                bits,
                block,
                part,
            } => {
                let array = source.evaluate(checkpoint)?;
                let [rows, cols] = array.shape[..] else {
                    return Err(shape_error("blockwise", format!("{:?} is not 2-D", array.shape)));
                };
                let quantized = blockwise::quantize(array.floats("blockwise")?, rows, cols, *bits, *block)
                    .map_err(|problem| shape_error("blockwise", problem))?;
                Ok(match part {
                    BlockPart::Blocks => Array {
                        shape: quantized.blocks_shape.to_vec(),
                        values: Values::U8(quantized.blocks),
                    },
                    BlockPart::Scales => Array::f32(quantized.scales_shape.to_vec(), quantized.scales),
                })
            }
        }
    }
}

fn transpose(array: &Array) -> Result<Array, RecipeError> {
    let [rows, cols] = array.shape[..] else {
        return Err(shape_error("transpose", format!("{:?} is not 2-D", array.shape)));
    };
    let values = array.floats("transpose")?;
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            out[c * rows + r] = value;
        }
    }
    Ok(Array::f32(vec![cols, rows], out))
}

fn concat(arrays: &[Array], axis: usize) -> Result<Array, RecipeError> {
    let first = arrays
        .first()
        .ok_or_else(|| shape_error("concat", "no parts".to_owned()))?;
    if axis >= first.shape.len() {
        return Err(shape_error("concat", format!("axis {axis} of {:?}", first.shape)));
    }
    for array in arrays {
        let same = array.shape.len() == first.shape.len()
            && array
                .shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !same {
            return Err(shape_error(
                "concat",
                format!("{:?} and {:?} along axis {axis}", first.shape, array.shape),
            ));
        }
    }
    let outer: usize = first.shape[..axis].iter().product();
    let chunks: Vec<usize> = arrays.iter().map(|a| a.shape[axis..].iter().product()).collect();
    let mut out = Vec::with_capacity(arrays.iter().map(|a| a.values.len()).sum());
    for o in 0..outer {
        for (array, &chunk) in arrays.iter().zip(&chunks) {
            out.extend_from_slice(&array.floats("concat")?[o * chunk..(o + 1) * chunk]);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = arrays.iter().map(|a| a.shape[axis]).sum();
    Ok(Array::f32(shape, out))
}

/// ONNX's LSTM gate order (i, o, f, c) from PyTorch's (i, f, g, o).
const ONNX_GATES: [usize; 4] = [0, 3, 1, 2];

fn lstm_gates(array: &Array) -> Result<Array, RecipeError> {
    let rows = array.shape.first().copied().unwrap_or(0);
    if rows == 0 || rows % 4 != 0 {
        return Err(shape_error(
            "lstm_gates",
            format!("{:?}: the first axis is not 4 gates", array.shape),
        ));
    }
    let values = array.floats("lstm_gates")?;
    let gate = values.len() / 4;
    let out = ONNX_GATES
        .iter()
        .flat_map(|&g| values[g * gate..(g + 1) * gate].iter().copied())
        .collect();
    Ok(Array::f32(array.shape.clone(), out))
}

fn weight_norm(g: &[f32], shape: Vec<usize>, v: &[f32]) -> Result<Array, RecipeError> {
    let rows = shape.first().copied().unwrap_or(0);
    if rows == 0 || g.len() != rows || !v.len().is_multiple_of(rows) {
        return Err(shape_error(
            "weight_norm",
            format!("g of {} values for v of shape {shape:?}", g.len()),
        ));
    }
    let per_row = v.len() / rows;
    let mut out = Vec::with_capacity(v.len());
    for (row, &gain) in v.chunks_exact(per_row).zip(g) {
        let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
        let factor = f64::from(gain) / norm;
        out.extend(row.iter().map(|&x| (f64::from(x) * factor) as f32));
    }
    Ok(Array::f32(shape, out))
}

fn polyphase(array: &Array, stride: usize) -> Result<Array, RecipeError> {
    let [inputs, outputs, kernel] = array.shape[..] else {
        return Err(shape_error("polyphase", format!("{:?} is not 3-D", array.shape)));
    };
    if kernel != 2 * stride {
        return Err(shape_error(
            "polyphase",
            format!("kernel {kernel} is not twice the stride {stride}"),
        ));
    }
    let w = array.floats("polyphase")?;
    let mut out = vec![0.0; w.len()];
    for phase in 0..stride {
        for o in 0..outputs {
            for i in 0..inputs {
                let at = |k: usize| w[(i * outputs + o) * kernel + k];
                let base = ((phase * outputs + o) * inputs + i) * 2;
                // Tap 0 reads the previous frame through the kernel's second half.
                out[base] = at(phase + stride);
                out[base + 1] = at(phase);
            }
        }
    }
    Ok(Array::f32(vec![stride * outputs, inputs, 2], out))
}

/// The position table: angles in float32 as transformers takes them, cos then sin, the
/// functions in float64 rounded once (`models/template.py`'s definition).
pub fn sinusoid(positions: usize, frequencies: &[f32]) -> Vec<f32> {
    let mut table = Vec::with_capacity(positions * 2 * frequencies.len());
    let mut angles = vec![0f64; frequencies.len()];
    for p in 0..positions {
        for (angle, &f) in angles.iter_mut().zip(frequencies) {
            *angle = f64::from(p as f32 * f);
        }
        table.extend(angles.iter().map(|a| a.cos() as f32));
        table.extend(angles.iter().map(|a| a.sin() as f32));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(shape: &[usize]) -> Array {
        let n = shape.iter().product();
        Array::f32(shape.to_vec(), (0..n).map(|i| i as f32).collect())
    }

    fn floats(array: &Array) -> &[f32] {
        array.floats("test").unwrap()
    }

    #[test]
    fn concat_along_the_second_axis_interleaves_rows() {
        let joined = concat(&[array(&[2, 2]), array(&[2, 1])], 1).unwrap();
        assert_eq!(joined.shape, vec![2, 3]);
        assert_eq!(floats(&joined), &[0.0, 1.0, 0.0, 2.0, 3.0, 1.0]);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = transpose(&array(&[2, 3])).unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(floats(&t), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn lstm_gates_move_output_before_forget() {
        let gates = lstm_gates(&array(&[4, 1])).unwrap();
        assert_eq!(floats(&gates), &[0.0, 3.0, 1.0, 2.0]);
    }

    #[test]
    fn polyphase_reads_the_second_half_of_the_kernel_first() {
        // One input, one output channel, stride 2: kernel [k0 k1 k2 k3].
        let phases = polyphase(&array(&[1, 1, 4]), 2).unwrap();
        assert_eq!(phases.shape, vec![2, 1, 2]);
        assert_eq!(floats(&phases), &[2.0, 0.0, 3.0, 1.0]);
    }

    #[test]
    fn weight_norm_scales_each_row_to_its_gain() {
        let out = weight_norm(&[2.0, 10.0], vec![2, 2], &[3.0, 4.0, 0.0, 5.0]).unwrap();
        assert_eq!(floats(&out), &[1.2, 1.6, 0.0, 10.0]);
    }

    #[test]
    fn sinusoid_starts_at_cos_one_sin_zero() {
        let table = sinusoid(3, &[1.0, 0.5]);
        assert_eq!(&table[..4], &[1.0, 1.0, 0.0, 0.0]);
        let rounded = |x: f64| x as f32;
        assert_eq!(
            &table[8..],
            &[
                rounded(2f64.cos()),
                rounded(1f64.cos()),
                rounded(2f64.sin()),
                rounded(1f64.sin())
            ]
        );
    }

    #[test]
    fn recipes_parse_from_the_templates_json() {
        let json = serde_json::json!({
            "blockwise": {"concat": [{"transpose": {"tensor": "a"}}, {"weight_norm": {"g": "g", "v": "v"}}], "axis": 1},
            "bits": 4, "block": 32, "part": "scales"
        });
        let parsed = Recipe::Blockwise {
            source: Box::new(Recipe::Concat {
                parts: vec![
                    Recipe::Transpose(Box::new(Recipe::Tensor("a".to_owned()))),
                    Recipe::WeightNorm {
                        g: "g".to_owned(),
                        v: "v".to_owned(),
                    },
                ],
                axis: 1,
            }),
            bits: 4,
            block: 32,
            part: BlockPart::Scales,
        };
        assert_eq!(Recipe::from_json(&json).unwrap(), parsed);
        assert!(Recipe::from_json(&serde_json::json!({"rotate": {"tensor": "a"}})).is_err());
    }
}
