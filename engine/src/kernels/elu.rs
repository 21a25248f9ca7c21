//! ELU (ONNX `Elu`), vectorized. Encodec's decoder (and its encoder) applies ELU after
//! every convolution but the last: thirteen times per codec chunk, over up to 64 channels
//! at 32 kHz.
//!
//! Why: ONNX Runtime's CPU `Elu` takes `exp` one element at a time, 1.6 ns an element
//! here: 4.5 ms of each 18 ms upsampler chunk of musicgen-small's codec went to it
//! (`Relu` over the same tensor: 0.2 ms). This one computes `e^x` for 16 lanes at once
//! with a polynomial ([`exp_non_positive`]), within 2 ulp of `f32::exp`.

use ort::operator::{ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::SharedOutput;

/// Elements one parallel task takes: below this a call stays on its thread.
const TASK_ELEMENTS: usize = 1 << 16;
/// Lanes the loops are written over, so that the compiler vectorizes them.
const LANES: usize = 16;

pub(super) struct EluOperator;

impl Operator for EluOperator {
    type Kernel<'attr> = EluKernel;

    fn name(&self) -> &str {
        "Elu"
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some("CPUExecutionProvider")
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(EluKernel {
            alpha: info.get::<f32>("alpha").unwrap_or(1.0),
        })
    }
}

pub(super) struct EluKernel {
    alpha: f32,
}

impl Kernel for EluKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = ctx.input(0)?.ok_or_else(|| ort::Error::new("Elu: no input"))?;
        let (shape, x) = input.try_extract_tensor::<f32>()?;
        let mut output = ctx
            .output(0, shape.to_vec())?
            .ok_or_else(|| ort::Error::new("Elu: no output"))?;
        let (_, y) = output.try_extract_tensor_mut::<f32>()?;
        let alpha = self.alpha;
        if x.len() <= TASK_ELEMENTS {
            elu(x, y, alpha);
            return Ok(());
        }
        let out = SharedOutput(y.as_mut_ptr());
        let len = x.len();
        ctx.par_for(len.div_ceil(TASK_ELEMENTS), 0, |task| {
            let start = task * TASK_ELEMENTS;
            let end = (start + TASK_ELEMENTS).min(len);
            // SAFETY: `start..end` lies in the output (as long as the input) and is this
            // task's alone.
            let y = unsafe { std::slice::from_raw_parts_mut(out.get().add(start), end - start) };
            elu(&x[start..end], y, alpha);
        })
    }
}

/// `y = x` where `x > 0`, else `alpha (e^x - 1)`, with the copy this CPU runs fastest.
fn elu(x: &[f32], y: &mut [f32], alpha: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (and so AVX2 and FMA).
        return unsafe { elu_avx512(x, y, alpha) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { elu_avx2(x, y, alpha) };
    }
    elu_lanes(x, y, alpha)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn elu_avx512(x: &[f32], y: &mut [f32], alpha: f32) {
    elu_lanes(x, y, alpha)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn elu_avx2(x: &[f32], y: &mut [f32], alpha: f32) {
    elu_lanes(x, y, alpha)
}

#[inline(always)]
fn elu_lanes(x: &[f32], y: &mut [f32], alpha: f32) {
    // NaN falls to the last branch and stays NaN, as in ONNX Runtime's.
    let one = |v: f32| {
        let negative = alpha * (exp_non_positive(v.min(0.0)) - 1.0);
        if v > 0.0 || v.is_nan() { v } else { negative }
    };
    let mut chunks = y.chunks_exact_mut(LANES).zip(x.chunks_exact(LANES));
    for (y, x) in &mut chunks {
        let y: &mut [f32; LANES] = y.try_into().expect("chunks of LANES");
        let x: &[f32; LANES] = x.try_into().expect("chunks of LANES");
        for l in 0..LANES {
            y[l] = one(x[l]);
        }
    }
    let done = x.len() - x.len() % LANES;
    for (y, &x) in y[done..].iter_mut().zip(&x[done..]) {
        *y = one(x);
    }
}

/// `e^x` for `x <= 0`, within 2 ulp of `f32::exp` down to where it leaves the normal
/// floats (below that, e^-87); float arithmetic and bit operations only, so that it
/// vectorizes (a rounding or a float-to-int conversion kept the compiler from it). `x = n ln
/// 2 + r` with `|r| <= ln 2 / 2`; `e^r` by its Taylor series to the 7th power (the rest is
/// below 2^-26 of it there), and `2^n` by building the float's exponent.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    // ln 2 in two parts, so that `n * LN2_HIGH` is exact for the `n` that occur.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the mantissa's low bits.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // `shifted`'s bits are SHIFT's plus n; n + 127 is 2^n's biased exponent.
    let exponent = shifted.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    p * f32::from_bits(exponent << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp(a: f32, b: f32) -> i64 {
        (i64::from(a.to_bits() as i32) - i64::from(b.to_bits() as i32)).abs()
    }

    #[test]
    fn the_exponential_is_within_two_ulp_of_the_standard_one() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (ours, theirs) = (exp_non_positive(x), x.exp());
            assert!(ulp(ours, theirs) <= 2, "e^{x}: {ours} against {theirs}");
            x -= 0.001_37;
        }
        assert_eq!(exp_non_positive(0.0), 1.0);
        // Far below, it stays at e^-87 (a normal float) rather than going wrong.
        assert!(ulp(exp_non_positive(-200.0), (-87.0f32).exp()) <= 2);
    }

    #[test]
    fn elu_matches_its_definition_on_both_sides_and_at_every_length() {
        for alpha in [1.0f32, 0.5] {
            for len in [0, 1, 15, 16, 17, 100] {
                let x: Vec<f32> = (0..len).map(|i| (i as f32 - 50.0) * 0.173).collect();
                let mut y = vec![f32::NAN; len];
                elu(&x, &mut y, alpha);
                for (&x, &y) in x.iter().zip(&y) {
                    let want = if x > 0.0 { x } else { alpha * x.exp_m1() };
                    assert!(
                        (y - want).abs() <= 3e-7,
                        "elu({x}) with alpha {alpha}: {y} against {want}"
                    );
                }
                let mut plain = vec![f32::NAN; len];
                elu_lanes(&x, &mut plain, alpha);
                assert_eq!(y, plain, "the vectorized copy computes what the plain one does");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut avx2 = vec![f32::NAN; len];
                    // SAFETY: the CPU has AVX2 and FMA.
                    unsafe { elu_avx2(&x, &mut avx2, alpha) };
                    assert_eq!(avx2, plain, "the AVX2 copy too");
                }
            }
        }
        let mut y = [0.0];
        elu(&[f32::NAN], &mut y, 1.0);
        assert!(y[0].is_nan(), "NaN stays NaN");
    }
}
