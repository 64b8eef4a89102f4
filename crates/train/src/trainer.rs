//! The training loop.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use noisegeom_data::{Prepared, Sampler, stop};
use noisegeom_models::{
    DeviceSet, FlatSource, Net, RandomInit, TrainOps, autodiff_lock, flatten, mse,
};
use serde::Serialize;
use serde_json::json;

use crate::checkpoint::{self, Checkpoint};
use crate::fsio::{JsonLog, write_atomic};
use crate::probe::{Probe, ProbeRecord};
use crate::sgd::{Sgd, SgdConfig, flat_grads};
use crate::{ExperimentConfig, LossKind, TrainError};

/// What the trainer needs besides the device.
pub struct RunOptions {
    pub config: ExperimentConfig,
    /// The run directory (created if missing).
    pub dir: PathBuf,
    /// Overrides `data.dir`.
    pub data_dir: Option<PathBuf>,
    /// Continue the run in `dir` from its newest readable checkpoint.
    pub resume: bool,
    /// Written to `env.json` (git revision, backend, versions, …).
    pub env: serde_json::Value,
    /// A short name of the backend, recorded in the summary.
    pub backend: String,
}

/// Progress callbacks. The trainer never prints; the CLI renders these.
pub trait Observer {
    fn started(&mut self, _first_step: u64, _total_steps: u64) {}
    fn stepped(&mut self, _step: u64, _loss: f64, _lr: f64) {}
    fn evaluated(&mut self, _eval: &Eval) {}
    fn probed(&mut self, _probe: &ProbeRecord) {}
    fn checkpointed(&mut self, _step: u64, _path: &Path) {}
    /// Polled after every step, with the process-wide request of
    /// [`noisegeom_data::stop`]; `true` makes the trainer checkpoint and return.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Loss and accuracy of the model on one set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetStats {
    pub samples: usize,
    /// Square loss, 1/(2n) Σ ||f − y||² (SPEC §1).
    pub mse: f64,
    /// Mean cross-entropy, when training minimises it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_entropy: Option<f64>,
    /// Fraction correct (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// One evaluation event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Eval {
    pub step: u64,
    pub train: SetStats,
    pub test: SetStats,
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub final_eval: Eval,
    pub backend: String,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub checkpoint_seconds: f64,
    /// Time in noise-geometry probes (this process), and as a percentage of training time.
    pub probe_seconds: f64,
    pub probes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_overhead_percent: Option<f64>,
    pub wall_seconds: f64,
    pub samples_per_second: f64,
    pub run_dir: PathBuf,
}

/// How [`train`] ended.
#[derive(Debug)]
pub enum Outcome {
    Finished(Summary),
    /// A stop was requested; the run is checkpointed at `step` and can be resumed.
    Interrupted {
        step: u64,
        checkpoint: PathBuf,
    },
}

/// Samples of the training set evaluated at each eval (a fixed seeded subset).
const TRAIN_EVAL_SAMPLES: usize = 5000;

