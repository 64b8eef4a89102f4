//! Datasets for noisegeom, held in host memory as plain `f32` rows.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).
//!
//! Every dataset becomes a [`Dataset`]: `n` inputs of a fixed [`Dataset::input_shape`]
//! (flattened row-major, so image models reshape to `[n, c, h, w]`), plus [`Targets`].
//! Nothing here downloads anything and nothing here depends on burn: tensors are made
//! from these rows by the crates that own a device.
//!
//! - [`cifar10`]: the official CIFAR-10 *binary* files, validated byte by byte.
//! - [`idx`]: MNIST / Fashion-MNIST IDX files, raw or gzipped.
//! - [`synthetic`]: Gaussian linear-teacher regression (docs/definitions.md §13) and a CIFAR-shaped image task
//!   labelled by a fixed random teacher network.
//! - [`Sampler`]: minibatch indices as a pure function of `(seed, step)`.
//! - [`stop`]: the process-wide stop request (SIGINT, SIGTERM) that long loops read.
//! - [`mem`]: this process's memory (Linux `/proc`) and the memory limit jobs are checked
//!   against.

pub mod cifar10;
mod config;
mod error;
pub mod idx;
pub mod mem;
mod rng;
mod sampler;
pub mod stop;
pub mod synthetic;

pub use config::{DataConfig, Prepared, Source};
pub use error::DataError;
pub use rng::{normal_vec, seeded_rng};
pub use sampler::{Sampler, Sampling};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// What the model must predict.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class labels in `0..num_classes`. Regressed as one-hot vectors under MSE.
    Classes { labels: Vec<u8>, num_classes: usize },
    /// Real-valued targets, `dim` per sample, row-major.
    Regression { values: Vec<f32>, dim: usize },
}

impl Targets {
    /// Number of model outputs `c` these targets need.
    pub fn num_outputs(&self) -> usize {
        match self {
            Targets::Classes { num_classes, .. } => *num_classes,
            Targets::Regression { dim, .. } => *dim,
        }
    }

    fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Regression { values, dim } => values.len() / dim,
        }
    }

    fn select(&self, idx: &[usize]) -> Targets {
        match self {
            Targets::Classes {
                labels,
                num_classes,
            } => Targets::Classes {
                labels: idx.iter().map(|&i| labels[i]).collect(),
                num_classes: *num_classes,
            },
            Targets::Regression { values, dim } => Targets::Regression {
                values: gather_rows(values, *dim, idx),
                dim: *dim,
            },
        }
    }
}

/// Where a dataset came from. Written into every run's outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Short name, e.g. `cifar10`, `fashion-mnist`, `synthetic-teacher-images`.
    pub name: String,
    /// `train` or `test` (or `all` for synthetic data).
    pub split: String,
    /// The directory the files were read from, or a description of the generator.
    pub source: String,
    /// True when the data were generated rather than read from disk.
    pub synthetic: bool,
}

/// An in-memory dataset: `n` rows of `input_shape` floats and their targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub provenance: Provenance,
    /// `[d]` for vectors, `[channels, height, width]` for images.
    pub input_shape: Vec<usize>,
    /// `n × prod(input_shape)` values, row-major.
    pub inputs: Vec<f32>,
    pub targets: Targets,
}

