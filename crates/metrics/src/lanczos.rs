//! Lanczos with full reorthogonalisation, the Krylov basis kept on the host in f64, and
//! stochastic Lanczos quadrature (SLQ) for spectral densities.
//!
//! Each Ritz pair is reported with its residual ||A u − θ u||, computed explicitly with one
//! more product per reported pair (so it includes the rounding of the products themselves,
//! which the Lanczos estimate β_m |y_m| does not see), next to that estimate; a pair is
//! flagged unconverged when the explicit residual exceeds `tol · max|θ|`.
//!
//! A stop request ([`noisegeom_data::stop`]) ends a run after the current product; the
//! entry points that call these functions ([`crate::measure()`], [`crate::track()`]) then
//! return an interruption error, never the truncated result.

use rand::RngExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::sym_eig;
use crate::ops::{dot, norm};

/// One Ritz pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ritz {
    pub value: f64,
    /// ||A u − θ u||, computed explicitly.
    pub residual: f64,
    /// The Lanczos estimate β_m |y_m| (exact-arithmetic value of the same residual).
    pub residual_estimate: f64,
    pub converged: bool,
    /// The unit Ritz vector (not serialised: it has p entries).
    #[serde(skip)]
    pub vector: Vec<f64>,
}

/// A Lanczos run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LanczosResult {
    /// The k largest Ritz pairs, descending.
    pub top: Vec<Ritz>,
    /// The smallest Ritz value (the other end of the spectrum, e.g. negative curvature of H).
    pub smallest: f64,
    pub iterations: usize,
    /// Products with A: the Krylov steps plus one per reported pair (explicit residuals).
    pub matvecs: usize,
    /// True when the Krylov space became invariant (β ≈ 0) before `iterations` steps.
    pub invariant_subspace: bool,
    pub tolerance: f64,
}

/// Lanczos on the symmetric operator `a` of dimension `dim`, from a seeded random start;
/// `iters` steps, full reorthogonalisation (Gram–Schmidt, twice when needed), top `k` pairs.
pub fn lanczos(
    dim: usize,
    a: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    k: usize,
    iters: usize,
    seed: u64,
    tol: f64,
) -> LanczosResult {
    lanczos_from(
        dim,
        a,
        random_start(dim, seed),
        k,
        iters,
        tol,
        Until::Budget,
    )
}

/// The seeded random start of [`lanczos`].
pub fn random_start(dim: usize, seed: u64) -> Vec<f64> {
    noisegeom_data::normal_vec(
        &mut noisegeom_data::seeded_rng(seed, "lanczos-start"),
        dim,
        1.0,
    )
}

/// Elements per block of the fused basis loops: a block of the target vector stays in cache
/// while every basis vector's block streams past it.
const BLOCK: usize = 4096;

/// w ← w − Q (Qᵀ w): the dot products one basis vector per task, then one fused, blocked
/// update. Each dot runs in a fixed order, so the result does not depend on the threads.
fn project_out(w: &mut [f64], basis: &[Vec<f64>]) {
    let h: Vec<f64> = basis.par_iter().map(|b| dot(w, b)).collect();
    combine(w, &h, basis, -1.0);
}

/// u ← u + sign · Σ_i y_i q_i, in parallel blocks of u.
fn combine(u: &mut [f64], y: &[f64], basis: &[Vec<f64>], sign: f64) {
    u.par_chunks_mut(BLOCK).enumerate().for_each(|(k, ub)| {
        let (at, len) = (k * BLOCK, ub.len());
        for (yi, q) in y.iter().zip(basis) {
            let c = sign * yi;
            ub.iter_mut()
                .zip(&q[at..at + len])
                .for_each(|(x, v)| *x += c * v);
        }
    });
}

struct Tridiagonal {
    alpha: Vec<f64>,
    beta: Vec<f64>,
    basis: Vec<Vec<f64>>,
    invariant: bool,
}

impl Tridiagonal {
    /// Eigenvalues (descending) and eigenvectors of the tridiagonal matrix T.
    fn eig(&self) -> (Vec<f64>, Vec<Vec<f64>>) {
        tridiagonal_eig(&self.alpha, &self.beta)
    }
}

