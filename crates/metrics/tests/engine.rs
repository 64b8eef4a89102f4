//! Gram, μ, spectra, Lanczos and Hutchinson against dense f64 ground truth.

mod common;

use common::*;
use noisegeom_metrics::alignment::{
    LossAlignment, exact_alignment, exact_alignment_streamed, exact_alignment_streamed_work,
    exact_spectrum, top_spectrum,
};
use noisegeom_metrics::gram::{FeatureBudget, feature_bytes_per_sample, gram, gram_tiled};
use noisegeom_metrics::hutchinson::hutchinson;
use noisegeom_metrics::lanczos::lanczos;
use noisegeom_metrics::linalg::sym_eig;
use noisegeom_metrics::{Cutoffs, GeometryError, ProbeOps};

fn trace_prod(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let n = a.len();
    (0..n)
        .map(|i| (0..n).map(|j| a[i][j] * b[j][i]).sum::<f64>())
        .sum()
}

/// The largest entry-wise error of a Gram matrix against JJᵀ from the dense Jacobian, and
/// the largest |entry| of JJᵀ.
fn gram_error(k: &noisegeom_metrics::gram::Gram, truth: &Dense) -> (f64, f64) {
    let nc = truth.j.len();
    let (mut err, mut scale) = (0.0f64, 0.0f64);
    for r in 0..nc {
        for s in 0..nc {
            let want: f64 = truth.j[r].iter().zip(&truth.j[s]).map(|(a, b)| a * b).sum();
            err = err.max((k.at(r, s) - want).abs());
            scale = scale.max(want.abs());
        }
    }
    (err, scale)
}

/// The Gram entry-wise, and μ from it and streamed, with the affine layers' products formed
/// on the host (what the CPU backends do) and by the backend's matmul (what wgpu does).
#[test]
fn gram_and_mu_match_dense() {
    for p in zoo(6) {
        let truth = dense(&p);
        for host_products in [true, false] {
            // Chunks of 4 samples paired in host tiles of 3: blocks across chunks and across
            // tiles within a chunk (sizes 3, 1 and 2) are part of the test.
            let mut ops =
                ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 4, &dev()).unwrap();
            assert!(
                ops.host_products,
                "the CPU backends form the products on the host"
            );
            ops.host_products = host_products;
            let name = format!("{} (host products: {host_products})", p.name);
            let k = gram_tiled(&ops, 4, 3, 1 << 30).unwrap();
            let (err, scale) = gram_error(&k, &truth);
            assert!(
                err <= 1e-10 * scale,
                "{name}: Gram error {err:e} (scale {scale:e})"
            );

            check_alignment(&name, &exact_alignment(&k, ops.residuals()), &truth, p.c);

            // Streamed (K never stored), features resident, in tiles of 3 across chunks of 4.
            let la = exact_alignment_streamed(&ops, 4, 3, FeatureBudget::strict(1 << 30)).unwrap();
            check_alignment(&name, &la, &truth, p.c);
        }
    }
}

/// The host forms a diagonal tile pair's products for several outputs in one GEMM (about
/// 320 rows): with c = 10 outputs and tiles of 40 and 33 samples, groups of 8 and of 9
/// outputs, so a group ends inside the outputs and the blocks read from its second GEMM's
/// rows, and from rows below the diagonal, are part of the test. Entry-wise against JJᵀ.
#[test]
fn grouped_host_products_match_dense() {
    let mut tested = 0;
    for p in zoo(40).into_iter().filter(|p| p.c == 10) {
        let truth = dense(&p);
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 40, &dev()).unwrap();
        for tile in [40, 33] {
            let k = gram_tiled(&ops, 40, tile, 1 << 30).unwrap();
            let (err, scale) = gram_error(&k, &truth);
            assert!(
                err <= 1e-10 * scale,
                "{} (tiles of {tile}): max error {err:e} against max |K| {scale:e}",
                p.name
            );
            tested += 1;
        }
    }
    assert!(tested >= 2, "the zoo has models with c = 10");
}

