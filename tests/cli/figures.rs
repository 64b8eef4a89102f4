//! `noisegeom figure NAME --quick`: each figure's smoke test. The files exist, the PNG and
//! SVG are real images, every number in the results file is finite, and the numbers have
//! the shape the figure promises.

use serde_json::Value;

use crate::support::{assert_one_line_error, run, write_cifar};

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
    quick_with(name, &[])
}

/// The same with extra arguments (`--dataset`, `--data`).
fn quick_with(name: &str, extra: &[&str]) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "figure",
        name,
        "--quick",
        "--out",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
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
    crate::support::assert_provenance(&env["env"]);
    assert!(
        env["jobs"].as_array().is_some_and(|j| !j.is_empty()),
        "{env}"
    );
    assert!(doc["config"]["seed"].is_u64(), "seed recorded");
    assert_well_formed(&doc["results"], "results");
    assert_figure_documented(name, dir.path(), &doc, &env);
    (dir, doc)
}

/// Every field of the figure's results file, env file and job files is documented in
/// docs/reference.md (results per figure as `<fig>:results…`, job results as `<fig>:result…`).
fn assert_figure_documented(name: &str, dir: &std::path::Path, doc: &Value, env: &Value) {
    use crate::support::{assert_documented, field_paths};
    use std::collections::BTreeSet;
    let mut paths = BTreeSet::new();
    for (k, v) in doc.as_object().unwrap() {
        paths.insert(k.clone());
        if k == "results" {
            paths.insert(format!("{name}:results"));
            field_paths(v, &format!("{name}:results"), &mut paths);
        }
    }
    assert_documented("Figure results JSON", &paths);
    let mut paths = BTreeSet::new();
    field_paths(env, "", &mut paths);
    assert_documented("Figure env JSON", &paths);
    for job in std::fs::read_dir(dir.join("jobs")).unwrap() {
        let text = std::fs::read_to_string(job.unwrap().path()).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let v = serde_json::to_value(table).unwrap();
        let mut paths = BTreeSet::new();
        for (k, x) in v.as_object().unwrap() {
            paths.insert(k.clone());
            if k == "result" {
                field_paths(x, &format!("{name}:result"), &mut paths);
            }
        }
        assert_documented("Figure job file", &paths);
    }
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

/// The checks every part of Figure 2b or 5 must pass: k Ritz pairs per state, λ sorted and
/// positive, α_k ≥ 0, residuals reported, the trained state trained and the init state not.
fn check_spectra(doc: &Value, models: &[&str], k: usize, train_steps: u64) {
    let parts = doc["results"].as_array().unwrap();
    assert_eq!(parts.len(), 2 * models.len(), "init and trained per model");
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["model"], models[i / 2]);
        assert_eq!(p["state"], ["init", "trained"][i % 2]);
        let d = &p["g_directions"];
        let lam = d["lambda"].as_array().unwrap();
        assert_eq!(lam.len(), k, "{p}");
        assert!(lam.windows(2).all(|w| f(&w[0]) >= f(&w[1])), "λ sorted");
        assert!(f(&lam[k - 1]) > 0.0, "G is PSD and its top is positive");
        assert!(d["alpha"].as_array().unwrap().iter().all(|a| f(a) >= 0.0));
        assert_eq!(d["residual"].as_array().unwrap().len(), k);
        let converged = d["converged"].as_array().unwrap();
        let n_conv = converged.iter().filter(|c| c.as_bool().unwrap()).count();
        assert_eq!(p["converged"].as_u64().unwrap() as usize, n_conv);
        if i % 2 == 0 {
            assert_eq!(p["steps"], 0);
            assert!(p.get("test_accuracy").is_none());
        } else {
            assert_eq!(p["steps"], train_steps);
            assert!((0.0..=1.0).contains(&f(&p["test_accuracy"])));
            assert_eq!(p["params"], parts[i - 1]["params"]);
            assert_ne!(p["loss"], parts[i - 1]["loss"], "training moved θ");
        }
    }
}

