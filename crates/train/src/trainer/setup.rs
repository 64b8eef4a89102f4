//! Setting a run up: a fresh run directory or the checkpoint it resumes from, the data
//! (checked against the config), the files that record the run, and the starting state.

use std::path::{Path, PathBuf};

use noisegeom_data::Prepared;
use noisegeom_models::{Arch, AutodiffKernels, FlatSource, Net};
use serde_json::json;

use super::RunOptions;
use super::eval::newest_checkpoint;
use crate::checkpoint::{self, Checkpoint};
use crate::fsio::{check_log, write_atomic};
use crate::sgd::{Sgd, SgdConfig};
use crate::{ExperimentConfig, LossKind, TrainError};

/// A run directory opened for training, with its data.
pub(super) struct Setup {
    pub(super) dir: PathBuf,
    pub(super) ckpt_dir: PathBuf,
    pub(super) log_path: PathBuf,
    /// The config as recorded (with the data directory actually read).
    pub(super) cfg: ExperimentConfig,
    pub(super) prepared: Prepared,
    pub(super) arch: Arch,
    /// The newest readable checkpoint, when resuming.
    pub(super) resume_from: Option<(PathBuf, Checkpoint)>,
    /// θ of the given weights ([`RunOptions::initial`]), for a fresh run.
    pub(super) initial_theta: Option<Vec<f64>>,
}

/// An I/O error at `path`, as a [`TrainError`].
pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |source| TrainError::Io { path, source }
}

/// Opens `opts.dir` (refusing to overwrite a run, or to resume one that is not there),
/// prepares and checks the data, and on a fresh run writes `config.toml`, `env.json` and
/// `data.json`.
pub(super) fn open(opts: &RunOptions) -> Result<Setup, TrainError> {
    let dir = opts.dir.clone();
    let ckpt_dir = dir.join("checkpoints");
    let log_path = dir.join("metrics.jsonl");
    let mut cfg = opts.config.clone();

    let resume_from = if opts.resume {
        if !dir.join("config.toml").is_file() {
            return Err(TrainError::NothingToResume { dir });
        }
        newest_checkpoint(&ckpt_dir)?
    } else {
        if log_path.exists() || !checkpoint::list(&ckpt_dir).is_empty() {
            return Err(TrainError::RunExists { dir });
        }
        None
    };
    std::fs::create_dir_all(&ckpt_dir).map_err(io(&ckpt_dir))?;

    // Data, with the directory actually read written back into the recorded config.
    let prepared: Prepared = cfg.data.prepare(opts.data_dir.as_deref(), cfg.seed)?;
    if opts.data_dir.is_some() || cfg.data.dir.is_some() {
        cfg.data.dir = cfg.data.resolved_dir(opts.data_dir.as_deref());
    }
    let n_train = prepared.train.len();
    if cfg.train.batch_size > n_train {
        return Err(TrainError::Config {
            path: "train.batch_size".into(),
            message: format!(
                "{} exceeds the {} training samples; lower it (full-batch GD uses batch_size = {})",
                cfg.train.batch_size, n_train, n_train
            ),
        });
    }
    if cfg.train.loss == LossKind::CrossEntropy && prepared.train.class_counts().is_none() {
        return Err(TrainError::Config {
            path: "train.loss".into(),
            message:
                "cross_entropy needs class labels, but the data are regression targets; use mse"
                    .into(),
        });
    }
    let arch = cfg.model.arch(
        &prepared.train.input_shape,
        prepared.train.num_outputs(),
        cfg.seed,
    )?;
    if let Some(i) = arch
        .stages
        .iter()
        .position(|s| matches!(s, noisegeom_models::Stage::BatchNorm { .. }))
    {
        return Err(TrainError::Config {
            path: "model.layers".into(),
            message: format!(
                "stage {i} is a batchnorm, which noisegeom does not train: in training mode its batch statistics couple the samples, so per-sample gradients and G are undefined; train without it, and measure networks with BatchNorm in eval mode (`noisegeom measure --weights`)"
            ),
        });
    }

    let initial_theta = match &opts.initial {
        None => None,
        Some(_) if opts.resume => {
            return Err(TrainError::Config {
                path: "--weights".into(),
                message: "a resumed run continues from its own checkpoint; give --weights only to start a run".into(),
            });
        }
        Some(w) => {
            let (loaded, theta) =
                arch.load_state(w.tensors.clone())
                    .map_err(|e| TrainError::Config {
                        path: w.source.clone(),
                        message: e.to_string(),
                    })?;
            debug_assert_eq!(loaded, arch, "no fixed tensors in a trainable architecture");
            Some(theta)
        }
    };

    if !opts.resume {
        write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())
            .map_err(io(&dir.join("config.toml")))?;
        let env = serde_json::to_vec_pretty(&opts.env).expect("json");
        write_atomic(&dir.join("env.json"), &env).map_err(io(&dir.join("env.json")))?;
        let data = json!({
            "train": prepared.train.provenance,
            "test": prepared.test.provenance,
            "train_samples": prepared.train.len(),
            "test_samples": prepared.test.len(),
            "input_shape": prepared.train.input_shape,
            "outputs": prepared.train.num_outputs(),
            "class_counts_train": prepared.train.class_counts(),
            "normalisation": prepared.normalisation,
            "num_params": arch.num_params(),
            "arch": arch,
            "initial_weights": opts.initial.as_ref().map(|w| json!({
                "source": w.source,
                "theta_fnv1a64": format!("{:016x}", crate::fsio::fnv(
                    &initial_theta.iter().flatten().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
                )),
            })),
        });
        write_atomic(
            &dir.join("data.json"),
            &serde_json::to_vec_pretty(&data).expect("json"),
        )
        .map_err(io(&dir.join("data.json")))?;
    }
    Ok(Setup {
        dir,
        ckpt_dir,
        log_path,
        cfg,
        prepared,
        arch,
        resume_from,
        initial_theta,
    })
}

