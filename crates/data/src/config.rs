//! The `[data]` table of an experiment config, and turning it into train/test sets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::synthetic::Covariance;
use crate::{DataError, Dataset, Normalisation, cifar10, idx, synthetic};

/// Where the samples come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Official CIFAR-10 binary files in `dir`.
    Cifar10,
    /// Fashion-MNIST IDX files in `dir` (default: Debian's `/usr/share/datasets/fashion-mnist`).
    FashionMnist,
    /// MNIST IDX files in `dir`.
    Mnist,
    /// The generated CIFAR-shaped teacher task (always labelled synthetic).
    SyntheticImages,
    /// Gaussian inputs with a linear teacher (regression).
    Gaussian,
}

impl Source {
    /// The file source a folder holds: CIFAR-10 binary files (also in a
    /// `cifar-10-batches-bin` subfolder), or IDX files (`…idx3-ubyte[.gz]`), read as
    /// Fashion-MNIST when the folder's path names it and as MNIST otherwise. `None` when it
    /// holds neither.
    pub fn detect(dir: &Path) -> Option<Source> {
        if let Ok(cifar) = cifar10::resolve_dir(dir)
            && (cifar.join(cifar10::TEST_FILE).exists()
                || cifar.join(cifar10::TRAIN_FILES[0]).exists())
        {
            return Some(Source::Cifar10);
        }
        let idx = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("idx3-ubyte"));
        let fashion = dir.to_string_lossy().to_lowercase().contains("fashion");
        idx.then_some(if fashion {
            Source::FashionMnist
        } else {
            Source::Mnist
        })
    }
}

/// The `[data]` table. Keys that do not apply to the chosen `source` are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub source: Source,
    /// Folder with the dataset files (file sources only); `--data` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Use a seeded subset of this many training samples (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_size: Option<usize>,
    /// Use a seeded subset of this many test samples (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_size: Option<usize>,
    /// Draw subsets with equal counts per class.
    #[serde(default)]
    pub balanced: bool,
    /// Per-channel normalisation fitted on the training set (after subsetting).
    #[serde(default = "yes")]
    pub normalise: bool,
    /// Synthetic sources: samples to generate for training and for testing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_train: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_test: Option<usize>,
    /// `synthetic_images`: image side (default 32) and channels (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// `gaussian`: the input covariance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariance: Option<Covariance>,
}

fn yes() -> bool {
    true
}

/// Train and test sets, normalised, with what was done to them.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub train: Dataset,
    pub test: Dataset,
    pub normalisation: Option<Normalisation>,
}

impl DataConfig {
    /// The same subsets and normalisation on another file source (`--dataset`; `None` keeps
    /// this one): the keys that only synthetic sources take are dropped, and `dir` replaces
    /// the folder. A folder given without a source to a synthetic config (a figure's
    /// `--quick --data DIR`) is read as what it holds ([`Source::detect`]).
    pub fn with_source(&self, source: Option<Source>, dir: Option<PathBuf>) -> DataConfig {
        let synthetic = matches!(self.source, Source::SyntheticImages | Source::Gaussian);
        let detected = match (&source, &dir) {
            (None, Some(d)) if synthetic => Source::detect(d),
            _ => None,
        };
        DataConfig {
            source: source.or(detected).unwrap_or(self.source),
            dir,
            n_train: None,
            n_test: None,
            image_size: None,
            channels: None,
            covariance: None,
            ..self.clone()
        }
    }

