use crate::support::{assert_one_line_error, run, write_cifar};

#[test]
fn missing_dataset_directory() {
    let out = run(&[
        "train",
        "--config",
        "configs/cifar10_cnn_clr.toml",
        "--data",
        "/nonexistent/cifar",
    ]);
    assert_one_line_error(&out, &["/nonexistent/cifar", "does not exist", "--data"]);
}

#[test]
fn truncated_and_mislabelled_cifar_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path());
    let f = tmp.path().join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let dir = tmp.path().to_str().unwrap();
    let out = run(&[
        "train",
        "--config",
        "configs/cifar10_cnn_clr.toml",
        "--data",
        dir,
    ]);
    assert_one_line_error(&out, &["data_batch_3.bin", "30730000", "truncated"]);

    let mut bytes = bytes;
    bytes[3073 * 17] = 12; // the label byte of record 17
    std::fs::write(&f, &bytes).unwrap();
    let out = run(&[
        "train",
        "--config",
        "configs/cifar10_cnn_clr.toml",
        "--data",
        dir,
    ]);
    assert_one_line_error(&out, &["data_batch_3.bin", "record 17", "label byte 12"]);
}

#[test]
fn unknown_config_key_and_negative_learning_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(crate::support::root().join("configs/quickstart.toml")).unwrap();
    let p = tmp.path().join("typo.toml");
    std::fs::write(
        &p,
        text.replace("batch_size = 64", "batch_size = 64\nmomentun = 0.9"),
    )
    .unwrap();
    let out = run(&["train", "--config", p.to_str().unwrap()]);
    assert_one_line_error(&out, &["typo.toml:", "unknown field `momentun`"]);

    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "train.lr.min=-0.01",
    ]);
    assert_one_line_error(&out, &["train.lr.min = -0.01", "positive"]);
}

#[test]
fn batch_larger_than_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "data.n_train=50",
        "--set",
        "train.batch_size=64",
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert_one_line_error(
        &out,
        &["train.batch_size", "64 exceeds the 50 training samples"],
    );
}

#[test]
fn resume_of_a_folder_that_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["train", "--resume", tmp.path().to_str().unwrap()]);
    assert_one_line_error(&out, &["not a noisegeom run directory"]);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_without_an_adapter() {
    // Point the Vulkan loader at no driver at all, as on a machine without a GPU driver.
    let out = crate::support::noisegeom()
        .args([
            "train",
            "--config",
            "configs/quickstart.toml",
            "--backend",
            "wgpu",
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env("WGPU_BACKEND", "vulkan")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["no GPU adapter", "--backend cpu"]);
}

#[test]
fn wgpu_in_f64_is_refused() {
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--backend",
        "wgpu",
        "--precision",
        "f64",
    ]);
    assert_one_line_error(&out, &["f32 only"]);
}

/// A NaN or infinite loss stops the run with one line naming the step and the LR, keeps
/// the last good checkpoint, logs a `diverged` event and exits nonzero.
#[test]
fn divergence_stops_with_the_step_and_the_lr() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--out",
        dir.to_str().unwrap(),
        "--set",
        "data.n_train=64",
        "--set",
        "data.n_test=16",
        "--set",
        "data.image_size=8",
        "--set",
        "model={kind = \"fnn\", hidden = [16], activation = \"relu\"}",
        "--set",
        "probe.enabled=false",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.steps=50",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.lr={schedule = \"constant\", lr = 1e30}",
    ]);
    assert_one_line_error(
        &out,
        &[
            "diverged at step",
            "lr = 1000000000000000000000000000000",
            "last good checkpoint",
            "lower the learning rate",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ckpt = stderr
        .split("the last good checkpoint is ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("names the checkpoint");
    assert!(std::path::Path::new(ckpt).is_file(), "{ckpt} kept");
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("\"kind\":\"diverged\""),
        "{log}"
    );
}

#[test]
fn unknown_probe_key_is_refused() {
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "probe.sise=64",
    ]);
    assert_one_line_error(&out, &["unknown field `sise`", "lanczos_iters"]);
}

/// Every size is checked against the problem before any work (issue: a probe of 100000
/// samples on a 5000-sample training set ran for ten minutes, growing, until killed).
#[test]
fn sizes_out_of_range_fail_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "probe.size=100000",
        "--set",
        "train.steps=1",
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["probe.size", "100000", "5000 samples"]);
    let out = run(&[
        "train",
        "--config",
        "configs/quickstart.toml",
        "--set",
        "probe.lanczos_iters=1000000",
        "--set",
        "train.steps=1",
        "--out",
        tmp.path().join("s").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["probe.k, probe.lanczos_iters", "at most p = "]);
    let measure = |extra: &[&str]| {
        let mut args = vec![
            "measure",
            "--config",
            "configs/quickstart.toml",
            "--at-init",
            "--set",
            "data.n_train=200",
            "--set",
            "data.n_test=10",
            "--out",
        ];
        let file = tmp.path().join("m.json");
        args.push(file.to_str().unwrap());
        args.extend(extra);
        let out = run(&args);
        assert!(!file.exists(), "no results file after an error");
        out
    };
    let out = measure(&["--probe-size", "16", "--k", "0"]);
    assert_one_line_error(&out, &["--k 0", "at least one eigenpair"]);
    let out = measure(&["--probe-size", "201"]);
    assert_one_line_error(&out, &["--probe-size 201", "200 training samples"]);
    let out = measure(&["--probe-size", "8", "--lanczos-iters", "100000000"]);
    assert_one_line_error(&out, &["--lanczos-iters 100000000", "at most p = "]);
    let out = measure(&["--probe-size", "16", "--chunk", "0"]);
    assert_one_line_error(&out, &["--chunk 0"]);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "the refusals took {:?}",
        t0.elapsed()
    );
}

