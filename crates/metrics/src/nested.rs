//! Nested autodiff, `Autodiff<Autodiff<B>>`: the route to exact second-order products.
//!
//! A network is built on the doubly nested backend from a host θ. A backward pass in the
//! outer graph returns gradients that are themselves tensors of the inner autodiff backend,
//! recorded in the inner graph; a second backward differentiates them again:
//!
//! - Hv: the inner copies of θ are leaves, g = ∂L/∂θ (outer), then ∂⟨g, v⟩/∂θ (inner) = Hv.
//! - Jv (double-VJP trick): with a dummy cotangent u (an inner leaf), g(u) = Jᵀu is linear in
//!   u, and ∂⟨Jᵀu, v⟩/∂u = Jv.

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use noisegeom_kernels::{AutodiffKernels, Kernels};
use noisegeom_models::{ParamInit, ParamSource, in_blocks, param_tensor};
use rayon::prelude::*;

/// Evaluates `body` with `s` bound to the values of the `TensorData` `data` as a slice of
/// their own type when that is f32 or f64 (read in place), else of f64 converted (burn's
/// generic `iter` goes element by element through a boxed iterator). The body is compiled
/// once per element type; both convert `Into<f64>`.
macro_rules! with_slice {
    ($data:expr, $s:ident => $body:expr) => {{
        let data = &$data;
        if let Ok($s) = data.as_slice::<f32>() {
            $body
        } else if let Ok($s) = data.as_slice::<f64>() {
            $body
        } else {
            let owned: Vec<f64> = data.iter::<f64>().collect();
            let $s = owned.as_slice();
            $body
        }
    }};
}
pub(crate) use with_slice;

/// One level of autodiff over `B`.
pub type Ad<B> = Autodiff<B>;
/// Two levels of autodiff over `B`.
pub type Ad2<B> = Autodiff<Autodiff<B>>;

/// Builds a network on `Ad2<B>` from host values. With `inner_grad`, each parameter's inner
/// (`Ad<B>`) copy is a leaf that requires grad, so Hessian products can reach it.
pub struct NestedSource<'a, B: Kernels> {
    pub device: &'a B::Device,
    pub values: &'a [f64],
    pub offset: usize,
    pub inner_grad: bool,
}

impl<B: Kernels> ParamSource<Ad2<B>> for NestedSource<'_, B> {
    fn param<const D: usize>(
        &mut self,
        shape: [usize; D],
        _: ParamInit,
    ) -> Param<Tensor<Ad2<B>, D>> {
        let len: usize = shape.iter().product();
        let v = self.values[self.offset..self.offset + len].to_vec();
        self.offset += len;
        let base = param_tensor::<B, _, D>(v, shape, self.device);
        let inner = Tensor::<Ad<B>, D>::from_inner(base);
        let inner = if self.inner_grad {
            inner.require_grad()
        } else {
            inner
        };
        Param::from_tensor(Tensor::from_inner(inner))
    }
}

/// The gradient of every parameter of an autodiff module, flattened and concatenated in
/// flat-θ order; zeros for a parameter the loss does not reach.
pub fn flat_grad<A: AutodiffKernels, M: Module<A>>(
    module: &M,
    grads: &A::Gradients,
) -> Tensor<A::InnerBackend, 1> {
    struct Collect<'g, A: AutodiffKernels> {
        grads: &'g A::Gradients,
        out: Vec<Tensor<A::InnerBackend, 1>>,
    }
    impl<A: AutodiffKernels> ModuleVisitor<A> for Collect<'_, A> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            let t = param.val();
            let g = match t.grad(self.grads) {
                Some(g) => g.flatten::<1>(0, D - 1),
                None => Tensor::zeros([t.shape().num_elements()], &t.device()),
            };
            self.out.push(g);
        }
    }
    let mut c = Collect::<A> {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    Tensor::cat(c.out, 0)
}

