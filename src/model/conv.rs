//! 2-D convolution for the `flex` CPU backend as im2col + GEMM, forward and backward.
//!
//! burn-flex 0.22 computes a convolution's forward pass with small per-tile GEMMs after an NHWC
//! copy, its input gradient with a direct (non-GEMM) transposed-convolution loop, and its weight
//! gradient as a convolution whose "kernel" is the whole output gradient; together with
//! zero-filled scratch buffers this made conv nets run at 0.3–0.5× PyTorch (`bench/RESULTS.md`).
//! Here all three are the textbook GEMM formulation PyTorch's CPU path uses (Chellapilla et al.
//! 2006; `aten/src/ATen/native/ConvolutionMM2d.cpp`), one image at a time, images spread over the
//! rayon pool:
//!
//! * forward: `Y_b[O, P] = W[O, K] · col(X_b)[K, P]`
//! * input gradient: `dX_b = col2im(Wᵀ[K, O] · dY_b[O, P])`
//! * weight gradient: `dW[O, K] = Σ_b dY_b[O, P] · col(X_b)ᵀ[P, K]`
//!
//! with `K = C·kh·kw` (the weight's own row-major order) and `P = Ho·Wo`. A 1×1, stride-1,
//! unpadded convolution uses the input itself as `col`. The operation is a burn backend
//! extension with its own backward step on `Autodiff<Flex>`; [`conv2d`] falls back to burn's
//! `Conv2d::forward` on other backends, dtypes, groups or dilations.

use super::flex::{contiguous_f32, f32_slice, from_f32, is_flex_f32};
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::cell::RefCell;

/// The convolution as a burn backend extension: implemented for `Flex` and `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait Im2colConv: Backend {
    /// Bias-free 2-D convolution of `x [N, C, H, W]` with `weight [O, C, kh, kw]`, groups 1,
    /// dilation 1, zero padding `(pad_h, pad_w)` on both sides; f32 only.
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self>;
}

/// Applies `conv` to `x`: through [`Im2colConv`] on the flex backend (f32, groups 1, dilation 1,
/// symmetric padding), through `Conv2d::forward` otherwise. Same parameters, same result.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some((pad_h, pad_w)) = fast_path(conv, &x) else {
        return conv.forward(x);
    };
    let [stride_h, stride_w] = conv.stride;
    let y = <Dispatch as Im2colConv>::im2col_conv2d(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        stride_h,
        stride_w,
        pad_h,
        pad_w,
    );
    let y = Tensor::<4>::from_dispatch(y);
    match &conv.bias {
        Some(bias) => {
            let o = bias.dims()[0];
            y + bias.val().reshape([1, o, 1, 1])
        }
        None => y,
    }
}

/// Whether [`conv2d`] runs `conv` on `x` through our kernel (rather than burn's convolution):
/// lets tests show that they exercise the kernel.
pub fn uses_kernel(conv: &Conv2d, x: &Tensor<4>) -> bool {
    fast_path(conv, x).is_some()
}

/// The padding of a convolution [`Im2colConv`] can run, or `None` to use burn's own.
fn fast_path(conv: &Conv2d, x: &Tensor<4>) -> Option<(usize, usize)> {
    if !is_flex_f32(x) || conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    match &conv.padding {
        PaddingConfig2d::Valid => Some((0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some((*top, *left))
        }
        _ => None,
    }
}

/// Shapes of one convolution, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], stride: [usize; 2], pad: [usize; 2]) -> Self {
        let [n, c, h, w] = [x[0], x[1], x[2], x[3]];
        let [o, wc, kh, kw] = [weight[0], weight[1], weight[2], weight[3]];
        assert_eq!(
            c, wc,
            "im2col_conv2d: input has {c} channels, weight expects {wc}"
        );
        assert!(stride[0] > 0 && stride[1] > 0, "im2col_conv2d: zero stride");
        assert!(
            h + 2 * pad[0] >= kh && w + 2 * pad[1] >= kw,
            "im2col_conv2d: kernel {kh}×{kw} larger than padded input {h}×{w} + 2·{pad:?}"
        );
        let oh = (h + 2 * pad[0] - kh) / stride[0] + 1;
        let ow = (w + 2 * pad[1] - kw) / stride[1] + 1;
        let [sh, sw] = stride;
        let [ph, pw] = pad;
        Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh,
            ow,
        }
    }

    /// Rows of `col`: `C·kh·kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel: `Ho·Wo`.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Input elements per image.
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1, stride-1, unpadded convolution, whose `col` is the image itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

