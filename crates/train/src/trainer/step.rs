//! A training step's gradient (the batch's forward and backward, in micro-batches when the
//! config asks for them), and its loss, read back from the device only when needed.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use noisegeom_models::{AutodiffKernels, DeviceSet, Net, Pass, mse};
use serde_json::json;

use super::Observer;
use super::eval::cross_entropy;
use crate::fsio::JsonLog;
use crate::sgd::{Grads, flat_grads};
use crate::{LossKind, TrainError, TrainSettings};

/// The batch's mean loss, as its micro-batches' parts (still on the device; their sum in
/// order is the loss), and its gradient. Run under the autodiff lock.
///
/// The batch's mean loss is Σ over micro-batches of (len/B)·(micro-batch mean loss); so are
/// its gradients, summed one micro-batch at a time. With one part the backward's gradients
/// are returned as they are; with several, summed and flattened.
pub(super) fn gradient<B: AutodiffKernels>(
    model: &Net<B>,
    set: &DeviceSet<B::InnerBackend>,
    batch: &[usize],
    t: &TrainSettings,
) -> (Vec<Tensor<B::InnerBackend, 1>>, Grads<B>) {
    let micro = t.micro_batch.unwrap_or(batch.len()).max(1);
    let mut parts = Vec::new();
    let mut grads: Vec<Option<Tensor<B::InnerBackend, 1>>> = Vec::new();
    for part in batch.chunks(micro) {
        let (x, y) = set.rows(part);
        let out = model.forward_pass(Tensor::from_inner(x), Pass::Train);
        let mut loss = match t.loss {
            LossKind::Mse => mse(out, Tensor::from_inner(y)),
            LossKind::CrossEntropy => cross_entropy(out, Tensor::from_inner(y)),
        };
        if part.len() != batch.len() {
            loss = loss.mul_scalar(part.len() as f64 / batch.len() as f64);
        }
        parts.push(loss.clone().inner());
        if part.len() == batch.len() {
            return (parts, Grads::Autodiff(loss.backward()));
        }
        let g = flat_grads::<B, _>(model, &loss.backward());
        grads = if grads.is_empty() {
            g
        } else {
            grads
                .into_iter()
                .zip(g)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                })
                .collect()
        };
    }
    (parts, Grads::Flat(grads))
}

/// A step whose loss has not been read back yet.
struct Pending<B: Backend> {
    step: u64,
    lr: f64,
    parts: Vec<Tensor<B, 1>>,
}

/// The training losses. A step does not wait for the device to read its loss: the losses
/// are read back when the log, an evaluation, a probe or a checkpoint needs them, in one
/// transfer for all the steps since the last read.
pub(super) struct Losses<B: Backend> {
    pending: Vec<Pending<B>>,
    /// The losses summed since the last log line, and how many.
    pub(super) window: (f64, u64),
}

/// Where [`Losses::read`] writes.
pub(super) struct LossSink<'a> {
    pub(super) log: &'a mut JsonLog,
    pub(super) log_path: &'a Path,
    pub(super) observer: &'a mut dyn Observer,
    pub(super) log_every: u64,
    pub(super) total: u64,
    /// The last checkpoint written, which a divergence names.
    pub(super) last_checkpoint: &'a Option<PathBuf>,
}

impl<B: Backend> Losses<B> {
    pub(super) fn new(window: (f64, u64)) -> Self {
        Losses {
            pending: Vec::new(),
            window,
        }
    }

    /// Step `step` (0-based, at learning rate `lr`) has run; its loss is the sum of `parts`.
    pub(super) fn push(&mut self, step: u64, lr: f64, parts: Vec<Tensor<B, 1>>) {
        self.pending.push(Pending { step, lr, parts });
    }

    /// Reads the pending losses back and, step by step in order, stops the run at a loss that
    /// is not finite (logging where), adds the loss to the window, tells the observer, and
    /// writes the window's mean to the log at log steps.
    pub(super) fn read(&mut self, sink: LossSink<'_>) -> Result<(), TrainError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let all: Vec<Tensor<B, 1>> = self
            .pending
            .iter()
            .flat_map(|p| p.parts.iter().cloned())
            .collect();
        let values: Vec<f64> = noisegeom_kernels::read(Tensor::cat(all, 0))
            .iter::<f64>()
            .collect();
        let log_err = |source| TrainError::Io {
            path: sink.log_path.to_path_buf(),
            source,
        };
        let mut values = values.into_iter();
        for Pending { step, lr, parts } in std::mem::take(&mut self.pending) {
            // The f64 sum of the parts in order, as the loss was always summed.
            let value = values.by_ref().take(parts.len()).fold(0.0, |a, v| a + v);
            if !value.is_finite() {
                sink.log
                    .write(&json!({"kind": "diverged", "step": step, "lr": lr, "loss": format!("{value}")}))
                    .map_err(log_err)?;
                return Err(TrainError::Diverged {
                    step,
                    lr,
                    loss: value,
                    checkpoint: sink.last_checkpoint.clone(),
                });
            }
            let done = step + 1;
            self.window = (self.window.0 + value, self.window.1 + 1);
            sink.observer.stepped(done, value, lr);
            if done % sink.log_every == 0 || done == sink.total {
                let mean = self.window.0 / self.window.1 as f64;
                sink.log
                    .write(&json!({"kind": "step", "step": done, "lr": lr, "loss": mean}))
                    .map_err(log_err)?;
                self.window = (0.0, 0);
            }
        }
        Ok(())
    }
}
