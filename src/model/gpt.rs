//! A decoder-only transformer in GPT-2's layout, as nanoGPT writes it (Radford et al. 2019;
//! Karpathy's `model.py`), for next-token prediction on windows of a token stream
//! ([`crate::data::tokens`]).
//!
//! Exactly, for ids `x [B, T]` over a vocabulary of `V`, width `d`, `L` blocks of `H` heads:
//!
//! ```text
//! h = drop(wte[x] + wpe[0..T])                      token and learned position embeddings
//! for each block:
//!     a = ln_1(h);  q, k, v = split(a·W_qkv + b_qkv) into H heads of d/H
//!     h = h + drop(SDPA_causal(q, k, v)·W_o + b_o)   scale 1/√(d/H), no dropout on weights
//!     m = ln_2(h)
//!     h = h + drop(GELU(m·W_fc + b_fc)·W_out + b_out) width 4d, GELU exact (erf)
//! logits = ln_f(h) · wteᵀ                            tied output: no separate head
//! loss = mean over B·T of cross-entropy(logits, next ids)
//! ```
//!
//! Pre-norm (LayerNorm before each sub-layer, one after the last block), LayerNorm with ε = 1e-5,
//! weight 1 and bias 0. Initialisation as GPT-2: every linear weight and both embeddings
//! N(0, 0.02), the two residual projections (`W_o`, `W_out`) N(0, 0.02/√(2L)), biases 0.
//! Dropout `p` (default 0) after the embeddings and on both residual branches.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::tokens::TokenBatch;
use crate::learner::{StepItem, Trainable};

/// The shape of a [`Gpt`]: the `[model]` table with `kind = "gpt"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size V (256 for bytes).
    #[serde(default = "default_vocab")]
    pub vocab: usize,
    /// Context length T: the longest window the position embedding covers.
    pub context: usize,
    /// Blocks L.
    pub layers: usize,
    /// Heads H per block; `dim` must be a multiple.
    pub heads: usize,
    /// Width d of the residual stream.
    pub dim: usize,
    /// Dropout probability after the embeddings and on both residual branches.
    #[serde(default)]
    pub dropout: f64,
}

fn default_vocab() -> usize {
    256
}

impl GptConfig {
    /// Named errors for shapes the model cannot have.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab", self.vocab),
            ("context", self.context),
            ("layers", self.layers),
            ("heads", self.heads),
            ("dim", self.dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("model.{name} must be at least 1"));
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "model.dim = {} is not a multiple of model.heads = {}",
                self.dim, self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "model.dropout = {} is out of range: must be in [0, 1)",
                self.dropout
            ));
        }
        Ok(())
    }

    /// A model with GPT-2's initialisation (see the module docs), drawn from the backend's RNG.
    pub fn init(&self, device: &Device) -> Gpt {
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let residual = 0.02 / (2.0 * self.layers as f64).sqrt();
        let linear = |i: usize, o: usize, std: f64| {
            LinearConfig::new(i, o)
                .with_initializer(normal(std))
                .init(device)
        };
        let norm = || LayerNormConfig::new(self.dim).init(device);
        let d = self.dim;
        let blocks = (0..self.layers)
            .map(|_| Block {
                ln_1: norm(),
                qkv: linear(d, 3 * d, 0.02),
                proj: linear(d, d, residual),
                ln_2: norm(),
                fc: linear(d, 4 * d, 0.02),
                out: linear(4 * d, d, residual),
            })
            .collect();
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal(0.02))
                .init(device)
        };
        Gpt {
            wte: embedding(self.vocab),
            wpe: embedding(self.context),
            blocks,
            ln_f: norm(),
            dropout: DropoutConfig::new(self.dropout).init(),
            heads: self.heads,
        }
    }

    /// Parameters: `V·d + T·d + L·(12d² + 13d) + 2d` (tied output).
    pub fn parameters(&self) -> usize {
        let (v, t, l, d) = (self.vocab, self.context, self.layers, self.dim);
        v * d + t * d + l * (12 * d * d + 13 * d) + 2 * d
    }
}

