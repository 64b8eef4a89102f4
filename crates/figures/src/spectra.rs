//! Figures 2b and 5: curvature λ_k and noise energy α_k along the top eigen-directions of G
//! for networks on image data, at initialisation and after training (docs/definitions.md §13).
//!
//! One method for both figures; only the models differ (2b: the 4-layer CNN and FNN; 5: a
//! VGG-style and a ResNet-style net without BatchNorm). Per model there are two jobs:
//! `<model>-init` measures the seeded initialisation, `<model>-trained` trains the model
//! (resumably, in `runs/<model>`) and measures the result. The probe set is a fixed,
//! class-balanced training subset (1000 samples by default), the same for both states.
//! The top k pairs of G come from Lanczos with full reorthogonalisation on exact
//! G-vector products (forward-mode Jv, then one VJP), each with its explicit residual
//! ‖Gu − λu‖ and a converged flag; α_k = u_kᵀΣ₁u_k and g_k = α_k/(2Lλ_k) come from one
//! JVP along each Ritz vector. Summaries (median g_k, the log-log slope of α on λ) use the
//! converged pairs only, and say how many there were.
//!
//! Why no BatchNorm: with batch statistics a sample's output depends on the other samples
//! of its batch, so the per-sample Jacobian J_i, and with it G, Σ₁ and α_k, is not defined
//! by the parameters alone.

use noisegeom_kernels::Kernels;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use noisegeom_data::{DataConfig, Source};
use noisegeom_metrics::ProbeOps;
use noisegeom_metrics::report::Ratio;
use noisegeom_metrics::{EigenDirections, MeasureOptions, Method, Resources, measure};
use noisegeom_models::{ModelConfig, flatten};
use noisegeom_train::{ExperimentConfig, TrainSettings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::networks::{check_run, train_in};
use crate::plot::{Panel, Series, by_rank, save};
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, loglog_slope, quantile, to_value};

/// One model of the figure: what it is and how it is trained.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectraModel {
    /// Short, file-name-safe name (`cnn`, `fnn`…): job ids and run folders use it.
    pub name: String,
    pub model: ModelConfig,
    pub train: TrainSettings,
}

/// The config of Figure 2b or 5.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpectraConfig {
    /// Seeds the data subsets, initialisation and minibatch order of every model.
    pub seed: u64,
    pub data: DataConfig,
    /// Samples in the fixed probe set (a class-balanced training subset).
    pub probe_size: usize,
    #[serde(default)]
    pub probe_seed: u64,
    /// Top eigenpairs of G.
    pub k: usize,
    /// Lanczos steps (default 2k + 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanczos_iters: Option<usize>,
    /// Also the top k of the Hessian, with g_k along them.
    #[serde(default)]
    pub hessian: bool,
    /// Samples per forward pass in the geometry operators.
    #[serde(default = "chunk")]
    pub chunk: usize,
    pub models: Vec<SpectraModel>,
}

fn chunk() -> usize {
    250
}

/// The top of G (or H) at one θ.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Directions {
    /// λ_k, descending.
    pub lambda: Vec<f64>,
    /// α_k = u_kᵀΣ₁u_k.
    pub alpha: Vec<f64>,
    /// g_k = α_k / (2L u_kᵀGu_k); undefined where u_kᵀGu_k is below the zero cut-off.
    pub g: Vec<Ratio>,
    /// ‖Au − λu‖ of each Ritz pair, and whether it is below the tolerance.
    pub residual: Vec<f64>,
    pub converged: Vec<bool>,
}

/// One job: one model in one state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpectraPart {
    pub model: String,
    /// `init` or `trained`.
    pub state: String,
    pub params: usize,
    pub probe_size: usize,
    pub outputs: usize,
    /// Square loss on the probe set, L = 1/(2n) Σ‖f − y‖².
    pub loss: f64,
    /// Training steps taken (0 at init) and the test accuracy then (trained only).
    pub steps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    pub lanczos_iters: usize,
    pub ritz_tolerance: f64,
    pub g_directions: Directions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h_directions: Option<Directions>,
    /// Over the converged pairs of G: their number, the median and 10–90% range of g_k, and
    /// the least-squares slope of ln α_k on ln λ_k (1 means α ∝ λ).
    pub converged: usize,
    pub g_median: f64,
    pub g_p10: f64,
    pub g_p90: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loglog_slope: Option<f64>,
}

/// Which figure a [`Spectra`] is.
pub trait SpectraKind {
    const NAME: &'static str;
    const TITLE: &'static str;
}

pub struct Fig2bKind;
impl SpectraKind for Fig2bKind {
    const NAME: &'static str = "fig2b";
    const TITLE: &'static str = "Figure 2b";
}

pub struct Fig5Kind;
impl SpectraKind for Fig5Kind {
    const NAME: &'static str = "fig5";
    const TITLE: &'static str = "Figure 5";
}

/// Figure 2b or 5 as jobs: (model, state).
pub struct Spectra<K>(PhantomData<K>);
pub type Fig2b = Spectra<Fig2bKind>;
pub type Fig5 = Spectra<Fig5Kind>;

