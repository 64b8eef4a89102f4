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
//!   contribution is ([a_i,1]·[a_j,1]) (δ_{i,o}·δ_{j,o'}): two small Gram matrices and a
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

use burn::tensor::backend::Backend;
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::Range;

use rayon::prelude::*;

use noisegeom_models::{Activation, ConvGeom, Layer, Stage, Tap, autodiff_lock};

use crate::linalg::{GemmElem, row_products};
use crate::nested::{Ad, to_host, with_slice};
use crate::{GeometryError, ProbeOps};

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

enum Record<B: Backend> {
    Dense {
        input: Tensor<B, 2>,
        probe: Tensor<Ad<B>, 2>,
        bias: bool,
    },
    Conv {
        input: Tensor<B, 4>,
        probe: Tensor<Ad<B>, 4>,
        geom: ConvGeom,
        bias: bool,
    },
    Hadamard {
        input: Tensor<B, 2>,
        probe: Tensor<Ad<B>, 2>,
    },
}

struct GramTap<B: Backend> {
    records: Vec<Record<B>>,
    /// Copies of the batch still to be made: > 1 until the first parametric layer, whose
    /// output is repeated (the forward up to it is the same for every copy).
    copies: usize,
}

impl<B: Backend> GramTap<B> {
    fn copy<const D: usize>(&mut self, z: Tensor<Ad<B>, D>) -> Tensor<Ad<B>, D> {
        let copies = std::mem::replace(&mut self.copies, 1);
        if copies > 1 {
            z.repeat_dim(0, copies)
        } else {
            z
        }
    }
}

/// A zero leaf shaped like `z`: added after a layer, its gradient is the backprop signal there.
fn zero_probe<B: Backend, const D: usize>(z: &Tensor<Ad<B>, D>) -> Tensor<Ad<B>, D> {
    Tensor::zeros(z.dims(), &z.device()).require_grad()
}

impl<B: Backend> Tap<Ad<B>> for GramTap<B> {
    fn dense(
        &mut self,
        input: &Tensor<Ad<B>, 2>,
        z: Tensor<Ad<B>, 2>,
        bias: bool,
    ) -> Tensor<Ad<B>, 2> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Dense {
            input: input.clone().inner(),
            probe: probe.clone(),
            bias,
        });
        z + probe
    }

    fn conv(
        &mut self,
        input: &Tensor<Ad<B>, 4>,
        z: Tensor<Ad<B>, 4>,
        geom: ConvGeom,
        bias: bool,
    ) -> Tensor<Ad<B>, 4> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Conv {
            input: input.clone().inner(),
            probe: probe.clone(),
            geom,
            bias,
        });
        z + probe
    }

    fn hadamard(&mut self, input: &Tensor<Ad<B>, 2>, z: Tensor<Ad<B>, 2>) -> Tensor<Ad<B>, 2> {
        let z = self.copy(z);
        let probe = zero_probe(&z);
        self.records.push(Record::Hadamard {
            input: input.clone().inner(),
            probe: probe.clone(),
        });
        z + probe
    }
}

/// What one chunk of samples contributes, per layer: either the two factors of the affine
/// identity, or materialised per-(sample, output) gradient rows.
enum Feature<B: Backend> {
    /// `a`: `[b, in (+1)]` layer inputs; `delta`: `[c·b, out]`, rows output-major (o·b + i).
    /// `units`: δ_{i,o} = e_o for every sample of the chunk (the output layer, checked
    /// exactly), so that between two such chunks δ_{i,o}·δ_{j,o2} = [o = o2] needs no product.
    /// `symmetric`: δ_{i,o} = D_i·u_o with D_i diagonal and u_o shared by all samples (the
    /// last hidden affine layer, when only an elementwise activation lies between it and an
    /// output layer whose signals are the selection: u_o is that layer's weight row o), so
    /// δ_{i,o}·δ_{j,o2} = Σ_k D_ik D_jk u_ok u_o2k is symmetric under o ↔ o2.
    Affine {
        a: Tensor<B, 2>,
        delta: Tensor<B, 2>,
        units: bool,
        symmetric: bool,
    },
    /// `[c·b, q]` gradient rows, output-major.
    Rows(Tensor<B, 2>),
}

impl<B: Backend> Feature<B> {
    /// The same feature restricted to samples `t0..t0 + t` of a chunk of `b` (rows of the
    /// output-major factors are `o·b + i`).
    fn samples(&self, b: usize, c: usize, t0: usize, t: usize) -> Self {
        let rows = |m: &Tensor<B, 2>| {
            if t == b {
                return m.clone();
            }
            let [_, q] = m.dims();
            m.clone()
                .reshape([c, b, q])
                .narrow(1, t0, t)
                .reshape([c * t, q])
        };
        match self {
            Feature::Affine {
                a,
                delta,
                units,
                symmetric,
            } => Feature::Affine {
                a: a.clone().narrow(0, t0, t),
                delta: rows(delta),
                units: *units,
                symmetric: *symmetric,
            },
            Feature::Rows(r) => Feature::Rows(rows(r)),
        }
    }
}

