//! Data: reading MNIST and CIFAR-10, ordering samples, and feeding batches whose size changes
//! from one epoch to the next.
//!
//! The paper replaces learning-rate decay by batch-size growth, so the data layer must serve
//! any batch size in any epoch, resume a run exactly from a checkpoint, and give the same
//! batches whether they are assembled on one thread or many. The design follows from that.
//!
//! **`u8` in memory, normalise per batch.** A [`Dataset`] keeps pixels as the files store
//! them, `u8` in `N×C×H×W` (CHW within each image): CIFAR-10 costs 150 MB instead of 600 MB
//! as `f32`. Conversion happens when a batch is assembled ([`assemble`]): the image is
//! augmented in `u8`, then normalised per channel by the [`Normalizer`], `(p/255 − mean) / std`
//! in vector lanes (mean and std of pixel/255 per channel, computed once from the training set
//! and reused for the test set).
//!
//! **Order from `(seed, epoch)` alone.** [`Sampler::permutation`] shuffles `0..N` with a
//! ChaCha8 RNG keyed by the seed and the epoch index (see [`derive_rng`]); nothing carries
//! over between epochs, so epoch 37 can be produced without replaying 0..36, and the batch
//! size has no influence on the order. Augmentation randomness is likewise keyed by
//! `(seed, epoch, sample index)`, so it does not depend on batch size, sharding or threads.
//!
//! **Batches and partial-batch policy.** A batch is a range of positions in the epoch's
//! permutation ([`Sampler::batches`]). With [`LastBatch::Keep`] (default) the last batch is
//! smaller and an epoch has `ceil(N / B)` updates, as in the paper's update counts
//! ([`crate::units::updates_per_epoch`]); [`LastBatch::Drop`] drops it. A new batch size
//! takes effect at the next call, i.e. at an epoch boundary.
//!
//! **Resuming.** A checkpoint stores a [`Position`] `{ epoch, offset }`, the samples of the
//! epoch already consumed ([`Batch::end`] of the last batch). Restarting with that offset
//! regenerates the same permutation and continues at the next sample: nothing is repeated
//! or skipped.
//!
//! **Sharding.** For data parallelism every rank walks the same global batches and takes
//! [`shard`] of each: the batch cut into chunks of [`Shard::quantum`] samples (the ghost batch
//! size, so a ghost batch never straddles two ranks), dealt out in contiguous near-equal runs,
//! the first ranks one chunk more; a rank's share of a small last batch may be empty.
//! The global batch is the unit of the schedule; a batch's `start`/`end` are global, so all
//! ranks checkpoint the same position.
//!
//! **Loader.** [`Loader`] assembles batches on worker threads; worker `w` builds batches
//! `w, w + W, …` into its own bounded `sync_channel` and the consumer reads the channels
//! round-robin, so batches arrive in order with at most `prefetch` waiting. Dropping the
//! [`EpochIter`] early drops the receivers and joins the workers. Batches are bitwise equal
//! to sequential [`assemble`] calls.
//!
//! **Errors.** Readers never panic on bad files and never return fewer samples than the
//! header promises: each [`DataError`] names the file and what is wrong (magic, length,
//! count mismatch, label range, truncated record, missing file, corrupt gzip).

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod idx;
pub mod inspect;
pub mod loader;
pub mod npy;
pub mod sampler;
pub mod source;
pub mod synthetic;
pub mod tokens;

#[cfg(test)]
mod test_util;

pub use augment::{Augment, CropFlipParams, crop_flip};
pub use cifar::{
    CLASS_NAMES as CIFAR10_CLASSES, data_batch_files, load_cifar10, load_cifar10_with,
};
pub use dataset::{
    Dataset, DatasetKind, Normalizer, Split, channel_stats, load, looks_like, resolve_dir,
    train_size,
};
pub use error::DataError;
pub use idx::{IdxImages, load_mnist, load_mnist_with, read_decoded, read_images, read_labels};
pub use inspect::{
    DatasetReport, FileDigest, InspectReport, SplitReport, TokenReport, TokenSplit, inspect,
    inspect_tokens, sha256_hex,
};
pub use loader::{EpochIter, Loader};
pub use sampler::{Batches, LastBatch, Position, Sampler, Shard, derive_rng, shard};
pub use source::{
    Batch, BurnData, EvalSet, FeatureBatcher, Features, ImageBatch, ImageSet, Images, Items,
    RegressionBatch, RegressionBatcher, Share, TrainSet, assemble, eval_batches,
};
pub use synthetic::{default_split, synthetic};
