//! `noisescale sample RUN --prompt TEXT`: text from a trained byte-level language model, drawn
//! with a temperature, top-k and a seed (the same seed gives the same text).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;

use crate::config::RunConfig;
use crate::data::tokens::TokenFormat;
use crate::model::ModelConfig;
use crate::model::gpt::Sampling;
use crate::run_dir;

/// `noisescale sample`'s arguments.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// The run directory of a language model (`model.kind = "gpt"`) with its checkpoint.
    pub run: PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature (0: always the most likely byte).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Draw from the k most likely bytes only (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Prints the prompt and its continuation.
pub fn run(a: SampleArgs) -> Result<()> {
    let text = generate(&a)?;
    println!("{}{}", a.prompt, text);
    Ok(())
}

/// The continuation of `a.prompt` as text (bytes that are not UTF-8 replaced).
pub fn generate(a: &SampleArgs) -> Result<String> {
    if !(a.temperature.is_finite() && a.temperature >= 0.0) {
        bail!(
            "--temperature {} is out of range: must be a finite number >= 0",
            a.temperature
        );
    }
    if a.prompt.is_empty() {
        bail!("--prompt is empty: give the text to continue");
    }
    let cfg = RunConfig::load(&a.run.join(run_dir::CONFIG_FILE))
        .with_context(|| format!("{} does not hold a run", a.run.display()))?;
    let ModelConfig::Gpt(gpt) = &cfg.model else {
        bail!(
            "{}: the run trains {}, not a language model (model.kind = \"gpt\")",
            a.run.display(),
            cfg.model.name()
        );
    };
    let format = cfg.data.tokens.map(|t| t.format);
    if format != Some(TokenFormat::Bytes) {
        bail!(
            "{}: the run's tokens are {format:?} ids, and noisescale has no tokenizer for them: sample takes byte-level models (data.tokens.format = \"bytes\")",
            a.run.display()
        );
    }
    let device = burn::tensor::Device::flex();
    let path = a.run.join(run_dir::CHECKPOINT_FILE);
    let (model, _) = crate::checkpoint::load(&path, gpt.init(&device), &device)?;
    let prompt: Vec<u32> = a.prompt.bytes().map(u32::from).collect();
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let ids = model.generate(&prompt, a.tokens, sampling, &mut rng, &device);
    let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
