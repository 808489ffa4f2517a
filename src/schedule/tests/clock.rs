//! The sample clock: phases that start at sample counts within epochs, their update counts and
//! ε per sample, Seesaw, Megatron's ramp-up, and the keys each clock refuses.

use super::*;

/// N = 1,000 samples; 2,500 trained (2.5 epochs); ×10 at samples 800 and 1,700.
fn clock(kind: ScheduleKind) -> ScheduleConfig {
    ScheduleConfig {
        epochs: 0,
        samples: Some(2_500),
        milestone_samples: vec![800, 1_700],
        factor: 10.0,
        ..ScheduleConfig::new(kind, 0, 0.1, 10)
    }
}

const SMALL: Samples = Samples(1_000);

fn ranges(s: &Schedule) -> Vec<(u64, u64, usize)> {
    s.phases()
        .iter()
        .map(|p| {
            let r = p.sample_range(s.dataset_size());
            (r.from.0, r.until.0, p.batch_size)
        })
        .collect()
}

#[test]
fn increase_batch_changes_b_at_sample_counts_within_epochs() {
    let s = clock(ScheduleKind::IncreaseBatch).resolve(SMALL).unwrap();
    assert_eq!(
        ranges(&s),
        [(0, 800, 10), (800, 1_700, 100), (1_700, 2_500, 1_000)]
    );
    assert_eq!(s.epochs(), Epochs(3));
    assert_eq!(s.samples(), Samples(2_500));
    // Each phase's part of each epoch ends in its own partial batch: 80; 2 + 7; 1 + 1.
    assert_eq!(s.total_updates(), Updates(80 + 9 + 2));
    // The batch starting at a milestone is the first of the new phase; one starting a sample
    // before it is still of the old phase (and is cut at the milestone).
    assert_eq!(s.hyper_at(Epoch(0), 799).batch_size, 10);
    assert_eq!(s.hyper_at(Epoch(0), 800).batch_size, 100);
    assert_eq!(s.hyper_at(Epoch(1), 699).batch_size, 100);
    assert_eq!(s.hyper_at(Epoch(1), 700).batch_size, 1_000);
    assert_eq!(s.pass_end(Samples(790)), Samples(800));
    assert_eq!(s.pass_end(Samples(1_000)), Samples(1_700));
    // Training ends within the third epoch.
    assert_eq!(s.pass_end(Samples(2_000)), Samples(2_500));
    assert!(s.phases().iter().all(|p| p.lr == 0.1));
}

#[test]
fn decay_lr_and_seesaw_on_the_sample_clock() {
    let d = clock(ScheduleKind::DecayLr).resolve(SMALL).unwrap();
    assert_eq!(d.total_updates(), Updates(250));
    let lrs: Vec<f64> = d.phases().iter().map(|p| p.lr).collect();
    for (got, want) in lrs.iter().zip([0.1, 0.01, 0.001]) {
        assert!(close(*got, want), "{got} vs {want}");
    }
    // Seesaw: ε ÷ √10 where decay-lr divides by 10, and B × 10.
    let s = clock(ScheduleKind::Seesaw).resolve(SMALL).unwrap();
    assert_eq!(
        ranges(&s),
        [(0, 800, 10), (800, 1_700, 100), (1_700, 2_500, 1_000)]
    );
    let lrs: Vec<f64> = s.phases().iter().map(|p| p.lr).collect();
    for (got, want) in lrs.iter().zip([0.1, 0.1 / 10f64.sqrt(), 0.01]) {
        assert!(close(*got, want), "{got} vs {want}");
    }
}

#[test]
fn warm_up_in_samples_moves_epsilon_per_sample() {
    let cfg = ScheduleConfig {
        warmup_samples: 1_200,
        warmup_from: 0.0,
        ..clock(ScheduleKind::DecayLr)
    };
    let s = cfg.resolve(SMALL).unwrap();
    assert!(close(s.hyper_at(Epoch(0), 0).lr, 0.0));
    assert!(close(s.hyper_at(Epoch(0), 600).lr, 0.1 * 0.5));
    // Past the first milestone (ε 0.01) and still warming: 1,100 / 1,200 of it.
    assert!(close(
        s.hyper_at(Epoch(1), 100).lr,
        0.01 * 1_100.0 / 1_200.0
    ));
    assert!(close(s.hyper_at(Epoch(1), 200).lr, 0.01));
}

