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
    buffers: Vec<Buffer<B>>,
}

/// One parameter tensor's momentum buffer, flat. A matrix `[r, c]`'s buffer is kept in the
/// order of its transpose `[c, r]` once it has been used (`transposed`): see [`Step`].
struct Buffer<B: Backend> {
    flat: Tensor<B, 1>,
    /// `Some([r, c])`: `flat` holds the `[c, r]` transpose of the `[r, c]` matrix buffer.
    transposed: Option<[usize; 2]>,
}

impl<B: Backend> Sgd<B> {
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            buffers: Vec::new(),
        }
    }

    /// Restores the momentum buffer from its flat form; `sizes` are the parameter sizes.
    pub fn with_state(
        config: SgdConfig,
        flat: &[f64],
        sizes: &[usize],
        device: &B::Device,
    ) -> Self {
        let mut buffers = Vec::with_capacity(sizes.len());
        let mut off = 0;
        for &n in sizes {
            buffers.push(Buffer {
                flat: Tensor::from_data(TensorData::new(flat[off..off + n].to_vec(), [n]), device),
                transposed: None,
            });
            off += n;
        }
        Sgd { config, buffers }
    }

    /// The momentum buffer, flat, in parameter order (as [`Self::with_state`] takes it), or
    /// `None` without momentum.
    pub fn state(&self) -> Option<Vec<f64>> {
        if self.config.momentum == 0.0 {
            return None;
        }
        Some(
            self.buffers
                .iter()
                .flat_map(|b| {
                    let flat = match b.transposed {
                        Some([r, c]) => b.flat.clone().reshape([c, r]).transpose().reshape([r * c]),
                        None => b.flat.clone(),
                    };
                    flat.to_data().iter::<f64>().collect::<Vec<_>>()
                })
                .collect(),
        )
    }
}

/// Where the gradients come from.
enum Grads<'a, A: AutodiffBackend> {
    /// Straight from a backward pass, in each parameter's own layout.
    Autodiff(&'a A::Gradients),
    /// Flattened per parameter tensor (module order; `None` without gradient).
    Flat(&'a [Option<Tensor<A::InnerBackend, 1>>]),
}

impl<B: Backend> Sgd<B> {
    /// One update θ ← θ − lr·d, with g' = g + wd·θ, buf ← μ·buf + g' and d = buf
    /// (or g' + μ·buf with Nesterov, or g' without momentum).
    pub fn step<A, M>(&mut self, model: M, grads: &A::Gradients, lr: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        self.apply(model, Grads::<A>::Autodiff(grads), lr)
    }

    /// The same update from gradients already flattened per parameter tensor (in module
    /// order; `None` for a parameter without gradient), e.g. accumulated over micro-batches.
    pub fn step_flat<A, M>(&mut self, model: M, grads: &[Option<Tensor<B, 1>>], lr: f64) -> M
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        self.apply(model, Grads::<A>::Flat(grads), lr)
    }

    fn apply<A, M>(&mut self, model: M, grads: Grads<'_, A>, lr: f64) -> M
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

struct Zeros<B: Backend>(Vec<Buffer<B>>);

impl<A: AutodiffBackend> ModuleVisitor<A> for Zeros<A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(Buffer {
            flat: Tensor::zeros([n], &t.device()),
            transposed: None,
        });
    }
}

/// The update, one parameter tensor at a time.
///
/// A matrix parameter is updated in its transpose. An affine layer computes x·Wᵀ, so the
/// gradient of W arrives from the backward as the transpose of a contiguous `[in, out]`
/// product; Wᵀ, gᵀ and the buffer's `[in, out]` form are then all contiguous, and the
/// elementwise update runs without a transposing copy. The new W is the transpose of the
/// result, a view whose Wᵀ is contiguous for the next forward. The arithmetic per element is
/// the same in either layout, so the trajectory does not depend on it.
struct Step<'a, A: AutodiffBackend> {
    grads: Grads<'a, A>,
    lr: f64,
    config: SgdConfig,
    buffers: &'a mut Vec<Buffer<A::InnerBackend>>,
    index: usize,
}

