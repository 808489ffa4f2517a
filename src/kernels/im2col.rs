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

use super::direct_conv::{self, Isa};
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

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

/// `weight [O, C, kh, kw]` as `[C, O, kh, kw]` with both kernel axes reversed: the weight of
/// [`Geometry::transposed`]'s convolution.
fn flipped_weight(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let taps = g.kh * g.kw;
    let mut flipped = Vec::with_capacity(g.o * g.k());
    for c in 0..g.c {
        for o in 0..g.o {
            let kernel = &weight[(o * g.c + c) * taps..][..taps];
            flipped.extend(kernel.iter().rev());
        }
    }
    flipped
}

/// Writes image `x [C, H, W]` into `padded [C, H + 2ph, W + 2pw]` with zero borders, so that
/// every row [`im2col_rows`] copies is one branch-free run.
#[multiversion::multiversion(targets = "simd")]
fn pad_image(g: &Geometry, x: &[f32], padded: &mut [f32]) {
    let [hp, wp] = g.padded();
    let padded = &mut padded[..g.c * hp * wp];
    if g.ph == 0 && g.pw == 0 {
        padded.copy_from_slice(&x[..g.image()]);
        return;
    }
    padded.fill(0.0);
    for (src, dst) in x
        .chunks_exact(g.h * g.w)
        .zip(padded.chunks_exact_mut(hp * wp))
    {
        for (r, line) in src.chunks_exact(g.w).enumerate() {
            let at = (r + g.ph) * wp + g.pw;
            copy_row(&mut dst[at..at + g.w], line);
        }
    }
}

/// Writes `col[K, rows·Wo]` for output rows `rows` of one image, read from its padded copy
/// (see [`pad_image`]): row `(c, i, j)` holds the input pixels that kernel tap `(i, j)` of
/// channel `c` meets at each of those output pixels.
#[multiversion::multiversion(targets = "simd")]
fn im2col_rows(g: &Geometry, padded: &[f32], rows: Range<usize>, col: &mut [f32]) {
    let [hp, wp] = g.padded();
    let len = rows.len() * g.ow;
    for c in 0..g.c {
        let src = &padded[c * hp * wp..][..hp * wp];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * len..][..len];
                for (y, out) in rows.clone().zip(row.chunks_exact_mut(g.ow)) {
                    let start = (y * g.sh + i) * wp + j;
                    if g.sw == 1 {
                        copy_row(out, &src[start..start + g.ow]);
                    } else if g.sw == 2 {
                        copy_every_other(out, &src[start..start + 2 * g.ow - 1]);
                    } else {
                        let line = &src[start..start + (g.ow - 1) * g.sw + 1];
                        for (v, s) in out.iter_mut().zip(line.iter().step_by(g.sw)) {
                            *v = *s;
                        }
                    }
                }
            }
        }
    }
}

/// Writes `col[K, P]` for one whole image `x [C, H, W]` (tests; the passes go by row chunks).
#[cfg(test)]
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let [hp, wp] = g.padded();
    let mut padded = vec![0.0; g.c * hp * wp];
    pad_image(g, x, &mut padded);
    im2col_rows(g, &padded, 0..g.oh, col);
}

/// `dst.copy_from_slice(src)` in fixed 8-float blocks, which compile to vector moves rather than
/// a `memcpy` call: the rows here are 7–64 floats long and there are millions of them. `T` is
/// `f32`, or `MaybeUninit<f32>` to fill memory not yet initialised.
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let b: &[T; 8] = b.try_into().expect("8 floats");
        let a: &mut [T; 8] = a.try_into().expect("8 floats");
        *a = *b;
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// `out[x] = line[2x]`, the row copy of stride-2 layers, in fixed blocks of 8 outputs, which
/// compile to shuffles rather than one scalar move per element as `step_by(2)` does: ×1.4 on
/// 8-pixel rows, ×1.6 on 16 (AMD EPYC, throwaway harness). `line` holds `2·out.len() − 1` floats.
#[inline(always)]
fn copy_every_other(out: &mut [f32], line: &[f32]) {
    assert_eq!(line.len() + 1, 2 * out.len());
    let whole = out.len() / 8 * 8;
    let (blocks, rest) = out.split_at_mut(whole);
    for (i, a) in blocks.chunks_exact_mut(8).enumerate() {
        let b: &[f32; 15] = line[16 * i..][..15].try_into().expect("15 floats");
        let a: &mut [f32; 8] = a.try_into().expect("8 floats");
        for k in 0..8 {
            a[k] = b[2 * k];
        }
    }
    for (x, v) in rest.iter_mut().enumerate() {
        *v = line[2 * (whole + x)];
    }
}

