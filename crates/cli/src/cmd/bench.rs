//! `noisegeom bench`: timed workloads, each with a warm-up and the median of several
//! repeats. Compilation and autotuning happen in the warm-up and are reported apart.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use noisegeom_models::{Activation, ModelConfig, Net, RandomInit, mse};
use noisegeom_train::{Sgd, SgdConfig};
use serde::Serialize;

use crate::backend::Job;

/// One timed workload on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub workload: String,
    pub backend: String,
    /// The first (warm-up) call, which includes kernel compilation and autotuning.
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
}

/// Resets the kernel's peak-RSS mark for this process (Linux ≥ 4.0; elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since the last reset, in MB (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub struct BenchJob {
    pub workloads: Vec<String>,
    pub repeats: usize,
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
    "alpha-fnn",
    "sgemm",
];

/// Probe samples for the geometry workloads.
pub const GEOMETRY_N: usize = 1024;

fn time_it(repeats: usize, mut f: impl FnMut()) -> (f64, Vec<f64>) {
    let t = Instant::now();
    f();
    let warm = t.elapsed().as_secs_f64();
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
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

    fn run<B: AutodiffBackend>(
        self,
        device: B::Device,
        backend: &str,
    ) -> anyhow::Result<Vec<Timing>> {
        let mut out = Vec::new();
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                anyhow::bail!(
                    "unknown workload `{w}`; choose from {}",
                    WORKLOADS.join(", ")
                );
            }
            reset_peak_rss();
            let mut t = self.workload::<B>(w, &device, backend)?;
            t.peak_rss_mb = peak_rss_mb();
            out.push(t);
        }
        Ok(out)
    }
}

impl BenchJob {
    fn workload<B: AutodiffBackend>(
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
                let (warm, times) = time_it(self.repeats.max(20), || {
                    let _ = a.clone().matmul(b.clone()).narrow(0, 0, 1).into_data();
                });
                let median = times[times.len() / 2];
                return Ok(Timing {
                    workload: w.clone(),
                    backend: backend.to_string(),
                    warmup_s: warm,
                    median_s: median,
                    min_s: times[0],
                    max_s: times[times.len() - 1],
                    repeats: times.len(),
                    throughput: 2.0 * 1024.0 * 512.0 * 1024.0 / median / 1e9,
                    unit: "GFLOP/s".into(),
                    peak_rss_mb: None,
                });
            }
            if !w.starts_with("train-") {
                return geometry::<B>(w, &device, backend, self.repeats);
            }
            let batch = 128;
            let (cfg, shape) = model_for(w);
            let arch = cfg.arch(&shape, 10, 0)?;
            let d: usize = shape.iter().product();
            let mut model = Some(Net::<B>::build(
                arch,
                &mut RandomInit::new(&device, cfg.init(), 0),
            )?);
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
            let (warm, times) = time_it(self.repeats, || {
                let m = model.take().expect("model");
                let loss = mse(m.forward(x.clone()), y.clone());
                // As the trainer does: read the step's loss back (this waits for the device,
                // and for the previous step's update, which the forward depends on).
                sink += loss.clone().into_scalar().elem::<f64>();
                let grads = loss.backward();
                model = Some(sgd.step(m, &grads, 0.01));
            });
            let _ = sink;
            let median = times[times.len() / 2];
            Ok(Timing {
                workload: w.clone(),
                backend: backend.to_string(),
                warmup_s: warm,
                median_s: median,
                min_s: times[0],
                max_s: times[times.len() - 1],
                repeats: self.repeats,
                throughput: batch as f64 / median,
                unit: "samples/s".into(),
                peak_rss_mb: None,
            })
        }
    }
}

