//! Learning-rate schedules, each a pure function of the step.

use serde::{Deserialize, Serialize};

/// The `[train.lr]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// η(t) = lr.
    Constant { lr: f64 },
    /// Smith (2017) triangular cycle: from `min` up to `max` over `period / 2` steps and
    /// back down over the next `period / 2`, repeated. Starts at `min`.
    Triangular { min: f64, max: f64, period: u64 },
    /// Triangular with the amplitude halved after every cycle.
    Triangular2 { min: f64, max: f64, period: u64 },
    /// Cosine annealing from `max` to `min` over `period` steps, restarted every period
    /// (SGDR with T_mult = 1).
    CosineRestarts { min: f64, max: f64, period: u64 },
}

impl LrSchedule {
    /// The learning rate used at step `t` (0-based).
    pub fn lr(&self, t: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Triangular { min, max, period } => min + (max - min) * triangle(t, period),
            LrSchedule::Triangular2 { min, max, period } => {
                let cycle = t / period;
                let scale = 0.5f64.powi(cycle.min(1000) as i32);
                min + (max - min) * scale * triangle(t, period)
            }
            LrSchedule::CosineRestarts { min, max, period } => {
                let x = (t % period) as f64 / period as f64;
                min + 0.5 * (max - min) * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }

    /// Checks ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "train.lr.{key} = {v}; learning rates must be positive and finite"
                ))
            }
        };
        match *self {
            LrSchedule::Constant { lr } => positive("lr", lr),
            LrSchedule::Triangular { min, max, period }
            | LrSchedule::Triangular2 { min, max, period }
            | LrSchedule::CosineRestarts { min, max, period } => {
                positive("min", min)?;
                positive("max", max)?;
                if min > max {
                    return Err(format!("train.lr.min = {min} exceeds train.lr.max = {max}"));
                }
                if period < 2 {
                    return Err(format!(
                        "train.lr.period = {period}; a cycle needs at least 2 steps"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Steps that end a high-LR or a low-LR phase (peaks and troughs of the cycle) within
    /// `0..total`. Empty for a constant schedule.
    pub fn phase_ends(&self, total: u64) -> Vec<u64> {
        let period = match *self {
            LrSchedule::Constant { .. } => return Vec::new(),
            LrSchedule::Triangular { period, .. }
            | LrSchedule::Triangular2 { period, .. }
            | LrSchedule::CosineRestarts { period, .. } => period,
        };
        let half = period / 2;
        (1..).map(|k| k * half).take_while(|&t| t < total).collect()
    }
}

/// 0 at the start of each cycle, 1 at its middle, 0 at its end; linear in between.
fn triangle(t: u64, period: u64) -> f64 {
    let x = (t % period) as f64 / period as f64;
    1.0 - (2.0 * x - 1.0).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangular_matches_smith() {
        // Smith (2017): stepsize = period/2 = 4, lr = min + (max-min)·max(0, 1 - |t/4 - 2c + 1|),
        // c = floor(1 + t/8).
        let s = LrSchedule::Triangular {
            min: 0.1,
            max: 0.5,
            period: 8,
        };
        for t in 0..40u64 {
            let c = (1 + t / 8) as f64;
            let x = (t as f64 / 4.0 - 2.0 * c + 1.0).abs();
            let want = 0.1 + 0.4 * (1.0 - x).max(0.0);
            assert!((s.lr(t) - want).abs() < 1e-12, "t={t}");
        }
        assert_eq!(s.lr(0), 0.1);
        assert!((s.lr(4) - 0.5).abs() < 1e-15);
        assert_eq!(s.phase_ends(17), vec![4, 8, 12, 16]);
    }

    #[test]
    fn triangular2_halves_and_cosine_restarts() {
        let s = LrSchedule::Triangular2 {
            min: 0.0001,
            max: 1.0001,
            period: 10,
        };
        assert!((s.lr(5) - 1.0001).abs() < 1e-12);
        assert!((s.lr(15) - (0.0001 + 0.5)).abs() < 1e-12);
        assert!((s.lr(25) - (0.0001 + 0.25)).abs() < 1e-12);
        let c = LrSchedule::CosineRestarts {
            min: 0.1,
            max: 0.9,
            period: 4,
        };
        assert_eq!(c.lr(0), 0.9);
        assert!((c.lr(2) - 0.5).abs() < 1e-12);
        assert_eq!(c.lr(4), 0.9);
    }

    #[test]
    fn bad_values_are_named() {
        let e = LrSchedule::Constant { lr: -0.1 }.validate().unwrap_err();
        assert!(e.contains("train.lr.lr = -0.1"), "{e}");
        let e = LrSchedule::Triangular {
            min: 0.5,
            max: 0.1,
            period: 10,
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("exceeds"), "{e}");
    }
}
