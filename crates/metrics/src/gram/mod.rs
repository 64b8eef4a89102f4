//! The exact Gram matrix K = J Jᵀ ∈ R^{nc×nc} over the probe set, built layer by layer from
//! per-sample backprop signals, without forming J.
//!
//! Zero "probe" leaves are added after every parametric layer (`z + probe`). One backward of
//! Σ_{i,o} f_o(x_i)·[o = copy] over c stacked copies of the batch gives, at every layer, the
//! signal δ_{i,o} = ∂f_o(x_i)/∂z_i for all samples and outputs at once (samples do not
//! interact: there is no BatchNorm). The copies are made at the first parametric layer's
//! output, so the forward up to it runs once. Then, per layer:
//!
//! - affine `z = aWᵀ + b`: the per-sample gradient is δ_{i,o} ⊗ [a_i, 1], so its Gram
//!   contribution is (\[a_i,1\]·\[a_j,1\]) (δ_{i,o}·δ_{j,o'}): two small Gram matrices and a
//!   Hadamard product, never the gradient itself;
//! - convolution: the per-sample gradient Δ_{i,o} U_iᵀ (U the im2col patches) is formed for
//!   each (i, o) and contributes R Rᵀ;
//! - Hadamard `z = a ⊙ w`: the gradient a_i ⊙ δ_{i,o} is formed and contributes R Rᵀ.
//!
//! K is visited tile pair by tile pair ([`for_each_tile_pair`]), and within a pair output by
//! output: for output o, each layer's products of o's signals with those of every output o2
//! are formed on the device (one GEMM per layer), and a consumer ([`PairVisitor`]) forms
//! each row of K from them on the host in f64 (the sum over layers, an affine layer's
//! weighted by its inputs' sample Gram) and uses it at once: no block of K is stored. Only
//! tile pairs on and above the diagonal are formed (K is symmetric), and within a diagonal
//! pair only output pairs o ≤ o2. The output layer's signals are the selection itself
//! (checked exactly), so its products are the identity and are not formed. A consumer sees
//! each pair once, in a fixed order:
//!
//! - [`gram`] writes the rows into K, on the host in f64, sample-major: row `i·c + o`, so the
//!   c×c block (i, j) is K_ij = J_i J_jᵀ; rows are written contiguously, the mirror image by a
//!   blocked transpose (within a diagonal pair, from the output's blocks held for it);
//! - [`crate::alignment::exact_alignment_streamed`] accumulates μ's traces and never stores K.
//!
//! The per-sample features of all n samples are kept when they fit the byte budget. When they
//! do not and recomputation is allowed, the samples are split into groups (two, and the one
//! being built, fit the budget): each group is kept while the later groups are recomputed and
//! streamed past it, so memory is bounded at the cost of recomputing features.

mod features;
mod products;
mod tiles;
mod write;

use burn::tensor::module::{conv_transpose2d, unfold4d};
use burn::tensor::ops::{ConvTransposeOptions, UnfoldOptions};
use burn::tensor::{DType, Tensor, TensorData};
use noisegeom_kernels::{Kernels, Pass};
use std::ops::Range;

use rayon::prelude::*;

use noisegeom_models::{Activation, ConvGeom, Layer, Stage, Tap, autodiff_lock};

use crate::linalg::{GemmElem, row_products};
use crate::nested::{Ad, to_host, with_slice};
use crate::{GeometryError, ProbeOps};

use features::*;
use products::*;
use tiles::*;
pub use tiles::{
    FeatureBudget, OutputRows, PairVisitor, TILE, TileWork, feature_bytes_per_sample,
    for_each_tile_pair,
};
pub use write::{gram, gram_tiled};

/// The Gram matrix and its shape.
#[derive(Clone, Debug)]
pub struct Gram {
    pub n: usize,
    pub c: usize,
    /// (n·c)² entries, row-major, sample-major rows.
    pub k: Vec<f64>,
}

impl Gram {
    pub fn dim(&self) -> usize {
        self.n * self.c
    }

    pub fn at(&self, r: usize, s: usize) -> f64 {
        self.k[r * self.dim() + s]
    }
}
