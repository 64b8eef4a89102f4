//! wgpu against the CPU backend. Without any wgpu adapter these tests write a SKIPPED line
//! straight to stderr (past the harness's capture, so it always shows) and do not fail, so
//! the suite passes on a machine with only Rust installed; CI installs Mesa's lavapipe so
//! they run there.

use crate::support::run;

fn adapter_present() -> bool {
    let out = run(&["backends"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).contains("wgpu: adapter")
}

fn step_losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["kind"] == "step").then(|| v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_training_matches_cpu_on_tiny_shapes() {
    if !adapter_present() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED wgpu_training_matches_cpu_on_tiny_shapes: no wgpu adapter on this machine (apt-get install mesa-vulkan-drivers to run it)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut losses = Vec::new();
    for backend in ["cpu", "wgpu"] {
        let dir = tmp.path().join(backend);
        let out = crate::support::noisegeom()
            .args([
                "train",
                "--config",
                "configs/quickstart.toml",
                "--backend",
                backend,
                "--out",
                dir.to_str().unwrap(),
                "--set",
                "data.n_train=64",
                "--set",
                "data.n_test=16",
                "--set",
                "data.image_size=8",
                "--set",
                "model.channels=[2,4]",
                "--set",
                "train.batch_size=8",
                "--set",
                "train.steps=5",
                "--set",
                "train.log_every=1",
                "--set",
                "train.eval_every=5",
            ])
            .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        losses.push(step_losses(&dir));
    }
    assert_eq!(losses[0].len(), 5);
    for (c, g) in losses[0].iter().zip(&losses[1]) {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1e-3),
            "cpu {c} vs wgpu {g}"
        );
    }
}
