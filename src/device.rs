//! The one place where the compute device is chosen.
//!
//! burn 0.22 picks the backend at run time through [`Device`]; every other module receives a
//! `Device` and never names a backend. `flex` (pure-Rust CPU) is always built; `cuda[:N]` needs
//! the `cuda` cargo feature.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A parsed `--device` / `device =` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// An NVIDIA GPU by index (`cuda` feature).
    Cuda(usize),
}

/// Parses `flex`, `cpu` (an alias of `flex`), `cuda` or `cuda:N`.
pub fn parse(s: &str) -> Result<DeviceSpec> {
    match s {
        "flex" | "cpu" => Ok(DeviceSpec::Flex),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
            _ => bail!("device = {s:?} is not a device: use \"flex\" (CPU) or \"cuda[:N]\""),
        },
    }
}

/// The autodiff-enabled device for a spec.
pub fn device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Flex => Ok(Device::flex().autodiff()),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => Ok(Device::cuda(i).autodiff()),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => {
            bail!(
                "this build has no GPU support: rebuild with `cargo build --release --features cuda`"
            )
        }
    }
}
