//! The direct kernels on AVX-512F (see the parent module).

use super::{CHANNELS_512, GradAt, PIXELS, Shape};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Every tile of the image. Each output row is cut into 16-pixel vectors, the last one
/// masked where the row is not a whole number of them; the plane's vectors, row after row,
/// are taken two at a time (which may lie on two rows), then one where the plane leaves
/// one, each for every block of channels, so that a run's input rows are still in L1 for
/// the next block.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn forward_image(
    p: &Shape,
    padded: &[f32],
    packed: &[f32],
    y: &mut [MaybeUninit<f32>],
) {
    let ow = p.ow();
    let per_row = ow.div_ceil(PIXELS);
    let vectors = p.oh() * per_row;
    // Vector `s`: (its first pixel in the padded plane, in the output plane; its lanes).
    let vector = |s: usize| {
        let (row, x0) = (s / per_row, s % per_row * PIXELS);
        let lanes = (ow - x0).min(PIXELS);
        let mask: __mmask16 = if lanes == PIXELS {
            !0
        } else {
            (1 << lanes) - 1
        };
        (row * p.wp + x0, row * ow + x0, mask)
    };
    for s in (0..vectors).step_by(2) {
        let run = (vectors - s).min(2);
        for o0 in (0..p.o).step_by(CHANNELS_512) {
            let w = packed[o0 * p.taps()..].as_ptr();
            let out = y[o0 * p.oh() * ow..].as_mut_ptr().cast::<f32>();
            let at = (padded.as_ptr(), w, out);
            let block = CHANNELS_512.min(p.o - o0);
            // SAFETY: see `tile`; the block sizes match the packing's.
            unsafe {
                if run == 2 {
                    tiles::<2>(block, p, at, [vector(s), vector(s + 1)])
                } else {
                    tiles::<1>(block, p, at, [vector(s)])
                }
            }
        }
    }
}

/// A vector of output pixels: its first pixel's offset in the padded input plane and in the
/// output plane, and its lanes (the first `k` of 16).
type Vector = (usize, usize, __mmask16);

/// [`tile`] for a block of `block` (1..=8) channels.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn tiles<const V: usize>(
    block: usize,
    p: &Shape,
    at: (*const f32, *const f32, *mut f32),
    vectors: [Vector; V],
) {
    // SAFETY: the caller's.
    unsafe {
        match block {
            8 => tile::<8, V>(p, at, vectors),
            7 => tile::<7, V>(p, at, vectors),
            6 => tile::<6, V>(p, at, vectors),
            5 => tile::<5, V>(p, at, vectors),
            4 => tile::<4, V>(p, at, vectors),
            3 => tile::<3, V>(p, at, vectors),
            2 => tile::<2, V>(p, at, vectors),
            _ => tile::<1, V>(p, at, vectors),
        }
    }
}

/// `B` output channels × `V` vectors of output pixels: `out` points at channel 0's output
/// plane, `w` at the block's packed weights.
///
/// Safety: a vector at output `(row, x0)` with `k` lanes covers `x0..x0 + k ≤ ow` of that
/// row; it reads input rows `row..row + kh` of each channel, columns `x0..x0 + k + kw − 1`,
/// inside the padded plane since `x0 + k ≤ ow = wp − kw + 1` and `row + kh − 1 ≤ hp − 1`
/// (the masked lanes are neither read nor written); writes channels `0..B` at
/// `out + b·oh·ow`, those `k` pixels.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn tile<const B: usize, const V: usize>(
    p: &Shape,
    (padded, w, out): (*const f32, *const f32, *mut f32),
    vectors: [Vector; V],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; B];
    let mut w = w;
    // SAFETY: the bounds in the doc comment above.
    unsafe {
        for c in 0..p.c {
            let plane = padded.add(c * p.hp * p.wp);
            for i in 0..p.kh {
                for j in 0..p.kw {
                    let at = i * p.wp + j;
                    let x: [__m512; V] = std::array::from_fn(|v| {
                        let (start, _, mask) = vectors[v];
                        _mm512_maskz_loadu_ps(mask, plane.add(start + at))
                    });
                    for (b, acc) in acc.iter_mut().enumerate() {
                        let wb = _mm512_set1_ps(*w.add(b));
                        for (acc, x) in acc.iter_mut().zip(&x) {
                            *acc = _mm512_fmadd_ps(wb, *x, *acc);
                        }
                    }
                    w = w.add(B);
                }
            }
        }
        let plane = p.oh() * p.ow();
        for (b, acc) in acc.iter().enumerate() {
            for (&(_, at, mask), acc) in vectors.iter().zip(acc) {
                _mm512_mask_storeu_ps(out.add(b * plane + at), mask, *acc);
            }
        }
    }
}

/// [`grad_tile`] for a block of `block` (1..=8) channels ([`super::GradTiles`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn grad_tiles(block: usize, p: &Shape, at: GradAt, out: &mut [f32]) {
    // SAFETY: the caller's.
    unsafe {
        match block {
            8 => grad_tile::<8>(p, at, out),
            7 => grad_tile::<7>(p, at, out),
            6 => grad_tile::<6>(p, at, out),
            5 => grad_tile::<5>(p, at, out),
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
/// Safety: reads input rows `i..i + oh` of channel `c`, columns `x..x + 18` for
/// `x + 16 ≤ ow = wp − 2`, so up to column `wp − 1`; reads `dy` channels `o0..o0 + B`, all
/// of their `oh·ow` pixels; `accumulate_image` checked the buffers' sizes.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn grad_tile<const B: usize>(p: &Shape, (padded, dy, c, i, o0): GradAt, out: &mut [f32]) {
    let (oh, ow) = (p.oh(), p.ow());
    let mut acc = [[_mm512_setzero_ps(); 3]; B];
    // SAFETY: the bounds in the doc comment above.
    unsafe {
        let plane = padded.add(c * p.hp * p.wp);
        for y in 0..oh {
            let line = plane.add((y + i) * p.wp);
            let grad = dy.add(o0 * oh * ow + y * ow);
            for x in (0..ow).step_by(16) {
                let x0 = _mm512_loadu_ps(line.add(x));
                let x1 = _mm512_loadu_ps(line.add(x + 1));
                let x2 = _mm512_loadu_ps(line.add(x + 2));
                for (b, acc) in acc.iter_mut().enumerate() {
                    let d = _mm512_loadu_ps(grad.add(b * oh * ow + x));
                    acc[0] = _mm512_fmadd_ps(d, x0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(d, x1, acc[1]);
                    acc[2] = _mm512_fmadd_ps(d, x2, acc[2]);
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

/// The 16 lanes of `v` added in a fixed order: the upper eight onto the lower, then as
/// [`super::avx2`]'s sum of eight.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
fn lane_sum(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    super::avx2::lane_sum(_mm256_add_ps(lo, hi))
}
