//! Kernels the engine registers on its CPU sessions, which ONNX Runtime then runs in place
//! of its own for operators of the same domain and name: where ONNX Runtime's kernel costs
//! far more than the work it does on this engine's tensors. The graphs stay as they are, so
//! stock ONNX Runtime (the export's Python checks, other tools) runs them with its own.
//!
//! - [`elu`]: Encodec's activation, with a vectorized `exp`.
//!
//! A kernel here must beat ONNX Runtime's by a measured margin on the bundles' own
//! tensors. (`SkipLayerNormalization` looked slow in ONNX Runtime's profiler, 19 us a
//! node; an exact kernel of ours that skipped the thread pool changed no step's time: the
//! profiler's own cost per node had made it look so. A `com.microsoft` domain of ours also
//! hid ONNX Runtime's `QLinearConv` from the codec's int8 graph.)

mod elu;

use ort::operator::OperatorDomain;

/// The domain `Bundle::session_on` adds to every CPU session: ONNX's own.
pub(crate) fn operator_domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new("")?.add(elu::EluOperator)
}

/// An output's address, for tasks on other threads: each writes its own part of it.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32);
// SAFETY: see the type's comment; the tasks' parts are disjoint.
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The pointer (a method, so that closures capture the whole `SharedOutput`).
    fn get(self) -> *mut f32 {
        self.0
    }
}
