//! Where θ and the probe set come from, for `measure` and `export`: a run's newest
//! checkpoint, the initialisation of a config, or weights from a file; a seeded subset of the
//! config's data, or a probe file.

use std::path::PathBuf;

use anyhow::Context;
use noisegeom_data::Dataset;
use noisegeom_kernels::AutodiffKernels;
use noisegeom_models::{Arch, ModelConfig, Net, RandomInit, flatten};
use noisegeom_train::{ExperimentConfig, newest_checkpoint};

use crate::tensors::ProbeTensors;

/// Where θ and the probe set came from.
pub struct Source {
    pub model: ModelConfig,
    pub seed: u64,
    pub arch: Arch,
    pub theta: Vec<f64>,
    /// `init`, `step N` or `weights FILE`.
    pub at: String,
    pub run_dir: Option<PathBuf>,
}

/// Where θ and the probe set come from, shared by `measure` and `export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeSource {
    /// A run directory: its newest checkpoint is measured.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub run: Option<PathBuf>,
    /// An experiment config, or a file holding only its [model] table (with --weights and a
    /// probe file); with --at-init, the freshly initialised model is measured.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, conflicts_with = "weights")]
    pub at_init: bool,
    /// θ from a PyTorch state_dict saved as safetensors, in torch.nn.Sequential names
    /// ("{i}.weight", "{i}.{j}.weight" inside residual block i); f16, bf16, f32 or f64.
    #[arg(long, value_name = "FILE", requires = "config")]
    pub weights: Option<PathBuf>,
    /// Renames the weights' tensors: a TOML or JSON table, external name → noisegeom name.
    #[arg(long, value_name = "FILE", requires = "weights")]
    pub name_map: Option<PathBuf>,
    /// The probe set from a safetensors file holding x [n, *input_shape] and either
    /// y [n, c] or integer labels [n]; inputs are used as given (no normalisation).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["probe_x", "probe_size"])]
    pub probe: Option<PathBuf>,
    /// The probe inputs as .npy [n, *input_shape] (with --probe-y).
    #[arg(
        long,
        value_name = "FILE",
        requires = "probe_y",
        conflicts_with = "probe_size"
    )]
    pub probe_x: Option<PathBuf>,
    /// The probe targets as .npy: y [n, c], or integer labels [n].
    #[arg(long, value_name = "FILE", requires = "probe_x")]
    pub probe_y: Option<PathBuf>,
    /// Override config values (with --config), as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Dataset folder, overriding the config's.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Probe samples: a seeded (class-balanced when possible) subset of the training set
    /// (default 1000).
    #[arg(long)]
    pub probe_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub probe_seed: u64,
}

/// The probe set and where it came from: its indices in the training set (empty for a
/// probe file) and whether it is class-balanced.
pub struct Probe {
    pub set: Dataset,
    pub indices: Vec<usize>,
    pub balanced: bool,
}

