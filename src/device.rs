//! The one place where the compute device is chosen.
//!
//! burn 0.22 picks the backend at run time through [`Device`]; every other module receives a
//! `Device` and never names a backend. `flex` (pure-Rust CPU) is always built and is the default;
//! `wgpu[:…]` needs the `wgpu` cargo feature and `cuda[:N]` the `cuda` one. With a GPU backend
//! compiled in, burn's `Device::default()` picks that backend, so nothing here relies on it.

use anyhow::{Result, bail};
use burn::tensor::Device;
use std::fmt;

/// Which of the adapters wgpu sees a `wgpu` device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    /// wgpu's choice: a high-power GPU first, else whatever adapter there is (a software
    /// driver such as Mesa's lavapipe on a machine without a GPU).
    Default,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// The N-th integrated GPU.
    Integrated(usize),
    /// A CPU adapter (a software Vulkan driver such as lavapipe).
    Cpu,
}

/// A parsed `--device` / `device =` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// A GPU through burn's wgpu runtime (Vulkan, Metal or DirectX 12; `wgpu` feature).
    Wgpu(WgpuAdapter),
    /// An NVIDIA GPU by index (`cuda` feature).
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::Wgpu(WgpuAdapter::Default) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Wgpu(WgpuAdapter::Integrated(i)) => write!(f, "wgpu:integrated:{i}"),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

const DEVICES: &str = "use \"flex\" (CPU), \"wgpu\", \"wgpu:N\" (N-th discrete GPU), \
                       \"wgpu:integrated:N\", \"wgpu:cpu\" (software Vulkan) or \"cuda[:N]\"";

/// Parses `flex` (alias `cpu`), `wgpu`, `wgpu:N`, `wgpu:integrated:N`, `wgpu:cpu`, `cuda` or
/// `cuda:N`.
pub fn parse(s: &str) -> Result<DeviceSpec> {
    let index = |rest: &str| rest.parse::<usize>().ok();
    let spec = match s {
        "flex" | "cpu" => Some(DeviceSpec::Flex),
        "wgpu" => Some(DeviceSpec::Wgpu(WgpuAdapter::Default)),
        "wgpu:cpu" => Some(DeviceSpec::Wgpu(WgpuAdapter::Cpu)),
        "cuda" => Some(DeviceSpec::Cuda(0)),
        _ => {
            if let Some(rest) = s.strip_prefix("wgpu:integrated:") {
                index(rest).map(|i| DeviceSpec::Wgpu(WgpuAdapter::Integrated(i)))
            } else if let Some(rest) = s.strip_prefix("wgpu:") {
                index(rest).map(|i| DeviceSpec::Wgpu(WgpuAdapter::Discrete(i)))
            } else if let Some(rest) = s.strip_prefix("cuda:") {
                index(rest).map(DeviceSpec::Cuda)
            } else {
                None
            }
        }
    };
    match spec {
        Some(spec) => Ok(spec),
        None => bail!("device = {s:?} is not a device: {DEVICES}"),
    }
}

/// The device for a spec, without autodiff (evaluation, checkpoints, benchmarks of inference).
pub fn plain(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Flex => Ok(Device::flex()),
        DeviceSpec::Wgpu(adapter) => wgpu(adapter),
        DeviceSpec::Cuda(i) => cuda(i),
    }
}

/// The autodiff-enabled device for a spec.
pub fn device(spec: DeviceSpec) -> Result<Device> {
    Ok(plain(spec)?.autodiff())
}

/// Whether `device` is the flex CPU backend (with or without autodiff): where our CPU kernels
/// run and runs are bit-reproducible whatever the thread count.
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Runs `f` on a thread of rayon's pool when `device` is the flex CPU backend
/// ([`crate::cpu::on_compute_thread`]: inline when the caller is one already), and on the
/// calling thread otherwise. A GPU backend queues work per submitting thread (cubecl keeps a
/// stream per thread), and its work gains nothing from the pool: an optimiser step queued from
/// a pool thread on gradients queued from the caller's read them unfinished (the wgpu test
/// `every_optimiser_steps_as_on_flex` failed with different numbers each run).
pub fn on_compute_thread<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if is_flex(device) {
        crate::cpu::on_compute_thread(f)
    } else {
        f()
    }
}

#[cfg(feature = "wgpu-base")]
fn wgpu(adapter: WgpuAdapter) -> Result<Device> {
    use burn::tensor::DeviceKind;
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Vulkan loaders and Mesa warn on every start without it; a private temporary
        // directory silences them and is all they need.
        let dir = std::env::temp_dir().join("noisescale-xdg-runtime");
        if std::fs::create_dir_all(&dir).is_ok() {
            // SAFETY: set before the wgpu runtime (or any thread reading the environment)
            // starts: device selection runs once, at the start of a command.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
        }
    }
    let kind = match adapter {
        WgpuAdapter::Default => DeviceKind::DefaultDevice,
        WgpuAdapter::Discrete(i) => DeviceKind::DiscreteGpu(i),
        WgpuAdapter::Integrated(i) => DeviceKind::IntegratedGpu(i),
        WgpuAdapter::Cpu => DeviceKind::Cpu,
    };
    Ok(Device::wgpu(kind))
}

#[cfg(not(feature = "wgpu-base"))]
fn wgpu(_: WgpuAdapter) -> Result<Device> {
    bail!("this build has no wgpu support: rebuild with `cargo build --release --features wgpu`")
}

#[cfg(feature = "cuda")]
fn cuda(i: usize) -> Result<Device> {
    Ok(Device::cuda(i))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device> {
    bail!(
        "this build has no CUDA support: rebuild with `cargo build --release --features cuda` \
         on a machine that can download cubecl's LLVM bundle at build time"
    )
}

/// Seeds `device`'s random stream with `seed` and runs `draw`, with no other seeding through
/// here in between.
///
/// burn's random stream is one per backend and process, so two threads that seed and draw at
/// once (a model initialised while another run's step reseeds for its dropout masks, as
/// in-process tests do) could otherwise interleave and draw from each other's seeds.
/// `ModelConfig::init_seeded` draws the initial weights through it and the
/// training step seeds each piece through it. A step's dropout draws during its forward pass
/// are not under the lock: two runs with dropout in one process can still interleave there.
pub fn seeded<R>(device: &Device, seed: u64, draw: impl FnOnce() -> R) -> R {
    static STREAM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _stream = STREAM.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_prints_back() {
        for s in [
            "flex",
            "wgpu",
            "wgpu:0",
            "wgpu:3",
            "wgpu:integrated:1",
            "wgpu:cpu",
            "cuda:0",
            "cuda:2",
        ] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
        assert_eq!(parse("cpu").unwrap(), DeviceSpec::Flex);
        assert_eq!(parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        for bad in [
            "gpu",
            "wgpu:",
            "wgpu:x",
            "wgpu:integrated:",
            "cuda:-1",
            "vulkan",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("wgpu:cpu"), "{e}");
        }
    }
}