#[test]
fn rampup_grows_b_in_equal_steps_then_follows_the_recipe() {
    let cfg = ScheduleConfig {
        batch_size: 64,
        rampup: Some(Rampup {
            start: 16,
            increment: 16,
            samples: 300,
        }),
        ..clock(ScheduleKind::Rampup)
    };
    let s = cfg.resolve(SMALL).unwrap();
    // (64 − 16) / 16 = 3 steps, each 100 samples long.
    assert_eq!(
        ranges(&s)[..5],
        [
            (0, 100, 16),
            (100, 200, 32),
            (200, 300, 48),
            (300, 800, 64),
            (800, 1_700, 64)
        ]
    );
    assert!(close(s.phases()[4].lr, 0.01));
    // The same config under another kind ignores the ramp.
    let plain = cfg.with_kind(ScheduleKind::DecayLr).resolve(SMALL).unwrap();
    assert_eq!(plain.phases()[0].batch_size, 64);
}

#[test]
fn a_cosine_recipe_and_its_conversion_step_through_lr_segments() {
    let cfg = ScheduleConfig {
        milestone_samples: vec![],
        lr_segments: 4,
        lr_schedule: Some(LrSchedule::Cosine { min_lr: 0.0 }),
        ..clock(ScheduleKind::DecayLr)
    };
    let d = cfg.resolve(SMALL).unwrap();
    let starts: Vec<u64> = ranges(&d).iter().map(|r| r.0).collect();
    assert_eq!(starts, [0, 625, 1_250, 1_875]);
    // ε_k = ε0 (1 + cos(πk/4)) / 2.
    let want = |k: f64| 0.1 * (1.0 + (std::f64::consts::PI * k / 4.0).cos()) / 2.0;
    for (k, p) in d.phases().iter().enumerate() {
        assert!(close(p.lr, want(k as f64)), "{k}: {}", p.lr);
    }
    let c = cfg
        .with_kind(ScheduleKind::Converted)
        .resolve(SMALL)
        .unwrap();
    let bs: Vec<usize> = c.phases().iter().map(|p| p.batch_size).collect();
    assert!(bs.windows(2).all(|w| w[0] < w[1]), "{bs:?}");
}

#[test]
fn each_clock_refuses_the_other_clocks_keys() {
    let err = |c: ScheduleConfig| c.resolve(SMALL).unwrap_err().to_string();
    let both = ScheduleConfig {
        epochs: 3,
        ..clock(ScheduleKind::DecayLr)
    };
    assert!(err(both).contains("schedule.epochs = 3 is out of range: must be absent"));
    let epochs_with_sample_key = ScheduleConfig {
        warmup_samples: 10,
        ..ScheduleConfig::new(ScheduleKind::DecayLr, 3, 0.1, 10)
    };
    assert_eq!(
        err(epochs_with_sample_key),
        "schedule.warmup_samples counts samples: give the length as schedule.samples (the sample clock), not schedule.epochs"
    );
    let samples_with_epoch_key = ScheduleConfig {
        milestones: vec![1],
        ..clock(ScheduleKind::DecayLr)
    };
    assert!(err(samples_with_epoch_key).starts_with("schedule.milestones counts epochs"));
    let late = ScheduleConfig {
        milestone_samples: vec![800, 2_500],
        ..clock(ScheduleKind::DecayLr)
    };
    assert!(err(late).contains("each in 1..samples (1..2500)"));
    let uneven = ScheduleConfig {
        batch_size: 64,
        rampup: Some(Rampup {
            start: 16,
            increment: 10,
            samples: 300,
        }),
        ..clock(ScheduleKind::Rampup)
    };
    assert!(err(uneven).contains("rampup.increment = 10"));
    assert_eq!(
        err(clock(ScheduleKind::Rampup)),
        "schedule.rampup = { start, increment, samples } is required when schedule.kind = \"rampup\""
    );
}
