//! What a measurement, a training run with probes, or a figure job will hold in memory and
//! how much work it will do, from the sizes alone, before any of it runs: so that a job too
//! large for the machine is refused at once ([`Resources::check`]) instead of being killed an
//! hour later.
//!
//! The peak is the process's resident memory when the estimate is made (`base_bytes`: the
//! binary, the data, the probe set, the networks, and the memory of the forward pass over
//! the probe set that gave the residuals, which the allocator keeps for reuse), plus the
//! largest of the phases that follow, each the sum of what it holds beyond that:
//! - the Gram (exact μ, and the exact spectrum): the per-sample features kept, K itself when
//!   the spectrum is asked for, and a chunk's activations over c stacked copies with their
//!   gradients (2c chunk-activations, less the one already held);
//! - the exact spectrum: K, and four more nc × nc f64 matrices in its eigendecomposition (a
//!   copy of K/n, the solver's workspace, and the eigenvectors as the solver gives them and
//!   as they are kept);
//! - Hutchinson (stochastic μ): a chunk's tangent activations (primal and tangent, less the
//!   one already held);
//! - Lanczos (the top of G and H): the basis of f64 p-vectors (full reorthogonalisation),
//!   the Ritz vectors, and an Hv pass's activations (primal and tangent, with gradients:
//!   four, less the one already held);
//! - a training step (between probes): a batch's activations and their gradients, and the
//!   gradient; an evaluation chunk's activations.
//!
//! `tests/cli/geometry.rs` checks the estimate against the measured peak on three
//! measurements and two training runs, each dominated by another phase.

use serde::Serialize;

use crate::gram::feature_bytes_per_sample;
use crate::measure::EXACT_SPECTRUM_MAX_DIM;
use crate::{GeometryError, MeasureOptions, Method, ProbeOps, TrackOptions};
use noisegeom_kernels::Kernels;

/// One phase's share of memory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Part {
    pub what: String,
    pub bytes: u64,
}

/// The estimate of one measurement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resources {
    /// Resident memory when the estimate was made.
    pub base_bytes: u64,
    /// The phase with the largest footprint, and its parts.
    pub peak_phase: String,
    pub peak_parts: Vec<Part>,
    /// `base_bytes` plus the peak phase's parts.
    pub peak_bytes: u64,
    /// Floating-point operations of the dominant work (the Gram's products, and the
    /// matrix-free products of Lanczos and Hutchinson).
    pub gflop: f64,
}

/// What a job does, for its estimate: which phases run, and their sizes.
struct Plan {
    /// The exact Gram (features within `gram_max_bytes`, or recomputed group by group).
    gram: bool,
    /// The budget for the features the Gram keeps.
    gram_max_bytes: usize,
    /// K kept after the Gram (for the exact spectrum, or Lanczos on K/n).
    keep_k: bool,
    /// K's full eigendecomposition.
    exact_spectrum: bool,
    /// Hutchinson draws (stochastic μ), if any.
    hutchinson: Option<usize>,
    /// Lanczos over p-vectors: steps, Ritz vectors kept, operators (G, or G and H).
    lanczos: Option<(usize, usize, usize)>,
    /// A training step on `batch` samples (activations with gradients, the gradient).
    training: Option<TrainingStep>,
}

/// The sizes of a training step.
#[derive(Clone, Copy, Debug)]
pub struct TrainingStep {
    /// Samples per step.
    pub batch: usize,
    /// Samples per evaluation forward pass.
    pub eval_chunk: usize,
}

impl Resources {
    /// The estimate for `measure(ops, opt)`, `base_bytes` being the process's resident memory
    /// now.
    pub fn of_measure<B: Kernels>(
        ops: &ProbeOps<B>,
        opt: &MeasureOptions,
        base_bytes: u64,
    ) -> Self {
        let exact_mu = (opt.mu || opt.directional) && opt.method != Method::Stochastic;
        let fits = ops.n * feature_bytes_per_sample(ops) <= opt.gram_max_bytes;
        let gram = exact_mu && (fits || opt.method == Method::Exact);
        let exact_spectrum = gram && opt.spectrum && ops.n * ops.c <= EXACT_SPECTRUM_MAX_DIM;
        let plan = Plan {
            gram,
            gram_max_bytes: opt.gram_max_bytes,
            keep_k: exact_spectrum,
            exact_spectrum,
            hutchinson: (!gram && (opt.mu || opt.directional)).then_some(opt.hutchinson_samples),
            lanczos: opt.spectrum.then(|| {
                let iters = opt.lanczos_iters.unwrap_or(2 * opt.k + 20).min(ops.p);
                (iters, opt.k, if opt.hessian { 2 } else { 1 })
            }),
            training: None,
        };
        Self::of_plan(ops, &plan, base_bytes)
    }

    /// The estimate for the exact Gram alone (features within `gram_max_bytes`), and with
    /// `spectrum` its full eigendecomposition: what the synthetic figures compute.
    pub fn of_gram<B: Kernels>(
        ops: &ProbeOps<B>,
        gram_max_bytes: usize,
        spectrum: bool,
        base_bytes: u64,
    ) -> Self {
        let plan = Plan {
            gram: true,
            gram_max_bytes,
            keep_k: spectrum,
            exact_spectrum: spectrum,
            hutchinson: None,
            lanczos: None,
            training: None,
        };
        Self::of_plan(ops, &plan, base_bytes)
    }

