//! Models for noisegeom, as burn modules generic over the backend.
//!
//! Every model is a [`Net`]: a sequence of [`Stage`]s (affine, conv, Hadamard, activation,
//! reshape) whose parametric layers are written from primitives that survive nested autodiff,
//! `Autodiff<Autodiff<B>>`, which the geometry engine uses for exact second-order products.
//! [`ModelConfig`] is the typed, hand-editable description; [`ModelConfig::arch`] turns it
//! into an [`Arch`], and [`Net::build`] into a module with parameters from a
//! [`ParamSource`] (a seeded initialiser, or a flat vector θ).

mod config;
mod device_set;
pub mod layers;
mod net;
pub mod params;

pub use config::{Head, ModelConfig};
pub use device_set::{DeviceSet, mse};
pub use layers::{ConvGeom, Layer, NoTap, Tap};
pub use net::{Arch, Net, Stage};
pub use params::{FlatSource, InitScheme, ParamInit, ParamSource, RandomInit, Role, flatten};

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
    /// σ(z) = tanh(z) + 0.1 z: smooth, with σ' ≥ 0.1 everywhere (SPEC §5).
    Smooth,
}

impl Activation {
    pub fn apply<B: Backend, const D: usize>(self, z: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Identity => z,
            Activation::Relu => relu(z),
            Activation::Tanh => tanh(z),
            Activation::Smooth => tanh(z.clone()) + z.mul_scalar(0.1),
        }
    }
}

/// Errors in building a model. One line each, saying what to change.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model architecture, stage {stage}: {problem}")]
    Arch { stage: usize, problem: String },
    #[error("model `{kind}` {problem}")]
    Config { kind: &'static str, problem: String },
    #[error(
        "the flat parameter vector has {actual} entries but the model has {expected} parameters; it belongs to a different model"
    )]
    FlatLength { expected: usize, actual: usize },
}

#[cfg(test)]
mod tests;
