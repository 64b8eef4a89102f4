//! Training for noisegeom: SGD (momentum, weight decay) under a learning-rate schedule that
//! is a pure function of the step, writing a run directory (users: docs/guide.md and
//! docs/reference.md):
//!
//! ```text
//! RUN/config.toml      the resolved config (what actually ran)
//! RUN/env.json         git revision and dirty flag, backend, versions, seed
//! RUN/data.json        dataset provenance, sizes, normalisation, architecture
//! RUN/metrics.jsonl    one JSON object per event: start, step, eval, probe, checkpoint, end
//! RUN/checkpoints/     step-NNNNNNNNNN.ckpt, written atomically
//! RUN/summary.json     final losses, accuracies and timings
//! ```
//!
//! A run killed at any point resumes from its newest checkpoint with [`RunOptions::resume`]:
//! minibatches are a pure function of `(seed, step)`, and the log is cut back to where the
//! checkpoint was taken, so the resumed run reproduces the uninterrupted one.

pub mod checkpoint;
mod config;
pub mod fsio;
mod probe;
mod schedule;
mod sgd;
mod trainer;

pub use config::{ExperimentConfig, LossKind, ProbeSettings, TrainSettings};
pub use probe::{Probe, ProbeRecord};
pub use schedule::LrSchedule;
pub use sgd::{Grads, Sgd, SgdConfig};
pub use trainer::{
    Eval, InitialWeights, Observer, Outcome, RunOptions, RunResources, SetStats, Silent, Summary,
    evaluate, newest_checkpoint, train,
};

use std::path::PathBuf;

/// Everything that stops a run. Each message is one line: what, where, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config {path}: {message}")]
    Config { path: String, message: String },
    #[error(transparent)]
    Data(#[from] noisegeom_data::DataError),
    #[error(transparent)]
    Model(#[from] noisegeom_models::ModelError),
    #[error("probe: {0}")]
    Geometry(#[from] noisegeom_metrics::GeometryError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{log} no longer matches checkpoint {checkpoint}: {problem}; restore the log, or delete the run directory to start afresh"
    )]
    DamagedLog {
        log: PathBuf,
        checkpoint: PathBuf,
        problem: String,
    },
    #[error(
        "run directory {dir} already holds a run; continue it with `noisegeom train --resume {dir}` or choose another --out"
    )]
    RunExists { dir: PathBuf },
    #[error(
        "{dir} is not a noisegeom run directory (no config.toml); check the path given to --resume"
    )]
    NothingToResume { dir: PathBuf },
    #[error(
        "training diverged at step {step} (lr = {lr}): the minibatch loss is {loss}; {}; lower the learning rate",
        match checkpoint { Some(p) => format!("the last good checkpoint is {}", p.display()), None => "no checkpoint was written before it".to_string() }
    )]
    Diverged {
        step: u64,
        lr: f64,
        loss: f64,
        checkpoint: Option<PathBuf>,
    },
}
