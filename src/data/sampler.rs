//! Epoch permutations derived from `(seed, epoch)` alone, batch ranges for any batch size,
//! resumable positions, and sharding of a global batch across data-parallel ranks.

use std::ops::Range;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::units::{Epochs, Samples, Updates};

/// Stream tag of the shuffling RNG (see [`derive_rng`]).
pub const STREAM_SHUFFLE: u64 = 1;
/// Stream tag of the augmentation RNG (see [`derive_rng`]).
pub const STREAM_AUGMENT: u64 = 2;

/// A ChaCha8 RNG keyed by `(seed, epoch, stream, index)` laid out in its 32-byte seed, so
/// distinct tuples never share a key and every stream is reproducible on its own.
pub fn derive_rng(seed: u64, epoch: u32, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&u64::from(epoch).to_le_bytes());
    key[16..24].copy_from_slice(&stream.to_le_bytes());
    key[24..].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// What to do with the last batch of an epoch when the batch size does not divide `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastBatch {
    /// Keep the smaller last batch: `ceil(N / B)` batches, every sample seen each epoch.
    #[default]
    Keep,
    /// Drop it: `floor(N / B)` batches, up to `B - 1` samples unseen that epoch.
    Drop,
}

/// Where training stands in the data: the epoch and the number of samples of it consumed.
/// A checkpoint stores this; [`Sampler::batches`] resumes from `offset` exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Position {
    /// Epoch index (0-based).
    pub epoch: u32,
    /// Samples of this epoch already consumed (global, across ranks).
    pub offset: u64,
}

impl Position {
    /// The start of `epoch`.
    pub fn start_of(epoch: u32) -> Position {
        Position { epoch, offset: 0 }
    }

    /// The position after a batch ending at `end` (its [`Batch::end`](super::Batch::end));
    /// rolls to the next epoch when `end` reaches the epoch's `n` samples.
    pub fn after(self, end: u64, n: u64) -> Position {
        if end >= n {
            Position::start_of(self.epoch + 1)
        } else {
            Position {
                epoch: self.epoch,
                offset: end,
            }
        }
    }

    /// The epoch index as [`Epochs`].
    pub fn epochs(self) -> Epochs {
        Epochs(self.epoch)
    }

    /// The offset as [`Samples`].
    pub fn samples(self) -> Samples {
        Samples(self.offset)
    }
}

/// Orders the `n` training samples of each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sampler {
    /// Number of samples in the training set.
    pub n: usize,
    /// Base seed; the order of epoch `e` depends on `(seed, e)` only.
    pub seed: u64,
    /// Policy for the last partial batch of an epoch.
    pub last_batch: LastBatch,
}

impl Sampler {
    /// A sampler over `n` samples keeping the last partial batch.
    pub fn new(n: usize, seed: u64) -> Sampler {
        Sampler {
            n,
            seed,
            last_batch: LastBatch::Keep,
        }
    }

    /// The same sampler with another last-batch policy.
    pub fn with_last_batch(self, last_batch: LastBatch) -> Sampler {
        Sampler { last_batch, ..self }
    }

    /// The order of the samples in `epoch`: a permutation of `0..n`.
    pub fn permutation(&self, epoch: u32) -> Vec<u32> {
        assert!(
            self.n <= u32::MAX as usize,
            "data set too large for u32 indices"
        );
        let mut perm: Vec<u32> = (0..self.n as u32).collect();
        perm.shuffle(&mut derive_rng(self.seed, epoch, STREAM_SHUFFLE, 0));
        perm
    }

    /// Ranges of positions in the epoch's permutation, one per batch of `batch_size`,
    /// starting at `start_offset` (the [`Position::offset`] of a resumed run). The epoch
    /// argument is unused by the ranges but kept so call sites read as the schedule does.
    /// Panics if `batch_size == 0`.
    pub fn batches(&self, _epoch: u32, batch_size: usize, start_offset: u64) -> Batches {
        assert!(batch_size > 0, "batch size must be positive");
        Batches {
            next: start_offset.min(self.n as u64),
            n: self.n as u64,
            batch: batch_size as u64,
            last_batch: self.last_batch,
        }
    }

    /// Updates (batches) in a whole epoch at `batch_size` under this sampler's policy.
    pub fn updates_per_epoch(&self, batch_size: usize) -> Updates {
        match self.last_batch {
            LastBatch::Keep => crate::units::updates_per_epoch(Samples(self.n as u64), batch_size),
            LastBatch::Drop => Updates((self.n / batch_size) as u64),
        }
    }
}

