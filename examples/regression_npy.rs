//! A regression on NumPy arrays: the example writes `train_x.npy`, `train_y.npy`, `test_x.npy`
//! and `test_y.npy` (what `numpy.save` writes) into `runs/regression-npy/data`, reads them back
//! as a data set and trains an MLP on the mean squared error under increase-batch, then reports
//! the test RMSE. Run: `cargo run --release --example regression_npy`.
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use noisescale::prelude::*;
use std::path::Path;

/// Three inputs, two hidden layers, one output.
#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        let widths = [3, 64, 64, 1];
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device));
        Mlp {
            layers: layers.collect(),
        }
    }

    fn forward(&self, (mut x, targets): RegressionBatch) -> RegressionOutput {
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i + 1 < self.layers.len() {
                x = Relu.forward(x);
            }
        }
        regression(x, targets)
    }
}

train_steps!(Mlp, RegressionBatch => RegressionOutput, forward);
impl Trainable for Mlp {}

/// `n` samples of y = sin(2 x₀) + x₁ x₂ + noise, x uniform in [−1, 1]³, written as `.npy`.
fn write_split(dir: &Path, split: &str, n: usize, first: usize) -> std::io::Result<()> {
    let u = |i: usize| ((i as f64 * 0.618_034).fract() * 2.0 - 1.0) as f32;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in first..first + n {
        let p = [u(3 * i + 1), u(7 * i + 2), u(13 * i + 5)];
        let noise = 0.05 * (i as f32 * 12.9898).sin();
        y.push((2.0 * p[0]).sin() + p[1] * p[2] + noise);
        x.extend(p);
    }
    npy::write_f32(&dir.join(format!("{split}_x.npy")), &[n, 3], &x)?;
    npy::write_f32(&dir.join(format!("{split}_y.npy")), &[n, 1], &y)
}

fn main() -> anyhow::Result<()> {
    let data = Path::new("runs/regression-npy/data");
    std::fs::create_dir_all(data)?;
    write_split(data, "train", 20_000, 0)?;
    write_split(data, "test", 2_000, 20_000)?;
    let arrays = npy::load(data)?;
    let (train, test) = (arrays.train.regression(), arrays.test.regression());

    // ε = 0.05, m = 0.9 throughout; B = 32, then ×5 at epochs 4 and 8 (decay-lr would divide ε).
    let mut schedule = ScheduleConfig::new(ScheduleKind::IncreaseBatch, 12, 0.05, 32);
    (schedule.momentum, schedule.milestones) = (0.9, vec![4, 8]);
    let trained = Trainer::new(RunConfig::custom("regression-npy", schedule))
        .resume(true)
        .fit(Mlp::new, train, test.clone())?;
    let device = Device::flex();
    let e = noisescale::train::evaluate(&trained.model, &test, 1000, &device);
    println!("{}; test RMSE {:.4}", trained.summary, e.loss.sqrt());
    Ok(())
}