/// A text table with, per workload, each backend's median and its ratio to the first.
pub fn table(all: &[Timing]) -> String {
    let mut s = format!(
        "{:<22} {:<28} {:>10} {:>12} {:>10} {:>10} {:>14}\n",
        "workload", "backend", "warmup s", "median s", "ratio", "peak MB", "throughput"
    );
    for t in all {
        let base = all
            .iter()
            .find(|b| b.workload == t.workload)
            .map(|b| b.median_s)
            .unwrap_or(t.median_s);
        s += &format!(
            "{:<22} {:<28} {:>10.3} {:>12.4} {:>10.2} {:>10} {:>9.0} {}\n",
            t.workload,
            t.backend,
            t.warmup_s,
            t.median_s,
            t.median_s / base,
            t.peak_rss_mb.map_or("-".into(), |m| format!("{m:.0}")),
            t.throughput,
            t.unit
        );
    }
    s
}

/// The geometry workloads on the FNN 3072-512-512-512-10 over n = 1024 probe samples, f32
/// inputs ~ N(0, 1), one-hot targets, PyTorch-default initialisation (seed 0).
fn geometry<B: AutodiffBackend>(
    w: &str,
    device: &B::Device,
    backend: &str,
    repeats: usize,
) -> anyhow::Result<Timing> {
    use noisegeom_metrics::alignment::exact_alignment;
    use noisegeom_metrics::gram::gram;
    use noisegeom_metrics::lanczos::lanczos;
    let (cfg, shape) = model_for("train-fnn");
    let arch = cfg.arch(&shape, 10, 0)?;
    let net =
        Net::<B::InnerBackend>::build(arch.clone(), &mut RandomInit::new(device, cfg.init(), 0))?;
    let theta = noisegeom_models::flatten(&net);
    let n = GEOMETRY_N;
    let d: usize = shape.iter().product();
    let mut rng = noisegeom_data::seeded_rng(0, "bench-probe");
    let x = noisegeom_data::normal_vec(&mut rng, n * d, 1.0);
    let y: Vec<f64> = (0..n * 10)
        .map(|k| if k % 10 == (k / 10) % 10 { 1.0 } else { 0.0 })
        .collect();
    let ops =
        noisegeom_metrics::ProbeOps::<B::InnerBackend>::new(arch, &theta, &x, &y, n, n, device)?;
    let v = noisegeom_data::normal_vec(&mut rng, ops.p, 1.0);
    let dirs: Vec<Vec<f64>> = (0..10)
        .map(|_| noisegeom_data::normal_vec(&mut rng, ops.p, 1.0))
        .collect();
    let mut sink = 0.0;
    let (warm, times) = match w {
        "jv-fnn" => time_it(repeats, || sink += ops.jvp(&v)[0]),
        "jv-double-vjp-fnn" => time_it(repeats, || sink += ops.jvp_double_vjp(&v)[0]),
        "gv-fnn" => time_it(repeats, || sink += ops.gv(&v)[0]),
        "hv-fnn" => time_it(repeats, || sink += ops.hv(&v)[0]),
        "hv-double-backward-fnn" => time_it(repeats, || sink += ops.hv_double_backward(&v)[0]),
        "lanczos-fnn" => time_it(repeats, || {
            sink += lanczos(ops.p, &mut |u| ops.gv(u), 10, 30, 0, 1e-4).top[0].value
        }),
        "gram-mu-fnn" => time_it(repeats, || {
            let k = gram(&ops, n, 8 << 30).expect("fits");
            sink += exact_alignment(&k, ops.residuals()).g_fro2
        }),
        "alpha-fnn" => time_it(repeats, || {
            for q in ops.quad_forms_many(&dirs) {
                sink += q.sigma();
            }
        }),
        _ => unreachable!("checked"),
    };
    let _ = sink;
    let median = times[times.len() / 2];
    Ok(Timing {
        workload: w.to_string(),
        backend: backend.to_string(),
        warmup_s: warm,
        median_s: median,
        min_s: times[0],
        max_s: times[times.len() - 1],
        repeats,
        throughput: 1.0 / median,
        unit: "runs/s".into(),
        peak_rss_mb: None,
    })
}