/// Trains according to `opts`, writing the run directory as it goes.
pub fn train<B: AutodiffBackend>(
    opts: RunOptions,
    device: &B::Device,
    observer: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    let wall = Instant::now();
    let dir = opts.dir.clone();
    let ckpt_dir = dir.join("checkpoints");
    let log_path = dir.join("metrics.jsonl");
    let mut cfg = opts.config.clone();

    let resume_from = if opts.resume {
        if !dir.join("config.toml").is_file() {
            return Err(TrainError::NothingToResume { dir });
        }
        newest_checkpoint(&ckpt_dir)?
    } else {
        if log_path.exists() || !checkpoint::list(&ckpt_dir).is_empty() {
            return Err(TrainError::RunExists { dir });
        }
        None
    };

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(&ckpt_dir).map_err(io(&ckpt_dir))?;

    // Data, with the directory actually read written back into the recorded config.
    let prepared: Prepared = cfg.data.prepare(opts.data_dir.as_deref(), cfg.seed)?;
    if opts.data_dir.is_some() || cfg.data.dir.is_some() {
        cfg.data.dir = cfg.data.resolved_dir(opts.data_dir.as_deref());
    }
    let n_train = prepared.train.len();
    if cfg.train.batch_size > n_train {
        return Err(TrainError::Config {
            path: "train.batch_size".into(),
            message: format!(
                "{} exceeds the {} training samples; lower it (full-batch GD uses batch_size = {})",
                cfg.train.batch_size, n_train, n_train
            ),
        });
    }
    if cfg.train.loss == LossKind::CrossEntropy && prepared.train.class_counts().is_none() {
        return Err(TrainError::Config {
            path: "train.loss".into(),
            message:
                "cross_entropy needs class labels, but the data are regression targets; use mse"
                    .into(),
        });
    }
    let arch = cfg.model.arch(
        &prepared.train.input_shape,
        prepared.train.num_outputs(),
        cfg.seed,
    )?;

    if !opts.resume {
        write_atomic(&dir.join("config.toml"), cfg.to_toml().as_bytes())
            .map_err(io(&dir.join("config.toml")))?;
        let env = serde_json::to_vec_pretty(&opts.env).expect("json");
        write_atomic(&dir.join("env.json"), &env).map_err(io(&dir.join("env.json")))?;
        let data = json!({
            "train": prepared.train.provenance,
            "test": prepared.test.provenance,
            "train_samples": prepared.train.len(),
            "test_samples": prepared.test.len(),
            "input_shape": prepared.train.input_shape,
            "outputs": prepared.train.num_outputs(),
            "class_counts_train": prepared.train.class_counts(),
            "normalisation": prepared.normalisation,
            "num_params": arch.num_params(),
            "arch": arch,
        });
        write_atomic(
            &dir.join("data.json"),
            &serde_json::to_vec_pretty(&data).expect("json"),
        )
        .map_err(io(&dir.join("data.json")))?;
    }

    let train_set = DeviceSet::<B::InnerBackend>::new(&prepared.train, device);
    let test_set = DeviceSet::<B::InnerBackend>::new(&prepared.test, device);
    let eval_subset = {
        let k = n_train.min(TRAIN_EVAL_SAMPLES);
        let idx = prepared
            .train
            .subset_indices(k, cfg.seed ^ 0xe7a1, false)
            .expect("k ≤ n");
        prepared.train.select(&idx)
    };
    let eval_train = DeviceSet::<B::InnerBackend>::new(&eval_subset, device);

    let sgd_cfg = SgdConfig {
        momentum: cfg.train.momentum,
        nesterov: cfg.train.nesterov,
        weight_decay: cfg.train.weight_decay,
    };
    let sizes: Vec<usize> = arch
        .param_layout()
        .iter()
        .map(|(_, s)| s.iter().product())
        .collect();
    let (mut model, mut sgd, start, log_keep, mut window, mut probe_pending) = match &resume_from {
        Some((_, ck)) => {
            if ck.arch != arch {
                return Err(TrainError::Config {
                    path: dir.join("config.toml").display().to_string(),
                    message: "the checkpoint's architecture differs from the run's config; the run directory was edited".into(),
                });
            }
            let model = Net::<B>::build(arch.clone(), &mut FlatSource::new(device, &ck.params))?;
            let sgd = match &ck.momentum {
                Some(m) => Sgd::with_state(sgd_cfg, m, &sizes, device),
                None => Sgd::new(sgd_cfg),
            };
            (
                model,
                sgd,
                ck.step,
                Some(ck.log_bytes),
                ck.loss_window,
                ck.probe_pending,
            )
        }
        None => {
            let model = Net::<B>::build(
                arch.clone(),
                &mut RandomInit::new(device, cfg.model.init(), cfg.seed),
            )?;
            (
                model,
                Sgd::new(sgd_cfg),
                0,
                if opts.resume { Some(0) } else { None },
                (0.0, 0),
                // The probe of step 0.
                true,
            )
        }
    };
    let mut log = JsonLog::open(&log_path, log_keep).map_err(io(&log_path))?;
    let log_err = |e| TrainError::Io {
        path: log_path.clone(),
        source: e,
    };

    let total = cfg.total_steps(n_train);
    let t = &cfg.train;
    let ckpt_every = t.checkpoint_every.unwrap_or(t.eval_every);
    let mut sampler = Sampler::new(n_train, t.batch_size, t.sampling, cfg.seed);
    let fresh_log = resume_from.is_none();
    let mut last_ckpt: Option<PathBuf> = resume_from.map(|(p, _)| p);
    if fresh_log {
        log.write(&json!({
            "kind": "start",
            "total_steps": total,
            "train_samples": n_train,
            "test_samples": prepared.test.len(),
            "num_params": arch.num_params(),
        }))
        .map_err(log_err)?;
    }
    let mut probe = match cfg.probe.as_ref().filter(|p| p.enabled) {
        Some(p) => Some(Probe::new(
            p,
            &prepared.train,
            arch.clone(),
            cfg.seed,
            t.lr.phase_ends(total),
        )?),
        None => None,
    };
    let mut probes = 0;
    let mut run_probe = |probe: &mut Probe,
                         net: &Net<B::InnerBackend>,
                         step: u64,
                         lr: f64,
                         log: &mut JsonLog,
                         observer: &mut dyn Observer|
     -> Result<(), TrainError> {
        let rec = probe.run(net, step, lr, device)?;
        let mut ev = serde_json::to_value(&rec).expect("json");
        ev["kind"] = json!("probe");
        log.write(&ev).map_err(|e| TrainError::Io {
            path: log_path.clone(),
            source: e,
        })?;
        observer.probed(&rec);
        probes += 1;
        Ok(())
    };
    observer.started(start, total);
    let stop_requested = |observer: &dyn Observer| observer.stop_requested() || stop::requested();
    // The probe of step 0, or one a stop interrupted before the checkpoint resumed from.
    if let Some(p) = probe.as_mut().filter(|_| probe_pending) {
        let lr = t.lr.lr(start.saturating_sub(1));
        probe_pending = interrupted(run_probe(p, &model.valid(), start, lr, &mut log, observer))?;
        if probe_pending {
            let state = Resumable {
                model: &model,
                sgd: &sgd,
                loss_window: window,
                probe_pending,
            };
            let path = state.save(&ckpt_dir, &mut log, &log_path, start, &arch)?;
            observer.checkpointed(start, &path);
            return Ok(Outcome::Interrupted {
                step: start,
                checkpoint: path,
            });
        }
    }

    let mut train_ops = TrainOps::for_device::<B>(device);
    let (mut train_s, mut eval_s, mut ckpt_s) = (0.0, 0.0, 0.0);
    let mut final_eval = None;
    for step in start..total {
        let t0 = Instant::now();
        let graph = autodiff_lock();
        let lr = t.lr.lr(step);
        let batch = sampler.batch(step);
        // The batch's mean loss is Σ over micro-batches of (len/B)·(micro-batch mean loss);
        // so are its gradients, summed one micro-batch at a time.
        let micro = t.micro_batch.unwrap_or(batch.len()).max(1);
        let mut value = 0.0;
        // One part: the backward's gradients as they are. Several: summed, flattened.
        let mut whole = None;
        let mut grads: Vec<Option<Tensor<B::InnerBackend, 1>>> = Vec::new();
        for part in batch.chunks(micro) {
            let (x, y) = train_set.rows(part);
            let out = model.forward_with(Tensor::from_inner(x), &mut train_ops);
            let mut loss = match t.loss {
                LossKind::Mse => mse(out, Tensor::from_inner(y)),
                LossKind::CrossEntropy => cross_entropy(out, Tensor::from_inner(y)),
            };
            if part.len() != batch.len() {
                loss = loss.mul_scalar(part.len() as f64 / batch.len() as f64);
            }
            value += loss.clone().into_scalar().elem::<f64>();
            if part.len() == batch.len() {
                whole = Some(loss.backward());
                continue;
            }
            let g = flat_grads::<B, _>(&model, &loss.backward());
            grads = if grads.is_empty() {
                g
            } else {
                grads
                    .into_iter()
                    .zip(g)
                    .map(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    })
                    .collect()
            };
        }
        if !value.is_finite() {
            log.write(
                &json!({"kind": "diverged", "step": step, "lr": lr, "loss": format!("{value}")}),
            )
            .map_err(log_err)?;
            return Err(TrainError::Diverged {
                step,
                lr,
                loss: value,
                checkpoint: last_ckpt,
            });
        }
        model = match whole {
            Some(g) => sgd.step(model, g, lr),
            None => sgd.step_flat(model, grads, lr),
        };
        drop(graph);
        train_s += t0.elapsed().as_secs_f64();

        let done = step + 1;
        window = (window.0 + value, window.1 + 1);
        observer.stepped(done, value, lr);
        if done % t.log_every == 0 || done == total {
            log.write(&json!({"kind": "step", "step": done, "lr": lr, "loss": window.0 / window.1 as f64}))
                .map_err(log_err)?;
            window = (0.0, 0);
        }
        if done % t.eval_every == 0 || done == total {
            let t1 = Instant::now();
            let valid = model.valid();
            let eval = Eval {
                step: done,
                train: evaluate(&valid, &eval_train, t.eval_batch, t.loss),
                test: evaluate(&valid, &test_set, t.eval_batch, t.loss),
            };
            eval_s += t1.elapsed().as_secs_f64();
            let mut ev = serde_json::to_value(&eval).expect("json");
            ev["kind"] = json!("eval");
            log.write(&ev).map_err(log_err)?;
            observer.evaluated(&eval);
            final_eval = Some(eval);
        }
        if let Some(p) = probe.as_mut().filter(|p| p.due(done, total)) {
            probe_pending =
                interrupted(run_probe(p, &model.valid(), done, lr, &mut log, observer))?;
        }
        let stop = stop_requested(observer);
        if done % ckpt_every == 0 || done == total || stop {
            let t2 = Instant::now();
            let state = Resumable {
                model: &model,
                sgd: &sgd,
                loss_window: window,
                probe_pending,
            };
            let path = state.save(&ckpt_dir, &mut log, &log_path, done, &arch)?;
            prune(&ckpt_dir, t.keep_checkpoints);
            ckpt_s += t2.elapsed().as_secs_f64();
            observer.checkpointed(done, &path);
            last_ckpt = Some(path.clone());
            if stop && done < total {
                return Ok(Outcome::Interrupted {
                    step: done,
                    checkpoint: path,
                });
            }
        }
    }

    let final_eval = match final_eval {
        Some(e) => e,
        // A resumed run that had already finished: evaluate once more.
        None => {
            let valid = model.valid();
            Eval {
                step: total,
                train: evaluate(&valid, &eval_train, t.eval_batch, t.loss),
                test: evaluate(&valid, &test_set, t.eval_batch, t.loss),
            }
        }
    };
    let mut end = json!({"kind": "end", "step": total});
    end["test"] = serde_json::to_value(&final_eval.test).expect("json");
    log.write(&end).map_err(log_err)?;
    log.sync().map_err(log_err)?;
    let steps_run = total - start;
    let probe_s = probe.as_ref().map_or(0.0, |p| p.seconds);
    let summary = Summary {
        steps: total,
        final_eval,
        backend: opts.backend.clone(),
        train_seconds: train_s,
        eval_seconds: eval_s,
        checkpoint_seconds: ckpt_s,
        probe_seconds: probe_s,
        probes,
        probe_overhead_percent: (probe.is_some() && train_s > 0.0)
            .then(|| 100.0 * probe_s / train_s),
        wall_seconds: wall.elapsed().as_secs_f64(),
        samples_per_second: if train_s > 0.0 {
            (steps_run * t.batch_size as u64) as f64 / train_s
        } else {
            0.0
        },
        run_dir: dir.clone(),
    };
    write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )
    .map_err(io(&dir.join("summary.json")))?;
    Ok(Outcome::Finished(summary))
}

