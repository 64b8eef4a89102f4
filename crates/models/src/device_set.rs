use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use noisegeom_data::{Dataset, Targets};

/// A dataset moved onto a device once: inputs `[n, d]`, regression targets `[n, c]`
/// (one-hot rows for classes), and the class labels on the host for accuracy.
#[derive(Clone, Debug)]
pub struct DeviceSet<B: Backend> {
    pub x: Tensor<B, 2>,
    pub y: Tensor<B, 2>,
    pub labels: Option<Vec<u8>>,
}

impl<B: Backend> DeviceSet<B> {
    pub fn new(ds: &Dataset, device: &B::Device) -> Self {
        let (n, d, c) = (ds.len(), ds.input_dim(), ds.num_outputs());
        let x = Tensor::from_data(TensorData::new(ds.inputs.clone(), [n, d]), device);
        let y = Tensor::from_data(TensorData::new(ds.target_matrix(), [n, c]), device);
        let labels = match &ds.targets {
            Targets::Classes { labels, .. } => Some(labels.clone()),
            Targets::Regression { .. } => None,
        };
        DeviceSet { x, y, labels }
    }

    pub fn len(&self) -> usize {
        self.x.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `idx` of inputs and targets, gathered on the device.
    pub fn rows(&self, idx: &[usize]) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let device = self.x.device();
        let i: Vec<i64> = idx.iter().map(|&v| v as i64).collect();
        let it = Tensor::<B, 1, Int>::from_data(TensorData::new(i, [idx.len()]), &device);
        (
            self.x.clone().select(0, it.clone()),
            self.y.clone().select(0, it),
        )
    }

    /// The contiguous rows `start..start + len`.
    pub fn range(&self, start: usize, len: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            self.x.clone().narrow(0, start, len),
            self.y.clone().narrow(0, start, len),
        )
    }
}

/// The square loss of SPEC §1, L = 1/(2n) Σ_i ||out_i − y_i||², as a one-element tensor.
pub fn mse<B: Backend>(out: Tensor<B, 2>, y: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = out.dims()[0] as f64;
    let e = out - y;
    (e.clone() * e).sum().mul_scalar(0.5 / n)
}
