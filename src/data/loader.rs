//! The background loader: assembles any [`TrainSet`]'s batches on worker threads and hands them
//! over in order through bounded queues.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::sampler::{LastBatch, Sampler, Shard, shard};
use super::source::{Batch, ImageSet, TrainSet};
use super::{Augment, Dataset, Normalizer};

/// What a worker needs to assemble any batch of one epoch.
struct Job<T> {
    set: Arc<T>,
    seed: u64,
    epoch: u32,
    perm: Arc<Vec<u32>>,
    /// Global batch ranges and this rank's part of each.
    ranges: Arc<Vec<(Range<u64>, Range<u64>)>>,
}

impl<T> Clone for Job<T> {
    fn clone(&self) -> Self {
        Job {
            set: self.set.clone(),
            seed: self.seed,
            epoch: self.epoch,
            perm: self.perm.clone(),
            ranges: self.ranges.clone(),
        }
    }
}

impl<T: TrainSet> Job<T> {
    fn build(&self, i: usize) -> Batch<T::Share> {
        let (global, local) = &self.ranges[i];
        let idx = &self.perm[local.start as usize..local.end as usize];
        Batch {
            share: self.set.assemble(idx, self.seed, self.epoch),
            epoch: self.epoch,
            start: global.start,
            end: global.end,
        }
    }
}

/// Produces the training batches of each epoch on background threads.
pub struct Loader<T = ImageSet> {
    set: Arc<T>,
    sampler: Sampler,
    workers: usize,
    prefetch: usize,
}

impl<T> Clone for Loader<T> {
    fn clone(&self) -> Self {
        Loader {
            set: self.set.clone(),
            sampler: self.sampler,
            workers: self.workers,
            prefetch: self.prefetch,
        }
    }
}

impl Loader<ImageSet> {
    /// Default number of worker threads.
    pub const DEFAULT_WORKERS: usize = 2;
    /// Default number of batches assembled ahead of the consumer.
    pub const DEFAULT_PREFETCH: usize = 4;

    /// A loader over the image set `dataset`; `workers == 0` assembles on the consuming thread;
    /// `prefetch` bounds the batches waiting in the queues (at least one per worker).
    pub fn new(
        dataset: Arc<Dataset>,
        normalizer: Normalizer,
        augment: Augment,
        seed: u64,
        workers: usize,
        prefetch: usize,
    ) -> Loader {
        Loader::over(
            ImageSet::new(dataset, normalizer, augment),
            seed,
            workers,
            prefetch,
        )
    }

    /// The data set batches are drawn from, whole on every rank (sharding is per batch).
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.set.dataset
    }
}

impl<T: TrainSet> Loader<T> {
    /// A loader over any training set, seeded `seed` (order and augmentation), with `workers`
    /// threads (0: on the consuming thread) and at most `prefetch` batches waiting.
    pub fn over(set: T, seed: u64, workers: usize, prefetch: usize) -> Loader<T> {
        Loader {
            sampler: Sampler::new(set.len(), seed),
            set: Arc::new(set),
            workers,
            prefetch,
        }
    }

    /// The same loader with another last-batch policy.
    pub fn with_last_batch(mut self, last_batch: LastBatch) -> Self {
        self.sampler = self.sampler.with_last_batch(last_batch);
        self
    }

    /// The sampler that orders the epochs.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The training set.
    pub fn set(&self) -> &T {
        &self.set
    }

    /// The batches of `epoch` at `batch_size` from `start_offset` on, in order; with
    /// `shard_of = Some(..)` each holds this rank's part of the global batch.
    /// Each call may use a different batch size. Panics if `batch_size == 0` or the shard
    /// is invalid.
    pub fn epoch(
        &self,
        epoch: u32,
        batch_size: usize,
        start_offset: u64,
        shard_of: Option<Shard>,
    ) -> EpochIter<T> {
        self.epoch_until(epoch, batch_size, start_offset..u64::MAX, shard_of)
    }

