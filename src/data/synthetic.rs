//! Generated data sets for fast tests: each class has a fixed random prototype image and a
//! sample is its prototype plus bounded uniform noise, so classes are separable by design.

use rand::Rng;

use super::sampler::derive_rng;
use super::{Dataset, Split};

/// Stream tag of the prototype RNG.
const STREAM_PROTO: u64 = 10;
/// Stream tag of the sample RNG (train and test use different indices).
const STREAM_SAMPLE: u64 = 11;
/// Largest absolute noise added to a prototype pixel.
pub const NOISE: i16 = 24;

/// Training images of [`default_split`].
pub const DEFAULT_TRAIN: usize = 2048;
/// Test images of [`default_split`].
pub const DEFAULT_TEST: usize = 512;

/// Synthetic data shaped like CIFAR-10 (10 classes, 3×32×32), seed 0: what
/// `load(DatasetKind::Synthetic, _)` returns.
pub fn default_split() -> Split {
    synthetic(DEFAULT_TRAIN, DEFAULT_TEST, 10, 3, 32, 32, 0)
}

/// Generates `n_train`/`n_test` images of `channels×height×width` in `classes` classes
/// (labels cycle through the classes, so the sets are balanced). Prototype pixels are
/// uniform in `0..=255`; noise is uniform in `-NOISE..=NOISE`, clipped to `u8`.
/// Panics if `classes` is not in `1..=256`.
pub fn synthetic(
    n_train: usize,
    n_test: usize,
    classes: usize,
    channels: usize,
    height: usize,
    width: usize,
    seed: u64,
) -> Split {
    assert!((1..=256).contains(&classes), "classes must be in 1..=256");
    let len = channels * height * width;
    let mut rng = derive_rng(seed, 0, STREAM_PROTO, 0);
    let protos: Vec<Vec<u8>> = (0..classes)
        .map(|_| (0..len).map(|_| rng.random()).collect())
        .collect();
    let make = |n: usize, first: u64, name: &str| {
        let mut rng = derive_rng(seed, 0, STREAM_SAMPLE, first);
        let mut images = Vec::with_capacity(n * len);
        let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
        for &l in &labels {
            for &p in &protos[l as usize] {
                let v = p as i16 + rng.random_range(-NOISE..=NOISE);
                images.push(v.clamp(0, 255) as u8);
            }
        }
        Dataset {
            images,
            labels,
            channels,
            height,
            width,
            num_classes: classes,
            name: name.to_string(),
        }
    };
    Split {
        train: make(n_train, 0, "synthetic-train"),
        test: make(n_test, 1, "synthetic-test"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::data::*;

    // ---------------------------------------------------------------- synthetic

    #[test]
    fn synthetic_is_deterministic_and_separable() {
        let a = synthetic(400, 100, 5, 2, 6, 6, 9);
        assert_eq!(a, synthetic(400, 100, 5, 2, 6, 6, 9));
        assert_ne!(
            a.train.images,
            synthetic(400, 100, 5, 2, 6, 6, 10).train.images
        );
        assert_eq!(a.train.class_counts(), [80; 5]);
        assert_eq!(a.test.image_shape(), [2, 6, 6]);
        // Nearest class mean classifies every test image correctly.
        let l = a.train.image_len();
        let mut means = vec![vec![0f64; l]; 5];
        for i in 0..a.train.len() {
            let c = a.train.labels[i] as usize;
            for (m, &p) in means[c].iter_mut().zip(a.train.image(i)) {
                *m += p as f64 / 80.0;
            }
        }
        for i in 0..a.test.len() {
            let img = a.test.image(i);
            let dist = |m: &Vec<f64>| {
                m.iter()
                    .zip(img)
                    .map(|(a, &b)| (a - b as f64).powi(2))
                    .sum::<f64>()
            };
            let best = (0..5)
                .min_by(|&x, &y| dist(&means[x]).total_cmp(&dist(&means[y])))
                .unwrap();
            assert_eq!(best, a.test.labels[i] as usize);
        }
        let d = load(DatasetKind::Synthetic, Path::new("/nonexistent")).unwrap();
        assert_eq!(
            (d.train.len(), d.train.image_shape()),
            (synthetic::DEFAULT_TRAIN, [3, 32, 32])
        );
    }
}
