//! The `noisegeom` command line. It owns the terminal: results go to stdout, progress bars
//! and logs to stderr, and every error is one line on stderr with a nonzero exit.
//! Users: docs/guide.md (how-tos) and docs/reference.md (every key, flag and field).

// The one crate allowed to write to the terminal (the library crates deny it).
#![allow(clippy::print_stdout, clippy::print_stderr)]
// The doc comments of this crate's clap types are its `--help` texts, written for a terminal
// (`<figure>`, `[16,32,32]` as typed), not as rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod backend;
mod cmd;
#[cfg(test)]
mod doc_commands;
mod env;
mod malloc;
mod progress;
#[cfg(test)]
mod reference;
mod signals;
mod sources;
mod tensors;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use backend::{BackendKind, Precision, dispatch};

/// noisegeom: the geometry of SGD noise, measured.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Refuse to start a job (training with probes, a measurement, a figure job) whose
    /// estimated peak memory exceeds this many GB (default: 80% of the machine's physical
    /// memory).
    #[arg(long, value_name = "GB", global = true)]
    max_memory: Option<f64>,
}

/// Flags every compute command shares.
#[derive(clap::Args, Debug, Clone)]
struct Compute {
    /// Where to run: cpu (burn-flex), ndarray, or wgpu.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// Floating-point precision (wgpu is f32 only; f64 on the CPU runs on ndarray).
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model with SGD under a learning-rate schedule, writing a run directory.
    Train {
        /// Experiment config (TOML) for a new run.
        #[arg(long, conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Continue the run in this directory from its newest checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Dataset folder, overriding `data.dir` in the config.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Seed overriding the config's.
        #[arg(long)]
        seed: Option<u64>,
        /// Run directory (default: runs/<config name>-<UTC time>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Override a config value, e.g. --set train.steps=100 --set model.channels=[16,32,32].
        #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "resume")]
        overrides: Vec<String>,
        /// Start from these weights (safetensors, a PyTorch state_dict with the model's
        /// tensor names) instead of the seeded initialisation: fine-tuning.
        #[arg(long, value_name = "FILE", conflicts_with = "resume")]
        weights: Option<PathBuf>,
        /// Renames the weights' tensors: a TOML or JSON table, external name → noisegeom name.
        #[arg(long, value_name = "FILE", requires = "weights")]
        name_map: Option<PathBuf>,
        #[command(flatten)]
        compute: Compute,
    },
    /// Measure the noise geometry of a checkpoint (or of the initialisation) over a probe set:
    /// μ, g(θ, v), top-k eigenpairs of G and H with noise energy α_k, spectral densities.
    Measure {
        #[command(flatten)]
        job: cmd::measure::MeasureJob,
        #[command(flatten)]
        compute: Compute,
    },
    /// Write θ and the probe set as safetensors (PyTorch layouts), to recompute any number
    /// elsewhere.
    Export {
        #[command(flatten)]
        source: cmd::source::ProbeSource,
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Regenerate a figure of the paper: a results file (JSON) and a PNG + SVG. Runs the
    /// figure's jobs here (reusing finished ones from an earlier run), then merges them.
    Figure {
        /// Which figure.
        #[arg(value_enum)]
        figure: cmd::figure::FigureName,
        /// Figure config (default: configs/figures/<figure>.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        target: cmd::figure::Target,
        /// Recompute every job, even those an earlier run finished.
        #[arg(long)]
        fresh: bool,
        #[command(flatten)]
        compute: FigureCompute,
    },
    /// Split a figure into independent jobs for a cluster: plan them, run one shard of them
    /// (e.g. one Slurm array task), merge the results. See scripts/slurm/README.md.
    Sweep {
        #[command(subcommand)]
        step: SweepStep,
    },
    /// Draw training curves of one or more run directories, overlaid: loss, accuracy, LR,
    /// μ, λ_max(G), λ_max(H) and Tr G against the step (PNG + SVG), plus CSV of each run.
    Plot {
        /// Run directories written by `noisegeom train`.
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// Output folder (default: RUN_DIR/plots for one run, plots/ for several).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// List the backends this build can use, and the wgpu adapter if there is one.
    Backends,
    /// Time workloads (median of repeats after a warm-up) on one or more backends, side by side.
    Bench {
        /// Backends to compare in this one run, e.g. cpu,ndarray.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
        backends: Vec<BackendKind>,
        #[arg(long, value_enum, default_value = "f32")]
        precision: Precision,
        /// Workloads (default: all but the heavy ones): train-fnn, train-cnn, jv-fnn,
        /// jv-double-vjp-fnn, gv-fnn, hv-fnn, hv-double-backward-fnn, lanczos-fnn, gram-mu-fnn,
        /// mu-fnn, alpha-fnn, hv-cnn, gram-mu-cnn, probe-cnn, sgemm; heavy, run once when
        /// named: mu-cnn-4096 (exact μ of the CNN over 4096 probe samples, features held to
        /// 3 GB; many minutes on 2 cores).
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Timed repeats after the warm-up (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Probe samples of the geometry workloads (smaller for a slow device).
        #[arg(long, default_value_t = cmd::bench::GEOMETRY_N)]
        probe_size: usize,
        /// Also write the timings as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// On wgpu, count the kernels cubecl compiles (in the warm-up and in the timed calls)
        /// and launches per call, from its logs (which cost a little time per launch).
        #[arg(long)]
        kernel_counts: bool,
    },
    /// Inspect datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

/// Where the figures run: on the CPU by default, in f64 for the synthetic figures (they are
/// small) and in f32 for the network figures (2b, 5, 6), which train networks.
#[derive(clap::Args, Debug, Clone)]
struct FigureCompute {
    /// Where to run.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// Precision (default: f64 for fig1–fig4, f32 for fig2b, fig5 and fig6).
    #[arg(long, value_enum)]
    precision: Option<Precision>,
}

#[derive(Subcommand, Debug)]
enum SweepStep {
    /// List the figure's jobs, each with a stable id, its shard and whether it is done.
    Plan {
        /// A figure config with a `figure` key, e.g. configs/figures/fig1.toml.
        config: PathBuf,
        #[command(flatten)]
        target: cmd::figure::Target,
        /// Show the shard of each job for this many shards.
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
    /// Run the jobs of one shard (jobs whose index is I mod N), skipping finished ones.
    Run {
        /// The figure config the plan was made from.
        config: PathBuf,
        /// I/N, 0 ≤ I < N: e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.
        #[arg(long, value_name = "I/N")]
        shard: noisegeom_figures::sweep::Shard,
        #[command(flatten)]
        target: cmd::figure::Target,
        #[command(flatten)]
        compute: FigureCompute,
    },
    /// Merge the finished jobs into the figure's results file and plots.
    Merge {
        /// The figure config the shards ran.
        config: PathBuf,
        #[command(flatten)]
        target: cmd::figure::Target,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Say what a dataset folder holds: format, shapes and class counts.
    Info {
        /// A folder with CIFAR-10 binary files or MNIST/Fashion-MNIST IDX files.
        path: PathBuf,
    },
}

/// A command stopped by SIGINT or SIGTERM after saving what it could: the message says
/// what, and the exit code is 128 + the signal (130, 143).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);

/// Writes one `error: …` line to stderr (newlines folded), the form of every error.
pub fn error_line(message: &str) {
    eprintln!("error: {}", message.replace('\n', " "));
}

fn main() -> ExitCode {
    malloc::keep_freed_memory();
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Some(gb) = cli.max_memory {
        if !(gb > 0.0 && gb.is_finite()) {
            error_line(&format!(
                "--max-memory {gb}: give the memory limit in GB, above 0"
            ));
            return ExitCode::from(2);
        }
        noisegeom_data::mem::set_limit((gb * 1e9) as u64);
    }
    let on_signal = match &cli.command {
        Command::Train { .. }
        | Command::Figure { .. }
        | Command::Sweep {
            step: SweepStep::Run { .. },
        } => signals::OnSignal::Checkpoint,
        _ => signals::OnSignal::Exit,
    };
    if let Err(e) = signals::install(on_signal) {
        error_line(&format!("cannot install the SIGINT/SIGTERM handlers: {e}"));
        return ExitCode::from(2);
    }
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        // A GPU failure (a refused allocation, a lost device) panics on cubecl's device
        // thread (`DSU-…`, `DSD-…`), which catches it, logs a warning and goes on, leaving
        // later kernels to read buffers never written. Nothing after it can be trusted:
        // stop the process here, with the reason, before anything is written as if fine.
        let thread = std::thread::current();
        if thread
            .name()
            .is_some_and(|n| n.starts_with("DSU-") || n.starts_with("DSD-"))
        {
            let first = msg.lines().next().unwrap_or("").trim();
            error_line(&format!(
                "the GPU device failed{at}: {first}{}; stopped without writing results; use smaller sizes (train.batch_size, probe.size, --chunk) or --backend cpu",
                backend::device_limits()
            ));
            std::process::exit(2);
        }
        error_line(&format!("internal error{at}: {msg}; please report it"));
    }));
    match (run(cli), signals::exit_code()) {
        // A signal ends a command with its code even where the work got through.
        (Ok(_), Some(code)) => {
            error_line("interrupted (SIGINT or SIGTERM) after the work was done");
            ExitCode::from(code)
        }
        (Ok(out), None) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        (Err(e), code) => {
            error_line(&format!("{e:#}"));
            ExitCode::from(code.unwrap_or(2))
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("NOISEGEOM_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "{level},wgpu_core=warn,wgpu_hal=warn,naga=warn,cubecl=warn"
            ))
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

fn run(cli: Cli) -> anyhow::Result<String> {
    match cli.command {
        Command::Train {
            config,
            resume,
            data,
            seed,
            out,
            overrides,
            weights,
            name_map,
            compute,
        } => {
            let mut job = cmd::train::TrainJob::new(config, &overrides, resume, out, data, seed)?;
            if let Some(path) = weights {
                job.initial = Some(cmd::train::initial_weights(&path, name_map.as_deref())?);
            }
            dispatch(compute.backend, compute.precision, job)
        }
        Command::Data {
            command: DataCommand::Info { path },
        } => cmd::data::info(&path),
        Command::Backends => Ok(backend::describe()),
        Command::Plot { runs, out } => cmd::plot::plot(&runs, out),
        Command::Figure {
            figure,
            config,
            target,
            fresh,
            compute,
        } => dispatch(
            compute.backend,
            compute.precision.unwrap_or(figure.default_precision()),
            cmd::figure::FigureJob::figure(figure, config, target, fresh)?,
        ),
        Command::Sweep { step } => {
            use cmd::figure::{Action, FigureJob};
            // Planning and merging compute nothing; they run on the default CPU backend.
            let (job, compute) = match step {
                SweepStep::Plan {
                    config,
                    target,
                    shards,
                } => (
                    FigureJob::sweep(config, target, Action::Plan { shards })?,
                    None,
                ),
                SweepStep::Run {
                    config,
                    shard,
                    target,
                    compute,
                } => (
                    FigureJob::sweep(config, target, Action::Run(shard))?,
                    Some(compute),
                ),
                SweepStep::Merge { config, target } => {
                    (FigureJob::sweep(config, target, Action::Merge)?, None)
                }
            };
            let default = job.figure.default_precision();
            let (backend, precision) = compute.map_or((BackendKind::Cpu, default), |c| {
                (c.backend, c.precision.unwrap_or(default))
            });
            dispatch(backend, precision, job)
        }
        Command::Measure { job, compute } => dispatch(compute.backend, compute.precision, job),
        Command::Export { source, out } => {
            let job = cmd::export::ExportJob { source, out };
            // Export only reads values; f64 keeps θ exactly as checkpointed.
            dispatch(BackendKind::Ndarray, Precision::F64, job)
        }
        Command::Bench {
            backends,
            precision,
            workloads,
            repeats,
            probe_size,
            json,
            kernel_counts,
        } => {
            let logs =
                std::env::temp_dir().join(format!("noisegeom-kernels-{}", std::process::id()));
            if kernel_counts {
                std::fs::create_dir_all(&logs)?;
                backend::log_kernels(logs.clone());
            }
            anyhow::ensure!(
                probe_size >= 1,
                "--probe-size 0: the geometry workloads need at least one probe sample"
            );
            let workloads = if workloads.is_empty() {
                cmd::bench::WORKLOADS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                workloads
            };
            let mut all = Vec::new();
            for b in &backends {
                let job = cmd::bench::BenchJob {
                    workloads: workloads.clone(),
                    repeats: repeats.max(1),
                    probe_size,
                };
                all.extend(dispatch(*b, precision, job)?);
            }
            if kernel_counts {
                let _ = std::fs::remove_dir_all(&logs);
            }
            if let Some(path) = json {
                let doc = serde_json::json!({"env": env::env_info("several", 0, &std::env::args().collect::<Vec<_>>()), "timings": all});
                std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            Ok(cmd::bench::table(&all))
        }
    }
}
