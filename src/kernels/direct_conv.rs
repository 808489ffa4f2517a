//! A direct convolution for the forward pass of stride-1 layers whose output rows are whole
//! multiples of 16 pixels (ResNet's and WRN's 3×3 layers at 32×32 and 16×16; on AVX-512 also
//! rows that end in a masked vector of 12 pixels or more, the CNN's 28×28 and 14×14): each tile of
//! output channels × pixels (AVX2: 6 × 16, two 8-float vectors; AVX-512: 8 × 32, two 16-float
//! vectors) is summed in registers over every input channel and kernel tap, reading the
//! zero-padded input rows in place. Unlike im2col + GEMM there is no `col` to write and no
//! operand for gemm to pack, which is what keeps narrow layers, few channels deep, from running
//! at GEMM speed (issue 19: the small-batch conv rows).
//!
//! AVX2, one image's forward, one thread, best of 9 interleaved rounds, against im2col + gemm
//! 0.19's AVX2 kernels (AMD EPYC without AVX-512, throwaway harness, two runs): 3 → 16 channels
//! at 32×32 ×1.5–1.8, 16 → 16 ×1.9–2.6, 16 → 64 ×1.2, 64 → 64 ×1.3; 32 → 32 at 16×16 ×1.6–1.7,
//! 128 → 128 ×1.16. At 8×8 (one 8-pixel vector per row) it was ×1.07 for 64 channels and ×0.82
//! for 256, so rows shorter than 16 pixels keep im2col, as do CPUs without AVX2 and FMA.
//!
//! On a CPU with AVX-512, gemm runs 16-float kernels, and the AVX2 tiles lost to them (B = 128, 2
//! threads, AMD EPYC Zen 5: ×0.49–0.96 forward on every layer above 3 channels), so there the
//! AVX-512 tiles run, rows not whole vectors ending in a masked one: ×1.05–1.74 forward,
//! ×1.15–1.87 input gradient, ×1.17–2.50 weight gradient against gemm's AVX-512 kernels on the
//! models' layers; the ResNet-8 step at B = 128 ×1.24–1.27, WRN-16-4's ×1.10–1.20, the CNN's
//! ×1.19–1.23 (`bench/RESULTS.md`).
//!
//! It also computes the input gradient of those layers, as the forward of the transposed
//! convolution (`im2col.rs`, `Geometry::transposed`), and `WeightGradPlan` the weight gradient
//! of stride-1 layers with 3-wide kernels and rows of 32 pixels or more, or on AVX2 of 16 with
//! at most 32 output channels (ResNet-8's first two stages, WRN-16-4's first), summed in vector
//! lanes per (channel, tap) over each image.
//!
//! Each output is summed in a fixed order (input channel, then kernel row, then column), so the
//! result does not depend on the thread count; the forward's order is the same on AVX2 and
//! AVX-512, so both give the same bits.
//!
//! [`DIRECT_CONV_ENV`] chooses: `off` sends every convolution through im2col + GEMM, `avx2` the
//! AVX2 kernels on a CPU with AVX-512, to compare them on a CPU where they have not been
//! measured.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The environment variable that chooses the direct kernels: `off` (im2col + GEMM for every
/// convolution), `avx2` (the AVX2 kernels even where AVX-512 is present), or `auto` (the widest
/// the CPU has; also when unset, empty or `on`, which meant the AVX2 kernels before AVX-512's).
pub const DIRECT_CONV_ENV: &str = "NOISESCALE_DIRECT_CONV";

/// The vector instructions a direct kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 and FMA: 8 floats a vector, 16 vector registers.
    Avx2,
    /// AVX-512F: 16 floats a vector, 32 vector registers.
    Avx512,
}

impl Isa {
    /// The name printed by `noisescale bench`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }

    /// Output channels per register tile of the forward kernel, the packing's block size.
    fn channels(self) -> usize {
        match self {
            Isa::Avx2 => CHANNELS,
            Isa::Avx512 => CHANNELS_512,
        }
    }

    /// Floats per vector: the weight gradient's rows must be whole vectors.
    fn lanes(self) -> usize {
        match self {
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }
}

/// What [`DIRECT_CONV_ENV`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Off,
    Auto,
    Avx2,
}

/// [`DIRECT_CONV_ENV`]'s value read, or an error naming the values it takes.
fn setting(value: Option<&str>) -> Result<Setting, String> {
    match value {
        None | Some("" | "auto" | "on") => Ok(Setting::Auto),
        Some("off") => Ok(Setting::Off),
        Some("avx2") => Ok(Setting::Avx2),
        Some(other) => Err(format!(
            "{DIRECT_CONV_ENV}={other:?} is not one of off, avx2, auto"
        )),
    }
}

/// The kernels a setting gives on a CPU with (AVX2 and FMA, AVX-512F).
fn choose(setting: Setting, [avx2, avx512]: [bool; 2]) -> Option<Isa> {
    match setting {
        Setting::Off => None,
        Setting::Avx2 => avx2.then_some(Isa::Avx2),
        Setting::Auto if avx512 && avx2 => Some(Isa::Avx512),
        Setting::Auto => avx2.then_some(Isa::Avx2),
    }
}

