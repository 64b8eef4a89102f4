//! `noisegeom figure NAME` and `noisegeom sweep plan|run|merge CONFIG`: one path for both.
//! A figure is a list of independent jobs; `figure` runs them all on this machine and
//! merges, and `sweep` splits the same jobs into shards for a cluster (Slurm job arrays).

use noisegeom_kernels::AutodiffKernels;
use std::path::PathBuf;

use clap::ValueEnum;
use noisegeom_data::Source;
use noisegeom_figures::sweep::{Figure, JobState, Shard, Sweep};
use noisegeom_figures::{Output, fig1, fig2a, fig3, fig4, fig6, figure_of, load_config, spectra};

use crate::backend::Job;
use crate::env::{code_identity, env_info};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FigureName {
    Fig1,
    Fig2a,
    Fig2b,
    Fig3,
    Fig4,
    Fig5,
    Fig6,
}

impl FigureName {
    /// f64 for the small synthetic figures, f32 for the ones that train networks.
    pub fn default_precision(self) -> crate::backend::Precision {
        match self {
            FigureName::Fig2b | FigureName::Fig5 | FigureName::Fig6 => {
                crate::backend::Precision::F32
            }
            _ => crate::backend::Precision::F64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FigureName::Fig1 => "fig1",
            FigureName::Fig2a => "fig2a",
            FigureName::Fig3 => "fig3",
            FigureName::Fig4 => "fig4",
            FigureName::Fig2b => "fig2b",
            FigureName::Fig5 => "fig5",
            FigureName::Fig6 => "fig6",
        }
    }
}

/// The figure config and the options that change what the jobs compute, shared by `figure`
/// and every `sweep` step (so a sweep and a single run agree on the jobs).
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The small variant from the config's [quick] table (a smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Independent runs per point (overrides the config).
    #[arg(long)]
    pub runs: Option<usize>,
    /// The dataset of a network figure (fig2b, fig5, fig6), replacing the config's.
    #[arg(long, value_enum)]
    pub dataset: Option<Dataset>,
    /// Folder with the dataset files (default: the config's, or Debian's Fashion-MNIST).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Output folder (default: results/figures/<figure>[-<dataset>][-quick]); job results
    /// go to its jobs/ subfolder, the network figures' training runs to runs/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `--dataset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    Cifar10,
    FashionMnist,
    Mnist,
}

impl Dataset {
    fn source(self) -> Source {
        match self {
            Dataset::Cifar10 => Source::Cifar10,
            Dataset::FashionMnist => Source::FashionMnist,
            Dataset::Mnist => Source::Mnist,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Mnist => "mnist",
        }
    }
}

/// What to do with a figure's jobs.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// List the jobs, their shard under `shards` and their state.
    Plan { shards: usize },
    /// Run one shard's unfinished jobs.
    Run(Shard),
    /// Merge finished jobs into the results file and plots.
    Merge,
    /// Run every job here, then merge (`noisegeom figure`); `fresh` redoes finished jobs.
    All { fresh: bool },
}

pub struct FigureJob {
    pub figure: FigureName,
    pub config: PathBuf,
    pub target: Target,
    pub action: Action,
}

impl FigureJob {
    /// `noisegeom figure NAME [--config FILE]`.
    pub fn figure(
        figure: FigureName,
        config: Option<PathBuf>,
        target: Target,
        fresh: bool,
    ) -> anyhow::Result<FigureJob> {
        let config = config
            .unwrap_or_else(|| PathBuf::from(format!("configs/figures/{}.toml", figure.name())));
        anyhow::ensure!(
            config.is_file(),
            "figure config {} not found; run from the noisegeom folder or pass --config FILE",
            config.display()
        );
        Ok(FigureJob {
            figure,
            config,
            target,
            action: Action::All { fresh },
        })
    }

    /// `noisegeom sweep … CONFIG`: the figure is the config's `figure` key.
    pub fn sweep(config: PathBuf, target: Target, action: Action) -> anyhow::Result<FigureJob> {
        let name = figure_of(&config)?;
        let figure = FigureName::from_str(&name, true).map_err(|_| {
            anyhow::anyhow!(
                "figure config {}: unknown figure `{name}`; use fig1, fig2a, fig2b, fig3, fig4, fig5 or fig6",
                config.display()
            )
        })?;
        Ok(FigureJob {
            figure,
            config,
            target,
            action,
        })
    }

