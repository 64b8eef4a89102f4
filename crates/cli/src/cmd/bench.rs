//! `noisegeom bench`: timed workloads, each with a warm-up and the median of several
//! repeats. Compilation and autotuning happen in the warm-up and are reported apart.

use noisegeom_kernels::{AutodiffKernels, Kernels};
use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use noisegeom_models::{Activation, ModelConfig, Pass, autodiff_lock, mse};
use noisegeom_train::{Sgd, SgdConfig};
use serde::Serialize;

use crate::backend::Job;

/// One timed workload on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub workload: String,
    pub backend: String,
    /// The warm-up (the first call; the first three on a device backend), which includes
    /// kernel compilation and autotuning.
    pub warmup_s: f64,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub repeats: usize,
    /// Work units per second at the median (samples/s for training).
    pub throughput: f64,
    pub unit: String,
    /// Peak resident memory of the process during this workload (Linux: VmHWM, reset
    /// before each workload through /proc/self/clear_refs), host memory only.
    pub peak_rss_mb: Option<f64>,
    /// Reads of a tensor into host memory per timed call (on a GPU each is a host sync),
    /// counted by `noisegeom_kernels::read`.
    pub host_reads_per_call: f64,
    /// Kernels cubecl compiled and launched (wgpu with `--kernel-counts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelCounts>,
}

/// The kernels cubecl compiled and launched for a workload, from its own logs: compilations
/// in the warm-up and in the timed calls (where a compiled-once kernel makes 0), and
/// launches per timed call.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KernelCounts {
    pub compiled_in_warmup: u64,
    pub compiled_in_timed: u64,
    pub launches_per_call: f64,
}

/// The counts of the last [`time_it`] (host reads per call, and the kernel counts with
/// logs on), for the workload that called it.
static LAST_COUNTS: std::sync::Mutex<(f64, Option<KernelCounts>)> =
    std::sync::Mutex::new((0.0, None));

impl Timing {
    /// A workload's timing from its warm-up and its sorted repeats; `work` units per run.
    fn new(workload: &str, backend: &str, warm: f64, times: &[f64], work: f64, unit: &str) -> Self {
        let median = times[times.len() / 2];
        Timing {
            workload: workload.to_string(),
            backend: backend.to_string(),
            warmup_s: warm,
            median_s: median,
            min_s: times[0],
            max_s: times[times.len() - 1],
            repeats: times.len(),
            throughput: work / median,
            unit: unit.into(),
            peak_rss_mb: None,
            host_reads_per_call: 0.0,
            kernels: None,
        }
    }
}

/// The peak resident set size since the last reset, in MB (Linux).
fn peak_rss_mb() -> Option<f64> {
    noisegeom_data::mem::peak_bytes().map(|b| b as f64 / (1u64 << 20) as f64)
}

pub struct BenchJob {
    pub workloads: Vec<String>,
    pub repeats: usize,
    /// Probe samples of the geometry workloads (default [`GEOMETRY_N`]).
    pub probe_size: usize,
}

pub const WORKLOADS: &[&str] = &[
    "train-fnn",
    "train-cnn",
    "jv-fnn",
    "jv-double-vjp-fnn",
    "gv-fnn",
    "hv-fnn",
    "hv-double-backward-fnn",
    "lanczos-fnn",
    "gram-mu-fnn",
    "mu-fnn",
    "alpha-fnn",
    "hv-cnn",
    "gram-mu-cnn",
    "probe-cnn",
    "sgemm",
];

/// Probe samples of the CNN workloads: the quickstart's probe set, so that `probe-cnn`
/// against `train-cnn` reads as the quickstart's probe cost in training steps.
pub const PROBE_CNN_N: usize = 64;

/// Workloads run only when named (`--workloads`), once each, without a warm-up: the exact μ
/// of the CNN over n = 4096 probe samples, its per-sample features held to 3 GB (they need
/// about 9.3 GB, so they are recomputed group by group) so that the whole process stays
/// within 4 GB.
pub const HEAVY_WORKLOADS: &[&str] = &["mu-cnn-4096"];

/// Probe samples for the geometry workloads.
pub const GEOMETRY_N: usize = 1024;