    /// [`Loader::epoch`] over positions `range` of the epoch only: the batch reaching past
    /// `range.end` ends there (see [`Batches::until`](super::sampler::Batches::until)).
    pub fn epoch_until(
        &self,
        epoch: u32,
        batch_size: usize,
        range: std::ops::Range<u64>,
        shard_of: Option<Shard>,
    ) -> EpochIter<T> {
        let ranges: Vec<_> = self
            .sampler
            .batches(epoch, batch_size, range.start)
            .until(range.end)
            .map(|g| {
                let local = match shard_of {
                    Some(s) => shard(g.clone(), s),
                    None => g.clone(),
                };
                (g, local)
            })
            .collect();
        let job = Job {
            set: self.set.clone(),
            seed: self.sampler.seed,
            epoch,
            perm: Arc::new(self.sampler.permutation(epoch)),
            ranges: Arc::new(ranges),
        };
        let total = job.ranges.len();
        let nw = self.workers.min(total);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = (self.prefetch / nw.max(1)).max(1);
        let mut rxs = Vec::with_capacity(nw);
        let mut handles = Vec::with_capacity(nw);
        for w in 0..nw {
            let (tx, rx) = sync_channel(cap);
            let (job, stop) = (job.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name(format!("data-loader-{w}"))
                .spawn(move || {
                    crate::cpu::flush_denormals_on_this_thread();
                    worker(job, w, nw, total, tx, stop)
                })
                .expect("spawning a data loader thread");
            rxs.push(rx);
            handles.push(h);
        }
        EpochIter {
            job,
            next: 0,
            total,
            rxs,
            handles,
            stop,
        }
    }
}

fn worker<T: TrainSet>(
    job: Job<T>,
    w: usize,
    nw: usize,
    total: usize,
    tx: SyncSender<Batch<T::Share>>,
    stop: Arc<AtomicBool>,
) {
    for i in (w..total).step_by(nw) {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if tx.send(job.build(i)).is_err() {
            return; // the consumer is gone
        }
    }
}

/// The batches of one epoch, in order (see [`Loader::epoch`]). Dropping it early stops and
/// joins the workers.
pub struct EpochIter<T: TrainSet = ImageSet> {
    job: Job<T>,
    next: usize,
    total: usize,
    rxs: Vec<Receiver<Batch<T::Share>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl<T: TrainSet> EpochIter<T> {
    /// Global batch ranges of the batches still to come.
    pub fn remaining_ranges(&self) -> Vec<Range<u64>> {
        self.job.ranges[self.next..]
            .iter()
            .map(|(g, _)| g.clone())
            .collect()
    }
}

impl<T: TrainSet> Iterator for EpochIter<T> {
    type Item = Batch<T::Share>;

