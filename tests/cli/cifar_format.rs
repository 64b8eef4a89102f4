use crate::support::{TINY, run, write_cifar};

#[test]
fn trains_the_cifar10_cnn_config_on_official_format_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cifar-10-batches-bin");
    write_cifar(&data);
    let out_dir = tmp.path().join("run");
    let mut args = vec![
        "train",
        "--config",
        "configs/cifar10_cnn_clr.toml",
        // The archive's top level is accepted as well as the folder of .bin files.
        "--data",
        tmp.path().to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--set",
        "data.train_size=400",
        "--set",
        "data.test_size=100",
        "--set",
        "model.channels=[4,8,8]",
    ];
    args.extend_from_slice(TINY);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("finished 6 steps") && stdout.contains("accuracy"),
        "{stdout}"
    );
    for f in [
        "config.toml",
        "env.json",
        "data.json",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let data_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("data.json")).unwrap()).unwrap();
    assert_eq!(data_json["train"]["name"], "cifar10");
    assert_eq!(data_json["train"]["synthetic"], false);
    assert_eq!(data_json["train_samples"], 400);
    assert_eq!(data_json["input_shape"], serde_json::json!([3, 32, 32]));
    // The recorded config names the folder that was read.
    let cfg = std::fs::read_to_string(out_dir.join("config.toml")).unwrap();
    assert!(cfg.contains(tmp.path().to_str().unwrap()), "{cfg}");
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["burn_version"], "0.21.0");
    assert!(env["backend"].as_str().unwrap().contains("cpu"));
}

#[test]
fn data_info_describes_cifar_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path());
    let out = run(&["data", "info", tmp.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CIFAR-10 (official binary version)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("50000 samples of shape [3, 32, 32]"),
        "{stdout}"
    );
    assert!(stdout.contains("10000 samples"), "{stdout}");
}