/// Writes `col[K, P]` for one image `x [C, H, W]`: row `(c, i, j)` holds the input pixels that
/// kernel tap `(i, j)` of channel `c` meets at each output pixel, zero where it meets padding.
///
/// Each channel is first copied into a zero-bordered `(H + 2ph) × (W + 2pw)` plane, so that every
/// output row is one branch-free copy (in 8-float blocks: no `memcpy`/`memset` call per row).
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let (p, plane) = (g.p(), g.h * g.w);
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let padded = g.ph > 0 || g.pw > 0;
    PADDED.with(|cell| {
        let mut buf = cell.borrow_mut();
        if padded {
            // Borders stay zero: each channel below overwrites the interior only.
            buf.clear();
            buf.resize(hp * wp, 0.0);
        }
        for c in 0..g.c {
            let src_plane = &x[c * plane..(c + 1) * plane];
            let src: &[f32] = if padded {
                for (r, line) in src_plane.chunks_exact(g.w).enumerate() {
                    let at = (r + g.ph) * wp + g.pw;
                    copy_row(&mut buf[at..at + g.w], line);
                }
                &buf
            } else {
                src_plane
            };
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &mut col[((c * g.kh + i) * g.kw + j) * p..][..p];
                    for (y, out) in row.chunks_exact_mut(g.ow).enumerate() {
                        let start = (y * g.sh + i) * wp + j;
                        if g.sw == 1 {
                            copy_row(out, &src[start..start + g.ow]);
                        } else {
                            for (k, v) in out.iter_mut().enumerate() {
                                *v = src[start + k * g.sw];
                            }
                        }
                    }
                }
            }
        }
    });
}

/// `dst.copy_from_slice(src)` in fixed 8-float blocks, which compile to vector moves rather than
/// a `memcpy` call: the rows here are 7–64 floats long and there are millions of them.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let b: &[f32; 8] = b.try_into().expect("8 floats");
        let a: &mut [f32; 8] = a.try_into().expect("8 floats");
        *a = *b;
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// The adjoint of [`im2col`]: adds every entry of `col[K, P]` back onto the input pixel it was
/// read from, overwriting `dx [C, H, W]`. Accumulates in the same zero-bordered plane layout as
/// [`im2col`] (one branch-free row add per output row), then copies the interior out.
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let (p, plane) = (g.p(), g.h * g.w);
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    PADDED.with(|cell| {
        let mut buf = cell.borrow_mut();
        for c in 0..g.c {
            buf.clear();
            buf.resize(hp * wp, 0.0);
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &col[((c * g.kh + i) * g.kw + j) * p..][..p];
                    for (y, src) in row.chunks_exact(g.ow).enumerate() {
                        let start = (y * g.sh + i) * wp + j;
                        if g.sw == 1 {
                            for (d, s) in buf[start..start + g.ow].iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            for (k, s) in src.iter().enumerate() {
                                buf[start + k * g.sw] += s;
                            }
                        }
                    }
                }
            }
            let dst = &mut dx[c * plane..(c + 1) * plane];
            for (r, line) in dst.chunks_exact_mut(g.w).enumerate() {
                let at = (r + g.ph) * wp + g.pw;
                copy_row(line, &buf[at..at + g.w]);
            }
        }
    });
}

/// A row-major matrix operand for [`matmul`]: pointer, rows, columns, and whether it is read
/// transposed (then `rows × cols` is the shape after transposition).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn plain(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: true,
        }
    }

    /// (column stride, row stride) of the operand as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.rows as isize, 1)
        } else {
            (1, self.cols as isize)
        }
    }
}

/// `dst[m, n] = a[m, k] · b[k, n]` (`accumulate = false`) or `dst += a · b`, row-major `dst`.
fn matmul(dst: &mut [f32], a: Operand, b: Operand, accumulate: bool, par: gemm::Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "matmul: inner dimensions {k} and {} differ",
        b.rows
    );
    assert!(dst.len() >= m * n && a.data.len() >= m * k && b.data.len() >= k * n);
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    // SAFETY: the asserts above keep every index gemm forms (row < m, col < n, inner < k, with
    // the strides just computed) inside the three slices; `dst` is borrowed mutably and alone.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

thread_local! {
    /// Per-thread `col` scratch, kept between calls so it is neither reallocated nor zeroed.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread zero-bordered copy of one input channel for [`im2col`].
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch slice of `len` floats (contents unspecified: callers overwrite it).
///
/// The buffer is taken out of the thread-local for the duration of `f`, not borrowed: `f` runs
/// a GEMM that may spread over the rayon pool, and a thread waiting in it can steal another conv
/// task and come back here (re-entrancy). That nested call then finds the slot empty and uses a
/// buffer of its own; whichever finishes last leaves its buffer for the next call.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.len() < buf.len() {
            *slot = buf;
        }
    });
    out
}

