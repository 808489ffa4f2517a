//! Every fixed kind against the paper's numbers; converted LR schedules; warm-up.

use super::*;

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
    assert!(close(s.hyper(Epoch(59), 0.9).lr, 0.1));
    assert!(close(s.hyper(Epoch(60), 0.0).lr, 0.02));
    assert_eq!(s.hyper(Epoch(60), 0.0).momentum, 0.9);
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
    assert_eq!(s.batch_size(Epoch(159)), 3200);
    assert_eq!(s.batch_size(Epoch(160)), 16_000);
    assert_eq!(s.updates_in_epoch(Epoch(0)), Updates(391));
    assert_eq!(s.updates_in_epoch(Epoch(199)), Updates(4));

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
        s.noise_scale(Epoch(199)).approx,
        d.noise_scale(Epoch(199)).approx
    ));
    assert!(close(s.noise_scale(Epoch(199)).approx, 3.125));
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
    assert_eq!(s.g_rounding_error(Epoch(199)), 0.0);

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
    assert!((s.noise_scale(Epoch(0)).approx - 390.625).abs() < 1e-9);
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
    assert!(close(s.noise_scale(Epoch(199)).approx, 3.125));
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
    let bs: Vec<usize> = (0..200).map(|e| s.batch_size(Epoch(e))).collect();
    assert!(bs.windows(2).all(|w| w[0] <= w[1]), "{bs:?}");
    assert_eq!(bs[0], 128);
    assert_eq!(*bs.last().unwrap(), 5000, "the cap binds at the end");
    // Epoch 1: ε_1/ε0 = (1 + cos(π/200))/2, B = 128 / that ≈ 128.0079 → 128.
    let ideal = 128.0 / ((1.0 + (std::f64::consts::PI / 200.0).cos()) / 2.0);
    let err = (ideal - 128.0) / 128.0;
    assert!(err > 0.0);
    assert!(close(s.g_rounding_error(Epoch(1)), err));
    let table = s.table();
    assert!(table.phases.iter().any(|r| r.g_rounding_error > 0.0));
    for r in &table.phases {
        assert!(r.g_rounding_error <= 0.5 / r.batch_size as f64 + 1e-12);
    }
    // Phases merge epochs with identical (ε, B, m).
    assert!(table.phases.len() < 200);
    assert!(table.phases[0].end > Epochs(1)); // epochs 0 and 1 both at B = 128
    // The row reports the worst epoch: the last one, where the ideal B is furthest from 128.
    let last = Epoch(table.phases[0].end.0 - 1);
    assert_eq!(table.phases[0].g_rounding_error, s.g_rounding_error(last));
    assert_eq!(s.g_rounding_error(Epoch(0)), 0.0);
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
    assert_eq!(s.batch_size(Epoch(3)), 1024);
    assert_eq!(s.batch_size(Epoch(199)), 50_000);
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
    assert!(close(s.hyper(Epoch(0), 0.0).lr, 0.01));
    // At t = warmup_epochs: ε0.
    assert!(close(s.hyper(Epoch(5), 0.0).lr, 0.1));
    assert!(close(s.hyper(Epoch(4), 1.0).lr, 0.1));
    // Halfway (t = 2.5): 0.1 · (0.1 + 0.9 · 0.5) = 0.055.
    assert!(close(s.hyper(Epoch(2), 0.5).lr, 0.055));
    // Linear: equal steps in t give equal steps in ε.
    let at = |t: f64| s.hyper(Epoch(t.floor() as u32), t.fract()).lr;
    let step = at(0.5) - at(0.0);
    for k in 1..10 {
        let t = 0.5 * f64::from(k);
        assert!((at(t + 0.5) - at(t) - step).abs() < 1e-12);
    }
    // Batch size is untouched by warm-up.
    assert_eq!(s.hyper(Epoch(0), 0.3).batch_size, 128);

    // Fractional warm-up, composed with lr_scale: full ε0 = 0.5 from t = 2.5 on.
    let cfg = ScheduleConfig {
        warmup_epochs: 2.5,
        warmup_from: 0.0,
        lr_scale: 5.0,
        ..paper(ScheduleKind::DecayLr)
    };
    let s = cfg.resolve(N).unwrap();
    assert_eq!(s.hyper(Epoch(0), 0.0).lr, 0.0);
    assert!(close(s.hyper(Epoch(1), 0.25).lr, 0.25));
    assert!(close(s.hyper(Epoch(2), 0.5).lr, 0.5));
    assert!(close(s.hyper(Epoch(3), 0.0).lr, 0.5));
}
