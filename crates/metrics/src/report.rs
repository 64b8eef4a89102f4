//! Values that can be undefined, and estimates with standard errors, as they appear in JSON.

use serde::{Deserialize, Serialize};

/// A ratio that may be undefined (a zero denominator). Serialised as a number, or as
/// `{"undefined": "<why>"}`; never NaN or infinity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ratio {
    Value(f64),
    Undefined { undefined: String },
}

impl Ratio {
    /// `num / den`, undefined (with `why`) when `den` is not above `zero`.
    pub fn new(num: f64, den: f64, zero: f64, why: &str) -> Ratio {
        if den.is_finite() && num.is_finite() && den.abs() > zero {
            Ratio::Value(num / den)
        } else {
            Ratio::Undefined {
                undefined: why.to_string(),
            }
        }
    }

    pub fn value(&self) -> Option<f64> {
        match self {
            Ratio::Value(v) => Some(*v),
            Ratio::Undefined { .. } => None,
        }
    }

    /// `self · k`, keeping undefined as it is.
    pub fn scaled(&self, k: f64) -> Ratio {
        match self {
            Ratio::Value(v) => Ratio::Value(v * k),
            u => u.clone(),
        }
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ratio::Value(v) => write!(f, "{v:.6}"),
            Ratio::Undefined { undefined } => write!(f, "undefined ({undefined})"),
        }
    }
}

/// A Monte Carlo estimate: the mean of `samples` draws and its standard error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub se: f64,
    pub samples: usize,
}

impl Estimate {
    pub fn from_samples(x: &[f64]) -> Estimate {
        let m = x.len();
        let mean = x.iter().sum::<f64>() / m.max(1) as f64;
        let var = if m > 1 {
            x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1) as f64
        } else {
            f64::NAN
        };
        Estimate {
            mean,
            se: if m > 1 {
                (var / m as f64).sqrt()
            } else {
                f64::INFINITY
            },
            samples: m,
        }
    }
}

/// Machine epsilon of the backend's float type.
pub fn eps_of(bytes: usize) -> f64 {
    if bytes >= 8 {
        f64::EPSILON
    } else {
        f32::EPSILON as f64
    }
}

/// The cut-offs of docs/definitions.md §5, stated in every output that uses them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cutoffs {
    /// Machine epsilon of the computation.
    pub eps: f64,
    /// An eigenvalue of G counts as nonzero above λ_max · n·c · eps.
    pub nonzero_eigenvalue: String,
    /// A quadratic form vᵀGv counts as zero below (1e3·eps)² · Tr G.
    pub zero_quadratic_form: String,
    /// A Ritz pair has converged when ||Au − λu|| ≤ tol · max|λ|.
    pub ritz_tolerance: f64,
}

impl Cutoffs {
    pub fn new(eps: f64) -> Cutoffs {
        Cutoffs {
            eps,
            nonzero_eigenvalue: "lambda > lambda_max * n * c * eps".into(),
            zero_quadratic_form: "v'Gv < (1e3 * eps)^2 * Tr G".into(),
            ritz_tolerance: if eps < 1e-10 { 1e-8 } else { 1e-4 },
        }
    }

    /// The threshold below which vᵀGv counts as zero, given Tr G.
    pub fn zero_form(&self, trace_g: f64) -> f64 {
        (1e3 * self.eps).powi(2) * trace_g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_ratios_serialise_without_nan() {
        let r = Ratio::new(1.0, 0.0, 0.0, "L = 0");
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, "{\"undefined\":\"L = 0\"}");
        assert_eq!(
            serde_json::to_string(&Ratio::new(1.0, 4.0, 0.0, "")).unwrap(),
            "0.25"
        );
        assert_eq!(Ratio::new(f64::NAN, 1.0, 0.0, "nan").value(), None);
    }

    #[test]
    fn estimate_standard_error() {
        let e = Estimate::from_samples(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        // sample variance 5/3, se = sqrt(5/12).
        assert!((e.se - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
    }
}
