//! In-memory data sets (`u8` pixels), the train/test split, dispatch by kind, and the
//! per-channel normaliser.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, cifar, folder, idx, npy, synthetic};
use crate::units::Samples;

/// A labelled image set held as raw `u8` pixels, `N×C×H×W` (CHW within each image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Pixels of all images, image after image, each in CHW order.
    pub images: Vec<u8>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    /// Channels per image (1 for MNIST, 3 for CIFAR-10).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes (labels lie in `0..num_classes`).
    pub num_classes: usize,
    /// Human-readable name, e.g. `mnist-train`.
    pub name: String,
}

impl Dataset {
    /// Number of images, counted by their labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes (pixels) per image, `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[C, H, W]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Pixels of image `i` (CHW). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.images[i * l..(i + 1) * l]
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The number of images as a [`Samples`] count.
    pub fn samples(&self) -> Samples {
        Samples(self.len() as u64)
    }
}

/// A training set and its held-out test set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training images (shuffled, augmented, sharded by the sampler and loader).
    pub train: Dataset,
    /// Test images (evaluated in file order, never augmented).
    pub test: Dataset,
}

/// Which data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST in IDX format (gzip or raw).
    Mnist,
    /// CIFAR-10 in the binary `cifar-10-batches-bin` format.
    Cifar10,
    /// Generated, linearly separable data ([`synthetic`](super::synthetic::synthetic)).
    Synthetic,
    /// NumPy arrays: `train.npz`/`test.npz` (members `x`, `y`) or `{train,test}_{x,y}.npy`
    /// ([`npy`](super::npy)); the built-in models take `uint8` features and class indices.
    Npy,
    /// Image folders as torchvision's `ImageFolder` ([`folder`](super::folder)):
    /// `train/<class>/*.png|jpg` and `test/<class>/*`.
    ImageFolder,
    /// A token stream for language models ([`tokens`](super::tokens)): a text read as bytes or
    /// a file of `u16`/`u32` ids, cut into windows (`data.tokens`).
    Tokens,
    /// A data set given in code to the library's `Trainer` (not loadable from files).
    Custom,
}

impl DatasetKind {
    /// Training-set size of the published data set (MNIST's 60,000, CIFAR-10's 50,000), which
    /// plans a schedule where the files are not at hand; `None` for generated data.
    pub fn published_train_size(self) -> Option<Samples> {
        match self {
            DatasetKind::Mnist => Some(idx::MNIST_TRAIN_SAMPLES),
            DatasetKind::Cifar10 => Some(cifar::TRAIN_SAMPLES),
            DatasetKind::Synthetic
            | DatasetKind::Npy
            | DatasetKind::ImageFolder
            | DatasetKind::Tokens
            | DatasetKind::Custom => None,
        }
    }