/// Eigenvalues (descending) and eigenvectors of the tridiagonal matrix with diagonal `alpha`
/// and off-diagonal `beta[..alpha.len() − 1]`.
fn tridiagonal_eig(alpha: &[f64], beta: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
    sym_eig(alpha.len(), |i, j| {
        if i == j {
            alpha[i]
        } else if i + 1 == j {
            beta[i]
        } else if j + 1 == i {
            beta[j]
        } else {
            0.0
        }
    })
}

/// When a Lanczos run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// After its step budget (or at an invariant subspace).
    Budget,
    /// Also once its top `k` Ritz pairs have converged by the Lanczos estimate,
    /// β_j |y_j| ≤ `tol` · max|θ|, checked after every step from the k-th. The reported
    /// residuals are explicit as always, so a pair whose products' rounding keeps it from
    /// converging is still flagged.
    Converged,
}

/// Whether the top `k` Ritz pairs of T (diagonal `alpha`, off-diagonal `beta`) have
/// converged by the Lanczos estimate, `b` being the next β.
fn estimates_converged(alpha: &[f64], beta: &[f64], b: f64, k: usize, tol: f64) -> bool {
    let m = alpha.len();
    if m < k {
        return false;
    }
    let (vals, vecs) = tridiagonal_eig(alpha, beta);
    let vmax = vals.iter().fold(0.0f64, |x, v| x.max(v.abs()));
    vecs.iter()
        .take(k)
        .all(|y| (b * y[m - 1]).abs() <= tol * vmax)
}

fn tridiagonalise(
    dim: usize,
    a: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    start: Vec<f64>,
    iters: usize,
    converged: Option<(usize, f64)>,
) -> Tridiagonal {
    let iters = iters.clamp(1, dim);
    let s = norm(&start);
    let mut q: Vec<f64> = start.iter().map(|v| v / s).collect();
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(iters);
    let (mut alpha, mut beta) = (Vec::new(), Vec::new());
    let mut scale = 0.0f64;
    let mut invariant = false;
    for j in 0..iters {
        if j > 0 && noisegeom_data::stop::requested() {
            break;
        }
        let mut w = a(&q);
        let aj = dot(&w, &q);
        basis.push(q);
        // The three-term recurrence, w ← w − α_j q_j − β_{j−1} q_{j−1}, then full
        // reorthogonalisation against the whole basis: classical Gram–Schmidt, repeated once
        // when a pass cancels most of what is left (Daniel–Gragg–Kaufman–Stewart, η = 1/√2;
        // "twice is enough").
        let local = match beta.last() {
            Some(&b) => vec![b, aj],
            None => vec![aj],
        };
        combine(&mut w, &local, &basis[j.saturating_sub(1)..], -1.0);
        alpha.push(aj);
        let mut bj = norm(&w);
        for _ in 0..2 {
            let before = bj;
            project_out(&mut w, &basis);
            bj = norm(&w);
            if bj > std::f64::consts::FRAC_1_SQRT_2 * before {
                break;
            }
        }
        scale = scale.max(aj.abs()).max(bj);
        if j + 1 == iters {
            beta.push(bj);
            break;
        }
        if let Some((k, tol)) = converged
            && estimates_converged(&alpha, &beta, bj, k, tol)
        {
            beta.push(bj);
            break;
        }
        if bj <= 1e-12 * scale.max(f64::MIN_POSITIVE) {
            beta.push(bj);
            invariant = true;
            break;
        }
        beta.push(bj);
        q = w.iter().map(|v| v / bj).collect();
    }
    Tridiagonal {
        alpha,
        beta,
        basis,
        invariant,
    }
}

