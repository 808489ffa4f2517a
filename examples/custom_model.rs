//! Your own burn model on your own data, trained with noisescale's increase-batch schedule,
//! loader and training step. Run: `cargo run --release --example custom_model`.
use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};
use noisescale::data::{Augment, Dataset, Loader, Normalizer};
use noisescale::model::Classifier;
use noisescale::optim::OptimizerConfig;
use noisescale::schedule::{ScheduleConfig, ScheduleKind};
use noisescale::train::{StepPlan, evaluate, forward_backward};
use noisescale::units::Epoch;
use std::sync::Arc;

/// A two-layer perceptron: any burn module works once it says how it computes logits.
#[derive(Module, Debug)]
struct TwoLayer {
    hidden: Linear,
    out: Linear,
    act: Relu,
}

impl Classifier for TwoLayer {
    fn logits(&self, images: Tensor<4>) -> Tensor<2> {
        let x = images.flatten::<2>(1, 3);
        self.out.forward(self.act.forward(self.hidden.forward(x)))
    }
}

fn main() -> Result<()> {
    // On a thread of rayon's pool, so that no work is handed over from this thread, which
    // would sleep on a lock until it is done (twice an update: the step and the optimiser).
    noisescale::cpu::on_compute_thread(train)
}

fn train() -> Result<()> {
    // Your data as u8 pixels (N×C×H×W) and labels; here noisescale's synthetic set stands in.
    let split = noisescale::data::synthetic(4096, 1024, 10, 1, 16, 16, 0);
    let (train, test): (Dataset, Dataset) = (split.train, split.test);
    let normalizer = Normalizer::from_dataset(&train);

    // ε = 0.1 throughout; B = 32, then ×5 at epochs 2 and 4 where decay-lr would divide ε by 5.
    let mut config = ScheduleConfig::new(ScheduleKind::IncreaseBatch, 6, 0.1, 32);
    config.milestones = vec![2, 4];
    let schedule = config.resolve(train.samples())?;

    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = TwoLayer {
        hidden: LinearConfig::new(train.image_len(), 128).init(&device),
        out: LinearConfig::new(128, train.num_classes).init(&device),
        act: Relu::new(),
    };
    let mut optim = OptimizerConfig::default().init(); // momentum, PyTorch's form
    let loader = Loader::new(Arc::new(train), normalizer.clone(), Augment::None, 0, 2, 4);
    let plan = StepPlan::whole_batch();

    let mut updates = 0;
    for epoch in 0..schedule.epochs().0 {
        let hyper = schedule.hyper(Epoch(epoch), 0.0);
        for batch in loader.epoch(epoch, hyper.batch_size, 0, None) {
            let n = batch.len();
            let step = forward_backward(&model, batch, n, &plan, &device)?;
            model = optim.step(model, step.grads, hyper);
            updates += 1;
        }
        let (loss, acc) = evaluate(&model, &test, &normalizer, 512, &device);
        println!(
            "epoch {}: B = {:5}, ε = {}, {updates:4} updates, test loss {loss:.4}, accuracy {:.2}%",
            epoch + 1,
            hyper.batch_size,
            hyper.lr,
            100.0 * acc
        );
    }
    if updates != schedule.total_updates().0 {
        return Err(anyhow!(
            "{updates} updates, the schedule says {}",
            schedule.total_updates().0
        ));
    }
    Ok(())
}
