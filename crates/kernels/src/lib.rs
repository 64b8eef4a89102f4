//! Host kernels for noisegeom, and the typed capability that says which backend runs them.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).
//!
//! - [`mod@gemm`]: matrix products on host memory through the `gemm` crate;
//! - [`conv`]: a convolution from im2col patches, forward and backward, on host memory;
//! - [`flex`]: autodiff ops of their own on `Autodiff<Flex>`, the trainer's CPU backend,
//!   built on the two;
//! - [`sgd`]: the SGD update in one pass over host memory;
//! - `device_conv` (feature `wgpu`): a convolution of its own on burn's wgpu backend, three
//!   cubecl kernels queued on burn's fusion stream;
//! - [`read`]: every read of a tensor into host memory goes through it, counted (on a GPU
//!   each read waits for the device: a host sync).
//!
//! [`Kernels`] is the dispatch point. Every backend the suite runs on implements it, and its
//! implementation says what that backend provides: models call [`Kernels::dense`] and
//! [`Kernels::conv`] with the [`Pass`] they are in, and the compiler picks the code. The
//! generic default is burn's own ops; wgpu runs those but for its convolution in first-order
//! passes.

pub mod conv;
#[cfg(feature = "wgpu")]
pub mod device_conv;
pub mod flex;
pub mod gemm;
pub mod sgd;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{BasicOps, Tensor, TensorData, TensorPrimitive};
use std::sync::atomic::{AtomicU64, Ordering};

pub use conv::ConvGeom;

static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// Reads a tensor into host memory and counts the read: on a GPU each one waits for the
/// device to finish the work queued before it (a host sync). The crates of the suite read
/// tensors only through this, so [`host_reads`] counts every sync they cause.
pub fn read<B: Backend, const D: usize, K: BasicOps<B>>(t: Tensor<B, D, K>) -> TensorData {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    t.into_data()
}

/// A one-element float tensor (a loss, a sum) read into host memory as f64, counted.
pub fn read_scalar<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    read(t).iter::<f64>().next().unwrap_or(f64::NAN)
}

/// How many reads [`read`] has made in this process so far.
pub fn host_reads() -> u64 {
    HOST_READS.load(Ordering::Relaxed)
}

/// What a forward pass will go through, which decides the ops its layers may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pass {
    /// burn's own ops, which survive any number of autodiff decorators and any tap.
    #[default]
    Generic,
    /// A pass differentiated at most once (the metrics' vector-Jacobian products, and the
    /// JVP that the Hessian product differentiates): the backend's first-order autodiff ops
    /// where it has them.
    FirstOrder,
    /// A training step: [`Pass::FirstOrder`], and on other host backends the convolution's
    /// weight gradient as one GEMM over host im2col patches.
    Train,
}

/// A backend's kernels: what it runs for the parametric layers, and where its tensors live.
///
/// The `autodiff_*` methods are the ops of `Autodiff<Self>`: a backend overrides them to give
/// its autodiff decorator ops of its own, and `Autodiff<Self>`'s [`Kernels::dense`] and
/// [`Kernels::conv`] call them. Under a second decorator the generic ops run.
pub trait Kernels: Backend {
    /// Whether the tensors live in host memory, so host-side work on them costs no device
    /// round trip.
    const HOST_MEMORY: bool = false;

    /// The version of the rounding of this backend's own kernels (a device backend's): bump
    /// it in any change that alters a number they compute, so that work done on this backend
    /// (a figure's finished jobs) is redone. 0 for the host backends, whose kernels the
    /// figures' engine version covers.
    const NUMERICS: u32 = 0;

    /// `x·Wᵀ + b`, `x: [n, in]`, `w: [out, in]`, `b: [out]`.
    fn dense(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Option<Tensor<Self, 1>>,
        pass: Pass,
    ) -> Tensor<Self, 2> {
        let _ = pass;
        generic_affine(x, w, b)
    }

    /// `conv2d(x, W) + b`, `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`, `b: [c_out]`.
    fn conv(
        x: Tensor<Self, 4>,
        w: Tensor<Self, 4>,
        b: Option<Tensor<Self, 1>>,
        geom: ConvGeom,
        pass: Pass,
    ) -> Tensor<Self, 4> {
        let _ = pass;
        generic_conv2d(x, w, b, geom)
    }

    /// [`Kernels::dense`] on `Autodiff<Self>`.
    fn autodiff_dense(
        x: Tensor<Autodiff<Self>, 2>,
        w: Tensor<Autodiff<Self>, 2>,
        b: Option<Tensor<Autodiff<Self>, 1>>,
        pass: Pass,
    ) -> Tensor<Autodiff<Self>, 2> {
        let _ = pass;
        generic_affine(x, w, b)
    }

    /// [`Kernels::conv`] on `Autodiff<Self>`.
    fn autodiff_conv(
        x: Tensor<Autodiff<Self>, 4>,
        w: Tensor<Autodiff<Self>, 4>,
        b: Option<Tensor<Autodiff<Self>, 1>>,
        geom: ConvGeom,
        pass: Pass,
    ) -> Tensor<Autodiff<Self>, 4> {
        let _ = pass;
        generic_conv2d(x, w, b, geom)
    }
}

