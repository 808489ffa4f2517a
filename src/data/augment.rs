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

#[cfg(test)]
mod tests {
    use crate::data::test_util::cifar;
    use crate::data::*;

    // ---------------------------------------------------------------- augmentation

    fn mirrored(src: &[u8], [c, h, w]: [usize; 3]) -> Vec<u8> {
        let mut out = vec![0; src.len()];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    out[(ch * h + y) * w + x] = src[(ch * h + y) * w + (w - 1 - x)];
                }
            }
        }
        out
    }

    #[test]
    fn crop_flip_geometry() {
        let ds = &cifar().train;
        let shape = ds.image_shape();
        let src = ds.image(0);
        let mut out = vec![0; src.len()];
        let p = |dy, dx, flip| CropFlipParams { dy, dx, flip };
        crop_flip(src, shape, 0, p(0, 0, false), &mut out);
        assert_eq!(out, src);
        crop_flip(src, shape, 0, p(0, 0, true), &mut out);
        assert_eq!(out, mirrored(src, shape));
        crop_flip(src, shape, 4, p(4, 4, false), &mut out);
        assert_eq!(out, src, "centre crop of the padded image is the image");
        // Shift down-right by 4: top rows and left columns are padding.
        crop_flip(src, shape, 4, p(0, 0, false), &mut out);
        for ch in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let o = out[(ch * 32 + y) * 32 + x];
                    let want = if y < 4 || x < 4 {
                        0
                    } else {
                        src[(ch * 32 + y - 4) * 32 + x - 4]
                    };
                    assert_eq!(o, want);
                }
            }
        }
        // Any crop/flip: non-zero values form a sub-multiset of the source's.
        for i in 0..50u64 {
            let q = CropFlipParams::draw(4, 9, 1, i);
            crop_flip(src, shape, 4, q, &mut out);
            let mut hist = [0i64; 256];
            src.iter().for_each(|&v| hist[v as usize] += 1);
            out.iter().for_each(|&v| hist[v as usize] -= 1);
            assert!(hist[1..].iter().all(|&h| h >= 0));
            // Pixels that come from outside the image are zero.
            let keep = (32 - q.dy.abs_diff(4)) * (32 - q.dx.abs_diff(4));
            assert!(out.iter().filter(|&&v| v != 0).count() <= 3 * keep);
        }
    }

    #[test]
    fn augmentation_deterministic_and_varied() {
        let a = Augment::CropFlip { pad: 4 };
        let ds = &cifar().train;
        let shape = ds.image_shape();
        let run = |seed, epoch, i: u64| {
            let mut out = vec![0; ds.image_len()];
            a.apply(ds.image(i as usize), shape, seed, epoch, i, &mut out);
            out
        };
        assert_eq!(run(1, 2, 3), run(1, 2, 3));
        let params: Vec<_> = (0..2000)
            .map(|i| CropFlipParams::draw(4, 1, 0, i))
            .collect();
        let flips = params.iter().filter(|p| p.flip).count();
        assert!((850..1150).contains(&flips), "{flips}");
        assert!(params.iter().all(|p| p.dy <= 8 && p.dx <= 8));
        assert!(params.iter().any(|p| p.dy == 0) && params.iter().any(|p| p.dx == 8));
        assert_ne!(
            (0..20)
                .map(|i| CropFlipParams::draw(4, 1, 0, i))
                .collect::<Vec<_>>(),
            (0..20)
                .map(|i| CropFlipParams::draw(4, 1, 1, i))
                .collect::<Vec<_>>()
        );
        let mut out = vec![0; ds.image_len()];
        Augment::None.apply(ds.image(5), shape, 1, 2, 5, &mut out);
        assert_eq!(out, ds.image(5));
        let n = Normalizer::from_dataset(ds);
        let b = assemble(ds, &[0, 5, 7], &n, a, 1, 2);
        assert_eq!(b.shape, [3, 3, 32, 32]);
        assert_eq!(b.images.len(), 3 * 3 * 32 * 32);
        assert_eq!(b.labels, [ds.labels[0], ds.labels[5], ds.labels[7]]);
    }
}
