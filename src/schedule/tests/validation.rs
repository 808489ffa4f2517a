//! Settings the schedule refuses and the messages that say why; the adaptive kind's own checks.

use super::*;

fn err(cfg: ScheduleConfig, n: u64) -> String {
    cfg.resolve(Samples(n)).unwrap_err().to_string()
}

#[test]
fn validation_messages() {
    let base = || ScheduleConfig {
        milestones: vec![60, 120, 160],
        ..ScheduleConfig::new(ScheduleKind::DecayLr, 200, 0.1, 128)
    };
    let cases: Vec<(ScheduleConfig, &str)> = vec![
        (
            ScheduleConfig {
                batch_size: 0,
                ..base()
            },
            "schedule.batch_size = 0 is out of range: must be in 1..=N (60000)",
        ),
        (
            ScheduleConfig {
                batch_size: 60_001,
                ..base()
            },
            "schedule.batch_size = 60001 is out of range: must be in 1..=N (60000)",
        ),
        (
            ScheduleConfig { lr: 0.0, ..base() },
            "schedule.lr = 0 is out of range: must be finite and > 0",
        ),
        (
            ScheduleConfig {
                lr: f64::NAN,
                ..base()
            },
            "schedule.lr = NaN is out of range: must be finite and > 0",
        ),
        (
            ScheduleConfig {
                momentum: 1.0,
                ..base()
            },
            "schedule.momentum = 1 is out of range: must be in [0, 1)",
        ),
        (
            ScheduleConfig {
                momentum: -0.1,
                ..base()
            },
            "schedule.momentum = -0.1 is out of range: must be in [0, 1)",
        ),
        (
            ScheduleConfig {
                milestones: vec![60, 60],
                ..base()
            },
            "schedule.milestones = [60, 60] is out of range: must be strictly increasing",
        ),
        (
            ScheduleConfig {
                milestones: vec![0, 60],
                ..base()
            },
            "schedule.milestones = [0, 60] is out of range: each must be in 1..epochs (1..200)",
        ),
        (
            ScheduleConfig {
                milestones: vec![60, 200],
                ..base()
            },
            "schedule.milestones = [60, 200] is out of range: each must be in 1..epochs (1..200)",
        ),
        (
            ScheduleConfig {
                factor: 1.0,
                ..base()
            },
            "schedule.factor = 1 is out of range: must be finite and > 1",
        ),
        (
            ScheduleConfig {
                epochs: 0,
                milestones: vec![],
                ..base()
            },
            "schedule.epochs = 0 is out of range: must be at least 1",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Hybrid,
                max_batch_size: Some(100),
                ..base()
            },
            "schedule.max_batch_size = 100 is out of range: must be in 128..=N (60000) \
             (at least batch_size and batch_multiple)",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Hybrid,
                batch_size: 10_000,
                ..base()
            },
            "schedule.max_batch_size = 6000 (default N/10) is out of range: must be in \
             10000..=N (60000) (at least batch_size and batch_multiple)",
        ),
        (
            ScheduleConfig {
                batch_multiple: 0,
                ..base()
            },
            "schedule.batch_multiple = 0 is out of range: must be in 1..=N (60000)",
        ),
        (
            ScheduleConfig {
                warmup_epochs: -1.0,
                ..base()
            },
            "schedule.warmup_epochs = -1 is out of range: must be in [0, epochs (200)]",
        ),
        (
            ScheduleConfig {
                warmup_epochs: 201.0,
                ..base()
            },
            "schedule.warmup_epochs = 201 is out of range: must be in [0, epochs (200)]",
        ),
        (
            ScheduleConfig {
                warmup_from: 1.5,
                ..base()
            },
            "schedule.warmup_from = 1.5 is out of range: must be in [0, 1]",
        ),
        (
            ScheduleConfig {
                lr_scale: 0.0,
                ..base()
            },
            "schedule.lr_scale = 0 is out of range: must be finite and > 0",
        ),
        (
            ScheduleConfig {
                momentum: 0.9,
                momentum_scaled: Some(0.5),
                ..base()
            },
            "schedule.momentum_scaled = 0.5 is out of range: must be in [momentum (0.9), 1)",
        ),
        (
            ScheduleConfig {
                momentum_scaled: Some(1.0),
                ..base()
            },
            "schedule.momentum_scaled = 1 is out of range: must be in [momentum (0), 1)",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                ..base()
            },
            "schedule.lr_schedule is required when schedule.kind = \"converted\"",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::IncreaseBatch,
                lr_schedule: Some(LrSchedule::Exponential { gamma: 0.9 }),
                ..base()
            },
            "schedule.lr_schedule is only used with schedule.kind = \"converted\", \
             \"decay-lr\" or \"rampup\", not \"increase-batch\"",
        ),
        (
            ScheduleConfig {
                lr_schedule: Some(LrSchedule::Exponential { gamma: 0.9 }),
                ..base()
            },
            "schedule.milestones = [60, 120, 160] is out of range: must be empty with an \
             lr_schedule, which says when ε changes",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                lr_schedule: Some(LrSchedule::Exponential { gamma: 0.0 }),
                ..base()
            },
            "schedule.lr_schedule.gamma = 0 is out of range: must be finite and > 0",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                lr_schedule: Some(LrSchedule::Step {
                    step_size: 0,
                    gamma: 0.5,
                }),
                ..base()
            },
            "schedule.lr_schedule.step_size = 0 is out of range: must be at least 1",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                lr_schedule: Some(LrSchedule::Cosine { min_lr: 0.2 }),
                ..base()
            },
            "schedule.lr_schedule.min_lr = 0.2 is out of range: must be in [0, lr (0.1)]",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                lr_schedule: Some(LrSchedule::Table { lrs: vec![0.1; 3] }),
                ..base()
            },
            "schedule.lr_schedule.lrs = [3 values] is out of range: must have one value \
             per epoch, or per lr_segment on the sample clock (200)",
        ),
        (
            ScheduleConfig {
                kind: ScheduleKind::Converted,
                lr_schedule: Some(LrSchedule::Multistep {
                    milestones: vec![50, 40],
                    gamma: 0.1,
                }),
                ..base()
            },
            "schedule.lr_schedule.milestones = [50, 40] is out of range: must be strictly \
             increasing",
        ),
    ];
    for (cfg, want) in cases {
        assert_eq!(err(cfg, 60_000), want);
    }
    assert_eq!(
        err(base(), 0),
        "the training set is empty (N = 0); a schedule needs N ≥ 1"
    );
    assert!(base().resolve(Samples(60_000)).is_ok());
}

