//! The optimiser's per-parameter update in one pass on the flex backend, in place where the
//! tensors are not shared.
//!
//! Written on burn tensors (`optim`), momentum SGD with weight decay is six operations over the
//! parameter, two of them allocating a new tensor, and burn-flex runs its tensor-scalar ones on
//! one thread in SSE2 (neither parallel nor multiversioned); `perf` of the MNIST MLP's step at
//! B = 64 put the update at 18% of the samples (`bench/RESULTS.md`). Here each rule reads the
//! parameter, its gradient and its state once, multiversioned, a parameter longer than
//! `CHUNK` (16,384 floats) spread over the rayon pool.
//!
//! Each rule performs `optim`'s tensor operations in the same order with the same f32 scalars
//! (burn rounds an f64 scalar to f32 before the operation; Rust never fuses a multiply and an
//! add into an FMA on its own), so it gives the same bits: `optim`'s tests compare the two on
//! every rule. Chunks on the pool's threads and on the caller's see the same denormal mode when
//! the caller is a pool thread, as `Optimizer::step` makes it (`cpu`).

use super::flex::{contiguous_f32, f32_slice};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use multiversion::multiversion;
use rayon::prelude::*;

/// Plain SGD: `w − lr·d` with `d = g + wd·w` (or `g` without weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    /// ε.
    pub lr: f32,
    /// L2 weight decay added to the gradient; `None` when it is 0 (adding `0·w` would not be
    /// a no-op for infinite or NaN weights, and the tensor path skips it).
    pub weight_decay: Option<f32>,
}

/// PyTorch's SGD with momentum and an existing velocity: `v ← m·(r·v) + d`, then `w − lr·v`
/// (heavy ball) or `w − lr·(d + m·v)` (Nesterov).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Momentum {
    /// ε and weight decay, as in [`Sgd`].
    pub sgd: Sgd,
    /// m.
    pub momentum: f32,
    /// `r = ε_old/ε_new` of `optim`'s velocity rescaling, when ε changed.
    pub rescale: Option<f32>,
    /// Nesterov's step instead of the heavy ball's.
    pub nesterov: bool,
}

/// Adam or AdamW with existing moments: `m1 ← β1·m1 + (1−β1)·d`, `m2 ← β2·m2 + (1−β2)·d²`,
/// `w − step·m1/(√m2/√bc2 + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    /// L2 weight decay added to the gradient (Adam).
    pub weight_decay: Option<f32>,
    /// `1 − ε·wd`, the factor AdamW multiplies the weights by first.
    pub decay: Option<f32>,
    /// β1 and `1 − β1`.
    pub beta1: (f32, f32),
    /// β2 and `1 − β2`.
    pub beta2: (f32, f32),
    /// `√(1 − β2ᵗ)`.
    pub sqrt_bc2: f32,
    /// Adam's eps.
    pub eps: f32,
    /// `ε/(1 − β1ᵗ)`.
    pub step: f32,
}

/// The fused updates as a burn backend extension, implemented for `Flex` (the optimiser works
/// on parameters without their autodiff graph).
#[backend_extension(Flex)]
pub trait FusedUpdate: Backend {
    /// `w` after one [`Sgd`] step with gradient `g`.
    fn sgd_update(w: FloatTensor<Self>, g: FloatTensor<Self>, rule: Sgd) -> FloatTensor<Self>;

