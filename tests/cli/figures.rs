//! `noisegeom figure NAME --quick`: each figure's smoke test. The files exist, the PNG and
//! SVG are real images, every number in the results file is finite, and the numbers have
//! the shape the figure promises.

use serde_json::Value;

use crate::support::run;

/// Keys whose value may be null: optional by design (a model without a width, a run that
/// did not diverge, no GD run that stayed finite).
const MAY_BE_NULL: &[&str] = &["width", "diverged_at", "gd_best"];

/// Every number finite (JSON cannot hold NaN, which serde_json would write as null), and
/// no null outside [`MAY_BE_NULL`].
fn assert_well_formed(v: &Value, path: &str) {
    match v {
        Value::Null => {
            let key = path.rsplit('.').next().unwrap_or("");
            assert!(MAY_BE_NULL.contains(&key), "null at {path}");
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            assert!(x.is_finite(), "{path} = {x}");
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| assert_well_formed(x, &format!("{path}[{i}]"))),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| assert_well_formed(x, &format!("{path}.{k}"))),
        _ => {}
    }
}

/// Runs `figure NAME --quick` into a fresh folder and returns the results document.
fn quick(name: &str) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "figure",
        name,
        "--quick",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{name}.png")), "{stdout}");
    let png = std::fs::read(dir.path().join(format!("{name}.png"))).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{name}.png"
    );
    let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{name}.svg");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.contains("partial") || f.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(doc["figure"], name);
    assert_eq!(doc["quick"], true);
    let env: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("{name}.env.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        env["env"]["git_revision"].is_string(),
        "provenance: {}",
        env["env"]
    );
    assert!(
        env["jobs"].as_array().is_some_and(|j| !j.is_empty()),
        "{env}"
    );
    assert!(doc["config"]["seed"].is_u64(), "seed recorded");
    assert_well_formed(&doc["results"], "results");
    (dir, doc)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn fig1_quick() {
    let (_d, doc) = quick("fig1");
    let settings = doc["results"]["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2, "isotropic and anisotropic");
    for s in settings {
        let curves = s["curves"].as_array().unwrap();
        assert_eq!(curves.len(), 7, "every model family");
        for c in curves {
            for p in c["points"].as_array().unwrap() {
                let runs = p["mu"].as_array().unwrap().len()
                    + p["undefined_runs"].as_u64().unwrap() as usize;
                assert_eq!(runs, 3, "quick runs 3 per point");
                let mu = f(&p["mu_mean"]);
                assert!(mu > 0.0 && p["params"].as_u64().unwrap() > 0, "{p}");
            }
        }
    }
}

#[test]
fn fig2a_quick() {
    let (_d, doc) = quick("fig2a");
    let cases = doc["results"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "2 data settings × 2 sample sizes");
    for c in cases {
        let n = c["n"].as_u64().unwrap() as usize;
        let (lam, alpha, g) = (
            c["lambda"].as_array().unwrap(),
            c["alpha"].as_array().unwrap(),
            c["g"].as_array().unwrap(),
        );
        // Linear regression with d > n: G has exactly n nonzero eigenvalues.
        assert_eq!(lam.len() + c["dropped"].as_u64().unwrap() as usize, n);
        assert_eq!(alpha.len(), lam.len());
        assert_eq!(g.len(), lam.len());
        assert!(lam.windows(2).all(|w| f(&w[0]) >= f(&w[1])), "λ sorted");
        assert!(alpha.iter().all(|a| f(a) >= 0.0), "α_k = u_kᵀΣu_k ≥ 0");
    }
}

#[test]
fn fig3_quick() {
    let (_d, doc) = quick("fig3");
    let r = &doc["results"];
    for m in ["sgd", "gd"] {
        let e = &r[m];
        let share: f64 = e["energy_share"].as_array().unwrap().iter().map(f).sum();
        if e["escaped"].as_u64().unwrap() > 0 {
            assert!(
                (share - 1.0).abs() < 1e-9,
                "{m}: energy shares sum to {share}"
            );
        }
        let o = f(&e["outside_top_mean"]);
        assert!((0.0..=1.0).contains(&o), "{m}: {o}");
    }
}

#[test]
fn fig4_quick() {
    let (_d, doc) = quick("fig4");
    let r = &doc["results"];
    let flattest = f(&r["flattest_possible"]);
    for run in r["sgd"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r["gd"].as_array().unwrap())
    {
        if run["diverged_at"].is_null() {
            // λ_max(G) = m₂(u² + v²) ≥ 2m₂|uv|, and near the minima uv ≈ c.
            assert!(f(&run["final_sharpness"]) > 0.5 * flattest, "{run}");
        }
    }
}
