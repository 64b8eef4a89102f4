//! `noisegeom data info PATH`: what a dataset folder holds.

use std::path::Path;

use anyhow::Context;
use noisegeom_data::{Dataset, cifar10, idx};

/// Recognises CIFAR-10 binary or IDX files in `path` and describes both splits.
pub fn info(path: &Path) -> anyhow::Result<String> {
    if !path.is_dir() {
        anyhow::bail!(
            "{} is not a directory; pass the folder that holds the dataset files",
            path.display()
        );
    }
    let cifar = cifar10::resolve_dir(path)?;
    let looks_cifar =
        cifar.join(cifar10::TEST_FILE).exists() || cifar.join(cifar10::TRAIN_FILES[0]).exists();
    let (name, train, test) = if looks_cifar {
        (
            "CIFAR-10 (official binary version)",
            cifar10::load(path, cifar10::Split::Train)?,
            cifar10::load(path, cifar10::Split::Test)?,
        )
    } else {
        let has_idx = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("idx3-ubyte"));
        if !has_idx {
            anyhow::bail!(
                "{} holds neither CIFAR-10 binary files (data_batch_1.bin …) nor IDX files (train-images-idx3-ubyte[.gz] …)",
                path.display()
            );
        }
        let fashion = path.to_string_lossy().to_lowercase().contains("fashion");
        let label = if fashion { "fashion-mnist" } else { "mnist" };
        (
            if fashion {
                "Fashion-MNIST (IDX)"
            } else {
                "MNIST-style IDX"
            },
            idx::load(path, idx::Split::Train, label)?,
            idx::load(path, idx::Split::Test, label)?,
        )
    };
    let describe = |split: &str, ds: &Dataset| {
        let counts = ds
            .class_counts()
            .map(|c| format!("{c:?}"))
            .unwrap_or_else(|| "regression".into());
        format!(
            "  {split:5}: {} samples of shape {:?}, {} classes, counts per class {counts}\n",
            ds.len(),
            ds.input_shape,
            ds.num_outputs()
        )
    };
    Ok(format!(
        "{name} in {}\n{}{}",
        train.provenance.source,
        describe("train", &train),
        describe("test", &test)
    ))
}