/// The warm-up's time and the sorted times of `repeats` more calls of `f`; with kernel logs
/// on, the kernels compiled and launched in each part (read outside the timed calls); the
/// host reads per timed call always. On a device backend the warm-up is three calls: burn's
/// fusion compiles a fused kernel the second time it sees its ops, and a training step's
/// ops settle only in its second call, once the momentum buffers exist (the kernel log
/// showed 5 compilations per step in the first timed call after one warm-up, and 5 and 6 in
/// the train-cnn's and train-fnn's first timed call after two).
fn time_it<B: Kernels>(repeats: usize, mut f: impl FnMut()) -> (f64, Vec<f64>) {
    let c0 = crate::backend::kernel_counts();
    let t = Instant::now();
    for _ in 0..if B::HOST_MEMORY { 1 } else { 3 } {
        f();
    }
    let warm = t.elapsed().as_secs_f64();
    let c1 = crate::backend::kernel_counts();
    let r1 = noisegeom_kernels::host_reads();
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let reads = (noisegeom_kernels::host_reads() - r1) as f64 / repeats.max(1) as f64;
    let kernels = match (c0, c1, crate::backend::kernel_counts()) {
        (Some(a), Some(b), Some(c)) => Some(KernelCounts {
            compiled_in_warmup: b.0 - a.0,
            compiled_in_timed: c.0 - b.0,
            launches_per_call: (c.1 - b.1) as f64 / repeats.max(1) as f64,
        }),
        _ => None,
    };
    *LAST_COUNTS.lock().expect("not poisoned") = (reads, kernels);
    (warm, times)
}

fn model_for(workload: &str) -> (ModelConfig, Vec<usize>) {
    match workload {
        "train-fnn" => (
            ModelConfig::Fnn {
                hidden: vec![512, 512, 512],
                activation: Activation::Relu,
                bias: true,
                init: Default::default(),
            },
            vec![3 * 32 * 32],
        ),
        _ => (
            ModelConfig::Cnn {
                channels: vec![32, 64, 64],
                activation: Activation::Relu,
                head: Default::default(),
                bias: true,
                init: Default::default(),
            },
            vec![3, 32, 32],
        ),
    }
}

impl Job for BenchJob {
    type Output = Vec<Timing>;

    fn run<B: AutodiffKernels>(
        self,
        device: B::Device,
        backend: &str,
    ) -> anyhow::Result<Vec<Timing>> {
        let mut out = Vec::new();
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) && !HEAVY_WORKLOADS.contains(&w.as_str()) {
                anyhow::bail!(
                    "unknown workload `{w}`; choose from {}, {}",
                    WORKLOADS.join(", "),
                    HEAVY_WORKLOADS.join(", ")
                );
            }
            noisegeom_data::mem::reset_peak();
            let mut t = self.workload::<B>(w, &device, backend)?;
            t.peak_rss_mb = peak_rss_mb();
            (t.host_reads_per_call, t.kernels) =
                std::mem::take(&mut *LAST_COUNTS.lock().expect("not poisoned"));
            if B::HOST_MEMORY {
                // No kernels are compiled or launched on a host backend.
                t.kernels = None;
            }
            out.push(t);
        }
        Ok(out)
    }
}