/// acc += the gradient of every parameter of an autodiff module, in flat-θ order. On a
/// host backend it is read back tensor by tensor (no concatenated copy): a matrix's gradient
/// is read through its transpose (for x·Wᵀ the backward leaves it as a transposed view,
/// whose transpose is contiguous), and the transposition is done on the host, in
/// cache-sized blocks, as it is added. On a device backend, where each read is a host sync,
/// the gradients are concatenated on the device and read once.
pub fn add_grad_to_host<A: AutodiffKernels, M: Module<A>>(
    acc: &mut [f64],
    module: &M,
    grads: &A::Gradients,
) {
    if !A::HOST_MEMORY {
        add_data(acc, noisegeom_kernels::read(flat_grad(module, grads)), None);
        return;
    }
    struct Add<'a, A: AutodiffKernels> {
        grads: &'a A::Gradients,
        acc: &'a mut [f64],
        offset: usize,
    }
    impl<A: AutodiffKernels> ModuleVisitor<A> for Add<'_, A> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
            let t = param.val();
            let n = t.shape().num_elements();
            let dst = &mut self.acc[self.offset..self.offset + n];
            self.offset += n;
            let Some(g) = t.grad(self.grads) else { return };
            let dims: Vec<usize> = g.dims().to_vec();
            if D == 2 {
                add_data(
                    dst,
                    noisegeom_kernels::read(g.swap_dims(0, 1)),
                    Some((dims[0], dims[1])),
                );
            } else {
                add_data(dst, noisegeom_kernels::read(g), None);
            }
        }
    }
    module.visit(&mut Add::<A> {
        grads,
        acc,
        offset: 0,
    });
}

/// dst += src, or dst (an r×c matrix) += the transpose of src (c×r) when `transposed`.
fn add_data(dst: &mut [f64], src: TensorData, transposed: Option<(usize, usize)>) {
    const BAND: usize = 64;
    fn add<E: Copy + Into<f64> + Sync>(
        dst: &mut [f64],
        src: &[E],
        transposed: Option<(usize, usize)>,
    ) {
        match transposed {
            None => dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v.into()),
            // Bands of rows in parallel: this read-back is host work between two device
            // passes, with the other core idle.
            Some((r, c)) => dst
                .par_chunks_mut(BAND * c)
                .enumerate()
                .for_each(|(b, band)| {
                    let i0 = b * BAND;
                    in_blocks(band.len() / c, c, |i, j| {
                        band[i * c + j] += src[j * r + i0 + i].into()
                    })
                }),
        }
    }
    with_slice!(src, s => add(dst, s, transposed))
}

/// The gradient with respect to the inner leaves of an `Ad2<B>` module (built with
/// `inner_grad`), flattened in flat-θ order.
pub fn flat_inner_grad<B: Kernels, M: Module<Ad2<B>>>(
    module: &M,
    grads: &<Ad<B> as AutodiffBackend>::Gradients,
) -> Tensor<B, 1> {
    struct Collect<'g, B: Kernels> {
        grads: &'g <Ad<B> as AutodiffBackend>::Gradients,
        out: Vec<Tensor<B, 1>>,
    }
    impl<B: Kernels> ModuleVisitor<Ad2<B>> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad2<B>, D>>) {
            let leaf = param.val().inner();
            let g = match leaf.grad(self.grads) {
                Some(g) => g.flatten::<1>(0, D - 1),
                None => Tensor::zeros([leaf.shape().num_elements()], &leaf.device()),
            };
            self.out.push(g);
        }
    }
    let mut c = Collect::<B> {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    Tensor::cat(c.out, 0)
}

/// Host values to a device vector.
pub fn to_device<B: Kernels>(v: &[f64], device: &B::Device) -> Tensor<B, 1> {
    to_device2(v, 1, v.len(), device).reshape([v.len()])
}

/// Host values to a device matrix, converted to the backend's float type on the host (one
/// tight loop, rather than burn's element-by-element conversion).
pub fn to_device2<B: Kernels>(
    v: &[f64],
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let host: Vec<B::FloatElem> = v.iter().map(|x| x.elem()).collect();
    Tensor::from_data(TensorData::new(host, [rows, cols]), device)
}

/// A device tensor back to host f64, row-major. f32 and f64 data are read as slices (burn's
/// generic `iter` goes through a boxed iterator, element by element).
pub fn to_host<B: Kernels, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    with_slice!(noisegeom_kernels::read(t), s => s.iter().map(|&x| widen(x)).collect())
}

/// f32 or f64 to f64 (a generic function, so that the f64 instance is no lint's concern).
fn widen<E: Into<f64>>(x: E) -> f64 {
    x.into()
}
