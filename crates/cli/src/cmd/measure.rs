//! `noisegeom measure` and `noisegeom export`: the geometry of one checkpoint (or of the
//! initialisation), over a fixed, seeded probe set.

use noisegeom_kernels::AutodiffKernels;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::ValueEnum;
use noisegeom_data::Dataset;
use noisegeom_metrics::{MeasureOptions, Measurement, Method, ProbeOps, Resources, measure};
use noisegeom_models::{Arch, Stage, flatten};
use noisegeom_train::{ExperimentConfig, newest_checkpoint};
use serde_json::json;

use crate::backend::Job;
use crate::env::env_info;

/// What `measure` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// μ and μ_unc (exact through the Gram, or Hutchinson).
    Mu,
    /// g(θ, v) along random directions.
    Directional,
    /// Top-k eigenpairs of G and H (Lanczos) with α_k, g_k; G's exact spectrum when affordable.
    Spectrum,
    /// SLQ spectral densities of G and H.
    Density,
}

/// Where θ and the data come from.
pub struct Source {
    pub config: ExperimentConfig,
    pub arch: Arch,
    pub theta: Vec<f64>,
    /// `init` or `step N`.
    pub at: String,
    pub run_dir: Option<PathBuf>,
}

/// Resolves `--run DIR` (newest checkpoint) or `--config FILE --at-init`.
fn resolve<B: AutodiffKernels>(
    run: Option<&Path>,
    config: Option<&Path>,
    overrides: &[String],
    data_dir: Option<&Path>,
    device: &B::Device,
) -> anyhow::Result<(Source, noisegeom_data::Prepared)> {
    let (cfg, run_dir) = match (run, config) {
        (Some(dir), _) => {
            let path = dir.join("config.toml");
            anyhow::ensure!(
                path.is_file(),
                "{} is not a noisegeom run directory (no config.toml); pass a run directory to --run",
                dir.display()
            );
            (ExperimentConfig::from_file(&path)?, Some(dir.to_path_buf()))
        }
        (None, Some(path)) => (ExperimentConfig::from_file_with(path, overrides)?, None),
        (None, None) => anyhow::bail!("give --run RUN_DIR, or --config FILE --at-init"),
    };
    let prepared = cfg.data.prepare(data_dir, cfg.seed)?;
    let arch = cfg.model.arch(
        &prepared.train.input_shape,
        prepared.train.num_outputs(),
        cfg.seed,
    )?;
    let (theta, at) = match &run_dir {
        Some(dir) => {
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
            (ck.params, format!("step {}", ck.step))
        }
        None => {
            let net = cfg.model.init::<B>(
                &prepared.train.input_shape,
                prepared.train.num_outputs(),
                cfg.seed,
                device,
            )?;
            (flatten(&net), "init".to_string())
        }
    };
    Ok((
        Source {
            config: cfg,
            arch,
            theta,
            at,
            run_dir,
        },
        prepared,
    ))
}

/// Where θ and the probe set come from, shared by `measure` and `export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeSource {
    /// A run directory: its newest checkpoint is measured.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    pub run: Option<PathBuf>,
    /// An experiment config; with --at-init, the freshly initialised model is measured.
    #[arg(long, requires = "at_init")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub at_init: bool,
    /// Override config values (with --config), as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Dataset folder, overriding the config's.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Probe samples: a seeded (class-balanced when possible) subset of the training set.
    #[arg(long, default_value_t = 1000)]
    pub probe_size: usize,
    #[arg(long, default_value_t = 0)]
    pub probe_seed: u64,
}

impl ProbeSource {
    /// θ and the probe set: the set, its indices in the training set, whether it is balanced.
    fn load<B: AutodiffKernels>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(Source, Dataset, Vec<usize>, bool)> {
        let (src, prepared) = resolve::<B>(
            self.run.as_deref(),
            self.config.as_deref(),
            &self.overrides,
            self.data.as_deref(),
            device,
        )?;
        let available = prepared.train.len();
        anyhow::ensure!(
            (1..=available).contains(&self.probe_size),
            "--probe-size {}: the probe set is a subset of the {available} training samples of {}; give 1 to {available}",
            self.probe_size,
            prepared.train.provenance.name
        );
        let (probe, indices, balanced) = prepared
            .train
            .probe_subset(self.probe_size, self.probe_seed)?;
        Ok((src, probe, indices, balanced))
    }
}

