//! MatMulNBits' symmetric blockwise quantization, bit for bit as ONNX Runtime's quantizer
//! (`MatMulNBitsQuantizer`, `is_symmetric`) writes it, so that an imported bundle's quantized
//! decoder is the one `export.py --quantize` makes of the same weights.
//!
//! A `[K, N]` weight is cut, per column, into blocks of `block` rows. A block's scale is its
//! value of largest magnitude (the negative one on a tie) over `-2^(bits - 1)`; each value
//! becomes `round(value / scale + 2^(bits - 1))`, rounded half away from zero and clamped to
//! `bits` bits. 4-bit values pack two to a byte, the first in the low nibble. Rows past `K`
//! in the last block stay 0.

/// The two initializers of one MatMulNBits node.
#[derive(Debug)]
pub struct Quantized {
    /// `[N, K / block, block * bits / 8]`.
    pub blocks: Vec<u8>,
    pub blocks_shape: [usize; 3],
    /// `[N, K / block]`.
    pub scales: Vec<f32>,
    pub scales_shape: [usize; 2],
}

/// Quantizes `weight`, row-major `[rows, cols]`, to `bits` (4 or 8) in blocks of `block`.
pub fn quantize(weight: &[f32], rows: usize, cols: usize, bits: u32, block: usize) -> Result<Quantized, String> {
    if bits != 4 && bits != 8 {
        return Err(format!("{bits} bits: MatMulNBits here takes 4 or 8"));
    }
    if block < 16 || !block.is_power_of_two() {
        return Err(format!("block of {block}: a power of two from 16"));
    }
    if weight.len() != rows * cols {
        return Err(format!("{} values for [{rows}, {cols}]", weight.len()));
    }
    let k_blocks = rows.div_ceil(block);
    let per_byte = (8 / bits) as usize;
    let blob = block / per_byte;
    let middle = (1u32 << (bits - 1)) as f32;
    let top = ((1u32 << bits) - 1) as f32;
    let mut blocks = vec![0u8; cols * k_blocks * blob];
    let mut scales = vec![0f32; cols * k_blocks];
    let mut column_block = vec![0f32; block];
    for col in 0..cols {
        for kb in 0..k_blocks {
            let first = kb * block;
            let len = block.min(rows - first);
            for (i, value) in column_block[..len].iter_mut().enumerate() {
                *value = weight[(first + i) * cols + col];
            }
            let values = &column_block[..len];
            let largest = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let smallest = values.iter().copied().fold(f32::INFINITY, f32::min);
            let extreme = if largest.abs() > smallest.abs() {
                largest
            } else {
                smallest
            };
            let scale = extreme / -middle;
            let reciprocal = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            scales[col * k_blocks + kb] = scale;
            let out = &mut blocks[(col * k_blocks + kb) * blob..][..blob];
            for (i, &value) in values.iter().enumerate() {
                let q = (value * reciprocal + middle).round().clamp(0.0, top) as u8;
                if bits == 8 {
                    out[i] = q;
                } else {
                    out[i / 2] |= q << (4 * (i % 2));
                }
            }
        }
    }
    Ok(Quantized {
        blocks,
        blocks_shape: [cols, k_blocks, blob],
        scales,
        scales_shape: [cols, k_blocks],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The value a quantized entry stands for.
    fn dequantize(q: &Quantized, bits: u32, block: usize, r: usize, c: usize) -> f32 {
        let [_, k_blocks, blob] = q.blocks_shape;
        let (kb, i) = (r / block, r % block);
        let byte = q.blocks[(c * k_blocks + kb) * blob + if bits == 8 { i } else { i / 2 }];
        let raw = if bits == 8 { byte } else { (byte >> (4 * (i % 2))) & 15 };
        (f32::from(raw) - (1u32 << (bits - 1)) as f32) * q.scales[c * k_blocks + kb]
    }

    #[test]
    fn a_tie_in_magnitude_takes_the_negative_extreme() {
        let weight = [1.0f32, -1.0, 0.5, 0.0];
        let q = quantize(&weight, 4, 1, 4, 16).unwrap();
        assert_eq!(q.scales, vec![0.125]);
        // -1 / 0.125 + 8 = 0; 1 / 0.125 + 8 = 16, clamped to 15; 0.5 -> 12; 0 -> 8.
        assert_eq!(q.blocks[0], 0x0f, "low nibble 15, high nibble 0");
        assert_eq!(q.blocks[1], 0x8c, "low nibble 12, high nibble 8");
        assert!(q.blocks[2..].iter().all(|&b| b == 0), "rows past K stay 0");
    }

    #[test]
    fn halves_round_away_from_zero_after_the_zero_point() {
        // Scale -0.5 (the extreme 4 over -8): 0.75 / -0.5 + 8 = 6.5, which rounds to 7.
        let weight = [4.0f32, 0.75];
        let q = quantize(&weight, 2, 1, 4, 16).unwrap();
        assert_eq!(q.scales, vec![-0.5]);
        assert_eq!(q.blocks[0] >> 4, 7);
    }

    proptest! {
        #[test]
        /// Half a step of rounding, or one step where the extreme of the opposite sign
        /// clamps to the top code.
        fn every_value_comes_back_within_one_step(
            values in proptest::collection::vec(-4.0f32..4.0, 64 * 3),
            bits in prop_oneof![Just(4u32), Just(8u32)],
            block in prop_oneof![Just(16usize), Just(32), Just(128)],
        ) {
            let (rows, cols) = (64, 3);
            let q = quantize(&values, rows, cols, bits, block).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    let back = dequantize(&q, bits, block, r, c);
                    let step = q.scales[c * rows.div_ceil(block) + r / block].abs();
                    prop_assert!((back - values[r * cols + c]).abs() <= step * 1.0001);
                }
            }
        }
    }
}
