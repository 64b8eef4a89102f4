//! Hutchinson estimators for probe sets too large for the exact Gram: Tr G, ||G||_F²,
//! Tr(Σ₁G) and Tr(MG) from Rademacher vectors z, each with a standard error, and μ with a
//! delta-method standard error.
//!
//! Per draw: s = Jz (one JVP), Gz = Jᵀs/n and Mz = Jᵀr/n (two VJPs), Σ₁z = Mz − ∇L(∇L·z);
//! then zᵀGz = ||s||²/n, ||Gz||², zᵀΣ₁Gz = (Σ₁z)·(Gz), zᵀMGz = (Mz)·(Gz).

use noisegeom_kernels::Kernels;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::ProbeOps;
use crate::alignment::{LossAlignment, Traces};
use crate::ops::dot;
use crate::report::{Estimate, Ratio};

/// The stochastic loss alignment: point values in `alignment`, errors here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stochastic {
    pub alignment: LossAlignment,
    pub trace_g: Estimate,
    pub g_fro2: Estimate,
    pub trace_sigma_g: Estimate,
    pub trace_m_g: Estimate,
    /// Standard error of μ (delta method on the ratio of the paired means).
    pub mu_se: f64,
    pub mu_unc_se: f64,
}

/// `samples` Rademacher draws, seeded.
pub fn hutchinson<B: Kernels>(ops: &ProbeOps<B>, samples: usize, seed: u64) -> Stochastic {
    let mut rng = noisegeom_data::seeded_rng(seed, "hutchinson");
    let (mut tg, mut gf, mut tsg, mut tmg) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let grad = ops.grad();
    for _ in 0..samples.max(2) {
        // After a stop request the estimate is discarded by the caller (`measure`, `track`).
        if noisegeom_data::stop::requested() {
            break;
        }
        let z: Vec<f64> = (0..ops.p)
            .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
            .collect();
        let (gz, sz) = ops.gv_and_sigma_v(&z);
        let gdot = dot(grad, &z);
        let mz: Vec<f64> = sz.iter().zip(grad).map(|(s, g)| s + g * gdot).collect();
        tg.push(dot(&z, &gz));
        gf.push(dot(&gz, &gz));
        tsg.push(dot(&sz, &gz));
        tmg.push(dot(&mz, &gz));
    }
    let two_l = 2.0 * ops.loss();
    let (e_tg, e_gf, e_tsg, e_tmg) = (
        Estimate::from_samples(&tg),
        Estimate::from_samples(&gf),
        Estimate::from_samples(&tsg),
        Estimate::from_samples(&tmg),
    );
    let alignment = Traces {
        tr_sg: e_tsg.mean,
        tr_mg: e_tmg.mean,
        grad_g_grad: e_tmg.mean - e_tsg.mean,
        g_fro2: e_gf.mean,
        trace_g: e_tg.mean,
        two_l,
    }
    .finish(ops.c, "stochastic (Hutchinson, Rademacher)");
    let mu_se = ratio_se(&tsg, &gf) / two_l;
    let mu_unc_se = ratio_se(&tmg, &gf) / two_l;
    Stochastic {
        alignment,
        trace_g: e_tg,
        g_fro2: e_gf,
        trace_sigma_g: e_tsg,
        trace_m_g: e_tmg,
        mu_se,
        mu_unc_se,
    }
}

/// Standard error of mean(x)/mean(y) for paired draws (first-order delta method).
fn ratio_se(x: &[f64], y: &[f64]) -> f64 {
    let m = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / m, y.iter().sum::<f64>() / m);
    let r = match Ratio::new(mx, my, 0.0, "").value() {
        Some(r) => r,
        None => return f64::INFINITY,
    };
    let var = x
        .iter()
        .zip(y)
        .map(|(a, b)| (a - mx - r * (b - my)).powi(2))
        .sum::<f64>()
        / (m - 1.0);
    (var / m).sqrt() / my.abs()
}
