//! One call that measures what was asked for over a probe set and returns a serialisable
//! record with the cut-offs and methods stated.

use noisegeom_kernels::Kernels;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::alignment::{
    Directional, LossAlignment, Spectrum, directional, exact_alignment, exact_alignment_streamed,
    exact_spectrum,
};
use crate::gram::{FeatureBudget, TILE, gram};
use crate::hutchinson::{Stochastic, hutchinson};
use crate::lanczos::{Density, LanczosResult, lanczos, slq};
use crate::ops::norm;
use crate::report::{Cutoffs, Ratio, eps_of};
use crate::{GeometryError, ProbeOps};

/// The largest Gram (nc) whose full eigendecomposition `measure` computes (K/n is then
/// 3.2 GB in f64).
pub const EXACT_SPECTRUM_MAX_DIM: usize = 20_000;

/// What to compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// μ and μ_unc.
    pub mu: bool,
    /// g(θ, v) along `random_directions` random unit directions.
    pub directional: bool,
    /// Top-k eigenpairs of G and of H by Lanczos, with α_k and g_k along them; and the exact
    /// nonzero spectrum of G from the Gram when the Gram was computed.
    pub spectrum: bool,
    /// SLQ spectral densities of G and H.
    pub density: bool,
    pub k: usize,
    /// Lanczos steps (default 2k + 20, at most p).
    pub lanczos_iters: Option<usize>,
    pub random_directions: usize,
    /// `exact` (Gram), `stochastic` (Hutchinson), or `auto` (exact when it fits the budget).
    pub method: Method,
    pub hutchinson_samples: usize,
    pub slq_runs: usize,
    pub slq_iters: usize,
    /// Byte budget for the exact Gram's per-sample features: `auto` falls back to Hutchinson
    /// past it, `exact` computes μ with the features recomputed group by group.
    pub gram_max_bytes: usize,
    pub seed: u64,
    /// Also compute the Hessian's top eigenpairs (costs about twice as much as G's).
    pub hessian: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Auto,
    Exact,
    Stochastic,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            mu: true,
            directional: true,
            spectrum: true,
            density: false,
            k: 10,
            lanczos_iters: None,
            random_directions: 5,
            method: Method::Auto,
            hutchinson_samples: 64,
            slq_runs: 4,
            slq_iters: 60,
            gram_max_bytes: 4 << 30,
            seed: 0,
            hessian: true,
        }
    }
}

/// Eigen-directions from Lanczos, with the noise along each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EigenDirections {
    /// `G` or `H`.
    pub operator: String,
    pub lanczos: LanczosResult,
    /// α_k = u_kᵀΣ₁u_k along each Ritz vector.
    pub alpha: Vec<f64>,
    pub alpha_unc: Vec<f64>,
    /// u_kᵀGu_k (equals λ_k for G's eigenvectors).
    pub u_g_u: Vec<f64>,
    /// g_k = α_k / (2L u_kᵀGu_k).
    pub g: Vec<Ratio>,
    pub g_unc: Vec<Ratio>,
}

/// Curvature summaries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curvature {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_g: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_g_residual: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_h: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_max_h_residual: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda_min_h: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_g: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_g_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub g_fro: Option<f64>,
}

/// Everything measured at one θ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub n: usize,
    pub outputs: usize,
    pub params: usize,
    pub loss: f64,
    pub cutoffs: Cutoffs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_alignment: Option<LossAlignment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stochastic: Option<Stochastic>,
    pub curvature: Curvature,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_spectrum: Option<Spectrum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_g: Option<EigenDirections>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_h: Option<EigenDirections>,
    pub directional_random: Vec<Directional>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density_g: Option<Density>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density_h: Option<Density>,
    /// Seconds per part.
    pub seconds: Vec<(String, f64)>,
}

