//! Timing the trainer's own training step, and which rows `--models` and `--batch-sizes` pick.

use super::BenchArgs;
use super::report::TrainRow;
use crate::data;
use crate::device::DeviceSpec;
use crate::model::ModelConfig;
use crate::optim::{OptimizerConfig, OptimizerKind};
use crate::schedule::Hyper;
use anyhow::{Result, bail};
use rand::Rng;
use std::time::Instant;

/// The plan of the bench's step for `cfg` (before a measured update cuts a small batch in
/// two): micro-batches of [`crate::config::AUTO_MICRO_BATCH`], as the trainer's default.
pub(super) fn step_plan(cfg: &ModelConfig, measure: bool) -> crate::train::StepPlan {
    crate::train::StepPlan {
        measure,
        ..crate::train::StepPlan::new(crate::config::AUTO_MICRO_BATCH, cfg.ghost_batch_size())
    }
}

/// Times training steps of one model at one batch size.
pub(super) fn bench_train(
    args: &BenchArgs,
    cfg: &ModelConfig,
    input: [usize; 3],
    batch: usize,
    slow: bool,
    split_every: Option<u64>,
    spec: DeviceSpec,
) -> Result<TrainRow> {
    let device = &crate::device::device(spec)?;
    let measure = split_every.is_some();
    let (steps, warmup) = if slow {
        ((args.steps / 4).max(3), args.warmup.min(1))
    } else {
        (args.steps, args.warmup)
    };
    let classes = super::CLASSES;
    let mut model = cfg.init(input, classes, device);
    let mut optim = OptimizerConfig {
        kind: OptimizerKind::Momentum,
        weight_decay: 5e-4,
        ..OptimizerConfig::default()
    }
    .init();
    let hyper = Hyper {
        lr: 0.1,
        batch_size: batch,
        momentum: 0.9,
    };
    let [c, h, w] = input;
    let mut rng = data::derive_rng(0, 0, 99, batch as u64);
    let batch_data = data::Images {
        images: (0..batch * c * h * w)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect(),
        labels: (0..batch)
            .map(|_| rng.random_range(0..classes as u8))
            .collect(),
        shape: [batch, c, h, w],
    };
    // The trainer's step on one process: micro-batches of `AUTO_MICRO_BATCH`, and with the
    // noise scale measured, a batch that fits one micro-batch in two pieces.
    let split = measure && !(cfg.ghost_batch_size() == 0 && cfg.has_batch_norm());
    let plan = step_plan(cfg, measure);
    let label = format!(
        "{} B={batch}{} on {spec}",
        cfg.name(),
        if measure { " +gns" } else { "" }
    );
    eprint!("bench {label}: ");
    let mut timed = 0;
    let mut elapsed = 0.0;
    for i in 0.. {
        if i >= warmup && timed >= steps && elapsed >= args.min_seconds {
            break;
        }
        // The trainer hands each loaded batch over; the copy that stands in for loading one is
        // made before the clock starts.
        let batch_owned = batch_data.clone();
        let t = Instant::now();
        // As the trainer: a batch that fits one micro-batch is cut in two on every
        // `split_every`-th update only.
        let mut plan = crate::train::StepPlan {
            min_pieces: if split && (i as u64).is_multiple_of(split_every.unwrap_or(1)) {
                2
            } else {
                1
            },
            ..plan
        };
        plan.measure = measure && batch.div_ceil(plan.piece_len(batch)) >= 2;
        let step = crate::train::forward_backward(&model, batch_owned, batch, &plan, device)
            .map_err(|e| anyhow::anyhow!("bench {label}: {e}"))?;
        if plan.measure {
            // What the trainer adds per measured update: the batch gradient's squared norm.
            std::hint::black_box(step.grads.sq_norm());
        }
        model = optim.step(model, step.grads, hyper);
        let _ = device.sync();
        let dt = t.elapsed().as_secs_f64();
        if i >= warmup {
            timed += 1;
            elapsed += dt;
            if timed >= 3 && elapsed > args.max_seconds {
                break;
            }
        }
        if i < warmup + steps {
            eprint!(".");
        }
    }
    let sps = elapsed / timed as f64;
    eprintln!(" {:.1} images/s", batch as f64 / sps);
    Ok(TrainRow {
        device: spec.to_string(),
        model: cfg.name(),
        input,
        batch,
        noise_scale: measure,
        steps: timed,
        seconds_per_step: sps,
        images_per_second: batch as f64 / sps,
    })
}

/// A training row: model, input shape, batch sizes, and whether it is a slow row (fewer steps).
pub(super) type TrainRowSpec = (ModelConfig, [usize; 3], Vec<usize>, bool);

/// The training rows `--models` and `--batch-sizes` select (all when they are empty); an
/// unknown model name is an error that lists the known ones.
pub(super) fn selected_rows(models: &[String], batch_sizes: &[usize]) -> Result<Vec<TrainRowSpec>> {
    let rows = train_rows();
    let known: Vec<String> = rows.iter().map(|r| r.0.name()).collect();
    if let Some(bad) = models.iter().find(|m| !known.contains(m)) {
        bail!(
            "--models: no bench row for `{bad}`; known: {}",
            known.join(", ")
        );
    }
    let models_rows: Vec<TrainRowSpec> = rows
        .into_iter()
        .filter(|r| models.is_empty() || models.contains(&r.0.name()))
        .collect();
    let offered: Vec<String> = models_rows
        .iter()
        .map(|(cfg, _, batches, _)| format!("{} at {batches:?}", cfg.name()))
        .collect();
    let selected: Vec<TrainRowSpec> = models_rows
        .into_iter()
        .map(|(cfg, input, batches, slow)| {
            let batches = batches
                .into_iter()
                .filter(|b| batch_sizes.is_empty() || batch_sizes.contains(b))
                .collect::<Vec<_>>();
            (cfg, input, batches, slow)
        })
        .filter(|r| !r.2.is_empty())
        .collect();
    if selected.is_empty() {
        bail!(
            "--batch-sizes {batch_sizes:?}: no selected bench row runs these; the rows are {}",
            offered.join(", ")
        );
    }
    Ok(selected)
}

/// Every training row.
pub(super) fn train_rows() -> Vec<TrainRowSpec> {
    vec![
        (
            ModelConfig::Mlp { widths: vec![256] },
            [1, 28, 28],
            vec![64, 1024],
            false,
        ),
        (
            ModelConfig::Cnn { hidden: 512 },
            [1, 28, 28],
            vec![128, 1024],
            false,
        ),
        (resnet8(), [3, 32, 32], vec![128, 1024], false),
        (
            ModelConfig::Wrn {
                depth: 16,
                widen: 4,
                dropout: 0.0,
                ghost_batch_size: 128,
            },
            [3, 32, 32],
            vec![128],
            true,
        ),
    ]
}

pub(super) fn resnet8() -> ModelConfig {
    ModelConfig::Resnet {
        depth: 8,
        width: 16,
        ghost_batch_size: 0,
    }
}
