//! The im2col + GEMM arithmetic of the flex convolution (`conv.rs`) on plain f32 slices: unfolding
//! images into columns and back, the GEMM calls, and one convolution's forward and backward passes.
//!
//! Each image is unfolded in chunks of output rows whose columns fit a core's L2 cache (ResNet's
//! first stage: 3 chunks per image), so that `col` is written, packed by gemm and multiplied
//! without going out to memory in between: ResNet-8 at B = 128 ran ×1.13 faster than with whole
//! images (AMD EPYC, best of 4 interleaved runs, 572 against 491 img/s).
//!
//! The forward of stride-1 layers whose output rows are whole 16-pixel tiles (on AVX-512 also
//! rows ending in a masked vector of 12+ pixels) goes to [`direct_conv`] instead, on CPUs with
//! AVX2 and FMA or AVX-512, and so does their input gradient (as the forward of the transposed
//! convolution, [`Geometry::transposed`]: ×1.07–2.04 per layer at B = 128 on 2 threads against
//! GEMM + col2im on an AVX2 AMD EPYC, ×1.15–1.87 with AVX-512 on a Zen 5); so does the weight
//! gradient of those with 3-wide kernels where that was faster ([`direct_conv::WeightGradPlan`]:
//! ×1.09–1.70 and ×1.17–2.50 per layer). The rest stays here.
//!
//! The copies ([`pad_image`], [`im2col_rows`], [`col2im_rows`], [`unpad_image`]) are compiled
//! for several instruction sets and picked at run time (`multiversion`), since the crate itself
//! is built for baseline x86-64 (SSE2): ResNet-8's step ×1.03–1.04 on a Zen 5 (medians of 5–9
//! alternations, `bench/RESULTS.md`).

mod matmul;
#[cfg(test)]
mod tests;
mod unfold;

use super::direct_conv::{self, Isa};
use matmul::*;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use unfold::*;

/// Shapes of one convolution, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) sh: usize,
    pub(super) sw: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geometry {
    pub(super) fn new(x: &[usize], weight: &[usize], stride: [usize; 2], pad: [usize; 2]) -> Self {
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

    /// `[H + 2ph, W + 2pw]`: one padded input plane.
    fn padded(&self) -> [usize; 2] {
        [self.h + 2 * self.ph, self.w + 2 * self.pw]
    }

    /// A stride-1 convolution other than [`Geometry::is_pointwise`]: what the [`direct_conv`]
    /// kernels take, shapes allowing.
    fn is_direct_candidate(&self) -> bool {
        self.sh == 1 && self.sw == 1 && !self.is_pointwise()
    }

    /// A 1×1, stride-1, unpadded convolution, whose `col` is the image itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }

    /// For a stride-1 convolution, the convolution whose forward is its input gradient: `dy`
    /// (O channels, `Ho × Wo`) padded by `kh − 1 − ph`, `kw − 1 − pw` and convolved with the
    /// weight transposed to `[C, O]` and flipped in both kernel axes ([`flipped_weight`]), giving
    /// `dx` (C channels, `H × W`). `None` for strided convolutions, whose gradient this is not,
    /// and for padding beyond `kernel − 1` (the gradient would need cropping).
    fn transposed(&self) -> Option<Geometry> {
        let fits = self.sh == 1 && self.sw == 1 && self.ph < self.kh && self.pw < self.kw;
        fits.then(|| Geometry {
            c: self.o,
            h: self.oh,
            w: self.ow,
            o: self.c,
            ph: self.kh - 1 - self.ph,
            pw: self.kw - 1 - self.pw,
            oh: self.h,
            ow: self.w,
            ..*self
        })
    }
}

/// Tasks a batch is cut into. Fixed, not the thread count, so that the weight gradient (summed
/// per task, then over tasks in order) has the same rounding whatever `RAYON_NUM_THREADS` is.
const TASKS: usize = 8;

/// How to spread `n` images over the rayon pool: `(images per task, GEMM parallelism)`. At
/// least as many tasks as threads: single-threaded GEMMs; fewer: each GEMM on the whole pool
/// (gemm splits the output, not the sums, so the numbers are the same).
pub(super) fn split(n: usize) -> (usize, gemm::Parallelism) {
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

/// `col` floats per row chunk: 256 KiB, so that a chunk's columns stay in a core's L2 cache from
/// [`im2col_rows`] through gemm's packing to the GEMM (a whole image's `col` is up to 590 KB for
/// ResNet's first stage, 627 KB for the MNIST CNN's second convolution).
const CHUNK_FLOATS: usize = 64 * 1024;

/// Fewest output pixels per chunk: a narrower GEMM loses more to its edges than the cache
/// saves (the MNIST CNN's second convolution, K = 800, ran 10% slower in chunks of 70 pixels).
const MIN_CHUNK_PIXELS: usize = 256;

/// The output rows of one image in chunks whose `col` fits [`CHUNK_FLOATS`], of at least
/// [`MIN_CHUNK_PIXELS`] output pixels (or the whole image).
pub(super) fn row_chunks(g: &Geometry) -> impl Iterator<Item = Range<usize>> {
    let fits = CHUNK_FLOATS / (g.k() * g.ow).max(1);
    let per = fits.max(MIN_CHUNK_PIXELS.div_ceil(g.ow)).clamp(1, g.oh);
    let oh = g.oh;
    (0..oh).step_by(per).map(move |y| y..(y + per).min(oh))
}

/// Floats of one padded image.
fn padded_len(g: &Geometry) -> usize {
    let [hp, wp] = g.padded();
    g.c * hp * wp
}

/// `y [N, O, Ho, Wo]` for `x [N, C, H, W]`, `weight [O, C, kh, kw]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let direct = direct_conv::kernels().and_then(|isa| direct_plan(g, isa));
    forward_with(g, x, weight, direct)
}

/// The [`direct_conv`] plan on `isa` for a stride-1 convolution where it applies (see there).
fn direct_plan(g: &Geometry, isa: Isa) -> Option<direct_conv::Plan> {
    g.is_direct_candidate()
        .then(|| direct_conv::Plan::new(isa, g.c, g.padded(), g.o, [g.kh, g.kw]))
        .flatten()
}

/// [`forward`], through `direct` for every image when given, else im2col + GEMM.
fn forward_with(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    direct: Option<direct_conv::Plan>,
) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let len = g.n * g.o * p;
    let packed = direct.map(|plan| plan.pack_weight(weight));
    let mut y = Vec::with_capacity(len);
    let (per_task, par) = split(g.n);
    let w = Operand::plain(weight, g.o, k);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(per_task * g.o * p)
        .enumerate()
        .for_each(|(t, y_task)| {
            for (i, y_b) in y_task.chunks_exact_mut(g.o * p).enumerate() {
                let x_b = &x[(t * per_task + i) * g.image()..][..g.image()];
                if g.is_pointwise() {
                    matmul_into(y_b, p, w, Operand::plain(x_b, k, p), false, par);
                    continue;
                }
                with_scratch(&PADDED, padded_len(g), |padded| {
                    pad_image(g, x_b, padded);
                    if let (Some(plan), Some(packed)) = (direct, &packed) {
                        plan.forward_image(padded, packed, y_b);
                        return;
                    }
                    for rows in row_chunks(g) {
                        let len = rows.len() * g.ow;
                        with_scratch(&SCRATCH, k * len, |col| {
                            im2col_rows(g, padded, rows.clone(), col);
                            let y_rows = &mut y_b[rows.start * g.ow..];
                            matmul_into(y_rows, p, w, Operand::plain(col, k, len), false, par);
                        });
                    }
                });
            }
        });
    // SAFETY: the tasks' chunks tile `y[..len]` image by image, and each image's outputs were
    // all written: by the direct kernel (every tile), one GEMM, or one GEMM per chunk of output
    // rows, which `row_chunks` makes cover 0..Ho.
    unsafe { y.set_len(len) };
    y
}