/// Tasks a batch is cut into. Fixed, not the thread count, so that the weight gradient (summed
/// per task, then over tasks in order) has the same rounding whatever `RAYON_NUM_THREADS` is.
const TASKS: usize = 8;

/// How to spread `n` images over the rayon pool: `(images per task, GEMM parallelism)`. At
/// least as many tasks as threads: single-threaded GEMMs; fewer: each GEMM on the whole pool
/// (gemm splits the output, not the sums, so the numbers are the same).
fn split(n: usize) -> (usize, gemm::Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    let per_task = n.div_ceil(TASKS.min(n).max(1)).max(1);
    if n.div_ceil(per_task) >= threads {
        // `Rayon(1)` runs on the calling thread like `None`, but sizes gemm's zero-initialised
        // packing buffer to the problem instead of 128 column blocks (zeroing ~1.5 MB per call).
        (per_task, gemm::Parallelism::Rayon(1))
    } else {
        (per_task, gemm::Parallelism::Rayon(threads))
    }
}

/// `y [N, O, Ho, Wo]` for `x [N, C, H, W]`, `weight [O, C, kh, kw]`.
fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let mut y = vec![0.0f32; g.n * g.o * p];
    let (per_task, par) = split(g.n);
    let w = Operand::plain(weight, g.o, k);
    y.par_chunks_mut(per_task * g.o * p)
        .enumerate()
        .for_each(|(t, y_task)| {
            for (i, y_b) in y_task.chunks_exact_mut(g.o * p).enumerate() {
                let x_b = &x[(t * per_task + i) * g.image()..][..g.image()];
                if g.is_pointwise() {
                    matmul(y_b, w, Operand::plain(x_b, k, p), false, par);
                } else {
                    with_scratch(k * p, |col| {
                        im2col(g, x_b, col);
                        matmul(y_b, w, Operand::plain(col, k, p), false, par);
                    });
                }
            }
        });
    y
}

/// `(dx, dweight)` for output gradient `dy [N, O, Ho, Wo]`; either may be skipped.
fn backward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (k, p) = (g.k(), g.p());
    let (per_task, par) = split(g.n);
    let tasks = g.n.div_ceil(per_task);
    let mut dx = vec![0.0f32; if want_dx { g.n * g.image() } else { 0 }];
    let mut partial_dw = vec![0.0f32; if want_dw { tasks * g.o * k } else { 0 }];
    let dx_chunks: Vec<&mut [f32]> = if want_dx {
        dx.chunks_mut(per_task * g.image()).collect()
    } else {
        (0..tasks).map(|_| <&mut [f32]>::default()).collect()
    };
    let dw_chunks: Vec<&mut [f32]> = if want_dw {
        partial_dw.chunks_mut(g.o * k).collect()
    } else {
        (0..tasks).map(|_| <&mut [f32]>::default()).collect()
    };
    let w_t = Operand::transposed(weight, k, g.o);
    dx_chunks
        .into_par_iter()
        .zip(dw_chunks)
        .enumerate()
        .for_each(|(t, (dx_task, dw_task))| {
            let first = t * per_task;
            let count = per_task.min(g.n - first);
            for i in 0..count {
                let b = first + i;
                let x_b = &x[b * g.image()..][..g.image()];
                let dy_b = Operand::plain(&dy[b * g.o * p..][..g.o * p], g.o, p);
                let dx_b = if want_dx {
                    Some(&mut dx_task[i * g.image()..][..g.image()])
                } else {
                    None
                };
                if g.is_pointwise() {
                    if want_dw {
                        matmul(dw_task, dy_b, Operand::transposed(x_b, p, k), i > 0, par);
                    }
                    if let Some(dx_b) = dx_b {
                        matmul(dx_b, w_t, dy_b, false, par);
                    }
                    continue;
                }
                with_scratch(k * p, |col| {
                    if want_dw {
                        im2col(g, x_b, col);
                        matmul(dw_task, dy_b, Operand::transposed(col, p, k), i > 0, par);
                    }
                    if let Some(dx_b) = dx_b {
                        matmul(col, w_t, dy_b, false, par);
                        col2im(g, col, dx_b);
                    }
                });
            }
        });
    let dw = want_dw.then(|| {
        let mut parts = partial_dw.chunks_exact(g.o * k);
        let mut total = parts.next().expect("at least one image").to_vec();
        for part in parts {
            for (a, b) in total.iter_mut().zip(part) {
                *a += b;
            }
        }
        total
    });
    (want_dx.then_some(dx), dw)
}

