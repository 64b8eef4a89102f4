//! The training loop: [`train`] opens a run ([`setup`]), takes steps ([`step`]), and
//! evaluates, probes and checkpoints on schedule ([`eval`]).

mod eval;
mod setup;
mod step;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use noisegeom_data::{Sampler, stop};
use noisegeom_metrics::Resources;
use noisegeom_metrics::resources::TrainingStep;
use noisegeom_models::{AutodiffKernels, DeviceSet, Net, autodiff_lock};
use serde::Serialize;
use serde_json::json;

use eval::{Resumable, interrupted, prune};
pub use eval::{evaluate, newest_checkpoint};
use setup::{Start, io};

use crate::ExperimentConfig;
use crate::TrainError;
use crate::fsio::{JsonLog, write_atomic};
use crate::probe::{Probe, ProbeRecord};

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
    /// Start a fresh run from these weights (a state_dict, by the architecture's tensor
    /// names) instead of the seeded initialisation: fine-tuning.
    pub initial: Option<InitialWeights>,
}

/// Weights to start training from, and where they came from (recorded in `data.json`).
pub struct InitialWeights {
    pub tensors: std::collections::BTreeMap<String, noisegeom_models::NamedTensor>,
    pub source: String,
}

/// Progress callbacks. The trainer never prints; the CLI renders these.
pub trait Observer {
    fn started(&mut self, _first_step: u64, _total_steps: u64) {}
    fn stepped(&mut self, _step: u64, _loss: f64, _lr: f64) {}
    fn evaluated(&mut self, _eval: &Eval) {}
    fn probed(&mut self, _probe: &ProbeRecord) {}
    fn checkpointed(&mut self, _step: u64, _path: &Path) {}
    /// The run's estimated peak memory and work, before the first step.
    fn estimated(&mut self, _resources: &Resources) {}
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
    /// Square loss, 1/(2n) Σ ||f − y||² (docs/definitions.md §1).
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
    /// The estimate made before the first step (with probes), and the process's measured
    /// peak resident memory at the end.
    pub resources: RunResources,
}

/// A run's memory: estimated before it, measured after it.
#[derive(Clone, Debug, Serialize)]
pub struct RunResources {
    pub estimate: Option<Resources>,
    pub measured_peak_bytes: Option<u64>,
}

/// How [`train`] ended.
#[derive(Debug)]
pub enum Outcome {
    Finished(Box<Summary>),
    /// A stop was requested; the run is checkpointed at `step` and can be resumed.
    Interrupted {
        step: u64,
        checkpoint: PathBuf,
    },
}

/// Samples of the training set evaluated at each eval (a fixed seeded subset).
const TRAIN_EVAL_SAMPLES: usize = 5000;

/// Trains according to `opts`, writing the run directory as it goes.
pub fn train<B: AutodiffKernels>(
    opts: RunOptions,
    device: &B::Device,
    observer: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    let wall = Instant::now();
    let run = setup::open(&opts)?;
    let Start {
        mut model,
        mut sgd,
        step: start,
        log_keep,
        window,
        mut probe_pending,
    } = run.start::<B>(opts.resume, device)?;
    let (cfg, prepared, arch) = (&run.cfg, &run.prepared, &run.arch);
    let (dir, ckpt_dir, log_path) = (&run.dir, &run.ckpt_dir, &run.log_path);
    let n_train = prepared.train.len();

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

    let total = cfg.total_steps(n_train);
    let t = &cfg.train;
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
    let estimate = match probe.as_ref() {
        Some(p) => {
            let training = TrainingStep {
                batch: t.micro_batch.unwrap_or(t.batch_size).min(t.batch_size),
                eval_chunk: t.eval_batch,
            };
            let r = p.estimate(&model.valid(), training, device)?;
            observer.estimated(&r);
            r.check(
                "lower probe.size, probe.chunk or probe.max_gram_gb, set probe.hessian = false, or lower train.micro_batch or train.eval_batch",
            )?;
            Some(r)
        }
        None => None,
    };
    let mut log = JsonLog::open(log_path, log_keep).map_err(io(log_path))?;
    let log_err = |e| TrainError::Io {
        path: log_path.clone(),
        source: e,
    };

    let ckpt_every = t.checkpoint_every.unwrap_or(t.eval_every);
    let mut sampler = Sampler::new(n_train, t.batch_size, t.sampling, cfg.seed);
    let mut last_ckpt: Option<PathBuf> = run.resume_from.as_ref().map(|(p, _)| p.clone());
    if run.resume_from.is_none() {
        log.write(&json!({
            "kind": "start",
            "total_steps": total,
            "train_samples": n_train,
            "test_samples": prepared.test.len(),
            "num_params": arch.num_params(),
        }))
        .map_err(log_err)?;
        // Given weights live only in the file they came from: keep them in the run, so that a
        // run stopped before its first checkpoint resumes from them, not from the seed.
        if run.initial_theta.is_some() {
            let state = Resumable {
                model: &model,
                sgd: &sgd,
                loss_window: window,
                probe_pending,
            };
            last_ckpt = Some(state.save(ckpt_dir, &mut log, log_path, 0, arch)?);
        }
    }
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
            let path = state.save(ckpt_dir, &mut log, log_path, start, arch)?;
            observer.checkpointed(start, &path);
            return Ok(Outcome::Interrupted {
                step: start,
                checkpoint: path,
            });
        }
    }

    let (mut train_s, mut eval_s, mut ckpt_s) = (0.0, 0.0, 0.0);
    let mut final_eval = None;
    let mut losses = step::Losses::<B::InnerBackend>::new(window);
    // Where the losses read back go (a macro: the borrows are taken at each read).
    macro_rules! sink {
        () => {
            step::LossSink {
                log: &mut log,
                log_path,
                observer: &mut *observer,
                log_every: t.log_every,
                total,
                last_checkpoint: &last_ckpt,
            }
        };
    }
    for step in start..total {
        let t0 = Instant::now();
        let graph = autodiff_lock();
        let lr = t.lr.lr(step);
        let batch = sampler.batch(step);
        let (parts, grads) = step::gradient(&model, &train_set, &batch, t);
        model = sgd.apply(model, grads, lr);
        drop(graph);
        losses.push(step, lr, parts);

        let done = step + 1;
        let probe_due = probe.as_ref().is_some_and(|p| p.due(done, total));
        let ckpt_due = done % ckpt_every == 0 || done == total;
        if done % t.log_every == 0 || done % t.eval_every == 0 || probe_due || ckpt_due {
            losses.read(sink!())?;
        }
        train_s += t0.elapsed().as_secs_f64();
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
        if let Some(p) = probe.as_mut().filter(|_| probe_due) {
            probe_pending =
                interrupted(run_probe(p, &model.valid(), done, lr, &mut log, observer))?;
        }
        let stop = stop_requested(observer);
        if ckpt_due || stop {
            losses.read(sink!())?;
            let t2 = Instant::now();
            let state = Resumable {
                model: &model,
                sgd: &sgd,
                loss_window: losses.window,
                probe_pending,
            };
            let path = state.save(ckpt_dir, &mut log, log_path, done, arch)?;
            prune(ckpt_dir, t.keep_checkpoints);
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
        resources: RunResources {
            estimate,
            measured_peak_bytes: noisegeom_data::mem::peak_bytes(),
        },
    };
    write_atomic(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )
    .map_err(io(&dir.join("summary.json")))?;
    Ok(Outcome::Finished(Box::new(summary)))
}

#[cfg(test)]
mod tests;
