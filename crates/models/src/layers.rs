//! Parametric layers written from primitives that survive nested autodiff
//! (`Autodiff<Autodiff<B>>`): `x.matmul(wᵀ) + b` instead of `nn::Linear`, functional conv2d,
//! and no pooling ops (pooling is reshape + mean in [`crate::Net`]).
//!
//! Every layer reports its input and pre-activation output to a [`Tap`], so the geometry
//! engine can insert zero "probe" leaves and read per-sample backprop signals.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{ElementConversion, Tensor, TensorData};

/// Geometry of a square 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// Which implementation the parametric layers use in a training pass (a first-order
/// backward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainOps {
    /// burn's own ops: `x.matmul(Wᵀ) + b`, and burn's conv2d, whose weight gradient is a
    /// convolution with the output gradient as its kernel.
    #[default]
    Backend,
    /// Host-memory kernels, for CPU backends (no device round trip):
    /// - on `Autodiff<Flex>`, the trainer's CPU backend, autodiff ops of their own for the
    ///   affine layer and the convolution ([`crate::flex_ops`]): forward and backward as GEMMs
    ///   into fresh buffers, the convolution's im2col patches built once in the forward and
    ///   kept for the backward. burn-flex's conv backward (a transposed convolution for ∂x, a
    ///   convolution with the output gradient as its kernel for ∂W) took most of the CNN's
    ///   step;
    /// - on other host backends (burn-ndarray), the convolution's weight gradient as one
    ///   batched GEMM over host im2col patches, dW = Σ_i ΔZ_i U_iᵀ. Where the layer's input
    ///   needs no gradient (the first layer) the forward is the same GEMM; otherwise the
    ///   forward and the input gradient stay the backend's, and a term equal to zero,
    ///   M − stop(M) with M = W·U, carries the weight gradient.
    Host,
}

impl TrainOps {
    /// [`TrainOps::Host`] on the CPU backends (burn-flex, burn-ndarray, whose
    /// tensors live on the host), [`TrainOps::Backend`] elsewhere (a GPU would pay a
    /// device round trip for the patches).
    pub fn for_device<B: Backend>(device: &B::Device) -> Self {
        if on_host::<B>(device) {
            TrainOps::Host
        } else {
            TrainOps::Backend
        }
    }

    /// [`TrainOps::Host`] on `Autodiff<Flex>`, whose host ops ([`crate::flex_ops`]) the
    /// layers then use; [`TrainOps::Backend`] on every other backend. For the first-order
    /// passes outside training (the metrics' VJP, and the JVP that Hv differentiates once),
    /// which keep the other backends' paths as they are.
    pub fn flex_ops<B: Backend>() -> Self {
        if crate::flex_ops::is_autodiff_flex::<B>() {
            TrainOps::Host
        } else {
            TrainOps::Backend
        }
    }
}

/// Whether `B`'s tensors live in host memory (burn-flex, burn-ndarray, under any number of
/// autodiff decorators), so host-side work on them costs no device round trip.
pub fn on_host<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    let mut inner = name.as_str();
    while let Some(rest) = inner.strip_prefix("autodiff<") {
        inner = rest.strip_suffix('>').unwrap_or(rest);
    }
    matches!(inner, "flex" | "ndarray")
}

/// Hook called once per parametric layer, in parameter order, during a forward pass.
///
/// Each method receives the layer input and its output `z` (before any activation) and
/// returns the tensor that continues the forward pass. The default returns `z` unchanged.
pub trait Tap<B: Backend> {
    /// `z = input · Wᵀ (+ b)`, `input: [n, in]`, `z: [n, out]`.
    fn dense(&mut self, input: &Tensor<B, 2>, z: Tensor<B, 2>, has_bias: bool) -> Tensor<B, 2> {
        let _ = (input, has_bias);
        z
    }
    /// `z = conv2d(input, W) (+ b)`, `input: [n, c_in, h, w]`, `z: [n, c_out, h', w']`.
    fn conv(
        &mut self,
        input: &Tensor<B, 4>,
        z: Tensor<B, 4>,
        geom: ConvGeom,
        has_bias: bool,
    ) -> Tensor<B, 4> {
        let _ = (input, geom, has_bias);
        z
    }
    /// `z = input ⊙ w`, `input: [n, d]`, `w: [d]`.
    fn hadamard(&mut self, input: &Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let _ = input;
        z
    }
    /// Which implementation the layers use in this pass.
    fn train_ops(&self) -> TrainOps {
        TrainOps::Backend
    }
}

