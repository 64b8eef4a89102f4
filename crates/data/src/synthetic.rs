//! Generated data. Every generated dataset says so in its [`Provenance`].
//!
//! - [`gaussian`]: x ~ N(0, S) with S diagonal (isotropic, or the power law `S_kk = k^{-a}`),
//!   targets from a linear teacher y = ⟨w*, x⟩ with w* ~ N(0, I) (docs/definitions.md §13, Figure 1).
//! - [`teacher_images`]: a CIFAR-shaped classification task. Images are random smooth
//!   patterns plus pixel noise; the label is the argmax of a fixed random two-layer ReLU
//!   network applied to a 4×4-cell average-pooled copy of the image, with per-class logit offsets
//!   centred so that the classes are roughly balanced. A CNN can learn it; nothing downloads.

use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset, Provenance, Targets, normal_vec, seeded_rng};

/// How the effective dimension of a covariance is measured. **\[choice\]** (docs/definitions.md §14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffDim {
    /// d_eff = Tr S / ||S||_op.
    Trace,
    /// d_eff = (Tr S)² / Tr S².
    Participation,
}

/// The input covariance S, always diagonal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Covariance {
    /// S = I_d.
    Isotropic { dim: usize },
    /// S = diag(k^{-exponent}), k = 1..D, with D the smallest dimension whose effective
    /// dimension reaches `d_eff`.
    PowerLaw {
        exponent: f64,
        d_eff: f64,
        #[serde(default = "default_eff_dim")]
        eff_dim: EffDim,
    },
    /// S = diag(k^{-exponent}), k = 1..dim.
    PowerLawDim { exponent: f64, dim: usize },
}

fn default_eff_dim() -> EffDim {
    EffDim::Trace
}

impl Covariance {
    /// The diagonal of S.
    pub fn spectrum(&self) -> Vec<f64> {
        match self {
            Covariance::Isotropic { dim } => vec![1.0; *dim],
            Covariance::PowerLaw {
                exponent,
                d_eff,
                eff_dim,
            } => {
                let dim = power_law_dim(*exponent, *d_eff, *eff_dim);
                (1..=dim).map(|k| (k as f64).powf(-exponent)).collect()
            }
            Covariance::PowerLawDim { exponent, dim } => {
                (1..=*dim).map(|k| (k as f64).powf(-exponent)).collect()
            }
        }
    }
}

/// Effective dimension of a diagonal covariance.
pub fn effective_dim(spectrum: &[f64], how: EffDim) -> f64 {
    let tr: f64 = spectrum.iter().sum();
    match how {
        EffDim::Trace => tr / spectrum.iter().cloned().fold(0.0, f64::max),
        EffDim::Participation => tr * tr / spectrum.iter().map(|s| s * s).sum::<f64>(),
    }
}

/// The smallest D with d_eff(diag(k^{-a}), k ≤ D) ≥ target.
pub fn power_law_dim(exponent: f64, target: f64, how: EffDim) -> usize {
    let (mut tr, mut tr2) = (0.0, 0.0);
    for k in 1..=10_000_000usize {
        let s = (k as f64).powf(-exponent);
        tr += s;
        tr2 += s * s;
        let d = match how {
            EffDim::Trace => tr,
            EffDim::Participation => tr * tr / tr2,
        };
        if d >= target {
            return k;
        }
    }
    10_000_000
}

/// A Gaussian linear-teacher regression task and its ground truth.
#[derive(Clone, Debug)]
pub struct GaussianTask {
    pub dataset: Dataset,
    /// The diagonal of S.
    pub spectrum: Vec<f64>,
    /// The teacher w*, in the data's coordinates.
    pub teacher: Vec<f64>,
}

