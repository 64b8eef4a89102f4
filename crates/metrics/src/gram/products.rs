//! The products of two tiles' features for one output: per layer, one GEMM on the device
//! (or on host memory), summed on the host in f64 into rows of K.

use super::*;

/// Rows of the host products formed in one GEMM, about ([`Products::group`]).
const GROUP_ROWS: usize = 320;

/// A tile pair's shape: whether it is on the diagonal, the outputs, the row and column
/// tiles' sample counts.
#[derive(Clone, Copy)]
pub(super) struct PairShape {
    pub(super) diag: bool,
    pub(super) c: usize,
    pub(super) bi: usize,
    pub(super) bj: usize,
}

/// One layer's products in a tile pair.
pub(super) enum Products<'a, B: Kernels> {
    /// The output layer between two chunks whose signals are the selection:
    /// δ_{i,o}·δ_{j,o2} = [o = o2], no product formed.
    Units,
    /// Off the diagonal, a layer of gradient rows: one `[c·bi, c·bj]` product for all output
    /// pairs. Their rows are long (a convolution's per-sample gradients), and one GEMM packs
    /// its right-hand side once, where c GEMMs would pack it c times.
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
pub(super) enum Source<'a, B: Kernels> {
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

impl<'a, B: Kernels> Products<'a, B> {
    /// The products of two tiles' features of one layer; a [`Products::Whole`] product is
    /// formed here, its operations added to `flops`.
    pub(super) fn new(
        a: &'a Feature<B>,
        b: &'a Feature<B>,
        diag: bool,
        host: bool,
        flops: &mut f64,
    ) -> Self {
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
                    let rows = noisegeom_kernels::read(di.clone());
                    let cols = (!diag).then(|| noisegeom_kernels::read(dj.clone()));
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
                Products::Whole(if host {
                    let (a, b) = (
                        noisegeom_kernels::read(ri.clone()),
                        noisegeom_kernels::read(rj.clone()),
                    );
                    let mut out = match a.dtype {
                        DType::F64 => TensorData::new(vec![0.0f64; m * n], [m, n]),
                        _ => TensorData::new(vec![0.0f32; m * n], [m, n]),
                    };
                    match a.dtype {
                        DType::F64 => host_rows_product::<f64>(&a, 0..m, &b, 0..n, k, &mut out),
                        _ => host_rows_product::<f32>(&a, 0..m, &b, 0..n, k, &mut out),
                    }
                    out
                } else {
                    noisegeom_kernels::read(ri.clone().matmul(rj.clone().transpose()))
                })
            }
            (Feature::Rows(ri), Feature::Rows(_)) if host => per_output(
                Source::Host {
                    rows: noisegeom_kernels::read(ri.clone()),
                    cols: None,
                    d: ri.dims()[1],
                },
                false,
            ),
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

    /// Outputs whose host products are formed at once (not `mirror`): on the turn of the
    /// group's first output g0, the rows of outputs g0..g0 + group against the outputs from
    /// g0's `from` on, held in `outs[0]`. One GEMM about [`GROUP_ROWS`] tall runs at a
    /// much higher rate than as many short ones (af292e1's commit message has the
    /// measurement), which outweighs the blocks below the diagonal it also forms.
    fn group(source: &Source<'a, B>, mirror: bool, bi: usize) -> usize {
        match source {
            Source::Host { .. } if !mirror => (GROUP_ROWS / bi.max(1)).max(1),
            _ => 1,
        }
    }

    /// Forms output o's products (per-output layers only); returns their floating-point
    /// operations.
    pub(super) fn form(&mut self, o: usize, shape: PairShape) -> f64 {
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
        let group = Self::group(source, *mirror, bi);
        let depth = match source {
            Source::Device(ri, _) => ri.dims()[1],
            Source::Host { d, .. } => *d,
        };
        match source {
            Source::Device(ri, rj) => {
                let p = noisegeom_kernels::read(
                    ri.clone()
                        .narrow(0, o * bi, bi)
                        .matmul(rj.clone().narrow(0, from * bj, width).transpose()),
                );
                if slot < outs.len() {
                    outs[slot] = p;
                } else {
                    outs.push(p);
                }
            }
            Source::Host { rows, cols, d } => {
                if !o.is_multiple_of(group) {
                    return 0.0; // formed on the group's first output
                }
                let last = (o + group).min(c);
                // A reused buffer is sized for the widest group, a kept one for its own.
                if slot == outs.len() {
                    let len = if *mirror {
                        bi * width
                    } else {
                        group * bi * c * bj
                    };
                    outs.push(match rows.dtype {
                        DType::F64 => TensorData::new(vec![0.0f64; len], [len]),
                        _ => TensorData::new(vec![0.0f32; len], [len]),
                    });
                }
                let cols = cols.as_ref().unwrap_or(rows);
                let out = &mut outs[slot];
                let (r, k) = (o * bi..last * bi, from * bj..from * bj + width);
                match rows.dtype {
                    DType::F64 => host_rows_product::<f64>(rows, r, cols, k, *d, out),
                    _ => host_rows_product::<f32>(rows, r, cols, k, *d, out),
                }
                return product_flops((last - o) * bi, width, depth);
            }
        }
        product_flops(bi, width, depth)
    }

    /// The term of block (o, o2) in output o's rows, o2 ≥ o0, or `None` where the layer
    /// contributes nothing.
    pub(super) fn term<'t>(
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
            Products::PerOutput {
                source,
                mirror,
                outs,
            } => {
                if !*mirror {
                    // Output o's rows are in the GEMM of its group (a group of one on the
                    // device): rows of outputs g0.. against the outputs from g0's `from` on.
                    let group = Self::group(source, false, bi);
                    let g0 = o - o % group;
                    let (from, _) = Self::span(false, diag, g0);
                    let stride = (c - from) * bj;
                    return Some(Term {
                        data: Some(&outs[0]),
                        offset: (o - g0) * bi * stride + (o2 - from) * bj,
                        stride,
                        weight,
                    });
                }
                // Symmetric products, each output's kept in slot o.
                let (from, slot) = Self::span(true, diag, o);
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
pub(super) fn host_rows_product<E: GemmElem + burn::tensor::Element>(
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
pub(super) struct Term<'a> {
    pub(super) data: Option<&'a TensorData>,
    pub(super) offset: usize,
    pub(super) stride: usize,
    pub(super) weight: Option<&'a [f64]>,
}
