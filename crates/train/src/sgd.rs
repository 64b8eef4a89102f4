//! Plain SGD with heavy-ball momentum and coupled weight decay (PyTorch semantics, no
//! dampening), kept on the device (updated in one fused pass where the device is the host).
//! The state is one flat buffer per parameter tensor.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor, TensorData};
use noisegeom_kernels::sgd::{Scalar, SgdStep, sgd_update};
use noisegeom_kernels::{AutodiffKernels, Kernels};

/// Optimiser hyper-parameters other than the learning rate (which the schedule supplies).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// SGD state: the momentum buffers (empty without momentum).
pub struct Sgd<B: Kernels> {
    pub config: SgdConfig,
    buffers: Vec<Buffer<B>>,
}

/// One parameter tensor's momentum buffer, flat. A matrix `[r, c]`'s buffer is kept in the
/// order of its transpose `[c, r]` once it has been used (`transposed`): see [`Step`].
struct Buffer<B: Kernels> {
    flat: Tensor<B, 1>,
    /// `Some([r, c])`: `flat` holds the `[c, r]` transpose of the `[r, c]` matrix buffer.
    transposed: Option<[usize; 2]>,
}

impl<B: Kernels> Sgd<B> {
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
                    noisegeom_kernels::read(flat)
                        .iter::<f64>()
                        .collect::<Vec<_>>()
                })
                .collect(),
        )
    }
}

/// Where the gradients come from. They are consumed: each parameter's gradient is taken
/// out, so the update can reuse its memory.
pub enum Grads<A: AutodiffKernels> {
    /// Straight from a backward pass, in each parameter's own layout.
    Autodiff(A::Gradients),
    /// Flattened per parameter tensor (module order; `None` without gradient).
    Flat(Vec<Option<Tensor<A::InnerBackend, 1>>>),
}

impl<B: Kernels> Sgd<B> {
    /// One update θ ← θ − lr·d, with g' = g + wd·θ, buf ← μ·buf + g' and d = buf
    /// (or g' + μ·buf with Nesterov, or g' without momentum).
    pub fn step<A, M>(&mut self, model: M, grads: A::Gradients, lr: f64) -> M
    where
        A: AutodiffKernels<InnerBackend = B>,
        M: Module<A>,
    {
        self.apply(model, Grads::<A>::Autodiff(grads), lr)
    }

    /// The update from either kind of [`Grads`].
    pub fn apply<A, M>(&mut self, model: M, grads: Grads<A>, lr: f64) -> M
    where
        A: AutodiffKernels<InnerBackend = B>,
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
    A: AutodiffKernels,
    M: Module<A>,
{
    struct Collect<'a, A: AutodiffKernels> {
        grads: &'a A::Gradients,
        out: Vec<Option<Tensor<A::InnerBackend, 1>>>,
    }
    impl<A: AutodiffKernels> ModuleVisitor<A> for Collect<'_, A> {
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

struct Zeros<B: Kernels>(Vec<Buffer<B>>);

impl<A: AutodiffKernels> ModuleVisitor<A> for Zeros<A::InnerBackend> {
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
struct Step<'a, A: AutodiffKernels> {
    grads: Grads<A>,
    lr: f64,
    config: SgdConfig,
    buffers: &'a mut Vec<Buffer<A::InnerBackend>>,
    index: usize,
}

impl<A: AutodiffKernels> ModuleMapper<A> for Step<'_, A> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let dims: Vec<usize> = tensor.dims().to_vec();
        let grad = match &mut self.grads {
            Grads::Autodiff(g) => tensor.grad_remove(g),
            Grads::Flat(g) => g[self.index].take().map(|g| g.reshape(shape.clone())),
        };
        let theta = tensor.inner();
        let matrix = D == 2;
        // Work in the transpose for matrices (see the type's note).
        let flip = |t: Tensor<A::InnerBackend, D>| if matrix { t.swap_dims(0, 1) } else { t };
        let c = self.config;
        let updated = match grad {
            None => theta,
            Some(g) => {
                let (theta, g) = (flip(theta), flip(g));
                let work = theta.shape();
                let prev = (c.momentum > 0.0).then(|| {
                    let old = std::mem::replace(
                        &mut self.buffers[self.index],
                        Buffer {
                            flat: Tensor::zeros([0], &g.device()),
                            transposed: None,
                        },
                    );
                    match (matrix, old.transposed) {
                        // A buffer in parameter order (fresh, or restored): transpose it once.
                        (true, None) => old.flat.reshape(shape.clone()).swap_dims(0, 1),
                        _ => old.flat.reshape(work.clone()),
                    }
                });
                let (theta, buf) = if A::InnerBackend::HOST_MEMORY
                    && matches!(theta.dtype(), DType::F32 | DType::F64)
                {
                    update_on_host(theta, g, prev, c, self.lr)
                } else {
                    update(theta, g, prev, c, self.lr)
                };
                if let Some(buf) = buf {
                    self.buffers[self.index] = Buffer {
                        flat: buf.reshape([work.num_elements()]),
                        transposed: matrix.then(|| [dims[0], dims[1]]),
                    };
                }
                flip(theta)
            }
        };
        self.index += 1;
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

/// The update with tensor operations, on any backend: the new θ and, with momentum, the new
/// buffer (from `prev`).
fn update<B: Kernels, const D: usize>(
    theta: Tensor<B, D>,
    mut g: Tensor<B, D>,
    prev: Option<Tensor<B, D>>,
    c: SgdConfig,
    lr: f64,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    if c.weight_decay > 0.0 {
        g = g + theta.clone().mul_scalar(c.weight_decay);
    }
    let (d, buf) = match prev {
        Some(prev) => {
            let buf = prev.mul_scalar(c.momentum) + g.clone();
            let d = if c.nesterov {
                g + buf.clone().mul_scalar(c.momentum)
            } else {
                buf.clone()
            };
            (d, Some(buf))
        }
        None => (g, None),
    };
    (theta - d.mul_scalar(lr), buf)
}

/// The same update in one pass over host memory ([`sgd_update`]), for backends whose tensors
/// live there (f32 or f64). θ, g and the buffer are taken without a copy when nothing else
/// holds them (burn-flex), and both forms give the same bits. The tensor form makes up to
/// seven passes, two with a fresh allocation, one thread each.
fn update_on_host<B: Kernels, const D: usize>(
    theta: Tensor<B, D>,
    g: Tensor<B, D>,
    prev: Option<Tensor<B, D>>,
    c: SgdConfig,
    lr: f64,
) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
    let (device, dtype) = (theta.device(), theta.dtype());
    let mut t = noisegeom_kernels::read(theta);
    let g = noisegeom_kernels::read(g);
    let mut b = prev.map(noisegeom_kernels::read);
    let step = SgdStep {
        lr,
        momentum: c.momentum,
        nesterov: c.nesterov,
        weight_decay: c.weight_decay,
    };
    fn slices<E: Scalar>(
        t: &mut TensorData,
        g: &TensorData,
        b: Option<&mut TensorData>,
        step: SgdStep,
    ) {
        let slice = "the update's operands have the parameter's dtype";
        let b = b.map(|b| b.as_mut_slice::<E>().expect(slice));
        sgd_update(
            t.as_mut_slice::<E>().expect(slice),
            g.as_slice::<E>().expect(slice),
            b,
            step,
        );
    }
    match dtype {
        DType::F64 => slices::<f64>(&mut t, &g, b.as_mut(), step),
        _ => slices::<f32>(&mut t, &g, b.as_mut(), step),
    }
    let back = |data: TensorData| Tensor::<B, D>::from_data(data, (&device, dtype));
    (back(t), b.map(back))
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
        let _graph = noisegeom_models::autodiff_lock();
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
                net = sgd.step(net, grads, lr);
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

