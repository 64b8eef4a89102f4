use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (configs/ lives there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn noisegeom() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_noisegeom"));
    c.current_dir(root());
    c.env("NOISEGEOM_LOG", "warn");
    // Mesa and the Vulkan loader complain on stderr without it.
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

pub fn run(args: &[&str]) -> Output {
    noisegeom().args(args).output().expect("binary runs")
}

/// Asserts a failure with exactly one line on stderr that contains every `needle`.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "missing `{n}` in: {stderr}");
    }
}

/// Writes the six CIFAR-10 binary files (official size) with pseudo-random pixels and
/// labels that are a simple function of the pixels, so a net can learn something.
pub fn write_cifar(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for name in names {
        let mut bytes = Vec::with_capacity(10_000 * 3073);
        for _ in 0..10_000 {
            let mut px = [0u8; 3072];
            for p in px.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *p = (state >> 56) as u8;
            }
            let label = (px[..64].iter().map(|&v| v as u32).sum::<u32>() % 10) as u8;
            bytes.push(label);
            bytes.extend_from_slice(&px);
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Tiny overrides that make any config run in seconds.
pub const TINY: &[&str] = &[
    "--set",
    "train.steps=6",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.log_every=1",
    "--set",
    "train.eval_batch=50",
];

#[path = "../../crates/cli/src/sources.rs"]
#[allow(dead_code)]
mod sources;

/// Checks an `env.json`'s provenance against git, run where the binary was built: the
/// revision is HEAD's, and `git_dirty` is `"false"` exactly when no source file of the binary
/// differs from HEAD (`git status`). Without git, only that the fields are there.
pub fn assert_provenance(env: &serde_json::Value) {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (Some(head), Some(status)) = (
        git(&["rev-parse", "HEAD"]),
        git(&["status", "--porcelain", "-z", "--untracked-files=all"]),
    ) else {
        assert!(env["git_revision"].is_string(), "provenance: {env}");
        return;
    };
    let edited = status
        .split('\0')
        .filter(|l| l.len() > 3)
        .any(|l| sources::is_source(&l[3..]));
    assert_eq!(env["git_revision"], head.trim(), "provenance: {env}");
    assert_eq!(
        env["git_dirty"],
        if edited { "true" } else { "false" },
        "provenance: {env}; git status: {status}"
    );
}

/// `train` on the quickstart config shrunk to seconds (64 training and 16 test samples of
/// 8×8 synthetic images) into `out`, then each of `sets` as a `--set KEY=VALUE` (a later one
/// wins over an earlier one for the same key).
pub fn tiny_train(out: &Path, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--config", "configs/quickstart.toml", "--out"]
        .map(String::from)
        .to_vec();
    args.push(out.to_str().expect("a UTF-8 path").to_string());
    for s in ["data.n_train=64", "data.n_test=16", "data.image_size=8"]
        .iter()
        .chain(sets)
    {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// Writes a SKIPPED line past the harness's capture, so it always shows.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The fields documented in docs/reference.md under the heading that starts with `### {heading}`
/// (the first backticked cell of each table row).
pub fn documented_fields(heading: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let start = format!("### {heading}");
    let section = text
        .split("\n### ")
        .find(|s| format!("### {s}").starts_with(&start))
        .unwrap_or_else(|| panic!("docs/reference.md has no section {start}"));
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|c| c.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The field paths of `v` as docs/reference.md writes them: dotted object keys, `[]` after
/// an array of objects, every object's own path too; a ratio's `{"undefined": …}` is one
/// field.
pub fn field_paths(
    v: &serde_json::Value,
    path: &str,
    out: &mut std::collections::BTreeSet<String>,
) {
    use serde_json::Value;
    let join = |k: &str| {
        if path.is_empty() || path.ends_with(':') {
            format!("{path}{k}")
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(o) if !(o.len() == 1 && o.contains_key("undefined")) => {
            for (k, x) in o {
                let p = join(k);
                out.insert(p.clone());
                field_paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                if x.is_object() && x.get("undefined").is_none() {
                    field_paths(x, &format!("{path}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Asserts that every field of an output file is documented in docs/reference.md under
/// `heading` (a renamed or new field fails here).
pub fn assert_documented(heading: &str, paths: &std::collections::BTreeSet<String>) {
    let doc = documented_fields(heading);
    let missing: Vec<&String> = paths.difference(&doc).collect();
    assert!(
        missing.is_empty(),
        "fields written to {heading} but not documented in docs/reference.md: {missing:?}"
    );
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Checks every field of a `measure` results file against docs/reference.md.
pub fn assert_measure_documented(file: &Path) {
    let mut paths = std::collections::BTreeSet::new();
    field_paths(&read_json(file), "", &mut paths);
    assert_documented("`measure` results JSON", &paths);
}

/// Checks every file of a run directory against docs/reference.md.
pub fn assert_run_documented(run: &Path) {
    use std::collections::BTreeSet;
    let json = read_json;
    let mut events = BTreeSet::new();
    for line in std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        field_paths(&v, &format!("{kind}:"), &mut events);
    }
    assert_documented("`metrics.jsonl`", &events);
    for (file, heading) in [
        ("summary.json", "`summary.json`"),
        ("env.json", "`env.json`"),
        ("data.json", "`data.json`"),
    ] {
        let mut paths = BTreeSet::new();
        field_paths(&json(&run.join(file)), "", &mut paths);
        assert_documented(heading, &paths);
    }
}

/// Whether `python3` can import torch (the PyTorch tests skip without it).
pub fn has_torch() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Where Debian's dataset-fashion-mnist puts the files (tests that need them skip without).
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
