//! noisescale: "Don't decay the learning rate, increase the batch size" (Smith, Kindermans,
//! Ying & Le, ICLR 2018) as a training library on burn.
//!
//! Data flows one way: [`config`] → [`schedule`] → [`train`] → [`optim`] → [`metrics`] →
//! [`report`].
#![warn(missing_docs)]

pub mod allocator;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod dist;
pub mod gns;
pub mod kernels;
pub mod learner;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod optim;
pub mod params;
pub mod prelude;
pub mod presets;
pub mod report;
pub mod reproduce;
pub mod run_dir;
pub mod sample;
pub mod schedule;
pub mod state;
pub mod train;
pub mod trainer;
pub mod units;

pub use trainer::Trainer;