/// `adaptive` resolves to its starting point (ε0, B0, m over all epochs), takes no milestones,
/// checks its own keys, and its table is refused under any other kind; `with_kind` moves any
/// preset to any kind.
#[test]
fn adaptive_settings_are_checked() {
    let mut c = ScheduleConfig::new(ScheduleKind::Adaptive, 30, 0.1, 64);
    c.momentum = 0.9;
    let s = c.resolve(Samples(60_000)).unwrap();
    assert_eq!(s.phases().len(), 1);
    assert_eq!(
        (
            s.phases()[0].lr,
            s.phases()[0].batch_size,
            s.phases()[0].momentum
        ),
        (0.1, 64, 0.9)
    );
    let err = |c: &ScheduleConfig| c.resolve(Samples(60_000)).unwrap_err().to_string();
    let mut m = c.clone();
    m.milestones = vec![10];
    assert!(err(&m).contains("schedule.milestones"), "{}", err(&m));
    for (key, a) in [
        (
            "adaptive.alpha",
            AdaptiveConfig {
                alpha: 0.0,
                ..AdaptiveConfig::default()
            },
        ),
        (
            "adaptive.min_change",
            AdaptiveConfig {
                min_change: 0.5,
                ..AdaptiveConfig::default()
            },
        ),
        (
            "adaptive.min_batch_size",
            AdaptiveConfig {
                min_batch_size: Some(7000),
                ..AdaptiveConfig::default()
            },
        ),
    ] {
        let mut bad = c.clone();
        bad.adaptive = Some(a);
        assert!(err(&bad).contains(key), "{key}: {}", err(&bad));
    }
    let mut capped = c.clone();
    capped.max_batch_size = Some(32);
    assert!(err(&capped).contains("max_batch_size"), "{}", err(&capped));
    let mut other = c.with_kind(ScheduleKind::Hybrid);
    assert_eq!(other.adaptive, None);
    other.adaptive = Some(AdaptiveConfig::default());
    assert!(err(&other).contains("only used with schedule.kind = \"adaptive\""));
    let paper = paper(ScheduleKind::DecayLr).with_kind(ScheduleKind::Adaptive);
    assert!(paper.milestones.is_empty());
    assert!(paper.resolve(N).is_ok());
}