impl<B: Backend> Feature<B> {
    /// Floats stored, all samples of the chunk together.
    fn floats(&self) -> usize {
        match self {
            Feature::Affine { a, delta, .. } => {
                a.shape().num_elements() + delta.shape().num_elements()
            }
            Feature::Rows(r) => r.shape().num_elements(),
        }
    }
}

/// Samples per side of the tile pairs whose blocks are gathered on the host: the host buffer
/// is about c(c+1)/2 · TILE² f64 (115 MB for c = 10).
pub const TILE: usize = 512;

/// How the per-sample features of the Gram may use memory.
#[derive(Clone, Copy, Debug)]
pub struct FeatureBudget {
    /// Bytes the stored per-sample features may take.
    pub max_bytes: usize,
    /// When the features of all n samples exceed `max_bytes`: recompute them group by group
    /// (one group resident, the others streamed past it) instead of failing.
    pub recompute: bool,
}

impl FeatureBudget {
    /// At most `max_bytes` of features, failing rather than recomputing past it.
    pub fn strict(max_bytes: usize) -> Self {
        FeatureBudget {
            max_bytes,
            recompute: false,
        }
    }
}

/// One output o of one tile pair: the rows (i, o) of K, i ∈ `rows`, against the column
/// samples j ∈ `cols` and the outputs o2 ≥ [`OutputRows::o0`]. Each row is formed on request
/// ([`OutputRows::row_into`]) from the layers' products, in f64 on the host; nothing is
/// stored. In a diagonal pair (`rows == cols`) the outputs o2 < o are not formed:
/// K[(i,o),(j,o2)] = K[(j,o2),(i,o)] belongs to output o2's rows.
pub struct OutputRows<'a> {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub diag: bool,
    pub c: usize,
    pub o: usize,
    /// Per output o2 ≥ o0, its layers' terms.
    terms: Vec<Vec<Term<'a>>>,
}

impl OutputRows<'_> {
    /// The first output o2 formed: o on the diagonal, else 0.
    pub fn o0(&self) -> usize {
        if self.diag { self.o } else { 0 }
    }

    /// K[(rows.start + i, o), (cols.start + j, o2)] for all j into `out` (`cols.len()`
    /// long): Σ_l w_l ⊙ p_l over the layers, summed in layer order. o2 ≥ [`Self::o0`].
    pub fn row_into(&self, o2: usize, i: usize, out: &mut [f64]) {
        let bj = self.cols.len();
        let terms = &self.terms[o2 - self.o0()];
        if terms.is_empty() {
            // No layer contributes (o ≠ o2 in a model with only its output layer).
            out.fill(0.0);
        }
        for (ti, t) in terms.iter().enumerate() {
            let w = t.weight.map(|w| &w[i * bj..(i + 1) * bj]);
            match t.data {
                Some(data) => with_slice!(data, p => {
                    put(out, Some(&p[t.offset + i * t.stride..][..bj]), w, ti == 0)
                }),
                None => put::<f64>(out, None, w, ti == 0),
            }
        }
    }
}

/// `out` ← (the first term) or += p ⊙ w, with p all ones when `None`.
fn put<E: Copy + Into<f64>>(out: &mut [f64], p: Option<&[E]>, w: Option<&[f64]>, first: bool) {
    let set = |o: &mut f64, x: f64| {
        if first { *o = x } else { *o += x }
    };
    match (p, w) {
        (Some(p), Some(w)) => {
            for ((o, &p), w) in out.iter_mut().zip(p).zip(w) {
                set(o, p.into() * w);
            }
        }
        (Some(p), None) => {
            for (o, &p) in out.iter_mut().zip(p) {
                set(o, p.into());
            }
        }
        (None, Some(w)) => {
            for (o, &w) in out.iter_mut().zip(w) {
                set(o, w);
            }
        }
        (None, None) => out.iter_mut().for_each(|o| set(o, 1.0)),
    }
}

/// What consumes K tile pair by tile pair ([`for_each_tile_pair`]): `begin_pair`, the c
/// outputs in turn, `end_pair`.
pub trait PairVisitor {
    /// A tile pair (`rows`, `cols`) begins.
    fn begin_pair(&mut self, _rows: Range<usize>, _cols: Range<usize>, _diag: bool) {}
    /// Output o's rows of one tile pair, for o = 0, 1, …, c − 1 in turn.
    fn output(&mut self, rows: &OutputRows<'_>);
    /// All c outputs of the tile pair (`rows`, `cols`) have been visited.
    fn end_pair(&mut self, rows: Range<usize>, cols: Range<usize>, diag: bool);
}

/// The features of `tile`-sample tiles of samples `range`.
struct Tile<B: Backend> {
    start: usize,
    len: usize,
    feats: Vec<Feature<B>>,
}

/// What one pass over K's tile pairs ([`for_each_tile_pair`]) did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TileWork {
    /// Feature groups: 1 when every sample's features were computed once, more when groups
    /// were recomputed to fit the budget.
    pub groups: usize,
    /// The floating-point operations (two per multiply-add) of the products formed over all
    /// tile pairs: each layer's products of backprop signals or gradient rows, and each
    /// affine layer's sample Gram of its inputs. The features' forward and backward passes
    /// and the visitor's work are not counted.
    pub product_flops: f64,
}

