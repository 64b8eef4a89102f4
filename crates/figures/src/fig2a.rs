//! Figure 2a: noise energy α_k against curvature λ_k over every nonzero eigen-direction of
//! G, for linear regression on Gaussian data with d large and n ≪ d (docs/definitions.md §13).
//!
//! The spectrum comes exactly from the n×n Gram matrix (eig(K/n)), and α_k from the Gram
//! eigenvectors without forming any p-vector (docs/definitions.md §7.3).

use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, gaussian};
use noisegeom_kernels::Kernels;
use noisegeom_metrics::alignment::exact_spectrum;
use noisegeom_metrics::gram::gram;
use noisegeom_metrics::report::{Cutoffs, eps_of};
use noisegeom_metrics::{ProbeOps, Resources};
use noisegeom_models::{InitScheme, ModelConfig, Net, RandomInit, flatten};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plot::{Panel, Series, by_rank, save};
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, loglog_slope as slope, quantile, to_value};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig2aConfig {
    pub seed: u64,
    /// Input dimension d (= p for the linear model).
    pub dim: usize,
    /// Sample sizes; 0 entries mean d/8 and round(8 ln d).
    pub ns: Vec<usize>,
    /// `isotropic` and/or `anisotropic` (S = diag(k^{-exponent}), k = 1..d).
    pub settings: Vec<String>,
    pub anisotropic_exponent: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spectrum {
    pub setting: String,
    pub n: usize,
    pub two_l: f64,
    pub lambda: Vec<f64>,
    pub alpha: Vec<f64>,
    /// α_k / λ_k.
    pub ratio: Vec<f64>,
    /// g_k = α_k / (2L λ_k).
    pub g: Vec<f64>,
    pub g_median: f64,
    pub g_p10: f64,
    pub g_p90: f64,
    pub g_min: f64,
    pub g_max: f64,
    /// Log-log slope of α_k against λ_k (1 means α ∝ λ).
    pub loglog_slope: f64,
    pub nonzero_cutoff: f64,
    pub dropped: usize,
}

fn sample_sizes(cfg: &Fig2aConfig) -> Vec<usize> {
    let d = cfg.dim;
    cfg.ns
        .iter()
        .enumerate()
        .map(|(i, &n)| match (n, i) {
            (0, 0) => d / 8,
            (0, _) => (8.0 * (d as f64).ln()).round() as usize,
            (n, _) => n,
        })
        .collect()
}

fn covariance(cfg: &Fig2aConfig, setting: &str) -> Result<Covariance, FigureError> {
    match setting {
        "isotropic" => Ok(Covariance::Isotropic { dim: cfg.dim }),
        "anisotropic" => Ok(Covariance::PowerLawDim {
            exponent: cfg.anisotropic_exponent,
            dim: cfg.dim,
        }),
        other => Err(FigureError::Config {
            path: "settings".into(),
            message: format!("unknown setting `{other}`; use isotropic or anisotropic"),
        }),
    }
}

/// Figure 2a as jobs: one per (data setting, sample size).
pub struct Fig2a;

impl Figure for Fig2a {
    const NAME: &'static str = "fig2a";
    const NUMERICS: u32 = 1;
    type Config = Fig2aConfig;
    type Part = Spectrum;

    fn plan(cfg: &Fig2aConfig) -> Result<Vec<JobSpec>, FigureError> {
        let mut jobs = Vec::new();
        for setting in &cfg.settings {
            covariance(cfg, setting)?;
            for n in sample_sizes(cfg) {
                jobs.push(JobSpec {
                    id: format!("{setting}-n{n}"),
                    label: format!("{setting}, d = {}, n = {n}", cfg.dim),
                });
            }
        }
        Ok(jobs)
    }

    fn run_job<B: Kernels>(
        cfg: &Fig2aConfig,
        index: usize,
        device: &B::Device,
        _work: &std::path::Path,
    ) -> Result<Spectrum, FigureError> {
        let ns = sample_sizes(cfg);
        let (setting, n) = (&cfg.settings[index / ns.len()], ns[index % ns.len()]);
        let d = cfg.dim;
        let cov = covariance(cfg, setting)?;
        let cut = Cutoffs::new(eps_of(std::mem::size_of::<B::FloatElem>()));
        let task = gaussian(n, &cov, cfg.seed.wrapping_add(n as u64))?;
        let model = ModelConfig::Linear {
            bias: false,
            init: InitScheme::Lecun,
        };
        let arch = model.arch(&[d], 1, cfg.seed)?;
        let net = Net::<B>::build(
            arch.clone(),
            &mut RandomInit::new(device, model.init_scheme(), cfg.seed + 1),
        )?;
        let theta = flatten(&net);
        let x: Vec<f64> = task.dataset.inputs.iter().map(|v| *v as f64).collect();
        let Targets::Regression { values, .. } = &task.dataset.targets else {
            unreachable!("regression targets")
        };
        let y: Vec<f64> = values.iter().map(|v| *v as f64).collect();
        let ops = ProbeOps::<B>::new(arch, &theta, &x, &y, n, n.min(512), device)?;
        crate::check_memory(
            |base| Resources::of_gram(&ops, 8 << 30, true, base),
            "lower `dim` or the largest of `ns` in the figure config",
        )?;
        let s = exact_spectrum(&gram(&ops, n.min(512), 8 << 30)?, ops.residuals(), &cut);
        let two_l = 2.0 * ops.loss();
        let ratio: Vec<f64> = s.alpha.iter().zip(&s.lambda).map(|(a, l)| a / l).collect();
        let g: Vec<f64> = s.g.iter().filter_map(|r| r.value()).collect();
        let mut sorted = g.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(Spectrum {
            setting: setting.clone(),
            n,
            two_l,
            loglog_slope: slope(&s.lambda, &s.alpha),
            g_median: quantile(&sorted, 0.5),
            g_p10: quantile(&sorted, 0.1),
            g_p90: quantile(&sorted, 0.9),
            g_min: sorted.first().copied().unwrap_or(0.0),
            g_max: sorted.last().copied().unwrap_or(0.0),
            lambda: s.lambda,
            alpha: s.alpha,
            ratio,
            g,
            nonzero_cutoff: s.nonzero_cutoff,
            dropped: s.dropped,
        })
    }

    fn merge(
        cfg: &Fig2aConfig,
        spectra: Vec<Spectrum>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        let d = cfg.dim;
        let mut panels = Vec::new();
        for setting in &cfg.settings {
            let mine: Vec<&Spectrum> = spectra.iter().filter(|s| &s.setting == setting).collect();
            let mut series = Vec::new();
            for s in &mine {
                series.push(Series::line(
                    format!("λ_k, n = {}", s.n),
                    by_rank(&s.lambda),
                ));
                series.push(Series::line(format!("α_k, n = {}", s.n), by_rank(&s.alpha)));
            }
            panels.push(Panel {
                title: format!("{setting} data, d = {d}: curvature and noise energy"),
                x_label: "k".into(),
                y_label: "λ_k, α_k".into(),
                x_log: true,
                y_log: true,
                series,
                ..Panel::default()
            });
        }
        for setting in &cfg.settings {
            let series = spectra
                .iter()
                .filter(|s| &s.setting == setting)
                .map(|s| {
                    Series::scatter(
                        format!("n = {} (2L = {:.3})", s.n, s.two_l),
                        s.ratio
                            .iter()
                            .enumerate()
                            .map(|(i, r)| ((i + 1) as f64, *r))
                            .collect(),
                    )
                })
                .collect();
            panels.push(Panel {
                title: format!("{setting}: α_k / λ_k (≈ 2L means g_k ≈ 1)"),
                x_label: "k".into(),
                y_label: "α_k / λ_k".into(),
                x_log: true,
                y_log: true,
                series,
                ..Panel::default()
            });
        }
        save(&out.stem(), &panels, cfg.settings.len().max(1), (720, 480))?;
        let mut text = format!("Figure 2a: linear regression, d = {d}; g_k = α_k / (2L λ_k)\n");
        for s in &spectra {
            text += &format!(
                "  {:<11} n = {:>5}: {} nonzero directions, g_k median {:.3} (10–90%: {:.3}–{:.3}, range {:.3}–{:.3}), log-log slope of α on λ {:.3}\n",
                s.setting,
                s.n,
                s.lambda.len(),
                s.g_median,
                s.g_p10,
                s.g_p90,
                s.g_min,
                s.g_max,
                s.loglog_slope
            );
        }
        text.pop();
        Ok((to_value(&spectra), text))
    }
}
