//! Max pooling for the `flex` CPU backend, forward and backward.
//!
//! burn-flex 0.22 runs every max pool as a 3-D pool with per-pixel window clipping, `i64`
//! indices and integer divisions in its inner loop: 15–18% of the CNN's training step
//! (`perf`, B = 128, `bench/RESULTS.md`) for what is a max over four floats. Here an unpadded,
//! undilated pool reads each window directly, keeps the winning tap's offset as a `u8`
//! (`i·kw + j`), and the backward step adds each output gradient to that tap. The common 2×2,
//! stride-2 window runs as flat per-row loops of selects that the compiler vectorises: a
//! branch per tap is mispredicted every other time on real activations (8 ms against 2 ms for
//! the CNN's first pool at B = 128, AMD EPYC). Ties and NaN follow
//! burn and PyTorch: the first maximum in scan order wins, and a NaN wins over any number (the
//! last NaN in the window), so outputs and gradients are bit-identical to burn's.
//!
//! [`max_pool2d`] falls back to burn's `MaxPool2d::forward` on other backends, dtypes, padding,
//! dilation, ceil mode or windows of more than 256 taps.

use super::flex::{contiguous_f32, f32_slice, from_f32};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::sync::Arc;

/// Max pooling as a burn backend extension: implemented for `Flex` and `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait WindowMaxPool: Backend {
    /// Max pool of `x [N, C, H, W]` over `kernel` windows moved by `stride`, no padding, dilation
    /// 1, floor mode; f32 only.
    fn window_max_pool2d(
        x: FloatTensor<Self>,
        kernel_h: usize,
        kernel_w: usize,
        stride_h: usize,
        stride_w: usize,
    ) -> FloatTensor<Self>;
}

/// Applies `pool` to `x`: through [`WindowMaxPool`] on the flex backend (f32, no padding,
/// dilation 1, floor mode), through `MaxPool2d::forward` otherwise. Same result.
pub fn max_pool2d(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if !uses_kernel(pool, &x) {
        return pool.forward(x);
    }
    let ([kh, kw], [sh, sw]) = (pool.kernel_size, pool.stride);
    Tensor::<4>::from_dispatch(<Dispatch as WindowMaxPool>::window_max_pool2d(
        x.into_dispatch(),
        kh,
        kw,
        sh,
        sw,
    ))
}

/// Whether [`max_pool2d`] runs `pool` on `x` through our kernel (rather than burn's pool): lets
/// tests show that they exercise it.
pub fn uses_kernel(pool: &MaxPool2d, x: &Tensor<4>) -> bool {
    let [_, _, h, w] = x.dims();
    let [kh, kw] = pool.kernel_size;
    super::flex::is_flex_f32(x)
        && matches!(pool.padding, PaddingConfig2d::Valid)
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && pool.stride.iter().all(|&s| s > 0)
        && kh * kw <= 256
        && (1..=h).contains(&kh)
        && (1..=w).contains(&kw)
}

/// Shapes of one pool, in elements.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    planes: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &[usize], kernel: [usize; 2], stride: [usize; 2]) -> Self {
        let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
        let ([kh, kw], [sh, sw]) = (kernel, stride);
        assert!(
            kh <= h && kw <= w && sh > 0 && sw > 0 && kh * kw <= 256,
            "window_max_pool2d: {kh}×{kw} window, stride {sh}×{sw}, on {h}×{w}"
        );
        Self {
            planes: n * c,
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            oh: (h - kh) / sh + 1,
            ow: (w - kw) / sw + 1,
        }
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
}

/// Planes per rayon task: enough work per task (≥ 16K input floats) to pay for the split.
fn planes_per_task(g: &Geometry) -> usize {
    (16_384 / (g.h * g.w).max(1)).max(1)
}