/// Per-channel affine normalisation `x ↦ (x − mean) / std`, fitted on a training set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Dataset {
    /// Number of samples `n`.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Floats per sample.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of model outputs `c`.
    pub fn num_outputs(&self) -> usize {
        self.targets.num_outputs()
    }

    /// Rows `idx` (in that order) as a new dataset.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        Dataset {
            provenance: self.provenance.clone(),
            input_shape: self.input_shape.clone(),
            inputs: gather_rows(&self.inputs, self.input_dim(), idx),
            targets: self.targets.select(idx),
        }
    }

    /// A seeded subset of `n` samples. With `balanced`, each class contributes
    /// `n / num_classes` samples (the remainder goes to the lowest classes), which needs
    /// class labels and enough samples of every class.
    pub fn subset(&self, n: usize, seed: u64, balanced: bool) -> Result<Dataset, DataError> {
        Ok(self.select(&self.subset_indices(n, seed, balanced)?))
    }

    /// A probe set for the geometry metrics: `size` samples (at most all of them; more is
    /// an error), drawn class-balanced when every class has enough samples, else uniformly.
    /// Returns the set, its indices in `self` and whether it is balanced.
    pub fn probe_subset(
        &self,
        size: usize,
        seed: u64,
    ) -> Result<(Dataset, Vec<usize>, bool), DataError> {
        let balanced = self
            .class_counts()
            .is_some_and(|c| c.iter().all(|&k| k >= size.div_ceil(c.len())));
        let idx = self.subset_indices(size, seed, balanced)?;
        Ok((self.select(&idx), idx, balanced))
    }

    /// The indices [`Dataset::subset`] takes, sorted ascending.
    pub fn subset_indices(
        &self,
        n: usize,
        seed: u64,
        balanced: bool,
    ) -> Result<Vec<usize>, DataError> {
        if n > self.len() {
            return Err(DataError::SubsetTooLarge {
                requested: n,
                available: self.len(),
                dataset: self.provenance.name.clone(),
            });
        }
        let mut rng = seeded_rng(seed, "subset");
        let mut idx = match (&self.targets, balanced) {
            (
                Targets::Classes {
                    labels,
                    num_classes,
                },
                true,
            ) => {
                let mut chosen = Vec::with_capacity(n);
                for class in 0..*num_classes {
                    let want = n / num_classes + usize::from(class < n % num_classes);
                    let mut members: Vec<usize> = (0..labels.len())
                        .filter(|&i| labels[i] as usize == class)
                        .collect();
                    if members.len() < want {
                        return Err(DataError::ClassTooSmall {
                            class,
                            have: members.len(),
                            want,
                            dataset: self.provenance.name.clone(),
                        });
                    }
                    members.shuffle(&mut rng);
                    chosen.extend_from_slice(&members[..want]);
                }
                chosen
            }
            (Targets::Regression { .. }, true) => {
                return Err(DataError::BalancedNeedsClasses {
                    dataset: self.provenance.name.clone(),
                });
            }
            (_, false) => {
                let mut all: Vec<usize> = (0..self.len()).collect();
                all.shuffle(&mut rng);
                all.truncate(n);
                all
            }
        };
        idx.sort_unstable();
        Ok(idx)
    }

    /// Per-channel mean and standard deviation (one channel for vector data).
    pub fn fit_normalisation(&self) -> Normalisation {
        let channels = self.channels();
        let per = self.input_dim() / channels;
        let mut sum = vec![0f64; channels];
        let mut sq = vec![0f64; channels];
        for row in self.inputs.chunks_exact(self.input_dim()) {
            for (ch, plane) in row.chunks_exact(per).enumerate() {
                for &v in plane {
                    sum[ch] += v as f64;
                    sq[ch] += (v as f64) * (v as f64);
                }
            }
        }
        let count = (self.len() * per).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / count - m * m).max(0.0)).sqrt().max(1e-8) as f32)
            .collect();
        Normalisation {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// Applies a normalisation in place.
    pub fn normalise(&mut self, norm: &Normalisation) {
        let channels = self.channels();
        assert_eq!(norm.mean.len(), channels, "normalisation channel count");
        let per = self.input_dim() / channels;
        let dim = self.input_dim();
        for row in self.inputs.chunks_exact_mut(dim) {
            for (ch, plane) in row.chunks_exact_mut(per).enumerate() {
                let (m, s) = (norm.mean[ch], norm.std[ch]);
                plane.iter_mut().for_each(|v| *v = (*v - m) / s);
            }
        }
    }

    /// Targets as `n × c` floats: one-hot rows for classes, the values for regression.
    pub fn target_matrix(&self) -> Vec<f32> {
        match &self.targets {
            Targets::Classes {
                labels,
                num_classes,
            } => {
                let mut out = vec![0f32; labels.len() * num_classes];
                for (i, &l) in labels.iter().enumerate() {
                    out[i * num_classes + l as usize] = 1.0;
                }
                out
            }
            Targets::Regression { values, .. } => values.clone(),
        }
    }

    /// Samples per class, or `None` for regression targets.
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        match &self.targets {
            Targets::Classes {
                labels,
                num_classes,
            } => {
                let mut counts = vec![0; *num_classes];
                labels.iter().for_each(|&l| counts[l as usize] += 1);
                Some(counts)
            }
            Targets::Regression { .. } => None,
        }
    }

    fn channels(&self) -> usize {
        if self.input_shape.len() == 3 {
            self.input_shape[0]
        } else {
            1
        }
    }
}

fn gather_rows(values: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        out.extend_from_slice(&values[i * dim..(i + 1) * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        let labels: Vec<u8> = (0..40).map(|i| (i % 4) as u8).collect();
        Dataset {
            provenance: Provenance {
                name: "toy".into(),
                split: "all".into(),
                source: "test".into(),
                synthetic: true,
            },
            input_shape: vec![2, 1, 1],
            inputs: (0..80).map(|v| v as f32).collect(),
            targets: Targets::Classes {
                labels,
                num_classes: 4,
            },
        }
    }

    #[test]
    fn balanced_subset_has_equal_class_counts_and_is_seeded() {
        let ds = toy();
        let a = ds.subset(12, 7, true).unwrap();
        assert_eq!(a.class_counts().unwrap(), vec![3, 3, 3, 3]);
        assert_eq!(a, ds.subset(12, 7, true).unwrap());
        assert_ne!(a, ds.subset(12, 8, true).unwrap());
        // Rows stay paired with their labels: row i of toy() holds 2i, 2i+1 and label i%4.
        if let Targets::Classes { labels, .. } = &a.targets {
            for (row, &l) in a.inputs.chunks(2).zip(labels) {
                assert_eq!(((row[0] / 2.0) as usize % 4) as u8, l);
                assert_eq!(row[1], row[0] + 1.0);
            }
        }
    }

    #[test]
    fn subset_errors_are_explained() {
        let ds = toy();
        let err = ds.subset(41, 0, false).unwrap_err().to_string();
        assert!(err.contains("41") && err.contains("40"), "{err}");
        // Class 3 keeps only 2 of its 10 samples, so 4 per class cannot be met.
        let keep: Vec<usize> = (0..40).filter(|i| i % 4 != 3 || *i < 8).collect();
        let err = ds
            .select(&keep)
            .subset(16, 0, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("class 3") && err.contains("has 2"), "{err}");
    }

    #[test]
    fn normalisation_gives_zero_mean_unit_std_per_channel() {
        let mut ds = toy();
        let norm = ds.fit_normalisation();
        // Channel 0 holds 0,2,..,78: mean 39; channel 1 holds 1,3,..,79: mean 40.
        assert_eq!(norm.mean, vec![39.0, 40.0]);
        ds.normalise(&norm);
        let refit = ds.fit_normalisation();
        for (m, s) in refit.mean.iter().zip(&refit.std) {
            assert!(m.abs() < 1e-5 && (s - 1.0).abs() < 1e-5, "{m} {s}");
        }
    }

    #[test]
    fn one_hot_targets() {
        let ds = toy().select(&[0, 5]);
        assert_eq!(ds.target_matrix(), vec![1., 0., 0., 0., 0., 1., 0., 0.]);
    }
}
