//! Timing batch assembly and the background loader.

use super::report::DataRow;
use crate::data::{Augment, Dataset, Loader, Normalizer, Sampler, assemble};
use std::sync::Arc;
use std::time::Instant;

/// Times batch assembly (this thread) and the background loader on `ds` with crop + flip.
pub(super) fn bench_data(
    source: &str,
    ds: Arc<Dataset>,
    batch: usize,
    epochs: u32,
    train: Option<(usize, f64)>,
) -> DataRow {
    eprint!("bench data {source} B={batch}: ");
    let augment = Augment::CropFlip { pad: 4 };
    let normalizer = Normalizer::from_dataset(&ds);
    let sampler = Sampler::new(ds.len(), 0);
    // assemble: one warm-up epoch, then `epochs` timed.
    let mut images = 0usize;
    let mut elapsed = 0.0;
    for epoch in 0..=epochs {
        let perm = sampler.permutation(epoch);
        for idx in perm.chunks(batch) {
            let t = Instant::now();
            let b = assemble(&ds, idx, &normalizer, augment, 0, epoch);
            let dt = t.elapsed().as_secs_f64();
            std::hint::black_box(&b);
            if epoch > 0 {
                images += b.len();
                elapsed += dt;
            }
        }
    }
    let assemble_ips = images as f64 / elapsed;
    eprint!("assemble {assemble_ips:.0} images/s, ");
    // Loader: its default worker count, whole epochs.
    let workers = Loader::DEFAULT_WORKERS;
    let loader = Loader::new(
        ds.clone(),
        normalizer,
        augment,
        0,
        workers,
        Loader::DEFAULT_PREFETCH,
    );
    let mut images = 0usize;
    let mut t = Instant::now();
    for epoch in 0..=epochs {
        if epoch == 1 {
            images = 0;
            t = Instant::now();
        }
        for b in loader.epoch(epoch, batch, 0, None) {
            images += std::hint::black_box(b).len();
        }
    }
    let loader_ips = images as f64 / t.elapsed().as_secs_f64();
    eprintln!("loader {loader_ips:.0} images/s");
    DataRow {
        source: source.to_string(),
        dataset_size: ds.len(),
        batch,
        assemble_images_per_second: assemble_ips,
        loader_images_per_second: loader_ips,
        loader_workers: workers,
        train_images_per_second: train.map(|t| t.1),
        train_batch: train.map(|t| t.0),
        loading_cost_percent: train.map(|(_, tips)| 100.0 * tips / assemble_ips),
    }
}