    /// The fused host update and the tensor update give the same bits, in f32 (burn-flex)
    /// and f64 (burn-ndarray), for every combination of momentum, Nesterov and weight decay,
    /// from a fresh and from a used buffer. (The test above checks the host update, which
    /// the CPU backends take, against the rule written out.)
    #[test]
    fn the_host_update_gives_the_bits_of_the_tensor_update() {
        let _graph = noisegeom_models::autodiff_lock();
        fn check<B: Kernels>(device: &B::Device) {
            // 40 000 elements: more than one chunk of the parallel loop.
            let (r, c) = (200, 200);
            let n = r * c;
            let vals = |seed: usize| -> Vec<f64> {
                (0..n)
                    .map(|k| (((k * 7919 + seed * 104_729) % 2003) as f64 - 1001.0) / 997.0)
                    .collect()
            };
            let t = |seed: usize| {
                Tensor::<B, 2>::from_data(TensorData::new(vals(seed), [r, c]), device)
            };
            let bits = |x: Tensor<B, 2>| -> Vec<u64> {
                x.into_data().iter::<f64>().map(f64::to_bits).collect()
            };
            for momentum in [0.0, 0.9] {
                for nesterov in [false, true] {
                    for weight_decay in [0.0, 0.05] {
                        let cfg = SgdConfig {
                            momentum,
                            nesterov,
                            weight_decay,
                        };
                        for prev_seed in [None, Some(3)] {
                            let prev = || {
                                (momentum > 0.0).then(|| match prev_seed {
                                    Some(s) => t(s),
                                    None => Tensor::zeros([r, c], device),
                                })
                            };
                            let (a, abuf) = update(t(1), t(2), prev(), cfg, 0.37);
                            let (b, bbuf) = update_on_host(t(1), t(2), prev(), cfg, 0.37);
                            assert_eq!(bits(a), bits(b), "θ differs: {cfg:?}, {prev_seed:?}");
                            assert_eq!(
                                abuf.map(bits),
                                bbuf.map(bits),
                                "buffer differs: {cfg:?}, {prev_seed:?}"
                            );
                        }
                    }
                }
            }
        }
        check::<Flex>(&Default::default());
        check::<NdArray<f64>>(&Default::default());
    }

    /// A network rebuilt from the flat θ of a trained one (as a resumed run or a probe
    /// builds it) computes bitwise what the trained network computes, step after step.
    /// flex's gemm rounds x·Wᵀ differently with W's memory layout at these shapes, so this
    /// fails unless a built matrix has the layout SGD leaves it in.
    #[test]
    fn a_network_rebuilt_from_theta_computes_bitwise_what_the_trained_one_computes() {
        let _graph = noisegeom_models::autodiff_lock();
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
            net = sgd.step(net, grads, 0.05);
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
