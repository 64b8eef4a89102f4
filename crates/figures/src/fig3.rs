//! Figure 3: escape from a sharp minimum, SGD against GD (SPEC §5).
//!
//! Over-parameterised linear regression (n < d), y = ⟨w*, x⟩, started at
//! w₀ ~ N(w*, e^{init_log_var} I/d). With δ = w − w*, the residuals are r = Xδ, the loss is
//! L = ||r||²/(2n) and G = XᵀX/n. GD runs at η = gd_scale/(λ₁+λ₂), unstable along u₁ only
//! (|1 − ηλ_k| > 1 iff λ_k > (λ₁+λ₂)/2); SGD (batch `batch`, sampling with replacement)
//! runs at η = sgd_scale/||G||_F, for which every direction is stable in expectation
//! (ηλ₁ ≤ 1.2 < 2). Each runs until L ≥ escape_factor · L₀; the energy (u_kᵀδ)² along each
//! eigen-direction of G is then recorded. Directions come from the n×n Gram: u_kᵀδ =
//! w_kᵀ(Xδ)/√(nλ_k), so no p-vector is formed.
//!
//! The dynamics are those of plain linear regression with a closed-form gradient, so this
//! figure is computed directly in f64 on the host.

use std::time::Instant;

use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, gaussian};
use noisegeom_metrics::linalg::sym_eig;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::plot::{Panel, Series, save};
use crate::{FigureError, Output, mean_std};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig3Config {
    pub seed: u64,
    pub dim: usize,
    pub n: usize,
    /// log of the initial variance scale: w₀ ~ N(w*, e^{init_log_var} I/d).
    pub init_log_var: f64,
    pub escape_factor: f64,
    pub max_steps: usize,
    pub runs: usize,
    /// η = sgd_scale / ||G||_F.
    pub sgd_scale: f64,
    /// η = gd_scale / (λ₁ + λ₂).
    pub gd_scale: f64,
    pub batch: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Escape {
    pub method: String,
    pub lr: f64,
    /// Runs that reached the escape factor within max_steps.
    pub escaped: usize,
    pub runs: usize,
    pub steps_mean: f64,
    pub steps_std: f64,
    /// Mean over escaped runs of the normalised energy E_k / Σ_j E_j along u_k (row space).
    pub energy_share: Vec<f64>,
    /// Share of the row-space energy outside u₁, mean ± sd over escaped runs.
    pub outside_top_mean: f64,
    pub outside_top_std: f64,
    /// Loss against step for the first run, subsampled: (step, L).
    pub loss_curve: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fig3Results {
    pub lambda: Vec<f64>,
    pub g_fro: f64,
    pub sgd: Escape,
    pub gd: Escape,
}

pub fn run(
    cfg: &Fig3Config,
    quick: bool,
    out: &Output,
    progress: &mut dyn FnMut(&str),
) -> Result<(Fig3Results, String), FigureError> {
    let t0 = Instant::now();
    let (d, n) = (cfg.dim, cfg.n);
    if n >= d || cfg.batch == 0 || cfg.batch > n {
        return Err(FigureError::Config {
            path: "fig3".into(),
            message: format!(
                "needs 1 ≤ batch ≤ n < dim (got batch {}, n {n}, dim {d})",
                cfg.batch
            ),
        });
    }
    let task = gaussian(n, &Covariance::Isotropic { dim: d }, cfg.seed)?;
    let x: Vec<f64> = task.dataset.inputs.iter().map(|v| *v as f64).collect();
    let Targets::Regression { .. } = &task.dataset.targets else {
        unreachable!("regression")
    };
    // K = XXᵀ; eig(K/n) gives λ_k and w_k.
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let dotv = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let k: Vec<f64> = (0..n * n).map(|t| dotv(row(t / n), row(t % n))).collect();
    let (lambda, w) = sym_eig(n, |i, j| k[i * n + j] / n as f64);
    let g_fro = lambda.iter().map(|l| l * l).sum::<f64>().sqrt();
    let lr_sgd = cfg.sgd_scale / g_fro;
    let lr_gd = cfg.gd_scale / (lambda[0] + lambda[1]);

    let residuals = |delta: &[f64]| -> Vec<f64> { (0..n).map(|i| dotv(row(i), delta)).collect() };
    let loss = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>() / (2.0 * n as f64);
    let energies = |r: &[f64]| -> Vec<f64> {
        w.iter()
            .zip(&lambda)
            .map(|(wk, l)| (dotv(wk, r) / (n as f64 * l).sqrt()).powi(2))
            .collect()
    };

    let simulate = |sgd: bool, lr: f64| -> Escape {
        let mut steps = Vec::new();
        let mut shares: Vec<Vec<f64>> = Vec::new();
        let mut outside = Vec::new();
        let mut curve = Vec::new();
        for run in 0..cfg.runs {
            let mut rng = noisegeom_data::seeded_rng(
                cfg.seed ^ (run as u64).rotate_left(20),
                if sgd { "fig3-sgd" } else { "fig3-gd" },
            );
            let sd = (cfg.init_log_var.exp() / d as f64).sqrt();
            let mut delta = noisegeom_data::normal_vec(&mut rng, d, sd);
            let mut r = residuals(&delta);
            let l0 = loss(&r);
            let mut done = None;
            for t in 0..cfg.max_steps {
                if run == 0 {
                    curve.push((t as f64, loss(&r)));
                }
                if sgd {
                    let mut grad = vec![0.0; d];
                    for _ in 0..cfg.batch {
                        let i = rng.random_range(0..n);
                        let ri = r[i];
                        grad.iter_mut()
                            .zip(row(i))
                            .for_each(|(g, xi)| *g += xi * ri);
                    }
                    let s = lr / cfg.batch as f64;
                    delta.iter_mut().zip(&grad).for_each(|(dl, g)| *dl -= s * g);
                } else {
                    let mut grad = vec![0.0; d];
                    for (i, ri) in r.iter().enumerate() {
                        let ri = ri / n as f64;
                        grad.iter_mut()
                            .zip(row(i))
                            .for_each(|(g, xi)| *g += xi * ri);
                    }
                    delta
                        .iter_mut()
                        .zip(&grad)
                        .for_each(|(dl, g)| *dl -= lr * g);
                }
                r = residuals(&delta);
                if loss(&r) >= cfg.escape_factor * l0 {
                    done = Some(t + 1);
                    break;
                }
            }
            if let Some(t) = done {
                steps.push(t as f64);
                let e = energies(&r);
                let total: f64 = e.iter().sum();
                shares.push(e.iter().map(|v| v / total).collect());
                outside.push(1.0 - e[0] / total);
            }
        }
        let escaped = steps.len();
        let (sm, ss) = mean_std(&steps);
        let (om, os) = mean_std(&outside);
        let energy_share = (0..n)
            .map(|k| shares.iter().map(|s| s[k]).sum::<f64>() / escaped.max(1) as f64)
            .collect();
        Escape {
            method: if sgd {
                format!("SGD, B = {}, η = {:.3}/||G||_F", cfg.batch, cfg.sgd_scale)
            } else {
                format!("GD, η = {:.3}/(λ₁+λ₂)", cfg.gd_scale)
            },
            lr,
            escaped,
            runs: cfg.runs,
            steps_mean: sm,
            steps_std: ss,
            energy_share,
            outside_top_mean: om,
            outside_top_std: os,
            loss_curve: thin(curve, 400),
        }
    };
    progress("SGD");
    let sgd = simulate(true, lr_sgd);
    progress("GD");
    let gd = simulate(false, lr_gd);
    let results = Fig3Results {
        lambda: lambda.clone(),
        g_fro,
        sgd,
        gd,
    };
    let share_series = |e: &Escape| {
        Series::line(
            format!("{} ({} of {} escaped)", e.method, e.escaped, e.runs),
            e.energy_share
                .iter()
                .enumerate()
                .map(|(k, v)| ((k + 1) as f64, v.max(1e-30)))
                .collect(),
        )
    };
    let panels = vec![
        Panel {
            title: "energy of w − w* along u_k at escape (mean over runs)".into(),
            x_label: "eigen-direction k of G (λ₁ ≥ λ₂ ≥ …)".into(),
            y_label: "share of energy (u_kᵀδ)² / Σ".into(),
            x_log: false,
            y_log: true,
            series: vec![share_series(&results.sgd), share_series(&results.gd)],
            ..Panel::default()
        },
        Panel {
            title: "loss, first run".into(),
            x_label: "step".into(),
            y_label: "L(w_t)".into(),
            x_log: false,
            y_log: true,
            series: vec![
                Series::line(results.sgd.method.clone(), results.sgd.loss_curve.clone()),
                Series::line(results.gd.method.clone(), results.gd.loss_curve.clone()),
            ],
            ..Panel::default()
        },
    ];
    save(&out.stem(), &panels, 2, (720, 480))?;
    let path = out.write(cfg, quick, t0.elapsed().as_secs_f64(), &results)?;
    let line = |e: &Escape| {
        format!(
            "  {:<32} η = {:.4}: escaped {}/{} runs in {:.0} ± {:.0} steps; energy outside u₁ {:.3} ± {:.3}\n",
            e.method,
            e.lr,
            e.escaped,
            e.runs,
            e.steps_mean,
            e.steps_std,
            e.outside_top_mean,
            e.outside_top_std
        )
    };
    let text = format!(
        "Figure 3: escape from w* (d = {d}, n = {n}, L grows ×{:.0e}); λ₁ = {:.3}, λ₂ = {:.3}, ||G||_F = {:.3}\n{}{}  results: {}",
        cfg.escape_factor,
        lambda[0],
        lambda[1],
        g_fro,
        line(&results.sgd),
        line(&results.gd),
        path.display()
    );
    Ok((results, text))
}

/// Keeps about `max` evenly spaced points of a curve, always with its last point.
fn thin(curve: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    let every = curve.len().div_ceil(max.max(1)).max(1);
    let last = curve.last().copied();
    let mut out: Vec<_> = curve.into_iter().step_by(every).collect();
    if let Some(l) = last.filter(|l| out.last() != Some(l)) {
        out.push(l);
    }
    out
}
