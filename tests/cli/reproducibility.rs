use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{noisegeom, run};

/// A quickstart-shaped run small enough for a test: 120 steps, checkpoints every 4.
fn args(out: &str) -> Vec<&str> {
    vec![
        "train",
        "--config",
        "configs/quickstart.toml",
        "--out",
        out,
        "--set",
        "data.n_train=256",
        "--set",
        "data.n_test=64",
        "--set",
        "model.channels=[4,8,8]",
        "--set",
        "train.steps=120",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.momentum=0.9",
        "--set",
        "train.eval_every=8",
        "--set",
        "train.checkpoint_every=4",
        "--set",
        "train.log_every=1",
        "--set",
        "train.lr.period=16",
        // Probes at every LR peak and trough (every 8 steps): their events must resume too.
        "--set",
        "probe.size=16",
        "--set",
        "probe.k=2",
        "--set",
        "probe.lanczos_iters=4",
    ]
}

fn losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .map(str::to_string)
        .collect()
}

#[test]
fn same_seed_same_losses_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        let out = run(&args(d.to_str().unwrap()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 120);
    assert_eq!(la, lb, "losses differ between two runs with the same seed");
    let c = tmp.path().join("c");
    let mut other = args(c.to_str().unwrap());
    other.extend(["--seed", "1"]);
    assert!(run(&other).status.success());
    assert_ne!(
        losses(&c),
        la,
        "a different seed should change the trajectory"
    );
}

fn final_checkpoint(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("checkpoints/step-0000000120.ckpt")).unwrap()
}

/// Probes read θ and nothing else: with and without them, the same seed gives the same
/// training losses and bitwise the same final parameters and momentum.
#[test]
fn probes_do_not_perturb_training() {
    let tmp = tempfile::tempdir().unwrap();
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    let mut a = args(with.to_str().unwrap());
    a.extend(["--set", "probe.every=5"]);
    let mut b = args(without.to_str().unwrap());
    b.extend(["--set", "probe.enabled=false"]);
    for args in [&a, &b] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::read_to_string(with.join("metrics.jsonl")).unwrap();
    let probes: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "probe")
        .collect();
    let steps: Vec<u64> = probes.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    // Step 0, every 5 steps, every half-period (8) of the CLR, and the end.
    let want: Vec<u64> = (0..=120).filter(|s| s % 5 == 0 || s % 8 == 0).collect();
    assert_eq!(steps, want);
    for p in &probes {
        for key in [
            "mu",
            "trace_g",
            "g_fro",
            "lambda_max_g",
            "lambda_max_h",
            "loss",
            "accuracy",
        ] {
            assert!(p[key].as_f64().is_some_and(f64::is_finite), "{key} in {p}");
        }
        // k = 2, fewer when G has one distinct nonzero eigenvalue (a dead ReLU net keeps
        // only the output bias: G = I).
        let k = p["lambda_g"].as_array().unwrap().len();
        assert!((1..=2).contains(&k), "{p}");
        assert_eq!(p["samples"], 16);
    }
    let without_log = std::fs::read_to_string(without.join("metrics.jsonl")).unwrap();
    assert!(!without_log.contains("\"probe\""));
    assert_eq!(
        losses(&with),
        losses(&without),
        "probes changed the training losses"
    );
    // The checkpoint header records the log's length, which the probe events change (and so
    // does the file's trailing checksum); the payload between them (parameters and momentum)
    // must be bitwise the same.
    let payload = |ck: Vec<u8>| {
        assert_eq!(&ck[..8], b"NGCKPT02");
        let header = u64::from_le_bytes(ck[8..16].try_into().unwrap()) as usize;
        ck[16 + header..ck.len() - 8].to_vec()
    };
    assert_eq!(
        payload(final_checkpoint(&with)),
        payload(final_checkpoint(&without)),
        "probes changed θ or the momentum"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(with.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["probes"], probes.len());
    assert!(summary["probe_overhead_percent"].as_f64().unwrap() > 0.0);
}

#[test]
fn killed_run_resumes_to_the_identical_state_and_log() {
    kill_and_resume(&[]);
}

/// The logged loss averages the steps since the last log line; a checkpoint between log
/// steps (every 4 steps, logs every 5) keeps that window, so the resumed log is the same.
#[test]
fn a_run_killed_between_log_steps_resumes_to_the_identical_log() {
    kill_and_resume(&["--set", "train.log_every=5"]);
}

