//! The direct kernels on AVX2 and FMA (see the parent module).

use super::{CHANNELS, GradAt, PIXELS, Shape};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Every tile of the image: rows, then 16-pixel columns, then channel blocks, so that one
/// tile's input rows are still in L1 for the next block of channels.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_image(
    p: &Shape,
    padded: &[f32],
    packed: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (p.oh(), p.ow());
    for row in 0..oh {
        for x0 in (0..ow).step_by(PIXELS) {
            for o0 in (0..p.o).step_by(CHANNELS) {
                let w = packed[o0 * p.taps()..].as_ptr();
                let out = y[o0 * oh * ow + row * ow + x0..].as_mut_ptr().cast::<f32>();
                let at = (padded.as_ptr(), w, out, row, x0);
                // SAFETY: see `tile`; the block sizes match the packing's.
                unsafe {
                    match CHANNELS.min(p.o - o0) {
                        6 => tile::<6>(p, at),
                        5 => tile::<5>(p, at),
                        4 => tile::<4>(p, at),
                        3 => tile::<3>(p, at),
                        2 => tile::<2>(p, at),
                        _ => tile::<1>(p, at),
                    }
                }
            }
        }
    }
}

/// `B` output channels × 16 pixels starting at output `(row, x0)`: `out` points at channel
/// 0's first pixel, `w` at the block's packed weights.
///
/// Safety: reads input rows `row..row + kh` of each channel, columns `x0..x0 + 16 + kw − 1`,
/// all inside the padded plane since `x0 + 16 ≤ ow = wp − kw + 1` and
/// `row + kh − 1 ≤ hp − 1`; writes channels `0..B` at `out + b·oh·ow`, pixels
/// `0..16`, inside `y` since `x0 + 16 ≤ ow`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const B: usize>(
    p: &Shape,
    (padded, w, out, row, x0): (*const f32, *const f32, *mut f32, usize, usize),
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; B];
    let mut w = w;
    // SAFETY: the bounds in the doc comment above.
    unsafe {
        for c in 0..p.c {
            let plane = padded.add(c * p.hp * p.wp);
            for i in 0..p.kh {
                let line = plane.add((row + i) * p.wp + x0);
                for j in 0..p.kw {
                    let lo = _mm256_loadu_ps(line.add(j));
                    let hi = _mm256_loadu_ps(line.add(j + 8));
                    for (b, acc) in acc.iter_mut().enumerate() {
                        let wb = _mm256_broadcast_ss(&*w.add(b));
                        acc[0] = _mm256_fmadd_ps(wb, lo, acc[0]);
                        acc[1] = _mm256_fmadd_ps(wb, hi, acc[1]);
                    }
                    w = w.add(B);
                }
            }
        }
        let plane = p.oh() * p.ow();
        for (b, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(b * plane), acc[0]);
            _mm256_storeu_ps(out.add(b * plane + 8), acc[1]);
        }
    }
}

/// [`grad_tile`] for a block of `block` (1..=4) channels ([`super::GradTiles`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn grad_tiles(block: usize, p: &Shape, at: GradAt, out: &mut [f32]) {
    // SAFETY: the caller's.
    unsafe {
        match block {
            4 => grad_tile::<4>(p, at, out),
            3 => grad_tile::<3>(p, at, out),
            2 => grad_tile::<2>(p, at, out),
            _ => grad_tile::<1>(p, at, out),
        }
    }
}

/// Adds `Σ_{y, x} dy[o0 + b, y, x] · padded[c, y + i, x + j]` onto `out[j·O + o0 + b]` for
/// `b < B`, `j < 3` (`out`: the rows of `dwᵀ` for input channel `c`, kernel row `i`).
///
/// Safety: reads input rows `i..i + oh` of channel `c`, columns `x..x + 10` for
/// `x + 8 ≤ ow = wp − 2`, so up to column `wp − 1`; reads `dy` channels `o0..o0 + B`, all of
/// their `oh·ow` pixels; `accumulate_image` checked the buffers' sizes.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn grad_tile<const B: usize>(p: &Shape, (padded, dy, c, i, o0): GradAt, out: &mut [f32]) {
    let (oh, ow) = (p.oh(), p.ow());
    let mut acc = [[_mm256_setzero_ps(); 3]; B];
    // SAFETY: the bounds in the doc comment above.
    unsafe {
        let plane = padded.add(c * p.hp * p.wp);
        for y in 0..oh {
            let line = plane.add((y + i) * p.wp);
            let grad = dy.add(o0 * oh * ow + y * ow);
            for x in (0..ow).step_by(8) {
                let x0 = _mm256_loadu_ps(line.add(x));
                let x1 = _mm256_loadu_ps(line.add(x + 1));
                let x2 = _mm256_loadu_ps(line.add(x + 2));
                for (b, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_loadu_ps(grad.add(b * oh * ow + x));
                    acc[0] = _mm256_fmadd_ps(d, x0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(d, x1, acc[1]);
                    acc[2] = _mm256_fmadd_ps(d, x2, acc[2]);
                }
            }
        }
    }
    for (b, taps) in acc.iter().enumerate() {
        for (j, &v) in taps.iter().enumerate() {
            out[j * p.o + o0 + b] += lane_sum(v);
        }
    }
}

/// The 8 lanes of `v` added in a fixed order (pairs, then pairs of pairs).
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn lane_sum(v: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}