/// `(dx, dweight)` for output gradient `dy [N, O, Ho, Wo]`; either may be skipped.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let isa = direct_conv::kernels();
    let direct = DirectGradients {
        dx: isa
            .filter(|_| want_dx)
            .and_then(|isa| direct_input_gradient(g, isa)),
        dw: isa
            .filter(|_| want_dw)
            .and_then(|isa| direct_weight_gradient(g, isa)),
    };
    backward_with(g, x, weight, dy, want_dx, want_dw, direct)
}

/// The gradients [`backward_with`] computes through [`direct_conv`] rather than `col`.
#[derive(Clone, Copy)]
struct DirectGradients {
    /// The input gradient, as the forward of the transposed convolution.
    dx: Option<(Geometry, direct_conv::Plan)>,
    /// The weight gradient.
    dw: Option<direct_conv::WeightGradPlan>,
}

/// The weight gradient through [`direct_conv::WeightGradPlan`], for stride-1 convolutions
/// where that applies. It replaces im2col and the GEMM over `col`.
fn direct_weight_gradient(g: &Geometry, isa: Isa) -> Option<direct_conv::WeightGradPlan> {
    g.is_direct_candidate()
        .then(|| direct_conv::WeightGradPlan::new(isa, g.c, g.padded(), g.o, [g.kh, g.kw]))
        .flatten()
}

/// The input gradient through [`direct_conv`], as the forward of [`Geometry::transposed`], where
/// that applies. It replaces the GEMM into `col` and [`col2im_rows`]' scattered adds.
fn direct_input_gradient(g: &Geometry, isa: Isa) -> Option<(Geometry, direct_conv::Plan)> {
    let t = g.transposed()?;
    Some((t, direct_plan(&t, isa)?))
}

