//! Loss alignment μ, the exact nonzero spectrum of G with the noise energy along each
//! eigen-direction, and directional alignment g(θ, v) (docs/definitions.md §2–§4).

use noisegeom_kernels::Kernels;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

#[cfg(doc)]
use crate::gram::TILE;
use crate::gram::{FeatureBudget, Gram, OutputRows, PairVisitor, TileWork, for_each_tile_pair};
use crate::lanczos::{LanczosResult, lanczos};
use crate::linalg::sym_eig;
use crate::ops::QuadForms;
use crate::report::{Cutoffs, Ratio};
use crate::{GeometryError, ProbeOps};
use noisegeom_models::in_blocks;

/// Loss alignment and its ingredients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossAlignment {
    /// μ = Tr(Σ₁G) / (2L ||G||_F²), centred noise.
    pub mu: Ratio,
    /// μ_unc = Tr(MG) / (2L ||G||_F²), uncentred (one-sample second moment).
    pub mu_unc: Ratio,
    /// c·μ, the output-normalised loss alignment **\[choice\]** (≈ 1 when residuals spread
    /// evenly over c outputs).
    pub c_mu: Ratio,
    pub trace_sigma_g: f64,
    pub trace_m_g: f64,
    pub grad_g_grad: f64,
    pub g_fro2: f64,
    pub trace_g: f64,
    /// 2L = ||e||²/n.
    pub two_l: f64,
    pub outputs: usize,
    /// `exact (Gram)` or `stochastic (Hutchinson)`.
    pub method: String,
}

/// μ and μ_unc exactly from the Gram matrix and the residuals (docs/definitions.md §7.2):
/// ||G||_F² = ||K||_F²/n², Tr(MG) = (1/n²) Σ_ij ||K_ji e_i||², ∇LᵀG∇L = ||K e||²/n³.
pub fn exact_alignment(k: &Gram, e: &[f64]) -> LossAlignment {
    let (n, c, dim) = (k.n, k.c, k.dim());
    let trace = (0..dim).map(|r| k.at(r, r)).sum::<f64>();
    // Per row (j,o) of K: its squared norm, Σ_i q² and (Ke)_(j,o) = Σ_i q, with
    // q[(j,o), i] = Σ_o' K[(j,o),(i,o')] e[i,o']. Rows in parallel; each row's sums run in a
    // fixed order, so the result does not depend on the thread count.
    let per_row: Vec<(f64, f64, f64)> =
        k.k.par_chunks_exact(dim.max(1))
            .map(|row| {
                let fro2 = row.iter().map(|v| v * v).sum::<f64>();
                let (mut q2, mut ke) = (0.0, 0.0);
                for (ri, ei) in row.chunks_exact(c).zip(e.chunks_exact(c)) {
                    let q: f64 = ri.iter().zip(ei).map(|(a, b)| a * b).sum();
                    q2 += q * q;
                    ke += q;
                }
                (fro2, q2, ke)
            })
            .collect();
    KSums {
        trace,
        fro2: per_row.iter().map(|r| r.0).sum(),
        q2: per_row.iter().map(|r| r.1).sum(),
        ke2: per_row.iter().map(|r| r.2 * r.2).sum(),
    }
    .alignment(n, c, e, "exact (Gram)")
}

/// μ and μ_unc exactly, with the same sums as [`exact_alignment`] accumulated tile pair by
/// tile pair ([`for_each_tile_pair`], `tile` samples a side; [`TILE`] is the default). K is
/// never stored. When the per-sample features exceed the budget and `budget.recompute` is
/// set, they are recomputed group by group, and the method says how many groups.
pub fn exact_alignment_streamed<B: Kernels>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    budget: FeatureBudget,
) -> Result<LossAlignment, GeometryError> {
    exact_alignment_streamed_work(ops, chunk, tile, budget).map(|(la, _)| la)
}