impl Batches {
    /// The same batches cut at position `end` of the epoch: the batch reaching past it ends
    /// there and none follows (a schedule's change of B within an epoch).
    pub fn until(self, end: u64) -> Batches {
        Batches {
            n: self.n.min(end),
            ..self
        }
    }
}

/// Iterator over the batch ranges of one epoch (see [`Sampler::batches`]).
#[derive(Debug, Clone)]
pub struct Batches {
    next: u64,
    n: u64,
    batch: u64,
    last_batch: LastBatch,
}

impl Iterator for Batches {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        let start = self.next;
        if start >= self.n {
            return None;
        }
        let end = (start + self.batch).min(self.n);
        if end - start < self.batch && self.last_batch == LastBatch::Drop {
            self.next = self.n;
            return None;
        }
        self.next = end;
        Some(start..end)
    }
}

/// One data-parallel rank's place: which of `world` ranks, and the indivisible unit a global
/// batch is cut in (the ghost batch size, so that no ghost chunk straddles two ranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank, `0..world`.
    pub rank: usize,
    /// Number of ranks (data-parallel processes), at least 1.
    pub world: usize,
    /// Samples per indivisible chunk (1: any sample boundary).
    pub quantum: usize,
}

/// The part of a global batch `range` that a rank handles: the batch is cut into chunks of
/// `quantum` samples from its start (the last one possibly shorter), and the chunks are dealt
/// out in contiguous, near-equal runs in rank order, the first `chunks % world` ranks one chunk
/// more. A rank may get nothing (a last batch smaller than the ranks); it must still join every
/// collective. Panics if `world == 0`, `rank >= world` or `quantum == 0`.
pub fn shard(range: Range<u64>, s: Shard) -> Range<u64> {
    assert!(
        s.world > 0 && s.rank < s.world && s.quantum > 0,
        "bad shard {s:?}"
    );
    let len = range.end.saturating_sub(range.start);
    let q = s.quantum as u64;
    let chunks = len.div_ceil(q);
    let (w, r) = (s.world as u64, s.rank as u64);
    let (base, extra) = (chunks / w, chunks % w);
    let first = r * base + r.min(extra);
    let count = base + u64::from(r < extra);
    let start = (range.start + first * q).min(range.end);
    let end = (range.start + (first + count) * q).min(range.end);
    start..end
}

#[cfg(test)]
mod tests {
    use crate::data::*;

    // ---------------------------------------------------------------- sampler

    fn flatten(perm: &[u32], ranges: impl Iterator<Item = std::ops::Range<u64>>) -> Vec<u32> {
        ranges
            .flat_map(|r| perm[r.start as usize..r.end as usize].to_vec())
            .collect()
    }

    fn assert_once(n: usize, seen: &[u32]) {
        let mut s = seen.to_vec();
        s.sort_unstable();
        assert_eq!(s, (0..n as u32).collect::<Vec<_>>());
    }

    #[test]
    fn sampler_every_sample_once_per_epoch() {
        let n = 1000;
        let s = Sampler::new(n, 7);
        for b in [1, 7, 128, 333, 999, 1000, 1500] {
            let perm = s.permutation(3);
            let ranges: Vec<_> = s.batches(3, b, 0).collect();
            assert_eq!(ranges.len(), n.div_ceil(b));
            assert_eq!(ranges.len() as u64, s.updates_per_epoch(b).0);
            assert!(ranges.iter().all(|r| r.end - r.start <= b as u64));
            assert_once(n, &flatten(&perm, ranges.into_iter()));
            // Drop policy: only full batches.
            let d = s.with_last_batch(LastBatch::Drop);
            let full: Vec<_> = d.batches(3, b, 0).collect();
            assert_eq!(full.len(), n / b);
            assert_eq!(full.len() as u64, d.updates_per_epoch(b).0);
            assert!(full.iter().all(|r| r.end - r.start == b as u64));
        }
    }

