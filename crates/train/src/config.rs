//! The experiment config file: `[data]`, `[model]`, `[train]`, all with unknown keys
//! rejected.

use std::path::Path;

use noisegeom_data::{DataConfig, Sampling};
use noisegeom_models::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::{LrSchedule, TrainError};

/// A whole experiment: data, model and optimisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Seeds the data subset, synthetic data, initialisation and minibatch order.
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainSettings,
    /// Noise geometry measured during training (absent: no probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSettings>,
}

/// The `[probe]` table: noise geometry on a fixed subset of the training set, measured
/// every `every` steps and at the end of each high- and low-LR phase of a cyclical
/// schedule, always at step 0 and at the end. Probes read the parameters and nothing else,
/// so they never change the training trajectory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// `false` turns probes off without deleting the table (`--set probe.enabled=false`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Samples in the probe subset (class-balanced when every class has enough).
    #[serde(default = "probe_size")]
    pub size: usize,
    /// Probe every this many steps; 0 probes only at phase ends, the start and the end.
    #[serde(default)]
    pub every: u64,
    /// Probe at the end of each half-cycle of a cyclical schedule (the LR peaks and troughs).
    #[serde(default = "yes")]
    pub at_phase_ends: bool,
    /// Top eigen-directions of G along which g_k and α_k are logged.
    #[serde(default = "five")]
    pub k: usize,
    /// Lanczos steps, for G (on the dense Gram) and for H (whose run ends sooner once
    /// λ_max(H) has converged).
    #[serde(default = "twenty")]
    pub lanczos_iters: usize,
    /// Also λ_max(H), by Lanczos on exact Hessian-vector products (the costly part).
    #[serde(default = "yes")]
    pub hessian: bool,
    /// Samples per forward pass inside a probe.
    #[serde(default = "probe_chunk")]
    pub chunk: usize,
    /// Byte budget of the exact Gram; above it μ is a Hutchinson estimate with an error bar.
    #[serde(default = "gram_gb")]
    pub max_gram_gb: f64,
    /// Seeds the probe subset and the Lanczos start vectors.
    #[serde(default)]
    pub seed: u64,
}

fn probe_size() -> usize {
    256
}
fn yes() -> bool {
    true
}
fn five() -> usize {
    5
}
fn twenty() -> usize {
    20
}
fn probe_chunk() -> usize {
    256
}
fn gram_gb() -> f64 {
    2.0
}

impl ProbeSettings {
    /// Whether a probe runs after `done` steps of `total` (phase ends given by the schedule).
    pub fn due(&self, done: u64, total: u64, phase_ends: &[u64]) -> bool {
        done == 0
            || done == total
            || (self.every > 0 && done.is_multiple_of(self.every))
            || (self.at_phase_ends && phase_ends.binary_search(&done).is_ok())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.size < 2 {
            return Err(format!("probe.size = {}; it must be at least 2", self.size));
        }
        if self.k == 0 || self.lanczos_iters < self.k {
            return Err(format!(
                "probe.k = {} and probe.lanczos_iters = {}: need 1 ≤ k ≤ lanczos_iters",
                self.k, self.lanczos_iters
            ));
        }
        if self.chunk == 0 {
            return Err("probe.chunk = 0; it must be at least 1".into());
        }
        if !(self.max_gram_gb > 0.0 && self.max_gram_gb.is_finite()) {
            return Err(format!(
                "probe.max_gram_gb = {}; it must be positive",
                self.max_gram_gb
            ));
        }
        Ok(())
    }
}

/// Loss minimised by the trainer. The geometry metrics always use the square loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// L = 1/(2n) Σ_i ||f(x_i) − y_i||², summed over outputs (docs/definitions.md §1), one-hot targets.
    #[default]
    Mse,
    /// Mean softmax cross-entropy (classification only).
    CrossEntropy,
}

