//! What a measurement will hold in memory and how much work it will do, from the sizes alone,
//! before any of it runs: so that a job too large for the machine is refused at once instead
//! of being killed an hour later.
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
//!   four, less the one already held).
//!
//! `tests/cli/geometry.rs` checks the estimate against the measured peak on three
//! measurements, each dominated by another phase.

use serde::Serialize;

use crate::gram::feature_bytes_per_sample;
use crate::measure::EXACT_SPECTRUM_MAX_DIM;
use crate::{MeasureOptions, Method, ProbeOps};
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

impl Resources {
    /// The estimate for `measure(ops, opt)`, `base_bytes` being the process's resident memory
    /// now.
    pub fn of_measure<B: Kernels>(
        ops: &ProbeOps<B>,
        opt: &MeasureOptions,
        base_bytes: u64,
    ) -> Self {
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

        let exact_mu = (opt.mu || opt.directional) && opt.method != Method::Stochastic;
        let features = n * feature_bytes_per_sample(ops) as u64;
        let budget = opt.gram_max_bytes as u64;
        let keep_k = opt.spectrum && n * c <= EXACT_SPECTRUM_MAX_DIM as u64;
        let gram = exact_mu && (features <= budget || opt.method == Method::Exact);
        if gram {
            let mut parts = vec![
                part("per-sample features", features.min(budget)),
                part(
                    "a chunk's activations over c copies, with gradients",
                    (2 * c - 1) * chunk * acts * elem,
                ),
            ];
            if keep_k {
                parts.push(part("K (nc × nc, f64)", n * c * n * c * 8));
            }
            phases.push(("Gram", parts));
            if keep_k {
                phases.push((
                    "exact spectrum",
                    vec![
                        part("K (nc × nc, f64)", n * c * n * c * 8),
                        part(
                            "its eigendecomposition (4 more nc × nc)",
                            4 * n * c * n * c * 8,
                        ),
                    ],
                ));
            }
            // c backward passes' worth of signals, and the products of the features.
            gflop += c as f64 * pass + 2.0 * (n * c) as f64 * features as f64 / elem as f64 / 1e9;
        } else if opt.mu || opt.directional {
            phases.push((
                "Hutchinson",
                vec![part("a chunk's tangent activations", chunk * acts * elem)],
            ));
            gflop += 2.0 * opt.hutchinson_samples as f64 * pass;
        }
        if opt.spectrum {
            let iters = opt.lanczos_iters.unwrap_or(2 * opt.k + 20).min(ops.p) as u64;
            phases.push((
                "Lanczos",
                vec![
                    part("Lanczos basis (f64 p-vectors)", (iters + 1) * p * 8),
                    part("Ritz vectors", opt.k as u64 * p * 8),
                    part(
                        "an Hv pass's activations, primal and tangent, with gradients",
                        3 * chunk * acts * elem,
                    ),
                ],
            ));
            let operators = if opt.hessian { 2.0 } else { 1.0 };
            gflop += operators * iters as f64 * 2.0 * pass;
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
