//! Every command README.md and docs/guide.md show is run, in document order, at quick sizes:
//! a renamed flag, a moved config or a command that no longer works fails here.
//!
//! The commands run in a scratch folder that links `configs/` and `scripts/`, so what they
//! write (run folders, figures, plots) stays out of the repository. Their sizes are
//! shrunk, never their flags: `train` gets tiny data and step counts through `--set`, the
//! figures and sweeps `--quick`, `measure` and `export` a small probe set. The dataset
//! paths the docs leave to the user (`DIR`, `/data/cifar-10-batches-bin`) point at files
//! written in the official CIFAR-10 format, and `RUN_A RUN_B` at two runs made earlier in the
//! same order. The worked PyTorch example (`scripts/torch_fashion_mnist.py`) runs on 512
//! training samples when torch is importable. The other commands that are not `noisegeom` are
//! run by the tests named in [`RUN_ELSEWHERE`], or say why not; an unknown one fails.

use std::path::Path;

#[path = "../../crates/cli/src/doc_commands.rs"]
mod doc_commands;

use crate::support::{DEBIAN_FASHION_MNIST, has_torch, noisegeom, root, skipped, write_cifar};
use doc_commands::{documented_commands, simple_commands};

/// Commands that are not `noisegeom`, and where they are run instead.
const RUN_ELSEWHERE: &[(&str, &str)] = &[
    ("cargo test", "CI's test command itself (.ci/run)"),
    (
        "python3 scripts/from_torch.py",
        "byom::a_pytorch_model_measures_like_pytorch_in_f64 (with the test's own model)",
    ),
    (
        "scripts/slurm/submit.sh",
        "sweep::submit_script_asks_for_an_array_and_a_dependent_merge (stand-in sbatch)",
    ),
    (
        "scripts/reproduce_synthetic.sh",
        "not run: a full-size regeneration of the committed results (hours); its figures run at --quick here",
    ),
    (
        "scripts/reproduce_networks.sh",
        "not run: a full-size regeneration of the committed results (days); its figures run at --quick here",
    ),
];

/// `--set` overrides that make any training config run in seconds.
const TRAIN_QUICK: &[&str] = &[
    "train.steps=4",
    "train.batch_size=8",
    "train.eval_every=2",
    "train.log_every=1",
    "train.eval_batch=64",
    "data.train_size=256",
    "data.test_size=64",
    "probe.size=8",
    "probe.k=2",
    "probe.lanczos_iters=4",
];

/// The words of `cmd` with a flag's value replaced, or the flag and value added.
fn set_flag(words: &mut Vec<String>, flag: &str, value: &str) {
    match words.iter().position(|w| w == flag) {
        Some(i) => words[i + 1] = value.to_string(),
        None => words.extend([flag.to_string(), value.to_string()]),
    }
}

/// The quick form of a documented `noisegeom` command (its words after `noisegeom`).
fn quick(cmd: &str, cifar: &Path) -> Vec<String> {
    let cifar = cifar.to_str().expect("a UTF-8 path");
    let mut words: Vec<String> = cmd
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
        .map(|w| match w {
            "DIR" | "/data/cifar-10-batches-bin" => cifar.to_string(),
            "RUN_A" => "results/runs/quickstart".to_string(),
            "RUN_B" => "results/runs/fashion_mnist_cnn_clr".to_string(),
            w => w.to_string(),
        })
        .collect();
    let sub: Vec<&str> = words.iter().take(2).map(String::as_str).collect();
    match sub.as_slice() {
        ["train", ..] => {
            for s in TRAIN_QUICK {
                words.extend(["--set".to_string(), s.to_string()]);
            }
        }
        ["figure", ..] | ["sweep", "plan" | "run" | "merge"]
            if !words.iter().any(|w| w == "--quick") =>
        {
            words.push("--quick".into());
        }
        ["measure", ..] => {
            if !words.iter().any(|w| w == "--probe" || w == "--probe-x") {
                set_flag(&mut words, "--probe-size", "8");
            }
            set_flag(&mut words, "--k", "2");
            set_flag(&mut words, "--lanczos-iters", "6");
        }
        ["export", ..] => set_flag(&mut words, "--probe-size", "8"),
        _ => {}
    }
    words
}

