//! `noisegeom train`.

use noisegeom_kernels::AutodiffKernels;
use std::path::{Path, PathBuf};

use anyhow::Context;
use noisegeom_train::{ExperimentConfig, InitialWeights, Outcome, RunOptions, train};

use crate::backend::Job;
use crate::env::{env_info, stamp};
use crate::progress::Progress;

pub struct TrainJob {
    pub config: ExperimentConfig,
    pub dir: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub resume: bool,
    /// `--weights`: where training starts instead of the seeded initialisation.
    pub initial: Option<InitialWeights>,
}

/// `--weights FILE` (with `--name-map`): the tensors a run starts from.
pub fn initial_weights(path: &Path, name_map: Option<&Path>) -> anyhow::Result<InitialWeights> {
    Ok(InitialWeights {
        tensors: crate::tensors::read_state_dict(path, name_map)?,
        source: format!("--weights {}", path.display()),
    })
}

impl TrainJob {
    /// From `--config` (a new run) or `--resume DIR` (the config stored in the run).
    pub fn new(
        config: Option<PathBuf>,
        overrides: &[String],
        resume: Option<PathBuf>,
        out: Option<PathBuf>,
        data_dir: Option<PathBuf>,
        seed: Option<u64>,
    ) -> anyhow::Result<Self> {
        let (mut cfg, dir, resume) = match (config, resume) {
            (_, Some(dir)) => {
                let path = dir.join("config.toml");
                if !path.is_file() {
                    anyhow::bail!(
                        "{} is not a noisegeom run directory (no config.toml); check the path given to --resume",
                        dir.display()
                    );
                }
                (ExperimentConfig::from_file(&path)?, dir, true)
            }
            (Some(path), None) => {
                let cfg = ExperimentConfig::from_file_with(&path, overrides)?;
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "run".into());
                let dir = out
                    .unwrap_or_else(|| PathBuf::from("runs").join(format!("{stem}-{}", stamp())));
                (cfg, dir, false)
            }
            (None, None) => anyhow::bail!(
                "give --config FILE for a new run or --resume RUN_DIR to continue one"
            ),
        };
        if let Some(s) = seed {
            if resume && s != cfg.seed {
                anyhow::bail!(
                    "--seed {s} differs from the run's seed {}; a resumed run keeps its seed",
                    cfg.seed
                );
            }
            cfg.seed = s;
        }
        Ok(TrainJob {
            config: cfg,
            dir,
            data_dir,
            resume,
            initial: None,
        })
    }
}

impl Job for TrainJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, backend: &str) -> anyhow::Result<String> {
        let command: Vec<String> = std::env::args().collect();
        let env = env_info(backend, self.config.seed, &command);
        let dir = self.dir.clone();
        tracing::info!("run directory {} on {backend}", dir.display());
        let mut progress = Progress::new();
        let outcome = train::<B>(
            RunOptions {
                config: self.config,
                dir: self.dir,
                data_dir: self.data_dir,
                resume: self.resume,
                env,
                backend: backend.to_string(),
                initial: self.initial,
            },
            &device,
            &mut progress,
        );
        progress.finish();
        match outcome.with_context(|| format!("run {}", dir.display()))? {
            Outcome::Finished(s) => {
                let e = &s.final_eval;
                let acc = |a: Option<f64>| {
                    a.map(|a| format!(", accuracy {:.2}%", 100.0 * a))
                        .unwrap_or_default()
                };
                let probes = s
                    .probe_overhead_percent
                    .map(|o| {
                        format!(
                            "\n{} noise-geometry probes took {:.1} s, {o:.1}% of the training time",
                            s.probes, s.probe_seconds
                        )
                    })
                    .unwrap_or_default();
                Ok(format!(
                    "finished {} steps in {:.1} s ({:.0} samples/s on {}): train loss {:.4}{}; test loss {:.4}{}{probes}\nrun directory: {}",
                    s.steps,
                    s.wall_seconds,
                    s.samples_per_second,
                    s.backend,
                    e.train.mse,
                    acc(e.train.accuracy),
                    e.test.mse,
                    acc(e.test.accuracy),
                    dir.display()
                ))
            }
            Outcome::Interrupted { step, checkpoint } => Err(crate::Stopped(format!(
                "interrupted after step {step}; checkpoint {}; continue with `noisegeom train --resume {}`",
                checkpoint.display(),
                dir.display()
            ))
            .into()),
        }
    }
}