/// Visits every tile pair (rows ≤ cols) of K over the probe set of `ops` once, in a fixed
/// order, without storing K. Features are computed `chunk` samples at a time. When the
/// features of all n samples fit `budget`, they are computed once; otherwise, if
/// `budget.recompute`, the samples are split into groups of which two fit with room for
/// the one being built, each group is kept while the later groups are recomputed and
/// streamed past it; else this fails with a clear message.
pub fn for_each_tile_pair<B: Backend>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    budget: FeatureBudget,
    visitor: &mut impl PairVisitor,
) -> Result<TileWork, GeometryError> {
    let (n, c) = (ops.n, ops.c);
    let late_copies = late_copies(ops);
    let per_sample = feature_bytes_per_sample(ops);
    let need = n * per_sample;
    let group = if need <= budget.max_bytes {
        n
    } else if budget.recompute {
        budget.max_bytes / (3 * per_sample.max(1))
    } else {
        return Err(GeometryError::Budget(format!(
            "the exact Gram needs about {:.1} GB of per-sample features for n = {n} probe samples and c = {c} outputs (limit {:.1} GB); lower the probe size, raise the limit, or use the stochastic (Hutchinson) estimator",
            need as f64 / 1e9,
            budget.max_bytes as f64 / 1e9
        )));
    };
    if group == 0 {
        return Err(GeometryError::Budget(format!(
            "one probe sample's Gram features take {:.2} GB, more than a third of the {:.2} GB limit; raise the limit or use the stochastic (Hutchinson) estimator",
            per_sample as f64 / 1e9,
            budget.max_bytes as f64 / 1e9
        )));
    }
    let chunk = chunk.clamp(1, group);
    let tile = tile.clamp(1, chunk);
    let tiles_of = |range: Range<usize>| -> Result<Vec<Tile<B>>, GeometryError> {
        let mut tiles = Vec::new();
        for start in range.clone().step_by(chunk) {
            noisegeom_data::stop::check()?;
            let b = chunk.min(range.end - start);
            let feats = chunk_features(ops, start, b, late_copies);
            for t0 in (0..b).step_by(tile) {
                let t = tile.min(b - t0);
                tiles.push(Tile {
                    start: start + t0,
                    len: t,
                    feats: feats.iter().map(|f| f.samples(b, c, t0, t)).collect(),
                });
            }
        }
        Ok(tiles)
    };
    let host = ops.host_products;
    let mut product_flops = 0.0;
    let mut pair = |a: &Tile<B>, b: &Tile<B>| -> Result<(), GeometryError> {
        noisegeom_data::stop::check()?;
        product_flops += visit_pair(a, b, c, host, visitor);
        Ok(())
    };
    for g0 in (0..n).step_by(group) {
        let resident = tiles_of(g0..(g0 + group).min(n))?;
        for (ti, a) in resident.iter().enumerate() {
            for b in &resident[ti..] {
                pair(a, b)?;
            }
        }
        for h0 in (g0 + group..n).step_by(group) {
            let streamed = tiles_of(h0..(h0 + group).min(n))?;
            for a in &resident {
                for b in &streamed {
                    pair(a, b)?;
                }
            }
        }
    }
    Ok(TileWork {
        groups: n.div_ceil(group),
        product_flops,
    })
}

/// The bytes of per-sample features the Gram stores for one probe sample (all c outputs),
/// from one sample's features.
pub fn feature_bytes_per_sample<B: Backend>(ops: &ProbeOps<B>) -> usize {
    chunk_features(ops, 0, 1, late_copies(ops))
        .iter()
        .map(Feature::floats)
        .sum::<usize>()
        * std::mem::size_of::<B::FloatElem>()
}

/// Samples do not interact, so the c copies of a batch only differ from the first
/// parametric layer on: the forward before it runs once, unless a residual shortcut is
/// saved there (it would then be added to the copies).
fn late_copies<B: Backend>(ops: &ProbeOps<B>) -> bool {
    let mut before = ops.arch.stages.iter().take_while(|s| {
        !matches!(
            s,
            Stage::Dense { .. } | Stage::Conv { .. } | Stage::Hadamard
        )
    });
    !before.any(|s| matches!(s, Stage::SaveSkip)) && ops.arch.num_params() > 0
}