/// `noisegeom measure`: its options, as given on the command line.
#[derive(clap::Args, Debug)]
pub struct MeasureJob {
    #[command(flatten)]
    pub source: ProbeSource,
    /// What to compute.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mu,directional,spectrum"
    )]
    pub what: Vec<What>,
    /// Eigenpairs to report.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Lanczos steps (default 2k + 20).
    #[arg(long = "lanczos-iters")]
    pub iters: Option<usize>,
    /// exact (Gram), stochastic (Hutchinson), or auto (exact when the Gram's features fit
    /// --max-gram-gb, else Hutchinson). With exact, μ alone never stores K and recomputes
    /// the features group by group past the budget (slower, same numbers).
    #[arg(long, value_enum, default_value = "auto")]
    pub method: MethodArg,
    /// Rademacher draws for the stochastic estimators.
    #[arg(long, default_value_t = 64)]
    pub hutchinson_samples: usize,
    /// Skip the Hessian (its Lanczos costs about twice G's).
    #[arg(long)]
    pub no_hessian: bool,
    /// Samples per forward pass (bounds memory).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// Memory budget for the exact Gram's per-sample features, in GB (K itself is stored
    /// only for the exact spectrum).
    #[arg(long, default_value_t = 4.0)]
    pub max_gram_gb: f64,
    /// Results file (default: RUN_DIR/measure-step-N.json, or measure-<model>-init.json).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Refuse to start when the estimated peak memory exceeds this many GB (default: 80% of
    /// the machine's physical memory).
    #[arg(long, value_name = "GB")]
    pub max_memory: Option<f64>,
}

/// `--method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Auto,
    Exact,
    Stochastic,
}

impl MeasureJob {
    /// Refuses a measurement whose estimated peak exceeds `--max-memory`, saying what would
    /// make it fit.
    fn check_memory(&self, r: &Resources) -> anyhow::Result<()> {
        let limit = match self.max_memory {
            Some(gb) => {
                anyhow::ensure!(
                    gb > 0.0,
                    "--max-memory {gb}: give the memory limit in GB, above 0"
                );
                (gb * 1e9) as u64
            }
            None => match crate::mem::physical_bytes() {
                Some(b) => b / 10 * 8,
                None => return Ok(()),
            },
        };
        anyhow::ensure!(
            r.peak_bytes <= limit,
            "{}, over the limit of {} (--max-memory); to fit, use --method stochastic, a smaller --probe-size or --chunk, a lower --max-gram-gb, fewer --k or --lanczos-iters, or raise --max-memory",
            r.summary(),
            noisegeom_metrics::resources::mib(limit)
        );
        Ok(())
    }
}

impl Job for MeasureJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, backend: &str) -> anyhow::Result<String> {
        let (src, probe, indices, balanced) = self.source.load::<B>(&device)?;
        let (opt, clamped) =
            self.options(probe.len(), src.arch.outputs(), src.arch.num_params())?;
        for note in &clamped {
            tracing::warn!("{note}");
        }
        let ops = ProbeOps::<B::InnerBackend>::from_dataset(
            src.arch.clone(),
            &src.theta,
            &probe,
            self.chunk,
            &device,
        )?;
        tracing::info!(
            "measuring at {} over {} probe samples (p = {}) on {backend}",
            src.at,
            probe.len(),
            src.arch.num_params()
        );
        let resources =
            Resources::of_measure(&ops, &opt, crate::mem::resident_bytes().unwrap_or(0));
        tracing::info!("{}", resources.summary());
        self.check_memory(&resources)?;
        let m = measure(&ops, &opt)?;
        let out = self.out.clone().unwrap_or_else(|| match &src.run_dir {
            Some(d) => d.join(format!("measure-{}.json", src.at.replace(' ', "-"))),
            None => PathBuf::from(format!("measure-{}-init.json", src.config.model.kind())),
        });
        let doc = json!({
            "env": env_info(backend, src.config.seed, &std::env::args().collect::<Vec<_>>()),
            "at": src.at,
            "run_dir": src.run_dir,
            "dataset": probe.provenance,
            "probe": {"size": probe.len(), "seed": self.source.probe_seed, "class_balanced": balanced, "indices": indices},
            "model": src.config.model,
            "loss_convention": "L = 1/(2n) sum_i ||f(x_i) - y_i||^2, summed over outputs; targets one-hot for classes",
            "options": opt,
            "clamped": clamped,
            "resources": {"estimate": resources, "measured_peak_bytes": crate::mem::peak_bytes()},
            "measurement": m,
        });
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        noisegeom_train::fsio::write_atomic(&out, &serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
        Ok(format!(
            "{}\nresults: {}",
            summary(&m, &src.at, &probe, balanced),
            out.display()
        ))
    }
}