/// `t` as a contiguous f32 tensor, and its shape.
fn f32_contents(t: &FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = contiguous_f32(t, "im2col_conv2d");
    let shape = t.layout().shape().to_vec();
    (t, shape)
}

fn flex_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    pad: [usize; 2],
) -> FlexTensor {
    let (x, xs) = f32_contents(x);
    let (w, ws) = f32_contents(weight);
    let g = Geometry::new(&xs, &ws, stride, pad);
    from_f32(
        forward(&g, f32_slice(&x), f32_slice(&w)),
        [g.n, g.o, g.oh, g.ow],
    )
}

impl Im2colConv for Flex {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        flex_forward(&x, &weight, [stride_h, stride_w], [pad_h, pad_w])
    }
}

/// The backward step recorded on the autodiff graph.
#[derive(Debug)]
struct Im2colConvBackward;

impl Backward<Flex, 2> for Im2colConvBackward {
    /// Checkpointed input and weight, stride, padding.
    type State = (NodeId, NodeId, [usize; 2], [usize; 2]);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, stride, pad) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_state);
        let (x, xs) = f32_contents(&x);
        let (w, ws) = f32_contents(&w);
        let (dy, _) = f32_contents(&dy);
        let g = Geometry::new(&xs, &ws, stride, pad);
        let (dx, dw) = backward(
            &g,
            f32_slice(&x),
            f32_slice(&w),
            f32_slice(&dy),
            node_x.is_some(),
            node_w.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, from_f32(dx, [g.n, g.c, g.h, g.w]));
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, from_f32(dw, [g.o, g.c, g.kh, g.kw]));
        }
    }
}