/// The one-hot selection `[c·b, c]` (row o·b + i is e_o): the cotangent that gives every
/// (sample, output) signal in one backward.
fn selection(c: usize, b: usize) -> Vec<f64> {
    let mut sel = vec![0.0f64; c * b * c];
    for o in 0..c {
        for i in 0..b {
            sel[(o * b + i) * c + o] = 1.0;
        }
    }
    sel
}

/// Each parametric layer's per-sample features over samples `start..start + b`: for a
/// network of affine layers and activations only, written out ([`mlp_features`]); else one
/// forward (c copies) and one backward of Σ_{i,o} f_o(x_i)·[copy = o].
fn chunk_features<B: Backend>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
    late_copies: bool,
) -> Vec<Feature<B>> {
    let mut feats = match mlp_features(ops, start, b) {
        Some(feats) => feats,
        None => autodiff_features(ops, start, b, late_copies),
    };
    if let Some(l) = symmetric_layer(&ops.arch.stages)
        && matches!(feats.last(), Some(Feature::Affine { units: true, .. }))
        && let Some(Feature::Affine { symmetric, .. }) = feats.get_mut(l)
    {
        *symmetric = true;
    }
    feats
}

/// The features of a network whose stages are affine layers, each followed by at most one
/// activation, the last by none: one forward over the b samples records each layer's input
/// a_l and pre-activation z_l, and the backward is written out on c·b rows, δ_L = e_o and
/// δ_l = (δ_{l+1}·W_{l+1}) ⊙ σ'(z_l). Autodiff needs the c copies of the batch in the
/// forward as well (one graph row per cotangent), which repeats the forward past the first
/// layer c times. `None` for any other architecture.
fn mlp_features<B: Backend>(ops: &ProbeOps<B>, start: usize, b: usize) -> Option<Vec<Feature<B>>> {
    // Per affine layer, the activation that follows it.
    let mut acts: Vec<Option<Activation>> = Vec::new();
    for stage in &ops.arch.stages {
        match stage {
            Stage::Dense { .. } => acts.push(None),
            Stage::Act { activation } => match acts.last_mut() {
                Some(act @ None) => *act = Some(*activation),
                _ => return None,
            },
            _ => return None,
        }
    }
    if acts.last()?.is_some() {
        return None;
    }
    struct Record<B: Backend> {
        inputs: Vec<(Tensor<B, 2>, bool)>,
        pre: Vec<Tensor<B, 2>>,
    }
    impl<B: Backend> Tap<B> for Record<B> {
        fn dense(&mut self, input: &Tensor<B, 2>, z: Tensor<B, 2>, bias: bool) -> Tensor<B, 2> {
            self.inputs.push((input.clone(), bias));
            self.pre.push(z.clone());
            z
        }
    }
    let mut rec = Record {
        inputs: Vec::new(),
        pre: Vec::new(),
    };
    let net = ops.net();
    net.forward_with(ops.x.clone().narrow(0, start, b), &mut rec);
    let c = ops.c;
    let sel = selection(c, b);
    let last = acts.len() - 1;
    let mut deltas = vec![Tensor::<B, 2>::from_data(
        TensorData::new(sel, [c * b, c]),
        &ops.device,
    )];
    for l in (0..last).rev() {
        let Layer::Dense(next) = &net.layers[l + 1] else {
            unreachable!("affine layers only");
        };
        let g = deltas[0].clone().matmul(next.weight.val());
        deltas.insert(
            0,
            match acts[l] {
                None | Some(Activation::Identity) => g,
                // σ'(z_l) repeated for the c copies: burn-flex multiplies equal shapes in
                // place, and a broadcast [1, b, d] factor takes its strided path (measured:
                // twice the GEMMs' time).
                Some(act) => g * act.slope(rec.pre[l].clone()).repeat_dim(0, c),
            },
        );
    }
    Some(
        rec.inputs
            .into_iter()
            .zip(deltas)
            .enumerate()
            .map(|(l, ((a, bias), delta))| Feature::Affine {
                a: with_ones(a, bias),
                delta,
                units: l == last,
                symmetric: false,
            })
            .collect(),
    )
}

/// `a` with a column of ones appended when the layer has a bias.
fn with_ones<B: Backend>(a: Tensor<B, 2>, bias: bool) -> Tensor<B, 2> {
    if bias {
        let ones = Tensor::<B, 2>::ones([a.dims()[0], 1], &a.device());
        Tensor::cat(vec![a, ones], 1)
    } else {
        a
    }
}