/// Checks [`DIRECT_CONV_ENV`] (the CLI calls it first, so that a misspelt value is an error
/// rather than silently the default).
pub fn check_env() -> anyhow::Result<()> {
    setting(std::env::var(DIRECT_CONV_ENV).ok().as_deref()).map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The direct kernels convolutions use where their shapes allow, `None` for im2col + GEMM
/// everywhere: the widest of AVX-512 and AVX2 the CPU has, as [`DIRECT_CONV_ENV`] allows (read
/// once per process; a value [`check_env`] refuses counts as `auto`).
pub fn kernels() -> Option<Isa> {
    static KERNELS: OnceLock<Option<Isa>> = OnceLock::new();
    *KERNELS.get_or_init(|| {
        let s = setting(std::env::var(DIRECT_CONV_ENV).ok().as_deref()).unwrap_or(Setting::Auto);
        choose(s, cpu_features())
    })
}

/// The direct kernels this CPU can run, widest first (tests run every one).
#[cfg(test)]
pub(super) fn available() -> Vec<Isa> {
    let [avx2, avx512] = cpu_features();
    [(avx512 && avx2, Isa::Avx512), (avx2, Isa::Avx2)]
        .into_iter()
        .filter_map(|(has, isa)| has.then_some(isa))
        .collect()
}

/// Output channels per register tile: 6 channels × 2 vectors = 12 accumulators, which with the
/// two input vectors and a broadcast weight fit AVX2's 16 registers.
const CHANNELS: usize = 6;

/// Output pixels per register tile: two 8-float vectors (AVX2), whose rows must be whole
/// multiples of it; on AVX-512, the pixels of one 16-float vector, two to a tile.
const PIXELS: usize = 16;

/// AVX-512 masks the last vector of a row that is not whole 16-pixel vectors: where it keeps
/// at least this many of its 16 lanes. B = 128, 2 threads (AMD EPYC, Zen 5), direct against
/// im2col + gemm's AVX-512 kernels: 14 of 16 (the CNN's 32 → 64 at 14×14, 5×5) ×1.47 forward,
/// ×1.41 input gradient; 12 (its 1 → 32 at 28×28) ×1.05 forward; 8 (8×8 planes) ×0.59–0.81.
const MIN_TAIL_LANES: usize = 12;

/// Output channels a plan needs: a tile of one channel loads as much as it computes (the input
/// gradient of a 1-channel first layer, ×0.41 on the Zen 5 above).
const MIN_CHANNELS: usize = 3;

/// Output channels per AVX-512 register tile: 8 channels × 2 vectors = 16 accumulators, with
/// the broadcast weight an operand of the FMA. Blocks of 8 divide the models' 16, 64, 128 and
/// 256 channels.
const CHANNELS_512: usize = 8;

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
pub(super) struct Plan(Shape, Isa);

impl Plan {
    /// The plan for these shapes on the kernels of `isa` (one the CPU has: [`kernels`]), or
    /// `None` where the direct kernel does not apply: fewer than [`MIN_CHANNELS`] output
    /// channels, or output rows not a whole number of 16-pixel vectors (AVX2) or ending in a
    /// vector of fewer than [`MIN_TAIL_LANES`] (AVX-512).
    pub(super) fn new(
        isa: Isa,
        c: usize,
        padded: [usize; 2],
        o: usize,
        kernel: [usize; 2],
    ) -> Option<Self> {
        let shape = Shape::new(c, padded, o, kernel)?;
        let tail = shape.ow() % PIXELS;
        let takes = match isa {
            Isa::Avx2 => tail == 0,
            Isa::Avx512 => tail == 0 || tail >= MIN_TAIL_LANES,
        };
        (takes && o >= MIN_CHANNELS).then_some(Self(shape, isa))
    }

    /// `weight [O, C, kh, kw]` regrouped as blocks of a tile's output channels ([`CHANNELS`]
    /// or [`CHANNELS_512`]), each `[C, kh, kw, channels]`, so that a tile's weights for one tap
    /// are adjacent.
    pub(super) fn pack_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (o, taps, channels) = (self.0.o, self.0.taps(), self.1.channels());
        assert_eq!(weight.len(), o * taps, "direct conv: weight size");
        let mut packed = Vec::with_capacity(weight.len());
        for o0 in (0..o).step_by(channels) {
            let block = channels.min(o - o0);
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
        // SAFETY: the plan's kernels are ones the CPU has (`new`'s contract);
        // the assert above and the tiles' comments bound every access.
        unsafe {
            match self.1 {
                Isa::Avx2 => avx2::forward_image(p, padded, packed, y),
                Isa::Avx512 => avx512::forward_image(p, padded, packed, y),
            }
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

/// … or, on AVX2, of 16 pixels with at most this many output channels. Elsewhere the lanes'
/// final sums weigh more against the FMAs, or gemm is more efficient, and im2col + GEMM was as
/// fast or faster. At B = 128 on 2 threads, interleaved, best of 5–7, direct against im2col:
/// - AVX2 against gemm's AVX2 kernels (AMD EPYC without AVX-512): ×1.70 for 16 → 16, ×1.16 for
///   16 → 64 and ×1.09 for 64 → 64 at 32×32; ×1.11 for 32 → 32 but ×0.90 for 128 → 128 at
///   16×16; ×0.71 for 64 → 64 at 8×8 (an earlier, noisier run);
/// - AVX-512 against gemm's AVX-512 kernels (AMD EPYC, Zen 5): ×2.05 for 16 → 16, ×1.78 for
///   16 → 64, ×1.17 for 64 → 64 at 32×32, but ×0.88 for 32 → 32 at 16×16: 16-pixel rows stay
///   with GEMM there.
const MAX_GRAD_CHANNELS_AT_16: usize = 32;

/// Output channels per AVX-512 register tile of the weight gradient: 8 channels × 3 kernel
/// columns = 24 accumulators, with the three shifted input vectors and one `dy` vector 28 of
/// the 32 registers.
const GRAD_CHANNELS_512: usize = 8;

/// The weight gradient of one image's stride-1 convolution with 3-wide kernels, over its
/// zero-padded input `[C, hp, wp]` and output gradient `[O, oh, ow]`: `dwᵀ[(c, i, j), o] +=
/// Σ_{y, x} dy[o, y, x] · padded[c, y + i, x + j]`, summed in the pixel lanes of a vector (8
/// or 16), each tap's lanes then added in a fixed order. Unlike im2col + GEMM, nothing is unfolded or packed.
#[derive(Debug, Clone, Copy)]
pub(super) struct WeightGradPlan(Shape, Isa);

impl WeightGradPlan {
    /// The plan for these shapes on the kernels of `isa` (one the CPU has: [`kernels`]), or
    /// `None` where the kernel does not apply: kernels not 3 wide, output rows not a whole
    /// number of vectors, shorter than [`MIN_GRAD_ROW`] and not 16 pixels with at most
    /// [`MAX_GRAD_CHANNELS_AT_16`] output channels on AVX2.
    pub(super) fn new(
        isa: Isa,
        c: usize,
        padded: [usize; 2],
        o: usize,
        kernel: [usize; 2],
    ) -> Option<Self> {
        let shape = Shape::new(c, padded, o, kernel)?;
        let ow = shape.ow();
        let short_ok = isa == Isa::Avx2 && ow == 16 && o <= MAX_GRAD_CHANNELS_AT_16;
        let long = ow >= MIN_GRAD_ROW || short_ok;
        let rows = long && ow.is_multiple_of(isa.lanes());
        (shape.kw == 3 && rows).then_some(Self(shape, isa))
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
        {
            let (tiles, channels): (GradTiles, _) = match self.1 {
                Isa::Avx2 => (avx2::grad_tiles, GRAD_CHANNELS),
                Isa::Avx512 => (avx512::grad_tiles, GRAD_CHANNELS_512),
            };
            // Blocks of output channels outermost: a block's `dy` stays in L1 across every
            // input channel and kernel row (AVX-512's 64 → 64 at 32×32: ×0.79 → ×1.17).
            for o0 in (0..p.o).step_by(channels) {
                for c in 0..p.c {
                    for i in 0..p.kh {
                        let at = (padded.as_ptr(), dy.as_ptr(), c, i, o0);
                        let out = &mut dw_t[(c * p.kh + i) * 3 * p.o..][..3 * p.o];
                        // SAFETY: the plan's kernels are ones the CPU has (`new`'s contract);
                        // the assert above and the `grad_tile`s' comments bound every access.
                        unsafe { tiles(channels.min(p.o - o0), p, at, out) }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("WeightGradPlan::new returns None off x86-64")
    }
}

/// One ISA's `grad_tile` for a block of `block` output channels: (block, shapes, (padded input,
/// `dy`, input channel, kernel row, first output channel), the rows of `dwᵀ` it adds to).
#[cfg(target_arch = "x86_64")]
type GradTiles = unsafe fn(usize, &Shape, GradAt, &mut [f32]);

/// Where a weight-gradient tile reads: (padded input, `dy`, input channel `c`, kernel row `i`,
/// first output channel `o0`).
#[cfg(target_arch = "x86_64")]
type GradAt = (*const f32, *const f32, usize, usize, usize);

/// Whether the CPU has (AVX2 and FMA, AVX-512F).
fn cpu_features() -> [bool; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        [has!("avx2") && has!("fma"), has!("avx512f")]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        [false, false]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

/// The same kernels on AVX-512F. The forward sums every output in the same order as
/// [`avx2`]'s, one FMA per tap, so both give the same bits; the weight gradient's lanes are 16
/// wide, so its sums are rounded differently from AVX2's (still in a fixed order).
#[cfg(target_arch = "x86_64")]
mod avx512;
