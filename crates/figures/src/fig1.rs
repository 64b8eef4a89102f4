//! Figure 1: loss alignment μ at random θ across model sizes, isotropic and anisotropic
//! Gaussian data (SPEC §5).
//!
//! n = round(5 ln d_eff) samples x ~ N(0, S), targets y = ⟨w*, x⟩ with w* ~ N(0, I). μ is
//! exact (through the n×n Gram) at a fresh random θ for each run; each point is the mean ±
//! standard deviation over `runs` independent draws of data and θ.

use std::time::Instant;

use burn::tensor::backend::Backend;
use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, EffDim, gaussian};
use noisegeom_metrics::ProbeOps;
use noisegeom_metrics::alignment::exact_alignment;
use noisegeom_metrics::gram::gram;
use noisegeom_models::{Activation, InitScheme, ModelConfig, Net, RandomInit, flatten};
use serde::{Deserialize, Serialize};

use crate::plot::{Panel, Series, save};
use crate::{FigureError, Output, mean_std};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig1Config {
    pub seed: u64,
    pub runs: usize,
    pub d_eff: f64,
    /// Samples; 0 means round(5 ln d_eff).
    #[serde(default)]
    pub n: usize,
    /// How d_eff is measured for the anisotropic spectrum S = diag(k^{-1/2}).
    pub eff_dim: EffDim,
    /// Hidden widths m swept by the width-based models.
    pub widths: Vec<usize>,
    /// Hidden layers of the deep FNN (ReLU, width m each, biases, LeCun init).
    pub fnn_depth: usize,
    pub activations: Vec<Activation>,
    /// `isotropic` and/or `anisotropic`.
    pub settings: Vec<String>,
}

/// One plotted point.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub width: Option<usize>,
    pub params: usize,
    pub mu_mean: f64,
    pub mu_std: f64,
    pub mu_unc_mean: f64,
    pub mu_unc_std: f64,
    /// μ of every run, in run order.
    pub mu: Vec<f64>,
    pub mu_unc: Vec<f64>,
    /// Runs where μ was undefined (L = 0 or G = 0), left out of the statistics.
    pub undefined_runs: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub model: String,
    pub points: Vec<Point>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    pub setting: String,
    pub dim: usize,
    pub d_eff: f64,
    pub n: usize,
    pub curves: Vec<Curve>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Fig1Results {
    pub settings: Vec<Setting>,
    /// Smallest and largest mean μ over all points.
    pub mu_range: (f64, f64),
}

fn models(cfg: &Fig1Config) -> Vec<(String, Option<usize>, ModelConfig)> {
    let lecun = InitScheme::Lecun;
    let mut out = vec![
        (
            "linear".to_string(),
            None,
            ModelConfig::Linear {
                bias: false,
                init: lecun,
            },
        ),
        (
            "diagonal ⟨u⊙v, x⟩".to_string(),
            None,
            ModelConfig::Diagonal { init: lecun },
        ),
    ];
    for &m in &cfg.widths {
        out.push((
            "two-layer linear aᵀWx".into(),
            Some(m),
            ModelConfig::TwoLayerLinear {
                width: m,
                init: lecun,
            },
        ));
        for &act in &cfg.activations {
            out.push((
                format!("two-layer {}", act_name(act)),
                Some(m),
                ModelConfig::TwoLayer {
                    width: m,
                    activation: act,
                    init: lecun,
                },
            ));
        }
        out.push((
            format!("FNN, {} ReLU layers", cfg.fnn_depth),
            Some(m),
            ModelConfig::Fnn {
                hidden: vec![m; cfg.fnn_depth],
                activation: Activation::Relu,
                bias: true,
                init: lecun,
            },
        ));
    }
    out
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Tanh => "tanh",
        Activation::Relu => "ReLU",
        Activation::Smooth => "tanh(z)+0.1z",
        Activation::Identity => "identity",
    }
}

