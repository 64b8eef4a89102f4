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
//! K is returned on the host in f64, sample-major: row `i·c + o`, so the c×c block (i, j) is
//! K_ij = J_i J_jᵀ.
//!
//! Only the upper triangle of tile pairs is computed (K is symmetric). Each tile pair's
//! (output, output) blocks are gathered on the host and written into K row by row, and the
//! mirror image by a blocked transpose, so the writes into the (nc)² matrix stay contiguous.

use burn::tensor::backend::Backend;
use burn::tensor::module::unfold4d;
use burn::tensor::ops::UnfoldOptions;
use burn::tensor::{Tensor, TensorData};
use std::ops::Range;

use rayon::prelude::*;

use noisegeom_models::{ConvGeom, Stage, Tap};

use crate::nested::{Ad, to_host};
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
    Affine {
        a: Tensor<B, 2>,
        delta: Tensor<B, 2>,
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
            Feature::Affine { a, delta } => Feature::Affine {
                a: a.clone().narrow(0, t0, t),
                delta: rows(delta),
            },
            Feature::Rows(r) => Feature::Rows(rows(r)),
        }
    }
}

/// Bytes the stored features of one sample take, per layer kind, for the memory check.
fn feature_floats<B: Backend>(records: &[Record<B>], b: usize, c: usize) -> usize {
    records
        .iter()
        .map(|r| match r {
            Record::Dense { input, probe, .. } => input.dims()[1] + 1 + c * probe.dims()[1],
            Record::Conv {
                input,
                probe,
                geom,
                bias,
            } => {
                let [_, cin, _, _] = input.dims();
                let cout = probe.dims()[1];
                c * (cout * cin * geom.kernel * geom.kernel + if *bias { cout } else { 0 })
            }
            Record::Hadamard { input, .. } => c * input.dims()[1],
        })
        .sum::<usize>()
        * b
}

/// Samples per side of the tile pairs whose blocks are gathered on the host before they are
/// written into K: the host buffer is about c(c+1)/2 · TILE² f64 (115 MB for c = 10).
const TILE: usize = 512;

/// Computes K over the probe set of `ops`, `chunk` samples at a time. Fails with a clear
/// message if the stored per-sample features would exceed `max_bytes`.
pub fn gram<B: Backend>(
    ops: &ProbeOps<B>,
    chunk: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    gram_tiled(ops, chunk, chunk.min(TILE), max_bytes)
}