/// A training pass: changes nothing but which implementation the layers use.
impl<B: Backend> Tap<B> for TrainOps {
    fn train_ops(&self) -> TrainOps {
        *self
    }
}

/// The tap of an ordinary forward pass: changes nothing.
pub struct NoTap;
impl<B: Backend> Tap<B> for NoTap {}

/// Affine layer, weight in PyTorch layout `[out, in]`.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Dense<B> {
    /// `x · Wᵀ`, the linear part (no bias).
    pub fn linear(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val().transpose())
    }

    /// [`Self::linear`] on the host op under [`TrainOps::Host`] on `Autodiff<Flex>`.
    pub fn linear_with(&self, x: Tensor<B, 2>, ops: TrainOps) -> Tensor<B, 2> {
        if ops == TrainOps::Host && crate::flex_ops::is_autodiff_flex::<B>() {
            crate::flex_ops::affine(x, self.weight.val(), None)
        } else {
            self.linear(x)
        }
    }

    /// `[n, in] → [n, out]`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T) -> Tensor<B, 2> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let z = if tap.train_ops() == TrainOps::Host && crate::flex_ops::is_autodiff_flex::<B>() {
            crate::flex_ops::affine(x.clone(), self.weight.val(), bias)
        } else {
            let z = self.linear(x.clone());
            match bias {
                Some(b) => z + b.unsqueeze::<2>(),
                None => z,
            }
        };
        tap.dense(&x, z, self.bias.is_some())
    }
}

/// Square 2-D convolution, weight `[out, in, k, k]` (PyTorch layout).
#[derive(Module, Debug)]
pub struct Conv<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub stride: usize,
    #[module(skip)]
    pub padding: usize,
}

impl<B: Backend> Conv<B> {
    pub fn geom(&self) -> ConvGeom {
        ConvGeom {
            kernel: self.weight.dims()[2],
            stride: self.stride,
            padding: self.padding,
        }
    }