/// n samples x ~ N(0, S), y = ⟨w*, x⟩ with w* ~ N(0, I). Deterministic in `seed`.
pub fn gaussian(n: usize, cov: &Covariance, seed: u64) -> Result<GaussianTask, DataError> {
    let spectrum = cov.spectrum();
    let d = spectrum.len();
    if n == 0 || d == 0 {
        return Err(DataError::Synthetic(format!(
            "gaussian data needs n ≥ 1 and dim ≥ 1, got n = {n}, dim = {d}"
        )));
    }
    let teacher = normal_vec(&mut seeded_rng(seed, "gaussian-teacher"), d, 1.0);
    let z = normal_vec(&mut seeded_rng(seed, "gaussian-inputs"), n * d, 1.0);
    let scale: Vec<f64> = spectrum.iter().map(|s| s.sqrt()).collect();
    let mut inputs = Vec::with_capacity(n * d);
    let mut values = Vec::with_capacity(n);
    for row in z.chunks_exact(d) {
        let mut y = 0.0;
        for k in 0..d {
            // Round to f32 first so the target is exactly ⟨w*, x⟩ for the stored x.
            let x = (row[k] * scale[k]) as f32;
            inputs.push(x);
            y += teacher[k] * x as f64;
        }
        values.push(y as f32);
    }
    let desc = match cov {
        Covariance::Isotropic { dim } => format!("x ~ N(0, I_{dim}), y = <w*, x>"),
        Covariance::PowerLaw { exponent, .. } | Covariance::PowerLawDim { exponent, .. } => {
            format!("x ~ N(0, diag(k^-{exponent})), k ≤ {d}, y = <w*, x>")
        }
    };
    Ok(GaussianTask {
        dataset: Dataset {
            provenance: Provenance {
                name: "synthetic-gaussian".into(),
                split: "all".into(),
                source: format!("{desc}, seed {seed}"),
                synthetic: true,
            },
            input_shape: vec![d],
            inputs,
            targets: Targets::Regression { values, dim: 1 },
        },
        spectrum,
        teacher,
    })
}

