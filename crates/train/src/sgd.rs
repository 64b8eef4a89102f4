//! Plain SGD with heavy-ball momentum and coupled weight decay (PyTorch semantics, no
//! dampening), kept on the device. The state is one flat buffer per parameter tensor.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// Optimiser hyper-parameters other than the learning rate (which the schedule supplies).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// SGD state: the momentum buffers (empty without momentum).
pub struct Sgd<B: Backend> {
    pub config: SgdConfig,
    buffers: Vec<Tensor<B, 1>>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: Vec::new(),
        }
    }

    /// Restores the momentum buffer from its flat form; `shapes` are the parameter sizes.
    pub fn with_state(
        config: SgdConfig,
        flat: &[f64],
        sizes: &[usize],
        device: &B::Device,
    ) -> Self {
        let mut buffers = Vec::with_capacity(sizes.len());
        let mut off = 0;
        for &n in sizes {
            buffers.push(Tensor::from_data(
                TensorData::new(flat[off..off + n].to_vec(), [n]),
                device,
            ));
            off += n;
        }
        Sgd { config, buffers }
    }

    /// The momentum buffer, flat, or `None` without momentum.
    pub fn state(&self) -> Option<Vec<f64>> {
        if self.config.momentum == 0.0 {
            return None;
        }
        Some(
            self.buffers
                .iter()
                .flat_map(|b| b.to_data().iter::<f64>().collect::<Vec<_>>())
                .collect(),
        )
    }
}

impl<B: Backend> Sgd<B> {
    /// One update θ ← θ − lr·d, with g' = g + wd·θ, buf ← μ·buf + g' and d = buf
    /// (or g' + μ·buf with Nesterov, or g' without momentum).
    pub fn step<A, M>(&mut self, model: M, grads: &A::Gradients, lr: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        if self.config.momentum > 0.0 && self.buffers.is_empty() {
            let mut z = Zeros(Vec::new());
            model.visit(&mut z);
            self.buffers = z.0;
        }
        let mut mapper = Step::<A> {
            grads,
            lr,
            config: self.config,
            buffers: &mut self.buffers,
            index: 0,
        };
        model.map(&mut mapper)
    }
}

struct Zeros<B: Backend>(Vec<Tensor<B, 1>>);

impl<A: AutodiffBackend> ModuleVisitor<A> for Zeros<A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(Tensor::zeros([n], &t.device()));
    }
}

struct Step<'a, A: AutodiffBackend> {
    grads: &'a A::Gradients,
    lr: f64,
    config: SgdConfig,
    buffers: &'a mut Vec<Tensor<A::InnerBackend, 1>>,
    index: usize,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Step<'_, A> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = tensor.grad(self.grads);
        let theta = tensor.inner();
        let shape = theta.shape();
        let c = self.config;
        let updated = match grad {
            None => theta,
            Some(mut g) => {
                if c.weight_decay > 0.0 {
                    g = g + theta.clone().mul_scalar(c.weight_decay);
                }
                let d = if c.momentum > 0.0 {
                    let buf: Tensor<A::InnerBackend, D> = self.buffers[self.index]
                        .clone()
                        .reshape(shape.clone())
                        .mul_scalar(c.momentum)
                        + g.clone();
                    self.buffers[self.index] = buf.clone().reshape([shape.num_elements()]);
                    if c.nesterov {
                        g + buf.mul_scalar(c.momentum)
                    } else {
                        buf
                    }
                } else {
                    g
                };
                theta - d.mul_scalar(self.lr)
            }
        };
        self.index += 1;
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}