impl BenchJob {
    fn workload<B: AutodiffKernels>(
        &self,
        w: &String,
        device: &B::Device,
        backend: &str,
    ) -> anyhow::Result<Timing> {
        let device = device.clone();
        {
            if w == "sgemm" {
                // [1024, 512] x [512, 1024]: the machine's matmul rate, for context.
                let a = Tensor::<B::InnerBackend, 2>::ones([1024, 512], &device);
                let b = Tensor::<B::InnerBackend, 2>::ones([512, 1024], &device);
                let (warm, times) = time_it::<B>(self.repeats.max(20), || {
                    let _ = noisegeom_kernels::read(a.clone().matmul(b.clone()).narrow(0, 0, 1));
                });
                let flop = 2.0 * 1024.0 * 512.0 * 1024.0;
                return Ok(Timing::new(w, backend, warm, &times, flop / 1e9, "GFLOP/s"));
            }
            if !w.starts_with("train-") {
                return geometry::<B>(w, &device, backend, self.repeats, self.probe_size);
            }
            let batch = 128;
            let (cfg, shape) = model_for(w);
            let d: usize = shape.iter().product();
            let mut model = Some(cfg.init::<B>(&shape, 10, 0, &device)?);
            let x: Vec<f32> = (0..batch * d)
                .map(|k| ((k * 7919 % 1000) as f32) / 1000.0 - 0.5)
                .collect();
            let y: Vec<f32> = (0..batch * 10)
                .map(|k| if k % 11 == 0 { 1.0 } else { 0.0 })
                .collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [batch, d]), &device);
            let y = Tensor::<B, 2>::from_data(TensorData::new(y, [batch, 10]), &device);
            let mut sgd = Sgd::<B::InnerBackend>::new(SgdConfig {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            });
            let mut sink = 0.0;
            let (warm, times) = time_it::<B>(self.repeats, || {
                let _graph = autodiff_lock();
                let m = model.take().expect("model");
                let loss = mse(m.forward_pass(x.clone(), Pass::Train), y.clone());
                // Read the step's loss back: this waits for the device (and for the previous
                // step's update, which the forward depends on), so each timed call is a whole
                // step. The trainer reads losses only when its log needs them.
                sink += noisegeom_kernels::read_scalar(loss.clone());
                let grads = loss.backward();
                model = Some(sgd.step(m, grads, 0.01));
            });
            let _ = sink;
            Ok(Timing::new(
                w,
                backend,
                warm,
                &times,
                batch as f64,
                "samples/s",
            ))
        }
    }
}

/// A text table with, per workload, each backend's median and its ratio to the first.
pub fn table(all: &[Timing]) -> String {
    let mut s = format!(
        "{:<22} {:<28} {:>10} {:>12} {:>10} {:>10} {:>10} {:>14}\n",
        "workload",
        "backend",
        "warmup s",
        "median s",
        "ratio",
        "peak MB",
        "reads/call",
        "throughput"
    );
    for t in all {
        let base = all
            .iter()
            .find(|b| b.workload == t.workload)
            .map(|b| b.median_s)
            .unwrap_or(t.median_s);
        let kernels = t
            .kernels
            .map(|k| {
                format!(
                    "   compiled {} + {} (warm-up + timed), {:.0} launches per call",
                    k.compiled_in_warmup, k.compiled_in_timed, k.launches_per_call
                )
            })
            .unwrap_or_default();
        s += &format!(
            "{:<22} {:<28} {:>10.3} {:>12.4} {:>10.2} {:>10} {:>10.0} {:>9.0} {}{kernels}\n",
            t.workload,
            t.backend,
            t.warmup_s,
            t.median_s,
            t.median_s / base,
            t.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}")),
            t.host_reads_per_call,
            t.throughput,
            t.unit
        );
    }
    s
}