/// Where training starts: the model, the optimiser, the step, how much of the log to keep,
/// the open loss window and whether a probe is pending.
pub(super) struct Start<B: AutodiffKernels> {
    pub(super) model: Net<B>,
    pub(super) sgd: Sgd<B::InnerBackend>,
    pub(super) step: u64,
    /// The log's length to cut back to (`None`: a fresh log).
    pub(super) log_keep: Option<u64>,
    pub(super) window: (f64, u64),
    pub(super) probe_pending: bool,
}

impl Setup {
    /// The state the checkpoint resumed from holds, or a fresh one (the given weights or the
    /// seeded initialisation, the probe of step 0 pending).
    pub(super) fn start<B: AutodiffKernels>(
        &self,
        resume: bool,
        device: &B::Device,
    ) -> Result<Start<B>, TrainError> {
        let sgd_cfg = SgdConfig {
            momentum: self.cfg.train.momentum,
            nesterov: self.cfg.train.nesterov,
            weight_decay: self.cfg.train.weight_decay,
        };
        let arch = &self.arch;
        Ok(match &self.resume_from {
            Some((path, ck)) => {
                if let Some(mark) = ck.log_mark() {
                    check_log(&self.log_path, mark).map_err(|problem| TrainError::DamagedLog {
                        log: self.log_path.clone(),
                        checkpoint: path.clone(),
                        problem,
                    })?;
                }
                if ck.arch != *arch {
                    return Err(TrainError::Config {
                        path: self.dir.join("config.toml").display().to_string(),
                        message: "the checkpoint's architecture differs from the run's config; the run directory was edited".into(),
                    });
                }
                let sizes: Vec<usize> = arch
                    .param_layout()
                    .iter()
                    .map(|(_, s)| s.iter().product())
                    .collect();
                Start {
                    model: Net::build(arch.clone(), &mut FlatSource::new(device, &ck.params))?,
                    sgd: match &ck.momentum {
                        Some(m) => Sgd::with_state(sgd_cfg, m, &sizes, device),
                        None => Sgd::new(sgd_cfg),
                    },
                    step: ck.step,
                    log_keep: Some(ck.log_bytes),
                    window: ck.loss_window,
                    probe_pending: ck.probe_pending,
                }
            }
            None => Start {
                model: match &self.initial_theta {
                    Some(theta) => Net::build(arch.clone(), &mut FlatSource::new(device, theta))?,
                    None => self.cfg.model.init(
                        &self.prepared.train.input_shape,
                        self.prepared.train.num_outputs(),
                        self.cfg.seed,
                        device,
                    )?,
                },
                sgd: Sgd::new(sgd_cfg),
                step: 0,
                log_keep: if resume { Some(0) } else { None },
                window: (0.0, 0),
                // The probe of step 0.
                probe_pending: true,
            },
        })
    }
}
