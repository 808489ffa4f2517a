//! The SGD noise scale and the batch sizes that keep it fixed.
//!
//! Smith & Le (2017, "A Bayesian perspective on generalization and stochastic gradient
//! descent") model SGD as a discretised stochastic differential equation whose random
//! fluctuations have a scale
//!
//! ```text
//! g = ε (N/B − 1)            (Smith et al. 2018, eq. 6)
//! ```
//!
//! for learning rate ε, training-set size N and batch size B. With momentum coefficient m the
//! learning rate that matters is the *effective* learning rate ε/(1 − m), so
//!
//! ```text
//! g = ε/(1 − m) · (N/B − 1)  (Smith et al. 2018, eq. 7)
//! ```
//!
//! When B ≪ N both reduce to g ≈ εN/B (or εN/(B(1 − m))), which is the relation "Don't Decay
//! the Learning Rate, Increase the Batch Size" (Smith, Kindermans, Ying & Le, ICLR 2018)
//! exploits: dividing ε by a factor or multiplying B by the same factor lowers the noise
//! scale equally, but the second needs fewer parameter updates. The paper notes that the
//! approximation, and with it the equivalence, breaks down once B approaches N; it keeps
//! B ≲ N/10, which [`max_batch_size`] returns.
//!
//! The helpers here answer "if I change ε (or m) by so much, what batch size keeps g?" in the
//! B ≪ N approximation (B ∝ ε/(1 − m)), and round the answer to a batch size the hardware
//! can run ([`round_to_multiple`]).

use crate::units::Samples;

/// The exact SGD noise scale `g = ε/(1 − m) · (N/B − 1)` (Smith et al. 2018, eqs. 6–7;
/// Smith & Le 2017), for learning rate `lr`, training-set size `n`, batch size `b` and
/// momentum coefficient `momentum` (0 for plain SGD).
pub fn noise_scale(lr: f64, n: Samples, b: usize, momentum: f64) -> f64 {
    effective_lr(lr, momentum) * (n.0 as f64 / b as f64 - 1.0)
}

/// The approximate noise scale `g ≈ εN/(B(1 − m))`, valid for B ≪ N (Smith et al. 2018,
/// section 2); the quantity the paper's schedules hold equal.
pub fn noise_scale_approx(lr: f64, n: Samples, b: usize, momentum: f64) -> f64 {
    effective_lr(lr, momentum) * n.0 as f64 / b as f64
}

/// The effective learning rate `ε/(1 − m)` of SGD with momentum coefficient `m`
/// (Smith et al. 2018, section 2 and eq. 7).
pub fn effective_lr(lr: f64, momentum: f64) -> f64 {
    lr / (1.0 - momentum)
}

/// The largest batch size for which the paper trusts the approximation B ≪ N, taken as
/// `N/10` (rounded down, at least 1): Smith et al. (2018) observe the equivalence between
/// decaying ε and increasing B degrade beyond about this size.
pub fn max_batch_size(n: Samples) -> usize {
    usize::try_from(n.0 / 10).unwrap_or(usize::MAX).max(1)
}

/// The (un-rounded) batch size that keeps the approximate noise scale `εN/(B(1 − m))`
/// unchanged when the learning rate is multiplied by `lr_factor` and the momentum changes
/// from `momentum` to `new_momentum`: `B' = B · (ε'/ε) · (1 − m)/(1 − m')`.
pub fn batch_for_same_noise(b: f64, lr_factor: f64, momentum: f64, new_momentum: f64) -> f64 {
    b * lr_factor * (1.0 - momentum) / (1.0 - new_momentum)
}

/// The (un-rounded) batch size that keeps the approximate noise scale when the learning
/// rate is multiplied by `lr_factor` at fixed momentum: `B' = B · ε'/ε` (Smith et al. 2018,
/// section 5.1, "increasing the learning rate").
pub fn batch_for_lr_factor(b: f64, lr_factor: f64) -> f64 {
    batch_for_same_noise(b, lr_factor, 0.0, 0.0)
}

