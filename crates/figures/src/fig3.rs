//! Figure 3: escape from a sharp minimum, SGD against GD (docs/definitions.md §13).
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

use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, gaussian};
use noisegeom_kernels::Kernels;
use noisegeom_metrics::linalg::sym_eig;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{Panel, Series, save};
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, mean_std, to_value};

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

/// The data and the spectrum of G that every job shares.
struct Setup {
    d: usize,
    n: usize,
    x: Vec<f64>,
    lambda: Vec<f64>,
    /// Eigenvectors of K/n (length n each).
    w: Vec<Vec<f64>>,
    g_fro: f64,
    lr_sgd: f64,
    lr_gd: f64,
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| p * q).sum()
}

impl Setup {
    fn new(cfg: &Fig3Config) -> Result<Setup, FigureError> {
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
        let k: Vec<f64> = (0..n * n).map(|t| dotv(row(t / n), row(t % n))).collect();
        let (lambda, w) = sym_eig(n, |i, j| k[i * n + j] / n as f64);
        let g_fro = lambda.iter().map(|l| l * l).sum::<f64>().sqrt();
        Ok(Setup {
            d,
            n,
            lr_sgd: cfg.sgd_scale / g_fro,
            lr_gd: cfg.gd_scale / (lambda[0] + lambda[1]),
            x,
            lambda,
            w,
            g_fro,
        })
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }

    fn residuals(&self, delta: &[f64]) -> Vec<f64> {
        (0..self.n).map(|i| dotv(self.row(i), delta)).collect()
    }

    fn loss(&self, r: &[f64]) -> f64 {
        r.iter().map(|v| v * v).sum::<f64>() / (2.0 * self.n as f64)
    }

    fn energies(&self, r: &[f64]) -> Vec<f64> {
        self.w
            .iter()
            .zip(&self.lambda)
            .map(|(wk, l)| (dotv(wk, r) / (self.n as f64 * l).sqrt()).powi(2))
            .collect()
    }

    /// One run of SGD or GD from a fresh w₀ until escape or `max_steps`.
    fn simulate(&self, cfg: &Fig3Config, sgd: bool, run: usize) -> RunOutcome {
        let (d, n) = (self.d, self.n);
        let lr = if sgd { self.lr_sgd } else { self.lr_gd };
        let mut rng = noisegeom_data::seeded_rng(
            cfg.seed ^ (run as u64).rotate_left(20),
            if sgd { "fig3-sgd" } else { "fig3-gd" },
        );
        let sd = (cfg.init_log_var.exp() / d as f64).sqrt();
        let mut delta = noisegeom_data::normal_vec(&mut rng, d, sd);
        let mut r = self.residuals(&delta);
        let l0 = self.loss(&r);
        let mut curve = Vec::new();
        let mut done = None;
        for t in 0..cfg.max_steps {
            if run == 0 {
                curve.push((t as f64, self.loss(&r)));
            }
            if sgd {
                let mut grad = vec![0.0; d];
                for _ in 0..cfg.batch {
                    let i = rng.random_range(0..n);
                    let ri = r[i];
                    grad.iter_mut()
                        .zip(self.row(i))
                        .for_each(|(g, xi)| *g += xi * ri);
                }
                let s = lr / cfg.batch as f64;
                delta.iter_mut().zip(&grad).for_each(|(dl, g)| *dl -= s * g);
            } else {
                let mut grad = vec![0.0; d];
                for (i, ri) in r.iter().enumerate() {
                    let ri = ri / n as f64;
                    grad.iter_mut()
                        .zip(self.row(i))
                        .for_each(|(g, xi)| *g += xi * ri);
                }
                delta
                    .iter_mut()
                    .zip(&grad)
                    .for_each(|(dl, g)| *dl -= lr * g);
            }
            r = self.residuals(&delta);
            if self.loss(&r) >= cfg.escape_factor * l0 {
                done = Some(t + 1);
                break;
            }
        }
        let escape = done.map(|t| {
            let e = self.energies(&r);
            let total: f64 = e.iter().sum();
            Escaped {
                steps: t,
                share: e.iter().map(|v| v / total).collect(),
                outside_top: 1.0 - e[0] / total,
            }
        });
        RunOutcome {
            escape,
            loss_curve: (run == 0).then(|| thin(curve, 400)),
        }
    }
}

