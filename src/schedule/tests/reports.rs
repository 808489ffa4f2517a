//! TOML round trips, phase-table reports, and `batch_multiple` rounding.

use super::*;

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
    assert!(close(s.g_rounding_error(Epoch(0)), 4.0 / 96.0));
    assert!(close(s.g_rounding_error(Epoch(5)), 12.0 / 512.0));
    assert!(s.phases().iter().all(|p| p.batch_size % 32 == 0));
}