    fn go<F: Figure, B: AutodiffKernels>(
        &self,
        device: &B::Device,
        backend: &str,
    ) -> anyhow::Result<String> {
        let mut cfg: F::Config = load_config(&self.config, F::NAME, self.target.quick)?;
        if let Some(r) = self.target.runs {
            F::set_runs(&mut cfg, r)?;
        }
        let t = &self.target;
        if t.dataset.is_some() || t.data.is_some() {
            F::set_data(&mut cfg, t.dataset.map(Dataset::source), t.data.clone())?;
        }
        let dir = t.out.clone().unwrap_or_else(|| {
            let mut name = F::NAME.to_string();
            if let Some(d) = t.dataset {
                name = format!("{name}-{}", d.name());
            }
            if t.quick {
                name += "-quick";
            }
            PathBuf::from("results/figures").join(name)
        });
        let out = Output {
            dir,
            name: F::NAME.to_string(),
        };
        let sweep = Sweep::<F>::new(
            &cfg,
            self.target.quick,
            &out,
            code_identity(),
            backend.to_string(),
            B::NUMERICS,
        );
        let mut progress = |s: &str| tracing::info!("{}: {s}", F::NAME);
        let env = || env_info(backend, 0, &std::env::args().collect::<Vec<_>>());
        match self.action {
            Action::Plan { shards } => {
                let status = sweep.status()?;
                let done = status.iter().filter(|(_, s)| *s == JobState::Done).count();
                let mut text = format!(
                    "{}: {} jobs ({done} done) in {}; shard = index mod {shards}\n  {:>5} {:>5}  {:<8} {:<20} what\n",
                    F::NAME,
                    status.len(),
                    sweep.jobs_dir().display(),
                    "index",
                    "shard",
                    "state",
                    "id"
                );
                for (i, (job, state)) in status.iter().enumerate() {
                    text += &format!(
                        "  {i:>5} {:>5}  {:<8} {:<20} {}\n",
                        i % shards.max(1),
                        state.name(),
                        job.id,
                        job.label
                    );
                }
                text.pop();
                Ok(text)
            }
            Action::Run(shard) => {
                let r = sweep.run_shard::<B::InnerBackend>(shard, device, &mut progress)?;
                Ok(format!(
                    "{} shard {}/{}: ran {} jobs, skipped {} already done; results in {}",
                    F::NAME,
                    shard.index,
                    shard.count,
                    r.ran.len(),
                    r.skipped.len(),
                    sweep.jobs_dir().display()
                ))
            }
            Action::Merge => Ok(plots_line(&out, sweep.merge(env())?.1)),
            Action::All { fresh } => {
                if fresh {
                    sweep.clear_jobs()?;
                }
                let r = sweep.run_shard::<B::InnerBackend>(Shard::ALL, device, &mut progress)?;
                let mut text = plots_line(&out, sweep.merge(env())?.1);
                if !r.skipped.is_empty() {
                    text += &format!(
                        "\nreused {} finished jobs from {} (--fresh redoes them)",
                        r.skipped.len(),
                        sweep.jobs_dir().display()
                    );
                }
                Ok(text)
            }
        }
    }
}

fn plots_line(out: &Output, text: String) -> String {
    format!(
        "{text}\nplots: {}.png, {}.svg",
        out.stem().display(),
        out.stem().display()
    )
}

impl Job for FigureJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, backend: &str) -> anyhow::Result<String> {
        match self.figure {
            FigureName::Fig1 => self.go::<fig1::Fig1, B>(&device, backend),
            FigureName::Fig2a => self.go::<fig2a::Fig2a, B>(&device, backend),
            FigureName::Fig3 => self.go::<fig3::Fig3, B>(&device, backend),
            FigureName::Fig4 => self.go::<fig4::Fig4, B>(&device, backend),
            FigureName::Fig2b => self.go::<spectra::Fig2b, B>(&device, backend),
            FigureName::Fig5 => self.go::<spectra::Fig5, B>(&device, backend),
            FigureName::Fig6 => self.go::<fig6::Fig6, B>(&device, backend),
        }
    }
}
