use burn::backend::{Autodiff, NdArray};

use super::*;
use crate::checkpoint::Checkpoint;

/// Trains the given config in f64 and returns the final θ.
fn final_theta(cfg: &str, dir: &Path) -> Vec<f64> {
    let config = ExperimentConfig::from_toml(cfg, "test").unwrap();
    let opts = RunOptions {
        config,
        dir: dir.to_path_buf(),
        data_dir: None,
        resume: false,
        env: json!({}),
        backend: "ndarray-f64".into(),
        initial: None,
    };
    let device = Default::default();
    train::<Autodiff<NdArray<f64>>>(opts, &device, &mut Silent).unwrap();
    let (_, ck): (PathBuf, Checkpoint) = newest_checkpoint(&dir.join("checkpoints"))
        .unwrap()
        .unwrap();
    ck.params
}

#[test]
fn micro_batches_sum_to_the_full_batch_gradient() {
    // Full-batch GD with momentum on 24 samples, as one pass and as micro-batches of 5
    // (the last one short): the same trajectory up to f64 rounding.
    let cfg = r#"
seed = 1
[data]
source = "synthetic_images"
n_train = 24
n_test = 8
image_size = 8
channels = 2
[model]
kind = "resnet"
channels = [3, 4]
[train]
batch_size = 24
steps = 6
momentum = 0.9
eval_every = 6
[train.lr]
schedule = "constant"
lr = 0.05
"#;
    let tmp = tempfile::tempdir().unwrap();
    let whole = final_theta(cfg, &tmp.path().join("whole"));
    let micro = final_theta(
        &cfg.replace("batch_size = 24", "batch_size = 24\nmicro_batch = 5"),
        &tmp.path().join("micro"),
    );
    let start = final_theta(
        &cfg.replace("lr = 0.05", "lr = 1e-300"),
        &tmp.path().join("start"),
    );
    let moved: f64 = whole.iter().zip(&start).map(|(a, b)| (a - b).abs()).sum();
    assert!(moved > 1e-3, "training moved θ by {moved}");
    let diff = whole
        .iter()
        .zip(&micro)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let scale = whole.iter().map(|a| a.abs()).fold(0.0, f64::max);
    assert!(diff <= 1e-12 * scale, "max |Δθ| = {diff}");
}