    fn conv(&self, x: Tensor<B, 4>, bias: bool) -> Tensor<B, 4> {
        let g = self.geom();
        conv2d(
            x,
            self.weight.val(),
            self.bias.as_ref().filter(|_| bias).map(|b| b.val()),
            ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], 1),
        )
    }

    /// `conv2d(x, W)`, the linear part (no bias).
    pub fn linear(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv(x, false)
    }

    /// [`Self::linear`] on the host op under [`TrainOps::Host`] on `Autodiff<Flex>`.
    pub fn linear_with(&self, x: Tensor<B, 4>, ops: TrainOps) -> Tensor<B, 4> {
        if ops == TrainOps::Host && crate::flex_ops::is_autodiff_flex::<B>() {
            crate::flex_ops::conv2d(x, self.weight.val(), None, self.geom())
        } else {
            self.linear(x)
        }
    }

    /// `[n, c_in, h, w] → [n, c_out, h', w']`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 4>, tap: &mut T) -> Tensor<B, 4> {
        self.forward_at(x, tap, false)
    }

    /// [`Self::forward`], told whether `x` is the network's input (a constant, whose
    /// gradient is never formed): [`TrainOps::Host`] then forms the output by the
    /// GEMM too.
    pub fn forward_at<T: Tap<B>>(
        &self,
        x: Tensor<B, 4>,
        tap: &mut T,
        x_is_input: bool,
    ) -> Tensor<B, 4> {
        let z = match tap.train_ops() {
            TrainOps::Host if crate::flex_ops::is_autodiff_flex::<B>() => crate::flex_ops::conv2d(
                x.clone(),
                self.weight.val(),
                self.bias.as_ref().map(|b| b.val()),
                self.geom(),
            ),
            TrainOps::Host if self.weight.val().is_require_grad() => {
                self.conv_gemm_weight_grad(x.clone(), x_is_input)
            }
            _ => self.conv(x.clone(), true),
        };
        tap.conv(&x, z, self.geom(), self.bias.is_some())
    }

    /// `conv2d(x, W) + b` with the weight gradient from a GEMM over host im2col patches
    /// ([`TrainOps::Host`]).
    fn conv_gemm_weight_grad(&self, x: Tensor<B, 4>, x_is_input: bool) -> Tensor<B, 4> {
        let g = self.geom();
        let w = self.weight.val();
        let [cout, cin, k, _] = w.dims();
        let [n, _, h, wd] = x.dims();
        let (ho, wo) = (g.out_len(h), g.out_len(wd));
        let wmat = w.clone().reshape([cout, cin * k * k]);
        if x_is_input {
            // The output is the GEMM, the bias folded in as a last patch row of ones (a
            // broadcast add of the bias would take burn-flex's strided path).
            let bias = self.bias.as_ref().map(|b| b.val().reshape([cout, 1]));
            let u = im2col(x, g, bias.is_some()); // [n, cin·k² (+1), ho·wo], a constant
            let wmat = match bias {
                Some(b) => Tensor::cat(vec![wmat, b], 1),
                None => wmat,
            };
            let kk = wmat.dims()[1];
            return wmat
                .reshape([1, cout, kk])
                .matmul(u)
                .reshape([n, cout, ho, wo]);
        }
        let u = im2col(x.clone(), g, false);
        let m = wmat
            .reshape([1, cout, cin * k * k])
            .matmul(u)
            .reshape([n, cout, ho, wo]);
        // `detach` alone would keep W a leaf that requires grad (burn re-marks it), and the
        // backend would still form its weight gradient.
        let z = conv2d(
            x,
            w.detach().set_require_grad(false),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], 1),
        );
        // m − stop(m) is exactly zero (m − m for finite m) and its gradient with respect to W
        // is the GEMM's. stop(m) is a copy (`mul_scalar(1)`) so that m's buffer is unshared:
        // burn-flex subtracts in place then, and otherwise takes its slow strided path.
        let stop = m.clone().detach().set_require_grad(false).mul_scalar(1.0);
        z + (m - stop)
    }
}

impl ConvGeom {
    /// The output side for an input side `len`.
    pub fn out_len(&self, len: usize) -> usize {
        (len + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// The im2col patches of `x: [n, c, h, w]` as a constant `[n, c·k² (+1), h'·w']` (row
/// `(ci·k + ky)·k + kx`, matching a `[out, in, k, k]` weight flattened, and a last row of
/// ones when `ones` is set), built on the host, samples in parallel.
pub fn im2col<B: Backend>(x: Tensor<B, 4>, g: ConvGeom, ones: bool) -> Tensor<B, 3> {
    let dims = x.dims();
    let device = x.device();
    let (ho, wo) = (g.out_len(dims[2]), g.out_len(dims[3]));
    let data = x.detach().into_data();
    // Read in place: the activations are not copied before the patches are built.
    let values = data
        .as_slice::<B::FloatElem>()
        .expect("a float tensor holds the backend's float type");
    let u = crate::conv_host::patches(values, dims, g, ones, [0.0.elem(), 1.0.elem()]);
    let shape = [
        dims[0],
        dims[1] * g.kernel * g.kernel + usize::from(ones),
        ho * wo,
    ];
    Tensor::from_data(TensorData::new(u, shape), &device)
}

/// Elementwise scaling by a learned vector, the building block of the diagonal net.
#[derive(Module, Debug)]
pub struct Hadamard<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
}

impl<B: Backend> Hadamard<B> {
    /// `x ⊙ w`.
    pub fn linear(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x * self.weight.val().unsqueeze::<2>()
    }

    /// [`Self::linear`] (no host op).
    pub fn linear_with(&self, x: Tensor<B, 2>, _ops: TrainOps) -> Tensor<B, 2> {
        self.linear(x)
    }

    /// `[n, d] → [n, d]`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T) -> Tensor<B, 2> {
        let z = self.linear(x.clone());
        tap.hadamard(&x, z)
    }
}

/// One parametric layer of a [`crate::Net`].
#[derive(Module, Debug)]
pub enum Layer<B: Backend> {
    Dense(Dense<B>),
    Conv(Conv<B>),
    Hadamard(Hadamard<B>),
}