const STATES: [&str; 2] = ["init", "trained"];

fn experiment(cfg: &SpectraConfig, m: &SpectraModel) -> ExperimentConfig {
    ExperimentConfig {
        seed: cfg.seed,
        data: cfg.data.clone(),
        model: m.model.clone(),
        train: m.train.clone(),
        probe: None,
    }
}

fn config_err(path: &str, message: String) -> FigureError {
    FigureError::Config {
        path: path.into(),
        message,
    }
}

impl<K: SpectraKind> Figure for Spectra<K> {
    const NAME: &'static str = K::NAME;
    const NUMERICS: u32 = 1;
    type Config = SpectraConfig;
    type Part = SpectraPart;

    fn set_data(
        cfg: &mut SpectraConfig,
        source: Option<Source>,
        dir: Option<PathBuf>,
    ) -> Result<(), FigureError> {
        cfg.data = cfg.data.with_source(source, dir);
        Ok(())
    }

    fn plan(cfg: &SpectraConfig) -> Result<Vec<JobSpec>, FigureError> {
        if cfg.probe_size < 2 || cfg.k == 0 || cfg.chunk == 0 {
            return Err(config_err(
                K::NAME,
                format!(
                    "probe_size = {}, k = {}, chunk = {}: need probe_size ≥ 2, k ≥ 1, chunk ≥ 1",
                    cfg.probe_size, cfg.k, cfg.chunk
                ),
            ));
        }
        if cfg.lanczos_iters.is_some_and(|i| i < cfg.k) {
            return Err(config_err(
                "lanczos_iters",
                format!("is below k = {}; Lanczos needs at least k steps", cfg.k),
            ));
        }
        if cfg.models.is_empty() {
            return Err(config_err(
                "models",
                "is empty; add [[models]] tables".into(),
            ));
        }
        let mut jobs = Vec::new();
        for m in &cfg.models {
            check_run("models", &m.name, &experiment(cfg, m))?;
            for state in STATES {
                jobs.push(JobSpec {
                    id: format!("{}-{state}", m.name),
                    label: format!(
                        "{} ({}) at {state}: top {} of G on {} probe samples",
                        m.name,
                        m.model.kind(),
                        cfg.k,
                        cfg.probe_size
                    ),
                });
            }
        }
        Ok(jobs)
    }

    fn run_job<B: Kernels>(
        cfg: &SpectraConfig,
        index: usize,
        device: &B::Device,
        work: &Path,
    ) -> Result<SpectraPart, FigureError> {
        let m = &cfg.models[index / STATES.len()];
        let state = STATES[index % STATES.len()];
        let exp = experiment(cfg, m);
        let prepared = cfg.data.prepare(None, cfg.seed)?;
        let arch = m.model.arch(
            &prepared.train.input_shape,
            prepared.train.num_outputs(),
            cfg.seed,
        )?;
        let (theta, steps, test_accuracy) = if state == "trained" {
            let run = train_in::<B>(&exp, &work.join("runs").join(&m.name), device)?;
            let acc = run.summary.final_eval.test.accuracy;
            (run.theta, run.summary.steps, acc)
        } else {
            // The trainer's initialisation: the same seed and scheme.
            let net = m.model.init::<B>(
                &prepared.train.input_shape,
                prepared.train.num_outputs(),
                cfg.seed,
                device,
            )?;
            (flatten(&net), 0, None)
        };
        let (probe, _, _) = prepared
            .train
            .probe_subset(cfg.probe_size, cfg.probe_seed)?;
        let ops = ProbeOps::<B>::from_dataset(arch, &theta, &probe, cfg.chunk, device)?;
        let opt = MeasureOptions {
            mu: false,
            directional: false,
            spectrum: true,
            density: false,
            k: cfg.k,
            lanczos_iters: cfg.lanczos_iters,
            method: Method::Stochastic,
            hessian: cfg.hessian,
            seed: cfg.probe_seed,
            ..MeasureOptions::default()
        };
        crate::check_memory(
            |base| Resources::of_measure(&ops, &opt, base),
            "lower probe_size, chunk, k or lanczos_iters in the figure config",
        )?;
        let meas = measure(&ops, &opt)?;
        let directions = |d: &EigenDirections| Directions {
            lambda: d.lanczos.top.iter().map(|r| r.value).collect(),
            alpha: d.alpha.clone(),
            g: d.g.clone(),
            residual: d.lanczos.top.iter().map(|r| r.residual).collect(),
            converged: d.lanczos.top.iter().map(|r| r.converged).collect(),
        };
        let top_g = meas.top_g.as_ref().expect("spectrum was requested");
        let g_dir = directions(top_g);
        let ok: Vec<usize> = (0..g_dir.lambda.len())
            .filter(|&i| g_dir.converged[i])
            .collect();
        let mut g_sorted: Vec<f64> = ok.iter().filter_map(|&i| g_dir.g[i].value()).collect();
        g_sorted.sort_by(f64::total_cmp);
        let lam: Vec<f64> = ok.iter().map(|&i| g_dir.lambda[i]).collect();
        let alp: Vec<f64> = ok.iter().map(|&i| g_dir.alpha[i]).collect();
        let slope = loglog_slope(&lam, &alp);
        Ok(SpectraPart {
            model: m.name.clone(),
            state: state.into(),
            params: ops.p,
            probe_size: ops.n,
            outputs: ops.c,
            loss: meas.loss,
            steps,
            test_accuracy,
            lanczos_iters: top_g.lanczos.iterations,
            ritz_tolerance: top_g.lanczos.tolerance,
            converged: ok.len(),
            g_median: quantile(&g_sorted, 0.5),
            g_p10: quantile(&g_sorted, 0.1),
            g_p90: quantile(&g_sorted, 0.9),
            loglog_slope: slope.is_finite().then_some(slope),
            g_directions: g_dir,
            h_directions: meas.top_h.as_ref().map(directions),
        })
    }

