//! A training step's gradient: the batch's forward and backward, in micro-batches when the
//! config asks for them.

use burn::tensor::{ElementConversion, Tensor};
use noisegeom_models::{AutodiffKernels, DeviceSet, Net, Pass, mse};

use super::eval::cross_entropy;
use crate::sgd::{Grads, flat_grads};
use crate::{LossKind, TrainSettings};

/// The batch's mean loss and its gradient. Run under the autodiff lock.
///
/// The batch's mean loss is Σ over micro-batches of (len/B)·(micro-batch mean loss); so are
/// its gradients, summed one micro-batch at a time. With one part the backward's gradients
/// are returned as they are; with several, summed and flattened.
pub(super) fn gradient<B: AutodiffKernels>(
    model: &Net<B>,
    set: &DeviceSet<B::InnerBackend>,
    batch: &[usize],
    t: &TrainSettings,
) -> (f64, Grads<B>) {
    let micro = t.micro_batch.unwrap_or(batch.len()).max(1);
    let mut value = 0.0;
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
        value += loss.clone().into_scalar().elem::<f64>();
        if part.len() == batch.len() {
            return (value, Grads::Autodiff(loss.backward()));
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
    (value, Grads::Flat(grads))
}