impl MeasureJob {
    /// The options, every size checked against the problem (n probe samples, c outputs,
    /// p parameters) before any work: a value out of range is a one-line error naming the
    /// flag, the value, the bound and why. A k above G's rank bound min(p, nc) is clamped to
    /// it (the whole spectrum is what such a k asks for), and the note says so.
    fn options(
        &self,
        n: usize,
        c: usize,
        p: usize,
    ) -> anyhow::Result<(MeasureOptions, Vec<String>)> {
        let spectrum = self.what.contains(&What::Spectrum);
        let mut clamped = Vec::new();
        anyhow::ensure!(
            self.chunk >= 1,
            "--chunk 0: give the samples per forward pass, at least 1"
        );
        anyhow::ensure!(
            self.max_gram_gb.is_finite() && self.max_gram_gb > 0.0,
            "--max-gram-gb {}: give a positive number of GB",
            self.max_gram_gb
        );
        anyhow::ensure!(
            self.hutchinson_samples >= 2,
            "--hutchinson-samples {}: the standard errors need at least 2 draws",
            self.hutchinson_samples
        );
        let mut k = self.k;
        if spectrum {
            anyhow::ensure!(
                k >= 1,
                "--k 0: ask for at least one eigenpair, or leave `spectrum` out of --what"
            );
            let rank = p.min(n * c);
            if k > rank {
                clamped.push(format!(
                    "--k {k} exceeds G's rank bound min(p, nc) = min({p}, {n}·{c}) = {rank}: measuring the top {rank} (the whole nonzero spectrum of G)"
                ));
                k = rank;
            }
            if let Some(iters) = self.iters {
                anyhow::ensure!(
                    (k..=p).contains(&iters),
                    "--lanczos-iters {iters}: Lanczos needs at least k = {k} steps for k pairs and at most p = {p} (the operator's dimension)"
                );
            }
        }
        let opt = MeasureOptions {
            mu: self.what.contains(&What::Mu),
            directional: self.what.contains(&What::Directional),
            spectrum,
            density: self.what.contains(&What::Density),
            k,
            lanczos_iters: self.iters,
            method: match self.method {
                MethodArg::Auto => Method::Auto,
                MethodArg::Exact => Method::Exact,
                MethodArg::Stochastic => Method::Stochastic,
            },
            hutchinson_samples: self.hutchinson_samples,
            gram_max_bytes: (self.max_gram_gb * 1e9) as usize,
            seed: self.source.probe_seed,
            hessian: !self.no_hessian,
            ..MeasureOptions::default()
        };
        Ok((opt, clamped))
    }
}

/// The readable table printed after a measurement.
pub fn summary(m: &Measurement, at: &str, probe: &Dataset, balanced: bool) -> String {
    let mut s = format!(
        "θ at {at}; probe set: {} samples of {} ({}{}); p = {}, c = {}\n",
        m.n,
        probe.provenance.name,
        probe.provenance.split,
        if balanced { ", class-balanced" } else { "" },
        m.params,
        m.outputs
    );
    s += &format!("loss L = {:.6e}  (2L = {:.6e})\n", m.loss, 2.0 * m.loss);
    if let Some(la) = &m.loss_alignment {
        let se = m
            .stochastic
            .as_ref()
            .map(|st| format!(" ± {:.4}", st.mu_se))
            .unwrap_or_default();
        s += &format!(
            "μ = {}{se}   μ_unc = {}   c·μ (output-normalised) = {}   [{}]\n",
            la.mu, la.mu_unc, la.c_mu, la.method
        );
    }
    let c = &m.curvature;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.6e}")).unwrap_or_else(|| "-".into());
    s += &format!(
        "Tr G = {}{}   ||G||_F = {}   λ_max(G) = {} (residual {})   λ_max(H) = {} (residual {})   λ_min(H) = {}\n",
        f(c.trace_g),
        c.trace_g_se
            .map(|e| format!(" ± {e:.2e}"))
            .unwrap_or_default(),
        f(c.g_fro),
        f(c.lambda_max_g),
        f(c.lambda_max_g_residual),
        f(c.lambda_max_h),
        f(c.lambda_max_h_residual),
        f(c.lambda_min_h)
    );
    if !m.directional_random.is_empty() {
        let gs: Vec<String> = m
            .directional_random
            .iter()
            .map(|d| d.g.to_string())
            .collect();
        s += &format!(
            "g(θ, v) along {} random directions: {}\n",
            gs.len(),
            gs.join(", ")
        );
    }
    for d in [&m.top_g, &m.top_h].into_iter().flatten() {
        let l = &d.lanczos;
        s += &format!(
            "top {} eigen-directions of {} (Lanczos, {} steps, converged when residual ≤ {:.0e}·max|λ|):\n",
            l.top.len(),
            d.operator,
            l.iterations,
            l.tolerance
        );
        s += "    k          λ_k     residual  conv          α_k      g_k\n";
        for (i, r) in l.top.iter().enumerate() {
            s += &format!(
                "  {:>3} {:>12.5e} {:>12.3e}  {:<4} {:>12.5e} {:>8}\n",
                i + 1,
                r.value,
                r.residual,
                if r.converged { "yes" } else { "NO" },
                d.alpha[i],
                d.g[i]
                    .value()
                    .map(|g| format!("{g:.4}"))
                    .unwrap_or_else(|| "undef".into())
            );
        }
    }
    if let Some(sp) = &m.exact_spectrum {
        s += &format!(
            "exact spectrum of G: {} nonzero eigenvalues (cut-off {:.2e}, {} dropped); see the JSON for λ_k, α_k, g_k\n",
            sp.lambda.len(),
            sp.nonzero_cutoff,
            sp.dropped
        );
    }
    let secs: Vec<String> = m
        .seconds
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}s"))
        .collect();
    s += &format!("time: {}", secs.join(", "));
    s
}