/// Runs `args` (plus `extra`) whole, and again killed with SIGKILL after its second
/// checkpoint and resumed: the logs must be byte for byte and the final checkpoints bit for
/// bit the same.
fn kill_and_resume(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let with = |d: &Path| -> Vec<String> {
        args(d.to_str().unwrap())
            .into_iter()
            .chain(extra.iter().copied())
            .map(String::from)
            .collect()
    };
    let whole_args = with(&whole);
    assert!(
        run(&whole_args.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success()
    );

    // Kill -9 once a checkpoint past the first has landed, then resume.
    let cut = tmp.path().join("cut");
    let mut child = noisegeom().args(with(&cut)).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(cut.join("checkpoints"))
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 2 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A pseudo-random extra delay, so the kill lands at varying steps.
    let jitter = t0.elapsed().subsec_nanos() % 30;
    std::thread::sleep(Duration::from_millis(jitter as u64));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed; make it longer"
    );
    let out = run(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, b) = (
        std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap(),
    );
    if a != b {
        let first = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        panic!(
            "metrics.jsonl of the resumed run differs from the uninterrupted run at line {first:?}: {:?} vs {:?}",
            first.map(|i| a.lines().nth(i)),
            first.map(|i| b.lines().nth(i))
        );
    }
    assert!(a.contains("\"kind\":\"probe\""), "the run logs probes");
    assert_eq!(
        final_checkpoint(&whole),
        final_checkpoint(&cut),
        "final parameters, momentum and log position differ"
    );
}

#[test]
fn a_second_run_into_the_same_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("r");
    let mut a = args(d.to_str().unwrap());
    a.extend(["--set", "train.steps=2"]);
    assert!(run(&a).status.success());
    let out = run(&a);
    crate::support::assert_one_line_error(&out, &["already holds a run", "--resume"]);
}

#[test]
fn sigint_checkpoints_and_exits_with_130_then_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    assert!(run(&args(whole.to_str().unwrap())).status.success());

    let cut = tmp.path().join("cut");
    let child = noisegeom()
        .args(args(cut.to_str().unwrap()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_dir(cut.join("checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 1
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 130 = 128 + SIGINT: stopped on request, resumable.
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after step"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");

    let out = run(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The interruption adds one checkpoint event; every other event is identical.
    let events = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
            .map(str::to_string)
            .collect()
    };
    assert!(
        events(&whole) == events(&cut),
        "step/eval events differ after SIGINT + resume"
    );
    let last = "checkpoints/step-0000000120.ckpt";
    // Parameters and momentum are bitwise equal (the header's log length is not).
    let load = |d: &Path| noisegeom_train::checkpoint::Checkpoint::load(&d.join(last)).unwrap();
    let (a, b) = (load(&whole), load(&cut));
    assert!(a.params == b.params && a.momentum == b.momentum);
}

/// SIGTERM during a long probe (the one at step 0): the run checkpoints within seconds and
/// exits with 143, saying how to resume; resumed, it takes the interrupted probe first and
/// its log matches the uninterrupted run's event for event (the interruption adds one
/// checkpoint event).
#[test]
fn sigterm_during_a_probe_checkpoints_within_seconds_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let args = |d: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            "configs/quickstart.toml",
            "--out",
            d.to_str().unwrap(),
            "--set",
            "data.n_train=600",
            "--set",
            "data.n_test=50",
            "--set",
            "model.channels=[8,16,16]",
            "--set",
            "train.steps=2",
            "--set",
            "train.log_every=1",
            "--set",
            "probe.size=400",
            "--set",
            "probe.k=2",
            "--set",
            "probe.lanczos_iters=40",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = tmp.path().join("whole");
    let out = run(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cut = tmp.path().join("cut");
    let child = noisegeom()
        .args(args(&cut))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log's first line is written just before the step-0 probe starts.
    let t0 = Instant::now();
    while !std::fs::read_to_string(cut.join("metrics.jsonl")).is_ok_and(|l| l.contains("start"))
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted after step 0") && stderr.contains("--resume"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    assert!(!log.contains("\"probe\""), "the probe was cut short: {log}");
    assert!(cut.join("checkpoints/step-0000000000.ckpt").is_file());

    let out = run(&["train", "--resume", cut.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"kind\":\"checkpoint\""))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(events(&whole), events(&cut));
}

/// SIGTERM during `measure`: it exits within seconds with 143 and writes no results file.
#[test]
fn sigterm_during_measure_exits_within_seconds_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("m.json");
    let child = noisegeom()
        .args([
            "measure",
            "--config",
            "configs/quickstart.toml",
            "--at-init",
            "--set",
            "data.n_train=2000",
            "--set",
            "data.n_test=10",
            "--probe-size",
            "1000",
            "--k",
            "40",
            "--out",
            file.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !file.exists(),
        "a results file after an interrupted measure"
    );
}
