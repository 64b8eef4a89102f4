//! Figure 1: loss alignment μ at random θ across model sizes, isotropic and anisotropic
//! Gaussian data (docs/definitions.md §13).
//!
//! n = round(5 ln d_eff) samples x ~ N(0, S), targets y = ⟨w*, x⟩ with w* ~ N(0, I). μ is
//! exact (through the n×n Gram) at a fresh random θ for each run; each point is the mean ±
//! standard deviation over `runs` independent draws of data and θ.

use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, EffDim, gaussian};
use noisegeom_kernels::Kernels;
use noisegeom_metrics::alignment::exact_alignment_streamed;
use noisegeom_metrics::gram::{FeatureBudget, TILE};
use noisegeom_metrics::{ProbeOps, Resources};
use noisegeom_models::{Activation, InitScheme, ModelConfig, Net, RandomInit, flatten};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{Panel, Series, save};
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, mean_std, to_value};

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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
        Activation::Gelu => "GELU",
    }
}

fn samples(cfg: &Fig1Config) -> usize {
    if cfg.n == 0 {
        (5.0 * cfg.d_eff.ln()).round() as usize
    } else {
        cfg.n
    }
}

fn covariance(cfg: &Fig1Config, setting: &str) -> Result<Covariance, FigureError> {
    match setting {
        "isotropic" => Ok(Covariance::Isotropic {
            dim: cfg.d_eff.round() as usize,
        }),
        "anisotropic" => Ok(Covariance::PowerLaw {
            exponent: 0.5,
            d_eff: cfg.d_eff,
            eff_dim: cfg.eff_dim,
        }),
        other => Err(FigureError::Config {
            path: "settings".into(),
            message: format!("unknown setting `{other}`; use isotropic or anisotropic"),
        }),
    }
}

/// One job: one point (a data setting and a model), over every run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fig1Part {
    pub setting: String,
    pub model: String,
    pub point: Point,
}

/// Figure 1 as jobs: one per (data setting, model size).
pub struct Fig1;

impl Figure for Fig1 {
    const NAME: &'static str = "fig1";
    const NUMERICS: u32 = 1;
    type Config = Fig1Config;
    type Part = Fig1Part;

    fn set_runs(cfg: &mut Fig1Config, runs: usize) -> Result<(), FigureError> {
        cfg.runs = runs;
        Ok(())
    }

    fn plan(cfg: &Fig1Config) -> Result<Vec<JobSpec>, FigureError> {
        let models = models(cfg);
        let mut jobs = Vec::new();
        for setting in &cfg.settings {
            covariance(cfg, setting)?;
            for (mi, (name, width, _)) in models.iter().enumerate() {
                jobs.push(JobSpec {
                    id: format!("{setting}-m{mi:03}"),
                    label: match width {
                        Some(m) => format!("{setting}: {name}, width {m}"),
                        None => format!("{setting}: {name}"),
                    },
                });
            }
        }
        Ok(jobs)
    }

    fn run_job<B: Kernels>(
        cfg: &Fig1Config,
        index: usize,
        device: &B::Device,
        _work: &std::path::Path,
    ) -> Result<Fig1Part, FigureError> {
        let models = models(cfg);
        let (setting, mi) = (&cfg.settings[index / models.len()], index % models.len());
        let (name, width, model) = &models[mi];
        let n = samples(cfg);
        let cov = covariance(cfg, setting)?;
        let dim = cov.spectrum().len();
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
                    model.init_scheme(),
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
            crate::check_memory(
                |base| Resources::of_gram(&ops, 8 << 30, false, base),
                "lower `n`, `d_eff` or the largest of `widths` in the figure config",
            )?;
            let la = exact_alignment_streamed(&ops, n, TILE, FeatureBudget::strict(8 << 30))?;
            match (la.mu.value(), la.mu_unc.value()) {
                (Some(a), Some(b)) => {
                    mu.push(a);
                    mu_unc.push(b);
                }
                _ => undefined_runs += 1,
            }
        }
        let ((a, b), (c, d)) = (mean_std(&mu), mean_std(&mu_unc));
        Ok(Fig1Part {
            setting: setting.clone(),
            model: name.clone(),
            point: Point {
                width: *width,
                params: arch0.num_params(),
                mu_mean: a,
                mu_std: b,
                mu_unc_mean: c,
                mu_unc_std: d,
                mu,
                mu_unc,
                undefined_runs,
            },
        })
    }

    fn merge(
        cfg: &Fig1Config,
        parts: Vec<Fig1Part>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        let n = samples(cfg);
        let mut settings: Vec<Setting> = Vec::new();
        for setting in &cfg.settings {
            settings.push(Setting {
                setting: setting.clone(),
                dim: covariance(cfg, setting)?.spectrum().len(),
                d_eff: cfg.d_eff,
                n,
                curves: Vec::new(),
            });
        }
        for part in parts {
            let s = settings
                .iter_mut()
                .find(|s| s.setting == part.setting)
                .expect("a planned setting");
            match s.curves.iter_mut().find(|c| c.model == part.model) {
                Some(c) => c.points.push(part.point),
                None => s.curves.push(Curve {
                    model: part.model,
                    points: vec![part.point],
                }),
            }
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
            "  mean μ ranges over [{:.3}, {:.3}]",
            results.mu_range.0, results.mu_range.1,
        );
        Ok((to_value(&results), text))
    }
}