pub struct ExportJob {
    pub source: ProbeSource,
    pub out: PathBuf,
}

impl Job for ExportJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, _backend: &str) -> anyhow::Result<String> {
        let (src, probe, indices, _) = self.source.load::<B>(&device)?;
        let bytes = export_safetensors(&src, &probe, &indices)?;
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        noisegeom_train::fsio::write_atomic(&self.out, &bytes)
            .with_context(|| format!("cannot write {}", self.out.display()))?;
        Ok(format!(
            "wrote {} ({} parameters, {} probe samples); tensor names and layouts are listed in its metadata",
            self.out.display(),
            src.theta.len(),
            probe.len()
        ))
    }
}

/// θ (PyTorch layouts: Linear `[out, in]`, Conv2d `[out, in, kh, kw]`, f32), fixed layers,
/// the probe inputs `[n, *input_shape]` (after normalisation), targets `[n, c]` and the probe
/// indices into the training set, as safetensors. The metadata holds the architecture and
/// the loss convention as JSON.
pub fn export_safetensors(
    src: &Source,
    probe: &Dataset,
    indices: &[usize],
) -> anyhow::Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32s = |v: &mut dyn Iterator<Item = f64>| {
        v.flat_map(|x| (x as f32).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let mut off = 0;
    for (name, shape) in src.arch.param_layout() {
        let len: usize = shape.iter().product();
        owned.push((
            name,
            Dtype::F32,
            shape,
            f32s(&mut src.theta[off..off + len].iter().copied()),
        ));
        off += len;
    }
    for (i, st) in src.arch.stages.iter().enumerate() {
        if let Stage::FixedDense { out, weights } = st {
            owned.push((
                format!("s{i}.fixed_weight"),
                Dtype::F32,
                vec![*out, weights.len() / out],
                weights.iter().flat_map(|w| w.to_le_bytes()).collect(),
            ));
        }
    }
    let mut xshape = vec![probe.len()];
    xshape.extend(&probe.input_shape);
    owned.push((
        "probe.x".into(),
        Dtype::F32,
        xshape,
        probe.inputs.iter().flat_map(|v| v.to_le_bytes()).collect(),
    ));
    owned.push((
        "probe.y".into(),
        Dtype::F32,
        vec![probe.len(), probe.num_outputs()],
        probe
            .target_matrix()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    ));
    owned.push((
        "probe.indices".into(),
        Dtype::I64,
        vec![indices.len()],
        indices
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
    ));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "noisegeom_arch".to_string(),
        serde_json::to_string(&src.arch)?,
    );
    meta.insert(
        "noisegeom_model".to_string(),
        serde_json::to_string(&src.config.model)?,
    );
    meta.insert("at".to_string(), src.at.clone());
    meta.insert(
        "layout".to_string(),
        "sI.weight / sI.bias belong to stage I of noisegeom_arch; dense weights are [out, in] (torch.nn.Linear), conv weights [out, in, kh, kw] (torch.nn.Conv2d, stride/padding in the arch); sI.fixed_weight is an untrained layer (x @ W.T); probe.x is NCHW for images".to_string(),
    );
    meta.insert(
        "loss".to_string(),
        "L = 1/(2n) sum_i ||f(x_i) - y_i||^2 over probe.x, probe.y".to_string(),
    );
    Ok(safetensors::serialize(views, Some(meta))?)
}