/// [`lanczos`] from a given start vector (any nonzero length-`dim` vector; it is normalised),
/// ending as `until` says.
pub fn lanczos_from(
    dim: usize,
    a: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    start: Vec<f64>,
    k: usize,
    iters: usize,
    tol: f64,
    until: Until,
) -> LanczosResult {
    let converged = (until == Until::Converged).then_some((k, tol));
    let t = tridiagonalise(dim, a, start, iters, converged);
    let m = t.alpha.len();
    let (vals, vecs) = t.eig();
    let b_last = if t.invariant { 0.0 } else { t.beta[m - 1] };
    let vmax = vals.iter().fold(0.0f64, |x, v| x.max(v.abs()));
    let mut extra = 0;
    let top = vals
        .iter()
        .zip(&vecs)
        .take(k.min(m))
        .map(|(&value, y)| {
            let estimate = (b_last * y[m - 1]).abs();
            let mut u = vec![0.0; dim];
            combine(&mut u, y, &t.basis, 1.0);
            // After a stop request no more products: the run is discarded by its caller.
            let residual = if noisegeom_data::stop::requested() {
                f64::NAN
            } else {
                extra += 1;
                a(&u)
                    .iter()
                    .zip(&u)
                    .map(|(x, v)| (x - value * v).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            Ritz {
                value,
                residual,
                residual_estimate: estimate,
                converged: residual <= tol * vmax,
                vector: u,
            }
        })
        .collect();
    LanczosResult {
        top,
        smallest: vals.last().copied().unwrap_or(0.0),
        iterations: m,
        matvecs: m + extra,
        invariant_subspace: t.invariant,
        tolerance: tol,
    }
}

/// A spectral density estimate: Gaussian-quadrature nodes and weights from each run, and a
/// smoothed density on a grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Density {
    /// Per run: (node θ_j, weight τ_j = (e₁ᵀy_j)²); weights sum to 1 per run.
    pub nodes: Vec<Vec<(f64, f64)>>,
    pub grid: Vec<f64>,
    /// φ(t) = (1/runs) Σ τ_j N(t; θ_j, σ²), integrates to ≈ 1.
    pub density: Vec<f64>,
    pub sigma: f64,
    pub iterations: usize,
    pub runs: usize,
}

/// Stochastic Lanczos quadrature with Rademacher starts (Ghorbani et al. 2019; full
/// reorthogonalisation, unlike the implementations that skip it).
pub fn slq(
    dim: usize,
    a: &mut dyn FnMut(&[f64]) -> Vec<f64>,
    runs: usize,
    iters: usize,
    seed: u64,
    grid_points: usize,
) -> Density {
    let mut rng = noisegeom_data::seeded_rng(seed, "slq");
    let mut nodes = Vec::with_capacity(runs);
    let mut iterations = 0;
    for _ in 0..runs {
        if noisegeom_data::stop::requested() {
            break;
        }
        let start: Vec<f64> = (0..dim)
            .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
            .collect();
        let t = tridiagonalise(dim, a, start, iters, None);
        let m = t.alpha.len();
        iterations = iterations.max(m);
        let (vals, vecs) = t.eig();
        nodes.push(
            vals.iter()
                .zip(&vecs)
                .map(|(v, y)| (*v, y[0] * y[0]))
                .collect::<Vec<_>>(),
        );
    }
    let (lo, hi) = nodes
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), (v, _)| {
            (l.min(*v), h.max(*v))
        });
    let span = (hi - lo).max(1e-12);
    let sigma = span / 100.0;
    let (lo, hi) = (lo - 5.0 * sigma, hi + 5.0 * sigma);
    let grid: Vec<f64> = (0..grid_points)
        .map(|i| lo + (hi - lo) * i as f64 / (grid_points.max(2) - 1) as f64)
        .collect();
    let norm_c = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt() * runs.max(1) as f64);
    let density = grid
        .iter()
        .map(|t| {
            nodes
                .iter()
                .flatten()
                .map(|(v, w)| w * (-(t - v).powi(2) / (2.0 * sigma * sigma)).exp())
                .sum::<f64>()
                * norm_c
        })
        .collect();
    Density {
        nodes,
        grid,
        density,
        sigma,
        iterations,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diag(1..=50) has known eigenvalues; Lanczos must find the top ones with small residuals.
    #[test]
    fn finds_the_top_of_a_known_spectrum() {
        let d: Vec<f64> = (1..=50).map(|v| v as f64).collect();
        let mut a = |v: &[f64]| v.iter().zip(&d).map(|(x, y)| x * y).collect::<Vec<_>>();
        let r = lanczos(50, &mut a, 3, 50, 1, 1e-8);
        assert!(r.invariant_subspace || r.iterations == 50);
        for (k, p) in r.top.iter().enumerate() {
            assert!((p.value - (50 - k) as f64).abs() < 1e-9, "{}", p.value);
            assert!(p.converged);
            // Explicit residual agrees with the Lanczos one.
            let au = a(&p.vector);
            let res: f64 = au
                .iter()
                .zip(&p.vector)
                .map(|(x, u)| (x - p.value * u).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((res - p.residual).abs() < 1e-12, "{res} vs {}", p.residual);
            assert!((p.residual_estimate - p.residual).abs() < 1e-9);
        }
        assert!((r.smallest - 1.0).abs() < 1e-9);
    }

    #[test]
    fn few_iterations_are_flagged_unconverged() {
        let d: Vec<f64> = (1..=400).map(|v| (v as f64).sqrt()).collect();
        let mut a = |v: &[f64]| v.iter().zip(&d).map(|(x, y)| x * y).collect::<Vec<_>>();
        let r = lanczos(400, &mut a, 10, 12, 3, 1e-8);
        assert!(
            r.top.iter().any(|p| !p.converged),
            "12 steps cannot resolve 10 clustered eigenvalues"
        );
    }

    /// A spectrum with a gap at the top (1..=199, then 400): the run that may end early stops
    /// well before its budget with its pair converged, λ_max = 400 to the tolerance's
    /// accuracy (|θ − λ| ≤ residual²/gap for a Ritz value), and the same value as the run
    /// that takes the whole budget; without a gap it takes the whole budget and is flagged.
    #[test]
    fn a_run_ends_once_its_top_pair_has_converged() {
        let d: Vec<f64> = (1..=200)
            .map(|v| if v == 200 { 400.0 } else { v as f64 })
            .collect();
        let mut a = |v: &[f64]| v.iter().zip(&d).map(|(x, y)| x * y).collect::<Vec<_>>();
        let tol = 1e-6;
        let (start, budget) = (random_start(200, 7), 60);
        let early = lanczos_from(200, &mut a, start.clone(), 1, budget, tol, Until::Converged);
        let full = lanczos_from(200, &mut a, start, 1, budget, tol, Until::Budget);
        let (e, f) = (&early.top[0], &full.top[0]);
        assert!(early.iterations < budget, "{} steps", early.iterations);
        assert_eq!(full.iterations, budget);
        assert_eq!(early.matvecs, early.iterations + 1);
        assert!(e.converged && e.residual <= tol * 400.0, "{}", e.residual);
        assert!((e.value - 400.0).abs() <= e.residual.powi(2) / 200.0 + 1e-9);
        assert!((e.value - f.value).abs() <= e.residual + f.residual);

        let d: Vec<f64> = (1..=400).map(|v| (v as f64).sqrt()).collect();
        let mut a = |v: &[f64]| v.iter().zip(&d).map(|(x, y)| x * y).collect::<Vec<_>>();
        let r = lanczos_from(
            400,
            &mut a,
            random_start(400, 3),
            1,
            12,
            1e-8,
            Until::Converged,
        );
        assert_eq!(r.iterations, 12);
        assert!(!r.top[0].converged);
    }

    #[test]
    fn slq_weights_and_density_integrate_to_one() {
        let d: Vec<f64> = (0..200).map(|v| if v < 100 { 1.0 } else { 3.0 }).collect();
        let mut a = |v: &[f64]| v.iter().zip(&d).map(|(x, y)| x * y).collect::<Vec<_>>();
        let s = slq(200, &mut a, 4, 10, 0, 400);
        for run in &s.nodes {
            let w: f64 = run.iter().map(|(_, w)| w).sum();
            assert!((w - 1.0).abs() < 1e-10);
        }
        let dx = s.grid[1] - s.grid[0];
        let total: f64 = s.density.iter().sum::<f64>() * dx;
        assert!((total - 1.0).abs() < 1e-3, "{total}");
        // Half the mass near 1, half near 3 (Rademacher starts weight them equally).
        let below2: f64 = s
            .grid
            .iter()
            .zip(&s.density)
            .filter(|(t, _)| **t < 2.0)
            .map(|(_, p)| p * dx)
            .sum();
        assert!((below2 - 0.5).abs() < 0.1, "{below2}");
    }
}