/// [`chunk_features`] through autodiff: probes on every parametric layer.
fn autodiff_features<B: Backend>(
    ops: &ProbeOps<B>,
    start: usize,
    b: usize,
    late_copies: bool,
) -> Vec<Feature<B>> {
    let _graph = autodiff_lock();
    let c = ops.c;
    let x = ops.x.clone().narrow(0, start, b);
    let x = if late_copies { x } else { x.repeat_dim(0, c) };
    let mut tap = GramTap {
        records: Vec::new(),
        copies: if late_copies { c } else { 1 },
    };
    let out = ops
        .net_frozen()
        .forward_with(Tensor::<Ad<B>, 2>::from_inner(x), &mut tap);
    let sel = selection(c, b);
    let grads = (out
        * Tensor::<Ad<B>, 2>::from_data(TensorData::new(sel.clone(), [c * b, c]), &ops.device))
    .sum()
    .backward();
    let mut feats = Vec::with_capacity(tap.records.len());
    for rec in tap.records {
        feats.push(match rec {
            Record::Dense { input, probe, bias } => {
                let delta = probe.grad(&grads).expect("probe reached");
                let a = with_ones(input.narrow(0, 0, b), bias);
                // The output layer's signal is the selection itself (nothing follows it).
                let units = delta.dims() == [c * b, c] && to_host(delta.clone()) == sel;
                Feature::Affine {
                    a,
                    delta,
                    units,
                    symmetric: false,
                }
            }
            Record::Conv {
                input,
                probe,
                geom,
                bias,
            } => {
                let delta = probe.grad(&grads).expect("probe reached");
                let [rows, cout, h, w] = delta.dims();
                let delta = delta.reshape([rows, cout, h * w]);
                // Patches of the first copy, repeated for the c copies: [c·b, P, cin·k²].
                let u = unfold4d(
                    input.narrow(0, 0, b),
                    [geom.kernel, geom.kernel],
                    UnfoldOptions::new([geom.stride; 2], [geom.padding; 2], [1, 1]),
                )
                .repeat_dim(0, c)
                .swap_dims(1, 2);
                let gw = delta.clone().matmul(u); // [c·b, cout, cin·k²]
                let [_, _, q] = gw.dims();
                let mut parts = vec![gw.reshape([rows, cout * q])];
                if bias {
                    parts.push(delta.sum_dim(2).reshape([rows, cout]));
                }
                Feature::Rows(Tensor::cat(parts, 1))
            }
            Record::Hadamard { input, probe } => {
                let delta = probe.grad(&grads).expect("probe reached");
                Feature::Rows(input.narrow(0, 0, b).repeat_dim(0, c) * delta)
            }
        });
    }
    feats
}

/// The parametric layer (its index among them) whose backprop signals are symmetric in the
/// outputs when the last layer's signals are the selection ([`Feature::Affine`]): the
/// second-to-last parametric layer, if it and the last are affine and only activations lie
/// between them.
fn symmetric_layer(stages: &[Stage]) -> Option<usize> {
    let params: Vec<usize> = (0..stages.len())
        .filter(|&k| {
            matches!(
                stages[k],
                Stage::Dense { .. } | Stage::Conv { .. } | Stage::Hadamard
            )
        })
        .collect();
    let [.., prev, last] = params[..] else {
        return None;
    };
    let affine = |k: usize| matches!(stages[k], Stage::Dense { .. });
    let between = stages[prev + 1..last]
        .iter()
        .all(|s| matches!(s, Stage::Act { .. }));
    (affine(prev) && affine(last) && between).then_some(params.len() - 2)
}

/// Visits the tile pair (a, b), output by output: each layer's product of backprop signals
/// (or of gradient rows) is formed by one wide GEMM per layer and output ([`Products`]); the
/// sum over layers, each affine layer's product weighted element-wise by its inputs' sample
/// Gram, is formed row by row by the visitor ([`OutputRows::row_into`]). In a diagonal pair
/// only the output pairs o ≤ o2 are formed, and so they are, off the diagonal, for a layer
/// whose products are symmetric under o ↔ o2 (see [`Feature::Affine`]). With `host`, the
/// affine layers' products are formed on host memory ([`row_products`]). Returns the
/// products' floating-point operations ([`TileWork::product_flops`]).
fn visit_pair<B: Backend>(
    a: &Tile<B>,
    b: &Tile<B>,
    c: usize,
    host: bool,
    visitor: &mut impl PairVisitor,
) -> f64 {
    let (fi, fj, bi, bj) = (&a.feats, &b.feats, a.len, b.len);
    let diag = a.start == b.start;
    let mut flops = 0.0;
    // Per affine layer: its inputs' sample Gram, the weight of its products (shared by all
    // output pairs).
    let weights: Vec<Option<Vec<f64>>> = fi
        .iter()
        .zip(fj)
        .map(|(a, b)| match (a, b) {
            (Feature::Affine { a: ai, .. }, Feature::Affine { a: aj, .. }) => {
                flops += product_flops(ai.dims()[0], aj.dims()[0], ai.dims()[1]);
                Some(to_host(ai.clone().matmul(aj.clone().transpose())))
            }
            (Feature::Rows(_), Feature::Rows(_)) => None,
            _ => unreachable!("same layers in every chunk"),
        })
        .collect();
    let shape = PairShape { diag, c, bi, bj };
    let mut products: Vec<Products<'_, B>> = fi
        .iter()
        .zip(fj)
        .map(|(a, b)| Products::new(a, b, diag, host, &mut flops))
        .collect();
    visitor.begin_pair(a.start..a.start + bi, b.start..b.start + bj, diag);
    for o in 0..c {
        // The output pairs (o, o2), o2 ≥ o0, formed (on the diagonal, o2 < o is skipped).
        let o0 = if diag { o } else { 0 };
        for p in &mut products {
            flops += p.form(o, shape);
        }
        // Per output pair (o, o2) and layer: its slice of the product, weighted by its
        // inputs' Gram where affine; or, for the output layer, its inputs' Gram alone on the
        // block o = o2 and nothing elsewhere.
        let terms: Vec<Vec<Term<'_>>> = (o0..c)
            .map(|o2| {
                weights
                    .iter()
                    .zip(&products)
                    .filter_map(|(w, p)| p.term(o, o2, shape, w.as_deref()))
                    .collect()
            })
            .collect();
        visitor.output(&OutputRows {
            rows: a.start..a.start + bi,
            cols: b.start..b.start + bj,
            diag,
            c,
            o,
            terms,
        });
    }
    visitor.end_pair(a.start..a.start + bi, b.start..b.start + bj, diag);
    flops
}

