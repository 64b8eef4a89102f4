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
        let flat = flat_grads::<A, M>(&model, grads);
        self.step_flat(model, &flat, lr)
    }

    /// The same update from gradients already flattened per parameter tensor (in module
    /// order; `None` for a parameter without gradient), e.g. accumulated over micro-batches.
    pub fn step_flat<A, M>(&mut self, model: M, grads: &[Option<Tensor<B, 1>>], lr: f64) -> M
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

/// Each parameter tensor's gradient, flattened, in module order.
pub fn flat_grads<A, M>(model: &M, grads: &A::Gradients) -> Vec<Option<Tensor<A::InnerBackend, 1>>>
where
    A: AutodiffBackend,
    M: Module<A>,
{
    struct Collect<'a, A: AutodiffBackend> {
        grads: &'a A::Gradients,
        out: Vec<Option<Tensor<A::InnerBackend, 1>>>,
    }
    impl<A: AutodiffBackend> ModuleVisitor<A> for Collect<'_, A> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            let g = param.val().grad(self.grads);
            self.out.push(g.map(|g| {
                let n = g.shape().num_elements();
                g.reshape([n])
            }));
        }
    }
    let mut c = Collect::<A> {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
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
    grads: &'a [Option<Tensor<A::InnerBackend, 1>>],
    lr: f64,
    config: SgdConfig,
    buffers: &'a mut Vec<Tensor<A::InnerBackend, 1>>,
    index: usize,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Step<'_, A> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let theta = tensor.inner();
        let shape = theta.shape();
        let grad = self.grads[self.index]
            .clone()
            .map(|g| g.reshape(shape.clone()));
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