    /// `(w, v)` after one [`Momentum`] step with gradient `g` from velocity `v`.
    fn momentum_update(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        v: FloatTensor<Self>,
        rule: Momentum,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(w, m1, m2)` after one [`Adam`] step with gradient `g` from moments `m1`, `m2`.
    fn adam_update(
        w: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m1: FloatTensor<Self>,
        m2: FloatTensor<Self>,
        rule: Adam,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether the fused updates run on these tensors: all on the flex backend, f32, one length.
pub fn supports(tensors: &[&Tensor<1>]) -> bool {
    let n = tensors.first().map(|t| t.dims()[0]);
    tensors
        .iter()
        .all(|t| super::flex::is_flex_f32(*t) && Some(t.dims()[0]) == n)
}

// The wrappers strip autodiff from every input: the extension is implemented for `Flex` only,
// and a buffer restored on an autodiff device (`Optimizer::load_record`) carries the flag.

/// `w` after one [`Sgd`] step (see [`supports`]).
pub fn sgd(w: Tensor<1>, g: Tensor<1>, rule: Sgd) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedUpdate>::sgd_update(
        w.inner().into_dispatch(),
        g.inner().into_dispatch(),
        rule,
    ))
}

/// `(w, v)` after one [`Momentum`] step (see [`supports`]).
pub fn momentum(
    w: Tensor<1>,
    g: Tensor<1>,
    v: Tensor<1>,
    rule: Momentum,
) -> (Tensor<1>, Tensor<1>) {
    let (w, v) = <Dispatch as FusedUpdate>::momentum_update(
        w.inner().into_dispatch(),
        g.inner().into_dispatch(),
        v.inner().into_dispatch(),
        rule,
    );
    (Tensor::from_dispatch(w), Tensor::from_dispatch(v))
}

/// `(w, m1, m2)` after one [`Adam`] step (see [`supports`]).
pub fn adam(
    w: Tensor<1>,
    g: Tensor<1>,
    m1: Tensor<1>,
    m2: Tensor<1>,
    rule: Adam,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (w, m1, m2) = <Dispatch as FusedUpdate>::adam_update(
        w.inner().into_dispatch(),
        g.inner().into_dispatch(),
        m1.inner().into_dispatch(),
        m2.inner().into_dispatch(),
        rule,
    );
    (
        Tensor::from_dispatch(w),
        Tensor::from_dispatch(m1),
        Tensor::from_dispatch(m2),
    )
}

/// Elements per rayon task (64 KiB of each operand): a longer parameter is split over the pool's
/// threads, a shorter one (a bias, a batch norm's γ) is one task, which rayon runs on the
/// calling pool thread.
pub(crate) const CHUNK: usize = 16 * 1024;

/// The `n` elements of `t`, writable in place. `t` comes from `contiguous_f32`, so its storage
/// is exactly its elements in order (burn-flex's `to_contiguous` copies a view at an offset or
/// into a larger buffer); `FlexTensor::storage_mut` first copies a storage that other tensors
/// share, so they keep their values.
fn elements(t: &mut FlexTensor, n: usize) -> &mut [f32] {
    let elements = t.storage_mut::<f32>();
    assert_eq!(
        elements.len(),
        n,
        "fused update: operands of different lengths"
    );
    elements
}

impl FusedUpdate for Flex {
    fn sgd_update(w: FlexTensor, g: FlexTensor, rule: Sgd) -> FlexTensor {
        let g = contiguous_f32(&g, "sgd_update");
        let g = f32_slice(&g);
        let mut w = contiguous_f32(&w, "sgd_update");
        let w_s = elements(&mut w, g.len());
        w_s.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(w, g)| sgd_chunk(w, g, rule));
        w
    }

    fn momentum_update(
        w: FlexTensor,
        g: FlexTensor,
        v: FlexTensor,
        rule: Momentum,
    ) -> (FlexTensor, FlexTensor) {
        let g = contiguous_f32(&g, "momentum_update");
        let g = f32_slice(&g);
        let (mut w, mut v) = (
            contiguous_f32(&w, "momentum_update"),
            contiguous_f32(&v, "momentum_update"),
        );
        let (w_s, v_s) = (elements(&mut w, g.len()), elements(&mut v, g.len()));
        w_s.par_chunks_mut(CHUNK)
            .zip(v_s.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((w, v), g)| momentum_chunk(w, v, g, rule));
        (w, v)
    }

    fn adam_update(
        w: FlexTensor,
        g: FlexTensor,
        m1: FlexTensor,
        m2: FlexTensor,
        rule: Adam,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let g = contiguous_f32(&g, "adam_update");
        let g = f32_slice(&g);
        let mut w = contiguous_f32(&w, "adam_update");
        let mut m1 = contiguous_f32(&m1, "adam_update");
        let mut m2 = contiguous_f32(&m2, "adam_update");
        let n = g.len();
        let (w_s, m1_s, m2_s) = (
            elements(&mut w, n),
            elements(&mut m1, n),
            elements(&mut m2, n),
        );
        w_s.par_chunks_mut(CHUNK)
            .zip(m1_s.par_chunks_mut(CHUNK))
            .zip(m2_s.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((w, m1), m2), g)| adam_chunk(w, m1, m2, g, rule));
        (w, m1, m2)
    }
}

/// The gradient with L2 weight decay, `g + wd·w`, as `optim` forms it.
#[inline(always)]
fn decayed(g: f32, w: f32, weight_decay: Option<f32>) -> f32 {
    match weight_decay {
        Some(wd) => g + w * wd,
        None => g,
    }
}

/// [`Sgd`] over one chunk. Multiversioned (AVX2, AVX-512, …) since the crate is built for
/// baseline x86-64; the loops vectorise.
#[multiversion(targets = "simd")]
fn sgd_chunk(w: &mut [f32], g: &[f32], rule: Sgd) {
    for (w, &g) in w.iter_mut().zip(g) {
        *w -= decayed(g, *w, rule.weight_decay) * rule.lr;
    }
}

/// [`Momentum`] over one chunk, multiversioned like [`sgd_chunk`].
#[multiversion(targets = "simd")]
fn momentum_chunk(w: &mut [f32], v: &mut [f32], g: &[f32], rule: Momentum) {
    let Momentum {
        sgd: Sgd { lr, weight_decay },
        momentum: m,
        rescale,
        nesterov,
    } = rule;
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
        let d = decayed(g, *w, weight_decay);
        let old = match rescale {
            Some(r) => *v * r,
            None => *v,
        };
        *v = old * m + d;
        let step = if nesterov { d + *v * m } else { *v };
        *w -= step * lr;
    }
}

/// [`Adam`] over one chunk, multiversioned like [`sgd_chunk`].
#[multiversion(targets = "simd")]
fn adam_chunk(w: &mut [f32], m1: &mut [f32], m2: &mut [f32], g: &[f32], rule: Adam) {
    let Adam {
        weight_decay,
        decay,
        beta1: (b1, one_minus_b1),
        beta2: (b2, one_minus_b2),
        sqrt_bc2,
        eps,
        step,
    } = rule;
    for (((w, m1), m2), &g) in w.iter_mut().zip(m1.iter_mut()).zip(m2.iter_mut()).zip(g) {
        let w0 = match decay {
            Some(f) => *w * f,
            None => *w,
        };
        let d = decayed(g, w0, weight_decay);
        *m1 = *m1 * b1 + d * one_minus_b1;
        *m2 = *m2 * b2 + (d * d) * one_minus_b2;
        let denom = m2.sqrt() / sqrt_bc2 + eps;
        *w = w0 - (*m1 / denom) * step;
    }
}