/// `line[2x] += src[x]`: the adjoint of [`copy_every_other`], in the same blocks.
#[inline(always)]
fn add_every_other(line: &mut [f32], src: &[f32]) {
    assert_eq!(line.len() + 1, 2 * src.len());
    let whole = src.len() / 8 * 8;
    for (i, b) in src[..whole].chunks_exact(8).enumerate() {
        let a: &mut [f32; 15] = (&mut line[16 * i..][..15]).try_into().expect("15 floats");
        for k in 0..8 {
            a[2 * k] += b[k];
        }
    }
    for (x, v) in src[whole..].iter().enumerate() {
        line[2 * (whole + x)] += v;
    }
}

/// `floats` viewed as possibly uninitialised, to copy from into a `MaybeUninit` destination.
fn as_uninit(floats: &[f32]) -> &[MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the shared view cannot write.
    unsafe { &*(floats as *const [f32] as *const [MaybeUninit<f32>]) }
}

/// The adjoint of [`im2col_rows`]: adds every entry of `col[K, rows·Wo]` onto the pixel of the
/// padded image gradient `acc [C, H + 2ph, W + 2pw]` it was read from.
#[multiversion::multiversion(targets = "simd")]
fn col2im_rows(g: &Geometry, col: &[f32], rows: Range<usize>, acc: &mut [f32]) {
    let [hp, wp] = g.padded();
    let len = rows.len() * g.ow;
    for c in 0..g.c {
        let dst = &mut acc[c * hp * wp..][..hp * wp];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * len..][..len];
                for (y, src) in rows.clone().zip(row.chunks_exact(g.ow)) {
                    let start = (y * g.sh + i) * wp + j;
                    if g.sw == 1 {
                        for (d, s) in dst[start..start + g.ow].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else if g.sw == 2 {
                        add_every_other(&mut dst[start..start + 2 * g.ow - 1], src);
                    } else {
                        let line = &mut dst[start..start + (g.ow - 1) * g.sw + 1];
                        for (d, s) in line.iter_mut().step_by(g.sw).zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

/// Copies the interior of the padded gradient `acc` out into `dx [C, H, W]`, writing all of it.
#[multiversion::multiversion(targets = "simd")]
fn unpad_image(g: &Geometry, acc: &[f32], dx: &mut [MaybeUninit<f32>]) {
    let acc = as_uninit(acc);
    let [hp, wp] = g.padded();
    for (src, dst) in acc
        .chunks_exact(hp * wp)
        .zip(dx.chunks_exact_mut(g.h * g.w))
    {
        for (r, line) in dst.chunks_exact_mut(g.w).enumerate() {
            let at = (r + g.ph) * wp + g.pw;
            copy_row(line, &src[at..at + g.w]);
        }
    }
}

/// The adjoint of [`im2col`] on one whole image (tests).
#[cfg(test)]
fn col2im(g: &Geometry, col: &[f32]) -> Vec<f32> {
    let [hp, wp] = g.padded();
    let mut acc = vec![0.0; g.c * hp * wp];
    col2im_rows(g, col, 0..g.oh, &mut acc);
    let mut dx = Vec::with_capacity(g.image());
    unpad_image(g, &acc, &mut dx.spare_capacity_mut()[..g.image()]);
    // SAFETY: `unpad_image` wrote all `g.image()` floats.
    unsafe { dx.set_len(g.image()) };
    dx
}

/// A row-major matrix operand for [`matmul`]: its elements, rows, columns, the distance between
/// consecutive stored rows, and whether it is read transposed (then `rows × cols` is the shape
/// after transposition, and the stored matrix is `cols × rows`).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    stride: usize,
    transposed: bool,
}

impl<'a> Operand<'a> {
    fn plain(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: cols,
            transposed: false,
        }
    }

    fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: rows,
            transposed: true,
        }
    }

    /// The same operand with stored rows `stride` floats apart (a block of a wider matrix).
    fn with_stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// (column stride, row stride) of the operand as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.stride as isize, 1)
        } else {
            (1, self.stride as isize)
        }
    }

    /// Floats from the first element read to one past the last.
    fn span(&self) -> usize {
        let (outer, inner) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        assert!(inner <= self.stride, "matmul: rows overlap");
        (outer - 1) * self.stride + inner
    }
}

