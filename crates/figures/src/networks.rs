//! What the network figures (2b, 5, 6) share: training a model inside a job, resumably.
//!
//! A job's training run lives in `<figure output>/runs/<name>`, a normal run directory
//! (`noisegeom plot` and `noisegeom measure --run` read it). A killed job resumes its run
//! from the newest checkpoint; a run directory left by a different config is replaced.

use noisegeom_kernels::Kernels;
use std::path::Path;

use burn::backend::Autodiff;
use noisegeom_train::{ExperimentConfig, Outcome, RunOptions, Silent, Summary, train};
use serde_json::json;

use crate::FigureError;

/// Checks one training run of a network figure before any work: its `name` (under the
/// config list `list`) names files, and its experiment config must validate.
pub fn check_run(list: &str, name: &str, exp: &ExperimentConfig) -> Result<(), FigureError> {
    let bad = |path: String, message: String| FigureError::Config { path, message };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(
            format!("{list}.name"),
            format!("`{name}` must be letters, digits or _ (it names files)"),
        ));
    }
    exp.validate()
        .map_err(|message| bad(format!("{list} `{name}`"), message))
}

/// A finished training run: its summary and final parameters.
pub struct Trained {
    pub summary: Summary,
    pub theta: Vec<f64>,
}

/// Trains `cfg` in `dir`, continuing a run of the same config found there.
pub fn train_in<B: Kernels>(
    cfg: &ExperimentConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<Trained, FigureError> {
    let recorded = dir.join("config.toml");
    let resume = match ExperimentConfig::from_file(&recorded) {
        Ok(old) if &old == cfg => true,
        // A run of another config, or a folder that is not a whole run: start over.
        _ if dir.exists() => {
            std::fs::remove_dir_all(dir).map_err(|e| {
                FigureError::Io(format!(
                    "cannot replace the stale run {}: {e}",
                    dir.display()
                ))
            })?;
            false
        }
        _ => false,
    };
    let opts = RunOptions {
        config: cfg.clone(),
        dir: dir.to_path_buf(),
        data_dir: None,
        resume,
        env: json!({"written_by": "noisegeom figure (a network figure's training job)"}),
        backend: std::any::type_name::<B>().to_string(),
        initial: None,
    };
    let summary = match train::<Autodiff<B>>(opts, device, &mut Silent)? {
        Outcome::Finished(summary) => *summary,
        Outcome::Interrupted { step, .. } => {
            return Err(FigureError::Interrupted(format!(
                "interrupted: training in {} checkpointed at step {step}; rerun the figure or shard to continue it",
                dir.display()
            )));
        }
    };
    let (_, ck) =
        noisegeom_train::newest_checkpoint(&dir.join("checkpoints"))?.ok_or_else(|| {
            FigureError::Io(format!(
                "{} finished but holds no checkpoint; rerun with --fresh",
                dir.display()
            ))
        })?;
    Ok(Trained {
        summary,
        theta: ck.params,
    })
}
