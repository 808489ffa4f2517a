//! Everything a user of the library needs to train a model of their own on data of their own:
//! `use noisescale::prelude::*;` (and burn for the model).

pub use crate::config::RunConfig;
pub use crate::data::npy;
pub use crate::data::tokens::{self, TokenBatch, TokenConfig, TokenFormat, Windows};
pub use crate::data::{
    BurnData, EvalSet, FeatureBatcher, Features, ImageBatch, ImageSet, RegressionBatch,
    RegressionBatcher, Share, TrainSet,
};
pub use crate::learner::{
    BatchCoupling, ClassificationOutput, InferenceStep, RegressionOutput, StepItem, TrainOutput,
    TrainStep, Trainable, classification, regression,
};
pub use crate::metrics::RunSummary;
pub use crate::model::gpt::{Gpt, GptConfig, LanguageModelOutput, Sampling};
pub use crate::optim::{DecayOn, OptimizerConfig, OptimizerKind};
pub use crate::schedule::{AdaptiveConfig, Rampup, ScheduleConfig, ScheduleKind};
pub use crate::train::Trained;
pub use crate::train_steps;
pub use crate::trainer::Trainer;
pub use burn::data::dataloader::batcher::Batcher;
pub use burn::data::dataset::{Dataset, InMemDataset};
pub use burn::tensor::Device;
