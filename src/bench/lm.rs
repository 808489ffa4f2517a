//! The language model's training step against PyTorch: the transformer of
//! [`crate::model::gpt`] through the trainer's [`crate::train::forward_backward`] (token ids →
//! tensors, forward, cross-entropy, backward, gradients gathered) and one AdamW step, beside
//! `bench/gpt_torch.py step` (nanoGPT's layout: fused QKV, `scaled_dot_product_attention`,
//! native LayerNorm, `torch.optim.AdamW`) at the same shape and threads, interleaved
//! `--rounds` times, medians reported.

use super::BenchArgs;
use crate::model::gpt::GptConfig;
use crate::optim::{DecayOn, OptimizerConfig, OptimizerKind};
use crate::schedule::Hyper;
use anyhow::{Context, Result, bail};
use rand::Rng;
use serde::Serialize;
use std::time::Instant;

/// The shapes timed: the `lm` preset's, and nanoGPT's Shakespeare-character model (6 blocks of
/// width 384, context 256) at a batch of 8.
pub const LM_SHAPES: [(&str, GptConfig, usize); 2] = [
    (
        "lm preset",
        GptConfig {
            vocab: 256,
            context: 64,
            layers: 4,
            heads: 4,
            dim: 128,
            dropout: 0.0,
        },
        16,
    ),
    (
        "nanoGPT char",
        GptConfig {
            vocab: 256,
            context: 256,
            layers: 6,
            heads: 6,
            dim: 384,
            dropout: 0.0,
        },
        8,
    ),
];

/// One shape's step, ours and PyTorch's.
#[derive(Debug, Clone, Serialize)]
pub struct LmRow {
    /// Which shape ([`LM_SHAPES`]).
    pub shape: String,
    /// The model.
    pub model: GptConfig,
    /// Windows per step.
    pub batch: usize,
    /// noisescale's tokens per second (median over rounds).
    pub tokens_per_second: f64,
    /// PyTorch's, where `--pytorch` ran it.
    pub torch_tokens_per_second: Option<f64>,
}

/// Times one shape's step: median seconds of the timed steps.
fn time_ours(args: &BenchArgs, gpt: &GptConfig, batch: usize) -> Result<f64> {
    let device = crate::device::device(crate::device::parse("flex")?)?;
    let mut model = crate::model::init_seeded(0, &device, |d| gpt.init(d));
    let mut optim = OptimizerConfig {
        kind: OptimizerKind::Adamw,
        decay_on: DecayOn::Matrices,
        ..OptimizerConfig::default()
    }
    .init();
    let hyper = Hyper {
        lr: 1e-3,
        batch_size: batch,
        momentum: 0.9,
    };
    let mut rng = crate::data::derive_rng(0, 0, 98, batch as u64);
    let rows: Vec<u32> = (0..batch * (gpt.context + 1))
        .map(|_| rng.random_range(0..256))
        .collect();
    let plan = crate::train::StepPlan::new(crate::config::AUTO_MICRO_BATCH, 1);
    let mut times = Vec::new();
    let mut elapsed = 0.0;
    for i in 0.. {
        let timed = times.len();
        if i >= args.warmup && timed >= args.steps && elapsed >= args.min_seconds {
            break;
        }
        if timed >= 3 && elapsed > args.max_seconds {
            break;
        }
        let share = crate::data::tokens::TokenShare::from_rows(rows.clone(), gpt.context);
        let t = Instant::now();
        let step = crate::train::forward_backward(&model, share, batch, &plan, &device)
            .map_err(|e| anyhow::anyhow!("bench lm: {e}"))?;
        model = optim.step(model, step.grads, hyper);
        let dt = t.elapsed().as_secs_f64();
        if i >= args.warmup {
            times.push(dt);
            elapsed += dt;
        }
    }
    Ok(super::median(times))
}

/// PyTorch's tokens per second at one shape.
fn time_torch(args: &BenchArgs, gpt: &GptConfig, batch: usize) -> Result<f64> {
    let script = args
        .pytorch_script
        .parent()
        .map_or_else(|| "gpt_torch.py".into(), |d| d.join("gpt_torch.py"));
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .arg("step")
        .args(["--batch", &batch.to_string()])
        .args(["--context", &gpt.context.to_string()])
        .args(["--layers", &gpt.layers.to_string()])
        .args(["--heads", &gpt.heads.to_string()])
        .args(["--dim", &gpt.dim.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", args.python.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("{}: not a JSON line: {line}", script.display()))?;
    v["tokens_per_second"]
        .as_f64()
        .context("gpt_torch.py gave no tokens_per_second")
}

/// Every shape's row, ours and (with `--pytorch`) PyTorch's, `--rounds` times interleaved.
pub fn bench_lm(args: &BenchArgs) -> Result<Vec<LmRow>> {
    let mut rows = Vec::new();
    for (name, gpt, batch) in LM_SHAPES {
        let tokens = (batch * gpt.context) as f64;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            let s = time_ours(args, &gpt, batch)?;
            eprintln!(
                "bench lm {name} B={batch} T={}: {:.0} tokens/s",
                gpt.context,
                tokens / s
            );
            ours.push(tokens / s);
            if args.pytorch {
                theirs.push(time_torch(args, &gpt, batch)?);
            }
        }
        rows.push(LmRow {
            shape: name.into(),
            model: gpt,
            batch,
            tokens_per_second: super::median(ours),
            torch_tokens_per_second: (!theirs.is_empty()).then(|| super::median(theirs)),
        });
    }
    Ok(rows)
}

/// The rows as a markdown table with the CPU and threads above it.
pub fn format_lm(rows: &[LmRow], threads: usize) -> String {
    let mut out = format!(
        "\ntransformer training step (AdamW), {threads} thread(s), {}\n\n",
        crate::cpu::model_name()
    );
    out.push_str(
        "| shape | L × d, heads | B × T | noisescale tokens/s | PyTorch tokens/s | ratio |\n",
    );
    out.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let (torch, ratio) = match r.torch_tokens_per_second {
            Some(t) => (
                format!("{t:.0}"),
                format!("{:.2}×", r.tokens_per_second / t),
            ),
            None => ("—".into(), "—".into()),
        };
        out.push_str(&format!(
            "| {} | {} × {}, {} | {} × {} | {:.0} | {torch} | {ratio} |\n",
            r.shape,
            r.model.layers,
            r.model.dim,
            r.model.heads,
            r.batch,
            r.model.context,
            r.tokens_per_second
        ));
    }
    out
}