#[test]
fn every_documented_command_runs() {
    let scratch = tempfile::tempdir().unwrap();
    let w = scratch.path();
    for dir in ["configs", "scripts"] {
        std::os::unix::fs::symlink(root().join(dir), w.join(dir)).unwrap();
    }
    let cifar = w.join("cifar");
    write_cifar(&cifar);
    // The run `measure --run results/runs/quickstart` reads: the quickstart, at quick sizes.
    let mut setup: Vec<String> = ["train", "--config", "configs/quickstart.toml", "--out"]
        .map(String::from)
        .to_vec();
    setup.push("results/runs/quickstart".into());
    for s in TRAIN_QUICK {
        setup.extend(["--set".to_string(), s.to_string()]);
    }
    let wgpu = String::from_utf8_lossy(
        &noisegeom()
            .arg("backends")
            .output()
            .expect("binary runs")
            .stdout,
    )
    .contains("wgpu: adapter");
    let mut ran = 0;
    for file in ["README.md", "docs/guide.md"] {
        for line in documented_commands(file) {
            for cmd in simple_commands(&line) {
                if cmd.starts_with("python3 scripts/torch_fashion_mnist.py") {
                    if !has_torch() || !Path::new(DEBIAN_FASHION_MNIST).is_dir() {
                        skipped(
                            "every_documented_command_runs",
                            &format!("`{cmd}`: needs torch and the Debian Fashion-MNIST files"),
                        );
                        continue;
                    }
                    let out = std::process::Command::new("python3")
                        .arg(root().join("scripts/torch_fashion_mnist.py"))
                        .args([
                            "--out",
                            "torch-example",
                            "--train-size",
                            "512",
                            "--probe",
                            "16",
                        ])
                        .arg("--noisegeom")
                        .arg(env!("CARGO_BIN_EXE_noisegeom"))
                        .current_dir(w)
                        .output()
                        .unwrap();
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    assert!(
                        out.status.success() && stdout.contains("μ ="),
                        "{file}: `{cmd}` failed: {stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    ran += 1;
                    continue;
                }
                if !cmd.starts_with("noisegeom ") {
                    let Some(_) = RUN_ELSEWHERE.iter().find(|(p, _)| cmd.starts_with(p)) else {
                        panic!(
                            "{file}: `{cmd}` is neither `noisegeom` nor run elsewhere (RUN_ELSEWHERE)"
                        )
                    };
                    continue;
                }
                let words = quick(&cmd, &cifar);
                let fashion = words.iter().any(|w| w.contains("fashion"))
                    && !words.iter().any(|w| w == "--data");
                if fashion && !Path::new(DEBIAN_FASHION_MNIST).is_dir() {
                    skipped(
                        "every_documented_command_runs",
                        &format!("`{cmd}`: apt-get install dataset-fashion-mnist to run it"),
                    );
                    continue;
                }
                if words.iter().any(|w| w == "wgpu") && !wgpu {
                    skipped(
                        "every_documented_command_runs",
                        &format!("`{cmd}`: no wgpu adapter"),
                    );
                    continue;
                }
                if words.iter().any(|w| w == "--run") && !w.join("results/runs/quickstart").exists()
                {
                    let out = noisegeom().current_dir(w).args(&setup).output().unwrap();
                    assert!(
                        out.status.success(),
                        "setup run: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                if words.iter().any(|w| w == "arch.toml") {
                    // A `sequential` architecture with its state_dict and probe file, as
                    // scripts/torch_fashion_mnist.py writes them (a smaller net).
                    crate::byom::write_example(w);
                }
                let out = noisegeom().current_dir(w).args(&words).output().unwrap();
                assert!(
                    out.status.success(),
                    "{file}: `{cmd}`, run as `noisegeom {}`, failed: {}",
                    words.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!out.stdout.is_empty(), "{file}: `{cmd}` printed nothing");
                ran += 1;
            }
        }
    }
    assert!(ran >= 25, "only {ran} commands ran");
}