/// The `[train]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    #[serde(default)]
    pub loss: LossKind,
    pub batch_size: usize,
    /// Samples per forward/backward pass: a larger batch is split into micro-batches whose
    /// gradients are summed, so full-batch GD fits in memory (default: the whole batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    /// Length of the run in steps; give exactly one of `steps` and `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    #[serde(default = "without_replacement")]
    pub sampling: Sampling,
    pub lr: LrSchedule,
    /// Heavy-ball momentum (PyTorch convention, no dampening).
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    /// L2 penalty added to the gradient (coupled weight decay, as PyTorch SGD).
    #[serde(default)]
    pub weight_decay: f64,
    /// Log the mean training loss every this many steps.
    #[serde(default = "ten")]
    pub log_every: u64,
    /// Evaluate on the test set (and a fixed training subset) every this many steps.
    #[serde(default = "hundred")]
    pub eval_every: u64,
    /// Checkpoint every this many steps (default: at every evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept on disk (the newest ones).
    #[serde(default = "three")]
    pub keep_checkpoints: usize,
    /// Samples per forward pass during evaluation.
    #[serde(default = "eval_batch")]
    pub eval_batch: usize,
}

fn without_replacement() -> Sampling {
    Sampling::WithoutReplacement
}
fn ten() -> u64 {
    10
}
fn hundred() -> u64 {
    100
}
fn three() -> usize {
    3
}
fn eval_batch() -> usize {
    1000
}