/// `(y, taps)`: each window's maximum and the offset `i·kw + j` of the tap that won it.
fn forward(g: &Geometry, x: &[f32]) -> (Vec<f32>, Vec<u8>) {
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut y = vec![0.0f32; g.planes * out_plane];
    let mut taps = vec![0u8; g.planes * out_plane];
    let per = planes_per_task(g);
    y.par_chunks_mut(per * out_plane)
        .zip(taps.par_chunks_mut(per * out_plane))
        .enumerate()
        .for_each(|(t, (y, taps))| {
            let planes = y.len() / out_plane;
            for p in 0..planes {
                let x = &x[(t * per + p) * plane..][..plane];
                let y = &mut y[p * out_plane..][..out_plane];
                let taps = &mut taps[p * out_plane..][..out_plane];
                for oy in 0..g.oh {
                    let rows = &x[oy * g.sh * g.w..][..(g.kh - 1) * g.w + (g.ow - 1) * g.sw + g.kw];
                    let y = &mut y[oy * g.ow..][..g.ow];
                    let taps = &mut taps[oy * g.ow..][..g.ow];
                    if g.kh == 2 && g.kw == 2 && g.sw == 2 {
                        let (top, bottom) = rows.split_at(g.w);
                        pool_row_2x2(top, bottom, y, taps);
                        continue;
                    }
                    for (ox, (y, tap)) in y.iter_mut().zip(taps.iter_mut()).enumerate() {
                        let at = ox * g.sw;
                        let (mut best, mut won) = (rows[at], 0u8);
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let v = rows[at + i * g.w + j];
                                // burn's and PyTorch's rule: strictly greater, or NaN.
                                let better = (v > best) | v.is_nan();
                                best = if better { v } else { best };
                                won = if better { (i * g.kw + j) as u8 } else { won };
                            }
                        }
                        *y = best;
                        *tap = won;
                    }
                }
            }
        });
    (y, taps)
}

/// One output row of a 2×2, stride-2 pool from its two input rows: the common case (LeNet, VGG),
/// written as one flat loop of selects so that it vectorises; same rule and scan order as the
/// general loop (top left, top right, bottom left, bottom right). Multiversioned: compiled for
/// baseline x86-64 (SSE2), as the crate is, it stayed scalar, at 5.6% of the CNN's step at
/// B = 128 against 2.4% with AVX-512 (`bench/RESULTS.md`).
#[multiversion::multiversion(targets = "simd")]
fn pool_row_2x2(top: &[f32], bottom: &[f32], y: &mut [f32], taps: &mut [u8]) {
    let n = y.len();
    let (top, bottom, taps) = (&top[..2 * n], &bottom[..2 * n], &mut taps[..n]);
    for i in 0..n {
        let (a, b, c, d) = (top[2 * i], top[2 * i + 1], bottom[2 * i], bottom[2 * i + 1]);
        let wins = |v: f32, best: f32| (v > best) | v.is_nan();
        let (m, t) = if wins(b, a) { (b, 1) } else { (a, 0) };
        let (m, t) = if wins(c, m) { (c, 2) } else { (m, t) };
        let (m, t) = if wins(d, m) { (d, 3) } else { (m, t) };
        y[i] = m;
        taps[i] = t;
    }
}

/// `dx [N, C, H, W]`: each output gradient added to the input pixel that won its window (in
/// window order within a plane, so overlapping windows sum in a fixed order).
fn backward(g: &Geometry, taps: &[u8], dy: &[f32]) -> Vec<f32> {
    let (plane, out_plane) = (g.h * g.w, g.out_plane());
    let mut dx = vec![0.0f32; g.planes * plane];
    // Offset of each tap from its window's top-left pixel.
    let offset: Vec<usize> = (0..g.kh * g.kw)
        .map(|k| k / g.kw * g.w + k % g.kw)
        .collect();
    let per = planes_per_task(g);
    dx.par_chunks_mut(per * plane)
        .enumerate()
        .for_each(|(t, dx)| {
            for (p, dx) in dx.chunks_exact_mut(plane).enumerate() {
                let base = (t * per + p) * out_plane;
                let (dy, taps) = (&dy[base..][..out_plane], &taps[base..][..out_plane]);
                for oy in 0..g.oh {
                    let (dy, taps) = (&dy[oy * g.ow..][..g.ow], &taps[oy * g.ow..][..g.ow]);
                    let rows = &mut dx[oy * g.sh * g.w..];
                    if g.kh == 2 && g.kw == 2 && g.sw == 2 {
                        let (top, bottom) = rows.split_at_mut(g.w);
                        unpool_row_2x2(dy, taps, top, bottom);
                        continue;
                    }
                    for (ox, (&d, &tap)) in dy.iter().zip(taps).enumerate() {
                        rows[ox * g.sw + offset[tap as usize]] += d;
                    }
                }
            }
        });
    dx
}

