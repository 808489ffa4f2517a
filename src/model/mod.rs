//! The paper's models as burn `Module`s: an MLP, a LeNet-style CNN, CIFAR ResNets and the wide
//! ResNet 16-4, every batch-norm layer optionally a ghost batch norm.
//!
//! [`ModelConfig`] is the `[model]` table of a run's TOML; [`ModelConfig::init`] builds a
//! [`Model`] for the data set's image shape and class count on any `Device`.

pub mod cnn;
pub mod gpt;
pub mod mlp;
pub mod norm;
pub mod resnet;
pub mod wrn;

use crate::data::ImageBatch;
use crate::learner::{BatchCoupling, ClassificationOutput, Trainable, classification};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use cnn::Cnn;
pub use mlp::Mlp;
pub use norm::GhostBatchNorm;
pub use resnet::ResNet;
pub use wrn::WideResNet;

/// Which model to train and its sizes (the `[model]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Fully connected network on flattened images.
    Mlp {
        /// Hidden layer widths, input side first (default `[256]`; empty: a linear model).
        #[serde(default = "default_mlp_widths")]
        widths: Vec<usize>,
    },
    /// LeNet-style CNN (PyTorch MNIST example).
    Cnn {
        /// Width of the hidden fully connected layer.
        #[serde(default = "default_cnn_hidden")]
        hidden: usize,
    },
    /// CIFAR ResNet of basic blocks, depth 6n + 2 (8, 20, 32, ...).
    Resnet {
        /// Depth: 6n + 2.
        #[serde(default = "default_resnet_depth")]
        depth: usize,
        /// Width of the first stage (16 in He et al.).
        #[serde(default = "default_resnet_width")]
        width: usize,
        /// Ghost batch size for every batch norm; 0 for ordinary batch norm.
        #[serde(default)]
        ghost_batch_size: usize,
    },
    /// Wide ResNet d-k (the paper uses 16-4).
    Wrn {
        /// Depth: 6n + 4.
        #[serde(default = "default_wrn_depth")]
        depth: usize,
        /// Widen factor k (≥ 1): stage widths 16k, 32k, 64k (the paper's 4).
        #[serde(default = "default_wrn_widen")]
        widen: usize,
        /// Dropout probability between the convolutions of a block.
        #[serde(default)]
        dropout: f64,
        /// Ghost batch size for every batch norm; 0 for ordinary batch norm.
        #[serde(default)]
        ghost_batch_size: usize,
    },
    /// A decoder-only transformer for next-token prediction on `data.dataset = "tokens"`
    /// ([`gpt`]).
    Gpt(gpt::GptConfig),
    /// A model defined in code and trained through the library's `Trainer`: what the config
    /// records of it (no command can build it).
    Custom {
        /// Its name (the Rust type's, unless given).
        name: String,
        /// The ghost batch size of its batch norms; 0: none.
        #[serde(default)]
        ghost_batch_size: usize,
        /// Whether it normalises with batch statistics.
        #[serde(default)]
        batch_norm: bool,
    },
}

fn default_mlp_widths() -> Vec<usize> {
    vec![256]
}
fn default_cnn_hidden() -> usize {
    512
}
fn default_resnet_depth() -> usize {
    8
}
fn default_resnet_width() -> usize {
    16
}
fn default_wrn_depth() -> usize {
    16
}
fn default_wrn_widen() -> usize {
    4
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Mlp {
            widths: default_mlp_widths(),
        }
    }
}

