//! Invariants over random settings (proptest).

use super::*;
use crate::schedule::config::phase_index;
use proptest::prelude::*;

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
                    let g = s.noise_scale(Epoch(e)).approx;
                    let rel = (g - ideal).abs() / ideal;
                    let reported = s.g_rounding_error(Epoch(e));
                    prop_assert!(rel <= reported + 1e-9, "{kind} e={e}: {rel} > {reported}");
                    prop_assert!(reported <= row.g_rounding_error);
                    prop_assert!((s.target_noise_scale(Epoch(e)) - ideal).abs() <= 1e-9 * ideal);
                }
            }
            if kind == ScheduleKind::Hybrid {
                let cap = cfg.cap(n);
                prop_assert!(s.phases().iter().all(|p| p.batch_size <= cap));
            }
        }
    }
}