#[test]
fn fig2b_quick_reuses_finished_jobs_and_resumes_training_runs() {
    let (dir, doc) = quick("fig2b");
    check_spectra(&doc, &["cnn", "fnn"], 6, 16);
    for m in ["cnn", "fnn"] {
        let run = dir.path().join("runs").join(m);
        assert!(
            run.join("metrics.jsonl").is_file(),
            "{m}: run directory kept"
        );
    }
    // A lost job file is recomputed; its training run is found finished and resumed, not
    // redone, and the results file comes out byte-identical.
    let json = dir.path().join("fig2b.json");
    let before = std::fs::read(&json).unwrap();
    std::fs::remove_file(dir.path().join("jobs").join("cnn-trained.toml")).unwrap();
    let out = run(&[
        "figure",
        "fig2b",
        "--quick",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reused 3 finished jobs"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        std::fs::read(&json).unwrap() == before,
        "the results changed"
    );
}

#[test]
fn fig5_quick_on_official_format_cifar_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path());
    let (_d, doc) = quick_with(
        "fig5",
        &[
            "--dataset",
            "cifar10",
            "--data",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(doc["config"]["data"]["source"], "cifar10");
    check_spectra(&doc, &["vgg", "resnet"], 6, 16);
    // VGG [4, 6] × 2 convs on 3×32×32 inputs, avg-pool head, 10 classes:
    // (3·9·4 + 4) + (4·9·4 + 4) + (4·9·6 + 6) + (6·9·6 + 6) + (6·10 + 10) = 882.
    assert_eq!(doc["results"][0]["params"], 882);
}

#[test]
fn fig6_quick() {
    let (dir, doc) = quick("fig6");
    let runs = doc["results"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let summary = doc["results"]["summary"].as_array().unwrap();
    // 4 epochs of 128 samples: SGD with batch 32 takes 16 steps, full-batch GD 4.
    for (r, name, steps) in [(0, "sgd_clr", 16), (1, "sgd_const", 16), (2, "gd_clr", 4)] {
        let run = &runs[r];
        assert_eq!(run["name"], name);
        assert_eq!(run["steps"], steps);
        assert_eq!(f(&run["epochs"]), 4.0);
        let probes = run["probes"].as_array().unwrap();
        assert!(probes.len() >= 3, "{name}: probes at start, phases, end");
        assert_eq!(probes[0]["step"], 0);
        assert_eq!(probes.last().unwrap()["step"], steps);
        for q in probes {
            assert!(f(&q["lambda_max_g"]) > 0.0 && f(&q["trace_g"]) >= f(&q["lambda_max_g"]));
        }
        let evals = run["evals"].as_array().unwrap();
        assert!((0.0..=1.0).contains(&f(&evals.last().unwrap()["test_accuracy"])));
        assert!(
            dir.path()
                .join("runs")
                .join(name)
                .join("summary.json")
                .is_file()
        );
    }
    for (r, s) in runs.iter().zip(summary) {
        let last = r["probes"].as_array().unwrap().last().unwrap();
        assert_eq!(s["lambda_max_g_final"], last["lambda_max_g"]);
        let late = |k: &str| f(&s[k]);
        assert!(late("lambda_max_g_late_min") <= late("lambda_max_g_late_median"));
        assert!(late("lambda_max_g_late_median") <= late("lambda_max_g_late_max"));
        assert_eq!(
            s["test_accuracy_final"],
            r["evals"].as_array().unwrap().last().unwrap()["test_accuracy"]
        );
    }
    // Every run starts from the same θ on the same probe set.
    let start = |r: usize| f(&runs[r]["probes"][0]["lambda_max_g"]);
    assert_eq!(start(0), start(1));
    assert_eq!(start(0), start(2));
}

#[test]
fn network_figures_refuse_bad_data_in_one_line() {
    let out = run(&["figure", "fig1", "--quick", "--dataset", "cifar10"]);
    assert_one_line_error(&out, &["synthetic data", "--dataset"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&[
        "figure",
        "fig2b",
        "--quick",
        "--dataset",
        "cifar10",
        "--data",
        tmp.path().join("nowhere").to_str().unwrap(),
        "--out",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["nowhere"]);
}

/// A run that diverges is a result of Figure 6, not a failure: the figure finishes, keeps the
/// run's probes up to the divergence and says where it diverged.
#[test]
fn fig6_records_a_diverged_run() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(crate::support::root().join("configs/figures/fig6.toml")).unwrap();
    let huge = r#"  { name = "gd_huge", label = "GD, η = 1e4", train = { batch_size = 128, epochs = 4, eval_every = 1, lr = { schedule = "constant", lr = 10000.0 } } },
]"#;
    let quick = text.split("[quick]").nth(1).unwrap();
    let end = quick.rfind("\n]").unwrap();
    let patched = format!(
        "{}[quick]{}\n{huge}{}",
        text.split("[quick]").next().unwrap(),
        &quick[..end],
        &quick[end + 2..]
    );
    let config = dir.path().join("fig6.toml");
    std::fs::write(&config, patched).unwrap();
    let out = run(&[
        "figure",
        "fig6",
        "--config",
        config.to_str().unwrap(),
        "--quick",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("DIVERGED at step"), "{stdout}");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("fig6.json")).unwrap()).unwrap();
    let runs = doc["results"]["runs"].as_array().unwrap();
    let huge = runs.iter().find(|r| r["name"] == "gd_huge").unwrap();
    let step = huge["diverged"]["step"].as_u64().unwrap();
    assert!((1..=4).contains(&step), "{huge}");
    assert_eq!(huge["steps"], step);
    assert_eq!(
        huge["probes"][0]["step"], 0,
        "the probes before it are kept"
    );
    let summary = doc["results"]["summary"].as_array().unwrap();
    assert_eq!(summary[3]["diverged_at_step"], step);
    assert!(runs[0]["diverged"].is_null(), "the others did not diverge");
}