impl ModelConfig {
    /// Checks the sizes, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Mlp { widths } => {
                if widths.contains(&0) {
                    return Err("model.widths: every width must be at least 1".into());
                }
            }
            ModelConfig::Cnn { hidden } => {
                if *hidden == 0 {
                    return Err("model.hidden = 0 is out of range: must be at least 1".into());
                }
            }
            ModelConfig::Resnet { depth, width, .. } => {
                if *depth < 8 || (depth - 2) % 6 != 0 {
                    return Err(format!(
                        "model.depth = {depth} is not a CIFAR ResNet depth: must be 6n + 2 (8, 14, 20, ...)"
                    ));
                }
                if *width == 0 {
                    return Err("model.width = 0 is out of range: must be at least 1".into());
                }
            }
            ModelConfig::Wrn {
                depth,
                widen,
                dropout,
                ..
            } => {
                if *depth < 10 || (depth - 4) % 6 != 0 {
                    return Err(format!(
                        "model.depth = {depth} is not a wide ResNet depth: must be 6n + 4 (10, 16, 22, 28, ...)"
                    ));
                }
                if *widen == 0 {
                    return Err("model.widen = 0 is out of range: must be at least 1".into());
                }
                if !(0.0..1.0).contains(dropout) {
                    return Err(format!(
                        "model.dropout = {dropout} is out of range: must be in [0, 1)"
                    ));
                }
            }
            ModelConfig::Gpt(g) => g.validate()?,
            ModelConfig::Custom { .. } => {}
        }
        Ok(())
    }

    /// The ghost batch size of the model's batch norms (0: none or ordinary batch norm).
    pub fn ghost_batch_size(&self) -> usize {
        match self {
            ModelConfig::Resnet {
                ghost_batch_size, ..
            }
            | ModelConfig::Wrn {
                ghost_batch_size, ..
            }
            | ModelConfig::Custom {
                ghost_batch_size, ..
            } => *ghost_batch_size,
            _ => 0,
        }
    }

    /// Whether the model normalises with batch statistics.
    pub fn has_batch_norm(&self) -> bool {
        match self {
            ModelConfig::Resnet { .. } | ModelConfig::Wrn { .. } => true,
            ModelConfig::Custom { batch_norm, .. } => *batch_norm,
            ModelConfig::Mlp { .. } | ModelConfig::Cnn { .. } | ModelConfig::Gpt(_) => false,
        }
    }

    /// The error for a model defined in code where a command would build it from the config.
    pub fn check_builtin(&self) -> anyhow::Result<()> {
        if let ModelConfig::Custom { name, .. } = self {
            anyhow::bail!(
                "model.kind = \"custom\" ({name}) is a model defined in code and trained through noisescale::Trainer: no command can build it; evaluate or measure it through the library"
            );
        }
        Ok(())
    }

    /// The error for the language model where a command needs an image classifier.
    pub fn check_image_model(&self) -> anyhow::Result<()> {
        self.check_builtin()?;
        if let ModelConfig::Gpt(_) = self {
            anyhow::bail!(
                "model.kind = \"gpt\" is a language model: this command takes image classifiers (a language-model run trains with `train`, and generates text with `sample`)"
            );
        }
        Ok(())
    }

    /// A short name, e.g. `resnet-8` or `wrn-16-4`.
    pub fn name(&self) -> String {
        match self {
            ModelConfig::Mlp { widths } => format!(
                "mlp-{}",
                widths
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            ModelConfig::Cnn { .. } => "cnn".into(),
            ModelConfig::Resnet { depth, .. } => format!("resnet-{depth}"),
            ModelConfig::Wrn { depth, widen, .. } => format!("wrn-{depth}-{widen}"),
            ModelConfig::Gpt(g) => format!("gpt-{}x{}", g.layers, g.dim),
            ModelConfig::Custom { name, .. } => name.clone(),
        }
    }

    /// Builds the model for images of shape `[channels, height, width]` and `classes` classes.
    ///
    /// Every parameter is initialised here, from the device's random stream as it stands now
    /// (see [`crate::params::materialize`]). Panics for [`ModelConfig::Custom`], which no config
    /// can build, and [`ModelConfig::Gpt`], which takes tokens
    /// ([`ModelConfig::check_image_model`] names both as errors first).
    pub fn init(&self, input: [usize; 3], classes: usize, device: &Device) -> Model {
        let model = self.build(input, classes, device);
        crate::params::materialize(&model);
        model
    }

    /// A model whose initial parameters are drawn from `seed` on the CPU and then moved to
    /// `device`: the same seed gives the same initial weights on every device, so a GPU run
    /// starts where the CPU run does (random streams differ between burn's backends).
    pub fn init_seeded(
        &self,
        input: [usize; 3],
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> Model {
        init_seeded(seed, device, |d| self.build(input, classes, d))
    }

    fn build(&self, input: [usize; 3], classes: usize, device: &Device) -> Model {
        let [c, h, w] = input;
        match self {
            ModelConfig::Mlp { widths } => Model::Mlp(Mlp::new(c * h * w, widths, classes, device)),
            ModelConfig::Cnn { hidden } => Model::Cnn(Cnn::new(input, *hidden, classes, device)),
            ModelConfig::Resnet {
                depth,
                width,
                ghost_batch_size,
            } => Model::ResNet(ResNet::new(
                c,
                *width,
                (depth - 2) / 6,
                classes,
                *ghost_batch_size,
                device,
            )),
            ModelConfig::Wrn {
                depth,
                widen,
                dropout,
                ghost_batch_size,
            } => Model::Wrn(WideResNet::new(
                c,
                *depth,
                *widen,
                *dropout,
                classes,
                *ghost_batch_size,
                device,
            )),
            ModelConfig::Custom { name, .. } => {
                panic!("the model {name} is defined in code: no config can build it")
            }
            ModelConfig::Gpt(_) => {
                panic!("the language model takes tokens, not images: build it with GptConfig::init")
            }
        }
    }

    /// Every model `noisescale models` lists, with the input shape it is shown on.
    pub fn catalogue() -> Vec<(ModelConfig, [usize; 3])> {
        vec![
            (ModelConfig::default(), [1, 28, 28]),
            (ModelConfig::Cnn { hidden: 512 }, [1, 28, 28]),
            (
                ModelConfig::Resnet {
                    depth: 8,
                    width: 16,
                    ghost_batch_size: 0,
                },
                [3, 32, 32],
            ),
            (
                ModelConfig::Resnet {
                    depth: 20,
                    width: 16,
                    ghost_batch_size: 0,
                },
                [3, 32, 32],
            ),
            (
                ModelConfig::Wrn {
                    depth: 16,
                    widen: 4,
                    dropout: 0.0,
                    ghost_batch_size: 128,
                },
                [3, 32, 32],
            ),
        ]
    }
}

/// Any of the paper's models.
// Built once per run and moved, never copied in a loop: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// See [`Mlp`].
    Mlp(Mlp),
    /// See [`Cnn`].
    Cnn(Cnn),
    /// See [`ResNet`].
    ResNet(ResNet),
    /// See [`WideResNet`].
    Wrn(WideResNet),
}