    #[test]
    fn sampler_reproducible_per_epoch() {
        let s = Sampler::new(500, 42);
        assert_eq!(s.permutation(5), s.permutation(5));
        assert_eq!(s.permutation(5), Sampler::new(500, 42).permutation(5));
        assert_ne!(s.permutation(5), s.permutation(6));
        assert_ne!(s.permutation(0), s.permutation(1));
        assert_ne!(s.permutation(5), Sampler::new(500, 43).permutation(5));
        assert_ne!(s.permutation(0), (0..500).collect::<Vec<u32>>());
    }

    #[test]
    fn batch_size_change_and_resume_neither_repeat_nor_skip() {
        let n = 1037;
        let s = Sampler::new(n, 1);
        // Epoch 0 at B = 32, epoch 1 at B = 100: each covers every sample once.
        for (epoch, b) in [(0u32, 32usize), (1, 100)] {
            assert_once(n, &flatten(&s.permutation(epoch), s.batches(epoch, b, 0)));
        }
        // Interrupt epoch 2 after 5 batches of 64, checkpoint, resume (also at another size).
        let full = flatten(&s.permutation(2), s.batches(2, 64, 0));
        let mut pos = Position::start_of(2);
        let mut seen = Vec::new();
        let perm = s.permutation(2);
        for r in s.batches(pos.epoch, 64, pos.offset).take(5) {
            seen.extend_from_slice(&perm[r.start as usize..r.end as usize]);
            pos = pos.after(r.end, n as u64);
        }
        let json = serde_json::to_string(&pos).unwrap();
        let pos: Position = serde_json::from_str(&json).unwrap();
        assert_eq!(
            pos,
            Position {
                epoch: 2,
                offset: 320
            }
        );
        let mut resumed = seen.clone();
        let perm = Sampler::new(n, 1).permutation(pos.epoch); // a fresh process
        resumed.extend(flatten(&perm, s.batches(pos.epoch, 64, pos.offset)));
        assert_eq!(resumed, full);
        let mut other = seen.clone();
        other.extend(flatten(&perm, s.batches(pos.epoch, 100, pos.offset)));
        assert_eq!(
            other, full,
            "resuming at another batch size keeps the order"
        );
        // The last batch rolls the position into the next epoch.
        let last = s.batches(2, 64, 0).last().unwrap();
        assert_eq!(pos.after(last.end, n as u64), Position::start_of(3));
    }

    #[test]
    fn shards_cover_each_batch_once() {
        for len in 0..20u64 {
            for world in 1..6 {
                let range = 100..100 + len;
                let parts: Vec<_> = (0..world)
                    .map(|rank| {
                        let s = Shard {
                            rank,
                            world,
                            quantum: 1,
                        };
                        shard(range.clone(), s)
                    })
                    .collect();
                let mut next = range.start;
                for (r, p) in parts.iter().enumerate() {
                    assert_eq!(p.start, next);
                    let size = len / world as u64 + u64::from((r as u64) < len % world as u64);
                    assert_eq!(p.end - p.start, size);
                    next = p.end;
                }
                assert_eq!(next, range.end);
            }
        }
    }

    /// With a quantum (the ghost batch size), every shard starts on a multiple of it from the
    /// batch's start, so ghost chunks are the same whatever the number of ranks; the last chunk
    /// may be short and ranks past the data get empty shards.
    #[test]
    fn shards_keep_whole_chunks() {
        for len in 0..40u64 {
            for world in 1..5 {
                for quantum in [1usize, 3, 4, 8] {
                    let range = 50..50 + len;
                    let mut next = range.start;
                    let mut sizes = Vec::new();
                    for rank in 0..world {
                        let p = shard(
                            range.clone(),
                            Shard {
                                rank,
                                world,
                                quantum,
                            },
                        );
                        assert_eq!(p.start, next, "len {len} world {world} q {quantum}");
                        assert!(
                            p.is_empty() || (p.start - range.start).is_multiple_of(quantum as u64),
                            "shard {p:?} of {range:?} splits a chunk of {quantum}"
                        );
                        sizes.push((p.end - p.start).div_ceil(quantum as u64));
                        next = p.end;
                    }
                    assert_eq!(next, range.end);
                    // Chunks near-equally dealt: counts differ by at most one, larger first.
                    assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1));
                }
            }
        }
        // 10 samples in chunks of 4 over 2 ranks: [0, 8) and [8, 10).
        let s = |rank| Shard {
            rank,
            world: 2,
            quantum: 4,
        };
        assert_eq!(shard(0..10, s(0)), 0..8);
        assert_eq!(shard(0..10, s(1)), 8..10);
    }
}
