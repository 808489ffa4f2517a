//! Seeded augmentation: zero-pad, random crop back to the original size, random horizontal
//! flip. The randomness of a sample depends only on `(seed, epoch, sample index)`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::sampler::{STREAM_AUGMENT, derive_rng};

/// Augmentation applied to training images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// No augmentation (MNIST, evaluation).
    #[default]
    None,
    /// Pad `pad` zero pixels on every side, crop a random window of the original size, flip
    /// horizontally with probability 1/2 (the standard CIFAR-10 recipe uses `pad = 4`).
    CropFlip {
        /// Padding in pixels on each side.
        pad: usize,
    },
}

/// The random choices for one sample: crop origin in the padded image and flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropFlipParams {
    /// Crop row offset in the padded image, `0..=2·pad`.
    pub dy: usize,
    /// Crop column offset in the padded image, `0..=2·pad`.
    pub dx: usize,
    /// Whether to mirror the crop left-right.
    pub flip: bool,
}

impl CropFlipParams {
    /// Draws the parameters of sample `index` in `epoch` for padding `pad`.
    pub fn draw(pad: usize, seed: u64, epoch: u32, index: u64) -> CropFlipParams {
        let mut rng = derive_rng(seed, epoch, STREAM_AUGMENT, index);
        CropFlipParams {
            dy: rng.random_range(0..=2 * pad),
            dx: rng.random_range(0..=2 * pad),
            flip: rng.random_bool(0.5),
        }
    }
}

impl Augment {
    /// Writes the augmented CHW image `src` (`c×h×w`) of sample `index` into `out` (same
    /// size). Deterministic in `(seed, epoch, index)`.
    pub fn apply(
        &self,
        src: &[u8],
        shape: [usize; 3],
        seed: u64,
        epoch: u32,
        index: u64,
        out: &mut [u8],
    ) {
        match *self {
            Augment::None => out.copy_from_slice(src),
            Augment::CropFlip { pad } => {
                let p = CropFlipParams::draw(pad, seed, epoch, index);
                crop_flip(src, shape, pad, p, out);
            }
        }
    }
}

/// Crops the `h×w` window at `(dy, dx)` of `src` zero-padded by `pad`, mirrored if `flip`.
/// Panics if the slices are not `c·h·w` long.
pub fn crop_flip(src: &[u8], shape: [usize; 3], pad: usize, p: CropFlipParams, out: &mut [u8]) {
    let [c, h, w] = shape;
    assert_eq!(src.len(), c * h * w, "crop_flip: source length");
    assert_eq!(out.len(), c * h * w, "crop_flip: output length");
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let oplane = &mut out[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = (y + p.dy).wrapping_sub(pad);
            let orow = &mut oplane[y * w..(y + 1) * w];
            if sy >= h {
                orow.fill(0);
                continue;
            }
            let row = &plane[sy * w..(sy + 1) * w];
            for (x, o) in orow.iter_mut().enumerate() {
                let cx = if p.flip { w - 1 - x } else { x };
                let sx = (cx + p.dx).wrapping_sub(pad);
                *o = if sx < w { row[sx] } else { 0 };
            }
        }
    }
}