impl Model {
    /// Logits `[batch, classes]` for images `[batch, c, h, w]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(images),
            Model::Cnn(m) => m.forward(images),
            Model::ResNet(m) => m.forward(images),
            Model::Wrn(m) => m.forward(images),
        }
    }
}

crate::train_steps!(Model, ImageBatch => ClassificationOutput, classify);

impl Model {
    /// The logits of a batch and their cross-entropy loss (mean over the batch).
    fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        classification(self.forward(batch.images), batch.targets)
    }
}

impl Trainable for Model {
    fn batch_coupling(&self) -> BatchCoupling {
        let bn = match self {
            Model::Mlp(_) | Model::Cnn(_) => return BatchCoupling::None,
            Model::ResNet(m) => &m.stem_bn,
            Model::Wrn(m) => &m.bn,
        };
        match bn.ghost_batch_size {
            0 => BatchCoupling::Whole,
            g => BatchCoupling::Ghost(g),
        }
    }
}

/// Draws a model's initial parameters from `seed`: `init` builds it on the CPU under that seed
/// (every lazily initialised parameter drawn there, see [`crate::params::materialize`]) and the
/// result moves to `device`, so the same seed gives the same initial weights on every device
/// (random streams differ between burn's backends).
pub fn init_seeded<M: Module>(seed: u64, device: &Device, init: impl Fn(&Device) -> M) -> M {
    let draw = |d: &Device| {
        let model = init(d);
        crate::params::materialize(&model);
        model
    };
    // Seeding and drawing under one lock: runs on other threads cannot interleave.
    if crate::device::is_flex(device) {
        return crate::device::seeded(device, seed, || draw(device));
    }
    let cpu = Device::flex().autodiff();
    let model = crate::device::seeded(&cpu, seed, || draw(&cpu));
    // `fork` keeps each parameter's `require_grad` on the new device.
    model.fork(device)
}
