//! The integration tests, one module a topic, in one test binary: as separate files of `tests/`
//! each would be a crate of its own, compiled and linked against burn apart from the others and
//! run one after another, which on CI's two cores cost minutes. `tests/fuzz.rs` stays apart: it
//! installs a global allocator that refuses large requests. Run one topic with
//! `cargo test --release --test integration run_dir::`.

mod common;

mod adaptive;
mod cli;
mod custom;
mod folder;
mod gns;
mod gpt;
mod mnist;
mod models;
#[cfg(feature = "mpi")]
mod mpi;
mod npy;
mod optim;
mod parity;
mod resume;
mod run_dir;
mod scale;
mod tiny_cnn;
mod train;
#[cfg(feature = "wgpu-base")]
mod wgpu;
