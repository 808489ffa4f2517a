//! Where the trainer's batches come from, and the assembly of image batches (`u8` → augmented →
//! normalised `f32`): a [`TrainSet`] assembles a rank's share of a batch
//! from sample indices on the loader's threads, the [`Share`] becomes the model's input pieces
//! on the device, and an [`EvalSet`] gives evaluation batches in order.
//!
//! Two kinds of data fit: the built-in image sets ([`ImageSet`]: `u8` pixels augmented and
//! normalised on the host, one upload per share, pieces as views of it), and any burn
//! [`Dataset`] with its [`Batcher`] ([`BurnData`]: items fetched on the loader's threads, each
//! piece batched on the device by the user's batcher), so that data written for burn-train's
//! `Learner` moves over unchanged.

use super::sampler::{Position, Sampler};
use super::{Augment, Dataset as ImageDataset, Normalizer};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::marker::PhantomData;
use std::sync::Arc;

/// A training set the loader draws from: `N` samples by index.
pub trait TrainSet: Send + Sync + 'static {
    /// A rank's share of one batch, assembled on a loader thread.
    type Share: Share;
    /// Samples in the set: the N of the noise scale `g = εN/B`.
    fn len(&self) -> usize;
    /// Whether the set holds no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Assembles samples `indices` for epoch `epoch` of a run seeded `seed` (randomness such as
    /// augmentation drawn from `(seed, epoch, index)` alone, so that a share does not depend on
    /// the batch size, the ranks or the threads).
    fn assemble(&self, indices: &[u32], seed: u64, epoch: u32) -> Self::Share;
}

/// A rank's share of a batch on the host, which becomes the model's input on the device, whole
/// or in pieces.
pub trait Share: Send + 'static {
    /// What the model's step takes (`TrainStep::Input`).
    type Input;
    /// Samples in the share.
    fn len(&self) -> usize;
    /// Whether the share holds no samples (a rank's empty share of a tiny last batch).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The share on `device` in pieces of `piece_len` samples (the last one shorter), in order.
    fn into_pieces(self, piece_len: usize, device: &Device) -> Vec<Self::Input>;
    /// The share as normalised images, where it is that (for `train.trace_updates`).
    fn as_images(&self) -> Option<&Images> {
        None
    }
}

/// An evaluation set: batches in order, the last one partial.
pub trait EvalSet: Sync {
    /// What the model's inference step takes (`InferenceStep::Input`).
    type Input;
    /// Samples in the set.
    fn len(&self) -> usize;
    /// Whether the set holds no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `each` with every batch of at most `batch_size` samples on `device`, with its sample
    /// count, in order.
    fn for_each_batch(
        &self,
        batch_size: usize,
        device: &Device,
        each: &mut dyn FnMut(Self::Input, usize),
    );
}

/// One (possibly sharded) batch: this rank's share of a global batch and the batch's place in
/// the epoch. It reads as its share (`batch.labels` of a batch of [`Images`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<S = Images> {
    /// This rank's samples of the batch.
    pub share: S,
    /// Epoch the batch belongs to.
    pub epoch: u32,
    /// Offset in the epoch of the global batch's first sample. With sharding this is the
    /// global batch (all ranks agree on it); this rank's part is [`shard`] of `start..end`.
    pub start: u64,
    /// Offset in the epoch just past the global batch's last sample.
    pub end: u64,
}

impl<S> std::ops::Deref for Batch<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.share
    }
}

impl<S: Share> Batch<S> {
    /// Number of samples in this (rank's) batch.
    pub fn len(&self) -> usize {
        self.share.len()
    }

    /// Whether the batch holds no samples (a rank's empty share of a tiny last batch).
    pub fn is_empty(&self) -> bool {
        self.share.is_empty()
    }
}

impl<S> Batch<S> {
    /// The position to checkpoint after consuming this batch, in an epoch of `n` samples.
    pub fn position_after(&self, n: u64) -> Position {
        Position::start_of(self.epoch).after(self.end, n)
    }
}

/// Assembles the samples `indices` of `dataset` into a batch: augments each image with its
/// `(seed, epoch, index)` randomness, then normalises. `start`/`end` are set to
/// `0..indices.len()`; the loader overwrites them with the batch's place in the epoch.
pub fn assemble(
    dataset: &ImageDataset,
    indices: &[u32],
    normalizer: &Normalizer,
    augment: Augment,
    seed: u64,
    epoch: u32,
) -> Batch {
    let shape3 = dataset.image_shape();
    let [c, h, w] = shape3;
    let len = dataset.image_len();
    let plane = h * w;
    assert_eq!(
        normalizer.channels(),
        c,
        "normaliser channels differ from data set's"
    );
    // Filled by appending, not zeroed first: a batch at B = 8,000 is 25 MB of MNIST floats.
    let mut images = Vec::with_capacity(indices.len() * len);
    let mut labels = Vec::with_capacity(indices.len());
    let mut scratch = vec![0u8; len];
    for &i in indices {
        let src = dataset.image(i as usize);
        let px: &[u8] = match augment {
            Augment::None => src,
            _ => {
                augment.apply(src, shape3, seed, epoch, u64::from(i), &mut scratch);
                &scratch
            }
        };
        for (ch, px) in px.chunks_exact(plane).enumerate() {
            normalizer.extend_channel(ch, px, &mut images);
        }
        labels.push(dataset.labels[i as usize]);
    }
    debug_assert_eq!(images.len(), indices.len() * len);
    Batch {
        share: Images {
            images,
            labels,
            shape: [indices.len(), c, h, w],
        },
        epoch,
        start: 0,
        end: indices.len() as u64,
    }
}

