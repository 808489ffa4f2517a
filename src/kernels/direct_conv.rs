//! A direct convolution for the forward pass of stride-1 layers whose output rows are whole
//! multiples of 16 pixels (ResNet's and WRN's 3×3 layers at 32×32 and 16×16): each tile of up to
//! 6 output channels × 16 output pixels is summed in AVX2 registers over every input channel and
//! kernel tap, reading the zero-padded input rows in place. Unlike im2col + GEMM there is no
//! `col` to write and no operand for gemm to pack, which is what keeps narrow layers, few
//! channels deep, from running at GEMM speed (issue 19: the small-batch conv rows).
//!
//! One image's forward, one thread, best of 9 interleaved rounds, against im2col + gemm 0.19 as in
//! `im2col.rs` (AMD EPYC, throwaway harness, two runs): 3 → 16 channels at 32×32 ×1.5–1.8,
//! 16 → 16 ×1.9–2.6, 16 → 64 ×1.2, 64 → 64 ×1.3; 32 → 32 at 16×16 ×1.6–1.7, 128 → 128 ×1.16.
//! At 8×8 (one 8-pixel vector per row) it was ×1.07 for 64 channels and ×0.82 for 256, so rows
//! shorter than 16 pixels keep im2col, as do CPUs without AVX2 and FMA. The ResNet-8 training
//! step at B = 128: ×1.05 by the median of 12 back-to-back pairs (`bench/RESULTS.md`).
//!
//! It also computes the input gradient of those layers, as the forward of the transposed
//! convolution (`im2col.rs`, `Geometry::transposed`), and [`WeightGradPlan`] the weight gradient
//! of stride-1 layers with 3-wide kernels and rows of 32 pixels or more, or of 16 with at most 32
//! output channels (ResNet-8's first two stages, WRN-16-4's first), summed in 8 pixel lanes per
//! (channel, tap) over each image.
//!
//! Each output is summed in a fixed order (input channel, then kernel row, then column), so the
//! result does not depend on the thread count.
//!
//! `NOISESCALE_DIRECT_CONV=off` sends every convolution through im2col + GEMM instead, to compare
//! the two on a CPU where it has not been measured: the kernel is AVX2 (8 floats a vector), while
//! gemm runs 16-float AVX-512 kernels on CPUs that have them.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The environment variable that turns the direct kernel off (`off`).
pub const DIRECT_CONV_ENV: &str = "NOISESCALE_DIRECT_CONV";

/// Whether convolutions use the direct kernel where their shapes allow: the CPU has AVX2 and FMA
/// and [`DIRECT_CONV_ENV`] is not `off` (read once per process).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        cpu_has_avx2_fma() && std::env::var(DIRECT_CONV_ENV).map_or(true, |v| v != "off")
    })
}

/// Output channels per register tile: 6 channels × 2 vectors = 12 accumulators, which with the
/// two input vectors and a broadcast weight fit AVX2's 16 registers.
const CHANNELS: usize = 6;

/// Output pixels per register tile: two 8-float vectors.
const PIXELS: usize = 16;

/// The shapes of one image's stride-1 convolution over its zero-padded input `[C, hp, wp]`,
/// producing `[O, oh, ow]` with `oh = hp − kh + 1`, `ow = wp − kw + 1`: what both kernels
/// ([`Plan`], [`WeightGradPlan`]) walk.
#[derive(Debug, Clone, Copy)]
struct Shape {
    c: usize,
    hp: usize,
    wp: usize,
    o: usize,
    kh: usize,
    kw: usize,
}

impl Shape {
    /// These shapes, or `None` for empty ones or a kernel larger than the padded input.
    fn new(c: usize, [hp, wp]: [usize; 2], o: usize, [kh, kw]: [usize; 2]) -> Option<Self> {
        let fits = c > 0 && o > 0 && kh <= hp && kw <= wp;
        fits.then_some(Self {
            c,
            hp,
            wp,
            o,
            kh,
            kw,
        })
    }

    fn oh(&self) -> usize {
        self.hp - self.kh + 1
    }

    fn ow(&self) -> usize {
        self.wp - self.kw + 1
    }

    /// Weights per output channel: `C·kh·kw`.
    fn taps(&self) -> usize {
        self.c * self.kh * self.kw
    }
}

/// The forward of one image's stride-1 convolution (see [`Shape`]) through the direct kernel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan(Shape);

impl Plan {
    /// The plan for these shapes, or `None` where the direct kernel does not apply: output rows
    /// not a whole number of 16-pixel tiles, or not [`enabled`].
    pub(super) fn new(c: usize, padded: [usize; 2], o: usize, kernel: [usize; 2]) -> Option<Self> {
        let shape = Shape::new(c, padded, o, kernel)?;
        (shape.ow().is_multiple_of(PIXELS) && enabled()).then_some(Self(shape))
    }