    /// Name used in file names and reports (`mnist`, `cifar10`, `synthetic`, `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Npy => "npy",
            DatasetKind::ImageFolder => "image-folder",
            DatasetKind::Tokens => "tokens",
            DatasetKind::Custom => "custom",
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Loads a data set.
///
/// `dir` is the directory holding the files, or a data root holding them in a conventional
/// subdirectory (`mnist/`; `cifar10-subset/` or `cifar-10-batches-bin/`), so both
/// `../shared/data/mnist` and `../shared/data` work. `Synthetic` ignores `dir` and returns
/// [`synthetic::default_split`].
pub fn load(kind: DatasetKind, dir: &Path) -> Result<Split, DataError> {
    match kind {
        DatasetKind::Mnist => idx::load_mnist(&resolve_dir(kind, dir)),
        DatasetKind::Cifar10 => cifar::load_cifar10(&resolve_dir(kind, dir)),
        DatasetKind::Synthetic => Ok(synthetic::default_split()),
        DatasetKind::Npy => npy::load_images_with(dir, &mut |_, _| {}),
        DatasetKind::ImageFolder => folder::load_with(dir, &Default::default(), &mut |_, _| {}),
        DatasetKind::Tokens => Err(DataError::NotImages),
        DatasetKind::Custom => Err(DataError::GivenInCode),
    }
}

/// The number of training images of `kind` in `dir` (found as [`load`] finds them), read from
/// the labels (MNIST) or the file sizes (CIFAR-10) without decoding any image, so that a schedule
/// can be planned for the data a run would load. `Synthetic` gives [`synthetic::default_split`]'s.
pub fn train_size(kind: DatasetKind, dir: &Path) -> Result<Samples, DataError> {
    let dir = resolve_dir(kind, dir);
    match kind {
        DatasetKind::Mnist => idx::train_count(&dir),
        DatasetKind::Cifar10 => cifar::train_count(&dir),
        DatasetKind::Synthetic => Ok(Samples(synthetic::DEFAULT_TRAIN as u64)),
        DatasetKind::Npy => npy::train_rows(&dir).map(|n| Samples(n as u64)),
        DatasetKind::ImageFolder => folder::train_count(&dir, 0.0).map(|n| Samples(n as u64)),
        DatasetKind::Tokens => Err(DataError::NotImages),
        DatasetKind::Custom => Err(DataError::GivenInCode),
    }
}

/// Picks `dir` itself if it holds files of `kind`, else the first conventional subdirectory
/// that does, else `dir` (so that the loader's error names the expected file there).
pub fn resolve_dir(kind: DatasetKind, dir: &Path) -> std::path::PathBuf {
    let subdirs: &[&str] = match kind {
        DatasetKind::Mnist => &["mnist"],
        DatasetKind::Cifar10 => &["cifar10-subset", "cifar-10-batches-bin", "cifar10"],
        DatasetKind::Synthetic
        | DatasetKind::Npy
        | DatasetKind::ImageFolder
        | DatasetKind::Tokens
        | DatasetKind::Custom => &[],
    };
    if looks_like(kind, dir) {
        return dir.to_path_buf();
    }
    subdirs
        .iter()
        .map(|s| dir.join(s))
        .find(|d| looks_like(kind, d))
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Whether `dir` appears to hold files of `kind` (cheap: looks at names only).
pub fn looks_like(kind: DatasetKind, dir: &Path) -> bool {
    match kind {
        DatasetKind::Mnist => {
            idx::find_file(dir, idx::TRAIN_IMAGES).is_some()
                || idx::find_file(dir, idx::TEST_IMAGES).is_some()
        }
        DatasetKind::Cifar10 => {
            dir.join(cifar::TEST_FILE).exists()
                || cifar::data_batch_files(dir).is_ok_and(|v| !v.is_empty())
        }
        DatasetKind::Npy => npy::looks_like(dir),
        DatasetKind::ImageFolder => folder::looks_like(dir),
        DatasetKind::Synthetic | DatasetKind::Tokens | DatasetKind::Custom => false,
    }
}

/// Per-channel mean and standard deviation of pixels scaled to `[0, 1]`, computed from the
/// training set and applied to every batch as `(p / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Mean per channel (pixel/255 scale).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (pixel/255 scale), floored at [`Normalizer::MIN_STD`].
    pub std: Vec<f32>,
}

impl Normalizer {
    /// Smallest standard deviation used, so a constant channel does not divide by zero.
    pub const MIN_STD: f32 = 1e-3;

    /// Computes the per-channel statistics of `ds` (exactly, with integer sums).
    pub fn from_dataset(ds: &Dataset) -> Normalizer {
        let (mean, std) = channel_stats(ds);
        Normalizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std.iter().map(|&s| (s as f32).max(Self::MIN_STD)).collect(),
        }
    }

