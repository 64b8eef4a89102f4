//! Figure 6: the CNN trained several ways (by default SGD+CLR, SGD at a constant LR and
//! GD+CLR, for the same number of epochs), with the noise geometry followed during
//! training: λ_max(G), Tr G and μ on a fixed probe set, and the test accuracy (docs/definitions.md §13).
//!
//! One job per training run. Each is an ordinary run directory in `runs/<name>` (resumable,
//! readable by `noisegeom plot`), trained with the `[probe]` machinery of `noisegeom train`;
//! the job returns the run's probe and evaluation events, and the merge overlays them
//! against epochs. GD is full-batch (`batch_size` = the training-set size) and accumulates
//! its gradient over `micro_batch` samples at a time.

use noisegeom_kernels::Kernels;
use std::path::{Path, PathBuf};

use noisegeom_data::{DataConfig, Source};
use noisegeom_models::ModelConfig;
use noisegeom_train::{ExperimentConfig, ProbeSettings, TrainError, TrainSettings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::networks::{check_run, train_in};
use crate::plot::{Panel, Series, save};
use crate::runs::RunLog;
use crate::sweep::{Figure, JobSpec};
use crate::{FigureError, Output, quantile};

/// One way of training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig6Run {
    /// Short, file-name-safe name (`sgd_clr`…): the job id and run folder.
    pub name: String,
    /// Legend text.
    pub label: String,
    pub train: TrainSettings,
    /// Probe every this many steps in this run (default: `probe.every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_every: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fig6Config {
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    /// Noise geometry during training, the same probe set for every run.
    pub probe: ProbeSettings,
    pub runs: Vec<Fig6Run>,
    /// The plots' horizontal axis: `epoch` (runs of equal epochs) or `step` (runs of equal
    /// steps, such as GD against SGD for the same number of updates).
    #[serde(default, skip_serializing_if = "XAxis::is_epoch")]
    pub x_axis: XAxis,
}

/// [`Fig6Config::x_axis`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    #[default]
    Epoch,
    Step,
}

impl XAxis {
    fn is_epoch(&self) -> bool {
        *self == XAxis::Epoch
    }

    fn label(self) -> &'static str {
        match self {
            XAxis::Epoch => "epoch",
            XAxis::Step => "step",
        }
    }

    fn of(self, step: u64, epoch: f64) -> f64 {
        match self {
            XAxis::Epoch => epoch,
            XAxis::Step => step as f64,
        }
    }
}

/// One probe event of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbePoint {
    pub step: u64,
    pub epoch: f64,
    pub lr: f64,
    pub loss: f64,
    pub trace_g: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_max_g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_max_h: Option<f64>,
    /// μ and the output-normalised c·μ; absent where undefined (L = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_mu: Option<f64>,
}

/// One evaluation event of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub epoch: f64,
    pub train_mse: f64,
    pub test_mse: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
}

/// One training run's curves and end point (its timings are in the run's summary.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fig6Part {
    pub name: String,
    pub label: String,
    pub batch_size: usize,
    pub train_samples: usize,
    pub steps: u64,
    pub epochs: f64,
    pub probes: Vec<ProbePoint>,
    pub evals: Vec<EvalPoint>,
    /// Where the run diverged, if it did: its probes and evaluations up to then are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
}

/// The step whose minibatch loss was not finite, its learning rate and the loss (as text:
/// `NaN`, `inf`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Divergence {
    pub step: u64,
    pub lr: f64,
    pub loss: String,
}

/// A run's end point. The final probe alone can mislead when λ_max(G) oscillates with the
/// learning rate (GD at a large η_max), so the median and range over the second half of
/// training are reported too.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub name: String,
    pub label: String,
    pub lambda_max_g_start: Option<f64>,
    pub lambda_max_g_final: Option<f64>,
    /// Over the probes in the second half of training (epoch ≥ epochs / 2).
    pub lambda_max_g_late_median: Option<f64>,
    pub lambda_max_g_late_min: Option<f64>,
    pub lambda_max_g_late_max: Option<f64>,
    pub trace_g_final: Option<f64>,
    pub c_mu_final: Option<f64>,
    pub test_accuracy_final: Option<f64>,
    pub test_accuracy_best: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged_at_step: Option<u64>,
}