    /// `weight [O, C, kh, kw]` regrouped as blocks of [`CHANNELS`] output channels, each
    /// `[C, kh, kw, channels]`, so that a tile's weights for one tap are adjacent.
    pub(super) fn pack_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (o, taps) = (self.0.o, self.0.taps());
        assert_eq!(weight.len(), o * taps, "direct conv: weight size");
        let mut packed = Vec::with_capacity(weight.len());
        for o0 in (0..o).step_by(CHANNELS) {
            let block = CHANNELS.min(o - o0);
            for t in 0..taps {
                for b in 0..block {
                    packed.push(weight[(o0 + b) * taps + t]);
                }
            }
        }
        packed
    }

    /// Writes all of `y [O, oh, ow]` from the padded image and [`Plan::pack_weight`]'s weights.
    pub(super) fn forward_image(&self, padded: &[f32], packed: &[f32], y: &mut [MaybeUninit<f32>]) {
        let p = &self.0;
        assert!(
            padded.len() >= p.c * p.hp * p.wp
                && packed.len() == p.o * p.taps()
                && y.len() == p.o * p.oh() * p.ow(),
            "direct conv: buffer sizes"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked AVX2 and FMA (`enabled`); the assert above and `tile`'s comment
        // bound every access.
        unsafe {
            avx2::forward_image(p, padded, packed, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("Plan::new returns None off x86-64")
    }
}

/// Output channels per register tile of the weight gradient: 4 channels × 3 kernel columns = 12
/// accumulators, which with the three shifted input vectors and one `dy` vector fill AVX2's 16
/// registers.
const GRAD_CHANNELS: usize = 4;

/// Where [`WeightGradPlan`] applies: rows of at least this many pixels, …
const MIN_GRAD_ROW: usize = 32;

/// … or of 16 pixels with at most this many output channels. Elsewhere the lanes' final sums
/// weigh more against the FMAs, or gemm is more efficient, and im2col + GEMM was as fast or
/// faster. At B = 128 on 2 threads (AMD EPYC, interleaved, best of 7), direct against im2col:
/// ×1.70 for 16 → 16, ×1.16 for 16 → 64 and ×1.09 for 64 → 64 at 32×32; ×1.11 for 32 → 32 but
/// ×0.90 for 128 → 128 at 16×16; ×0.71 for 64 → 64 at 8×8 (an earlier, noisier run).
const MAX_GRAD_CHANNELS_AT_16: usize = 32;

/// The weight gradient of one image's stride-1 convolution with 3-wide kernels, over its
/// zero-padded input `[C, hp, wp]` and output gradient `[O, oh, ow]`: `dwᵀ[(c, i, j), o] +=
/// Σ_{y, x} dy[o, y, x] · padded[c, y + i, x + j]`, summed in 8 pixel lanes, each tap's lanes
/// then added in a fixed order. Unlike im2col + GEMM, nothing is unfolded or packed.
#[derive(Debug, Clone, Copy)]
pub(super) struct WeightGradPlan(Shape);

impl WeightGradPlan {
    /// The plan for these shapes, or `None` where the kernel does not apply: kernels not 3 wide,
    /// output rows not a whole number of 8-pixel vectors, shorter than [`MIN_GRAD_ROW`] and not
    /// 16 pixels with at most [`MAX_GRAD_CHANNELS_AT_16`] output channels, or not [`enabled`].
    pub(super) fn new(c: usize, padded: [usize; 2], o: usize, kernel: [usize; 2]) -> Option<Self> {
        let shape = Shape::new(c, padded, o, kernel)?;
        let ow = shape.ow();
        let long = ow >= MIN_GRAD_ROW || (ow == 16 && o <= MAX_GRAD_CHANNELS_AT_16);
        let rows = long && ow.is_multiple_of(8);
        (shape.kw == 3 && rows && enabled()).then_some(Self(shape))
    }

    /// Adds one image's weight gradient onto `dw_t [C·kh·3, O]` (the layout im2col + GEMM sums).
    pub(super) fn accumulate_image(&self, padded: &[f32], dy: &[f32], dw_t: &mut [f32]) {
        let p = &self.0;
        assert!(
            padded.len() >= p.c * p.hp * p.wp
                && dy.len() == p.o * p.oh() * p.ow()
                && dw_t.len() == p.o * p.taps(),
            "direct conv weight gradient: buffer sizes"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked AVX2 and FMA (`enabled`); the assert above and `grad_tile`'s
        // comment bound every access.
        unsafe {
            avx2::accumulate_weight_grad(p, padded, dy, dw_t)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("WeightGradPlan::new returns None off x86-64")
    }
}

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{CHANNELS, GRAD_CHANNELS, PIXELS, Shape};
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

    /// Every (input channel, kernel row, block of output channels) of one image's weight
    /// gradient.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn accumulate_weight_grad(
        p: &Shape,
        padded: &[f32],
        dy: &[f32],
        dw_t: &mut [f32],
    ) {
        for c in 0..p.c {
            for i in 0..p.kh {
                for o0 in (0..p.o).step_by(GRAD_CHANNELS) {
                    let at = (padded.as_ptr(), dy.as_ptr(), c, i, o0);
                    let out = &mut dw_t[(c * p.kh + i) * 3 * p.o..][..3 * p.o];
                    // SAFETY: see `grad_tile`.
                    unsafe {
                        match GRAD_CHANNELS.min(p.o - o0) {
                            4 => grad_tile::<4>(p, at, out),
                            3 => grad_tile::<3>(p, at, out),
                            2 => grad_tile::<2>(p, at, out),
                            _ => grad_tile::<1>(p, at, out),
                        }
                    }
                }
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
    unsafe fn grad_tile<const B: usize>(
        p: &Shape,
        (padded, dy, c, i, o0): (*const f32, *const f32, usize, usize, usize),
        out: &mut [f32],
    ) {
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
    fn lane_sum(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }
}