/// What a checkpoint holds besides the step and the log's length.
struct Resumable<'a, B: AutodiffBackend> {
    model: &'a Net<B>,
    sgd: &'a Sgd<B::InnerBackend>,
    /// The losses summed since the last log line, and how many.
    loss_window: (f64, u64),
    probe_pending: bool,
}

impl<B: AutodiffBackend> Resumable<'_, B> {
    /// Writes the checkpoint after `step` steps: first its event in the log (so the log a
    /// checkpoint restores includes it), then θ, the momentum, the log's length, the open
    /// loss window and whether a probe is pending.
    fn save(
        &self,
        dir: &Path,
        log: &mut JsonLog,
        log_path: &Path,
        step: u64,
        arch: &noisegeom_models::Arch,
    ) -> Result<PathBuf, TrainError> {
        let log_err = |source| TrainError::Io {
            path: log_path.to_path_buf(),
            source,
        };
        log.write(&json!({"kind": "checkpoint", "step": step}))
            .map_err(log_err)?;
        let log_bytes = log.sync().map_err(log_err)?;
        let path = dir.join(checkpoint::file_name(step));
        Checkpoint {
            step,
            params: flatten(self.model),
            momentum: self.sgd.state(),
            log_bytes,
            loss_window: self.loss_window,
            probe_pending: self.probe_pending,
            arch: arch.clone(),
        }
        .save(&path)
        .map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

/// `Ok(true)` when a probe was interrupted by a stop request (it logged nothing; the
/// checkpoint that follows says it is pending), `Ok(false)` when it ran.
fn interrupted(probe: Result<(), TrainError>) -> Result<bool, TrainError> {
    match probe {
        Ok(()) => Ok(false),
        Err(TrainError::Geometry(noisegeom_metrics::GeometryError::Interrupted(_))) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Mean softmax cross-entropy against one-hot rows.
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, onehot: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * onehot).sum().mul_scalar(-1.0 / n)
}

/// Loss and accuracy over a whole set, in chunks of `batch`.
pub fn evaluate<B: Backend>(
    net: &Net<B>,
    set: &DeviceSet<B>,
    batch: usize,
    loss: LossKind,
) -> SetStats {
    let n = set.len();
    let (mut sq, mut ce, mut correct) = (0.0, 0.0, 0usize);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let (x, y) = set.range(start, len);
        let out = net.forward(x);
        let b = len as f64;
        sq += mse(out.clone(), y.clone()).into_scalar().elem::<f64>() * b;
        if loss == LossKind::CrossEntropy {
            ce += cross_entropy(out.clone(), y).into_scalar().elem::<f64>() * b;
        }
        if let Some(labels) = &set.labels {
            let pred = out.argmax(1).into_data();
            correct += pred
                .iter::<i64>()
                .zip(&labels[start..start + len])
                .filter(|(p, l)| *p == **l as i64)
                .count();
        }
    }
    let n_f = n.max(1) as f64;
    SetStats {
        samples: n,
        mse: sq / n_f,
        cross_entropy: (loss == LossKind::CrossEntropy).then_some(ce / n_f),
        accuracy: set.labels.as_ref().map(|_| correct as f64 / n_f),
    }
}

