//! docs/definitions.md §12: linear regression on Gaussian data. Finite-n μ, μ_unc, g(v) and α_k/λ_k
//! converge to their population values; each check averages the finite-n minus population
//! difference over independent draws and requires it within 3 standard errors of zero.

mod common;

use common::{F64, dev};
use noisegeom_data::Targets;
use noisegeom_data::synthetic::{Covariance, EffDim, gaussian};
use noisegeom_metrics::alignment::{directional, exact_alignment, exact_spectrum};
use noisegeom_metrics::gram::gram;
use noisegeom_metrics::{Cutoffs, Estimate, ProbeOps};
use noisegeom_models::{ModelConfig, Net, RandomInit, flatten};

struct Draw {
    ops: ProbeOps<F64>,
    spectrum: Vec<f64>,
    delta: Vec<f64>,
}

fn draw(cov: &Covariance, n: usize, seed: u64) -> Draw {
    let task = gaussian(n, cov, seed).unwrap();
    let ds = &task.dataset;
    let d = ds.input_dim();
    let cfg: ModelConfig = toml::from_str("kind = \"linear\"").unwrap();
    let arch = cfg.arch(&[d], 1, seed).unwrap();
    let net = Net::<F64>::build(
        arch.clone(),
        &mut RandomInit::new(&dev(), cfg.init_scheme(), 1000 + seed),
    )
    .unwrap();
    let theta = flatten(&net);
    let delta: Vec<f64> = theta
        .iter()
        .zip(&task.teacher)
        .map(|(w, t)| w - t)
        .collect();
    let x: Vec<f64> = ds.inputs.iter().map(|v| *v as f64).collect();
    let Targets::Regression { values, .. } = &ds.targets else {
        unreachable!()
    };
    let y: Vec<f64> = values.iter().map(|v| *v as f64).collect();
    Draw {
        ops: ProbeOps::<F64>::new(arch, &theta, &x, &y, n, n, &dev()).unwrap(),
        spectrum: task.spectrum,
        delta,
    }
}

/// δᵀS^k δ.
fn sk(s: &[f64], delta: &[f64], k: i32) -> f64 {
    s.iter().zip(delta).map(|(l, d)| l.powi(k) * d * d).sum()
}

fn within_3se(what: &str, diffs: &[f64]) {
    let e = Estimate::from_samples(diffs);
    assert!(
        e.mean.abs() <= 3.0 * e.se,
        "{what}: mean finite-n − population difference {:.5} ± {:.5} (SE) over {} draws",
        e.mean,
        e.se,
        e.samples
    );
}

fn alignment_converges(cov: Covariance, label: &str) {
    let (mut dmu, mut dmu_unc, mut dg, mut dg_unc) = (vec![], vec![], vec![], vec![]);
    for seed in 0..20 {
        let dr = draw(&cov, 4000, seed);
        let (s, dl) = (&dr.spectrum, &dr.delta);
        let tr_s2: f64 = s.iter().map(|l| l * l).sum();
        let (s1, s3) = (sk(s, dl, 1), sk(s, dl, 3));
        let la = exact_alignment(&gram(&dr.ops, 4000, 1 << 30).unwrap(), dr.ops.residuals());
        dmu.push(la.mu.value().unwrap() - (1.0 + s3 / (s1 * tr_s2)));
        dmu_unc.push(la.mu_unc.value().unwrap() - (1.0 + 2.0 * s3 / (s1 * tr_s2)));
        // g(v) along a random unit direction.
        let mut v =
            noisegeom_data::normal_vec(&mut noisegeom_data::seeded_rng(seed, "dir"), s.len(), 1.0);
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= nv);
        let vsd: f64 = v.iter().zip(s).zip(dl).map(|((a, l), d)| a * l * d).sum();
        let vsv: f64 = v.iter().zip(s).map(|(a, l)| a * a * l).sum();
        let dir = directional(&dr.ops.quad_forms(&v), 2.0 * dr.ops.loss(), 0.0);
        dg.push(dir.g.value().unwrap() - (1.0 + vsd * vsd / (s1 * vsv)));
        dg_unc.push(dir.g_unc.value().unwrap() - (1.0 + 2.0 * vsd * vsd / (s1 * vsv)));
    }
    within_3se(&format!("{label} μ"), &dmu);
    within_3se(&format!("{label} μ_unc"), &dmu_unc);
    within_3se(&format!("{label} g(v)"), &dg);
    within_3se(&format!("{label} g_unc(v)"), &dg_unc);
}

#[test]
fn isotropic_mu_is_one_plus_one_over_d() {
    // S = I_20: μ → 1 + 1/20 and μ_unc → 1 + 2/20 for every δ.
    alignment_converges(Covariance::Isotropic { dim: 20 }, "isotropic d=20");
}

#[test]
fn anisotropic_mu_and_g_match_population() {
    // S = diag(k^{-1}), k = 1..10 (d_eff = Tr S / ||S|| ≈ 2.93 reaches 2.9 at D = 10).
    let cov = Covariance::PowerLaw {
        exponent: 1.0,
        d_eff: 2.9,
        eff_dim: EffDim::Trace,
    };
    assert_eq!(cov.spectrum().len(), 10);
    alignment_converges(cov, "anisotropic diag(1/k)");
}

#[test]
fn noise_energy_along_eigendirections_matches_population() {
    // α_k/λ_k = 2L + λ_k δ_k² (centred): so g_k = 1 + λ_k δ_k² / δᵀSδ.
    let cov = Covariance::PowerLaw {
        exponent: 1.0,
        d_eff: 2.9,
        eff_dim: EffDim::Trace,
    };
    let mut diffs = vec![Vec::new(); 10];
    for seed in 0..20 {
        let dr = draw(&cov, 1000, 100 + seed);
        let (s, dl) = (&dr.spectrum, &dr.delta);
        let spec = exact_spectrum(
            &gram(&dr.ops, 1000, 1 << 30).unwrap(),
            dr.ops.residuals(),
            &Cutoffs::new(f64::EPSILON),
        );
        assert_eq!(spec.lambda.len(), 10, "rank of G is d");
        let s1 = sk(s, dl, 1);
        for k in 0..10 {
            let pop = 1.0 + s[k] * dl[k] * dl[k] / s1;
            diffs[k].push(spec.g[k].value().unwrap() - pop);
        }
    }
    for (k, d) in diffs.iter().enumerate() {
        within_3se(
            &format!("g_{k} along the eigen-direction of λ = 1/{}", k + 1),
            d,
        );
    }
}