impl Fig6Part {
    fn summary(&self) -> RunSummary {
        let last = self.probes.last();
        let mut late: Vec<f64> = self
            .probes
            .iter()
            .filter(|q| q.epoch >= self.epochs / 2.0)
            .filter_map(|q| q.lambda_max_g)
            .collect();
        late.sort_by(f64::total_cmp);
        let acc: Vec<f64> = self.evals.iter().filter_map(|e| e.test_accuracy).collect();
        RunSummary {
            name: self.name.clone(),
            label: self.label.clone(),
            lambda_max_g_start: self.probes.first().and_then(|q| q.lambda_max_g),
            lambda_max_g_final: last.and_then(|q| q.lambda_max_g),
            lambda_max_g_late_median: (!late.is_empty()).then(|| quantile(&late, 0.5)),
            lambda_max_g_late_min: late.first().copied(),
            lambda_max_g_late_max: late.last().copied(),
            trace_g_final: last.map(|q| q.trace_g),
            c_mu_final: last.and_then(|q| q.c_mu),
            test_accuracy_final: acc.last().copied(),
            test_accuracy_best: acc.iter().copied().reduce(f64::max),
            diverged_at_step: self.diverged.as_ref().map(|d| d.step),
        }
    }
}

/// Figure 6 as jobs: one per training run.
pub struct Fig6;

fn experiment(cfg: &Fig6Config, run: &Fig6Run) -> ExperimentConfig {
    let mut probe = cfg.probe.clone();
    if let Some(every) = run.probe_every {
        probe.every = every;
    }
    ExperimentConfig {
        seed: cfg.seed,
        data: cfg.data.clone(),
        model: cfg.model.clone(),
        train: run.train.clone(),
        probe: Some(probe),
    }
}

impl Figure for Fig6 {
    const NAME: &'static str = "fig6";
    const NUMERICS: u32 = 1;
    type Config = Fig6Config;
    type Part = Fig6Part;

    fn set_data(
        cfg: &mut Fig6Config,
        source: Option<Source>,
        dir: Option<PathBuf>,
    ) -> Result<(), FigureError> {
        cfg.data = cfg.data.with_source(source, dir);
        Ok(())
    }

    fn plan(cfg: &Fig6Config) -> Result<Vec<JobSpec>, FigureError> {
        if cfg.runs.is_empty() {
            return Err(FigureError::Config {
                path: "runs".into(),
                message: "is empty; add [[runs]] tables".into(),
            });
        }
        cfg.runs
            .iter()
            .map(|run| {
                check_run("runs", &run.name, &experiment(cfg, run))?;
                Ok(JobSpec {
                    id: run.name.clone(),
                    label: format!("{}: {} ({})", run.name, run.label, cfg.model.kind()),
                })
            })
            .collect()
    }