/// The floating-point operations of an `[m, k]·[k, n]` product.
fn product_flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}

/// A tile pair's shape: whether it is on the diagonal, the outputs, the row and column
/// tiles' sample counts.
#[derive(Clone, Copy)]
struct PairShape {
    diag: bool,
    c: usize,
    bi: usize,
    bj: usize,
}

/// One layer's products in a tile pair.
enum Products<'a, B: Backend> {
    /// The output layer between two chunks whose signals are the selection:
    /// δ_{i,o}·δ_{j,o2} = [o = o2], no product formed.
    Units,
    /// Off the diagonal, a layer of gradient rows: one `[c·bi, c·bj]` product for all output
    /// pairs. Their rows are long (a convolution's per-sample gradients), and one GEMM packs
    /// its right-hand side once, where c GEMMs would pack it c times (measured: the CNN's
    /// grouped μ over n = 4096 took 1001 s with per-output GEMMs, against 586 s).
    Whole(TensorData),
    /// Output by output: `outs[slot]` holds output o's rows against the outputs o2 ≥ from
    /// ([`Products::span`]), `[bi, (c − from)·bj]` row-major.
    PerOutput {
        source: Source<'a, B>,
        /// Products symmetric under o ↔ o2 in an off-diagonal pair: every output's product
        /// is kept (slot o), and the blocks o2 < o are read from output o2's.
        mirror: bool,
        outs: Vec<TensorData>,
    },
}

/// Where a layer's per-output products are formed.
enum Source<'a, B: Backend> {
    /// The backend's matmul, on the tiles' signals or gradient rows.
    Device(&'a Tensor<B, 2>, &'a Tensor<B, 2>),
    /// Host memory: both tiles' signals copied once per pair (`[c·b, d]`, rows output-major;
    /// the row tile's alone in a diagonal pair), each output's product written into a
    /// buffer (reused unless `mirror`).
    Host {
        rows: TensorData,
        cols: Option<TensorData>,
        d: usize,
    },
}

impl<'a, B: Backend> Products<'a, B> {
    /// The products of two tiles' features of one layer; a [`Products::Whole`] product is
    /// formed here, its operations added to `flops`.
    fn new(a: &'a Feature<B>, b: &'a Feature<B>, diag: bool, host: bool, flops: &mut f64) -> Self {
        let per_output = |source, mirror| Products::PerOutput {
            source,
            mirror,
            outs: Vec::new(),
        };
        match (a, b) {
            (Feature::Affine { units: true, .. }, Feature::Affine { units: true, .. }) => {
                Products::Units
            }
            (
                Feature::Affine {
                    delta: di,
                    symmetric: si,
                    ..
                },
                Feature::Affine {
                    delta: dj,
                    symmetric: sj,
                    ..
                },
            ) => {
                let mirror = !diag && *si && *sj;
                let source = if host {
                    let rows = di.clone().into_data();
                    let cols = (!diag).then(|| dj.clone().into_data());
                    Source::Host {
                        rows,
                        cols,
                        d: di.dims()[1],
                    }
                } else {
                    Source::Device(di, dj)
                };
                per_output(source, mirror)
            }
            (Feature::Rows(ri), Feature::Rows(rj)) if !diag => {
                let ([m, k], [n, _]) = (ri.dims(), rj.dims());
                *flops += product_flops(m, n, k);
                Products::Whole(ri.clone().matmul(rj.clone().transpose()).into_data())
            }
            (Feature::Rows(ri), Feature::Rows(rj)) => per_output(Source::Device(ri, rj), false),
            _ => unreachable!("same layers in every chunk"),
        }
    }

