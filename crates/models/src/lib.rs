//! Models for noisegeom, as burn modules generic over the backend.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).
//!
//! Every model is a [`Net`]: a sequence of [`Stage`]s (affine, conv, Hadamard, activation,
//! reshape) whose parametric layers are written from primitives that survive nested autodiff,
//! `Autodiff<Autodiff<B>>`, which the geometry engine uses for exact second-order products.
//! [`ModelConfig`] is the typed, hand-editable description; [`ModelConfig::arch`] turns it
//! into an [`Arch`], and [`Net::build`] into a module with parameters from a
//! [`ParamSource`] (a seeded initialiser, or a flat vector θ).

mod config;
mod device_set;
mod graph_lock;
mod jvp;
pub mod layers;
mod net;
pub mod params;
mod sequential;
mod state;

pub use config::{Head, ModelConfig};
pub use device_set::{DeviceSet, mse};
pub use graph_lock::{AutodiffGuard, autodiff_lock};
pub use layers::{Layer, NoTap, Tap};
pub use net::{Affine, Arch, Net, Stage};
pub use noisegeom_kernels::{AutodiffKernels, ConvGeom, Kernels, Pass};
pub use params::{
    FlatSource, InitScheme, ParamInit, ParamSource, RandomInit, Role, flatten, in_blocks,
    param_tensor, transpose,
};
pub use sequential::LayerSpec;
pub use state::{NamedTensor, StateEntry};

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// Elementwise nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Identity,
    Relu,
    Tanh,
    /// σ(z) = tanh(z) + 0.1 z: smooth, with σ' ≥ 0.1 everywhere (docs/definitions.md §13).
    Smooth,
    /// σ(z) = z·Φ(z), Φ the standard normal CDF (exact GELU, `torch.nn.GELU()`).
    Gelu,
}

impl Activation {
    pub fn apply<B: Backend, const D: usize>(self, z: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => z,
            Activation::Relu => relu(z),
            Activation::Tanh => tanh(z),
            Activation::Smooth => tanh(z.clone()) + z.mul_scalar(0.1),
            Activation::Gelu => normal_cdf(z.clone()) * z,
        }
    }

    /// σ'(z), elementwise. ReLU's σ'(0) is 0, as in its reverse-mode rule.
    pub fn slope<B: Backend, const D: usize>(self, z: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => z.ones_like(),
            Activation::Relu => z.greater_elem(0.0).float(),
            Activation::Tanh => tanh_slope(tanh(z), 0.0),
            Activation::Smooth => tanh_slope(tanh(z), 0.1),
            Activation::Gelu => gelu_slope(z),
        }
    }

    /// Forward mode: σ(z) and σ'(z) ⊙ dz for each tangent dz (`None` is a zero tangent),
    /// σ'(z) formed once. ReLU's σ'(0) is 0, as in its reverse-mode rule.
    pub fn apply_jvp<B: Backend, const D: usize>(
        self,
        z: Tensor<B, D>,
        dz: Vec<Option<Tensor<B, D>>>,
    ) -> (Tensor<B, D>, Vec<Option<Tensor<B, D>>>) {
        if dz.iter().all(Option::is_none) {
            return (self.apply(z), dz);
        }
        let each = |f: &dyn Fn(Tensor<B, D>) -> Tensor<B, D>| -> Vec<Option<Tensor<B, D>>> {
            dz.into_iter().map(|d| d.map(f)).collect()
        };
        match self {
            Activation::Identity => (z, each(&|d| d)),
            Activation::Relu => {
                let off = z.clone().lower_equal_elem(0.0);
                let dz = each(&|d| d.mask_fill(off.clone(), 0.0));
                (relu(z), dz)
            }
            Activation::Tanh => {
                let t = tanh(z);
                let slope = tanh_slope(t.clone(), 0.0);
                (t, each(&|d| d * slope.clone()))
            }
            Activation::Smooth => {
                let t = tanh(z.clone());
                let slope = tanh_slope(t.clone(), 0.1);
                (t + z.mul_scalar(0.1), each(&|d| d * slope.clone()))
            }
            Activation::Gelu => {
                let slope = gelu_slope(z.clone());
                (self.apply(z), each(&|d| d * slope.clone()))
            }
        }
    }
}

/// Φ(z) = (1 + erf(z/√2))/2, written from ops that autodiff differentiates again.
fn normal_cdf<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    z.mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5)
}

/// GELU's slope Φ(z) + z·φ(z), φ(z) = exp(−z²/2)/√(2π).
fn gelu_slope<B: Backend, const D: usize>(z: Tensor<B, D>) -> Tensor<B, D> {
    let density = z
        .clone()
        .powi_scalar(2)
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2);
    normal_cdf(z.clone()) + z * density
}

/// 1 − t² + `linear` from t = tanh(z): the slope of tanh(z) + `linear`·z.
fn tanh_slope<B: Backend, const D: usize>(t: Tensor<B, D>, linear: f64) -> Tensor<B, D> {
    t.powi_scalar(2).neg().add_scalar(1.0 + linear)
}

/// Errors in building a model. One line each, saying what to change.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model architecture, stage {stage}: {problem}")]
    Arch { stage: usize, problem: String },
    #[error("model `{kind}` {problem}")]
    Config { kind: &'static str, problem: String },
    #[error("weights: {0}")]
    Weights(String),
    #[error(
        "the flat parameter vector has {actual} entries but the model has {expected} parameters; it belongs to a different model"
    )]
    FlatLength { expected: usize, actual: usize },
}

#[cfg(test)]
mod tests;