    /// The estimate for `track(ops, opt)` (a training run's probe), and with `training`, for
    /// the training run around it: its step and its probes do not run at once, so the peak
    /// is the larger of the two.
    pub fn of_track<B: Kernels>(
        ops: &ProbeOps<B>,
        opt: &TrackOptions,
        training: Option<TrainingStep>,
        base_bytes: u64,
    ) -> Self {
        let gram = ops.n * feature_bytes_per_sample(ops) <= opt.gram_max_bytes;
        let iters = opt.iters.min(ops.p);
        let plan = Plan {
            gram,
            gram_max_bytes: opt.gram_max_bytes,
            keep_k: gram,
            exact_spectrum: false,
            hutchinson: (!gram).then_some(opt.hutchinson_samples),
            lanczos: match (gram, opt.hessian) {
                (true, false) => None,
                (true, true) => Some((iters, 1, 1)),
                (false, h) => Some((iters, opt.k, 1 + h as usize)),
            },
            training,
        };
        Self::of_plan(ops, &plan, base_bytes)
    }

    fn of_plan<B: Kernels>(ops: &ProbeOps<B>, plan: &Plan, base_bytes: u64) -> Self {
        let (n, c, p) = (ops.n as u64, ops.c as u64, ops.p as u64);
        let chunk = ops.chunk.min(ops.n) as u64;
        let elem = std::mem::size_of::<B::FloatElem>() as u64;
        let (acts, fwd_flops) = ops.arch.per_sample_cost();
        let acts = acts as u64 + ops.arch.input_shape.iter().product::<usize>() as u64;
        let mut phases: Vec<(&str, Vec<Part>)> = Vec::new();
        let part = |what: &str, bytes: u64| Part {
            what: what.into(),
            bytes,
        };
        let mut gflop = 0.0;
        // A pass over the probe set: forward plus backward, about 3 forwards.
        let pass = 3.0 * fwd_flops * n as f64 / 1e9;
        let k_bytes = n * c * n * c * 8;

        if plan.gram {
            let features = n * feature_bytes_per_sample(ops) as u64;
            let mut parts = vec![
                part(
                    "per-sample features",
                    features.min(plan.gram_max_bytes as u64),
                ),
                part(
                    "a chunk's activations over c copies, with gradients",
                    (2 * c - 1) * chunk * acts * elem,
                ),
            ];
            if plan.keep_k {
                parts.push(part("K (nc × nc, f64)", k_bytes));
            }
            phases.push(("Gram", parts));
            if plan.exact_spectrum {
                phases.push((
                    "exact spectrum",
                    vec![
                        part("K (nc × nc, f64)", k_bytes),
                        part("its eigendecomposition (4 more nc × nc)", 4 * k_bytes),
                    ],
                ));
            }
            // c backward passes' worth of signals, and the products of the features.
            gflop += c as f64 * pass + 2.0 * (n * c) as f64 * features as f64 / elem as f64 / 1e9;
        }
        if let Some(draws) = plan.hutchinson {
            phases.push((
                "Hutchinson",
                vec![part("a chunk's tangent activations", chunk * acts * elem)],
            ));
            gflop += 2.0 * draws as f64 * pass;
        }
        if let Some((iters, k, operators)) = plan.lanczos {
            let iters = iters as u64;
            let parts = vec![
                part("Lanczos basis (f64 p-vectors)", (iters + 1) * p * 8),
                part("Ritz vectors", k as u64 * p * 8),
                part(
                    "an Hv pass's activations, primal and tangent, with gradients",
                    3 * chunk * acts * elem,
                ),
            ];
            phases.push(("Lanczos", parts));
            gflop += operators as f64 * iters as f64 * 2.0 * pass;
        }
        if let Some(t) = plan.training {
            let (batch, eval) = (t.batch as u64, t.eval_chunk as u64);
            phases.push((
                "training step",
                vec![
                    part(
                        "a batch's activations and their gradients",
                        2 * batch * acts * elem,
                    ),
                    part("the gradient", p * elem),
                ],
            ));
            phases.push((
                "evaluation",
                vec![part("a chunk's activations", eval * acts * elem)],
            ));
        }
        let (peak_phase, peak_parts) = phases
            .into_iter()
            .max_by_key(|(_, parts)| parts.iter().map(|p| p.bytes).sum::<u64>())
            .map(|(name, parts)| (name.to_string(), parts))
            .unwrap_or_else(|| ("none".into(), Vec::new()));
        let peak_bytes = base_bytes + peak_parts.iter().map(|p| p.bytes).sum::<u64>();
        Resources {
            base_bytes,
            peak_phase,
            peak_parts,
            peak_bytes,
            gflop,
        }
    }

    /// Refuses the job when its peak exceeds the process's memory limit
    /// ([`noisegeom_data::mem::limit`], `--max-memory`): the error names the estimate, the
    /// limit, and `fix`, what would make the job fit.
    pub fn check(&self, fix: &str) -> Result<(), GeometryError> {
        match noisegeom_data::mem::limit() {
            Some(limit) if self.peak_bytes > limit => Err(GeometryError::Memory(format!(
                "{}, over the limit of {} (--max-memory); to fit, {fix}, or raise --max-memory",
                self.summary(),
                mib(limit)
            ))),
            _ => Ok(()),
        }
    }

    /// One line: the peak, its phase and its largest part, and the work.
    pub fn summary(&self) -> String {
        let largest = self
            .peak_parts
            .iter()
            .max_by_key(|p| p.bytes)
            .map(|p| format!(", largest part {} {}", p.what, mib(p.bytes)))
            .unwrap_or_default();
        format!(
            "estimated peak memory {} ({} resident now, then the {} phase{largest}); about {:.1} GFLOP",
            mib(self.peak_bytes),
            mib(self.base_bytes),
            self.peak_phase,
            self.gflop
        )
    }
}

/// `bytes` in MiB, or GiB from 10 GiB on.
pub fn mib(bytes: u64) -> String {
    if bytes >= 10 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    }
}
