use rand::RngExt;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::seeded_rng;

/// How minibatches are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Each epoch is a fresh permutation cut into `n / batch` batches; the remainder of the
    /// permutation is dropped.
    WithoutReplacement,
    /// Each batch is `batch` independent uniform draws.
    WithReplacement,
}

/// Minibatch indices as a pure function of `(seed, step)`.
///
/// Because no state is carried between steps, a resumed run draws exactly the batches the
/// uninterrupted run would have drawn; a checkpoint only needs the step.
#[derive(Clone, Debug)]
pub struct Sampler {
    n: usize,
    batch: usize,
    sampling: Sampling,
    seed: u64,
    cached_epoch: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    /// `batch` must be in `1..=n`; callers validate this with a user-facing error first.
    pub fn new(n: usize, batch: usize, sampling: Sampling, seed: u64) -> Self {
        assert!(batch >= 1 && batch <= n, "batch {batch} for n = {n}");
        Sampler {
            n,
            batch,
            sampling,
            seed,
            cached_epoch: None,
        }
    }

    /// Full batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.n / self.batch) as u64
    }

    /// The sample indices of minibatch `step` (0-based).
    pub fn batch(&mut self, step: u64) -> Vec<usize> {
        match self.sampling {
            Sampling::WithReplacement => {
                let mut rng =
                    seeded_rng(self.seed ^ step.rotate_left(17), "batch-with-replacement");
                (0..self.batch)
                    .map(|_| rng.random_range(0..self.n))
                    .collect()
            }
            Sampling::WithoutReplacement => {
                let spe = self.steps_per_epoch();
                let (epoch, k) = (step / spe, (step % spe) as usize);
                if self.cached_epoch.as_ref().map(|c| c.0) != Some(epoch) {
                    let mut perm: Vec<usize> = (0..self.n).collect();
                    perm.shuffle(&mut seeded_rng(
                        self.seed ^ epoch.rotate_left(29),
                        "epoch-permutation",
                    ));
                    self.cached_epoch = Some((epoch, perm));
                }
                let perm = &self.cached_epoch.as_ref().unwrap().1;
                perm[k * self.batch..(k + 1) * self.batch].to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_replacement_covers_each_epoch_once() {
        let mut s = Sampler::new(10, 3, Sampling::WithoutReplacement, 5);
        assert_eq!(s.steps_per_epoch(), 3);
        let mut seen: Vec<usize> = (0..3).flat_map(|t| s.batch(t)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            9,
            "9 distinct samples in one epoch of 3 batches of 3"
        );
        // A later epoch is a different permutation.
        assert_ne!(s.batch(0), s.batch(3));
    }

    #[test]
    fn batches_are_a_pure_function_of_the_step() {
        for sampling in [Sampling::WithoutReplacement, Sampling::WithReplacement] {
            let mut a = Sampler::new(50, 7, sampling, 11);
            let forward: Vec<_> = (0..20).map(|t| a.batch(t)).collect();
            let mut b = Sampler::new(50, 7, sampling, 11);
            for t in (0..20).rev() {
                assert_eq!(b.batch(t), forward[t as usize]);
            }
        }
    }

    #[test]
    fn with_replacement_is_uniform() {
        let mut s = Sampler::new(4, 4, Sampling::WithReplacement, 1);
        let mut counts = [0usize; 4];
        for t in 0..5000 {
            s.batch(t).into_iter().for_each(|i| counts[i] += 1);
        }
        // 20000 draws, 5000 expected per bin, sd ≈ 61.
        for c in counts {
            assert!((c as i64 - 5000).abs() < 300, "{counts:?}");
        }
    }
}