/// The streamed μ when the features exceed the budget: recomputed in groups of 2 samples
/// (the budget holds 7 samples' features, of 9; a group is a third of it), one group kept
/// while the others stream past it, with tiles of 1 and 2.
#[test]
fn streamed_mu_with_recomputed_groups_matches_dense() {
    for p in zoo(9) {
        let truth = dense(&p);
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 4, &dev()).unwrap();
        let max_bytes = 7 * feature_bytes_per_sample(&ops);
        let grouped = FeatureBudget {
            max_bytes,
            recompute: true,
        };
        for tile in [1, 2] {
            let la = exact_alignment_streamed(&ops, 4, tile, grouped).unwrap();
            check_alignment(&p.name, &la, &truth, p.c);
        }
        // Without recomputation the same budget is a clear error, not a slow run.
        match exact_alignment_streamed(&ops, 4, 3, FeatureBudget::strict(max_bytes)) {
            Err(GeometryError::Budget(msg)) => assert!(msg.contains("per-sample features")),
            other => panic!("{}: expected a budget error, got {other:?}", p.name),
        }
    }
}

/// The streamed μ's count of its products' operations, against the count written out for a
/// one-hidden-layer FNN (d = 3 inputs, width w = 6, c = 3 outputs, biases): per tile pair
/// of bi × bj samples, the hidden layer's signal products, and both layers' input Grams
/// with their bias columns, 2·bi·bj·(d + 1) and 2·bi·bj·(w + 1); the output layer's signal
/// products are the identity and are not formed. The hidden layer's products are symmetric
/// under o ↔ o2, so off the diagonal they are formed for o ≤ o2 only, 2·bi·bj·w·c(c+1)/2;
/// on the diagonal the outputs' rows (bi ≤ 6 each, far below the 320 rows of one host
/// GEMM) are multiplied in one GEMM, all c² output pairs, 2·bi·bj·w·c².
#[test]
fn the_streamed_mu_counts_its_products_operations() {
    let p = zoo(6)
        .into_iter()
        .find(|p| p.name == "fnn c=3")
        .expect("the zoo has a one-hidden-layer FNN with c = 3");
    let (d, w, c) = (3.0, 6.0, 3.0);
    let pairs = |diag: bool| if diag { c * c } else { c * (c + 1.0) / 2.0 };
    let per_pair = |bi: f64, bj: f64, diag| 2.0 * bi * bj * (w * pairs(diag) + d + 1.0 + w + 1.0);
    let ops = ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 6, &dev()).unwrap();
    let budget = FeatureBudget::strict(1 << 30);
    // Tiles of 3: pairs (0, 0), (0, 1), (1, 1); one tile of 6: one diagonal pair.
    let tiles3 = 2.0 * per_pair(3.0, 3.0, true) + per_pair(3.0, 3.0, false);
    for (tile, want) in [(3, tiles3), (6, per_pair(6.0, 6.0, true))] {
        let (la, work) = exact_alignment_streamed_work(&ops, 6, tile, budget).unwrap();
        assert_eq!(work.groups, 1);
        assert_eq!(work.product_flops, want, "tile {tile}");
        assert_eq!(
            la.g_fro2,
            exact_alignment_streamed(&ops, 6, tile, budget)
                .unwrap()
                .g_fro2
        );
    }
}

