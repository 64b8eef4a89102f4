//! Loss alignment μ, the exact nonzero spectrum of G with the noise energy along each
//! eigen-direction, and directional alignment g(θ, v) (SPEC §2–3).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gram::Gram;
use crate::lanczos::{LanczosResult, lanczos};
use crate::linalg::sym_eig;
use crate::ops::QuadForms;
use crate::report::{Cutoffs, Ratio};

/// Loss alignment and its ingredients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossAlignment {
    /// μ = Tr(Σ₁G) / (2L ||G||_F²), centred noise.
    pub mu: Ratio,
    /// μ_unc = Tr(MG) / (2L ||G||_F²), uncentred (one-sample second moment).
    pub mu_unc: Ratio,
    /// c·μ, the output-normalised loss alignment **[choice]** (≈ 1 when residuals spread
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

/// μ and μ_unc exactly from the Gram matrix and the residuals (SPEC §3):
/// ||G||_F² = ||K||_F²/n², Tr(MG) = (1/n²) Σ_ij ||K_ji e_i||², ∇LᵀG∇L = ||K e||²/n³.
pub fn exact_alignment(k: &Gram, e: &[f64]) -> LossAlignment {
    let (n, c, dim) = (k.n, k.c, k.dim());
    let nf = n as f64;
    let trace_g = (0..dim).map(|r| k.at(r, r)).sum::<f64>() / nf;
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
    let g_fro2 = per_row.iter().map(|r| r.0).sum::<f64>() / (nf * nf);
    let tr_mg = per_row.iter().map(|r| r.1).sum::<f64>() / (nf * nf);
    let grad_g_grad = per_row.iter().map(|r| r.2 * r.2).sum::<f64>() / (nf * nf * nf);
    let tr_sg = tr_mg - grad_g_grad;
    let two_l = e.iter().map(|v| v * v).sum::<f64>() / nf;
    Traces {
        tr_sg,
        tr_mg,
        grad_g_grad,
        g_fro2,
        trace_g,
        two_l,
    }
    .finish(c, "exact (Gram)")
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
