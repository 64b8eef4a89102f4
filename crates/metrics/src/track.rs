//! The few numbers worth following during training, at the lowest cost that keeps them
//! exact: μ, Tr G and ||G||_F from the Gram, the top eigenpairs of G (with α_k and g_k)
//! from Lanczos on the dense K/n rather than on G itself, and λ_max(H) from Lanczos on
//! exact Hessian-vector products. When the Gram does not fit its byte budget, μ falls back
//! to Hutchinson (with standard errors) and the top of G to Lanczos on exact Gv products.
//!
//! The Lanczos run on H starts, by default, from G's top eigenvector (Jᵀu₁ for K's top
//! eigenvector u₁, one vector-Jacobian product): near a minimum of the square loss H ≈ G,
//! so the run starts close to H's top direction. It depends on θ alone (no state carried
//! between probes, so a resumed run probes bit for bit as an uninterrupted one), and the
//! reported residual is the same explicit ||Hu − θu|| as from a random start. The run ends
//! once its top pair has converged by the Lanczos estimate (`iters` steps at most), and the
//! steps it took are reported.

use noisegeom_kernels::Kernels;
use serde::{Deserialize, Serialize};

use crate::alignment::{directional, exact_alignment, top_spectrum};
use crate::gram::gram;
use crate::hutchinson::hutchinson;
use crate::lanczos::{Until, lanczos, lanczos_from, random_start};
use crate::report::{Cutoffs, Ratio, eps_of};
use crate::{GeometryError, ProbeOps};

/// What [`track`] computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackOptions {
    /// Top eigen-directions of G along which g_k is reported.
    pub k: usize,
    /// Lanczos steps, on K/n for G and on H.
    pub iters: usize,
    /// Also λ_max(H) (Lanczos on exact Hv; the most expensive part by far).
    pub hessian: bool,
    /// Start H's Lanczos run from G's top eigenvector rather than a seeded random vector.
    pub warm_start: bool,
    pub gram_max_bytes: usize,
    pub hutchinson_samples: usize,
    pub seed: u64,
}

/// The tracked quantities at one θ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub loss: f64,
    pub mu: Ratio,
    pub mu_unc: Ratio,
    pub c_mu: Ratio,
    /// Standard error of μ when it is a Hutchinson estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mu_se: Option<f64>,
    pub trace_g: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_g_se: Option<f64>,
    pub g_fro: f64,
    pub lambda_max_g: Option<f64>,
    pub lambda_max_g_residual: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_h: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_h_residual: Option<f64>,
    /// Lanczos steps of H's run (Hv products, the explicit residual's not counted): the
    /// budget `iters`, or fewer when λ_max(H) converged first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_h_steps: Option<usize>,
    /// Top eigenvalues of G, descending, with α_k = u_kᵀΣ₁u_k and g_k = α_k/(2Lλ_k).
    pub lambda_g: Vec<f64>,
    pub alpha_g: Vec<f64>,
    pub g_k: Vec<Ratio>,
    /// `exact (Gram)` or `stochastic (Hutchinson)`.
    pub method: String,
}

pub fn track<B: Kernels>(ops: &ProbeOps<B>, opt: &TrackOptions) -> Result<Tracked, GeometryError> {
    let cut = Cutoffs::new(eps_of(std::mem::size_of::<B::FloatElem>()));
    let loss = ops.loss();
    let two_l = 2.0 * loss;
    let start: Option<Vec<f64>>;
    let mut t = match gram(ops, ops.chunk, opt.gram_max_bytes) {
        Ok(k) => {
            let la = exact_alignment(&k, ops.residuals());
            let (spec, run) = top_spectrum(&k, ops.residuals(), &cut, opt.k, opt.iters, opt.seed);
            // G's top eigenvector is Jᵀu₁ (up to scale) for K's top eigenvector u₁.
            let want = opt.hessian && opt.warm_start;
            start = run.top.first().filter(|_| want).map(|r| ops.vjp(&r.vector));
            Tracked {
                loss,
                mu: la.mu,
                mu_unc: la.mu_unc,
                c_mu: la.c_mu,
                mu_se: None,
                trace_g: la.trace_g,
                trace_g_se: None,
                g_fro: la.g_fro2.sqrt(),
                lambda_max_g: run.top.first().map(|r| r.value),
                lambda_max_g_residual: run.top.first().map(|r| r.residual),
                lambda_max_h: None,
                lambda_max_h_residual: None,
                lambda_max_h_steps: None,
                lambda_g: spec.lambda,
                alpha_g: spec.alpha,
                g_k: spec.g,
                method: la.method,
            }
        }
        Err(GeometryError::Budget(_)) => {
            let s = hutchinson(ops, opt.hutchinson_samples, opt.seed);
            let zero = cut.zero_form(s.trace_g.mean);
            let run = lanczos(
                ops.p,
                &mut |v| ops.gv(v),
                opt.k,
                opt.iters.min(ops.p),
                opt.seed,
                cut.ritz_tolerance,
            );
            start = run.top.first().map(|r| r.vector.clone());
            let (mut lambda_g, mut alpha_g, mut g_k) = (Vec::new(), Vec::new(), Vec::new());
            let vectors: Vec<&[f64]> = run.top.iter().map(|r| r.vector.as_slice()).collect();
            for (r, q) in run.top.iter().zip(ops.quad_forms_many(&vectors)) {
                lambda_g.push(r.value);
                alpha_g.push(q.sigma());
                g_k.push(directional(&q, two_l, zero).g);
            }
            Tracked {
                loss,
                mu: s.alignment.mu.clone(),
                mu_unc: s.alignment.mu_unc.clone(),
                c_mu: s.alignment.c_mu.clone(),
                mu_se: Some(s.mu_se),
                trace_g: s.trace_g.mean,
                trace_g_se: Some(s.trace_g.se),
                g_fro: s.g_fro2.mean.max(0.0).sqrt(),
                lambda_max_g: run.top.first().map(|r| r.value),
                lambda_max_g_residual: run.top.first().map(|r| r.residual),
                lambda_max_h: None,
                lambda_max_h_residual: None,
                lambda_max_h_steps: None,
                lambda_g,
                alpha_g,
                g_k,
                method: s.alignment.method,
            }
        }
        Err(e) => return Err(e),
    };
    if opt.hessian {
        let iters = opt.iters.min(ops.p);
        let hv = &mut |v: &[f64]| ops.hv(v);
        // A zero start (G = 0) has no direction: then the seeded random one.
        let start = start
            .filter(|v| opt.warm_start && v.iter().any(|x| *x != 0.0))
            .unwrap_or_else(|| random_start(ops.p, opt.seed ^ 1));
        // The run ends once λ_max(H) has converged (`iters` steps at most).
        let h = lanczos_from(
            ops.p,
            hv,
            start,
            1,
            iters,
            cut.ritz_tolerance,
            Until::Converged,
        );
        t.lambda_max_h = h.top.first().map(|r| r.value);
        t.lambda_max_h_residual = h.top.first().map(|r| r.residual);
        t.lambda_max_h_steps = Some(h.iterations);
    }
    // A loop that saw a stop request returned early: report the interruption, not that.
    noisegeom_data::stop::check()?;
    Ok(t)
}
