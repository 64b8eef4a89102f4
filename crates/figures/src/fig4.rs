//! Figure 4: SGD+CLR against GD+CLR on a toy with a valley of global minima whose sharpness
//! varies (docs/definitions.md §13). **\[choice\]** The toy is the scalar two-layer linear net on n ≥ 2 points
//! that it cannot fit exactly:
//!
//! ```text
//! f(x; u, v) = u·v·x,   data (x_i, y_i), i = 1..n, with y not proportional to x,
//! L(u, v) = 1/(2n) Σ_i (u v x_i − y_i)²,   minimised on the hyperbola u v = c = Σx_i y_i / Σx_i².
//! ```
//!
//! Why it has the property the figure needs:
//! - every point of the hyperbola uv = c is a global minimum with the same loss L* > 0;
//! - G = m₂ [v², uv; uv, u²] (m₂ = mean x_i²) has λ_max(G) = m₂ (u² + v²), which is large far
//!   out on the hyperbola and smallest (2 m₂ c) at the balanced point u = v = √c;
//! - because the points are not interpolated, SGD (batch 1) keeps noise at the minima, and
//!   that noise lies along the sharp direction (v, u), which is exactly the alignment the
//!   paper studies. GD has no noise at all.
//!
//! An exact identity shows the mechanism: every step of the form (u, v) ← (u, v) − s (v, u),
//! which is what GD and SGD steps both are here, multiplies u² − v² by (1 − s²). So the
//! drift to the flat, balanced minimum (u² = v²) is driven by s², which SGD's noise keeps
//! away from zero at the minima, and a large LR amplifies. GD only gets s ≠ 0 when its LR
//! makes the minimum unstable (η > 2/λ_max), i.e. by oscillating along the sharp direction.
//! We wanted an interpolating variant (y = x) first: there both methods sit exactly on the
//! hyperbola in floating point and neither moves, since no noise is left at the minima.
//!
//! Both methods use the same triangular CLR schedule; GD+CLR is run over a grid of η_max
//! and the run that ends flattest is plotted. The final λ_max(G) of every run is reported.

