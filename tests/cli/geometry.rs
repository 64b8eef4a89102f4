use crate::support::run;

/// A tiny FNN on the synthetic images, measured at initialisation.
fn tiny(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--config",
        "configs/quickstart.toml",
        "--at-init",
        "--set",
        "data.n_train=64",
        "--set",
        "data.n_test=8",
        "--set",
        "data.image_size=8",
        "--set",
        "model={kind = \"fnn\", hidden = [8], activation = \"tanh\"}",
        "--probe-size",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn measure_json(dir: &std::path::Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let out = dir.join(name);
    let mut args = vec!["measure".to_string()];
    args.extend(tiny(extra));
    args.extend([
        "--k".into(),
        "3".into(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = run(&args);
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(stdout.contains("μ = "), "{stdout}");
    if !extra.contains(&"--what") {
        assert!(stdout.contains("top 3 eigen-directions of G"), "{stdout}");
    }
    crate::support::assert_measure_documented(&out);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn measure_writes_reproducible_results_with_cutoffs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = measure_json(tmp.path(), "a.json", &[]);
    let b = measure_json(tmp.path(), "b.json", &[]);
    let strip = |v: &serde_json::Value| {
        let mut m = v["measurement"].clone();
        m.as_object_mut().unwrap().remove("seconds");
        m
    };
    assert_eq!(strip(&a), strip(&b), "same seed, same numbers");
    // Every part of the results file at once (its fields are checked against the reference).
    measure_json(
        tmp.path(),
        "all.json",
        &["--what", "mu,directional,spectrum,density,outputs"],
    );
    let m = &a["measurement"];
    assert!(m["loss_alignment"]["mu"].as_f64().unwrap() > 0.0);
    assert_eq!(m["loss_alignment"]["method"], "exact (Gram)");
    assert_eq!(m["top_g"]["lanczos"]["top"].as_array().unwrap().len(), 3);
    assert!(
        m["top_g"]["lanczos"]["top"][0]["residual"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(m["cutoffs"]["ritz_tolerance"].as_f64().unwrap() > 0.0);
    assert_eq!(a["probe"]["size"], 20);
    assert_eq!(a["dataset"]["synthetic"], true);
    // The stochastic path on the same problem agrees with the exact one within its error.
    let s = measure_json(
        tmp.path(),
        "s.json",
        &["--method", "stochastic", "--hutchinson-samples", "200"],
    );
    let (mu, est, se) = (
        m["loss_alignment"]["mu"].as_f64().unwrap(),
        s["measurement"]["loss_alignment"]["mu"].as_f64().unwrap(),
        s["measurement"]["stochastic"]["mu_se"].as_f64().unwrap(),
    );
    assert!(
        (mu - est).abs() <= 4.0 * se,
        "exact {mu} vs stochastic {est} ± {se}"
    );
}

#[test]
fn export_holds_pytorch_layouts_that_reproduce_the_loss() {
    use safetensors::SafeTensors;
    let tmp = tempfile::tempdir().unwrap();
    let m = measure_json(tmp.path(), "m.json", &["--what", "mu"]);
    let loss = m["measurement"]["loss"].as_f64().unwrap();
    let file = tmp.path().join("x.safetensors");
    let mut args = vec!["export".to_string()];
    args.extend(tiny(&["--out", file.to_str().unwrap()]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = run(&args);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // θ at initialisation is not f32-exact, so it is written as f64; the probe set is f32.
    let get = |name: &str| -> (Vec<usize>, Vec<f64>) {
        let t = st.tensor(name).unwrap();
        let v = match t.dtype() {
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
        };
        (t.shape().to_vec(), v)
    };
    // Modules in torch.nn.Sequential order: flatten (0), linear (1), tanh (2), linear (3).
    let (s1w, w1) = get("1.weight");
    let (_, b1) = get("1.bias");
    let (s3w, w2) = get("3.weight");
    let (_, b2) = get("3.bias");
    let (xs, x) = get("probe.x");
    let (_, y) = get("probe.y");
    assert_eq!(s1w, vec![8, 192], "torch.nn.Linear layout [out, in]");
    assert_eq!(s3w, vec![10, 8]);
    assert_eq!(xs, vec![20, 3, 8, 8], "NCHW");
    // f = W2 tanh(W1 x + b1) + b2, by hand, in f64.
    let mut sq = 0.0;
    for i in 0..20 {
        let xi = &x[i * 192..(i + 1) * 192];
        let h: Vec<f64> = (0..8)
            .map(|o| {
                let z: f64 = (0..192).map(|k| w1[o * 192 + k] * xi[k]).sum::<f64>() + b1[o];
                z.tanh()
            })
            .collect();
        for o in 0..10 {
            let f: f64 = (0..8).map(|k| w2[o * 8 + k] * h[k]).sum::<f64>() + b2[o];
            sq += (f - y[i * 10 + o]).powi(2);
        }
    }
    let by_hand = sq / 40.0;
    assert!(
        (by_hand - loss).abs() <= 1e-5 * loss,
        "loss from the export {by_hand} vs measured {loss}"
    );
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert!(meta.contains_key("noisegeom_arch") && meta["layout"].contains("[out, in]"));
}

/// `noisegeom plot` on a tiny run with probes: PNG + SVG and one CSV per event kind, with
/// the probe columns present and one row per probe event.
#[test]
fn plot_draws_runs_and_writes_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, seed) in [(&a, "0"), (&b, "1")] {
        let out = run(&[
            "train",
            "--config",
            "configs/quickstart.toml",
            "--out",
            dir.to_str().unwrap(),
            "--seed",
            seed,
            "--set",
            "data.n_train=64",
            "--set",
            "data.n_test=16",
            "--set",
            "data.image_size=8",
            "--set",
            "model={kind = \"fnn\", hidden = [16], activation = \"tanh\"}",
            "--set",
            "train.batch_size=16",
            "--set",
            "train.steps=12",
            "--set",
            "train.log_every=1",
            "--set",
            "train.eval_every=4",
            "--set",
            "train.lr.period=8",
            "--set",
            "probe.size=32",
            "--set",
            "probe.k=3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // One run: into RUN/plots.
    let out = run(&["plot", a.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "a.png",
        "a.svg",
        "a-steps.csv",
        "a-evals.csv",
        "a-probes.csv",
    ] {
        assert!(a.join("plots").join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(a.join("plots/a-probes.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for col in [
        "step",
        "mu",
        "lambda_max_g",
        "lambda_max_h",
        "trace_g",
        "g_fro",
        "g_k_1",
    ] {
        assert!(header.contains(&col), "{col} in {header:?}");
    }
    // Probes at 0, at every half-period (4, 8) and at the end (12).
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    let mu_col = header.iter().position(|h| *h == "mu").unwrap();
    for row in csv.lines().skip(1) {
        let mu: f64 = row.split(',').nth(mu_col).unwrap().parse().unwrap();
        assert!(mu.is_finite() && mu > 0.0, "{row}");
    }
    // Two runs overlaid.
    let out_dir = tmp.path().join("both");
    let out = run(&[
        "plot",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(out_dir.join("compare.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    assert!(out_dir.join("b-probes.csv").is_file());
}

/// The up-front memory estimate against the measured peak (VmHWM) on three measurements whose
/// peaks come from different parts: the Gram with K stored (a CNN), the Lanczos basis (an FNN
/// with p ≈ 1.8·10⁶) and Hutchinson draws. Each estimate is within 2× of the peak, either way.
#[test]
fn the_memory_estimate_is_within_2x_of_the_measured_peak() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (
            "gram",
            &[
                "--set",
                "data.n_train=128",
                "--set",
                "data.n_test=8",
                "--probe-size",
                "128",
                "--what",
                "mu,spectrum",
                "--k",
                "2",
                "--lanczos-iters",
                "6",
                "--no-hessian",
            ],
        ),
        (
            "lanczos",
            &[
                "--set",
                "data.n_train=64",
                "--set",
                "data.n_test=8",
                "--set",
                "model={kind = \"fnn\", hidden = [512, 512], activation = \"relu\"}",
                "--probe-size",
                "32",
                "--what",
                "spectrum",
                "--k",
                "20",
            ],
        ),
        (
            "hutchinson",
            &[
                "--set",
                "data.n_train=256",
                "--set",
                "data.n_test=8",
                "--probe-size",
                "256",
                "--what",
                "mu",
                "--method",
                "stochastic",
                "--hutchinson-samples",
                "8",
            ],
        ),
    ];
    for (name, extra) in cases {
        let file = tmp.path().join(format!("{name}.json"));
        let mut args = vec![
            "measure",
            "--config",
            "configs/quickstart.toml",
            "--at-init",
            "--out",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        crate::support::assert_measure_documented(&file);
        let r = &v["resources"];
        let estimate = r["estimate"]["peak_bytes"].as_f64().unwrap();
        let peak = r["measured_peak_bytes"].as_f64().unwrap();
        let phase = r["estimate"]["peak_phase"].as_str().unwrap();
        assert!(
            (0.5..=2.0).contains(&(peak / estimate)),
            "{name}: estimated {estimate} bytes ({phase}), measured peak {peak}"
        );
    }
}

/// A measurement whose estimate exceeds `--max-memory` is refused before it starts, with the
/// estimate and what would make it fit.
#[test]
fn a_measurement_over_the_memory_limit_is_refused_at_once() {
    let mut args = vec!["measure".to_string()];
    args.extend(tiny(&["--max-memory", "0.001"]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = run(&args);
    crate::support::assert_one_line_error(
        &out,
        &[
            "estimated peak memory",
            "--max-memory",
            "--method stochastic",
            "--probe-size",
        ],
    );
    assert!(started.elapsed().as_secs() < 30, "refused before the work");
}

/// A training run with probes estimates its peak before the first step and records it in
/// `summary.json` beside the measured peak: within 2× either way, whether the training step
/// or the probe's Gram dominates.
#[test]
fn a_training_runs_memory_estimate_is_within_2x_of_its_peak() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 2] = [
        (
            "training step",
            &[
                "--set",
                "data.n_train=4096",
                "--set",
                "train.batch_size=2048",
                "--set",
                "probe.size=16",
            ],
        ),
        (
            "Gram",
            &["--set", "data.n_train=512", "--set", "probe.size=128"],
        ),
    ];
    for (name, extra) in cases {
        let dir = tmp.path().join(name.replace(' ', "-"));
        let mut args = vec![
            "train",
            "--config",
            "configs/quickstart.toml",
            "--set",
            "train.steps=2",
            "--set",
            "data.n_test=64",
            "--out",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        crate::support::assert_run_documented(&dir);
        let r = &s["resources"];
        let estimate = r["estimate"]["peak_bytes"].as_f64().unwrap();
        let peak = r["measured_peak_bytes"].as_f64().unwrap();
        let phase = r["estimate"]["peak_phase"].as_str().unwrap();
        assert!(
            (0.5..=2.0).contains(&(peak / estimate)),
            "{name}: estimated {estimate} bytes ({phase}), measured peak {peak}"
        );
        assert!(
            phase.starts_with(name),
            "{name}: the estimate's largest phase is {phase}"
        );
    }
}

/// A training run whose estimate exceeds `--max-memory` is refused before its first step,
/// naming the keys that would make it fit, and leaves no log or checkpoint.
#[test]
fn a_training_run_over_the_memory_limit_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args = crate::support::tiny_train(&dir, &[]);
    args.extend(["--max-memory".into(), "0.001".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = run(&args);
    crate::support::assert_one_line_error(
        &out,
        &["estimated peak memory", "--max-memory", "probe.size"],
    );
    assert!(started.elapsed().as_secs() < 30, "refused before the work");
    // Nothing of a run was started: the same command with more memory may use the folder.
    assert!(!dir.join("metrics.jsonl").exists());
}
