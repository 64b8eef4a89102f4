//! Evaluation and checkpoints: the loss and accuracy over a set, and the state a run is
//! resumed from.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use noisegeom_models::{AutodiffKernels, DeviceSet, Kernels, Net, flatten, mse};
use serde_json::json;

use super::SetStats;
use crate::checkpoint::{self, Checkpoint};
use crate::fsio::JsonLog;
use crate::sgd::Sgd;
use crate::{LossKind, TrainError};

/// What a checkpoint holds besides the step and the log's length.
pub(super) struct Resumable<'a, B: AutodiffKernels> {
    pub(super) model: &'a Net<B>,
    pub(super) sgd: &'a Sgd<B::InnerBackend>,
    /// The losses summed since the last log line, and how many.
    pub(super) loss_window: (f64, u64),
    pub(super) probe_pending: bool,
}

impl<B: AutodiffKernels> Resumable<'_, B> {
    /// Writes the checkpoint after `step` steps: first its event in the log (so the log a
    /// checkpoint restores includes it), then θ, the momentum, the log's length, the open
    /// loss window and whether a probe is pending.
    pub(super) fn save(
        &self,
        dir: &Path,
        log: &mut JsonLog,
        log_path: &Path,
        step: u64,
        arch: &noisegeom_models::Arch,
    ) -> Result<PathBuf, TrainError> {
        let log_err = |source| TrainError::Io {
            path: log_path.to_path_buf(),
            source,
        };
        log.write(&json!({"kind": "checkpoint", "step": step}))
            .map_err(log_err)?;
        let mark = log.sync().map_err(log_err)?;
        let path = dir.join(checkpoint::file_name(step));
        Checkpoint {
            step,
            params: flatten(self.model),
            momentum: self.sgd.state(),
            log_bytes: mark.bytes,
            log_checksum: Some(mark.checksum),
            loss_window: self.loss_window,
            probe_pending: self.probe_pending,
            arch: arch.clone(),
        }
        .save(&path)
        .map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// `Ok(true)` when a probe was interrupted by a stop request (it logged nothing; the
/// checkpoint that follows says it is pending), `Ok(false)` when it ran.
pub(super) fn interrupted(probe: Result<(), TrainError>) -> Result<bool, TrainError> {
    match probe {
        Ok(()) => Ok(false),
        Err(TrainError::Geometry(noisegeom_metrics::GeometryError::Interrupted(_))) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Mean softmax cross-entropy against one-hot rows.
pub(super) fn cross_entropy<B: Kernels>(
    logits: Tensor<B, 2>,
    onehot: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * onehot).sum().mul_scalar(-1.0 / n)
}

/// Loss and accuracy over a whole set, in chunks of `batch`.
pub fn evaluate<B: Kernels>(
    net: &Net<B>,
    set: &DeviceSet<B>,
    batch: usize,
    loss: LossKind,
) -> SetStats {
    let n = set.len();
    let (mut sq, mut ce, mut correct) = (0.0, 0.0, 0usize);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let (x, y) = set.range(start, len);
        let out = net.forward(x);
        let b = len as f64;
        sq += noisegeom_kernels::read_scalar(mse(out.clone(), y.clone())) * b;
        if loss == LossKind::CrossEntropy {
            ce += noisegeom_kernels::read_scalar(cross_entropy(out.clone(), y)) * b;
        }
        if let Some(labels) = &set.labels {
            let pred = noisegeom_kernels::read(out.argmax(1));
            correct += pred
                .iter::<i64>()
                .zip(&labels[start..start + len])
                .filter(|(p, l)| *p == **l as i64)
                .count();
        }
    }
    let n_f = n.max(1) as f64;
    SetStats {
        samples: n,
        mse: sq / n_f,
        cross_entropy: (loss == LossKind::CrossEntropy).then_some(ce / n_f),
        accuracy: set.labels.as_ref().map(|_| correct as f64 / n_f),
    }
}

/// The newest checkpoint in a run's `checkpoints/` folder that loads; damaged ones are
/// skipped with a warning.
pub fn newest_checkpoint(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>, TrainError> {
    for (_, path) in checkpoint::list(dir).into_iter().rev() {
        match Checkpoint::load(&path) {
            Ok(ck) => return Ok(Some((path, ck))),
            Err(e) => tracing::warn!("{e}; trying an older checkpoint"),
        }
    }
    Ok(None)
}

/// Keeps the newest `keep` checkpoints.
pub(super) fn prune(dir: &Path, keep: usize) {
    let all = checkpoint::list(dir);
    for (_, path) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(path);
    }
}