    /// For output o of a per-output layer: the first output o2 whose products with o's rows
    /// are formed, and the slot of `outs` that holds them.
    fn span(mirror: bool, diag: bool, o: usize) -> (usize, usize) {
        let from = if diag || mirror { o } else { 0 };
        (from, if mirror { o } else { 0 })
    }

    /// Forms output o's products (per-output layers only); returns their floating-point
    /// operations.
    fn form(&mut self, o: usize, shape: PairShape) -> f64 {
        let PairShape { diag, c, bi, bj } = shape;
        let Products::PerOutput {
            source,
            mirror,
            outs,
        } = self
        else {
            return 0.0;
        };
        let (from, slot) = Self::span(*mirror, diag, o);
        let width = (c - from) * bj;
        let depth = match source {
            Source::Device(ri, _) => ri.dims()[1],
            Source::Host { d, .. } => *d,
        };
        match source {
            Source::Device(ri, rj) => {
                let p = ri
                    .clone()
                    .narrow(0, o * bi, bi)
                    .matmul(rj.clone().narrow(0, from * bj, width).transpose())
                    .into_data();
                if slot < outs.len() {
                    outs[slot] = p;
                } else {
                    outs.push(p);
                }
            }
            Source::Host { rows, cols, d } => {
                // A reused buffer is sized for the widest output, a kept one for its own.
                if slot == outs.len() {
                    let len = bi * if *mirror { width } else { c * bj };
                    outs.push(match rows.dtype {
                        DType::F64 => TensorData::new(vec![0.0f64; len], [len]),
                        _ => TensorData::new(vec![0.0f32; len], [len]),
                    });
                }
                let cols = cols.as_ref().unwrap_or(rows);
                let out = &mut outs[slot];
                let (r, k) = (o * bi..(o + 1) * bi, from * bj..from * bj + width);
                match rows.dtype {
                    DType::F64 => host_rows_product::<f64>(rows, r, cols, k, *d, out),
                    _ => host_rows_product::<f32>(rows, r, cols, k, *d, out),
                }
            }
        }
        product_flops(bi, width, depth)
    }

    /// The term of block (o, o2) in output o's rows, o2 ≥ o0, or `None` where the layer
    /// contributes nothing.
    fn term<'t>(
        &'t self,
        o: usize,
        o2: usize,
        shape: PairShape,
        weight: Option<&'t [f64]>,
    ) -> Option<Term<'t>> {
        let PairShape { diag, c, bi, bj } = shape;
        match self {
            Products::Units => (o == o2).then_some(Term {
                data: None,
                offset: 0,
                stride: bj,
                weight,
            }),
            Products::Whole(p) => Some(Term {
                data: Some(p),
                offset: o * bi * c * bj + o2 * bj,
                stride: c * bj,
                weight,
            }),
            Products::PerOutput { mirror, outs, .. } => {
                let (from, slot) = Self::span(*mirror, diag, o);
                Some(if o2 >= from {
                    Term {
                        data: Some(&outs[slot]),
                        offset: (o2 - from) * bj,
                        stride: (c - from) * bj,
                        weight,
                    }
                } else {
                    // Symmetric products: block (o, o2) equals block (o2, o) of output o2.
                    Term {
                        data: Some(&outs[o2]),
                        offset: (o - o2) * bj,
                        stride: (c - o2) * bj,
                        weight,
                    }
                })
            }
        }
    }
}

/// `out[..rows·cols]` ← the products of `a`'s rows `rows` with `b`'s rows `cols` (both
/// `[·, d]` row-major), `[rows.len(), cols.len()]` row-major.
fn host_rows_product<E: GemmElem + burn::tensor::Element>(
    a: &TensorData,
    rows: Range<usize>,
    b: &TensorData,
    cols: Range<usize>,
    d: usize,
    out: &mut TensorData,
) {
    let same = "the product's operands and output share one dtype";
    let len = rows.len() * cols.len();
    row_products(
        &a.as_slice::<E>().expect(same)[rows.start * d..rows.end * d],
        &b.as_slice::<E>().expect(same)[cols.start * d..cols.end * d],
        d,
        &mut out.as_mut_slice::<E>().expect(same)[..len],
    );
}

/// One layer's product in a block: row i of the block is `data[offset + i·stride..][..bj]`
/// (all ones when `data` is `None`), weighted element-wise by `weight` (`[bi, bj]`) when
/// given.
struct Term<'a> {
    data: Option<&'a TensorData>,
    offset: usize,
    stride: usize,
    weight: Option<&'a [f64]>,
}

