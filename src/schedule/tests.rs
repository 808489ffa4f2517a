//! Schedules of every kind against the paper's numbers and invariants (proptest).

use super::config::phase_index;
use super::*;
use proptest::prelude::*;

const N: Samples = CIFAR10_SAMPLES;

fn paper(kind: ScheduleKind) -> ScheduleConfig {
    ScheduleConfig::paper_cifar10(kind)
}

fn batches(s: &Schedule) -> Vec<(u32, u32, usize)> {
    s.phases()
        .iter()
        .map(|p| (p.start.0, p.end.0, p.batch_size))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

#[test]
fn paper_decay_lr() {
    // 200 epochs × ceil(50000/128) = 200 × 391 = 78,200 updates.
    let s = paper(ScheduleKind::DecayLr).resolve(N).unwrap();
    assert_eq!(s.total_updates(), Updates(78_200));
    assert_eq!(s.phases().len(), 4);
    assert!(s.phases().iter().all(|p| p.batch_size == 128));
    let lrs: Vec<f64> = s.phases().iter().map(|p| p.lr).collect();
    for (got, want) in lrs.iter().zip([0.1, 0.02, 0.004, 0.0008]) {
        assert!(close(*got, want), "{got} vs {want}");
    }
    // MultiStepLR semantics: epoch 59 still at ε0, epoch 60 already decayed.
    assert!(close(s.hyper(Epochs(59), 0.9).lr, 0.1));
    assert!(close(s.hyper(Epochs(60), 0.0).lr, 0.02));
    assert_eq!(s.hyper(Epochs(60), 0.0).momentum, 0.9);
}

#[test]
fn paper_increase_batch() {
    // 60·391 + 60·79 + 40·16 + 40·4 = 23460 + 4740 + 640 + 160 = 29,000
    // (B = 128, 640, 3200, 16000).
    let s = paper(ScheduleKind::IncreaseBatch).resolve(N).unwrap();
    assert_eq!(s.total_updates(), Updates(29_000));
    assert_eq!(
        batches(&s),
        [
            (0, 60, 128),
            (60, 120, 640),
            (120, 160, 3200),
            (160, 200, 16_000)
        ]
    );
    assert!(s.phases().iter().all(|p| p.lr == 0.1));
    assert_eq!(s.batch_size(Epochs(159)), 3200);
    assert_eq!(s.batch_size(Epochs(160)), 16_000);
    assert_eq!(s.updates_in_epoch(Epochs(0)), Updates(391));
    assert_eq!(s.updates_in_epoch(Epochs(199)), Updates(4));

    // Milestones 60/120/180: 23460 + 4740 + 60·16 + 20·4 = 23460+4740+960+80 = 29,240.
    let cfg = ScheduleConfig {
        milestones: vec![60, 120, 180],
        ..paper(ScheduleKind::IncreaseBatch)
    };
    assert_eq!(cfg.resolve(N).unwrap().total_updates(), Updates(29_240));
}

#[test]
fn paper_hybrid() {
    // Cap 5120: B 128 → 640 → 3200; 16000 > 5120, so B stays 3200 and ε ÷ 5 at 160.
    // 60·391 + 60·79 + 40·16 + 40·16 = 23460 + 4740 + 640 + 640 = 29,480.
    let cfg = ScheduleConfig {
        max_batch_size: Some(5120),
        ..paper(ScheduleKind::Hybrid)
    };
    let s = cfg.resolve(N).unwrap();
    assert_eq!(s.total_updates(), Updates(29_480));
    assert_eq!(
        batches(&s),
        [
            (0, 60, 128),
            (60, 120, 640),
            (120, 160, 3200),
            (160, 200, 3200)
        ]
    );
    assert!(close(s.phases()[2].lr, 0.1));
    assert!(close(s.phases()[3].lr, 0.02));
    // Same approximate g as decay-lr in the last phase: 0.02/0.1 · 50000/3200 = 3.125.
    let d = paper(ScheduleKind::DecayLr).resolve(N).unwrap();
    assert!(close(
        s.noise_scale(Epochs(199)).approx,
        d.noise_scale(Epochs(199)).approx
    ));
    assert!(close(s.noise_scale(Epochs(199)).approx, 3.125));
    // Default cap N/10 = 5000 gives the same here.
    let s2 = paper(ScheduleKind::Hybrid).resolve(N).unwrap();
    assert_eq!(s2.total_updates(), Updates(29_480));
}

#[test]
fn paper_effective_lr_variants() {
    // lr_scale 5: ε0 = 0.5, B0 = 640; B 640 → 3200 → 16000 → 80000 > N, so the last
    // phase runs at B = N = 50000 with ε = 0.5 · 50000/80000 = 0.3125.
    // 60·79 + 60·16 + 40·4 + 40·1 = 4740 + 960 + 160 + 40 = 5,900.
    let cfg = ScheduleConfig {
        lr_scale: 5.0,
        ..paper(ScheduleKind::IncreaseBatch)
    };
    let s = cfg.resolve(N).unwrap();
    assert_eq!(s.total_updates(), Updates(5_900));
    assert_eq!(
        batches(&s),
        [
            (0, 60, 640),
            (60, 120, 3200),
            (120, 160, 16_000),
            (160, 200, 50_000)
        ]
    );
    assert!(close(s.phases()[0].lr, 0.5));
    assert!(close(s.phases()[3].lr, 0.3125));
    assert_eq!(s.g_rounding_error(Epochs(199)), 0.0);

    // momentum_scaled 0.98: B0 = 128 · 0.1/0.02 = 640, ε0 = 0.1, m = 0.98: same 5,900.
    let cfg = ScheduleConfig {
        momentum_scaled: Some(0.98),
        ..paper(ScheduleKind::IncreaseBatch)
    };
    let s = cfg.resolve(N).unwrap();
    assert_eq!(s.total_updates(), Updates(5_900));
    assert_eq!(batches(&s)[0], (0, 60, 640));
    assert!(s.phases().iter().all(|p| p.momentum == 0.98));
    assert!(close(s.phases()[0].lr, 0.1));
    // g ≈ 0.1/0.02 · 50000/640 = 390.625, as for the baseline.
    assert!((s.noise_scale(Epochs(0)).approx - 390.625).abs() < 1e-9);
}

#[test]
fn converted_multistep_is_increase_batch() {
    let cfg = ScheduleConfig {
        kind: ScheduleKind::Converted,
        lr_schedule: Some(LrSchedule::Multistep {
            milestones: vec![60, 120, 160],
            gamma: 0.2,
        }),
        max_batch_size: Some(50_000),
        ..paper(ScheduleKind::Converted)
    };
    let s = cfg.resolve(N).unwrap();
    let ib = paper(ScheduleKind::IncreaseBatch).resolve(N).unwrap();
    assert_eq!(s.phases(), ib.phases());
    assert_eq!(s.total_updates(), Updates(29_000));

    // With the default cap N/10 = 5000 the last phase is B = 5000 and ε lowered to
    // 3.125 · (1 − 0.9) · 5000 / 50000 = 0.03125, keeping g = 3.125 exactly.
    let cfg = ScheduleConfig {
        max_batch_size: None,
        ..cfg
    };
    let s = cfg.resolve(N).unwrap();
    let last = s.phases()[3];
    assert_eq!(last.batch_size, 5000);
    assert!(close(last.lr, 0.03125));
    assert!(close(s.noise_scale(Epochs(199)).approx, 3.125));
    // 23460 + 4740 + 640 + 40·10 = 29,240.
    assert_eq!(s.total_updates(), Updates(29_240));
}

#[test]
fn converted_cosine_is_monotone_and_reports_rounding() {
    let cfg = ScheduleConfig {
        lr_schedule: Some(LrSchedule::Cosine { min_lr: 0.0 }),
        ..paper(ScheduleKind::Converted)
    };
    let s = cfg.resolve(N).unwrap();
    let bs: Vec<usize> = (0..200).map(|e| s.batch_size(Epochs(e))).collect();
    assert!(bs.windows(2).all(|w| w[0] <= w[1]), "{bs:?}");
    assert_eq!(bs[0], 128);
    assert_eq!(*bs.last().unwrap(), 5000, "the cap binds at the end");
    // Epoch 1: ε_1/ε0 = (1 + cos(π/200))/2, B = 128 / that ≈ 128.0079 → 128.
    let ideal = 128.0 / ((1.0 + (std::f64::consts::PI / 200.0).cos()) / 2.0);
    let err = (ideal - 128.0) / 128.0;
    assert!(err > 0.0);
    assert!(close(s.g_rounding_error(Epochs(1)), err));
    let table = s.table();
    assert!(table.phases.iter().any(|r| r.g_rounding_error > 0.0));
    for r in &table.phases {
        assert!(r.g_rounding_error <= 0.5 / r.batch_size as f64 + 1e-12);
    }
    // Phases merge epochs with identical (ε, B, m).
    assert!(table.phases.len() < 200);
    assert!(table.phases[0].end > Epochs(1)); // epochs 0 and 1 both at B = 128
    // The row reports the worst epoch: the last one, where the ideal B is furthest from 128.
    let last = Epochs(table.phases[0].end.0 - 1);
    assert_eq!(table.phases[0].g_rounding_error, s.g_rounding_error(last));
    assert_eq!(s.g_rounding_error(Epochs(0)), 0.0);
}

#[test]
fn converted_other_lr_schedules() {
    let conv = |lr_schedule| ScheduleConfig {
        lr_schedule: Some(lr_schedule),
        max_batch_size: Some(50_000),
        ..paper(ScheduleKind::Converted)
    };
    // StepLR(step 60, γ 0.2): B = 128, 640, 3200, 16000 at 0, 60, 120, 180.
    let s = conv(LrSchedule::Step {
        step_size: 60,
        gamma: 0.2,
    })
    .resolve(N)
    .unwrap();
    assert_eq!(s.total_updates(), Updates(29_240));
    // ExponentialLR(γ 0.5): B doubles every epoch until N.
    let s = conv(LrSchedule::Exponential { gamma: 0.5 })
        .resolve(N)
        .unwrap();
    assert_eq!(s.batch_size(Epochs(3)), 1024);
    assert_eq!(s.batch_size(Epochs(199)), 50_000);
    // A table equal to ε0 everywhere except a halving at the end.
    let mut lrs = vec![0.1; 200];
    lrs[199] = 0.05;
    let s = conv(LrSchedule::Table { lrs }).resolve(N).unwrap();
    assert_eq!(batches(&s), [(0, 199, 128), (199, 200, 256)]);
}

#[test]
fn warmup_is_linear() {
    let cfg = ScheduleConfig {
        warmup_epochs: 5.0,
        warmup_from: 0.1,
        ..paper(ScheduleKind::IncreaseBatch)
    };
    let s = cfg.resolve(N).unwrap();
    // Start: 0.1 · ε0 = 0.01.
    assert!(close(s.hyper(Epochs(0), 0.0).lr, 0.01));
    // At t = warmup_epochs: ε0.
    assert!(close(s.hyper(Epochs(5), 0.0).lr, 0.1));
    assert!(close(s.hyper(Epochs(4), 1.0).lr, 0.1));
    // Halfway (t = 2.5): 0.1 · (0.1 + 0.9 · 0.5) = 0.055.
    assert!(close(s.hyper(Epochs(2), 0.5).lr, 0.055));
    // Linear: equal steps in t give equal steps in ε.
    let at = |t: f64| s.hyper(Epochs(t.floor() as u32), t.fract()).lr;
    let step = at(0.5) - at(0.0);
    for k in 1..10 {
        let t = 0.5 * f64::from(k);
        assert!((at(t + 0.5) - at(t) - step).abs() < 1e-12);
    }
    // Batch size is untouched by warm-up.
    assert_eq!(s.hyper(Epochs(0), 0.3).batch_size, 128);

    // Fractional warm-up, composed with lr_scale: full ε0 = 0.5 from t = 2.5 on.
    let cfg = ScheduleConfig {
        warmup_epochs: 2.5,
        warmup_from: 0.0,
        lr_scale: 5.0,
        ..paper(ScheduleKind::DecayLr)
    };
    let s = cfg.resolve(N).unwrap();
    assert_eq!(s.hyper(Epochs(0), 0.0).lr, 0.0);
    assert!(close(s.hyper(Epochs(1), 0.25).lr, 0.25));
    assert!(close(s.hyper(Epochs(2), 0.5).lr, 0.5));
    assert!(close(s.hyper(Epochs(3), 0.0).lr, 0.5));
}

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
                lr_schedule: Some(LrSchedule::Exponential { gamma: 0.9 }),
                ..base()
            },
            "schedule.lr_schedule is only used with schedule.kind = \"converted\", \
             not \"decay-lr\"",
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
             per epoch (200)",
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