/// [`exact_alignment_streamed`], with the work its pass over K did (the benchmark reports
/// the products' rate from it).
pub fn exact_alignment_streamed_work<B: Kernels>(
    ops: &ProbeOps<B>,
    chunk: usize,
    tile: usize,
    budget: FeatureBudget,
) -> Result<(LossAlignment, TileWork), GeometryError> {
    let (n, c) = (ops.n, ops.c);
    let e = ops.residuals();
    let mut acc = StreamedTraces {
        c,
        e,
        trace: 0.0,
        fro2: 0.0,
        q2: 0.0,
        ke: vec![0.0; n * c],
        et: Vec::new(),
        upper: Vec::new(),
        lower: Vec::new(),
    };
    let work = for_each_tile_pair(ops, chunk, tile, budget, &mut acc)?;
    let sums = KSums {
        trace: acc.trace,
        fro2: acc.fro2,
        q2: acc.q2,
        ke2: acc.ke.iter().map(|v| v * v).sum(),
    };
    let groups = work.groups;
    let method = if groups > 1 {
        format!("exact (Gram, streamed; features recomputed in {groups} groups)")
    } else {
        "exact (Gram, streamed)".to_string()
    };
    Ok((sums.alignment(n, c, e, &method), work))
}

/// The sums behind [`exact_alignment`], over K's tile pairs: Tr K, ||K||_F², Σ q² and Ke,
/// with q[(j,o), i] = Σ_o' K[(j,o),(i,o')] e[i,o'] for every row (j,o) and column sample i.
///
/// Each output's rows are visited in turn ([`PairVisitor::output`]), rows in parallel, in
/// fixed groups of `R`, summed in order: the result does not depend on the thread count.
/// Off the diagonal, row (i, o) gives q[(i,o), ·] whole, and its mirror image (rows of
/// `cols` against the column samples of `rows`) is accumulated over o in
/// `lower[i][o2·bj + j]` = Σ_o e[i,o] B(o,o2)[i,j], with B(o,o2) the block of the output pair
/// (o, o2). A diagonal pair forms only o ≤ o2; below, K[(i,o),(j,o2)] = B(o2,o)[j,i]. Row
/// (i, o) of q then splits into an upper part, P_o[i, j] = Σ_{o2 ≥ o} B(o,o2)[i,j] e[j,o2],
/// kept in `upper`, and a lower one L_o[j, i], with L_o[j, :] = Σ_{o2 < o} e[j,o2] B(o2,o)[j, :]
/// accumulated in `lower` like the mirror image; q_o = P_o + L_oᵀ is formed once per output
/// at the end of the pair ([`PairVisitor::end_pair`]).
struct StreamedTraces<'e> {
    c: usize,
    /// The residuals, n×c.
    e: &'e [f64],
    trace: f64,
    fro2: f64,
    q2: f64,
    ke: Vec<f64>,
    /// The column samples' residuals, output-major: et[o2·bj + j] = e[cols.start + j, o2].
    et: Vec<f64>,
    /// `[bi, c·bj]` each, reused from pair to pair.
    upper: Vec<f64>,
    lower: Vec<f64>,
}

/// Rows per parallel group.
const R: usize = 8;