/// Computes K over the probe set of `ops`, `chunk` samples at a time. Fails with a clear
/// message if the stored per-sample features would exceed `max_bytes`.
pub fn gram<B: Backend>(
    ops: &ProbeOps<B>,
    chunk: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    gram_tiled(ops, chunk, TILE, max_bytes)
}

/// [`gram`] with the host tile size given: the samples of each chunk are paired `tile` at a
/// time ([`for_each_tile_pair`]), and each output's rows are written into K row by row
/// (contiguous writes); the lower triangle by a blocked transpose, or, within a diagonal
/// pair, from each output's blocks held for it.
pub fn gram_tiled<B: Backend>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    let (n, c) = (ops.n, ops.c);
    let mut writer = GramWriter {
        c,
        dim: n * c,
        k: vec![0.0; n * c * n * c],
        blocks: Vec::new(),
    };
    for_each_tile_pair(
        ops,
        chunk,
        tile,
        FeatureBudget::strict(max_bytes),
        &mut writer,
    )?;
    Ok(Gram { n, c, k: writer.k })
}

/// Writes K from the visited rows ([`gram_tiled`]).
struct GramWriter {
    c: usize,
    dim: usize,
    k: Vec<f64>,
    /// A diagonal pair's blocks (o, o2 > o) of the current output, `[bi, bj]` each.
    blocks: Vec<f64>,
}

impl PairVisitor for GramWriter {
    fn output(&mut self, r: &OutputRows<'_>) {
        let (dim, c, o, o0) = (self.dim, r.c, r.o, r.o0());
        let (si, bi, sj, bj) = (r.rows.start, r.rows.len(), r.cols.start, r.cols.len());
        let diag = r.diag;
        let block = bi * bj;
        self.blocks.resize(if diag { c * block } else { 0 }, 0.0);
        // Rows (si+i, o) of K, columns (sj+j, o2): contiguous writes, samples in parallel;
        // on the diagonal, each row is also kept in its block, for the mirror image below.
        let mut held: Vec<Vec<&mut [f64]>> = (0..bi).map(|_| Vec::new()).collect();
        for b in self.blocks.chunks_exact_mut(block.max(1)) {
            for (h, row) in held.iter_mut().zip(b.chunks_exact_mut(bj)) {
                h.push(row);
            }
        }
        self.k[si * c * dim..(si + bi) * c * dim]
            .par_chunks_mut(c * dim)
            .zip(held)
            .enumerate()
            .for_each(|(i, (rows, mut held))| {
                let row = &mut rows[o * dim..(o + 1) * dim][sj * c..(sj + bj) * c];
                let mut buf = vec![0.0; bj];
                for o2 in o0..c {
                    r.row_into(o2, i, &mut buf);
                    for (j, v) in buf.iter().enumerate() {
                        row[j * c + o2] = *v;
                    }
                    if diag && o2 > o {
                        held[o2].copy_from_slice(&buf);
                    }
                }
            });
        if diag {
            // K[(si+j, o2), (si+i, o)] = K[(si+i, o), (si+j, o2)] for o2 > o: rows of samples j
            // in parallel.
            let blocks = &self.blocks;
            self.k[si * c * dim..(si + bi) * c * dim]
                .par_chunks_mut(c * dim)
                .enumerate()
                .for_each(|(j, rows)| {
                    for o2 in o + 1..c {
                        let row = &mut rows[o2 * dim..(o2 + 1) * dim][si * c..(si + bi) * c];
                        let b = &blocks[o2 * block..(o2 + 1) * block];
                        for i in 0..bi {
                            row[i * c + o] = b[i * bj + j];
                        }
                    }
                });
        }
    }

    fn end_pair(&mut self, rows: Range<usize>, cols: Range<usize>, diag: bool) {
        let c = self.c;
        if !diag {
            mirror(
                &mut self.k,
                self.dim,
                rows.start * c..rows.end * c,
                cols.start * c..cols.end * c,
            );
        }
    }
}

/// Copies the block `rows × cols` of the row-major `dim × dim` matrix `k` to its transposed
/// position (`cols` lie below `rows`), in square tiles so that both sides stay in cache;
/// tiles of destination rows in parallel.
fn mirror(k: &mut [f64], dim: usize, rows: Range<usize>, cols: Range<usize>) {
    const T: usize = 32;
    debug_assert!(rows.end <= cols.start, "the block lies above the diagonal");
    let (src, dst) = k.split_at_mut(cols.start * dim);
    dst[..cols.len() * dim]
        .par_chunks_mut(T * dim)
        .enumerate()
        .for_each(|(t, dst)| {
            let col0 = cols.start + t * T;
            for r0 in rows.clone().step_by(T) {
                for (dc, drow) in dst.chunks_exact_mut(dim).enumerate() {
                    for r in r0..(r0 + T).min(rows.end) {
                        drow[r] = src[r * dim + col0 + dc];
                    }
                }
            }
        });
}
