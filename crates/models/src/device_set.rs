use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use noisegeom_data::{Dataset, Targets};

/// A dataset kept in host memory whose rows go to the device as they are used: a minibatch,
/// or a chunk of an evaluation. Nothing of the size of the whole set is ever allocated on
/// the device, so any dataset trains on any device (CIFAR-10's 614 MB training set does not
/// fit one buffer of many GPUs; Fashion-MNIST's 188 MB did not fit lavapipe's). A batch is
/// gathered on the host and uploaded in one transfer.
#[derive(Clone, Debug)]
pub struct DeviceSet<'a, B: Backend> {
    /// Inputs `[n, d]` and regression targets `[n, c]` (one-hot rows for classes), row-major.
    x: &'a [f32],
    y: Vec<f32>,
    d: usize,
    c: usize,
    /// The class labels, for accuracy.
    pub labels: Option<&'a [u8]>,
    device: B::Device,
}

impl<'a, B: Backend> DeviceSet<'a, B> {
    pub fn new(ds: &'a Dataset, device: &B::Device) -> Self {
        let labels = match &ds.targets {
            Targets::Classes { labels, .. } => Some(labels.as_slice()),
            Targets::Regression { .. } => None,
        };
        DeviceSet {
            x: &ds.inputs,
            y: ds.target_matrix(),
            d: ds.input_dim(),
            c: ds.num_outputs(),
            labels,
            device: device.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.x.len() / self.d.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `idx` of inputs and targets, gathered on the host and uploaded.
    pub fn rows(&self, idx: &[usize]) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let gather = |m: &[f32], w: usize| -> Tensor<B, 2> {
            let mut out = Vec::with_capacity(idx.len() * w);
            for &i in idx {
                out.extend_from_slice(&m[i * w..(i + 1) * w]);
            }
            Tensor::from_data(TensorData::new(out, [idx.len(), w]), &self.device)
        };
        (gather(self.x, self.d), gather(&self.y, self.c))
    }

    /// The contiguous rows `start..start + len`.
    pub fn range(&self, start: usize, len: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let slice = |m: &[f32], w: usize| -> Tensor<B, 2> {
            let rows = m[start * w..(start + len) * w].to_vec();
            Tensor::from_data(TensorData::new(rows, [len, w]), &self.device)
        };
        (slice(self.x, self.d), slice(&self.y, self.c))
    }
}

/// The square loss of docs/definitions.md §1, L = 1/(2n) Σ_i ||out_i − y_i||², as a one-element tensor.
pub fn mse<B: Backend>(out: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = out.dims()[0] as f64;
    let e = out - y;
    (e.clone() * e).sum().mul_scalar(0.5 / n)
}
