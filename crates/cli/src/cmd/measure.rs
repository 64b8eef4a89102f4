//! `noisegeom measure`: the geometry of one checkpoint (the initialisation, or given weights),
//! over a probe set.

use noisegeom_kernels::AutodiffKernels;
use std::path::PathBuf;

use anyhow::Context;
use clap::ValueEnum;
use noisegeom_data::Dataset;
use noisegeom_metrics::{MeasureOptions, Measurement, Method, ProbeOps, Resources, measure};
use noisegeom_models::Arch;
use serde_json::json;

use crate::backend::Job;
use crate::cmd::source::{Probe, ProbeSource};
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
    /// f(x) on the probe set, written to the JSON (`outputs`), to check a converted model.
    Outputs,
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
}

/// `--method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Auto,
    Exact,
    Stochastic,
}

impl Job for MeasureJob {
    type Output = String;

    fn run<B: AutodiffKernels>(self, device: B::Device, backend: &str) -> anyhow::Result<String> {
        let (
            src,
            Probe {
                set: probe,
                indices,
                balanced,
            },
        ) = self.source.load::<B>(&device)?;
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
        let resources = Resources::of_measure(
            &ops,
            &opt,
            noisegeom_data::mem::resident_bytes().unwrap_or(0),
        );
        tracing::info!("{}", resources.summary());
        resources.check(
            "use --method stochastic, a smaller --probe-size or --chunk, a lower --max-gram-gb, fewer --k or --lanczos-iters",
        )?;
        let m = measure(&ops, &opt)?;
        let out = self.out.clone().unwrap_or_else(|| match &src.run_dir {
            Some(d) => d.join(format!("measure-{}.json", src.at.replace(' ', "-"))),
            None => PathBuf::from(format!("measure-{}-init.json", src.model.kind())),
        });
        let mut doc = json!({
            "env": env_info(backend, src.seed, &std::env::args().collect::<Vec<_>>()),
            "at": src.at,
            "run_dir": src.run_dir,
            "dataset": probe.provenance,
            "probe": {"size": probe.len(), "seed": self.source.probe_seed, "class_balanced": balanced, "indices": indices},
            "model": src.model,
            "batchnorm": batchnorm_note(&src.arch),
            "loss_convention": "L = 1/(2n) sum_i ||f(x_i) - y_i||^2, summed over outputs; targets one-hot for classes",
            "options": opt,
            "clamped": clamped,
            "resources": {"estimate": resources, "measured_peak_bytes": noisegeom_data::mem::peak_bytes()},
            "measurement": m,
        });
        if self.what.contains(&What::Outputs) {
            doc["outputs"] =
                json!({"shape": [probe.len(), src.arch.outputs()], "values": ops.outputs()});
        }
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

/// Which BatchNorm layers' γ and β are parameters of θ (`trainable`) and which are fixed.
fn batchnorm_note(arch: &Arch) -> Vec<serde_json::Value> {
    arch.stages
        .iter()
        .zip(arch.module_names())
        .filter_map(|(stage, name)| match stage {
            noisegeom_models::Stage::BatchNorm { frozen, .. } => Some(json!({
                "module": name,
                "weight_and_bias_in_theta": frozen.is_none(),
            })),
            _ => None,
        })
        .collect()
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