/// `dst[m, n] = a[m, k] · b[k, n]` (`accumulate = false`) or `dst += a · b`, with `dst`
/// row-major and its rows `dst_stride` floats apart.
fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: Operand,
    b: Operand,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    // SAFETY: the view only loses the knowledge that `dst` is initialised; `matmul_into` writes
    // nothing but floats through it, so `dst` stays initialised.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    matmul_into(dst, dst_stride, a, b, accumulate, par);
}

/// `dst[m, n] = a[m, k] · b[k, n]` into memory that need not be initialised, or `dst += a · b`
/// (`accumulate`), where `dst` must be initialised. gemm 0.19 does not read `dst` when told not
/// to accumulate: `read_dst = false` zeroes `alpha`, and every kernel path then writes
/// `beta·(a·b)` without reading. So outputs need no zero-filling first (the zeroed allocations
/// were 2.2% of the ResNet-8 step at B = 128, `perf`).
fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
    a: Operand,
    b: Operand,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "matmul: inner dimensions {k} and {} differ",
        b.rows
    );
    assert!(m > 0 && n > 0 && k > 0 && n <= dst_stride);
    assert!(
        dst.len() >= (m - 1) * dst_stride + n
            && a.data.len() >= a.span()
            && b.data.len() >= b.span()
    );
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    // SAFETY: the asserts above keep every index gemm forms (row < m, col < n, inner < k, with
    // the strides just computed) inside the three slices; `dst` is borrowed mutably and alone,
    // and gemm reads it only when accumulating, where the callers have initialised it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_stride as isize,
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
    /// Per-thread zero-bordered copy of one input image for [`im2col_rows`].
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread padded input gradient of one image for [`col2im_rows`].
    static ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch slice of `len` floats from `key` (contents unspecified: callers
/// overwrite it).
///
/// The buffer is taken out of the thread-local for the duration of `f`, not borrowed: `f` runs
/// a GEMM that may spread over the rayon pool, and a thread waiting in it can steal another conv
/// task and come back here (re-entrancy). That nested call then finds the slot empty and uses a
/// buffer of its own; whichever finishes last leaves its buffer for the next call.
fn with_scratch<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = key.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    key.with(|cell| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` deterministic values in [−1.55, 1.55), a different sequence for each multiplier `m`.
    fn fill(n: usize, m: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * m) % 1009) as f32 / 1009.0 - 0.5) * 3.1)
            .collect()
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
        let back = col2im(&g, &c);
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

    /// The direct kernels give im2col + GEMM's outputs (to rounding) on the shapes they take,
    /// and AVX-512's the same bits as AVX2's: every channel-block tail (O = 13, 5, 8, 16, 9 leave
    /// 1, 5, 2, 4, 3 of AVX2's 6 and 5, 5, 0, 0, 1 of AVX-512's 8), non-square kernels, padding
    /// and none, rows of 16 to 48 pixels, planes of an odd number of 16-pixel vectors (AVX-512's
    /// last run of one: 15 rows of 16); on AVX-512, rows ending in a masked vector of 14 or 12
    /// pixels (14×14, and the CNN's first layer, 28×28 at 5×5). It is refused for rows ending
    /// in fewer pixels (8×8) or not whole 16-pixel tiles on AVX2, fewer than 3 output channels,
    /// stride 2 and 1×1, and everywhere on a CPU without AVX2 and FMA.
    #[test]
    fn direct_forward_matches_im2col() {
        let cases: [DirectCase; _] = [
            (2, 3, 16, 16, 13, [3, 3], 1, [1, 1], BOTH),
            (3, 4, 18, 20, 5, [3, 5], 1, [0, 0], BOTH),
            (2, 2, 32, 30, 8, [3, 3], 1, [1, 2], BOTH),
            (1, 16, 32, 32, 16, [3, 3], 1, [1, 1], BOTH),
            (2, 3, 16, 48, 9, [1, 3], 1, [0, 1], BOTH),
            (2, 3, 17, 16, 5, [3, 3], 1, [0, 1], BOTH),
            (2, 4, 14, 14, 4, [3, 3], 1, [1, 1], AVX512),
            (3, 1, 28, 28, 10, [5, 5], 1, [2, 2], AVX512),
            (2, 4, 8, 8, 4, [3, 3], 1, [1, 1], NONE),
            (2, 4, 16, 16, 2, [3, 3], 1, [1, 1], NONE),
            (2, 4, 32, 32, 4, [3, 3], 2, [1, 1], NONE),
            (2, 4, 16, 16, 4, [1, 1], 1, [0, 0], NONE),
        ];
        let mut outputs = std::collections::HashMap::new();
        each_direct_case(&cases, direct_plan, |g, case, plan| {
            let x = fill(g.n * g.image(), 7919);
            let weight = fill(g.o * g.k(), 104729);
            let ours = forward_with(g, &x, &weight, Some(plan));
            let im2col = forward_with(g, &x, &weight, None);
            assert_close_to(case, "y", &ours, &im2col);
            assert_same_bits_on_every_isa(&mut outputs, g, case, ours);
        });
    }

    /// The input gradient through the direct kernel (the forward of the transposed, flipped
    /// convolution) gives GEMM + col2im's (to rounding), the same bits on AVX2 and AVX-512, with
    /// or without the weight gradient, which stays bit for bit the same. Cases: every AVX2
    /// channel-block tail of the gradient's C output channels (C = 3, 13, 5, 16, 8 leave 3, 1,
    /// 5, 4, 2), non-square kernels, padding 0 to kernel − 1 (the gradient padded by kernel − 1
    /// to 0), rows of 16 to 48 pixels, on AVX-512 14-pixel rows (the CNN's second layer). It is
    /// refused for stride 2, padding ≥ the kernel, input rows that are not whole 16-pixel
    /// vectors on AVX2, a 1-channel input, and 1×1.
    #[test]
    fn direct_input_gradient_matches_col2im() {
        let cases: [DirectCase; _] = [
            (2, 3, 16, 16, 13, [3, 3], 1, [1, 1], BOTH),
            (2, 13, 16, 32, 4, [3, 3], 1, [1, 1], BOTH),
            (3, 5, 20, 16, 7, [3, 5], 1, [0, 2], BOTH),
            (1, 16, 32, 32, 16, [3, 3], 1, [2, 2], BOTH),
            (2, 8, 16, 48, 9, [1, 3], 1, [0, 1], BOTH),
            (2, 5, 15, 16, 6, [3, 3], 1, [1, 1], BOTH),
            (2, 4, 32, 32, 4, [3, 3], 2, [1, 1], NONE),
            (2, 4, 16, 16, 4, [3, 3], 1, [3, 3], NONE),
            (2, 4, 14, 14, 4, [3, 3], 1, [1, 1], AVX512),
            (2, 32, 14, 14, 6, [5, 5], 1, [2, 2], AVX512),
            (2, 1, 16, 16, 4, [3, 3], 1, [1, 1], NONE),
            (2, 4, 16, 16, 4, [1, 1], 1, [0, 0], NONE),
        ];
        let mut outputs = std::collections::HashMap::new();
        each_direct_case(&cases, direct_input_gradient, |g, case, plan| {
            let direct = DirectGradients {
                dx: Some(plan),
                dw: None,
            };
            let ours = check_direct_gradient(g, case, direct);
            assert_same_bits_on_every_isa(&mut outputs, g, case, ours);
        });
    }

    /// The weight gradient through the direct kernel gives im2col + GEMM's (to rounding), with
    /// or without the input gradient, which stays bit for bit the same. Cases: every tail of
    /// AVX2's 4-channel blocks (O = 13, 6, 7, 16, 3, 32 leave 1, 2, 3, 4, 3, 4) and of AVX-512's
    /// 8 (5, 6, 7, 8, 3, 8), kernels 1, 3 and 5 tall, padding and none, rows of 16 to 48 pixels,
    /// 17 images (tasks of 3, each summing its images' gradients). It is refused for 16-pixel
    /// rows with over 32 output channels (on AVX-512 with any), 8-pixel rows, rows not whole
    /// vectors (40 pixels on AVX-512), kernels not 3 wide, stride 2 and 1×1.
    #[test]
    fn direct_weight_gradient_matches_im2col() {
        let cases: [DirectCase; _] = [
            (17, 3, 32, 32, 13, [3, 3], 1, [1, 1], BOTH),
            (3, 5, 20, 48, 6, [5, 3], 1, [2, 1], BOTH),
            (3, 5, 20, 40, 6, [5, 3], 1, [2, 1], AVX2),
            (2, 4, 16, 34, 7, [3, 3], 1, [0, 0], BOTH),
            (1, 16, 32, 32, 16, [3, 3], 1, [1, 1], BOTH),
            (2, 2, 8, 48, 3, [1, 3], 1, [0, 1], BOTH),
            (2, 4, 16, 16, 32, [3, 3], 1, [1, 1], AVX2),
            (2, 4, 16, 16, 33, [3, 3], 1, [1, 1], NONE),
            (2, 4, 8, 8, 4, [3, 3], 1, [1, 1], NONE),
            (2, 4, 32, 36, 4, [3, 3], 1, [1, 1], NONE),
            (2, 4, 32, 32, 4, [3, 5], 1, [1, 2], NONE),
            (2, 4, 64, 64, 4, [3, 3], 2, [1, 1], NONE),
            (2, 4, 32, 32, 4, [1, 1], 1, [0, 0], NONE),
        ];
        each_direct_case(&cases, direct_weight_gradient, |g, case, plan| {
            let direct = DirectGradients {
                dx: None,
                dw: Some(plan),
            };
            check_direct_gradient(g, case, direct);
        });
    }

    /// (N, C, H, W, O, [kh, kw], stride, [ph, pw], the kernels that take it).
    type DirectCase = (
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        usize,
        [usize; 2],
        &'static [Isa],
    );

    /// Taken by every direct kernel.
    const BOTH: &[Isa] = &[Isa::Avx2, Isa::Avx512];
    /// Taken by none.
    const NONE: &[Isa] = &[];
    /// Taken by the AVX2 kernels only.
    const AVX2: &[Isa] = &[Isa::Avx2];
    /// Taken by the AVX-512 kernels only.
    const AVX512: &[Isa] = &[Isa::Avx512];

    /// Runs `check` (geometry, the case's name, plan) on every case `plan` takes, for every
    /// direct kernel the CPU has (AVX-512's first), after asserting that each takes exactly the
    /// cases marked so.
    fn each_direct_case<P>(
        cases: &[DirectCase],
        plan: impl Fn(&Geometry, Isa) -> Option<P>,
        mut check: impl FnMut(&Geometry, &str, P),
    ) {
        for isa in direct_conv::available() {
            for &(n, c, h, w, o, [kh, kw], s, pad, takes) in cases {
                let g = Geometry::new(&[n, c, h, w], &[o, c, kh, kw], [s, s], pad);
                let case = format!(
                    "{}: {n}×{c}×{h}×{w} → {o}, {kh}×{kw}, stride {s}, pad {pad:?}",
                    isa.name()
                );
                let taken = plan(&g, isa);
                assert_eq!(taken.is_some(), takes.contains(&isa), "{case}");
                if let Some(taken) = taken {
                    check(&g, &case, taken);
                }
            }
        }
    }

    /// Checks the one gradient `direct` computes through [`direct_conv`] on deterministic
    /// inputs: close (to rounding) to the one through `col`; the same bits whether or not the
    /// other gradient is computed too; and the other gradient, through `col` both ways, the same
    /// bits with and without `direct`. Returns the direct gradient.
    fn check_direct_gradient(g: &Geometry, case: &str, direct: DirectGradients) -> Vec<f32> {
        let x = fill(g.n * g.image(), 7919);
        let weight = fill(g.o * g.k(), 104729);
        let dy = fill(g.n * g.o * g.p(), 31337);
        let of_dx = direct.dx.is_some();
        let (what, other) = if of_dx { ("dx", "dW") } else { ("dW", "dx") };
        // (the checked gradient, the other), with the other computed or not.
        let run = |with_other: bool, direct| {
            let (want_dx, want_dw) = if of_dx {
                (true, with_other)
            } else {
                (with_other, true)
            };
            let (dx, dw) = backward_with(g, &x, &weight, &dy, want_dx, want_dw, direct);
            if of_dx { (dx, dw) } else { (dw, dx) }
        };
        let none = DirectGradients { dx: None, dw: None };
        let (ours, ours_other) = run(true, direct);
        let (col, col_other) = run(true, none);
        let (alone, no_other) = run(false, direct);
        let (ours, col) = (ours.expect(what), col.expect(what));
        assert!(
            ours_other.is_some() && ours_other == col_other,
            "{case}: {other} changed"
        );
        assert!(
            no_other.is_none() && alone == Some(ours.clone()),
            "{case}: {what} alone"
        );
        assert_close_to(case, what, &ours, &col);
        ours
    }

    /// `ours` is the same bits as the first output recorded for `g` (by another ISA's kernels).
    fn assert_same_bits_on_every_isa(
        outputs: &mut std::collections::HashMap<String, Vec<f32>>,
        g: &Geometry,
        case: &str,
        ours: Vec<f32>,
    ) {
        let first = outputs.entry(format!("{g:?}")).or_insert(ours.clone());
        assert!(*first == ours, "{case}: not the same bits on every ISA");
    }

    /// `ours` equals `reference` to within 1e-5 of the reference's largest magnitude.
    fn assert_close_to(case: &str, what: &str, ours: &[f32], reference: &[f32]) {
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(ours.len(), reference.len(), "{case}: {what} length");
        for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "{case}: {what}[{i}] {a} against {b}"
            );
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