    /// Checks that only keys meaningful for `source` are set.
    pub fn validate(&self) -> Result<(), String> {
        let synthetic = matches!(self.source, Source::SyntheticImages | Source::Gaussian);
        let misplaced = |key: &str, ok: bool| -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "data.{key} does not apply to source = \"{}\"; remove it",
                    self.source_name()
                ))
            }
        };
        misplaced("dir", self.dir.is_none() || !synthetic)?;
        misplaced("n_train", self.n_train.is_none() || synthetic)?;
        misplaced("n_test", self.n_test.is_none() || synthetic)?;
        let images = self.source == Source::SyntheticImages;
        misplaced("image_size", self.image_size.is_none() || images)?;
        misplaced("channels", self.channels.is_none() || images)?;
        misplaced(
            "covariance",
            self.covariance.is_none() || self.source == Source::Gaussian,
        )?;
        if synthetic && (self.n_train.is_none() || self.n_test.is_none()) {
            return Err(format!(
                "source = \"{}\" needs data.n_train and data.n_test",
                self.source_name()
            ));
        }
        if self.source == Source::Gaussian && self.covariance.is_none() {
            return Err(
                "source = \"gaussian\" needs data.covariance, e.g. { kind = \"isotropic\", dim = 20 }"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn source_name(&self) -> &'static str {
        match self.source {
            Source::Cifar10 => "cifar10",
            Source::FashionMnist => "fashion_mnist",
            Source::Mnist => "mnist",
            Source::SyntheticImages => "synthetic_images",
            Source::Gaussian => "gaussian",
        }
    }

    /// The folder that will be read: `override_dir`, else `dir`, else the source's default.
    pub fn resolved_dir(&self, override_dir: Option<&Path>) -> Option<PathBuf> {
        override_dir
            .map(Path::to_path_buf)
            .or_else(|| self.dir.clone())
            .or_else(|| match self.source {
                Source::FashionMnist => Some(PathBuf::from(idx::DEBIAN_FASHION_MNIST)),
                _ => None,
            })
    }

    /// Loads (or generates), subsets and normalises the data. `seed` drives subsets and
    /// synthetic generation.
    pub fn prepare(&self, override_dir: Option<&Path>, seed: u64) -> Result<Prepared, DataError> {
        self.validate().map_err(DataError::Config)?;
        let need_dir = || {
            self.resolved_dir(override_dir)
                .ok_or(DataError::MissingFile {
                    what: "dataset",
                    path: PathBuf::from("<none>"),
                    hint: format!(
                        "source = \"{}\" reads files from disk: pass --data DIR or set data.dir",
                        self.source_name()
                    ),
                })
        };
        let (train, test) = match self.source {
            Source::Cifar10 => {
                let dir = need_dir()?;
                (
                    cifar10::load(&dir, cifar10::Split::Train)?,
                    cifar10::load(&dir, cifar10::Split::Test)?,
                )
            }
            Source::FashionMnist | Source::Mnist => {
                let dir = need_dir()?;
                let name = if self.source == Source::Mnist {
                    "mnist"
                } else {
                    "fashion-mnist"
                };
                (
                    idx::load(&dir, idx::Split::Train, name)?,
                    idx::load(&dir, idx::Split::Test, name)?,
                )
            }
            Source::SyntheticImages => {
                let (n_tr, n_te) = (self.n_train.unwrap_or(0), self.n_test.unwrap_or(0));
                let all = synthetic::teacher_images(
                    n_tr + n_te,
                    self.channels.unwrap_or(3),
                    self.image_size.unwrap_or(32),
                    10,
                    seed,
                )?;
                split_generated(all, n_tr)
            }
            Source::Gaussian => {
                let (n_tr, n_te) = (self.n_train.unwrap_or(0), self.n_test.unwrap_or(0));
                let cov = self.covariance.as_ref().expect("validated");
                split_generated(synthetic::gaussian(n_tr + n_te, cov, seed)?.dataset, n_tr)
            }
        };
        let mut train = match self.train_size {
            Some(n) => train.subset(n, seed, self.balanced)?,
            None => train,
        };
        let mut test = match self.test_size {
            Some(n) => test.subset(n, seed ^ 0x7e57, self.balanced)?,
            None => test,
        };
        let normalisation = self.normalise.then(|| train.fit_normalisation());
        if let Some(norm) = &normalisation {
            train.normalise(norm);
            test.normalise(norm);
        }
        Ok(Prepared {
            train,
            test,
            normalisation,
        })
    }
}

fn split_generated(all: Dataset, n_train: usize) -> (Dataset, Dataset) {
    let n = all.len();
    let mut train = all.select(&(0..n_train).collect::<Vec<_>>());
    let mut test = all.select(&(n_train..n).collect::<Vec<_>>());
    train.provenance.split = "train".into();
    test.provenance.split = "test".into();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<DataConfig, String> {
        let c: DataConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn misplaced_and_unknown_keys_are_rejected() {
        let err = cfg("source = \"cifar10\"\nn_train = 5").unwrap_err();
        assert!(err.contains("n_train") && err.contains("cifar10"), "{err}");
        let err = cfg("source = \"cifar10\"\nsubset = 5").unwrap_err();
        assert!(err.contains("subset"), "{err}");
        let err = cfg("source = \"gaussian\"\nn_train = 5\nn_test = 5").unwrap_err();
        assert!(err.contains("covariance"), "{err}");
    }

    #[test]
    fn synthetic_images_split_and_normalise() {
        let c = cfg("source = \"synthetic_images\"\nn_train = 300\nn_test = 100\nimage_size = 8")
            .unwrap();
        let p = c.prepare(None, 4).unwrap();
        assert_eq!((p.train.len(), p.test.len()), (300, 100));
        assert_eq!(p.train.input_shape, vec![3, 8, 8]);
        assert!(p.train.provenance.synthetic);
        let refit = p.train.fit_normalisation();
        assert!(refit.mean.iter().all(|m| m.abs() < 1e-4));
    }

    #[test]
    fn file_sources_need_a_directory() {
        let c = cfg("source = \"cifar10\"").unwrap();
        let err = c.prepare(None, 0).unwrap_err().to_string();
        assert!(err.contains("--data"), "{err}");
    }
}
