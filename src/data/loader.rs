//! Batch assembly (`u8` → augmented → normalised `f32`) and the background loader that
//! assembles batches on worker threads and hands them over in order through bounded queues.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::sampler::{LastBatch, Position, Sampler, Shard, shard};
use super::{Augment, Dataset, Normalizer};

/// One (possibly sharded) batch ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Normalised pixels, `B×C×H×W`.
    pub images: Vec<f32>,
    /// Labels, `B` of them.
    pub labels: Vec<u8>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Epoch the batch belongs to.
    pub epoch: u32,
    /// Offset in the epoch of the global batch's first sample. With sharding this is the
    /// global batch (all ranks agree on it); this rank's part is [`shard`] of `start..end`.
    pub start: u64,
    /// Offset in the epoch just past the global batch's last sample.
    pub end: u64,
}

impl Batch {
    /// Number of samples in this (rank's) batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no samples (a rank's empty share of a tiny last batch).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The position to checkpoint after consuming this batch, in an epoch of `n` samples.
    pub fn position_after(&self, n: u64) -> Position {
        Position::start_of(self.epoch).after(self.end, n)
    }
}

/// Assembles the samples `indices` of `dataset` into a batch: augments each image with its
/// `(seed, epoch, index)` randomness, then normalises. `start`/`end` are set to
/// `0..indices.len()`; the loader overwrites them with the batch's place in the epoch.
pub fn assemble(
    dataset: &Dataset,
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
    let tables: Vec<[f32; 256]> = (0..c).map(|ch| normalizer.table(ch)).collect();
    let mut images = vec![0f32; indices.len() * len];
    let mut labels = Vec::with_capacity(indices.len());
    let mut scratch = vec![0u8; len];
    for (k, &i) in indices.iter().enumerate() {
        let src = dataset.image(i as usize);
        let px: &[u8] = match augment {
            Augment::None => src,
            _ => {
                augment.apply(src, shape3, seed, epoch, u64::from(i), &mut scratch);
                &scratch
            }
        };
        let out = &mut images[k * len..(k + 1) * len];
        for (ch, t) in tables.iter().enumerate() {
            let r = ch * plane..(ch + 1) * plane;
            for (o, &p) in out[r.clone()].iter_mut().zip(&px[r]) {
                *o = t[p as usize];
            }
        }
        labels.push(dataset.labels[i as usize]);
    }
    Batch {
        images,
        labels,
        shape: [indices.len(), c, h, w],
        epoch,
        start: 0,
        end: indices.len() as u64,
    }
}

/// Evaluation batches of `dataset` in file order, without augmentation, the last one partial.
pub fn eval_batches<'a>(
    dataset: &'a Dataset,
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

/// What a worker needs to assemble any batch of one epoch.
#[derive(Clone)]
struct Job {
    dataset: Arc<Dataset>,
    normalizer: Arc<Normalizer>,
    augment: Augment,
    seed: u64,
    epoch: u32,
    perm: Arc<Vec<u32>>,
    /// Global batch ranges and this rank's part of each.
    ranges: Arc<Vec<(Range<u64>, Range<u64>)>>,
}

impl Job {
    fn build(&self, i: usize) -> Batch {
        let (global, local) = &self.ranges[i];
        let idx = &self.perm[local.start as usize..local.end as usize];
        let mut b = assemble(
            &self.dataset,
            idx,
            &self.normalizer,
            self.augment,
            self.seed,
            self.epoch,
        );
        (b.start, b.end) = (global.start, global.end);
        b
    }
}

/// Produces the training batches of each epoch on background threads.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    normalizer: Arc<Normalizer>,
    augment: Augment,
    sampler: Sampler,
    workers: usize,
    prefetch: usize,
}

impl Loader {
    /// Default number of worker threads.
    pub const DEFAULT_WORKERS: usize = 2;
    /// Default number of batches assembled ahead of the consumer.
    pub const DEFAULT_PREFETCH: usize = 4;

    /// A loader over `dataset`; `workers == 0` assembles on the consuming thread; `prefetch`
    /// bounds the batches waiting in the queues (at least one per worker).
    pub fn new(
        dataset: Arc<Dataset>,
        normalizer: Normalizer,
        augment: Augment,
        seed: u64,
        workers: usize,
        prefetch: usize,
    ) -> Loader {
        Loader {
            sampler: Sampler::new(dataset.len(), seed),
            dataset,
            normalizer: Arc::new(normalizer),
            augment,
            workers,
            prefetch,
        }
    }

    /// The same loader with another last-batch policy.
    pub fn with_last_batch(mut self, last_batch: LastBatch) -> Loader {
        self.sampler = self.sampler.with_last_batch(last_batch);
        self
    }

    /// The sampler that orders the epochs.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The training set.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
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
    ) -> EpochIter {
        let ranges: Vec<_> = self
            .sampler
            .batches(epoch, batch_size, start_offset)
            .map(|g| {
                let local = match shard_of {
                    Some(s) => shard(g.clone(), s),
                    None => g.clone(),
                };
                (g, local)
            })
            .collect();
        let job = Job {
            dataset: self.dataset.clone(),
            normalizer: self.normalizer.clone(),
            augment: self.augment,
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

fn worker(
    job: Job,
    w: usize,
    nw: usize,
    total: usize,
    tx: SyncSender<Batch>,
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
pub struct EpochIter {
    job: Job,
    next: usize,
    total: usize,
    rxs: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl EpochIter {
    /// Global batch ranges of the batches still to come.
    pub fn remaining_ranges(&self) -> Vec<Range<u64>> {
        self.job.ranges[self.next..]
            .iter()
            .map(|(g, _)| g.clone())
            .collect()
    }
}

impl Iterator for EpochIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
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

impl ExactSizeIterator for EpochIter {}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes any blocked `send` fail, so every worker returns.
        self.rxs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