/// One pre-norm transformer block: causal self-attention and a 4× MLP, each on a residual branch.
#[derive(Module, Debug)]
pub struct Block {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm,
    /// Query, key and value projections in one `[d, 3d]` linear.
    pub qkv: Linear,
    /// Attention output projection (residual branch).
    pub proj: Linear,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP expansion `[d, 4d]`.
    pub fc: Linear,
    /// MLP projection back `[4d, d]` (residual branch).
    pub out: Linear,
}

/// The transformer (see the module docs).
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[V, d]`, also the output layer (tied).
    pub wte: Embedding,
    /// Learned position embedding `[T, d]`.
    pub wpe: Embedding,
    /// The blocks, input side first.
    pub blocks: Vec<Block>,
    /// LayerNorm after the last block.
    pub ln_f: LayerNorm,
    /// Dropout after the embeddings and on the residual branches.
    pub dropout: Dropout,
    /// Heads per block.
    pub heads: usize,
}

impl Block {
    fn forward(&self, h: Tensor<3>, heads: usize, dropout: &Dropout) -> Tensor<3> {
        let [b, t, d] = h.dims();
        let hd = d / heads;
        let qkv = self.qkv.forward(self.ln_1.forward(h.clone()));
        // [B, T, 3, H, hd] → three [B, H, T, hd]
        let qkv = qkv.reshape([b, t, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..b, 0..heads, 0..t, 0..hd])
                .reshape([b, heads, t, hd])
        };
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let context = attention(part(0), part(1), part(2), None, None, options);
        let context = context.swap_dims(1, 2).reshape([b, t, d]);
        let h = h + dropout.forward(self.proj.forward(context));
        let m = gelu(self.fc.forward(self.ln_2.forward(h.clone())));
        h.clone() + dropout.forward(self.out.forward(m))
    }
}

impl Gpt {
    /// Logits `[B, T, V]` for ids `[B, T]` (T at most the configured context).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let mut h = self
            .dropout
            .forward(self.wte.forward(tokens) + self.wpe.forward(positions));
        for block in &self.blocks {
            h = block.forward(h, self.heads, &self.dropout);
        }
        let h = self.ln_f.forward(h);
        let [_, _, d] = h.dims();
        let vocab = self.wte.weight.val();
        let v = vocab.dims()[0];
        h.reshape([b * t, d])
            .matmul(vocab.transpose())
            .reshape([b, t, v])
    }

    /// The mean next-token cross-entropy of a batch of windows, in nats.
    pub fn loss(&self, batch: TokenBatch) -> LanguageModelOutput {
        let logits = self.forward(batch.tokens);
        let [b, t, v] = logits.dims();
        let logits = logits.reshape([b * t, v]);
        let targets = batch.targets.reshape([b * t]);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, targets);
        LanguageModelOutput { loss }
    }

    /// The number of heads per block.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The longest context the position embedding covers.
    pub fn context(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    /// The token embedding (also the output layer).
    pub fn token_embedding(&self) -> &Param<Tensor<2>> {
        &self.wte.weight
    }
}

/// What a language-model step returns: the mean next-token loss of its windows, in nats.
#[derive(Debug, Clone)]
pub struct LanguageModelOutput {
    /// Mean cross-entropy per token (nats).
    pub loss: Tensor<1>,
}

impl burn::train::metric::ItemLazy for LanguageModelOutput {
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        Ok(Self {
            loss: self.loss.without_autodiff(),
        })
    }
}

impl StepItem for LanguageModelOutput {
    fn loss(&self) -> Tensor<1> {
        self.loss.clone()
    }
    fn correct(&self) -> Option<Tensor<1>> {
        None
    }
}

crate::train_steps!(Gpt, TokenBatch => LanguageModelOutput, loss);

impl Trainable for Gpt {}
