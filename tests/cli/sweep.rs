//! `noisegeom sweep`: a figure split into shards that run as separate processes, one of them
//! killed and rerun, merges to the same bytes as `noisegeom figure`. The Slurm templates run
//! through bash with the array variables set.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{assert_one_line_error, noisegeom, root, run};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("jobs"))
        .map(|d| {
            d.filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.ends_with(".toml") && !name.starts_with('.')
            })
            .count()
        })
        .unwrap_or(0)
}

/// The merged files that must not depend on how the work was split.
fn assert_same_outputs(a: &Path, b: &Path, name: &str) {
    for ext in ["json", "svg", "png"] {
        let f = format!("{name}.{ext}");
        let (x, y) = (
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
        );
        assert!(x == y, "{f} differs between the single run and the sweep");
    }
}

/// The (index, shard, state, id) rows of `sweep plan`.
fn plan_rows(stdout: &str) -> Vec<(usize, usize, String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (i, s) = (f.first()?.parse().ok()?, f.get(1)?.parse().ok()?);
            Some((i, s, f.get(2)?.to_string(), f.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn three_shards_with_one_killed_merge_to_the_single_run_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (single, swept) = (tmp.path().join("single"), tmp.path().join("swept"));
    let (s, w) = (single.to_str().unwrap(), swept.to_str().unwrap());
    let cfg = "configs/figures/fig1.toml";
    // More runs per point than --quick's 3, so a job lasts long enough to be killed mid-shard.
    let common = ["--quick", "--runs", "100"];

    ok(&run(
        &[&["figure", "fig1", "--out", s][..], &common].concat()
    ));

    let plan = ok(&run(&[
        &["sweep", "plan", cfg, "--shards", "3", "--out", w][..],
        &common,
    ]
    .concat()));
    let rows = plan_rows(&plan);
    assert!(rows.len() >= 12, "fig1 --quick has many jobs: {plan}");
    assert!(rows.iter().all(|r| r.2 == "missing"), "{plan}");
    let total = rows.len();
    let of_shard1: Vec<&String> = rows.iter().filter(|r| r.1 == 1).map(|r| &r.3).collect();

    for shard in ["0/3", "2/3"] {
        let out = ok(&run(&[
            &["sweep", "run", cfg, "--shard", shard, "--out", w][..],
            &common,
        ]
        .concat()));
        assert!(out.contains("skipped 0"), "{out}");
    }
    let before = job_files(&swept);
    assert_eq!(before, total - of_shard1.len());

    // Shard 1: kill -9 once it has written its first job, before its last.
    let mut child = noisegeom()
        .args(
            [
                &["sweep", "run", cfg, "--shard", "1/3", "--out", w][..],
                &common,
            ]
            .concat(),
        )
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while job_files(&swept) == before && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "shard 1 finished before it could be killed; make its jobs longer"
    );
    let after_kill = job_files(&swept);
    assert!(
        after_kill > before && after_kill < total,
        "killed partway: {before} → {after_kill} of {total}"
    );

    // A torn result (as from a crash of a writer without the atomic rename) is redone.
    let rows = plan_rows(&ok(&run(&[
        &["sweep", "plan", cfg, "--shards", "3", "--out", w][..],
        &common,
    ]
    .concat())));
    let missing: Vec<&String> = rows
        .iter()
        .filter(|r| r.2 == "missing")
        .map(|r| &r.3)
        .collect();
    assert!(!missing.is_empty());
    assert!(missing.iter().all(|id| of_shard1.contains(id)));
    std::fs::write(
        swept.join("jobs").join(format!("{}.toml", missing[0])),
        "figure = \"fig1\"\nid = \"",
    )
    .unwrap();

    // Merging now names what is not done.
    let early = run(&[&["sweep", "merge", cfg, "--out", w][..], &common].concat());
    assert_one_line_error(&early, &["jobs not done", "(stale)", "sweep run"]);

    let out = ok(&run(&[
        &["sweep", "run", cfg, "--shard", "1/3", "--out", w][..],
        &common,
    ]
    .concat()));
    let done_before = after_kill - before;
    assert!(
        out.contains(&format!("ran {} jobs", of_shard1.len() - done_before))
            && out.contains(&format!("skipped {done_before} already done")),
        "{out}"
    );
    let merged = ok(&run(
        &[&["sweep", "merge", cfg, "--out", w][..], &common].concat()
    ));
    assert!(merged.contains("fig1.json"), "{merged}");
    assert_same_outputs(&single, &swept, "fig1");

    // Provenance lives beside the results: every job with its shard.
    let env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(swept.join("fig1.env.json")).unwrap()).unwrap();
    let jobs = env["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), total);
    assert!(jobs.iter().any(|j| j["shard"] == "1/3"));

    // `figure` again reuses every finished job; --fresh recomputes, to the same bytes.
    let again = ok(&run(
        &[&["figure", "fig1", "--out", s][..], &common].concat()
    ));
    assert!(
        again.contains(&format!("reused {total} finished jobs")),
        "{again}"
    );
    ok(&run(&[
        &["figure", "fig1", "--fresh", "--out", s][..],
        &common,
    ]
    .concat()));
    assert_same_outputs(&single, &swept, "fig1");
}

fn bash(script: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new("bash");
    c.arg(root().join("scripts/slurm").join(script))
        .current_dir(root())
        .env("NOISEGEOM_LOG", "warn")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("SHARDS");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn slurm_templates_run_every_shard_and_merge_through_bash() {
    let text = std::fs::read_to_string(root().join("scripts/slurm/sweep.sbatch")).unwrap();
    assert!(text.starts_with("#!/usr/bin/env bash\n"));
    assert!(
        text.contains("\n#SBATCH --array=0-"),
        "a job-array template"
    );
    assert!(
        text.contains(r#"--shard "$SLURM_ARRAY_TASK_ID/$SHARDS""#),
        "the array task id is the shard"
    );
    // SIGTERM before the time limit's SIGKILL, to the batch step, which execs noisegeom.
    assert!(
        text.contains("\n#SBATCH --signal=B:TERM@"),
        "an early warning"
    );
    assert!(
        text.contains("\nexec \"$NOISEGEOM\""),
        "noisegeom is the batch step"
    );
    // Every variable the header documents is read by the script.
    for v in [
        "CONFIG",
        "SHARDS",
        "BACKEND",
        "PRECISION",
        "OUT",
        "QUICK",
        "RUNS",
        "NOISEGEOM",
    ] {
        assert!(text.contains(&format!("#   {v} ")), "{v} documented");
        assert!(text.contains(&format!("${{{v}")), "{v} used");
    }

    let tmp = tempfile::tempdir().unwrap();
    let (single, swept) = (tmp.path().join("single"), tmp.path().join("swept"));
    let bin = env!("CARGO_BIN_EXE_noisegeom");
    let cfg = "configs/figures/fig4.toml";
    ok(&run(&[
        "figure",
        "fig4",
        "--quick",
        "--out",
        single.to_str().unwrap(),
    ]));
    let base = [
        ("CONFIG", cfg),
        ("QUICK", "1"),
        ("OUT", swept.to_str().unwrap()),
        ("NOISEGEOM", bin),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    for i in ["2", "0", "1"] {
        let out = ok(&bash(
            "sweep.sbatch",
            &[&base[..], &[("SLURM_ARRAY_TASK_ID", i)]].concat(),
        ));
        assert!(
            out.contains(&format!("--shard {i}/3 --backend cpu --precision f64")),
            "{out}"
        );
        assert!(out.contains(&format!("fig4 shard {i}/3: ran")), "{out}");
    }
    ok(&bash("merge.sbatch", &base));
    assert_same_outputs(&single, &swept, "fig4");

    // Outside an array task the template stops with a message, before doing anything.
    let out = bash("sweep.sbatch", &base);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLURM_ARRAY_TASK_ID"));

    // The GPU variant: wgpu in f32, SHARDS overriding the array size.
    let out = ok(&bash(
        "sweep.sbatch",
        &[
            ("CONFIG", cfg),
            ("NOISEGEOM", "echo"),
            ("BACKEND", "wgpu"),
            ("SHARDS", "8"),
            ("RUNS", "5"),
            ("SLURM_ARRAY_TASK_ID", "7"),
        ],
    ));
    assert!(
        out.contains(&format!(
            "sweep run {cfg} --shard 7/8 --backend wgpu --precision f32 --runs 5"
        )),
        "{out}"
    );
}

#[test]
fn submit_script_asks_for_an_array_and_a_dependent_merge() {
    // A stand-in `sbatch` that logs its arguments and answers with a job id.
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("sbatch.log");
    let fake = tmp.path().join("sbatch");
    std::fs::write(
        &fake,
        format!(
            "#!/usr/bin/env bash\necho \"$*\" >> {}\necho 4242\n",
            log.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args([
            "scripts/slurm/submit.sh",
            "configs/figures/fig1.toml",
            "16",
            "--gpu",
            "--account=lab",
        ])
        .current_dir(root())
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(
        stdout.contains("array 4242 (16 tasks, backend wgpu)"),
        "{stdout}"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for want in [
        "--array=0-15",
        "--gres=gpu:1",
        "--account=lab",
        "CONFIG=configs/figures/fig1.toml,SHARDS=16,BACKEND=wgpu",
        "sweep.sbatch",
    ] {
        assert!(calls[0].contains(want), "{want} in {}", calls[0]);
    }
    for want in ["--dependency=afterok:4242", "--account=lab", "merge.sbatch"] {
        assert!(calls[1].contains(want), "{want} in {}", calls[1]);
    }

    let bad = Command::new("bash")
        .args(["scripts/slurm/submit.sh", "configs/figures/fig1.toml", "0"])
        .current_dir(root())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("positive integer"));
}

#[test]
fn sweep_inputs_that_cannot_work_get_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("nofigure.toml");
    std::fs::write(&cfg, "seed = 0\n").unwrap();
    let out = run(&["sweep", "plan", cfg.to_str().unwrap()]);
    assert_one_line_error(&out, &["no `figure` key", "figure = \"fig1\""]);

    let out = run(&[
        "sweep",
        "run",
        "configs/figures/fig4.toml",
        "--shard",
        "3/3",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 ≤ I < N"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&[
        "figure",
        "fig2a",
        "--quick",
        "--runs",
        "3",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["no independent runs", "drop --runs"]);

    let out = run(&[
        "figure",
        "fig1",
        "--config",
        "configs/figures/fig4.toml",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["`figure` key is fig4, not fig1"]);
}
