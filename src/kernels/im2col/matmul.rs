//! The GEMM calls of [`super`]'s convolution (gemm 0.19 on row-major operands, into memory that
//! need not be initialised) and the per-thread scratch buffers they work in.

use std::cell::RefCell;
use std::mem::MaybeUninit;

/// A row-major matrix operand for [`matmul`]: its elements, rows, columns, the distance between
/// consecutive stored rows, and whether it is read transposed (then `rows × cols` is the shape
/// after transposition, and the stored matrix is `cols × rows`).
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) stride: usize,
    pub(super) transposed: bool,
}

impl<'a> Operand<'a> {
    pub(super) fn plain(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: cols,
            transposed: false,
        }
    }

    pub(super) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            stride: rows,
            transposed: true,
        }
    }

    /// The same operand with stored rows `stride` floats apart (a block of a wider matrix).
    pub(super) fn with_stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// (column stride, row stride) of the operand as read.
    pub(super) fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (self.stride as isize, 1)
        } else {
            (1, self.stride as isize)
        }
    }

    /// Floats from the first element read to one past the last.
    pub(super) fn span(&self) -> usize {
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
pub(super) fn matmul(
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
pub(super) fn matmul_into(
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
    pub(super) static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread zero-bordered copy of one input image for [`im2col_rows`].
    pub(super) static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread padded input gradient of one image for [`col2im_rows`].
    pub(super) static ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch slice of `len` floats from `key` (contents unspecified: callers
/// overwrite it).
///
/// The buffer is taken out of the thread-local for the duration of `f`, not borrowed: `f` runs
/// a GEMM that may spread over the rayon pool, and a thread waiting in it can steal another conv
/// task and come back here (re-entrancy). That nested call then finds the slot empty and uses a
/// buffer of its own; whichever finishes last leaves its buffer for the next call.
pub(super) fn with_scratch<R>(
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
