//! Your own burn model on your own data through the whole trainer: the adaptive schedule, the
//! noise-scale measurement, checkpoints and resume (and MPI under `mpirun`). The model has
//! burn-train's `TrainStep` and `InferenceStep`; the data is a burn `Dataset` with a `Batcher`.
//! Run: `cargo run --release --example custom_model`: it writes `runs/rings`; run it again and
//! it resumes (a finished run is read back, not retrained).
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use noisescale::prelude::*;

/// A two-layer perceptron: any burn module works.
#[derive(Module, Debug)]
struct TwoLayer {
    hidden: Linear,
    out: Linear,
}

impl TwoLayer {
    fn forward(&self, (x, targets): Features) -> ClassificationOutput {
        let logits = self.out.forward(Relu.forward(self.hidden.forward(x)));
        classification(logits, targets)
    }
}

// burn-train's `TrainStep` and `InferenceStep` through `forward` (or write them as for burn's
// `Learner`); no batch statistics, so nothing else to say.
train_steps!(TwoLayer, Features => ClassificationOutput, forward);
impl Trainable for TwoLayer {}

/// Points on three noisy, overlapping rings; the class is the ring. Items `(features, class)`.
fn rings(n: usize, first: usize) -> BurnData<(Vec<f32>, i64), Features, FeatureBatcher> {
    let point = |i: usize| {
        let t = i as f32 * 2.4;
        let r = 1.0 + (i % 3) as f32 + 0.7 * (i as f32 * 12.9).sin();
        (vec![r * t.cos(), r * t.sin()], (i % 3) as i64)
    };
    let items = (first..first + n).map(point).collect();
    BurnData::new(InMemDataset::new(items), FeatureBatcher)
}

fn main() -> anyhow::Result<()> {
    // B follows the measured noise scale (B = B_simple / 2) from 32; ε = 0.05, m = 0.9.
    let mut schedule = ScheduleConfig::new(ScheduleKind::Adaptive, 8, 0.05, 32);
    schedule.momentum = 0.9;
    schedule.adaptive = Some(AdaptiveConfig::default().with_alpha(0.5));
    let init = |device: &Device| TwoLayer {
        hidden: LinearConfig::new(2, 64).init(device),
        out: LinearConfig::new(64, 3).init(device),
    };
    let trained = Trainer::new(RunConfig::custom("rings", schedule))
        .resume(true)
        .fit(init, rings(60_000, 0), rings(2000, 60_000))?;
    println!("{}", trained.summary);
    Ok(())
}