impl PairVisitor for StreamedTraces<'_> {
    fn begin_pair(&mut self, rows: Range<usize>, cols: Range<usize>, _diag: bool) {
        let c = self.c;
        let (bi, bj) = (rows.len(), cols.len());
        let per_row = c * bj;
        self.et.clear();
        self.et.resize(per_row, 0.0);
        for j in 0..bj {
            for o2 in 0..c {
                self.et[o2 * bj + j] = self.e[(cols.start + j) * c + o2];
            }
        }
        self.upper.resize(bi * per_row, 0.0);
        self.lower.clear();
        self.lower.resize(bi * per_row, 0.0);
    }

    fn output(&mut self, r: &OutputRows<'_>) {
        let (c, o, o0, diag) = (self.c, r.o, r.o0(), r.diag);
        let bj = r.cols.len();
        let per_row = c * bj;
        let (e, et) = (self.e, &self.et);
        let ke_rows = &mut self.ke[r.rows.start * c..r.rows.end * c];
        let parts: Vec<(f64, f64, f64)> = ke_rows
            .par_chunks_mut(R * c)
            .zip(self.upper.par_chunks_mut(R * per_row))
            .zip(self.lower.par_chunks_mut(R * per_row))
            .enumerate()
            .map(|(ci, ((ke_rows, upper), lower))| {
                let (mut fro2, mut q2, mut tr) = (0.0, 0.0, 0.0);
                let mut row = vec![0.0; bj];
                let mut q = vec![0.0; bj];
                for (li, ke_i) in ke_rows.chunks_exact_mut(c).enumerate() {
                    let i = ci * R + li;
                    let eio = e[(r.rows.start + i) * c + o];
                    let lower = &mut lower[li * per_row..][..per_row];
                    q.fill(0.0);
                    for o2 in o0..c {
                        r.row_into(o2, i, &mut row);
                        // Off the diagonal, every block also stands for its mirror image.
                        fro2 += if diag && o2 == o { 1.0 } else { 2.0 } * sum_sq(&row);
                        for ((qj, v), ej) in q.iter_mut().zip(&row).zip(&et[o2 * bj..]) {
                            *qj += v * ej;
                        }
                        if diag && o2 == o {
                            tr += row[i];
                        } else {
                            for (m, v) in lower[o2 * bj..(o2 + 1) * bj].iter_mut().zip(&row) {
                                *m += v * eio;
                            }
                        }
                    }
                    if diag {
                        upper[li * per_row + o * bj..][..bj].copy_from_slice(&q);
                    } else {
                        q2 += sum_sq(&q);
                        ke_i[o] += q.iter().sum::<f64>();
                    }
                }
                (fro2, q2, tr)
            })
            .collect();
        for (fro2, q2, tr) in parts {
            self.fro2 += fro2;
            self.q2 += q2;
            self.trace += tr;
        }
    }

    fn end_pair(&mut self, rows: Range<usize>, cols: Range<usize>, diag: bool) {
        let c = self.c;
        let (bi, bj) = (rows.len(), cols.len());
        let per_row = c * bj;
        let (upper, lower) = (&self.upper, &self.lower);
        if !diag {
            // The mirror image's rows (j, o2) against the column samples i: Σ_i q² and Ke.
            let parts: Vec<(f64, Vec<f64>)> = lower[..bi * per_row]
                .par_chunks(R * per_row)
                .map(|rows| {
                    let mut sums = vec![0.0; per_row];
                    let mut q2 = 0.0;
                    for row in rows.chunks_exact(per_row) {
                        q2 += sum_sq(row);
                        for (s, v) in sums.iter_mut().zip(row) {
                            *s += v;
                        }
                    }
                    (q2, sums)
                })
                .collect();
            for (q2, sums) in parts {
                self.q2 += q2;
                for (o2, m) in sums.chunks_exact(bj.max(1)).enumerate() {
                    for (j, v) in m.iter().enumerate() {
                        self.ke[(cols.start + j) * c + o2] += v;
                    }
                }
            }
            return;
        }
        // q_o[i, j] = P_o[i, j] + L_o[j, i], outputs in parallel: Σ q² and each row's sum.
        let per_output: Vec<(f64, Vec<f64>)> = (0..c)
            .into_par_iter()
            .map(|o| {
                let (mut s, mut sums) = (0.0, vec![0.0; bi]);
                in_blocks(bi, bj, |i, j| {
                    let v = upper[i * per_row + o * bj + j] + lower[j * per_row + o * bj + i];
                    s += v * v;
                    sums[i] += v;
                });
                (s, sums)
            })
            .collect();
        for (o, (s, sums)) in per_output.into_iter().enumerate() {
            self.q2 += s;
            for (i, v) in sums.into_iter().enumerate() {
                self.ke[(rows.start + i) * c + o] += v;
            }
        }
    }
}

