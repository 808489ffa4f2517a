//! Where a run config comes from (a file or a shipped preset) and the command-line settings
//! that override it.

use super::RunConfig;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Where the config comes from: a file or a shipped preset.
#[derive(Args, Debug, Clone)]
pub struct ConfigSource {
    /// A run config (TOML).
    pub config: Option<PathBuf>,
    /// A shipped preset instead of a file (see `noisescale presets`).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
}

impl ConfigSource {
    /// Loads the config, if one was named.
    pub fn load(&self) -> Result<Option<RunConfig>> {
        match (&self.config, &self.preset) {
            (Some(p), _) => RunConfig::load(p).map(Some),
            (None, Some(name)) => load_preset(name).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Parses a shipped preset.
pub fn load_preset(name: &str) -> Result<RunConfig> {
    let text = crate::presets::preset(name).with_context(|| {
        format!(
            "no preset named {name:?}; the presets are: {}",
            crate::presets::names().join(", ")
        )
    })?;
    RunConfig::from_toml(text, &format!("preset {name}"))
}

/// Where a run's data and computation are: what a saved run may change when it is loaded again
/// (`eval`, `noise`) and still be the same run.
#[derive(Args, Debug, Clone, Default)]
pub struct Placement {
    /// Data directory (overrides `data.dir`; default ../shared/data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Compute device: flex (CPU), wgpu, wgpu:N, wgpu:integrated:N, wgpu:cpu or cuda[:N].
    #[arg(long)]
    pub device: Option<String>,
}

impl Placement {
    /// Applies the data directory and device given to a config.
    pub fn apply(&self, cfg: &mut RunConfig) -> Result<()> {
        if let Some(d) = &self.data {
            cfg.data.dir = d.clone();
        }
        if let Some(d) = &self.device {
            crate::device::parse(d)?;
            cfg.device = d.clone();
        }
        Ok(())
    }
}

/// The command-line settings that override a config's before it runs: its placement and its seed.
#[derive(Args, Debug, Clone, Default)]
pub struct Overrides {
    /// Data directory and device.
    #[command(flatten)]
    pub placement: Placement,
    /// Seed of weights, sample order and augmentation (overrides the config's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Overrides {
    /// Applies the overrides to a config.
    pub fn apply(&self, cfg: &mut RunConfig) -> Result<()> {
        self.placement.apply(cfg)?;
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        Ok(())
    }
}