impl ExperimentConfig {
    /// Reads and validates a TOML config. Errors carry `file:line:col`.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Config {
            path: path.display().to_string(),
            message: format!("cannot read it ({e}); check the path"),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Reads a config and applies `key.path=value` overrides (`--set`), then validates.
    /// Values are TOML (`train.steps=20`, `model.channels=[8,16]`); anything that does not
    /// parse as TOML is taken as a string (`data.source=cifar10`).
    pub fn from_file_with(path: &Path, overrides: &[String]) -> Result<Self, TrainError> {
        let cfg = Self::from_file(path)?;
        if overrides.is_empty() {
            return Ok(cfg);
        }
        let origin = path.display().to_string();
        let err = |message: String| TrainError::Config {
            path: origin.clone(),
            message,
        };
        let mut table = toml::Table::try_from(&cfg).map_err(|e| err(e.to_string()))?;
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| err(format!("--set {o}: expected key.path=value")))?;
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut node = &mut table;
            let parts: Vec<&str> = key.trim().split('.').collect();
            for part in &parts[..parts.len() - 1] {
                node = node
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .ok_or_else(|| err(format!("--set {o}: `{part}` is not a table")))?;
            }
            let leaf = parts[parts.len() - 1];
            // `steps` and `epochs` are alternatives: setting one clears the other.
            if parts.len() == 2 && parts[0] == "train" {
                match leaf {
                    "steps" => drop(node.remove("epochs")),
                    "epochs" => drop(node.remove("steps")),
                    _ => {}
                }
            }
            node.insert(leaf.to_string(), value);
        }
        let cfg: ExperimentConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err(format!("after --set: {}", e.message().trim())))?;
        cfg.validate()
            .map_err(|m| err(format!("after --set: {m}")))?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TrainError> {
        let cfg: ExperimentConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    let col = s.start - text[..s.start].rfind('\n').map_or(0, |p| p + 1) + 1;
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            TrainError::Config {
                path: format!("{origin}{at}"),
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        cfg.validate().map_err(|message| TrainError::Config {
            path: origin.to_string(),
            message,
        })?;
        Ok(cfg)
    }

    /// Range checks that do not need the data.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        if let Some(p) = &self.probe {
            p.validate()?;
        }
        let t = &self.train;
        t.lr.validate()?;
        match (t.steps, t.epochs) {
            (Some(0), _) => return Err("train.steps = 0; train for at least one step".into()),
            (_, Some(e)) if !(e.is_finite() && e > 0.0) => {
                return Err(format!("train.epochs = {e}; it must be positive"));
            }
            (Some(_), Some(_)) => {
                return Err("give either train.steps or train.epochs, not both".into());
            }
            (None, None) => return Err("give train.steps or train.epochs".into()),
            _ => {}
        }
        if t.batch_size == 0 {
            return Err("train.batch_size = 0; it must be at least 1".into());
        }
        if t.micro_batch == Some(0) {
            return Err("train.micro_batch = 0; it must be at least 1 (or remove it)".into());
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(format!(
                "train.momentum = {}; it must lie in [0, 1)",
                t.momentum
            ));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(format!(
                "train.weight_decay = {}; it must be ≥ 0",
                t.weight_decay
            ));
        }
        for (key, v) in [("log_every", t.log_every), ("eval_every", t.eval_every)] {
            if v == 0 {
                return Err(format!("train.{key} = 0; it must be at least 1"));
            }
        }
        if t.checkpoint_every == Some(0) || t.keep_checkpoints == 0 || t.eval_batch == 0 {
            return Err(
                "train.checkpoint_every, train.keep_checkpoints and train.eval_batch must be ≥ 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// Total optimisation steps for `n_train` training samples.
    pub fn total_steps(&self, n_train: usize) -> u64 {
        match (self.train.steps, self.train.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                let per_epoch = (n_train / self.train.batch_size).max(1) as f64;
                (e * per_epoch).ceil().max(1.0) as u64
            }
            (None, None) => unreachable!("validated"),
        }
    }

    /// The config as TOML, for the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
seed = 3
[data]
source = "synthetic_images"
n_train = 100
n_test = 20
[model]
kind = "cnn"
channels = [4, 8]
[train]
batch_size = 10
steps = 50
[train.lr]
schedule = "triangular"
min = 0.01
max = 0.1
period = 20
"#;

    #[test]
    fn round_trips_through_toml() {
        let cfg = ExperimentConfig::from_toml(GOOD, "good.toml").unwrap();
        let again = ExperimentConfig::from_toml(&cfg.to_toml(), "again").unwrap();
        assert_eq!(cfg, again);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let bad = GOOD.replace("batch_size = 10", "batch_size = 10\nbatchsize = 3");
        let err = ExperimentConfig::from_toml(&bad, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml:12:1") && err.contains("batchsize"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        std::fs::write(&p, GOOD).unwrap();
        let cfg = ExperimentConfig::from_file_with(
            &p,
            &[
                "train.steps=7".into(),
                "model.channels=[2, 3]".into(),
                "seed=9".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.train.steps, Some(7));
        assert_eq!(cfg.seed, 9);
        let err = ExperimentConfig::from_file_with(&p, &["train.stepz=7".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stepz"), "{err}");
        let err = ExperimentConfig::from_file_with(&p, &["train.lr.max=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.lr.max = -1"), "{err}");
    }

    #[test]
    fn negative_learning_rate_is_rejected() {
        let bad = GOOD.replace("max = 0.1", "max = -0.1");
        let err = ExperimentConfig::from_toml(&bad, "neg.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.lr.max = -0.1"), "{err}");
    }

    /// Seeded corruptions of a valid config (flipped and deleted characters, truncations)
    /// each parse to a config or to a one-line error; none panics.
    #[test]
    fn fuzzed_configs_parse_or_fail_cleanly() {
        let good = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/quickstart.toml"
        ))
        .unwrap();
        assert!(ExperimentConfig::from_toml(&good, "quickstart").is_ok());
        let chars: Vec<char> = good.chars().collect();
        let mut rng = noisegeom_data::seeded_rng(0, "fuzz-config");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        let mut errors = 0;
        for case in 0..300 {
            let mut c = chars.clone();
            let at = next(c.len());
            match case % 3 {
                0 => c.truncate(at),
                1 => {
                    c.remove(at);
                }
                _ => c[at] = ['=', '[', '"', '9', '-', '\n', 'x', '.'][next(8)],
            }
            let text: String = c.into_iter().collect();
            if let Err(e) = ExperimentConfig::from_toml(&text, "fuzzed") {
                errors += 1;
                let msg = e.to_string();
                assert!(
                    !msg.is_empty() && !msg.contains('\n'),
                    "case {case}: {msg:?}"
                );
            }
        }
        assert!(errors > 100, "only {errors} of 300 corruptions were errors");
    }
}
