//! Parametric layers written from primitives that survive nested autodiff
//! (`Autodiff<Autodiff<B>>`): `x·Wᵀ + b` instead of `nn::Linear`, functional conv2d,
//! and no pooling ops (pooling is reshape + mean in [`crate::Net`]).
//!
//! Each layer computes through its backend's [`Kernels`], which pick host kernels or burn's
//! ops by the [`Pass`], and reports its input and pre-activation output to a [`Tap`], so the
//! geometry engine can insert zero "probe" leaves and read per-sample backprop signals.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use noisegeom_kernels::{ConvGeom, Kernels, Pass};

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
    /// `z = input ⊙ γ + β` per channel, `input: [n, channels, positions]` (the trained
    /// affine part of a BatchNorm).
    fn norm(&mut self, input: &Tensor<B, 3>, z: Tensor<B, 3>) -> Tensor<B, 3> {
        let _ = input;
        z
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

impl<B: Kernels> Dense<B> {
    /// `x · Wᵀ`, the linear part (no bias), in `pass`.
    pub fn linear(&self, x: Tensor<B, 2>, pass: Pass) -> Tensor<B, 2> {
        B::dense(x, self.weight.val(), None, pass)
    }

    /// `[n, in] → [n, out]`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T, pass: Pass) -> Tensor<B, 2> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let z = B::dense(x.clone(), self.weight.val(), bias, pass);
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
}

impl<B: Kernels> Conv<B> {
    /// `conv2d(x, W)`, the linear part (no bias), in `pass`.
    pub fn linear(&self, x: Tensor<B, 4>, pass: Pass) -> Tensor<B, 4> {
        B::conv(x, self.weight.val(), None, self.geom(), pass)
    }

    /// `[n, c_in, h, w] → [n, c_out, h', w']`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 4>, tap: &mut T, pass: Pass) -> Tensor<B, 4> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let z = B::conv(x.clone(), self.weight.val(), bias, self.geom(), pass);
        tap.conv(&x, z, self.geom(), self.bias.is_some())
    }
}

/// Elementwise scaling by a learned vector, the building block of the diagonal net.
#[derive(Module, Debug)]
pub struct Hadamard<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
}

impl<B: Backend> Hadamard<B> {
    /// `x ⊙ w` (every pass runs burn's ops).
    pub fn linear(&self, x: Tensor<B, 2>, _pass: Pass) -> Tensor<B, 2> {
        x * self.weight.val().unsqueeze::<2>()
    }

    /// `[n, d] → [n, d]`.
    pub fn forward<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T, pass: Pass) -> Tensor<B, 2> {
        let z = self.linear(x.clone(), pass);
        tap.hadamard(&x, z)
    }
}

/// The trained affine part of an eval-mode BatchNorm: γ ⊙ x̂ + β per channel, where x̂ is
/// already normalised by the running statistics (a fixed map of the architecture).
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Norm<B> {
    /// `x ⊙ γ` per channel (every pass runs burn's ops).
    pub fn linear<const D: usize>(&self, x: Tensor<B, D>, _pass: Pass) -> Tensor<B, D> {
        x * per_channel::<B, D>(self.weight.val())
    }

    /// `[n, channels, …] → [n, channels, …]`.
    pub fn forward<T: Tap<B>, const D: usize>(
        &self,
        x: Tensor<B, D>,
        tap: &mut T,
        _pass: Pass,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let x3: Tensor<B, 3> = x.reshape([dims[0], dims[1], dims[2..].iter().product()]);
        let z = x3.clone() * per_channel::<B, 3>(self.weight.val())
            + per_channel::<B, 3>(self.bias.val());
        tap.norm(&x3, z).reshape(dims)
    }
}

/// A per-channel vector `[c]` shaped to broadcast over `[n, c, …]`.
pub fn per_channel<B: Backend, const D: usize>(v: Tensor<B, 1>) -> Tensor<B, D> {
    let mut shape = [1usize; D];
    shape[1] = v.dims()[0];
    v.reshape(shape)
}

/// One parametric layer of a [`crate::Net`].
#[derive(Module, Debug)]
pub enum Layer<B: Backend> {
    Dense(Dense<B>),
    Conv(Conv<B>),
    Hadamard(Hadamard<B>),
    Norm(Norm<B>),
}