/// Evaluation batches of `dataset` in file order, without augmentation, the last one partial.
pub fn eval_batches<'a>(
    dataset: &'a ImageDataset,
    normalizer: &'a Normalizer,
    batch_size: usize,
) -> impl Iterator<Item = Batch> + 'a {
    Sampler::new(dataset.len(), 0)
        .batches(0, batch_size, 0)
        .map(move |r| {
            let idx: Vec<u32> = (r.start as u32..r.end as u32).collect();
            let mut b = assemble(dataset, &idx, normalizer, Augment::None, 0, 0);
            (b.start, b.end) = (r.start, r.end);
            b
        })
}

/// A batch of images and their classes on the device: the input of the built-in models.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// Normalised pixels `[B, C, H, W]`.
    pub images: Tensor<4>,
    /// Class indices `[B]`.
    pub targets: Tensor<1, Int>,
}

/// A share of normalised images with their labels, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    /// Normalised pixels, `B×C×H×W`.
    pub images: Vec<f32>,
    /// Labels, `B` of them.
    pub labels: Vec<u8>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

impl Images {
    /// The images and labels as tensors on `device`. The pixels' buffer becomes the tensor's on
    /// the CPU backend, without a copy: at B = 8,000 on MNIST a copy was 4.5% of an epoch.
    pub fn into_batch(self, device: &Device) -> ImageBatch {
        let n = self.labels.len();
        let images = Tensor::<4>::from_data(TensorData::new(self.images, self.shape), device);
        let y: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), device);
        ImageBatch { images, targets }
    }
}

impl Share for Images {
    type Input = ImageBatch;
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn into_pieces(self, piece_len: usize, device: &Device) -> Vec<ImageBatch> {
        let local = self.len();
        // The share goes to the device once; pieces are slices of it there.
        let all = self.into_batch(device);
        if piece_len >= local {
            return vec![all];
        }
        (0..local)
            .step_by(piece_len.max(1))
            .map(|start| {
                let len = piece_len.min(local - start);
                ImageBatch {
                    images: all.images.clone().narrow(0, start, len),
                    targets: all.targets.clone().narrow(0, start, len),
                }
            })
            .collect()
    }
    fn as_images(&self) -> Option<&Images> {
        Some(self)
    }
}

/// A built-in image set (MNIST, CIFAR-10, synthetic): `u8` pixels augmented on the host, then
/// normalised per channel.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// The images and labels.
    pub dataset: Arc<ImageDataset>,
    /// Per-channel normalisation (from the training set).
    pub normalizer: Arc<Normalizer>,
    /// Augmentation of training samples (none for evaluation).
    pub augment: Augment,
}

impl ImageSet {
    /// The set `dataset`, normalised by `normalizer`, augmented by `augment` when trained on.
    pub fn new(dataset: Arc<ImageDataset>, normalizer: Normalizer, augment: Augment) -> Self {
        ImageSet {
            dataset,
            normalizer: Arc::new(normalizer),
            augment,
        }
    }
}

impl TrainSet for ImageSet {
    type Share = Images;
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn assemble(&self, indices: &[u32], seed: u64, epoch: u32) -> Images {
        let b: Batch = assemble(
            &self.dataset,
            indices,
            &self.normalizer,
            self.augment,
            seed,
            epoch,
        );
        b.share
    }
}

impl EvalSet for ImageSet {
    type Input = ImageBatch;
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn for_each_batch(
        &self,
        batch_size: usize,
        device: &Device,
        each: &mut dyn FnMut(ImageBatch, usize),
    ) {
        for b in eval_batches(&self.dataset, &self.normalizer, batch_size) {
            let n = b.len();
            each(b.share.into_batch(device), n);
        }
    }
}

/// A batch of feature rows and their classes on the device: `[B, features]` and `[B]`.
pub type Features = (Tensor<2>, Tensor<1, Int>);

/// burn's [`Batcher`] for tabular classification items: `(features, class)` pairs, every row
/// of the same length, become [`Features`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FeatureBatcher;

