//! What our flex kernels (`conv`, `batch_norm`, `pool`, `update`) share: whether a tensor runs on them, and how
//! they read and write flex tensors as f32 slices.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData};

/// Whether `x` lives on the flex backend (with or without autodiff) as f32.
pub(crate) fn is_flex_f32<const D: usize>(x: &Tensor<D>) -> bool {
    crate::device::is_flex(&x.device()) && x.dtype() == DType::F32
}

/// `t` as a contiguous f32 tensor; panics naming `op` on another dtype.
pub(crate) fn contiguous_f32(t: &FlexTensor, op: &str) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "{op}: f32 only, got {:?}", t.dtype());
    t.to_contiguous()
}

/// The elements of a contiguous f32 tensor (from [`contiguous_f32`]).
pub(crate) fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// A flex tensor of `shape` owning `data`.
pub(crate) fn from_f32(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Asserts `ours` matches `reference` element-wise within `rtol · (1 + |reference|)`, naming
/// `what` and the first index that does not.
#[cfg(test)]
pub(crate) fn assert_close(what: &str, ours: &[f32], reference: &[f32], rtol: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    for (i, (u, v)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (u - v).abs() <= rtol * (1.0 + v.abs()),
            "{what}[{i}]: ours {u} vs reference {v}"
        );
    }
}