/// The geometry workloads on the FNN 3072-512-512-512-10 over n = 1024 probe samples (the
/// CNN over n = 4096 for `mu-cnn-4096`), f32 inputs ~ N(0, 1), one-hot targets,
/// PyTorch-default initialisation (seed 0).
fn geometry<B: AutodiffKernels>(
    w: &str,
    device: &B::Device,
    backend: &str,
    repeats: usize,
    probe_size: usize,
) -> anyhow::Result<Timing> {
    use noisegeom_metrics::alignment::{exact_alignment, exact_alignment_streamed_work};
    use noisegeom_metrics::gram::{FeatureBudget, TILE, gram};
    use noisegeom_metrics::lanczos::lanczos;
    let heavy = HEAVY_WORKLOADS.contains(&w);
    let (cfg, shape) = model_for(if w.contains("-cnn") {
        "train-cnn"
    } else {
        "train-fnn"
    });
    let net = cfg.init::<B::InnerBackend>(&shape, 10, 0, device)?;
    let arch = net.arch.clone();
    let theta = noisegeom_models::flatten(&net);
    let n = if heavy {
        4096
    } else if w.ends_with("-cnn") {
        PROBE_CNN_N
    } else {
        probe_size
    };
    // The CNN's activations over c copies of a chunk are larger than its features: smaller
    // chunks bound them.
    let chunk = if heavy { 128 } else { n };
    let d: usize = shape.iter().product();
    let mut rng = noisegeom_data::seeded_rng(0, "bench-probe");
    let x = noisegeom_data::normal_vec(&mut rng, n * d, 1.0);
    let y: Vec<f64> = (0..n * 10)
        .map(|k| if k % 10 == (k / 10) % 10 { 1.0 } else { 0.0 })
        .collect();
    let ops = noisegeom_metrics::ProbeOps::<B::InnerBackend>::new(
        arch, &theta, &x, &y, n, chunk, device,
    )?;
    let v = noisegeom_data::normal_vec(&mut rng, ops.p, 1.0);
    let dirs: Vec<Vec<f64>> = (0..10)
        .map(|_| noisegeom_data::normal_vec(&mut rng, ops.p, 1.0))
        .collect();
    let mut sink = 0.0;
    // The streamed μ's products (its GEMMs), counted as they are formed: reported as their
    // rate over the whole workload's time, to set against `sgemm`'s.
    let mut product_flops = None;
    let (warm, times) = match w {
        "jv-fnn" => time_it::<B>(repeats, || sink += ops.jvp(&v)[0]),
        "jv-double-vjp-fnn" => time_it::<B>(repeats, || sink += ops.jvp_double_vjp(&v)[0]),
        "gv-fnn" => time_it::<B>(repeats, || sink += ops.gv(&v)[0]),
        "hv-fnn" => time_it::<B>(repeats, || sink += ops.hv(&v)[0]),
        "hv-double-backward-fnn" => time_it::<B>(repeats, || sink += ops.hv_double_backward(&v)[0]),
        "lanczos-fnn" => time_it::<B>(repeats, || {
            sink += lanczos(ops.p, &mut |u| ops.gv(u), 10, 30, 0, 1e-4).top[0].value
        }),
        "hv-cnn" => time_it::<B>(repeats, || sink += ops.hv(&v)[0]),
        "probe-cnn" => time_it::<B>(repeats, || {
            // The quickstart's probe: k = 5, 10 Lanczos steps, λ_max(H) warm-started.
            let opt = noisegeom_metrics::TrackOptions {
                k: 5,
                iters: 10,
                hessian: true,
                warm_start: true,
                gram_max_bytes: 2 << 30,
                hutchinson_samples: 64,
                seed: 0,
            };
            sink += noisegeom_metrics::track(&ops, &opt).expect("fits").trace_g
        }),
        "gram-mu-fnn" | "gram-mu-cnn" => time_it::<B>(repeats, || {
            let k = gram(&ops, n, 8 << 30).expect("fits");
            sink += exact_alignment(&k, ops.residuals()).g_fro2
        }),
        "mu-fnn" => time_it::<B>(repeats, || {
            let budget = FeatureBudget::strict(8 << 30);
            let (la, work) = exact_alignment_streamed_work(&ops, n, TILE, budget).expect("fits");
            product_flops = Some(work.product_flops);
            sink += la.g_fro2
        }),
        "mu-cnn-4096" => {
            let budget = FeatureBudget {
                max_bytes: 3_000_000_000,
                recompute: true,
            };
            let t = Instant::now();
            let (la, work) = exact_alignment_streamed_work(&ops, chunk, TILE, budget)?;
            product_flops = Some(work.product_flops);
            sink += la.g_fro2;
            let s = t.elapsed().as_secs_f64();
            (s, vec![s])
        }
        "alpha-fnn" => time_it::<B>(repeats, || {
            for q in ops.quad_forms_many(&dirs) {
                sink += q.sigma();
            }
        }),
        _ => unreachable!("checked"),
    };
    let _ = sink;
    Ok(match product_flops {
        Some(f) => Timing::new(
            w,
            backend,
            warm,
            &times,
            f / 1e9,
            "GFLOP/s in Gram products",
        ),
        None => Timing::new(w, backend, warm, &times, 1.0, "runs/s"),
    })
}