impl Batcher<(Vec<f32>, i64), Features> for FeatureBatcher {
    fn batch(&self, items: Vec<(Vec<f32>, i64)>, device: &Device) -> Features {
        let (n, width) = (items.len(), items.first().map_or(0, |(x, _)| x.len()));
        let mut x = Vec::with_capacity(n * width);
        let mut y = Vec::with_capacity(n);
        for (i, (row, class)) in items.into_iter().enumerate() {
            // A batcher cannot return an error: the loader re-raises this on the training thread.
            assert_eq!(
                row.len(),
                width,
                "item {i} of the batch has {} features, item 0 {width}",
                row.len()
            );
            x.extend(row);
            y.push(class);
        }
        (
            Tensor::from_data(TensorData::new(x, [n, width]), device),
            Tensor::from_data(TensorData::new(y, [n]), device),
        )
    }
}

/// A batch of feature rows and their regression targets on the device: `[B, features]` and
/// `[B, k]`.
pub type RegressionBatch = (Tensor<2>, Tensor<2>);

/// burn's [`Batcher`] for tabular regression items: `(features, targets)` pairs, every row of
/// the same lengths, become a [`RegressionBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RegressionBatcher;

impl Batcher<(Vec<f32>, Vec<f32>), RegressionBatch> for RegressionBatcher {
    fn batch(&self, items: Vec<(Vec<f32>, Vec<f32>)>, device: &Device) -> RegressionBatch {
        let n = items.len();
        let (w, k) = items.first().map_or((0, 0), |(x, y)| (x.len(), y.len()));
        let (mut x, mut y) = (Vec::with_capacity(n * w), Vec::with_capacity(n * k));
        for (i, (row, target)) in items.into_iter().enumerate() {
            // A batcher cannot return an error: the loader re-raises this on the training thread.
            assert!(
                row.len() == w && target.len() == k,
                "item {i} of the batch has {} features and {} targets, item 0 {w} and {k}",
                row.len(),
                target.len()
            );
            x.extend(row);
            y.extend(target);
        }
        (
            Tensor::from_data(TensorData::new(x, [n, w]), device),
            Tensor::from_data(TensorData::new(y, [n, k]), device),
        )
    }
}

/// A burn [`Dataset`] with the [`Batcher`] that turns its items into the model's input: data
/// written for burn-train's `Learner`, for training or evaluation. Items are fetched on the
/// loader's threads; each piece is batched on the training thread, on the device.
pub struct BurnData<I, O, B> {
    dataset: Arc<dyn Dataset<I>>,
    batcher: Arc<B>,
    _output: PhantomData<fn() -> O>,
}

impl<I, O, B> Clone for BurnData<I, O, B> {
    fn clone(&self) -> Self {
        BurnData {
            dataset: self.dataset.clone(),
            batcher: self.batcher.clone(),
            _output: PhantomData,
        }
    }
}

impl<I, O, B: Batcher<I, O>> BurnData<I, O, B> {
    /// `dataset`'s items, batched by `batcher`.
    pub fn new(dataset: impl Dataset<I> + 'static, batcher: B) -> Self {
        BurnData {
            dataset: Arc::new(dataset),
            batcher: Arc::new(batcher),
            _output: PhantomData,
        }
    }

    fn item(&self, i: usize) -> I {
        // On a loader thread, whose panic the training thread re-raises with this message.
        self.dataset.get(i).unwrap_or_else(|e| {
            panic!(
                "reading item {i} of the data set ({} items): {e}",
                self.dataset.len()
            )
        })
    }
}

/// A share of a [`BurnData`] set: its items, batched piece by piece.
pub struct Items<I, O, B> {
    items: Vec<I>,
    batcher: Arc<B>,
    _output: PhantomData<fn() -> O>,
}

impl<I, O, B> TrainSet for BurnData<I, O, B>
where
    I: Send + Sync + 'static,
    O: 'static,
    B: Batcher<I, O> + 'static,
{
    type Share = Items<I, O, B>;
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn assemble(&self, indices: &[u32], _seed: u64, _epoch: u32) -> Items<I, O, B> {
        Items {
            items: indices.iter().map(|&i| self.item(i as usize)).collect(),
            batcher: self.batcher.clone(),
            _output: PhantomData,
        }
    }
}

impl<I, O, B> Share for Items<I, O, B>
where
    I: Send + Sync + 'static,
    O: 'static,
    B: Batcher<I, O> + 'static,
{
    type Input = O;
    fn len(&self) -> usize {
        self.items.len()
    }
    fn into_pieces(self, piece_len: usize, device: &Device) -> Vec<O> {
        let mut rest = self.items;
        let mut pieces = Vec::with_capacity(rest.len().div_ceil(piece_len.max(1)));
        while !rest.is_empty() {
            let tail = rest.split_off(piece_len.max(1).min(rest.len()));
            pieces.push(self.batcher.batch(rest, device));
            rest = tail;
        }
        pieces
    }
}

impl<I, O, B: Batcher<I, O>> EvalSet for BurnData<I, O, B> {
    type Input = O;
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn for_each_batch(&self, batch_size: usize, device: &Device, each: &mut dyn FnMut(O, usize)) {
        let n = self.dataset.len();
        let mut start = 0;
        while start < n {
            let end = (start + batch_size.max(1)).min(n);
            let items = (start..end).map(|i| self.item(i)).collect();
            each(self.batcher.batch(items, device), end - start);
            start = end;
        }
    }
}