/// The adjoint of [`pool_row_2x2`]: adds each output gradient to the tap that won its window;
/// multiversioned likewise.
#[multiversion::multiversion(targets = "simd")]
fn unpool_row_2x2(dy: &[f32], taps: &[u8], top: &mut [f32], bottom: &mut [f32]) {
    let n = dy.len();
    let (taps, top, bottom) = (&taps[..n], &mut top[..2 * n], &mut bottom[..2 * n]);
    for i in 0..n {
        let (d, t) = (dy[i], taps[i]);
        let at = |k: u8| if t == k { d } else { 0.0 };
        top[2 * i] += at(0);
        top[2 * i + 1] += at(1);
        bottom[2 * i] += at(2);
        bottom[2 * i + 1] += at(3);
    }
}

/// The pooled tensor and the winning taps, from a flex tensor.
fn flex_forward(x: &FlexTensor, kernel: [usize; 2], stride: [usize; 2]) -> (FlexTensor, Taps) {
    let x = contiguous_f32(x, "window_max_pool2d");
    let shape = x.layout().shape().to_vec();
    let g = Geometry::new(&shape, kernel, stride);
    let (y, taps) = forward(&g, f32_slice(&x));
    let y = from_f32(y, [shape[0], shape[1], g.oh, g.ow]);
    (
        y,
        Taps {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            taps: taps.into(),
        },
    )
}

impl WindowMaxPool for Flex {
    fn window_max_pool2d(
        x: FloatTensor<Self>,
        kernel_h: usize,
        kernel_w: usize,
        stride_h: usize,
        stride_w: usize,
    ) -> FloatTensor<Self> {
        flex_forward(&x, [kernel_h, kernel_w], [stride_h, stride_w]).0
    }
}

/// What the backward step keeps from the forward pass: the input's shape and each window's
/// winning tap (one byte per output element, not the input itself).
#[derive(Debug, Clone)]
struct Taps {
    shape: [usize; 4],
    taps: Arc<[u8]>,
}

/// The backward step recorded on the autodiff graph.
#[derive(Debug)]
struct WindowMaxPoolBackward;