/// μ, μ_unc, ||G||_F² and Tr G against the dense p×p matrices, ≤ 1e-10 relative.
fn check_alignment(name: &str, la: &LossAlignment, truth: &Dense, c: usize) {
    let g_fro2: f64 = truth.g.iter().flatten().map(|v| v * v).sum();
    let tr_sg = trace_prod(&truth.sigma, &truth.g);
    let tr_mg = trace_prod(&truth.m, &truth.g);
    let two_l = 2.0 * truth.loss;
    let mu = tr_sg / (two_l * g_fro2);
    let mu_unc = tr_mg / (two_l * g_fro2);
    let got = la.mu.value().unwrap();
    assert!(
        (got - mu).abs() <= 1e-10 * mu.abs(),
        "{name} ({}): μ {got} vs {mu}",
        la.method
    );
    let got = la.mu_unc.value().unwrap();
    assert!(
        (got - mu_unc).abs() <= 1e-10 * mu_unc.abs(),
        "{name} ({}): μ_unc {got} vs {mu_unc}",
        la.method
    );
    assert!(
        (la.g_fro2 - g_fro2).abs() <= 1e-10 * g_fro2,
        "{name}: ||G||_F²"
    );
    let tr_g: f64 = (0..truth.g.len()).map(|i| truth.g[i][i]).sum();
    assert!((la.trace_g - tr_g).abs() <= 1e-10 * tr_g, "{name}: Tr G");
    assert_eq!(la.c_mu.value().unwrap(), la.mu.value().unwrap() * c as f64);
}

#[test]
fn exact_spectrum_matches_dense_eigendecomposition() {
    for p in zoo(5) {
        let truth = dense(&p);
        let np = p.theta.len();
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 5, &dev()).unwrap();
        let k = gram(&ops, 5, 1 << 30).unwrap();
        let cut = Cutoffs::new(f64::EPSILON);
        let spec = exact_spectrum(&k, ops.residuals(), &cut);
        let (vals, vecs) = sym_eig(np, |i, j| truth.g[i][j]);
        let lmax = vals[0];
        // Every eigenvalue above the cut-off, compared one to one.
        let want: Vec<f64> = vals
            .iter()
            .copied()
            .filter(|v| *v > spec.nonzero_cutoff)
            .collect();
        assert_eq!(spec.lambda.len(), want.len(), "{}: nonzero count", p.name);
        let two_l = 2.0 * truth.loss;
        for (idx, (got, w)) in spec.lambda.iter().zip(&want).enumerate() {
            assert!(
                (got - w).abs() <= 1e-10 * lmax,
                "{}: λ_{idx} {got} vs {w}",
                p.name
            );
            // α_k against u_kᵀΣ₁u_k with the dense eigenvector (well-separated eigenvalues only:
            // a near-degenerate pair has no unique eigenvector).
            if gap(&vals, idx) > 1e-6 * lmax {
                let alpha = quad(&truth.sigma, &vecs[idx]);
                let amax = spec.alpha.iter().fold(0.0f64, |m, a| m.max(a.abs()));
                assert!(
                    (spec.alpha[idx] - alpha).abs() <= 1e-8 * amax,
                    "{}: α_{idx} {} vs {alpha}",
                    p.name,
                    spec.alpha[idx]
                );
                let g = spec.g[idx].value().unwrap();
                assert!((g - alpha / (two_l * w)).abs() <= 1e-8 * (1.0 + g.abs()));
            }
        }
    }
}