#[test]
fn toml_config_and_reports() {
    #[derive(Deserialize)]
    struct Run {
        schedule: ScheduleConfig,
    }
    let text = r#"
        [schedule]
        kind = "hybrid"
        epochs = 200
        lr = 0.1
        batch_size = 128
        momentum = 0.9
        milestones = [60, 120, 160]
        max_batch_size = 5120
    "#;
    let cfg = toml::from_str::<Run>(text).unwrap().schedule;
    assert_eq!(
        cfg,
        ScheduleConfig {
            max_batch_size: Some(5120),
            ..paper(ScheduleKind::Hybrid)
        }
    );
    // Round trip through TOML.
    let back: ScheduleConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    // Unknown keys are refused.
    let bad = text.replace("momentum = 0.9", "momentum = 0.9\nmomentun = 0.9");
    assert!(toml::from_str::<Run>(&bad).is_err());
    // Tagged LR schedule.
    let conv = r#"
        kind = "converted"
        epochs = 10
        lr = 0.1
        batch_size = 32
        lr_schedule = { type = "multistep", milestones = [5], gamma = 0.5 }
    "#;
    let cfg: ScheduleConfig = toml::from_str(conv).unwrap();
    let s = cfg.resolve(Samples(1000)).unwrap();
    assert_eq!(batches(&s), [(0, 5, 32), (5, 10, 64)]);

    // Reports.
    let s = paper(ScheduleKind::Hybrid).resolve(N).unwrap();
    let table = s.table();
    assert_eq!(table.total_updates, Updates(29_480));
    assert_eq!(table.samples, Samples(10_000_000));
    assert_eq!(
        table
            .phases
            .iter()
            .map(|r| r.cumulative_updates.0)
            .collect::<Vec<_>>(),
        [23_460, 28_200, 28_840, 29_480]
    );
    let json: serde_json::Value = serde_json::to_value(&table).unwrap();
    assert_eq!(json["total_updates"], 29_480);
    assert_eq!(json["phases"].as_array().unwrap().len(), 4);
    assert_eq!(json["phases"][3]["batch_size"], 3200);
    let text = table.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert!(lines[0].contains("batch") && lines[0].contains("g_approx"));
    assert!(lines[5].starts_with("total: 29480 updates, 200 epochs"));
    // Aligned: every phase line has the header's width.
    assert!(lines[1..5].iter().all(|l| l.len() == lines[0].len()));
    // The schedule itself round-trips through TOML (serde_json without its
    // `float_roundtrip` feature may change the last bit of an f64).
    let back: Schedule = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn batch_multiple_rounds_and_reports() {
    // B0 = 100 with multiple 32 → 96; g is off by |100 − 96| / 96.
    let cfg = ScheduleConfig {
        batch_multiple: 32,
        milestones: vec![5],
        ..ScheduleConfig::new(ScheduleKind::IncreaseBatch, 10, 0.1, 100)
    };
    let s = cfg.resolve(Samples(10_000)).unwrap();
    assert_eq!(batches(&s), [(0, 5, 96), (5, 10, 512)]); // 500 → 16 × 32
    assert!(close(s.g_rounding_error(Epochs(0)), 4.0 / 96.0));
    assert!(close(s.g_rounding_error(Epochs(5)), 12.0 / 512.0));
    assert!(s.phases().iter().all(|p| p.batch_size % 32 == 0));
}

fn setting() -> impl Strategy<Value = (ScheduleConfig, u64)> {
    (2u32..300, 1_000u64..2_000_000).prop_flat_map(|(epochs, n)| {
        (
            proptest::collection::btree_set(1..epochs, 0..5),
            1.5f64..10.0,
            1e-4f64..10.0,
            1..=(n as usize / 10),
            0.0f64..0.99,
        )
            .prop_map(move |(ms, factor, lr, b0, m)| {
                let cfg = ScheduleConfig {
                    momentum: m,
                    factor,
                    milestones: ms.into_iter().collect(),
                    ..ScheduleConfig::new(ScheduleKind::DecayLr, epochs, lr, b0)
                };
                (cfg, n)
            })
    })
}

proptest! {
    #[test]
    fn kinds_share_the_noise_scale((cfg, n) in setting()) {
        let n = Samples(n);
        for kind in [ScheduleKind::DecayLr, ScheduleKind::IncreaseBatch, ScheduleKind::Hybrid] {
            let s = ScheduleConfig { kind, ..cfg.clone() }.resolve(n).unwrap();
            let table = s.table();
            prop_assert_eq!(table.phases.last().unwrap().end, Epochs(cfg.epochs));
            for row in &table.phases {
                prop_assert!(row.g_rounding_error <= 0.5 / row.batch_size as f64 + 1e-12);
                prop_assert!(row.batch_size as u64 <= n.0);
                for e in row.start.0..row.end.0 {
                    let p = phase_index(&cfg.milestones, e);
                    // decay-lr's ideal approximate g.
                    let ideal = cfg.lr / cfg.factor.powi(p as i32) * n.0 as f64
                        / ((1.0 - cfg.momentum) * cfg.batch_size as f64);
                    let g = s.noise_scale(Epochs(e)).approx;
                    let rel = (g - ideal).abs() / ideal;
                    let reported = s.g_rounding_error(Epochs(e));
                    prop_assert!(rel <= reported + 1e-9, "{kind} e={e}: {rel} > {reported}");
                    prop_assert!(reported <= row.g_rounding_error);
                    prop_assert!((s.target_noise_scale(Epochs(e)) - ideal).abs() <= 1e-9 * ideal);
                }
            }
            if kind == ScheduleKind::Hybrid {
                let cap = cfg.cap(n);
                prop_assert!(s.phases().iter().all(|p| p.batch_size <= cap));
            }
        }
    }
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