    fn next(&mut self) -> Option<Batch<T::Share>> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        if self.rxs.is_empty() {
            return Some(self.job.build(i));
        }
        let w = i % self.rxs.len();
        match self.rxs[w].recv() {
            Ok(b) => Some(b),
            Err(_) => {
                // The worker ended without sending: it panicked. Re-raise its panic here
                // rather than silently ending the epoch short.
                let h = self.handles.remove(w);
                match h.join() {
                    Err(payload) => std::panic::resume_unwind(payload),
                    Ok(()) => panic!("data loader worker {w} stopped before batch {i}"),
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.total - self.next;
        (n, Some(n))
    }
}

impl<T: TrainSet> ExactSizeIterator for EpochIter<T> {}

impl<T: TrainSet> Drop for EpochIter<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes any blocked `send` fail, so every worker returns.
        self.rxs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::data::test_util::cifar;
    use crate::data::*;

    // ---------------------------------------------------------------- loader

    fn sequential(
        loader: &Loader,
        epoch: u32,
        b: usize,
        offset: u64,
        n: &Normalizer,
        aug: Augment,
    ) -> Vec<Batch> {
        let s = loader.sampler();
        let perm = s.permutation(epoch);
        s.batches(epoch, b, offset)
            .map(|r| {
                let idx = &perm[r.start as usize..r.end as usize];
                let mut bt = assemble(loader.dataset(), idx, n, aug, s.seed, epoch);
                (bt.start, bt.end) = (r.start, r.end);
                bt
            })
            .collect()
    }

    #[test]
    fn loader_matches_sequential_assembly() {
        let ds = Arc::new(cifar().train.clone());
        let n = Normalizer::from_dataset(&ds);
        let aug = Augment::CropFlip { pad: 4 };
        let loader = Loader::new(ds.clone(), n.clone(), aug, 11, 3, 4);
        let inline = Loader::new(ds.clone(), n.clone(), aug, 11, 0, 4);
        for (epoch, b) in [(0u32, 128usize), (1, 300)] {
            let want = sequential(&loader, epoch, b, 0, &n, aug);
            let it = loader.epoch(epoch, b, 0, None);
            assert_eq!(it.len(), 4000usize.div_ceil(b));
            let got: Vec<Batch> = it.collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (g.start, g.end, g.epoch, g.shape),
                    (w.start, w.end, w.epoch, w.shape)
                );
                assert_eq!(g.labels, w.labels);
                assert!(
                    g.images
                        .iter()
                        .zip(&w.images)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
            assert_eq!(inline.epoch(epoch, b, 0, None).collect::<Vec<_>>(), want);
            assert_eq!(
                got.last().unwrap().position_after(4000),
                Position::start_of(epoch + 1)
            );
        }
        // Resume mid-epoch.
        let want = sequential(&loader, 1, 300, 0, &n, aug);
        let got: Vec<Batch> = loader.epoch(1, 300, 1200, None).collect();
        assert_eq!(got, want[4..]);
    }

    #[test]
    fn loader_shards_partition_global_batches() {
        let ds = Arc::new(synthetic(103, 0, 4, 1, 4, 4, 5).train);
        let n = Normalizer::from_dataset(&ds);
        let loader = Loader::new(ds, n, Augment::None, 3, 2, 2);
        let whole: Vec<Batch> = loader.epoch(0, 10, 0, None).collect();
        let world = 3;
        let ranks: Vec<Vec<Batch>> = (0..world)
            .map(|rank| {
                let s = Shard {
                    rank,
                    world,
                    quantum: 1,
                };
                loader.epoch(0, 10, 0, Some(s)).collect()
            })
            .collect();
        for (i, w) in whole.iter().enumerate() {
            let mut labels = Vec::new();
            let mut images = Vec::new();
            for r in &ranks {
                assert_eq!((r[i].start, r[i].end), (w.start, w.end));
                labels.extend_from_slice(&r[i].labels);
                images.extend_from_slice(&r[i].images);
            }
            assert_eq!(labels, w.labels);
            assert_eq!(images, w.images);
        }
    }

    #[test]
    fn loader_stops_cleanly_when_dropped() {
        let ds = Arc::new(cifar().train.clone());
        let n = Normalizer::from_dataset(&ds);
        let loader = Loader::new(ds, n, Augment::CropFlip { pad: 4 }, 0, 2, 2);
        for take in [0, 1, 3] {
            let mut it = loader.epoch(0, 64, 0, None);
            for _ in 0..take {
                assert!(it.next().is_some());
            }
            drop(it); // must not hang or panic
        }
        // Still usable afterwards, at a new batch size.
        assert_eq!(loader.epoch(1, 1000, 0, None).count(), 4);
    }

    #[test]
    fn eval_batches_in_order() {
        let ds = &cifar().test;
        let n = Normalizer::from_dataset(&cifar().train);
        let batches: Vec<Batch> = eval_batches(ds, &n, 300).collect();
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [300, 300, 300, 100]
        );
        let labels: Vec<u8> = batches.iter().flat_map(|b| b.labels.clone()).collect();
        assert_eq!(labels, ds.labels);
        assert_eq!((batches[3].start, batches[3].end), (900, 1000));
        let mut out = vec![0f32; ds.image_len()];
        n.apply(ds.image(301), &mut out);
        assert_eq!(out, batches[1].images[ds.image_len()..2 * ds.image_len()]);
    }
}