/// The newest checkpoint in a run's `checkpoints/` folder that loads; damaged ones are
/// skipped with a warning.
pub fn newest_checkpoint(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>, TrainError> {
    for (_, path) in checkpoint::list(dir).into_iter().rev() {
        match Checkpoint::load(&path) {
            Ok(ck) => return Ok(Some((path, ck))),
            Err(e) => tracing::warn!("{e}; trying an older checkpoint"),
        }
    }
    Ok(None)
}

/// Keeps the newest `keep` checkpoints.
fn prune(dir: &Path, keep: usize) {
    let all = checkpoint::list(dir);
    for (_, path) in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};

    use super::*;
    use crate::checkpoint::Checkpoint;

    /// Trains the given config in f64 and returns the final θ.
    fn final_theta(cfg: &str, dir: &Path) -> Vec<f64> {
        let config = ExperimentConfig::from_toml(cfg, "test").unwrap();
        let opts = RunOptions {
            config,
            dir: dir.to_path_buf(),
            data_dir: None,
            resume: false,
            env: json!({}),
            backend: "ndarray-f64".into(),
        };
        let device = Default::default();
        train::<Autodiff<NdArray<f64>>>(opts, &device, &mut Silent).unwrap();
        let (_, ck): (PathBuf, Checkpoint) = newest_checkpoint(&dir.join("checkpoints"))
            .unwrap()
            .unwrap();
        ck.params
    }

    #[test]
    fn micro_batches_sum_to_the_full_batch_gradient() {
        // Full-batch GD with momentum on 24 samples, as one pass and as micro-batches of 5
        // (the last one short): the same trajectory up to f64 rounding.
        let cfg = r#"
seed = 1
[data]
source = "synthetic_images"
n_train = 24
n_test = 8
image_size = 8
channels = 2
[model]
kind = "resnet"
channels = [3, 4]
[train]
batch_size = 24
steps = 6
momentum = 0.9
eval_every = 6
[train.lr]
schedule = "constant"
lr = 0.05
"#;
        let tmp = tempfile::tempdir().unwrap();
        let whole = final_theta(cfg, &tmp.path().join("whole"));
        let micro = final_theta(
            &cfg.replace("batch_size = 24", "batch_size = 24\nmicro_batch = 5"),
            &tmp.path().join("micro"),
        );
        let start = final_theta(
            &cfg.replace("lr = 0.05", "lr = 1e-300"),
            &tmp.path().join("start"),
        );
        let moved: f64 = whole.iter().zip(&start).map(|(a, b)| (a - b).abs()).sum();
        assert!(moved > 1e-3, "training moved θ by {moved}");
        let diff = whole
            .iter()
            .zip(&micro)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = whole.iter().map(|a| a.abs()).fold(0.0, f64::max);
        assert!(diff <= 1e-12 * scale, "max |Δθ| = {diff}");
    }
}