/// The training probes' path: top-k of G by Lanczos on the dense K/n, against the dense
/// eigendecomposition of the p×p matrix G and u_kᵀΣ₁u_k with its eigenvectors.
#[test]
fn top_spectrum_matches_dense_top_pairs() {
    for p in zoo(5) {
        let truth = dense(&p);
        let np = p.theta.len();
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 5, &dev()).unwrap();
        let k = gram(&ops, 5, 1 << 30).unwrap();
        let cut = Cutoffs::new(f64::EPSILON);
        let (spec, run) = top_spectrum(&k, ops.residuals(), &cut, 3, k.dim(), 7);
        let (vals, vecs) = sym_eig(np, |i, j| truth.g[i][j]);
        let lmax = vals[0];
        // Single-vector Lanczos finds each distinct eigenvalue once.
        let want = distinct(&vals, 1e-9 * lmax);
        let want: Vec<f64> = want
            .into_iter()
            .filter(|v| *v > spec.nonzero_cutoff)
            .take(3)
            .collect();
        assert_eq!(
            spec.lambda.len(),
            want.len(),
            "{}: {:?} vs {want:?}",
            p.name,
            spec.lambda
        );
        for (idx, (got, w)) in spec.lambda.iter().zip(&want).enumerate() {
            assert!(
                (got - w).abs() <= 1e-9 * lmax,
                "{}: λ_{idx} {got} vs {w}",
                p.name
            );
            assert!(run.top[idx].residual <= 1e-8 * lmax, "{}: residual", p.name);
            let j = vals
                .iter()
                .position(|v| (v - w).abs() <= 1e-9 * lmax)
                .unwrap();
            if gap(&vals, j) > 1e-6 * lmax {
                let alpha = quad(&truth.sigma, &vecs[j]);
                let scale = alpha.abs().max(1e-12 * lmax);
                assert!(
                    (spec.alpha[idx] - alpha).abs() <= 1e-7 * scale.max(spec.alpha[0].abs()),
                    "{}: α_{idx} {} vs {alpha}",
                    p.name,
                    spec.alpha[idx]
                );
            }
        }
    }
}

/// Distance from `vals[idx]` to the nearest other eigenvalue.
fn gap(vals: &[f64], idx: usize) -> f64 {
    vals.iter()
        .enumerate()
        .filter(|(j, _)| *j != idx)
        .map(|(_, v)| (v - vals[idx]).abs())
        .fold(f64::INFINITY, f64::min)
}

/// uᵀAu.
fn quad(a: &[Vec<f64>], u: &[f64]) -> f64 {
    u.iter().zip(matvec(a, u)).map(|(x, y)| x * y).sum()
}

fn distinct(sorted_desc: &[f64], tol: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for &v in sorted_desc {
        if out.last().is_none_or(|l| (l - v).abs() > tol) {
            out.push(v);
        }
    }
    out
}

#[test]
fn lanczos_matches_dense_top_eigenvalues_of_g_and_h() {
    for p in zoo(6) {
        let truth = dense(&p);
        let np = p.theta.len();
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 6, &dev()).unwrap();
        let k = 3.min(np);
        let g = lanczos(np, &mut |v| ops.gv(v), k, np, 7, 1e-8);
        let (gv, _) = sym_eig(np, |i, j| truth.g[i][j]);
        // Single-vector Lanczos sees each distinct eigenvalue once (a multiple eigenvalue, as
        // in the c-output linear model where G = I_c ⊗ XᵀX/n, appears once): compare with
        // the distinct eigenvalues.
        let gv = distinct(&gv, 1e-9 * gv[0].abs());
        for (r, w) in g.top.iter().zip(&gv) {
            assert!(
                (r.value - w).abs() <= 1e-8 * gv[0].abs(),
                "{}: G {} vs {w}",
                p.name,
                r.value
            );
            assert!(r.converged, "{}: residual {}", p.name, r.residual);
        }
        let h = lanczos(np, &mut |v| ops.hv(v), k, np, 8, 1e-8);
        let (hv, _) = sym_eig(np, |i, j| truth.h[i][j]);
        let hmax = hv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let hv = distinct(&hv, 1e-9 * hmax);
        for (r, w) in h.top.iter().zip(&hv) {
            // H's ground truth is a Richardson difference (≈1e-11 accurate).
            assert!(
                (r.value - w).abs() <= 1e-8 * hmax,
                "{}: H {} vs {w}",
                p.name,
                r.value
            );
        }
        assert!(
            (h.smallest - hv[hv.len() - 1]).abs() <= 1e-8 * hmax,
            "{}: λ_min(H)",
            p.name
        );
    }
}