    /// Only scales to `[0, 1]` (mean 0, std 1 for every channel).
    pub fn identity(channels: usize) -> Normalizer {
        Normalizer {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Number of channels this normaliser covers.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// 256-entry lookup table of normalised values for channel `c`.
    pub fn table(&self, c: usize) -> [f32; 256] {
        let (m, s) = (self.mean[c], self.std[c]);
        std::array::from_fn(|p| normalized(p as u8, m, s))
    }

    /// Appends the normalised values of `pixels`, all of channel `c`, to `out`: the batch
    /// assembly's inner loop, vectorised (the same bits as [`Normalizer::table`]'s entries).
    pub fn extend_channel(&self, c: usize, pixels: &[u8], out: &mut Vec<f32>) {
        extend_normalized(pixels, self.mean[c], self.std[c], out);
    }

    /// Normalises one CHW image of `channels()` channels into `out` (same length).
    /// Panics if the lengths differ or are not a multiple of `channels()`.
    pub fn apply(&self, pixels: &[u8], out: &mut [f32]) {
        assert_eq!(pixels.len(), out.len(), "normalise: length mismatch");
        let plane = pixels.len() / self.channels();
        let mut values = Vec::with_capacity(pixels.len());
        for c in 0..self.channels() {
            self.extend_channel(c, &pixels[c * plane..(c + 1) * plane], &mut values);
        }
        out.copy_from_slice(&values);
    }
}

/// A pixel's normalised value, `(p / 255 − mean) / std` in f32: the one definition behind the
/// table and the vector loop, which therefore agree bit for bit (IEEE division and subtraction
/// are correctly rounded in every lane).
#[inline(always)]
fn normalized(p: u8, mean: f32, std: f32) -> f32 {
    (p as f32 / 255.0 - mean) / std
}

/// Appends `normalized(p)` for each pixel, compiled for several instruction sets and picked at
/// run time: 16 lanes of two divisions each on AVX-512 instead of a table lookup per byte, since
/// the crate itself is built for baseline x86-64 (SSE2).
#[multiversion::multiversion(targets = "simd")]
fn extend_normalized(pixels: &[u8], mean: f32, std: f32, out: &mut Vec<f32>) {
    out.extend(pixels.iter().map(|&p| normalized(p, mean, std)));
}

/// Exact per-channel mean and standard deviation (pixel/255 scale) of a data set.
pub fn channel_stats(ds: &Dataset) -> (Vec<f64>, Vec<f64>) {
    let plane = ds.height * ds.width;
    let mut sum = vec![0u64; ds.channels];
    let mut sumsq = vec![0u64; ds.channels];
    for img in ds.images.chunks_exact(ds.image_len().max(1)) {
        for c in 0..ds.channels {
            for &p in &img[c * plane..(c + 1) * plane] {
                sum[c] += p as u64;
                sumsq[c] += (p as u64) * (p as u64);
            }
        }
    }
    let count = (ds.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / count / 255.0).collect();
    let std = sumsq
        .iter()
        .zip(&mean)
        .map(|(&q, &m)| (q as f64 / count / (255.0 * 255.0) - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

#[cfg(test)]
mod tests {
    use crate::data::test_util::{cifar, mnist};
    use crate::data::*;

    // ---------------------------------------------------------------- real data

    #[test]
    fn mnist_known_statistics() {
        let n = Normalizer::from_dataset(&mnist().train);
        assert!((n.mean[0] - 0.1307).abs() < 1e-3, "{:?}", n.mean);
        assert!((n.std[0] - 0.3081).abs() < 1e-3, "{:?}", n.std);
    }

    #[test]
    fn kind_serde_kebab_case() {
        let s = serde_json::to_string(&[
            DatasetKind::Mnist,
            DatasetKind::Cifar10,
            DatasetKind::Synthetic,
        ]);
        assert_eq!(s.unwrap(), r#"["mnist","cifar10","synthetic"]"#);
        let k: DatasetKind = serde_json::from_str(r#""cifar10""#).unwrap();
        assert_eq!(k, DatasetKind::Cifar10);
    }

    // ---------------------------------------------------------------- normaliser

    #[test]
    fn normalised_train_set_has_zero_mean_unit_std() {
        let ds = &cifar().train;
        let n = Normalizer::from_dataset(ds);
        let all: Vec<u32> = (0..ds.len() as u32).collect();
        let b = assemble(ds, &all, &n, Augment::None, 0, 0);
        let plane = 32 * 32;
        for c in 0..3 {
            let vals: Vec<f64> = b
                .images
                .chunks_exact(3 * plane)
                .flat_map(|img| img[c * plane..(c + 1) * plane].iter().map(|&v| v as f64))
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let s =
                (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64).sqrt();
            assert!(m.abs() < 1e-4, "channel {c} mean {m}");
            assert!((s - 1.0).abs() < 1e-4, "channel {c} std {s}");
        }
        // Per-image `apply` agrees with batch assembly.
        let mut out = vec![0f32; ds.image_len()];
        n.apply(ds.image(9), &mut out);
        assert_eq!(out, b.images[9 * 3 * plane..10 * 3 * plane]);
        let id = Normalizer::identity(3);
        assert_eq!(id.table(0)[255], 1.0);
    }

    /// The vector loop gives the table's bits for every byte value, on runs that are not whole
    /// vectors, for statistics of MNIST, CIFAR-10, the identity and the floored deviation; and
    /// appends after what the vector holds.
    #[test]
    fn extend_channel_gives_the_tables_bits() {
        let normalizers = [
            Normalizer {
                mean: vec![0.1307, 0.4914, 0.0],
                std: vec![0.3081, 0.2470, Normalizer::MIN_STD],
            },
            Normalizer::identity(1),
        ];
        let pixels: Vec<u8> = (0..256 + 37).map(|i| (i * 131 % 256) as u8).collect();
        for n in &normalizers {
            for c in 0..n.channels() {
                let table = n.table(c);
                for len in [0, 5, 16, 31, pixels.len()] {
                    let mut out = vec![-7.0f32];
                    n.extend_channel(c, &pixels[..len], &mut out);
                    assert_eq!(out.len(), 1 + len);
                    assert_eq!(out[0], -7.0, "the vector's first value");
                    for (i, (&p, v)) in pixels.iter().zip(&out[1..]).enumerate() {
                        assert_eq!(
                            v.to_bits(),
                            table[p as usize].to_bits(),
                            "channel {c}, pixel {i} = {p}"
                        );
                    }
                }
            }
        }
    }
}