/// A k above G's rank bound asks for the whole spectrum: clamped, said on one line and in
/// the results file (it used to run until killed, building a 155 GB Lanczos basis).
#[test]
fn k_above_the_rank_of_g_is_clamped_and_said() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.json");
    let t0 = std::time::Instant::now();
    let out = crate::support::noisegeom()
        .args([
            "measure",
            "--config",
            "configs/quickstart.toml",
            "--at-init",
            "--set",
            "data.n_train=200",
            "--set",
            "data.n_test=10",
            "--set",
            "model.channels=[4,8,8]",
            "--probe-size",
            "8",
            "--k",
            "100000",
            "--what",
            "spectrum",
            "--no-hessian",
            "--out",
            file.to_str().unwrap(),
        ])
        .env("NOISEGEOM_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--k 100000 exceeds G's rank bound") && stderr.contains("= 80"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["options"]["k"], 80);
    assert!(doc["clamped"][0].as_str().unwrap().contains("top 80"));
    let top = doc["measurement"]["top_g"]["lanczos"]["top"]
        .as_array()
        .unwrap();
    assert_eq!(top.len(), 80);
    assert!(t0.elapsed() < std::time::Duration::from_secs(120));
}

/// The settings of a tiny run: an FNN on 8×8 synthetic images, 10 steps, a checkpoint every 5
/// (about 420 KB each).
const TINY_FNN: [&str; 6] = [
    "model={kind = \"fnn\", hidden = [256], activation = \"relu\"}",
    "probe.enabled=false",
    "train.batch_size=16",
    "train.steps=10",
    "train.log_every=2",
    "train.checkpoint_every=5",
];

/// A tiny run ([`TINY_FNN`]) in `dir`.
fn tiny_run(dir: &std::path::Path) -> std::process::Output {
    let args = crate::support::tiny_train(dir, &TINY_FNN);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Damaged run state is named, with what to do: a truncated or edited `metrics.jsonl` no
/// longer matches the checkpoint; a checkpoint whose checksum fails is skipped, with a
/// warning, for the newest intact one.
#[test]
fn damaged_run_state_is_named_and_resume_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let out = tiny_run(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log_path = dir.join("metrics.jsonl");
    let log = std::fs::read(&log_path).unwrap();
    let resume = || run(&["train", "--resume", dir.to_str().unwrap()]);

    std::fs::write(&log_path, &log[..log.len() / 3]).unwrap();
    assert_one_line_error(
        &resume(),
        &[
            "metrics.jsonl",
            "step-0000000010.ckpt",
            "truncated",
            "restore the log",
        ],
    );

    let mut edited = log.clone();
    let at = edited.iter().position(|&b| b == b'0').unwrap();
    edited[at] = b'9';
    std::fs::write(&log_path, &edited).unwrap();
    assert_one_line_error(&resume(), &["metrics.jsonl", "edited", "start afresh"]);

    // The log as it was; the newest checkpoint damaged: the run continues from step 5.
    std::fs::write(&log_path, &log).unwrap();
    let newest = dir.join("checkpoints/step-0000000010.ckpt");
    let mut ck = std::fs::read(&newest).unwrap();
    let mid = ck.len() / 2;
    ck[mid] ^= 0x10;
    std::fs::write(&newest, &ck).unwrap();
    let out = resume();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("step-0000000010.ckpt is damaged (checksum mismatch)")
            && stderr.contains("trying an older checkpoint"),
        "{stderr}"
    );
    // Resumed at step 5 and trained to 10: the same log as the uninterrupted run.
    assert_eq!(std::fs::read(&log_path).unwrap(), log);
}

/// An output folder that cannot be created, and a file-size limit hit mid-run (a full disk
/// as the process sees it), each end in one line naming the file; no temporary file is left.
#[test]
fn unwritable_output_and_a_file_size_limit_are_one_line() {
    let out = tiny_run(std::path::Path::new("/proc/noisegeom-test/run"));
    assert_one_line_error(&out, &["cannot write /proc/noisegeom-test/run"]);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    // `ulimit -f 64`: files of at most 64 KiB; a checkpoint of this net is about 420 KB.
    let quoted: Vec<String> = crate::support::tiny_train(&dir, &TINY_FNN)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let script = format!("ulimit -f 64 && exec \"$0\" {}", quoted.join(" "));
    let out = std::process::Command::new("bash")
        .args(["-c", &script, env!("CARGO_BIN_EXE_noisegeom")])
        .current_dir(crate::support::root())
        .env("NOISEGEOM_LOG", "warn")
        .output()
        .unwrap();
    assert_one_line_error(&out, &["step-0000000005.ckpt", "File too large"]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