/// Measures at the θ and probe set of `ops`.
pub fn measure<B: Kernels>(
    ops: &ProbeOps<B>,
    opt: &MeasureOptions,
) -> Result<Measurement, GeometryError> {
    let eps = eps_of(std::mem::size_of::<B::FloatElem>());
    let cut = Cutoffs::new(eps);
    let two_l = 2.0 * ops.loss();
    let mut seconds = Vec::new();
    let mut m = Measurement {
        n: ops.n,
        outputs: ops.c,
        params: ops.p,
        loss: ops.loss(),
        cutoffs: cut.clone(),
        loss_alignment: None,
        stochastic: None,
        curvature: Curvature::default(),
        exact_spectrum: None,
        top_g: None,
        top_h: None,
        directional_random: Vec::new(),
        density_g: None,
        density_h: None,
        seconds: Vec::new(),
    };

    if opt.mu || opt.directional {
        let t = Instant::now();
        // The exact spectrum needs K itself; μ alone streams over K's tile pairs and, when
        // `exact` is asked for, recomputes the features group by group past the budget.
        let keep_k = opt.spectrum && ops.n * ops.c <= EXACT_SPECTRUM_MAX_DIM;
        let exact = match opt.method {
            Method::Stochastic => Ok(None),
            _ if keep_k => gram(ops, ops.chunk, opt.gram_max_bytes)
                .map(|k| Some((exact_alignment(&k, ops.residuals()), Some(k)))),
            _ => {
                let budget = FeatureBudget {
                    max_bytes: opt.gram_max_bytes,
                    recompute: opt.method == Method::Exact,
                };
                exact_alignment_streamed(ops, ops.chunk, TILE, budget).map(|la| Some((la, None)))
            }
        };
        let exact = match exact {
            Err(GeometryError::Budget(_)) if opt.method == Method::Auto => None,
            other => other?,
        };
        match exact {
            Some((la, k)) => {
                m.curvature.trace_g = Some(la.trace_g);
                m.curvature.g_fro = Some(la.g_fro2.sqrt());
                m.loss_alignment = Some(la);
                seconds.push(("gram_and_mu".into(), t.elapsed().as_secs_f64()));
                if let Some(k) = k {
                    let t = Instant::now();
                    m.exact_spectrum = Some(exact_spectrum(&k, ops.residuals(), &cut));
                    seconds.push(("exact_spectrum".into(), t.elapsed().as_secs_f64()));
                }
            }
            None => {
                let s = hutchinson(ops, opt.hutchinson_samples, opt.seed);
                m.curvature.trace_g = Some(s.trace_g.mean);
                m.curvature.trace_g_se = Some(s.trace_g.se);
                m.curvature.g_fro = Some(s.g_fro2.mean.max(0.0).sqrt());
                m.loss_alignment = Some(s.alignment.clone());
                m.stochastic = Some(s);
                seconds.push(("hutchinson".into(), t.elapsed().as_secs_f64()));
            }
        }
    }

    if opt.directional {
        let t = Instant::now();
        let zero = cut.zero_form(m.curvature.trace_g.unwrap_or(0.0));
        let mut rng = noisegeom_data::seeded_rng(opt.seed, "random-directions");
        let dirs: Vec<Vec<f64>> = (0..opt.random_directions)
            .map(|_| {
                let mut v = noisegeom_data::normal_vec(&mut rng, ops.p, 1.0);
                let s = norm(&v);
                v.iter_mut().for_each(|x| *x /= s);
                v
            })
            .collect();
        for q in ops.quad_forms_many(&dirs) {
            m.directional_random.push(directional(&q, two_l, zero));
        }
        seconds.push(("directional".into(), t.elapsed().as_secs_f64()));
    }

    if opt.spectrum {
        let iters = opt.lanczos_iters.unwrap_or(2 * opt.k + 20).min(ops.p);
        let zero = cut.zero_form(m.curvature.trace_g.unwrap_or(0.0));
        let t = Instant::now();
        let g = lanczos(
            ops.p,
            &mut |v| ops.gv(v),
            opt.k,
            iters,
            opt.seed,
            cut.ritz_tolerance,
        );
        m.curvature.lambda_max_g = g.top.first().map(|r| r.value);
        m.curvature.lambda_max_g_residual = g.top.first().map(|r| r.residual);
        m.top_g = Some(along("G", g, ops, two_l, zero));
        seconds.push(("lanczos_g".into(), t.elapsed().as_secs_f64()));
        if opt.hessian {
            let t = Instant::now();
            let h = lanczos(
                ops.p,
                &mut |v| ops.hv(v),
                opt.k,
                iters,
                opt.seed ^ 1,
                cut.ritz_tolerance,
            );
            m.curvature.lambda_max_h = h.top.first().map(|r| r.value);
            m.curvature.lambda_max_h_residual = h.top.first().map(|r| r.residual);
            m.curvature.lambda_min_h = Some(h.smallest);
            m.top_h = Some(along("H", h, ops, two_l, zero));
            seconds.push(("lanczos_h".into(), t.elapsed().as_secs_f64()));
        }
    }

    if opt.density {
        let t = Instant::now();
        let iters = opt.slq_iters.min(ops.p);
        m.density_g = Some(slq(
            ops.p,
            &mut |v| ops.gv(v),
            opt.slq_runs,
            iters,
            opt.seed,
            400,
        ));
        if opt.hessian {
            m.density_h = Some(slq(
                ops.p,
                &mut |v| ops.hv(v),
                opt.slq_runs,
                iters,
                opt.seed ^ 1,
                400,
            ));
        }
        seconds.push(("slq".into(), t.elapsed().as_secs_f64()));
    }
    // A loop that saw a stop request returned early: report the interruption, not that.
    noisegeom_data::stop::check()?;
    m.seconds = seconds;
    Ok(m)
}

fn along<B: Kernels>(
    operator: &str,
    lanczos: LanczosResult,
    ops: &ProbeOps<B>,
    two_l: f64,
    zero: f64,
) -> EigenDirections {
    let mut d = EigenDirections {
        operator: operator.into(),
        alpha: Vec::new(),
        alpha_unc: Vec::new(),
        u_g_u: Vec::new(),
        g: Vec::new(),
        g_unc: Vec::new(),
        lanczos,
    };
    let vectors: Vec<&[f64]> = d.lanczos.top.iter().map(|r| r.vector.as_slice()).collect();
    for q in ops.quad_forms_many(&vectors) {
        let dir = directional(&q, two_l, zero);
        d.alpha.push(q.sigma());
        d.alpha_unc.push(q.m);
        d.u_g_u.push(q.g);
        d.g.push(dir.g);
        d.g_unc.push(dir.g_unc);
    }
    d
}
