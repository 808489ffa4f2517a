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

use burn::module::Module;
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

    /// The longest context the position embedding covers.
    pub fn context(&self) -> usize {
        self.wpe.weight.dims()[0]
    }
}

/// How [`Gpt::generate`] draws each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by this before the softmax (0: always the most likely token).
    pub temperature: f64,
    /// Only the `top_k` most likely tokens are drawn from (0: all).
    pub top_k: usize,
}

impl Sampling {
    /// The index drawn from `logits` (one position's, over the vocabulary) with `rng`: the
    /// `top_k` largest kept (ties: the lower id first), `softmax(logits / temperature)` over
    /// them, then one draw; the argmax at temperature 0.
    pub fn draw(&self, logits: &[f32], rng: &mut impl rand::Rng) -> usize {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.temperature <= 0.0 {
            return order[0];
        }
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let top = f64::from(logits[order[0]]);
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - top) / self.temperature).exp())
            .collect();
        let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
        for (&i, w) in order.iter().zip(&weights) {
            if u < *w {
                return i;
            }
            u -= w;
        }
        order[order.len() - 1]
    }
}

impl Gpt {
    /// `count` tokens continuing `prompt` (which must not be empty), each drawn by `sampling`
    /// from the model's prediction on the last `context` tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        count: usize,
        sampling: Sampling,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> Vec<u32> {
        let context = self.context();
        let mut ids = prompt.to_vec();
        for _ in 0..count {
            let window = &ids[ids.len().saturating_sub(context)..];
            let t = window.len();
            let x: Vec<i64> = window.iter().map(|&i| i64::from(i)).collect();
            let x = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(x, [1, t]), device);
            let logits = self.forward(x);
            let v = logits.dims()[2];
            let last = logits.slice([0..1, t - 1..t, 0..v]).into_data();
            let last = last
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default();
            ids.push(sampling.draw(&last, rng) as u32);
        }
        ids.split_off(prompt.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn draws(s: Sampling, logits: &[f32], n: usize) -> Vec<usize> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        (0..n).map(|_| s.draw(logits, &mut rng)).collect()
    }

    #[test]
    fn sampling_follows_temperature_and_top_k() {
        let logits = [0.0, 3f32.ln(), -1.0, 0.5];
        // Temperature 0: the argmax, always.
        let greedy = Sampling {
            temperature: 0.0,
            top_k: 0,
        };
        assert!(draws(greedy, &logits, 50).iter().all(|&i| i == 1));
        // top-k = 2 keeps ids 1 and 3: p(1) = 3 / (3 + e^0.5) = 0.6453.
        let two = Sampling {
            temperature: 1.0,
            top_k: 2,
        };
        let d = draws(two, &logits, 20_000);
        assert!(d.iter().all(|&i| i == 1 || i == 3));
        let p1 = d.iter().filter(|&&i| i == 1).count() as f64 / d.len() as f64;
        assert!((p1 - 0.6453).abs() < 0.015, "{p1}");
        // A high temperature flattens: all four drawn, id 2 (the lowest) about a fifth.
        let hot = Sampling {
            temperature: 10.0,
            top_k: 0,
        };
        let d = draws(hot, &logits, 20_000);
        let p2 = d.iter().filter(|&&i| i == 2).count() as f64 / d.len() as f64;
        assert!((0.19..0.25).contains(&p2), "{p2}");
    }

    #[test]
    fn parameters_counts_what_init_builds() {
        let g = GptConfig {
            vocab: 256,
            context: 16,
            layers: 2,
            heads: 2,
            dim: 24,
            dropout: 0.0,
        };
        let m = g.init(&Device::flex());
        assert_eq!(crate::params::trainable_params(&m), g.parameters());
    }
}
