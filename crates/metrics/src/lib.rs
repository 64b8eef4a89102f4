//! The geometry engine: SGD-noise alignment with curvature, exact where affordable.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).
//!
//! Everything is measured over a fixed probe set of n samples at parameters θ, for the square
//! loss L(θ) = 1/(2n) Σ_i ||f(x_i; θ) − y_i||² (docs/definitions.md §1), and never forms a p×p matrix:
//!
//! - [`ProbeOps`]: the matrix-free products J v, Jᵀw, G v, M v, Σ₁ v, H v (exact, through
//!   nested autodiff) and the quadratic forms along a direction.
//! - [`gram::gram`]: the exact nc×nc Gram matrix K = JJᵀ, layer by layer from per-sample
//!   backprop signals.
//! - [`alignment`]: μ and μ_unc from K; the exact nonzero spectrum of G with α_k, g_k; g(θ, v).
//! - [`lanczos`]: Lanczos with full reorthogonalisation and residuals; SLQ densities.
//! - [`hutchinson`]: stochastic μ, Tr G, ||G||_F² with standard errors.
//! - [`measure()`]: all of the above on request, as one serialisable [`Measurement`].
//! - [`track()`]: the cheap exact subset followed during training (μ, Tr G, ||G||_F, top of
//!   G with g_k from the Gram, λ_max(H)).
//!
//! The crate knows models only through `noisegeom_models::Net` and its flat θ, and never
//! changes the parameters it is given.

pub mod alignment;
pub mod gram;
pub mod hutchinson;
pub mod lanczos;
pub mod linalg;
mod measure;
pub mod nested;
mod ops;
pub mod report;
pub mod resources;
pub mod track;

pub use measure::{Curvature, EigenDirections, MeasureOptions, Measurement, Method, measure};
pub use ops::{FdOperator, FiniteDifference, ProbeOps, QuadForms};
pub use report::{Cutoffs, Estimate, Ratio};
pub use resources::Resources;
pub use track::{TrackOptions, Tracked, track};

/// Errors from the geometry engine, one line each.
#[derive(Debug, thiserror::Error)]
pub enum GeometryError {
    #[error(transparent)]
    Model(#[from] noisegeom_models::ModelError),
    #[error("geometry input: {0}")]
    Input(String),
    #[error("{0}")]
    Budget(String),
    /// A job's estimated peak memory exceeds the limit ([`Resources::check`]).
    #[error("{0}")]
    Memory(String),
    #[error(transparent)]
    Interrupted(#[from] noisegeom_data::stop::Interrupted),
}