impl ProbeSource {
    /// The model, its seed, the data config (absent for a [model]-only file) and the run.
    fn config(
        &self,
    ) -> anyhow::Result<(ModelConfig, u64, Option<ExperimentConfig>, Option<PathBuf>)> {
        if let Some(dir) = &self.run {
            let path = dir.join("config.toml");
            anyhow::ensure!(
                path.is_file(),
                "{} is not a noisegeom run directory (no config.toml); pass a run directory to --run",
                dir.display()
            );
            let cfg = ExperimentConfig::from_file(&path)?;
            return Ok((cfg.model.clone(), cfg.seed, Some(cfg), Some(dir.clone())));
        }
        let Some(path) = &self.config else {
            anyhow::bail!(
                "give --run RUN_DIR, --config FILE --at-init, or --config ARCH.toml --weights FILE"
            );
        };
        anyhow::ensure!(
            self.at_init || self.weights.is_some(),
            "--config {}: give --at-init (measure the initialisation) or --weights FILE",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}; check the path", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid TOML", path.display()))?;
        if table.contains_key("data") {
            let cfg = ExperimentConfig::from_file_with(path, &self.overrides)?;
            return Ok((cfg.model.clone(), cfg.seed, Some(cfg), None));
        }
        anyhow::ensure!(
            self.overrides.is_empty(),
            "--set needs a full experiment config; {} holds no [data] table",
            path.display()
        );
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ModelOnly {
            #[serde(default)]
            seed: u64,
            model: ModelConfig,
        }
        let m: ModelOnly = toml::from_str(&text).with_context(|| {
            format!(
                "config {}: without a [data] table it may hold only `seed` and [model]",
                path.display()
            )
        })?;
        Ok((m.model, m.seed, None, None))
    }

    /// The probe file's tensors, if one was given.
    fn probe_file(&self) -> anyhow::Result<Option<ProbeTensors>> {
        Ok(match (&self.probe, &self.probe_x, &self.probe_y) {
            (Some(path), _, _) => Some(crate::tensors::probe_tensors(path)?),
            (None, Some(x), Some(y)) => Some(crate::tensors::probe_npy(x, y)?),
            _ => None,
        })
    }

    /// θ and the probe set.
    pub fn load<B: AutodiffKernels>(&self, device: &B::Device) -> anyhow::Result<(Source, Probe)> {
        let (model, seed, cfg, run_dir) = self.config()?;
        let (arch, probe) = match (self.probe_file()?, &cfg) {
            (Some(t), _) => {
                let input_shape = match &model {
                    ModelConfig::Sequential {
                        input_shape: Some(s),
                        ..
                    } => s.clone(),
                    _ => t.x.shape.get(1..).unwrap_or_default().to_vec(),
                };
                let origin = t.origin.clone();
                let outputs = match (&t.y, &model) {
                    (Some(y), _) => y.shape.get(1).copied().unwrap_or(0),
                    (None, ModelConfig::Sequential { .. }) => {
                        model.natural_outputs(&input_shape).with_context(|| {
                            format!("{origin}: the model's output count is needed for labels")
                        })?
                    }
                    (None, _) => anyhow::bail!(
                        "{origin}: labels need a sequential model (its last layer gives the classes); give one-hot y [n, c] instead"
                    ),
                };
                let arch = model.arch(&input_shape, outputs, seed)?;
                let set = crate::tensors::probe_dataset(t, &input_shape, outputs)?;
                let probe = Probe {
                    set,
                    indices: Vec::new(),
                    balanced: false,
                };
                (arch, probe)
            }
            (None, Some(cfg)) => {
                let prepared = cfg.data.prepare(self.data.as_deref(), seed)?;
                let arch = model.arch(
                    &prepared.train.input_shape,
                    prepared.train.num_outputs(),
                    seed,
                )?;
                let available = prepared.train.len();
                let size = match self.probe_size {
                    Some(size) => {
                        anyhow::ensure!(
                            (1..=available).contains(&size),
                            "--probe-size {size}: the probe set is a subset of the {available} training samples of {}; give 1 to {available}",
                            prepared.train.provenance.name
                        );
                        size
                    }
                    None => available.min(1000),
                };
                let (set, indices, balanced) =
                    prepared.train.probe_subset(size, self.probe_seed)?;
                (
                    arch,
                    Probe {
                        set,
                        indices,
                        balanced,
                    },
                )
            }
            (None, None) => anyhow::bail!(
                "the config holds only [model]; give the probe set with --probe FILE.safetensors or --probe-x/--probe-y, or a config with [data]"
            ),
        };
        let (arch, theta, at) = if let Some(path) = &self.weights {
            let tensors = crate::tensors::read_state_dict(path, self.name_map.as_deref())?;
            let (arch, theta) = arch
                .load_state(tensors)
                .with_context(|| format!("--weights {}", path.display()))?;
            (arch, theta, format!("weights {}", path.display()))
        } else if let Some(dir) = &run_dir {
            let (path, ck) = newest_checkpoint(&dir.join("checkpoints"))?.with_context(|| {
                format!(
                    "{} has no readable checkpoint yet; train it first",
                    dir.display()
                )
            })?;
            anyhow::ensure!(
                ck.arch == arch,
                "checkpoint {} does not match the run's config; the run directory was edited",
                path.display()
            );
            (arch, ck.params, format!("step {}", ck.step))
        } else {
            let net = Net::<B>::build(
                arch.clone(),
                &mut RandomInit::new(device, model.init_scheme(), seed),
            )?;
            (arch, flatten(&net), "init".to_string())
        };
        Ok((
            Source {
                model,
                seed,
                arch,
                theta,
                at,
                run_dir,
            },
            probe,
        ))
    }
}