/// Runs the figure: computes, writes `fig1.json`, `fig1.png`, `fig1.svg`.
pub fn run<B: Backend>(
    cfg: &Fig1Config,
    quick: bool,
    out: &Output,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<(Fig1Results, String), FigureError> {
    let t0 = Instant::now();
    let n = if cfg.n == 0 {
        (5.0 * cfg.d_eff.ln()).round() as usize
    } else {
        cfg.n
    };
    let mut settings = Vec::new();
    for setting in &cfg.settings {
        let cov = match setting.as_str() {
            "isotropic" => Covariance::Isotropic {
                dim: cfg.d_eff.round() as usize,
            },
            "anisotropic" => Covariance::PowerLaw {
                exponent: 0.5,
                d_eff: cfg.d_eff,
                eff_dim: cfg.eff_dim,
            },
            other => {
                return Err(FigureError::Config {
                    path: "settings".into(),
                    message: format!("unknown setting `{other}`; use isotropic or anisotropic"),
                });
            }
        };
        let dim = cov.spectrum().len();
        let mut curves: Vec<Curve> = Vec::new();
        for (mi, (name, width, model)) in models(cfg).into_iter().enumerate() {
            progress(&format!("{setting}: {name} width {width:?}"));
            let arch0 = model.arch(&[dim], 1, cfg.seed)?;
            let (mut mu, mut mu_unc, mut undefined_runs) = (Vec::new(), Vec::new(), 0);
            for r in 0..cfg.runs {
                let run_seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(r as u64);
                let task = gaussian(n, &cov, run_seed)?;
                let ds = &task.dataset;
                let arch = model.arch(&[dim], 1, run_seed ^ 0xa5a5)?;
                let net = Net::<B>::build(
                    arch.clone(),
                    &mut RandomInit::new(
                        device,
                        model.init(),
                        run_seed.wrapping_add(7919 * mi as u64),
                    ),
                )?;
                let theta = flatten(&net);
                drop(net);
                let x: Vec<f64> = ds.inputs.iter().map(|v| *v as f64).collect();
                let Targets::Regression { values, .. } = &ds.targets else {
                    unreachable!("gaussian targets are regression targets")
                };
                let y: Vec<f64> = values.iter().map(|v| *v as f64).collect();
                let ops = ProbeOps::<B>::new(arch, &theta, &x, &y, n, n, device)?;
                let la = exact_alignment(&gram(&ops, n, 8 << 30)?, ops.residuals());
                match (la.mu.value(), la.mu_unc.value()) {
                    (Some(a), Some(b)) => {
                        mu.push(a);
                        mu_unc.push(b);
                    }
                    _ => undefined_runs += 1,
                }
            }
            let ((a, b), (c, d)) = (mean_std(&mu), mean_std(&mu_unc));
            let point = Point {
                width,
                params: arch0.num_params(),
                mu_mean: a,
                mu_std: b,
                mu_unc_mean: c,
                mu_unc_std: d,
                mu,
                mu_unc,
                undefined_runs,
            };
            match curves.iter_mut().find(|c| c.model == name) {
                Some(c) => c.points.push(point),
                None => curves.push(Curve {
                    model: name,
                    points: vec![point],
                }),
            }
        }
        settings.push(Setting {
            setting: setting.clone(),
            dim,
            d_eff: cfg.d_eff,
            n,
            curves,
        });
    }
    let all: Vec<f64> = settings
        .iter()
        .flat_map(|s| {
            s.curves
                .iter()
                .flat_map(|c| c.points.iter().map(|p| p.mu_mean))
        })
        .collect();
    let results = Fig1Results {
        mu_range: all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                (l.min(*v), h.max(*v))
            }),
        settings,
    };
    let panels: Vec<Panel> = results
        .settings
        .iter()
        .map(|s| Panel {
            title: format!(
                "{} data (D = {}, n = {}); mean ± sd over {} runs",
                s.setting, s.dim, s.n, cfg.runs
            ),
            x_label: "number of parameters p".into(),
            y_label: "loss alignment μ(θ)".into(),
            x_log: true,
            y_log: false,
            series: s
                .curves
                .iter()
                .map(|c| {
                    Series::with_errors(
                        c.model.clone(),
                        c.points
                            .iter()
                            .map(|p| (p.params as f64, p.mu_mean, p.mu_std))
                            .collect(),
                    )
                })
                .collect(),
            hlines: vec![(1.0, "μ = 1".into())],
            y_range: None,
        })
        .collect();
    save(&out.stem(), &panels, panels.len(), (720, 520))?;
    let path = out.write(cfg, quick, t0.elapsed().as_secs_f64(), &results)?;
    let mut text = format!(
        "Figure 1: μ(θ) at random θ, n = {n}, {} runs per point\n",
        cfg.runs
    );
    for s in &results.settings {
        text += &format!("  {} (D = {}):\n", s.setting, s.dim);
        for c in &s.curves {
            let vals: Vec<String> = c
                .points
                .iter()
                .map(|p| format!("p={} μ={:.3}±{:.3}", p.params, p.mu_mean, p.mu_std))
                .collect();
            text += &format!("    {:<28} {}\n", c.model, vals.join("  "));
        }
    }
    text += &format!(
        "  mean μ ranges over [{:.3}, {:.3}]\n  results: {}",
        results.mu_range.0,
        results.mu_range.1,
        path.display()
    );
    Ok((results, text))
}
