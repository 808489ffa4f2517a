//! The im2col + GEMM arithmetic of the flex convolution (`conv.rs`) on plain f32 slices: unfolding
//! images into columns and back, the GEMM calls, and one convolution's forward and backward passes.

use rayon::prelude::*;
use std::cell::RefCell;

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
pub(super) fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
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
pub(super) fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
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

/// `y [N, O, Ho, Wo]` for `x [N, C, H, W]`, `weight [O, C, kh, kw]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
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
pub(super) fn backward(
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

#[cfg(test)]
mod tests {
    use super::*;

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