impl<A: AutodiffBackend> ModuleMapper<A> for Step<'_, A> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let dims: Vec<usize> = tensor.dims().to_vec();
        let grad = match &self.grads {
            Grads::Autodiff(g) => tensor.grad(g),
            Grads::Flat(g) => g[self.index].clone().map(|g| g.reshape(shape.clone())),
        };
        let theta = tensor.inner();
        let matrix = D == 2;
        // Work in the transpose for matrices (see the type's note).
        let flip = |t: Tensor<A::InnerBackend, D>| if matrix { t.swap_dims(0, 1) } else { t };
        let c = self.config;
        let updated = match grad {
            None => theta,
            Some(g) => {
                let theta = flip(theta);
                let mut g = flip(g);
                let work = theta.shape();
                if c.weight_decay > 0.0 {
                    g = g + theta.clone().mul_scalar(c.weight_decay);
                }
                let d = if c.momentum > 0.0 {
                    let old = std::mem::replace(
                        &mut self.buffers[self.index],
                        Buffer {
                            flat: Tensor::zeros([0], &g.device()),
                            transposed: None,
                        },
                    );
                    let prev: Tensor<A::InnerBackend, D> = match (matrix, old.transposed) {
                        (true, None) => {
                            // A buffer in parameter order (fresh, or restored): transpose it once.
                            old.flat.reshape(shape.clone()).swap_dims(0, 1)
                        }
                        _ => old.flat.reshape(work.clone()),
                    };
                    let buf = prev.mul_scalar(c.momentum) + g.clone();
                    self.buffers[self.index] = Buffer {
                        flat: buf.clone().reshape([work.num_elements()]),
                        transposed: matrix.then(|| [dims[0], dims[1]]),
                    };
                    if c.nesterov {
                        g + buf.mul_scalar(c.momentum)
                    } else {
                        buf
                    }
                } else {
                    g
                };
                flip(theta - d.mul_scalar(self.lr))
            }
        };
        self.index += 1;
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use noisegeom_models::{Activation, Arch, FlatSource, Net, Stage, flatten, mse};

    type A = Autodiff<NdArray<f64>>;

    /// The update rule written out on the host in f64 (PyTorch's SGD: no dampening, coupled
    /// weight decay), against the device update, over several steps of a two-layer net whose
    /// matrices are updated in their transposed layout; halfway, the state is saved and a
    /// fresh optimiser resumes from it.
    #[test]
    fn update_matches_the_rule_written_out_and_resumes_from_its_state() {
        let arch = Arch {
            input_shape: vec![3],
            stages: vec![
                Stage::Dense { out: 4, bias: true },
                Stage::Act {
                    activation: Activation::Tanh,
                },
                Stage::Dense { out: 2, bias: true },
            ],
        };
        let p = arch.num_params();
        let device = Default::default();
        let theta0: Vec<f64> = (0..p)
            .map(|k| ((k * 37 % 23) as f64 - 11.0) / 17.0)
            .collect();
        let x: Vec<f64> = (0..15).map(|k| ((k * 13 % 7) as f64 - 3.0) / 3.0).collect();
        let y: Vec<f64> = (0..10).map(|k| ((k * 5 % 3) as f64) - 1.0).collect();
        let x = Tensor::<A, 2>::from_data(TensorData::new(x, [5, 3]), &device);
        let y = Tensor::<A, 2>::from_data(TensorData::new(y, [5, 2]), &device);
        let sizes = [12, 4, 8, 2];
        for config in [
            SgdConfig {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            SgdConfig {
                momentum: 0.8,
                nesterov: true,
                weight_decay: 0.01,
            },
            SgdConfig {
                momentum: 0.0,
                nesterov: false,
                weight_decay: 0.05,
            },
        ] {
            let mut net =
                Net::<A>::build(arch.clone(), &mut FlatSource::new(&device, &theta0)).unwrap();
            let mut sgd = Sgd::<NdArray<f64>>::new(config);
            let (mut theta, mut buf) = (theta0.clone(), vec![0.0; p]);
            for step in 0..5 {
                let lr = 0.1 + 0.05 * step as f64;
                let grads = mse(net.forward(x.clone()), y.clone()).backward();
                let g: Vec<f64> = flat_grads::<A, _>(&net, &grads)
                    .into_iter()
                    .flat_map(|g| g.unwrap().to_data().iter::<f64>().collect::<Vec<_>>())
                    .collect();
                for k in 0..p {
                    let gk = g[k] + config.weight_decay * theta[k];
                    let d = if config.momentum > 0.0 {
                        buf[k] = config.momentum * buf[k] + gk;
                        if config.nesterov {
                            gk + config.momentum * buf[k]
                        } else {
                            buf[k]
                        }
                    } else {
                        gk
                    };
                    theta[k] -= lr * d;
                }
                net = sgd.step(net, &grads, lr);
                let got = flatten(&net);
                let err = got
                    .iter()
                    .zip(&theta)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(err <= 1e-14, "{config:?}, step {step}: max |Δθ| = {err:e}");
                if config.momentum > 0.0 {
                    let state = sgd.state().unwrap();
                    let err = state
                        .iter()
                        .zip(&buf)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        err <= 1e-14,
                        "{config:?}, step {step}: buffer off by {err:e}"
                    );
                    if step == 2 {
                        sgd = Sgd::with_state(config, &state, &sizes, &device);
                    }
                } else {
                    assert!(sgd.state().is_none());
                }
            }
        }
    }

    /// A network rebuilt from the flat θ of a trained one (as a resumed run or a probe
    /// builds it) computes bitwise what the trained network computes, step after step.
    /// flex's gemm rounds x·Wᵀ differently with W's memory layout at these shapes, so this
    /// fails unless a built matrix has the layout SGD leaves it in.
    #[test]
    fn a_network_rebuilt_from_theta_computes_bitwise_what_the_trained_one_computes() {
        type F = Autodiff<Flex>;
        let device = Default::default();
        let arch = Arch {
            input_shape: vec![128],
            stages: vec![
                Stage::Dense {
                    out: 64,
                    bias: true,
                },
                Stage::Act {
                    activation: Activation::Relu,
                },
                Stage::Dense {
                    out: 10,
                    bias: true,
                },
            ],
        };
        let theta0: Vec<f64> = (0..arch.num_params())
            .map(|k| ((k * 7919 % 1000) as f64 - 500.0) / 5000.0)
            .collect();
        let (n, d) = (16, 128);
        let x: Vec<f32> = (0..n * d)
            .map(|k| ((k * 104_729 % 997) as f32 - 498.0) / 300.0)
            .collect();
        let x = Tensor::<F, 2>::from_data(TensorData::new(x, [n, d]), &device);
        let y = Tensor::<F, 2>::zeros([n, 10], &device);
        let bits = |net: &Net<F>| -> Vec<u32> {
            net.forward(x.clone())
                .into_data()
                .iter::<f32>()
                .map(f32::to_bits)
                .collect()
        };
        let mut net =
            Net::<F>::build(arch.clone(), &mut FlatSource::new(&device, &theta0)).unwrap();
        let mut sgd = Sgd::<Flex>::new(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        });
        for step in 0..3 {
            let grads = mse(net.forward(x.clone()), y.clone()).backward();
            net = sgd.step(net, &grads, 0.05);
            let rebuilt =
                Net::<F>::build(arch.clone(), &mut FlatSource::new(&device, &flatten(&net)))
                    .unwrap();
            let (a, b) = (bits(&net), bits(&rebuilt));
            let differ = a.iter().zip(&b).filter(|(u, v)| u != v).count();
            assert_eq!(
                differ,
                0,
                "step {step}: {differ} of {} outputs differ",
                a.len()
            );
        }
    }
}
