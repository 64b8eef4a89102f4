//! `noisegeom data info PATH`: what a dataset folder holds.

use std::path::Path;

use noisegeom_data::{Dataset, Source, cifar10, idx};

/// Recognises CIFAR-10 binary or IDX files in `path` and describes both splits.
pub fn info(path: &Path) -> anyhow::Result<String> {
    if !path.is_dir() {
        anyhow::bail!(
            "{} is not a directory; pass the folder that holds the dataset files",
            path.display()
        );
    }
    let (name, train, test) = match Source::detect(path) {
        Some(Source::Cifar10) => (
            "CIFAR-10 (official binary version)",
            cifar10::load(path, cifar10::Split::Train)?,
            cifar10::load(path, cifar10::Split::Test)?,
        ),
        Some(s @ (Source::FashionMnist | Source::Mnist)) => {
            let (name, label) = if s == Source::FashionMnist {
                ("Fashion-MNIST (IDX)", "fashion-mnist")
            } else {
                ("MNIST-style IDX", "mnist")
            };
            (
                name,
                idx::load(path, idx::Split::Train, label)?,
                idx::load(path, idx::Split::Test, label)?,
            )
        }
        _ => anyhow::bail!(
            "{} holds neither CIFAR-10 binary files (data_batch_1.bin …) nor IDX files (train-images-idx3-ubyte[.gz] …)",
            path.display()
        ),
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