/// [`backward`], with the gradients `direct` names through [`direct_conv`] for every image, the
/// others through `col` (GEMM + col2im for the input gradient, im2col + GEMM for the weight's).
fn backward_with(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
    direct: DirectGradients,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let DirectGradients {
        dx: direct_dx,
        dw: direct_dw,
    } = direct;
    let (k, p) = (g.k(), g.p());
    let flipped = direct_dx.map(|(_, plan)| plan.pack_weight(&flipped_weight(g, weight)));
    // The input gradient through `col`, when not direct.
    let col_dx = want_dx && direct_dx.is_none();
    // The weight gradient through `col`, when not direct.
    let col_dw = want_dw && direct_dw.is_none();
    let (per_task, par) = split(g.n);
    let tasks = g.n.div_ceil(per_task);
    let dx_len = if want_dx { g.n * g.image() } else { 0 };
    let mut dx = Vec::with_capacity(dx_len);
    let mut partial_dw = vec![0.0f32; if want_dw { tasks * g.o * k } else { 0 }];
    let dx_chunks: Vec<&mut [MaybeUninit<f32>]> = if want_dx {
        dx.spare_capacity_mut()[..dx_len]
            .chunks_mut(per_task * g.image())
            .collect()
    } else {
        (0..tasks)
            .map(|_| <&mut [MaybeUninit<f32>]>::default())
            .collect()
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
                let dy_b = &dy[b * g.o * p..][..g.o * p];
                let mut dx_b = if want_dx {
                    Some(&mut dx_task[i * g.image()..][..g.image()])
                } else {
                    None
                };
                if g.is_pointwise() {
                    // dWᵀ[K, O] += x_b · dY_bᵀ, as the im2col path below sums it.
                    if want_dw {
                        let dy_t = Operand::transposed(dy_b, p, g.o);
                        matmul(dw_task, g.o, Operand::plain(x_b, k, p), dy_t, i > 0, par);
                    }
                    if let Some(dx_b) = dx_b {
                        matmul_into(dx_b, p, w_t, Operand::plain(dy_b, g.o, p), false, par);
                    }
                    continue;
                }
                if let (Some((t, plan)), Some(flipped), Some(dx_b)) =
                    (direct_dx, &flipped, dx_b.as_deref_mut())
                {
                    with_scratch(&ACC, padded_len(&t), |padded_dy| {
                        pad_image(&t, dy_b, padded_dy);
                        plan.forward_image(padded_dy, flipped, dx_b);
                    });
                }
                if let Some(plan) = direct_dw {
                    with_scratch(&PADDED, padded_len(g), |padded| {
                        pad_image(g, x_b, padded);
                        plan.accumulate_image(padded, dy_b, dw_task);
                    });
                }
                if !col_dw && !col_dx {
                    continue;
                }
                // The image's padded input (for the weight gradient) and padded input gradient
                // (for the input gradient through `col`), then one row chunk of `col` at a time.
                let padded_x = if col_dw { padded_len(g) } else { 0 };
                let padded_dx = if col_dx { padded_len(g) } else { 0 };
                with_scratch(&PADDED, padded_x, |padded| {
                    if col_dw {
                        pad_image(g, x_b, padded);
                    }
                    with_scratch(&ACC, padded_dx, |acc| {
                        acc.fill(0.0);
                        for (c, rows) in row_chunks(g).enumerate() {
                            let len = rows.len() * g.ow;
                            let dy_rows =
                                Operand::plain(&dy_b[rows.start * g.ow..], g.o, len).with_stride(p);
                            with_scratch(&SCRATCH, k * len, |col| {
                                if col_dw {
                                    im2col_rows(g, padded, rows.clone(), col);
                                    // dWᵀ[K, O] += col · dYᵀ: with `col` as the left operand
                                    // gemm packs the O×len block of dY, not the K×len `col`.
                                    let dy_t =
                                        Operand::transposed(&dy_b[rows.start * g.ow..], len, g.o)
                                            .with_stride(p);
                                    let col_k = Operand::plain(col, k, len);
                                    matmul(dw_task, g.o, col_k, dy_t, i > 0 || c > 0, par);
                                }
                                if col_dx {
                                    matmul(col, len, w_t, dy_rows, false, par);
                                    col2im_rows(g, col, rows, acc);
                                }
                            });
                        }
                        if let (true, Some(dx_b)) = (col_dx, dx_b) {
                            unpad_image(g, acc, dx_b);
                        }
                    });
                });
            }
        });
    if want_dx {
        // SAFETY: the tasks' chunks tile `dx[..dx_len]` image by image, and each image's
        // gradient was written whole (one GEMM, or `unpad_image`).
        unsafe { dx.set_len(dx_len) };
    }
    let dw = want_dw.then(|| {
        let mut parts = partial_dw.chunks_exact(g.o * k);
        let mut total = parts.next().expect("at least one image").to_vec();
        for part in parts {
            for (a, b) in total.iter_mut().zip(part) {
                *a += b;
            }
        }
        // Both paths summed dWᵀ [K, O]; the weight's layout is [O, K].
        let mut dw = vec![0.0f32; g.o * k];
        for (kk, row) in total.chunks_exact(g.o).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                dw[o * k + kk] = v;
            }
        }
        dw
    });
    (want_dx.then_some(dx), dw)
}