/// Σ v², in four lanes (so that it vectorises; the order is fixed).
fn sum_sq(v: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let mut it = v.chunks_exact(4);
    for x in &mut it {
        for (l, y) in lanes.iter_mut().zip(x) {
            *l += y * y;
        }
    }
    let tail: f64 = it.remainder().iter().map(|y| y * y).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// The sums of K = (J_i J_jᵀ) that μ needs: Tr K, ||K||_F², Σ_ij ||K_ji e_i||² and ||Ke||².
struct KSums {
    trace: f64,
    fro2: f64,
    q2: f64,
    ke2: f64,
}

impl KSums {
    /// Scaled to G (docs/definitions.md §7.3), with the residuals `e` (n×c) for 2L = ||e||²/n.
    fn alignment(self, n: usize, c: usize, e: &[f64], method: &str) -> LossAlignment {
        let nf = n as f64;
        let tr_mg = self.q2 / (nf * nf);
        let grad_g_grad = self.ke2 / (nf * nf * nf);
        Traces {
            tr_sg: tr_mg - grad_g_grad,
            tr_mg,
            grad_g_grad,
            g_fro2: self.fro2 / (nf * nf),
            trace_g: self.trace / nf,
            two_l: e.iter().map(|v| v * v).sum::<f64>() / nf,
        }
        .finish(c, method)
    }
}

/// The traces μ is built from, however they were obtained.
pub(crate) struct Traces {
    pub tr_sg: f64,
    pub tr_mg: f64,
    pub grad_g_grad: f64,
    pub g_fro2: f64,
    pub trace_g: f64,
    pub two_l: f64,
}

impl Traces {
    pub(crate) fn finish(self, c: usize, method: &str) -> LossAlignment {
        let den = self.two_l * self.g_fro2;
        let why = if self.two_l <= 0.0 {
            "L = 0"
        } else {
            "||G||_F = 0"
        };
        let mu = Ratio::new(self.tr_sg, den, 0.0, why);
        LossAlignment {
            c_mu: mu.scaled(c as f64),
            mu,
            mu_unc: Ratio::new(self.tr_mg, den, 0.0, why),
            trace_sigma_g: self.tr_sg,
            trace_m_g: self.tr_mg,
            grad_g_grad: self.grad_g_grad,
            g_fro2: self.g_fro2,
            trace_g: self.trace_g,
            two_l: self.two_l,
            outputs: c,
            method: method.to_string(),
        }
    }
}

/// The nonzero spectrum of G with the noise energy along each eigen-direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    /// λ_k, descending; only eigenvalues above the nonzero cut-off.
    pub lambda: Vec<f64>,
    /// α_k = u_kᵀΣ₁u_k.
    pub alpha: Vec<f64>,
    /// α_k^unc = u_kᵀMu_k.
    pub alpha_unc: Vec<f64>,
    /// g_k = α_k / (2L λ_k).
    pub g: Vec<Ratio>,
    /// Eigenvalues of K/n at or below the cut-off (numerically zero), not reported above.
    pub dropped: usize,
    pub nonzero_cutoff: f64,
    pub method: String,
}

/// eig(K/n) → λ_k, w_k; then, with no p-vector formed (J u_k = sqrt(nλ_k) w_k):
/// α_k = λ_k [Σ_i (e_i·w_{k,i})² − (e·w_k)²/n] and g_k = [n Σ_i (e_i·w_{k,i})² − (e·w_k)²] / ||e||².
pub fn exact_spectrum(k: &Gram, e: &[f64], cut: &Cutoffs) -> Spectrum {
    let nf = k.n as f64;
    let (vals, vecs) = sym_eig(k.dim(), |r, s| k.at(r, s) / nf);
    let lmax = vals.first().copied().unwrap_or(0.0).max(0.0);
    let threshold = lmax * k.dim() as f64 * cut.eps;
    let pairs = vals.iter().copied().zip(vecs.iter().map(Vec::as_slice));
    spectrum_from_pairs(
        k,
        e,
        pairs,
        threshold,
        "exact: eigendecomposition of K/n".into(),
    )
}