impl<C: CheckpointStrategy> Im2colConv for Autodiff<Flex, C> {
    fn im2col_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride_h: usize,
        stride_w: usize,
        pad_h: usize,
        pad_w: usize,
    ) -> FloatTensor<Self> {
        let (stride, pad) = ([stride_h, stride_w], [pad_h, pad_w]);
        match Im2colConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let y = flex_forward(x.primitive(), weight.primitive(), stride, pad);
                prep.finish((x_state, w_state, stride, pad), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(flex_forward(x.primitive(), weight.primitive(), stride, pad))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flex::assert_close;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution, Int};

    /// Forward output and the gradients of a weighted sum of it with respect to input, weight
    /// and bias, through `f`.
    fn run(
        conv: &Conv2d,
        x: &Tensor<4>,
        f: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>,
    ) -> [Vec<f32>; 4] {
        let x = x.clone().require_grad();
        let y = f(conv, x.clone());
        // A fixed, position-dependent weighting, the same for both implementations.
        let numel = y.shape().num_elements() as i64;
        let mix = Tensor::<1, Int>::arange(0..numel, &y.device())
            .float()
            .sin()
            .reshape(y.shape());
        let grads = (y.clone() * mix).sum().backward();
        let vec = |t: Option<Tensor<4>>| {
            t.map(|t| t.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or_default()
        };
        [
            y.into_data().try_into_vec::<f32>().unwrap(),
            vec(x.grad(&grads)),
            vec(conv.weight.grad(&grads)),
            conv.bias
                .as_ref()
                .and_then(|b| b.grad(&grads))
                .map(|t| t.into_data().try_into_vec::<f32>().unwrap())
                .unwrap_or_default(),
        ]
    }

    #[test]
    fn matches_burn_conv2d_forward_and_gradients() {
        let device = Device::flex().autodiff();
        // (N, C, H, W, O, kernel, stride, padding, bias)
        let cases = [
            (3, 3, 9, 8, 4, [3, 3], [1, 1], (1, 1), false),
            (2, 4, 8, 8, 6, [3, 3], [2, 2], (1, 1), true),
            (5, 2, 7, 7, 3, [1, 1], [1, 1], (0, 0), false),
            (2, 6, 8, 9, 5, [1, 1], [2, 2], (0, 0), true),
            (1, 2, 11, 10, 4, [5, 5], [1, 1], (2, 2), true),
            (4, 3, 6, 7, 2, [3, 2], [2, 1], (0, 1), false),
            (2, 1, 5, 5, 2, [5, 5], [1, 1], (0, 0), true),
            // More images than tasks: each task accumulates several images' weight gradients.
            (19, 3, 6, 6, 4, [3, 3], [1, 1], (1, 1), true),
            (17, 4, 5, 5, 3, [1, 1], [1, 1], (0, 0), false),
        ];
        for (n, c, h, w, o, kernel, stride, (ph, pw), bias) in cases {
            let conv = Conv2dConfig::new([c, o], kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(ph, pw, ph, pw))
                .with_bias(bias)
                .init(&device);
            assert!(fast_path(&conv, &Tensor::zeros([1, c, h, w], &device)).is_some());
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let ours = run(&conv, &x, conv2d);
            let burns = run(&conv, &x, |m, x| m.forward(x));
            for (what, (a, b)) in ["output", "input grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&burns))
            {
                let case = format!("case {n}×{c}×{h}×{w} k{kernel:?} s{stride:?} p({ph},{pw})");
                assert_close(&format!("{what}, {case}"), a, b, 1e-4);
            }
        }
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> = <x, col2im(c)> for any x, c: the input gradient is the exact adjoint.
        let g = Geometry::new(&[1, 2, 5, 6], &[1, 2, 3, 3], [2, 1], [1, 2]);
        let x: Vec<f32> = (0..g.image())
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let c: Vec<f32> = (0..g.k() * g.p())
            .map(|i| ((i * 104729) % 11) as f32 - 5.0)
            .collect();
        let mut col = vec![f32::NAN; g.k() * g.p()];
        im2col(&g, &x, &mut col);
        let mut back = vec![0.0; g.image()];
        col2im(&g, &c, &mut back);
        let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!(
            col.iter().all(|v| v.is_finite()),
            "im2col left entries unwritten"
        );
        assert_eq!(lhs, rhs);
    }

    /// The same input gives bit-identical outputs and gradients on pools of 1, 2, 3, 16 and 32
    /// threads, both when tasks outnumber threads (single-threaded GEMMs) and when threads
    /// outnumber tasks (GEMMs over the whole pool, where a thread waiting in a GEMM steals
    /// another conv task and re-enters the scratch buffer: this panicked with 9+ threads).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let fill = |n: usize, m: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * m) % 1009) as f32 / 1009.0 - 0.5) * 3.1)
                .collect()
        };
        // 13 images: 7 tasks of 2; 37 images: 8 tasks of 5 (accumulating); 1×1 and 3×3. The
        // 32×32 case is large enough (16×1024×144 per image) for gemm to use the pool's
        // threads, which is where a waiting thread steals a sibling conv task.
        for (n, c, side, kernel, pad) in [
            (13, 3, 9, 3, 1),
            (37, 3, 9, 3, 1),
            (13, 3, 9, 1, 0),
            (13, 16, 32, 3, 1),
        ] {
            let g = Geometry::new(
                &[n, c, side, side],
                &[c.max(5), c, kernel, kernel],
                [1, 1],
                [pad, pad],
            );
            let x = fill(g.n * g.image(), 7919);
            let w = fill(g.o * g.k(), 104729);
            let dy = fill(g.n * g.o * g.p(), 31337);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                // Several convolutions at once, as the layers of a batch's forward pass are not,
                // but as rayon may interleave them when GEMMs share the pool.
                pool.install(|| {
                    // The branch taken: single-threaded GEMMs exactly when tasks ≥ threads.
                    let (per_task, par) = split(n);
                    assert_eq!(
                        matches!(par, gemm::Parallelism::Rayon(1)),
                        n.div_ceil(per_task) >= threads
                    );
                    let runs: Vec<_> = (0..4)
                        .into_par_iter()
                        .map(|_| (forward(&g, &x, &w), backward(&g, &x, &w, &dy, true, true)))
                        .collect();
                    assert!(runs.windows(2).all(|p| p[0] == p[1]));
                    runs.into_iter().next().expect("one run")
                })
            };
            let one = run(1);
            for threads in [2, 3, 16, 32] {
                assert!(
                    one == run(threads),
                    "{n} images, {kernel}×{kernel}: {threads} threads differ from 1"
                );
            }
        }
    }

    #[test]
    fn output_size_follows_pytorch() {
        let g = Geometry::new(&[1, 3, 32, 32], &[16, 3, 3, 3], [2, 2], [1, 1]);
        assert_eq!((g.oh, g.ow), (16, 16));
        let g = Geometry::new(&[1, 3, 28, 28], &[32, 3, 5, 5], [1, 1], [0, 0]);
        assert_eq!((g.oh, g.ow), (24, 24));
    }
}
