use crate::support::{assert_one_line_error, run, write_cifar};

#[test]
fn missing_dataset_directory() {
    let out = run(&[
        "train",
        "--config",
        "configs/cifar10_cnn.toml",
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
        "configs/cifar10_cnn.toml",
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
        "configs/cifar10_cnn.toml",
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