/// The top `top` eigenpairs of G from the Gram, by Lanczos on the dense nc×nc matrix K/n
/// (`iters` steps, full reorthogonalisation), with α_k and g_k as in [`exact_spectrum`].
/// No product with G is needed, so this costs O(iters·(nc)²) once the Gram exists. The
/// Lanczos record (with each pair's explicit residual on K/n) is returned beside it.
pub fn top_spectrum(
    k: &Gram,
    e: &[f64],
    cut: &Cutoffs,
    top: usize,
    iters: usize,
    seed: u64,
) -> (Spectrum, LanczosResult) {
    let (dim, nf) = (k.dim(), k.n as f64);
    let mut matvec = |v: &[f64]| -> Vec<f64> {
        k.k.chunks_exact(dim.max(1))
            .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() / nf)
            .collect()
    };
    let run = lanczos(
        dim,
        &mut matvec,
        top,
        iters.min(dim),
        seed,
        cut.ritz_tolerance,
    );
    let lmax = run.top.first().map_or(0.0, |r| r.value.max(0.0));
    let threshold = lmax * dim as f64 * cut.eps;
    let pairs = run.top.iter().map(|r| (r.value, r.vector.as_slice()));
    let s = spectrum_from_pairs(
        k,
        e,
        pairs,
        threshold,
        format!("Lanczos on K/n, top {top} of {} steps", run.iterations),
    );
    (s, run)
}

fn spectrum_from_pairs<'a>(
    k: &Gram,
    e: &[f64],
    pairs: impl Iterator<Item = (f64, &'a [f64])>,
    threshold: f64,
    method: String,
) -> Spectrum {
    let (n, c) = (k.n, k.c);
    let nf = n as f64;
    let e2: f64 = e.iter().map(|v| v * v).sum();
    let mut s = Spectrum {
        lambda: Vec::new(),
        alpha: Vec::new(),
        alpha_unc: Vec::new(),
        g: Vec::new(),
        dropped: 0,
        nonzero_cutoff: threshold,
        method,
    };
    for (lam, w) in pairs {
        if lam <= threshold {
            s.dropped += 1;
            continue;
        }
        let mut per = 0.0;
        let mut ew = 0.0;
        for i in 0..n {
            let d: f64 = (0..c).map(|o| e[i * c + o] * w[i * c + o]).sum();
            per += d * d;
            ew += d;
        }
        s.lambda.push(lam);
        s.alpha.push(lam * (per - ew * ew / nf));
        s.alpha_unc.push(lam * per);
        s.g.push(Ratio::new(nf * per - ew * ew, e2, 0.0, "L = 0"));
    }
    s
}

/// Directional alignment along one direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Directional {
    /// g(θ, v) = vᵀΣ₁v / (2L vᵀGv).
    pub g: Ratio,
    /// g_unc = vᵀMv / (2L vᵀGv).
    pub g_unc: Ratio,
    pub v_g_v: f64,
    pub v_sigma_v: f64,
    pub v_m_v: f64,
}

/// g and g_unc from the quadratic forms along a unit v. `zero_form` is the threshold below
/// which vᵀGv counts as zero.
pub fn directional(q: &QuadForms, two_l: f64, zero_form: f64) -> Directional {
    let den = two_l * q.g;
    let why = if two_l <= 0.0 {
        "L = 0"
    } else {
        "v'Gv = 0 (below the zero cut-off)"
    };
    let zero = if q.g <= zero_form { f64::INFINITY } else { 0.0 };
    Directional {
        g: Ratio::new(q.sigma(), den, zero, why),
        g_unc: Ratio::new(q.m, den, zero, why),
        v_g_v: q.g,
        v_sigma_v: q.sigma(),
        v_m_v: q.m,
    }
}
