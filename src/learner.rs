//! What the trainer asks of a model: burn-train's [`TrainStep`] and [`InferenceStep`], outputs it
//! can read ([`StepItem`]), and how the model's batch may be cut ([`Trainable`]).
//!
//! A model written for burn-train's `Learner` moves over unchanged: its `TrainStep` returns
//! `TrainOutput { grads, item }` for one piece of a batch (the gradient of the piece's mean loss)
//! and its `InferenceStep` the evaluation output. The trainer cuts each batch into pieces (micro-
//! batches, MPI ranks, the noise-scale measurement), calls `step` once per piece and weights each
//! piece's gradient by its share of the batch: the gradient of the whole batch's mean loss, so
//! nothing the model computes depends on how the batch was cut, unless samples meet in batch
//! statistics, which [`Trainable::batch_coupling`] says.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLossConfig, MseLoss, Reduction};
use burn::tensor::{Int, Tensor};

pub use burn::train::{
    ClassificationOutput, InferenceStep, RegressionOutput, TrainOutput, TrainStep,
};

/// A classifier's output: `logits` `[B, classes]` for `targets` `[B]`, with their cross-entropy
/// loss (mean over the batch), as burn-train's classification models return it.
pub fn classification(logits: Tensor<2>, targets: Tensor<1, Int>) -> ClassificationOutput {
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits.clone(), targets.clone());
    ClassificationOutput {
        loss,
        output: logits,
        targets,
    }
}

/// A regression's output: `output` `[B, k]` for `targets` `[B, k]`, with their mean squared
/// error (mean over every element).
pub fn regression(output: Tensor<2>, targets: Tensor<2>) -> RegressionOutput {
    let loss = MseLoss::new().forward(output.clone(), targets.clone(), Reduction::Mean);
    RegressionOutput {
        loss,
        output,
        targets,
    }
}

/// Implements burn-train's [`TrainStep`] and [`InferenceStep`] for a model whose method
/// `forward(&self, Input) -> Output` computes a [`StepItem`]: the training step back-propagates
/// its loss, the inference step returns it.
///
/// `noisescale::train_steps!(MyModel, (Tensor<2>, Tensor<1, Int>) => ClassificationOutput, forward);`
#[macro_export]
macro_rules! train_steps {
    ($model:ty, $input:ty => $output:ty, $forward:ident) => {
        impl $crate::learner::TrainStep for $model {
            type Input = $input;
            type Output = $output;
            fn step(&self, input: $input) -> $crate::learner::TrainOutput<$output> {
                let item = self.$forward(input);
                let grads = $crate::learner::StepItem::loss(&item).backward();
                $crate::learner::TrainOutput::new(self, grads, item)
            }
        }
        impl $crate::learner::InferenceStep for $model {
            type Input = $input;
            type Output = $output;
            fn step(&self, input: $input) -> $output {
                self.$forward(input)
            }
        }
    };
}

/// What the trainer reads from a step's output: the mean loss over the piece and, for a
/// classifier, its correct predictions. burn-train's [`ClassificationOutput`] and
/// [`RegressionOutput`] are step items; an output of your own becomes one by saying where its
/// loss is.
pub trait StepItem {
    /// The mean loss over the piece, a one-element tensor (the one `backward` was called on).
    fn loss(&self) -> Tensor<1>;
    /// The piece's correct predictions as a one-element f32 tensor left on the device, or `None`
    /// where accuracy has no meaning (regression).
    fn correct(&self) -> Option<Tensor<1>>;
}

impl StepItem for ClassificationOutput {
    fn loss(&self) -> Tensor<1> {
        self.loss.clone()
    }
    fn correct(&self) -> Option<Tensor<1>> {
        // f32 holds every count up to 2^24 exactly, far above a piece.
        let pred = self
            .output
            .clone()
            .detach()
            .inner()
            .argmax(1)
            .flatten::<1>(0, 1);
        Some(pred.equal(self.targets.clone().inner()).int().sum().float())
    }
}

impl StepItem for RegressionOutput {
    fn loss(&self) -> Tensor<1> {
        self.loss.clone()
    }
    fn correct(&self) -> Option<Tensor<1>> {
        None
    }
}

/// How a model's output for one sample depends on the other samples of its forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCoupling {
    /// Not at all: any cut of a batch gives the same gradient (no batch statistics).
    None,
    /// Within ghost batches of this many samples (ghost batch norm): a cut must fall between
    /// them.
    Ghost(usize),
    /// Over the whole forward pass (ordinary batch norm): the trainer never cuts a batch only to
    /// measure the noise scale, which would change the statistics.
    Whole,
}

impl BatchCoupling {
    /// Samples a piece boundary must respect (1: any).
    pub fn quantum(self) -> usize {
        match self {
            BatchCoupling::Ghost(g) => g.max(1),
            _ => 1,
        }
    }
}

/// A model the trainer can train: burn-train's steps, with outputs the trainer reads. Implement
/// it with an empty block for a model without batch statistics or with burn's `BatchNorm`
/// (found by looking at the module); a model with ghost batch norm says its ghost batch size.
/// `Sync` as modules of burn's layers are: the CPU step runs on a thread of rayon's pool with a
/// reference to the model.
pub trait Trainable:
    Module
    + Sync
    + TrainStep<Output: StepItem>
    + InferenceStep<Input = <Self as TrainStep>::Input, Output: StepItem>
{
    /// How the model's samples meet in batch statistics. The default finds burn's `BatchNorm`
    /// layers in the module tree (then [`BatchCoupling::Whole`]).
    fn batch_coupling(&self) -> BatchCoupling {
        if has_module(self, "BatchNorm") {
            BatchCoupling::Whole
        } else {
            BatchCoupling::None
        }
    }
}

/// Whether `module` holds a sub-module of the struct type `name` (burn's derive names each
/// container `Struct:<name>` to visitors).
pub fn has_module<M: Module>(module: &M, name: &str) -> bool {
    struct Find {
        want: String,
        found: bool,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            self.found |= container_type == self.want;
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {}
    }
    let mut f = Find {
        want: format!("Struct:{name}"),
        found: false,
    };
    module.visit(&mut f);
    f.found
}
