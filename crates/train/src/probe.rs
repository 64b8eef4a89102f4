//! Probes: the noise geometry of the current parameters on a fixed subset of the training
//! set, logged as `probe` events. A probe reads θ and nothing else (no RNG, no optimizer
//! state), so the training trajectory is the same with and without probes.

use noisegeom_kernels::Kernels;
use std::time::Instant;

use noisegeom_data::Dataset;
use noisegeom_metrics::resources::TrainingStep;
use noisegeom_metrics::{ProbeOps, Resources, TrackOptions, Tracked, track};
use noisegeom_models::{Arch, Net, flatten};
use serde::Serialize;

use crate::{ProbeSettings, TrainError};

/// One probe event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeRecord {
    pub step: u64,
    /// The learning rate of the step just taken (of step 0 for the initial probe).
    pub lr: f64,
    pub samples: usize,
    /// Fraction of the probe set classified correctly (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(flatten)]
    pub geometry: Tracked,
}

/// A fixed probe set and what to measure on it.
pub struct Probe {
    settings: ProbeSettings,
    set: Dataset,
    /// The probe set's one-hot targets, for the accuracy (classification only).
    onehot: Option<Vec<f32>>,
    /// Indices of the probe set in the training set, and whether it is class-balanced.
    pub indices: Vec<usize>,
    pub balanced: bool,
    arch: Arch,
    phase_ends: Vec<u64>,
    /// Seconds spent probing so far (this process).
    pub seconds: f64,
}

impl Probe {
    /// `phase_ends`: the steps that end a high- or low-LR phase, sorted.
    pub fn new(
        settings: &ProbeSettings,
        train: &Dataset,
        arch: Arch,
        seed: u64,
        phase_ends: Vec<u64>,
    ) -> Result<Probe, TrainError> {
        if settings.size > train.len() {
            return Err(TrainError::Config {
                path: "probe.size".into(),
                message: format!(
                    "{} exceeds the {} samples of the training set ({}), of which the probe set is a subset; lower it",
                    settings.size,
                    train.len(),
                    train.provenance.name
                ),
            });
        }
        let (p, nc) = (arch.num_params(), settings.size * arch.outputs());
        if settings.lanczos_iters > p || settings.k > p.min(nc) {
            return Err(TrainError::Config {
                path: "probe.k, probe.lanczos_iters".into(),
                message: format!(
                    "k = {} and lanczos_iters = {}: k can be at most G's rank bound min(p, n·c) = min({p}, {nc}), and Lanczos takes at most p = {p} steps; lower them",
                    settings.k, settings.lanczos_iters
                ),
            });
        }
        let (set, indices, balanced) =
            train.probe_subset(settings.size, seed ^ settings.seed.rotate_left(17) ^ 0x9e0b)?;
        Ok(Probe {
            settings: settings.clone(),
            onehot: set.class_counts().map(|_| set.target_matrix()),
            set,
            indices,
            balanced,
            arch,
            phase_ends,
            seconds: 0.0,
        })
    }

    pub fn due(&self, done: u64, total: u64) -> bool {
        self.settings.due(done, total, &self.phase_ends)
    }

    fn ops<B: Kernels>(&self, net: &Net<B>, device: &B::Device) -> Result<ProbeOps<B>, TrainError> {
        let theta = flatten(net);
        Ok(ProbeOps::<B>::from_dataset(
            self.arch.clone(),
            &theta,
            &self.set,
            self.settings.chunk,
            device,
        )?)
    }

    fn options(&self) -> TrackOptions {
        let s = &self.settings;
        TrackOptions {
            k: s.k,
            iters: s.lanczos_iters,
            hessian: s.hessian,
            warm_start: true,
            gram_max_bytes: (s.max_gram_gb * 1e9) as usize,
            hutchinson_samples: 64,
            seed: s.seed,
        }
    }

    /// The peak memory and work of a training run with these probes, estimated at the
    /// parameters of `net` (one forward pass over the probe set), on top of the process's
    /// resident memory after that pass.
    pub fn estimate<B: Kernels>(
        &self,
        net: &Net<B>,
        training: TrainingStep,
        device: &B::Device,
    ) -> Result<Resources, TrainError> {
        let ops = self.ops(net, device)?;
        let base = noisegeom_data::mem::resident_bytes().unwrap_or(0);
        Ok(Resources::of_track(
            &ops,
            &self.options(),
            Some(training),
            base,
        ))
    }

    /// Measures at the parameters of `net` (the non-autodiff view of the trained model).
    pub fn run<B: Kernels>(
        &mut self,
        net: &Net<B>,
        step: u64,
        lr: f64,
        device: &B::Device,
    ) -> Result<ProbeRecord, TrainError> {
        let t0 = Instant::now();
        let ops = self.ops(net, device)?;
        let geometry = track(&ops, &self.options())?;
        let accuracy = self
            .onehot
            .as_ref()
            .map(|y| accuracy(ops.residuals(), y, ops.c));
        self.seconds += t0.elapsed().as_secs_f64();
        Ok(ProbeRecord {
            step,
            lr,
            samples: self.set.len(),
            accuracy,
            geometry,
        })
    }
}

/// Fraction of rows whose prediction f = e + y has its largest entry where y does.
fn accuracy(residuals: &[f64], onehot: &[f32], c: usize) -> f64 {
    let argmax = |row: &mut dyn Iterator<Item = f64>| {
        row.enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, v)| if v > b.1 { (i, v) } else { b },
            )
            .0
    };
    let n = onehot.len() / c.max(1);
    let hits = (0..n)
        .filter(|&i| {
            let pred = argmax(&mut (0..c).map(|o| residuals[i * c + o] + onehot[i * c + o] as f64));
            let want = argmax(&mut (0..c).map(|o| onehot[i * c + o] as f64));
            pred == want
        })
        .count();
    hits as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_from_residuals() {
        // Two samples, three classes: f = e + y.
        let y = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        // Sample 0 predicts class 0 (right), sample 1 predicts class 1 (wrong).
        let e = [-0.2, 0.1, 0.3, 0.0, 1.5, -0.4];
        assert_eq!(accuracy(&e, &y, 3), 0.5);
    }
}