use noisegeom_kernels::Kernels;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{FieldPanel, Series, save_fields};
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, mean_std, to_value};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig4Config {
    pub seed: u64,
    /// The inputs x_i.
    pub xs: Vec<f64>,
    /// The targets y_i; not proportional to `xs`, so no (u, v) fits every point.
    pub ys: Vec<f64>,
    /// Start (u₀, v₀), near a sharp minimum.
    pub start: (f64, f64),
    pub lr_min: f64,
    /// η_max of SGD+CLR.
    pub sgd_lr_max: f64,
    /// η_max values tried for GD+CLR.
    pub gd_lr_grid: Vec<f64>,
    /// Steps per cycle.
    pub period: usize,
    pub cycles: usize,
    /// Independent SGD runs (error bars).
    pub runs: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub method: String,
    pub lr_max: f64,
    /// λ_max(G) = m₂(u² + v²) at the end.
    pub final_sharpness: f64,
    pub final_loss: f64,
    pub final_uv: (f64, f64),
    /// The step at which |u| or |v| passed 10⁶ (the run stops there).
    pub diverged_at: Option<usize>,
    /// Subsampled trajectory (u, v).
    pub path: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fig4Results {
    pub m2: f64,
    /// The minima are the hyperbola u v = c.
    pub c: f64,
    /// The loss at every minimum.
    pub min_loss: f64,
    pub start_sharpness: f64,
    pub flattest_possible: f64,
    pub sgd: Vec<Run>,
    pub sgd_final_sharpness_mean: f64,
    pub sgd_final_sharpness_std: f64,
    pub gd: Vec<Run>,
    /// The GD+CLR run that ended flattest (among those that did not diverge).
    pub gd_best: Option<usize>,
}

fn triangular(t: usize, period: usize, lo: f64, hi: f64) -> f64 {
    let x = (t % period) as f64 / period as f64;
    lo + (hi - lo) * (1.0 - (2.0 * x - 1.0).abs())
}

/// The toy's data and the quantities every job shares.
struct Toy {
    data: Vec<(f64, f64)>,
    n: f64,
    m2: f64,
    c: f64,
}

impl Toy {
    fn new(cfg: &Fig4Config) -> Result<Toy, FigureError> {
        let bad = |message: &str| FigureError::Config {
            path: "fig4".into(),
            message: message.into(),
        };
        if cfg.xs.len() < 2 || cfg.xs.len() != cfg.ys.len() {
            return Err(bad(
                "xs and ys need the same length, at least 2 (so SGD has noise)",
            ));
        }
        if cfg.period < 2 || cfg.cycles == 0 {
            return Err(bad("needs period ≥ 2 and cycles ≥ 1"));
        }
        let n = cfg.xs.len() as f64;
        let data: Vec<(f64, f64)> = cfg.xs.iter().copied().zip(cfg.ys.iter().copied()).collect();
        let m2 = cfg.xs.iter().map(|x| x * x).sum::<f64>() / n;
        if m2 == 0.0 {
            return Err(bad(
                "xs are all zero, so the loss does not depend on (u, v)",
            ));
        }
        let c = data.iter().map(|(x, y)| x * y).sum::<f64>() / (n * m2);
        Ok(Toy { data, n, m2, c })
    }

    fn sharp(&self, u: f64, v: f64) -> f64 {
        self.m2 * (u * u + v * v)
    }

    fn loss(&self, u: f64, v: f64) -> f64 {
        self.data
            .iter()
            .map(|(x, y)| (u * v * x - y).powi(2))
            .sum::<f64>()
            / (2.0 * self.n)
    }

    fn simulate(&self, cfg: &Fig4Config, sgd: bool, lr_max: f64, seed: u64) -> Run {
        let total = cfg.period * cfg.cycles;
        let every = (total / 600).max(1);
        let mut rng = noisegeom_data::seeded_rng(seed, "fig4");
        let (mut u, mut v) = cfg.start;
        let mut path = vec![(u, v)];
        let mut diverged_at = None;
        for t in 0..total {
            let lr = triangular(t, cfg.period, cfg.lr_min, lr_max);
            // ∇ℓ_i = x_i (uv x_i − y_i) (v, u); GD uses the mean over i.
            let s = if sgd {
                let (x, y) = self.data[rng.random_range(0..self.data.len())];
                x * (u * v * x - y)
            } else {
                self.data
                    .iter()
                    .map(|(x, y)| x * (u * v * x - y))
                    .sum::<f64>()
                    / self.n
            };
            let (gu, gv) = (s * v, s * u);
            u -= lr * gu;
            v -= lr * gv;
            if !(u.is_finite() && v.is_finite()) || u.abs() > 1e6 || v.abs() > 1e6 {
                diverged_at = Some(t);
                break;
            }
            if t % every == 0 {
                path.push((u, v));
            }
        }
        Run {
            method: if sgd {
                "SGD+CLR".into()
            } else {
                "GD+CLR".into()
            },
            lr_max,
            final_sharpness: self.sharp(u, v),
            final_loss: self.loss(u, v),
            final_uv: (u, v),
            diverged_at,
            path,
        }
    }
}

fn sgd_runs(cfg: &Fig4Config) -> usize {
    cfg.runs.max(1)
}

/// Figure 4 as jobs: one per SGD+CLR run, then one per η_max of the GD+CLR grid.
pub struct Fig4;

impl Figure for Fig4 {
    const NAME: &'static str = "fig4";
    const NUMERICS: u32 = 1;
    type Config = Fig4Config;
    type Part = Run;

    fn set_runs(cfg: &mut Fig4Config, runs: usize) -> Result<(), FigureError> {
        cfg.runs = runs;
        Ok(())
    }

    fn plan(cfg: &Fig4Config) -> Result<Vec<JobSpec>, FigureError> {
        Toy::new(cfg)?;
        let sgd = (0..sgd_runs(cfg)).map(|r| JobSpec {
            id: format!("sgd-r{r:03}"),
            label: format!("SGD+CLR run {r}"),
        });
        let gd = cfg.gd_lr_grid.iter().enumerate().map(|(i, lr)| JobSpec {
            id: format!("gd-{i:03}"),
            label: format!("GD+CLR η_max = {lr}"),
        });
        Ok(sgd.chain(gd).collect())
    }

    fn run_job<B: Kernels>(
        cfg: &Fig4Config,
        index: usize,
        _device: &B::Device,
        _work: &std::path::Path,
    ) -> Result<Run, FigureError> {
        let toy = Toy::new(cfg)?;
        let runs = sgd_runs(cfg);
        Ok(if index < runs {
            toy.simulate(
                cfg,
                true,
                cfg.sgd_lr_max,
                cfg.seed.wrapping_add(index as u64),
            )
        } else {
            toy.simulate(cfg, false, cfg.gd_lr_grid[index - runs], cfg.seed)
        })
    }

    fn merge(
        cfg: &Fig4Config,
        mut sgd: Vec<Run>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        let toy = Toy::new(cfg)?;
        let gd = sgd.split_off(sgd_runs(cfg));
        let (m2, c) = (toy.m2, toy.c);
        let min_loss = toy.loss(c, 1.0);
        let sharp = |u: f64, v: f64| toy.sharp(u, v);
        let loss = |u: f64, v: f64| toy.loss(u, v);
        let gd_best = gd
            .iter()
            .enumerate()
            .filter(|(_, r)| r.diverged_at.is_none())
            .min_by(|a, b| a.1.final_sharpness.total_cmp(&b.1.final_sharpness))
            .map(|(i, _)| i);
        let finals: Vec<f64> = sgd
            .iter()
            .filter(|r| r.diverged_at.is_none())
            .map(|r| r.final_sharpness)
            .collect();
        let (sm, ss) = mean_std(&finals);
        let results = Fig4Results {
            m2,
            c,
            min_loss,
            start_sharpness: sharp(cfg.start.0, cfg.start.1),
            flattest_possible: 2.0 * m2 * c.abs(),
            sgd_final_sharpness_mean: sm,
            sgd_final_sharpness_std: ss,
            sgd,
            gd,
            gd_best,
        };

        // Loss contours over the region the paths visit.
        let pts: Vec<(f64, f64)> = results
            .sgd
            .iter()
            .chain(&results.gd)
            .filter(|r| r.diverged_at.is_none())
            .flat_map(|r| r.path.iter().copied())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = (0.0f64, cfg.start.0, 0.0f64, cfg.start.1);
        for (u, v) in &pts {
            x0 = x0.min(*u);
            x1 = x1.max(*u);
            y0 = y0.min(*v);
            y1 = y1.max(*v);
        }
        let (px, py) = (0.1 * (x1 - x0).max(0.5), 0.1 * (y1 - y0).max(0.5));
        let (xr, yr) = ((x0 - px, x1 + px), (y0 - py, y1 + py));
        let res = 160;
        let field: Vec<f64> = (0..res * res)
            .map(|k| {
                let u = xr.0 + ((k % res) as f64 + 0.5) * (xr.1 - xr.0) / res as f64;
                let v = yr.0 + ((k / res) as f64 + 0.5) * (yr.1 - yr.0) / res as f64;
                (loss(u, v) - min_loss + 1e-6).ln()
            })
            .collect();
        // Both branches of the hyperbola uv = c inside the plotted box, as one scatter of
        // dense points (a line would join the branches).
        let valley = || -> Series {
            let pts = (0..4000)
                .map(|i| xr.0 + (xr.1 - xr.0) * i as f64 / 3999.0)
                .filter(|u| u.abs() > 1e-9)
                .map(|u| (u, c / u))
                .filter(|(_, v)| *v >= yr.0 && *v <= yr.1)
                .collect();
            Series::scatter(format!("minima uv = {c:.3}"), pts)
        };
        let path_series = |r: &Run| {
            Series::line(
                format!(
                    "{} η_max = {} → λ_max {:.2}",
                    r.method, r.lr_max, r.final_sharpness
                ),
                r.path.clone(),
            )
        };
        let mut gd_paths = vec![valley()];
        if let Some(i) = results.gd_best {
            gd_paths.push(path_series(&results.gd[i]));
        }
        let panels = vec![
            FieldPanel {
                title: format!(
                    "SGD+CLR (B = 1), start λ_max = {:.2}",
                    results.start_sharpness
                ),
                x_label: "u".into(),
                y_label: "v".into(),
                x_range: xr,
                y_range: yr,
                field: field.clone(),
                res,
                paths: vec![valley(), path_series(&results.sgd[0])],
            },
            FieldPanel {
                title: "GD+CLR, best η_max of the grid".into(),
                x_label: "u".into(),
                y_label: "v".into(),
                x_range: xr,
                y_range: yr,
                field,
                res,
                paths: gd_paths,
            },
        ];
        save_fields(&out.stem(), &panels, (640, 560))?;
        let mut text = format!(
            "Figure 4: CLR toy f = u·v·x, minima uv = {:.3} (loss {:.4}); start λ_max(G) = {:.3}, flattest minimum 2m₂c = {:.3}\n  SGD+CLR η_max = {}: final λ_max {:.3} ± {:.3} over {} runs\n",
            c,
            min_loss,
            results.start_sharpness,
            results.flattest_possible,
            cfg.sgd_lr_max,
            sm,
            ss,
            finals.len()
        );
        for r in &results.gd {
            text += &match r.diverged_at {
                None => format!(
                    "  GD+CLR  η_max = {:<6}: final λ_max {:.3}\n",
                    r.lr_max, r.final_sharpness
                ),
                Some(t) => format!("  GD+CLR  η_max = {:<6}: diverged at step {t}\n", r.lr_max),
            };
        }
        text.pop();
        Ok((to_value(&results), text))
    }
}