/// One run's escape: steps taken and where the energy of δ = w − w* lies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Escaped {
    pub steps: usize,
    /// E_k / Σ_j E_j along each u_k.
    pub share: Vec<f64>,
    pub outside_top: f64,
}

/// One job: one run of SGD or GD.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOutcome {
    /// `None` when the run did not escape within `max_steps`.
    pub escape: Option<Escaped>,
    /// The loss curve (first run only), subsampled.
    pub loss_curve: Option<Vec<(f64, f64)>>,
}

fn summarise(cfg: &Fig3Config, sgd: bool, lr: f64, runs: &[RunOutcome]) -> Escape {
    let escaped: Vec<&Escaped> = runs.iter().filter_map(|r| r.escape.as_ref()).collect();
    let steps: Vec<f64> = escaped.iter().map(|e| e.steps as f64).collect();
    let outside: Vec<f64> = escaped.iter().map(|e| e.outside_top).collect();
    let (sm, ss) = mean_std(&steps);
    let (om, os) = mean_std(&outside);
    let energy_share = (0..cfg.n)
        .map(|k| escaped.iter().map(|s| s.share[k]).sum::<f64>() / escaped.len().max(1) as f64)
        .collect();
    Escape {
        method: if sgd {
            format!("SGD, B = {}, η = {:.3}/||G||_F", cfg.batch, cfg.sgd_scale)
        } else {
            format!("GD, η = {:.3}/(λ₁+λ₂)", cfg.gd_scale)
        },
        lr,
        escaped: escaped.len(),
        runs: cfg.runs,
        steps_mean: sm,
        steps_std: ss,
        energy_share,
        outside_top_mean: om,
        outside_top_std: os,
        loss_curve: runs
            .iter()
            .find_map(|r| r.loss_curve.clone())
            .unwrap_or_default(),
    }
}

/// Figure 3 as jobs: one per run, SGD runs first, then GD runs.
pub struct Fig3;

impl Figure for Fig3 {
    const NAME: &'static str = "fig3";
    const NUMERICS: u32 = 1;
    type Config = Fig3Config;
    type Part = RunOutcome;

    fn set_runs(cfg: &mut Fig3Config, runs: usize) -> Result<(), FigureError> {
        cfg.runs = runs;
        Ok(())
    }

    fn plan(cfg: &Fig3Config) -> Result<Vec<JobSpec>, FigureError> {
        Setup::new(cfg)?;
        Ok(["sgd", "gd"]
            .iter()
            .flat_map(|m| {
                (0..cfg.runs).map(move |r| JobSpec {
                    id: format!("{m}-r{r:03}"),
                    label: format!("{} run {r}", m.to_uppercase()),
                })
            })
            .collect())
    }

    fn run_job<B: Kernels>(
        cfg: &Fig3Config,
        index: usize,
        _device: &B::Device,
        _work: &std::path::Path,
    ) -> Result<RunOutcome, FigureError> {
        let setup = Setup::new(cfg)?;
        Ok(setup.simulate(cfg, index < cfg.runs, index % cfg.runs))
    }

    fn merge(
        cfg: &Fig3Config,
        parts: Vec<RunOutcome>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        let setup = Setup::new(cfg)?;
        let (sgd_runs, gd_runs) = parts.split_at(cfg.runs);
        let (d, n) = (cfg.dim, cfg.n);
        let lambda = &setup.lambda;
        let g_fro = setup.g_fro;
        let results = Fig3Results {
            lambda: lambda.clone(),
            g_fro,
            sgd: summarise(cfg, true, setup.lr_sgd, sgd_runs),
            gd: summarise(cfg, false, setup.lr_gd, gd_runs),
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
            "Figure 3: escape from w* (d = {d}, n = {n}, L grows ×{:.0e}); λ₁ = {:.3}, λ₂ = {:.3}, ||G||_F = {:.3}\n{}{}",
            cfg.escape_factor,
            lambda[0],
            lambda[1],
            g_fro,
            line(&results.sgd),
            line(&results.gd),
        );
        Ok((to_value(&results), text.trim_end().to_string()))
    }
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