/// [`gram`] with the host tile size given: the samples of each chunk are paired `tile` at a
/// time, every (output, output) block of a tile pair is computed on the device, and the
/// blocks are then written into K row by row (contiguous writes), the lower triangle by a
/// blocked transpose.
pub fn gram_tiled<B: Backend>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    max_bytes: usize,
) -> Result<Gram, GeometryError> {
    let (n, c) = (ops.n, ops.c);
    let chunk = chunk.clamp(1, n);
    let tile = tile.clamp(1, chunk);
    let elem = std::mem::size_of::<B::FloatElem>();
    // Samples do not interact, so the c copies of a batch only differ from the first
    // parametric layer on: the forward before it runs once, unless a residual shortcut is
    // saved there (it would then be added to the copies).
    let late_copies = {
        let mut before = ops.arch.stages.iter().take_while(|s| {
            !matches!(
                s,
                Stage::Dense { .. } | Stage::Conv { .. } | Stage::Hadamard
            )
        });
        !before.any(|s| matches!(s, Stage::SaveSkip)) && ops.arch.num_params() > 0
    };
    let mut tiles: Vec<(usize, usize, Vec<Feature<B>>)> = Vec::new();
    for start in (0..n).step_by(chunk) {
        let b = chunk.min(n - start);
        let x = ops.x.clone().narrow(0, start, b);
        let x = if late_copies { x } else { x.repeat_dim(0, c) };
        let mut tap = GramTap {
            records: Vec::new(),
            copies: if late_copies { c } else { 1 },
        };
        let out = ops
            .net_frozen()
            .forward_with(Tensor::<Ad<B>, 2>::from_inner(x), &mut tap);
        let mut sel = vec![0.0f64; c * b * c];
        for o in 0..c {
            for i in 0..b {
                sel[(o * b + i) * c + o] = 1.0;
            }
        }
        let sel = Tensor::<Ad<B>, 2>::from_data(TensorData::new(sel, [c * b, c]), &ops.device);
        if start == 0 {
            let need = feature_floats(&tap.records, n, c) * elem;
            if need > max_bytes {
                return Err(GeometryError::Budget(format!(
                    "the exact Gram needs about {:.1} GB of per-sample features for n = {n} probe samples and c = {c} outputs (limit {:.1} GB); lower the probe size, raise the limit, or use the stochastic (Hutchinson) estimator",
                    need as f64 / 1e9,
                    max_bytes as f64 / 1e9
                )));
            }
        }
        let grads = (out * sel).sum().backward();
        let mut feats = Vec::with_capacity(tap.records.len());
        for rec in tap.records {
            feats.push(match rec {
                Record::Dense { input, probe, bias } => {
                    let delta = probe.grad(&grads).expect("probe reached");
                    let a = input.narrow(0, 0, b);
                    let a = if bias {
                        let ones = Tensor::<B, 2>::ones([b, 1], &ops.device);
                        Tensor::cat(vec![a, ones], 1)
                    } else {
                        a
                    };
                    Feature::Affine { a, delta }
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
        for t0 in (0..b).step_by(tile) {
            let t = tile.min(b - t0);
            let part = feats.iter().map(|f| f.samples(b, c, t0, t)).collect();
            tiles.push((start + t0, t, part));
        }
    }

    let dim = n * c;
    let mut k = vec![0.0; dim * dim];
    for (ti, (si, bi, fi)) in tiles.iter().enumerate() {
        for (tj, (sj, bj, fj)) in tiles.iter().enumerate().skip(ti) {
            let diag = ti == tj;
            // The sample Gram of every affine layer's inputs, shared by all output pairs.
            let s: Vec<Option<Tensor<B, 2>>> = fi
                .iter()
                .zip(fj)
                .map(|(a, b)| match (a, b) {
                    (Feature::Affine { a: ai, .. }, Feature::Affine { a: aj, .. }) => {
                        Some(ai.clone().matmul(aj.clone().transpose()))
                    }
                    _ => None,
                })
                .collect();
            // blocks[o·c + o2] = K[(si+i, o), (sj+j, o2)] as [bi, bj]; within a diagonal
            // tile, block (o, o2) with o2 < o is block (o2, o) transposed and is not formed.
            let mut blocks: Vec<Vec<f64>> = vec![Vec::new(); c * c];
            for o in 0..c {
                for o2 in (if diag { o } else { 0 })..c {
                    let mut acc: Option<Tensor<B, 2>> = None;
                    for ((a, b), s_ab) in fi.iter().zip(fj).zip(&s) {
                        let term = match (a, b, s_ab) {
                            (
                                Feature::Affine { delta: di, .. },
                                Feature::Affine { delta: dj, .. },
                                Some(s_ab),
                            ) => {
                                let d = di
                                    .clone()
                                    .narrow(0, o * bi, *bi)
                                    .matmul(dj.clone().narrow(0, o2 * bj, *bj).transpose());
                                s_ab.clone() * d
                            }
                            (Feature::Rows(ri), Feature::Rows(rj), None) => ri
                                .clone()
                                .narrow(0, o * bi, *bi)
                                .matmul(rj.clone().narrow(0, o2 * bj, *bj).transpose()),
                            _ => unreachable!("same layers in every chunk"),
                        };
                        acc = Some(match acc {
                            Some(x) => x + term,
                            None => term,
                        });
                    }
                    blocks[o * c + o2] = acc.map_or_else(|| vec![0.0; bi * bj], to_host);
                }
            }
            // Rows (si+i, o) of K, columns (sj+j, o2): contiguous writes, c rows per sample,
            // samples in parallel.
            k[si * c * dim..(si + bi) * c * dim]
                .par_chunks_mut(c * dim)
                .enumerate()
                .for_each(|(i, rows)| {
                    for (o, row) in rows.chunks_exact_mut(dim).enumerate() {
                        let row = &mut row[sj * c..(sj + bj) * c];
                        for o2 in 0..c {
                            if diag && o2 < o {
                                let blk = &blocks[o2 * c + o];
                                for j in 0..*bj {
                                    row[j * c + o2] = blk[j * bi + i];
                                }
                            } else {
                                let blk = &blocks[o * c + o2][i * bj..(i + 1) * bj];
                                for (j, v) in blk.iter().enumerate() {
                                    row[j * c + o2] = *v;
                                }
                            }
                        }
                    }
                });
            if !diag {
                mirror(&mut k, dim, si * c..(si + bi) * c, sj * c..(sj + bj) * c);
            }
        }
    }
    Ok(Gram { n, c, k })
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