    fn run_job<B: Kernels>(
        cfg: &Fig6Config,
        index: usize,
        device: &B::Device,
        work: &Path,
    ) -> Result<Fig6Part, FigureError> {
        let run = &cfg.runs[index];
        let dir = work.join("runs").join(&run.name);
        // A run that diverges is a result, not a failure of the figure: its probes up to the
        // divergence are kept and the figure says where it diverged.
        let (steps, diverged) = match train_in::<B>(&experiment(cfg, run), &dir, device) {
            Ok(trained) => (trained.summary.steps, None),
            Err(FigureError::Train(TrainError::Diverged { step, lr, loss, .. })) => (
                step,
                Some(Divergence {
                    step,
                    lr,
                    loss: loss.to_string(),
                }),
            ),
            Err(e) => return Err(e),
        };
        let log = RunLog::read(&dir)?;
        let data_json = dir.join("data.json");
        let train_samples = std::fs::read_to_string(&data_json)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["train_samples"].as_u64())
            .ok_or_else(|| {
                FigureError::Io(format!(
                    "{} is missing or unreadable; rerun with --fresh",
                    data_json.display()
                ))
            })? as usize;
        let batch = run.train.batch_size;
        let epoch = |step: u64| step as f64 * batch as f64 / train_samples as f64;
        let num = |v: &Value, key: &str| v[key].as_f64();
        let probes = log
            .probes
            .iter()
            .map(|p| {
                let step = p["step"].as_u64().unwrap_or(0);
                ProbePoint {
                    step,
                    epoch: epoch(step),
                    lr: num(p, "lr").unwrap_or(0.0),
                    loss: num(p, "loss").unwrap_or(f64::NAN),
                    trace_g: num(p, "trace_g").unwrap_or(f64::NAN),
                    lambda_max_g: num(p, "lambda_max_g"),
                    lambda_max_h: num(p, "lambda_max_h"),
                    mu: num(p, "mu"),
                    c_mu: num(p, "c_mu"),
                }
            })
            .collect();
        let evals = log
            .evals
            .iter()
            .map(|e| {
                let step = e["step"].as_u64().unwrap_or(0);
                EvalPoint {
                    step,
                    epoch: epoch(step),
                    train_mse: num(&e["train"], "mse").unwrap_or(f64::NAN),
                    test_mse: num(&e["test"], "mse").unwrap_or(f64::NAN),
                    test_accuracy: num(&e["test"], "accuracy"),
                }
            })
            .collect();
        Ok(Fig6Part {
            name: run.name.clone(),
            label: run.label.clone(),
            batch_size: batch,
            train_samples,
            steps,
            epochs: epoch(steps),
            probes,
            evals,
            diverged,
        })
    }

    fn merge(
        cfg: &Fig6Config,
        parts: Vec<Fig6Part>,
        out: &Output,
    ) -> Result<(Value, String), FigureError> {
        type Pick = fn(&ProbePoint) -> Option<f64>;
        let x = cfg.x_axis;
        let probe_panel = |title: &str, y: &str, pick: Pick, y_log: bool| Panel {
            title: title.into(),
            x_label: x.label().into(),
            y_label: y.into(),
            y_log,
            series: parts
                .iter()
                .map(|p| {
                    Series::line(
                        p.label.clone(),
                        p.probes
                            .iter()
                            .filter_map(|q| pick(q).map(|v| (x.of(q.step, q.epoch), v)))
                            .collect(),
                    )
                })
                .collect(),
            ..Panel::default()
        };
        let mut panels = vec![
            probe_panel("sharpness λ_max(G)", "λ_max(G)", |q| q.lambda_max_g, true),
            probe_panel("Tr G", "Tr G", |q| Some(q.trace_g), true),
            probe_panel(
                "loss alignment c·μ (output-normalised)",
                "c·μ",
                |q| q.c_mu,
                false,
            ),
        ];
        panels.push(Panel {
            title: "test accuracy".into(),
            x_label: x.label().into(),
            y_label: "accuracy".into(),
            series: parts
                .iter()
                .map(|p| {
                    Series::line(
                        p.label.clone(),
                        p.evals
                            .iter()
                            .filter_map(|e| e.test_accuracy.map(|a| (x.of(e.step, e.epoch), a)))
                            .collect(),
                    )
                })
                .collect(),
            ..Panel::default()
        });
        panels.push(probe_panel(
            "learning rate at the probes",
            "η",
            |q| Some(q.lr),
            false,
        ));
        if parts
            .iter()
            .any(|p| p.probes.iter().any(|q| q.lambda_max_h.is_some()))
        {
            panels.push(probe_panel(
                "Hessian sharpness λ_max(H)",
                "λ_max(H)",
                |q| q.lambda_max_h,
                false,
            ));
        }
        save(&out.stem(), &panels, 3, (600, 430))?;

        let mut text = format!(
            "Figure 6: {} on {}, probes of {} samples; final values\n",
            cfg.model.kind(),
            cfg.data.source_name(),
            cfg.probe.size
        );
        let fmt = |v: Option<f64>, prec: usize| {
            v.map(|x| format!("{x:.prec$}"))
                .unwrap_or_else(|| "—".into())
        };
        let pct = |v: Option<f64>| {
            v.map(|a| format!("{:.2}%", 100.0 * a))
                .unwrap_or_else(|| "—".into())
        };
        let summaries: Vec<RunSummary> = parts.iter().map(Fig6Part::summary).collect();
        for (p, s) in parts.iter().zip(&summaries) {
            text += &format!(
                "  {:<10} {:<24} {:>5.1} epochs, {:>5} steps of batch {:>5}: λ_max(G) {} → {} (second half: median {}, range {}–{}), Tr G {}, c·μ {}, test accuracy {} (best {}){}\n",
                p.name,
                p.label,
                p.epochs,
                p.steps,
                p.batch_size,
                fmt(s.lambda_max_g_start, 2),
                fmt(s.lambda_max_g_final, 2),
                fmt(s.lambda_max_g_late_median, 2),
                fmt(s.lambda_max_g_late_min, 2),
                fmt(s.lambda_max_g_late_max, 2),
                fmt(s.trace_g_final, 1),
                fmt(s.c_mu_final, 3),
                pct(s.test_accuracy_final),
                pct(s.test_accuracy_best),
                p.diverged
                    .as_ref()
                    .map(|d| format!(
                        "; DIVERGED at step {} (η = {:.4}, loss {})",
                        d.step, d.lr, d.loss
                    ))
                    .unwrap_or_default(),
            );
        }
        text.pop();
        let results = serde_json::json!({"summary": summaries, "runs": parts});
        Ok((results, text))
    }
}
