//! Tile scheduling and the feature budget: which tile pairs of K are formed, in which order,
//! with which features kept or recomputed, and the visitor that consumes each pair.

use super::*;

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
pub(super) fn put<E: Copy + Into<f64>>(
    out: &mut [f64],
    p: Option<&[E]>,
    w: Option<&[f64]>,
    first: bool,
) {
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
pub(super) struct Tile<B: Kernels> {
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
pub fn for_each_tile_pair<B: Kernels>(
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
pub fn feature_bytes_per_sample<B: Kernels>(ops: &ProbeOps<B>) -> usize {
    chunk_features(ops, 0, 1, late_copies(ops))
        .iter()
        .map(Feature::floats)
        .sum::<usize>()
        * std::mem::size_of::<B::FloatElem>()
}

/// Samples do not interact, so the c copies of a batch only differ from the first
/// parametric layer on: the forward before it runs once, unless a residual shortcut is
/// saved there (it would then be added to the copies).
pub(super) fn late_copies<B: Kernels>(ops: &ProbeOps<B>) -> bool {
    let mut before = ops.arch.stages.iter().take_while(|s| !s.is_parametric());
    !before.any(|s| matches!(s, Stage::SaveSkip)) && ops.arch.num_params() > 0
}

/// Visits the tile pair (a, b), output by output: each layer's product of backprop signals
/// (or of gradient rows) is formed by one wide GEMM per layer and output ([`Products`]); the
/// sum over layers, each affine layer's product weighted element-wise by its inputs' sample
/// Gram, is formed row by row by the visitor ([`OutputRows::row_into`]). In a diagonal pair
/// only the output pairs o ≤ o2 are formed, and so they are, off the diagonal, for a layer
/// whose products are symmetric under o ↔ o2 (see [`Feature::Affine`]). With `host`, the
/// affine layers' products are formed on host memory ([`row_products`]). Returns the
/// products' floating-point operations ([`TileWork::product_flops`]).
pub(super) fn visit_pair<B: Kernels>(
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
pub(super) fn product_flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}