#[test]
fn hutchinson_is_unbiased_within_its_standard_error() {
    for p in zoo(6).into_iter().filter(|p| p.theta.len() > 10) {
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 6, &dev()).unwrap();
        let exact = exact_alignment(&gram(&ops, 6, 1 << 30).unwrap(), ops.residuals());
        let s = hutchinson(&ops, 400, 3);
        for (what, est, truth) in [
            ("Tr G", s.trace_g, exact.trace_g),
            ("||G||²", s.g_fro2, exact.g_fro2),
            ("Tr ΣG", s.trace_sigma_g, exact.trace_sigma_g),
            ("Tr MG", s.trace_m_g, exact.trace_m_g),
        ] {
            assert!(est.se > 0.0 && est.se.is_finite());
            assert!(
                (est.mean - truth).abs() <= 4.0 * est.se,
                "{}: {what} {} ± {} vs exact {truth}",
                p.name,
                est.mean,
                est.se
            );
        }
        let mu = exact.mu.value().unwrap();
        let est = s.alignment.mu.value().unwrap();
        assert!(
            (est - mu).abs() <= 4.0 * s.mu_se,
            "{}: μ {est} ± {} vs {mu}",
            p.name,
            s.mu_se
        );
    }
}

#[test]
fn zero_loss_gives_undefined_ratios_not_nan() {
    use noisegeom_metrics::{MeasureOptions, Ratio, measure};
    let p = zoo(6).into_iter().next().unwrap();
    // Targets equal to the outputs: L = 0 exactly.
    let ops0 = ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 6, &dev()).unwrap();
    let y = ops0.outputs();
    let ops = ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &y, p.n, 6, &dev()).unwrap();
    assert_eq!(ops.loss(), 0.0);
    let m = measure(
        &ops,
        &MeasureOptions {
            k: 2,
            ..MeasureOptions::default()
        },
    )
    .unwrap();
    let la = m.loss_alignment.as_ref().unwrap();
    assert!(matches!(la.mu, Ratio::Undefined { .. }), "{:?}", la.mu);
    assert!(m.directional_random.iter().all(|d| d.g.value().is_none()));
    let json = serde_json::to_string(&m).unwrap();
    // serde_json writes a NaN or an infinity as `null`: there must be none.
    assert!(
        !json.contains("null") && json.contains("\"undefined\":\"L = 0\""),
        "{json}"
    );
}

/// A problem's operators on burn-flex (f32), in chunks of `chunk` samples.
fn flex_ops(p: &Problem, chunk: usize) -> ProbeOps<burn::backend::Flex> {
    ProbeOps::new(
        p.arch.clone(),
        &p.theta,
        &p.x,
        &p.y,
        p.n,
        chunk,
        &Default::default(),
    )
    .unwrap()
}

/// The Gram on burn-flex (f32), entry-wise against the f64 dense Jacobian: its first-order
/// kernels in the tapped forward (host-patch convolutions), the convolutions' gradient rows
/// formed by one broadcast product per layer, and the products on the host (diagonal tile
/// pairs output by output, off-diagonal ones whole) and by the backend's matmul.
#[test]
fn f32_gram_matches_dense_f64() {
    for p in zoo(6) {
        let truth = dense(&p);
        for host_products in [true, false] {
            let mut ops = flex_ops(&p, 4);
            ops.host_products = host_products;
            let (err, scale) = gram_error(&gram_tiled(&ops, 4, 3, 1 << 30).unwrap(), &truth);
            // f32 products of rows of up to a few hundred entries.
            assert!(
                err <= 1e-5 * scale,
                "{} (host products: {host_products}): f32 Gram error {err:e} (scale {scale:e})",
                p.name
            );
        }
    }
}

