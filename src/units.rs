//! Quantities that carry their unit in their type.
//!
//! Training progress is counted three ways that are easy to confuse once the batch size
//! changes: epochs (passes over the training set), samples (images consumed) and updates
//! (optimiser steps). With a constant batch size they are proportional; with the paper's
//! increasing batch size they are not, and mixing them silently breaks schedules and
//! reports. Each gets its own newtype.

use serde::{Deserialize, Serialize};

/// A whole number of epochs: a length, or how many are done.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epochs(pub u32);

/// One epoch named by its 0-based index (the first is `Epoch(0)`), as the schedule is queried;
/// a type apart from [`Epochs`] because logs and metrics count epochs from 1 (`epoch` 3 in
/// `metrics.jsonl` is `Epoch(2)`), and the two are easy to swap.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u32);

impl Epoch {
    /// Epochs done when this one ends: what `metrics.jsonl` numbers it.
    pub fn done_after(self) -> Epochs {
        Epochs(self.0 + 1)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A number of training samples (images) seen or to be seen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Samples(pub u64);

/// A number of parameter updates (optimiser steps), one per (global) batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Updates(pub u64);

macro_rules! additive {
    ($t:ident) => {
        impl std::ops::Add for $t {
            type Output = $t;
            fn add(self, rhs: $t) -> $t {
                $t(self.0 + rhs.0)
            }
        }
        impl std::ops::AddAssign for $t {
            fn add_assign(&mut self, rhs: $t) {
                self.0 += rhs.0;
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
additive!(Epochs);
additive!(Samples);
additive!(Updates);

/// Updates in one epoch of `n` samples at batch size `b`, keeping the last partial batch
/// (`ceil(n / b)`), the convention behind the paper's update counts (78,200 for 200 epochs of
/// CIFAR-10 at B = 128).
pub fn updates_per_epoch(n: Samples, b: usize) -> Updates {
    assert!(b > 0, "batch size must be positive");
    Updates(n.0.div_ceil(b as u64))
}