/// The (un-rounded) batch size that keeps the approximate noise scale when the momentum
/// changes from `momentum` to `new_momentum` at fixed ε: `B' = B · (1 − m)/(1 − m')`
/// (Smith et al. 2018, section 5.1, B ∝ 1/(1 − m)).
pub fn batch_for_momentum(b: f64, momentum: f64, new_momentum: f64) -> f64 {
    batch_for_same_noise(b, 1.0, momentum, new_momentum)
}

/// The positive multiple of `multiple` nearest to `b` (halves round away from zero), and at
/// least `multiple` itself; used to turn an ideal batch size into one that splits evenly
/// into micro-batches × workers. Saturates at the largest representable multiple.
///
/// # Panics
/// If `multiple` is 0.
pub fn round_to_multiple(b: f64, multiple: usize) -> usize {
    assert!(multiple > 0, "batch multiple must be positive");
    let k = (b / multiple as f64).round().max(1.0);
    let max_k = usize::MAX / multiple;
    // NaN was mapped to 1 by `max`; huge values saturate at the largest multiple.
    if k >= max_k as f64 {
        max_k * multiple
    } else {
        k as usize * multiple
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn exact_and_approximate_noise_scale() {
        // CIFAR-10, ε = 0.1, B = 128, no momentum: 0.1 · (50000/128 − 1) = 0.1 · 389.625.
        let n = Samples(50_000);
        assert!(close(noise_scale(0.1, n, 128, 0.0), 38.9625));
        assert!(close(noise_scale_approx(0.1, n, 128, 0.0), 39.0625));
        // With m = 0.9 the effective lr is 1.0: g = 389.625, ≈ 390.625.
        assert!(close(noise_scale(0.1, n, 128, 0.9), 389.625));
        assert!(close(noise_scale_approx(0.1, n, 128, 0.9), 390.625));
        // B = N: no noise at all in the exact form.
        assert!(close(noise_scale(0.1, n, 50_000, 0.0), 0.0));
    }

    #[test]
    fn effective_lr_and_cap() {
        assert!(close(effective_lr(0.1, 0.9), 1.0));
        assert!(close(effective_lr(0.5, 0.0), 0.5));
        assert_eq!(max_batch_size(Samples(50_000)), 5_000);
        assert_eq!(max_batch_size(Samples(60_000)), 6_000);
        assert_eq!(max_batch_size(Samples(9)), 1);
    }

    #[test]
    fn batch_that_keeps_noise() {
        // ε × 5 → B × 5.
        assert!(close(batch_for_lr_factor(128.0, 5.0), 640.0));
        // m 0.9 → 0.98: B × 0.1/0.02 = × 5.
        assert!(close(batch_for_momentum(128.0, 0.9, 0.98), 640.0));
        // Both: × 2 · 5 = × 10.
        assert!(close(batch_for_same_noise(128.0, 2.0, 0.9, 0.98), 1280.0));
        // And the approximate g really is unchanged.
        let n = Samples(50_000);
        let b = batch_for_momentum(128.0, 0.9, 0.98).round() as usize;
        assert!(close(
            noise_scale_approx(0.1, n, 128, 0.9),
            noise_scale_approx(0.1, n, b, 0.98)
        ));
    }

    #[test]
    fn rounding_to_multiples() {
        assert_eq!(round_to_multiple(640.0, 32), 640);
        assert_eq!(round_to_multiple(650.0, 32), 640); // 20.3 → 20
        assert_eq!(round_to_multiple(656.0, 32), 672); // 20.5 → 21
        assert_eq!(round_to_multiple(3.0, 32), 32); // at least one multiple
        assert_eq!(round_to_multiple(0.0, 8), 8);
        assert_eq!(round_to_multiple(127.6, 1), 128);
        assert_eq!(round_to_multiple(f64::INFINITY, 4), usize::MAX / 4 * 4);
    }
}