/// An autodiff backend whose inner backend has [`Kernels`] too: what training and the
/// metrics run on.
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}
impl<B> AutodiffKernels for B where B: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

/// `x·Wᵀ (+ b)` with burn's ops: a matmul, a transpose and a broadcast add.
pub fn generic_affine<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let z = x.matmul(w.transpose());
    match b {
        Some(b) => z + b.unsqueeze::<2>(),
        None => z,
    }
}

/// burn's convolution.
pub fn generic_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    b: Option<Tensor<B, 1>>,
    g: ConvGeom,
) -> Tensor<B, 4> {
    conv2d(
        x,
        w,
        b,
        ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], 1),
    )
}

impl<B: Kernels> Kernels for Autodiff<B> {
    const HOST_MEMORY: bool = B::HOST_MEMORY;
    const NUMERICS: u32 = B::NUMERICS;

    fn dense(
        x: Tensor<Self, 2>,
        w: Tensor<Self, 2>,
        b: Option<Tensor<Self, 1>>,
        pass: Pass,
    ) -> Tensor<Self, 2> {
        B::autodiff_dense(x, w, b, pass)
    }

    fn conv(
        x: Tensor<Self, 4>,
        w: Tensor<Self, 4>,
        b: Option<Tensor<Self, 1>>,
        geom: ConvGeom,
        pass: Pass,
    ) -> Tensor<Self, 4> {
        B::autodiff_conv(x, w, b, geom, pass)
    }
}

/// burn-flex: its autodiff decorator runs [`flex`]'s ops in every pass but a generic one.
impl Kernels for Flex {
    const HOST_MEMORY: bool = true;

    fn autodiff_dense(
        x: Tensor<Autodiff<Self>, 2>,
        w: Tensor<Autodiff<Self>, 2>,
        b: Option<Tensor<Autodiff<Self>, 1>>,
        pass: Pass,
    ) -> Tensor<Autodiff<Self>, 2> {
        match pass {
            Pass::Generic => generic_affine(x, w, b),
            Pass::FirstOrder | Pass::Train => flex::affine(x, w, b),
        }
    }

    fn autodiff_conv(
        x: Tensor<Autodiff<Self>, 4>,
        w: Tensor<Autodiff<Self>, 4>,
        b: Option<Tensor<Autodiff<Self>, 1>>,
        geom: ConvGeom,
        pass: Pass,
    ) -> Tensor<Autodiff<Self>, 4> {
        match pass {
            Pass::Generic => generic_conv2d(x, w, b, geom),
            Pass::FirstOrder | Pass::Train => flex::conv2d(x, w, b, geom),
        }
    }
}

/// burn-ndarray (f32 and f64): in a training step, the convolution's weight gradient is one
/// GEMM over host patches ([`conv::conv2d_gemm_weight_grad`]).
macro_rules! ndarray_kernels {
    ($e:ty) => {
        impl Kernels for NdArray<$e> {
            const HOST_MEMORY: bool = true;

            fn autodiff_conv(
                x: Tensor<Autodiff<Self>, 4>,
                w: Tensor<Autodiff<Self>, 4>,
                b: Option<Tensor<Autodiff<Self>, 1>>,
                geom: ConvGeom,
                pass: Pass,
            ) -> Tensor<Autodiff<Self>, 4> {
                if pass != Pass::Train || !w.is_require_grad() {
                    return generic_conv2d(x, w, b, geom);
                }
                // An input with no autodiff node is a constant: its gradient is never formed.
                let x = x.into_primitive().tensor();
                let constant = x.node.requirement.is_none();
                let x = Tensor::from_primitive(TensorPrimitive::Float(x));
                conv::conv2d_gemm_weight_grad(x, w, b, geom, constant)
            }
        }
    };
}
ndarray_kernels!(f32);
ndarray_kernels!(f64);

/// wgpu: burn's ops (cubecl kernels), but for the convolution, which runs [`device_conv`]'s
/// kernels outside autodiff (in any pass: no decorator wraps it) and under one autodiff
/// decorator.
#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {
    /// 1: the convolution by `device_conv`.
    const NUMERICS: u32 = 1;

    fn conv(
        x: Tensor<Self, 4>,
        w: Tensor<Self, 4>,
        b: Option<Tensor<Self, 1>>,
        geom: ConvGeom,
        _pass: Pass,
    ) -> Tensor<Self, 4> {
        device_conv::conv2d_forward(x, w, b, geom)
    }

    fn autodiff_conv(
        x: Tensor<Autodiff<Self>, 4>,
        w: Tensor<Autodiff<Self>, 4>,
        b: Option<Tensor<Autodiff<Self>, 1>>,
        geom: ConvGeom,
        pass: Pass,
    ) -> Tensor<Autodiff<Self>, 4> {
        match pass {
            Pass::Generic => generic_conv2d(x, w, b, geom),
            Pass::FirstOrder | Pass::Train => device_conv::conv2d(x, w, b, geom),
        }
    }
}

#[cfg(test)]
mod tests;
