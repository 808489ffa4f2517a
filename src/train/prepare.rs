//! The data a run trains and evaluates on.

use crate::config::RunConfig;
use crate::data::{self, Dataset, DatasetKind, Normalizer, Split};
use anyhow::{Context, Result};
use std::sync::Arc;

/// Training and test data prepared for a run.
pub struct Prepared {
    /// Training set.
    pub train: Arc<Dataset>,
    /// Test set.
    pub test: Dataset,
    /// Per-channel normalisation from the training set.
    pub normalizer: Normalizer,
}

fn take_first(ds: &mut Dataset, n: usize) {
    if n > 0 && n < ds.len() {
        let img = ds.image_len();
        ds.images.truncate(n * img);
        ds.labels.truncate(n);
    }
}

/// Loads the data set a config names (`data_dir` overrides `data.dir`), applying the subsets.
pub fn prepare_data(config: &RunConfig) -> Result<Prepared> {
    let d = &config.data;
    let Split {
        mut train,
        mut test,
    } = match d.dataset {
        DatasetKind::Synthetic => {
            let s = &d.synthetic;
            let [c, h, w] = s.shape;
            data::synthetic(s.train, s.test, s.classes, c, h, w, config.seed)
        }
        kind => data::load(kind, &d.dir)
            .with_context(|| format!("loading {kind} from {}", d.dir.display()))?,
    };
    take_first(&mut train, d.train_subset);
    take_first(&mut test, d.test_subset);
    let normalizer = Normalizer::from_dataset(&train);
    Ok(Prepared {
        train: Arc::new(train),
        test,
        normalizer,
    })
}