#[test]
fn f32_cpu_backend_agrees_with_f64() {
    for p in zoo(8).into_iter().filter(|p| p.theta.len() > 20) {
        let a = ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 8, &dev()).unwrap();
        let b = flex_ops(&p, 8);
        let v = test_vector(p.theta.len(), 5);
        for (what, x, y) in [
            ("Gv", a.gv(&v), b.gv(&v)),
            ("Hv", a.hv(&v), b.hv(&v)),
            ("Σv", a.sigma_v(&v), b.sigma_v(&v)),
        ] {
            let err = rel(&y, &x);
            assert!(err < 1e-5, "{}: f32 {what} relative error {err:e}", p.name);
        }
        let mu64 = exact_alignment(&gram(&a, 8, 1 << 30).unwrap(), a.residuals())
            .mu
            .value()
            .unwrap();
        let mu32 = exact_alignment(&gram(&b, 8, 1 << 30).unwrap(), b.residuals())
            .mu
            .value()
            .unwrap();
        assert!(
            (mu32 - mu64).abs() < 1e-4 * mu64.abs(),
            "{}: μ f32 {mu32} vs f64 {mu64}",
            p.name
        );
    }
}

/// λ_max(H) in a probe, with Lanczos started from G's top eigenvector (the default) and
/// from a seeded random vector, against the dense f64 Hessian's eigenvalues:
/// - for both starts, the top Ritz value lies at or below λ_max (Ritz values interlace) and
///   within its explicit residual of some eigenvalue (Kahan's bound for symmetric H);
/// - the warm start's value lies within its residual of λ_max itself, at 4 and 8 steps, on
///   every model of the zoo (a random start at 4 steps can settle on a lower eigenvalue with
///   a small residual: it does on one of them);
/// - at 8 steps the two agree within the sum of their residuals, and the warm start's
///   residual is no larger;
/// - a run that ended before its budget did so with its pair converged (explicit residual
///   within the f64 Ritz tolerance, 1e-8 · θ).
#[test]
fn warm_started_hessian_lanczos_agrees_with_cold_and_dense() {
    use noisegeom_metrics::{TrackOptions, track};
    for p in zoo(6).into_iter().filter(|p| p.theta.len() > 12) {
        let truth = dense(&p);
        let np = p.theta.len();
        let eig = noisegeom_metrics::linalg::sym_eigvals(np, |i, j| truth.h[i][j]);
        let lam = eig.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ops =
            ProbeOps::<F64>::new(p.arch.clone(), &p.theta, &p.x, &p.y, p.n, 4, &dev()).unwrap();
        for iters in [4, 8] {
            let run = |warm_start| {
                let t = track(
                    &ops,
                    &TrackOptions {
                        k: 1,
                        iters,
                        hessian: true,
                        warm_start,
                        gram_max_bytes: 1 << 30,
                        hutchinson_samples: 8,
                        seed: 3,
                    },
                )
                .unwrap();
                let (v, r) = (t.lambda_max_h.unwrap(), t.lambda_max_h_residual.unwrap());
                let steps = t.lambda_max_h_steps.unwrap();
                assert!(steps <= iters, "{}: {steps} steps", p.name);
                assert!(
                    steps == iters || r <= 1.001e-8 * v.abs(),
                    "{}: ended after {steps} of {iters} steps at residual {r:e} (θ = {v})",
                    p.name
                );
                (v, r)
            };
            let ((warm, rw), (cold, rc)) = (run(true), run(false));
            let slack = 1e-10 * lam.abs().max(1.0);
            let name = format!(
                "{} ({iters} steps): warm {warm} ± {rw:e}, cold {cold} ± {rc:e}, dense λ_max(H) {lam}",
                p.name
            );
            for (v, r) in [(warm, rw), (cold, rc)] {
                let nearest = eig
                    .iter()
                    .map(|e| (e - v).abs())
                    .fold(f64::INFINITY, f64::min);
                assert!(v <= lam + slack && nearest <= r + slack, "{name}");
            }
            assert!(lam - warm <= rw + slack, "warm start missed λ_max: {name}");
            if iters == 8 {
                assert!((warm - cold).abs() <= rw + rc + slack, "{name}");
                assert!(rw <= rc + slack, "warm residual above the cold one: {name}");
            }
        }
    }
}