/// The CIFAR-shaped teacher task: `n` images of `[channels, size, size]`, `classes` labels.
pub fn teacher_images(
    n: usize,
    channels: usize,
    size: usize,
    classes: usize,
    seed: u64,
) -> Result<Dataset, DataError> {
    if !size.is_multiple_of(4) || n == 0 || !(2..=255).contains(&classes) {
        return Err(DataError::Synthetic(format!(
            "teacher images need size divisible by 4, n ≥ 1 and 2..=255 classes (got size {size}, n {n}, classes {classes})"
        )));
    }
    let plane = size * size;
    let dim = channels * plane;
    // The teacher sees the image averaged over a 4×4 grid of cells.
    let cell = size / 4;
    let pooled = channels * 16;
    let hidden = 32;
    let mut rng = seeded_rng(seed, "teacher-images-net");
    let w1 = normal_vec(&mut rng, hidden * pooled, (1.0 / pooled as f64).sqrt());
    let w2 = normal_vec(&mut rng, classes * hidden, (1.0 / hidden as f64).sqrt());

    // Images: a few random low-frequency sinusoids per channel plus pixel noise, in [0, 1].
    let mut rng = seeded_rng(seed, "teacher-images-pixels");
    let params = normal_vec(&mut rng, n * channels * 3 * 4, 1.0);
    let noise = normal_vec(&mut rng, n * dim, 0.1);
    let mut inputs = vec![0f32; n * dim];
    for i in 0..n {
        for ch in 0..channels {
            let p = &params[((i * channels) + ch) * 12..((i * channels) + ch + 1) * 12];
            for r in 0..size {
                for c in 0..size {
                    let (u, v) = (r as f64 / size as f64, c as f64 / size as f64);
                    let mut val = 0.0;
                    for w in p.chunks_exact(3) {
                        val += (std::f64::consts::PI * (w[0] * u + w[1] * v) + w[2]).sin();
                    }
                    let k = i * dim + ch * plane + r * size + c;
                    inputs[k] = (0.5 + 0.15 * val + noise[k]).clamp(0.0, 1.0) as f32;
                }
            }
        }
    }

    // Teacher logits on the pooled image, then centre each class's logit over the data.
    let mut logits = vec![0f64; n * classes];
    let mut pool = vec![0f64; pooled];
    for i in 0..n {
        pool.iter_mut().for_each(|v| *v = 0.0);
        for ch in 0..channels {
            for r in 0..size {
                for c in 0..size {
                    let x = inputs[i * dim + ch * plane + r * size + c] as f64 - 0.5;
                    pool[ch * 16 + (r / cell) * 4 + c / cell] += x / (cell * cell) as f64;
                }
            }
        }
        let h: Vec<f64> = w1
            .chunks_exact(pooled)
            .map(|w| {
                w.iter()
                    .zip(&pool)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    .max(0.0)
            })
            .collect();
        for (k, w) in w2.chunks_exact(hidden).enumerate() {
            logits[i * classes + k] = w.iter().zip(&h).map(|(a, b)| a * b).sum();
        }
    }
    for k in 0..classes {
        let mean = (0..n).map(|i| logits[i * classes + k]).sum::<f64>() / n as f64;
        (0..n).for_each(|i| logits[i * classes + k] -= mean);
    }
    let labels = logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for k in 1..classes {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best as u8
        })
        .collect();
    Ok(Dataset {
        provenance: Provenance {
            name: "synthetic-teacher-images".into(),
            split: "all".into(),
            source: format!(
                "SYNTHETIC: {n} random smooth {channels}x{size}x{size} images labelled by a fixed random ReLU teacher (seed {seed})"
            ),
            synthetic: true,
        },
        input_shape: vec![channels, size, size],
        inputs,
        targets: Targets::Classes {
            labels,
            num_classes: classes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_law_dimension_matches_spec() {
        // docs/definitions.md §13: Tr(S)/||S||_op = 50 for S = diag(k^{-1/2}) gives D = 662.
        assert_eq!(power_law_dim(0.5, 50.0, EffDim::Trace), 662);
        let cov = Covariance::PowerLaw {
            exponent: 0.5,
            d_eff: 50.0,
            eff_dim: EffDim::Trace,
        };
        let s = cov.spectrum();
        assert!(effective_dim(&s, EffDim::Trace) >= 50.0);
        assert!(effective_dim(&s[..s.len() - 1], EffDim::Trace) < 50.0);
        let d = power_law_dim(0.5, 50.0, EffDim::Participation);
        let s: Vec<f64> = (1..=d).map(|k| (k as f64).powf(-0.5)).collect();
        assert!(effective_dim(&s, EffDim::Participation) >= 50.0);
        assert!(effective_dim(&s[..d - 1], EffDim::Participation) < 50.0);
    }

    #[test]
    fn gaussian_targets_are_the_teacher_and_moments_match_s() {
        let cov = Covariance::PowerLaw {
            exponent: 1.0,
            d_eff: 2.5,
            eff_dim: EffDim::Trace,
        };
        let task = gaussian(40_000, &cov, 9).unwrap();
        let ds = &task.dataset;
        let d = ds.input_dim();
        assert_eq!(d, task.spectrum.len());
        let Targets::Regression { values, .. } = &ds.targets else {
            panic!()
        };
        for (row, y) in ds.inputs.chunks(d).zip(values).take(50) {
            let t: f64 = row
                .iter()
                .zip(&task.teacher)
                .map(|(x, w)| *x as f64 * w)
                .sum();
            assert!((t - *y as f64).abs() < 1e-5 * (1.0 + t.abs()));
        }
        for k in 0..d {
            let var = ds
                .inputs
                .iter()
                .skip(k)
                .step_by(d)
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                / 40_000.0;
            // Relative sd of a variance estimate: sqrt(2/n) = 0.7%.
            assert!((var / task.spectrum[k] - 1.0).abs() < 0.03, "k={k} {var}");
        }
    }

    #[test]
    fn teacher_images_are_deterministic_balanced_enough_and_in_range() {
        let a = teacher_images(2000, 3, 32, 10, 1).unwrap();
        assert_eq!(a, teacher_images(2000, 3, 32, 10, 1).unwrap());
        assert!(a.provenance.synthetic);
        assert!(a.inputs.iter().all(|v| (0.0..=1.0).contains(v)));
        let counts = a.class_counts().unwrap();
        assert!(counts.iter().all(|&c| c >= 40), "{counts:?}");
    }
}