impl Backward<Flex, 1> for WindowMaxPoolBackward {
    /// The winning taps, the window and the stride.
    type State = (Taps, [usize; 2], [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let dy = contiguous_f32(&grads.consume::<Flex>(&ops.node), "window_max_pool2d");
        let (taps, kernel, stride) = ops.state;
        let g = Geometry::new(&taps.shape, kernel, stride);
        if let Some(node) = node_x {
            let dx = backward(&g, &taps.taps, f32_slice(&dy));
            grads.register::<Flex>(node.id, from_f32(dx, taps.shape));
        }
    }
}

impl<C: CheckpointStrategy> WindowMaxPool for Autodiff<Flex, C> {
    fn window_max_pool2d(
        x: FloatTensor<Self>,
        kernel_h: usize,
        kernel_w: usize,
        stride_h: usize,
        stride_w: usize,
    ) -> FloatTensor<Self> {
        let (kernel, stride) = ([kernel_h, kernel_w], [stride_h, stride_w]);
        let (y, taps) = flex_forward(x.primitive(), kernel, stride);
        match WindowMaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((taps, kernel, stride), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, Distribution, Int};

    /// Output and the input gradient of a position-weighted sum of it, through `f`.
    fn run(x: &Tensor<4>, f: impl Fn(Tensor<4>) -> Tensor<4>) -> [Vec<f32>; 2] {
        let x = x.clone().require_grad();
        let y = f(x.clone());
        let numel = y.shape().num_elements() as i64;
        let mix = Tensor::<1, Int>::arange(0..numel, &y.device())
            .float()
            .sin()
            .reshape(y.shape());
        let grads = (y.clone() * mix).sum().backward();
        [
            y.into_data().try_into_vec::<f32>().unwrap(),
            x.grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap(),
        ]
    }

    #[test]
    fn matches_burn_max_pool2d_forward_and_gradient() {
        let device = Device::flex().autodiff();
        // (N, C, H, W, kernel, stride, rounded): non-overlapping, overlapping (3×3 stride 2
        // and stride 1), rectangular, sizes that leave a remainder, and inputs rounded to a
        // few values so that windows hold ties (and ReLU-like zeros) whose winner must match.
        let cases = [
            (3, 4, 28, 28, [2, 2], [2, 2], false),
            (2, 3, 9, 7, [2, 2], [2, 2], true),
            (2, 2, 11, 10, [3, 3], [2, 2], true),
            (1, 3, 8, 9, [3, 2], [1, 1], true),
            (2, 2, 7, 12, [2, 3], [2, 3], false),
            // 2×2 windows overlapping (stride 1), and windows other than 2×2 tiling the plane.
            (2, 3, 6, 7, [2, 2], [1, 1], true),
            (2, 3, 7, 8, [2, 2], [1, 2], true),
            (2, 2, 9, 9, [3, 3], [3, 3], true),
            // Enough planes for several rayon tasks (16 KiB of input each).
            (40, 8, 28, 28, [2, 2], [2, 2], true),
        ];
        for (n, c, h, w, kernel, stride, rounded) in cases {
            let pool = MaxPool2dConfig::new(kernel).with_strides(stride).init();
            let mut x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            if rounded {
                x = x.round().clamp_min(0.0);
            }
            assert!(uses_kernel(&pool, &x), "{n}×{c}×{h}×{w}");
            let ours = run(&x, |x| max_pool2d(&pool, x));
            let burns = run(&x, |x| pool.forward(x));
            let case = format!("{n}×{c}×{h}×{w} k{kernel:?} s{stride:?}");
            assert_eq!(ours[0], burns[0], "output, {case}");
            assert_eq!(ours[1], burns[1], "input grad, {case}");
        }
    }

    #[test]
    fn nan_wins_its_window_as_in_burn() {
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let values = [1.0, f32::NAN, 3.0, 2.0, f32::NAN, 0.0, 5.0, f32::NAN];
        let x = Tensor::<4>::from_data(
            burn::tensor::TensorData::new(values.to_vec(), [1, 1, 2, 4]),
            &device,
        );
        let ours = max_pool2d(&pool, x.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let burns = pool.forward(x).into_data().try_into_vec::<f32>().unwrap();
        assert!(ours[0].is_nan() && ours[1].is_nan(), "{ours:?}");
        assert_eq!(ours.len(), burns.len());
        assert!(burns.iter().all(|v| v.is_nan()), "{burns:?}");
    }

    /// Rows of 40 outputs, so that the 2×2 row loop runs its vector body (on AVX2 and AVX-512)
    /// and its remainder, with a NaN in every tap position of some windows: the taps it keeps
    /// route the gradient, which must land where burn's does (NaN outputs aside, as NaN).
    #[test]
    fn nan_and_ties_in_long_rows_route_the_gradient_as_burn_does() {
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let (h, w) = (4, 80);
        let values: Vec<f32> = (0..h * w)
            .map(|i| match i % 37 {
                3 | 11 | 24 => f32::NAN,
                k => (k % 3) as f32,
            })
            .collect();
        let x =
            Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [1, 1, h, w]), &device);
        assert!(uses_kernel(&pool, &x));
        let ours = run(&x, |x| max_pool2d(&pool, x));
        let burns = run(&x, |x| pool.forward(x));
        let bits = |v: &[f32]| -> Vec<Option<u32>> {
            v.iter()
                .map(|x| (!x.is_nan()).then(|| x.to_bits()))
                .collect()
        };
        assert!(ours[0].iter().any(|v| v.is_nan()), "no NaN window");
        assert_eq!(bits(&ours[0]), bits(&burns[0]), "output");
        assert_eq!(bits(&ours[1]), bits(&burns[1]), "input grad");
    }

    #[test]
    fn falls_back_where_the_kernel_does_not_apply() {
        let device = Device::flex();
        let x = Tensor::<4>::zeros([1, 1, 6, 6], &device);
        let padded = MaxPool2dConfig::new([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let dilated = MaxPool2dConfig::new([2, 2]).with_dilation([2, 2]).init();
        let ceil = MaxPool2dConfig::new([2, 2])
            .with_strides([2, 2])
            .with_ceil_mode(true)
            .init();
        for pool in [padded, dilated, ceil] {
            assert!(!uses_kernel(&pool, &x));
            assert_eq!(
                max_pool2d(&pool, x.clone()).dims(),
                pool.forward(x.clone()).dims()
            );
        }
    }
}