    fn merge(
        cfg: &SpectraConfig,
        parts: Vec<SpectraPart>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        // Log axes: only positive values are drawn.
        let indexed = |v: &[f64]| -> Vec<(f64, f64)> {
            by_rank(v).into_iter().filter(|(_, y)| *y > 0.0).collect()
        };
        let mut panels = Vec::new();
        for m in &cfg.models {
            let mut series = Vec::new();
            for p in parts.iter().filter(|p| p.model == m.name) {
                let d = &p.g_directions;
                series.push(Series::line(
                    format!("λ_k, {}", p.state),
                    indexed(&d.lambda),
                ));
                series.push(Series::line(format!("α_k, {}", p.state), indexed(&d.alpha)));
            }
            panels.push(Panel {
                title: format!(
                    "{} ({}): curvature and noise energy",
                    m.name,
                    m.model.kind()
                ),
                x_label: "k".into(),
                y_label: "λ_k, α_k".into(),
                x_log: true,
                y_log: true,
                series,
                ..Panel::default()
            });
        }
        let series = parts
            .iter()
            .map(|p| {
                let d = &p.g_directions;
                let pts = (0..d.lambda.len())
                    .filter(|&i| d.converged[i])
                    .filter_map(|i| d.g[i].value().map(|g| ((i + 1) as f64, g)))
                    .collect();
                Series::scatter(format!("{}, {}", p.model, p.state), pts)
            })
            .collect();
        panels.push(Panel {
            title: "g_k = α_k / (2L λ_k), converged pairs (≈ 1: aligned)".into(),
            x_label: "k".into(),
            y_label: "g_k".into(),
            x_log: true,
            y_log: true,
            series,
            hlines: {
                let c = parts.first().map_or(1, |p| p.outputs) as f64;
                vec![
                    (1.0, "g = 1".into()),
                    (1.0 / c, format!("1/c = {:.2}", 1.0 / c)),
                ]
            },
            ..Panel::default()
        });
        let cols = panels.len().min(3);
        save(&out.stem(), &panels, cols, (640, 460))?;
        let mut text = format!(
            "{}: top {} of G on {} probe samples of {}; g_k = α_k / (2L λ_k) over converged Ritz pairs (c·g_k: output-normalised, as c·μ)\n",
            K::TITLE,
            cfg.k,
            cfg.probe_size,
            cfg.data.source_name()
        );
        for p in &parts {
            let d = &p.g_directions;
            text += &format!(
                "  {:<8} {:<7} p = {:>8}, L = {:.4}{}: λ_1 = {:.4}, λ_k = {:.3e}; {}/{} converged; g_k median {:.3} (10–90%: {:.3}–{:.3}; c·g_k median {:.3}); slope of ln α on ln λ {}\n",
                p.model,
                p.state,
                p.params,
                p.loss,
                p.test_accuracy
                    .map(|a| format!(", test acc {:.2}%", 100.0 * a))
                    .unwrap_or_default(),
                d.lambda.first().copied().unwrap_or(0.0),
                d.lambda.last().copied().unwrap_or(0.0),
                p.converged,
                d.lambda.len(),
                p.g_median,
                p.g_p10,
                p.g_p90,
                p.outputs as f64 * p.g_median,
                p.loglog_slope
                    .map(|s| format!("{s:.3}"))
                    .unwrap_or_else(|| "undefined (fewer than 2 converged pairs)".into()),
            );
        }
        text.pop();
        Ok((to_value(&parts), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_with_an_undefined_ratio_round_trips_through_a_job_file() {
        let d = Directions {
            lambda: vec![2.5, 1e-3],
            alpha: vec![0.1, 0.0],
            g: vec![
                Ratio::Value(0.75),
                Ratio::Undefined {
                    undefined: "u'Gu = 0".into(),
                },
            ],
            residual: vec![1e-6, 2e-5],
            converged: vec![true, false],
        };
        let text = toml::to_string(&d).unwrap();
        let back: Directions = toml::from_str(&text).unwrap();
        assert_eq!(back.g, d.g);
        assert_eq!(back.lambda, d.lambda);
    }
}
