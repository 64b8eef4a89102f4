use std::path::Path;

use crate::support::{assert_one_line_error, run, tiny_train};

fn ok(args: &[&str]) -> String {
    let res = run(args);
    assert!(
        res.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    String::from_utf8_lossy(&res.stdout).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The measured numbers, without the wall times.
fn numbers(doc: &serde_json::Value) -> serde_json::Value {
    let mut m = doc["measurement"].clone();
    m.as_object_mut().unwrap().remove("seconds");
    m
}

/// f32 tensors as safetensors; `dtype` "f32", "f16" or "bf16".
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f64>)], dtype: &str) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let (d, b): (Dtype, Vec<u8>) = match dtype {
                "f16" => (
                    Dtype::F16,
                    v.iter()
                        .flat_map(|x| half::f16::from_f64(*x).to_le_bytes())
                        .collect(),
                ),
                "bf16" => (
                    Dtype::BF16,
                    v.iter()
                        .flat_map(|x| half::bf16::from_f64(*x).to_le_bytes())
                        .collect(),
                ),
                _ => (
                    Dtype::F32,
                    v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
                ),
            };
            (n.to_string(), d, s.clone(), b)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A `.npy` file (version 1, C order) of f32 (`"<f4"`) or i64 (`"<i8"`) values.
fn write_npy(path: &Path, shape: &[usize], values: &[f64], descr: &str) {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in values {
        match descr {
            "<i8" => out.extend((*v as i64).to_le_bytes()),
            _ => out.extend((*v as f32).to_le_bytes()),
        }
    }
    std::fs::write(path, out).unwrap();
}

fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|k| (((k + seed) * 37 % 23) as f64 - 11.0) / 13.0)
        .collect()
}

/// A 4 → 5 → BatchNorm1d → ReLU → 3 net given as a layer list.
const ARCH: &str = r#"
[model]
kind = "sequential"
input_shape = [4]
layers = [
  { op = "linear", out = 5 },
  { op = "batchnorm1d" },
  { op = "relu" },
  { op = "linear", out = 3 },
]
"#;

/// Named tensors: name, shape, values.
type State = Vec<(String, Vec<usize>, Vec<f64>)>;

/// Its state_dict, in `nn.Sequential` names unless `names` renames them.
fn state(names: &dyn Fn(&str) -> String) -> State {
    let var: Vec<f64> = values(5, 3).iter().map(|v| 0.5 + v.abs()).collect();
    vec![
        (names("0.weight"), vec![5, 4], values(20, 0)),
        (names("0.bias"), vec![5], values(5, 1)),
        (
            names("1.weight"),
            vec![5],
            values(5, 2).iter().map(|v| 1.0 + v).collect(),
        ),
        (names("1.bias"), vec![5], values(5, 4)),
        (names("1.running_mean"), vec![5], values(5, 5)),
        (names("1.running_var"), vec![5], var),
        (names("1.num_batches_tracked"), vec![], vec![7.0]),
        (names("3.weight"), vec![3, 5], values(15, 6)),
        (names("3.bias"), vec![3], values(3, 7)),
    ]
}

fn refs(s: &[(String, Vec<usize>, Vec<f64>)]) -> Vec<(&str, Vec<usize>, Vec<f64>)> {
    s.iter()
        .map(|(n, sh, v)| (n.as_str(), sh.clone(), v.clone()))
        .collect()
}

/// A run's checkpoint, exported and read back with --weights and --probe, measures equal,
/// bit for bit, to measuring the checkpoint directly.
#[test]
fn an_exported_checkpoint_measures_bit_for_bit_like_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let args = tiny_train(
        &run_dir,
        &[
            "train.steps=6",
            "model={kind = \"fnn\", hidden = [8], activation = \"tanh\"}",
            "probe.enabled=false",
        ],
    );
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let r = run_dir.to_str().unwrap();
    let (a, e, b) = (
        tmp.path().join("a.json"),
        tmp.path().join("e.safetensors"),
        tmp.path().join("b.json"),
    );
    let common = ["--k", "3", "--what", "mu,directional,spectrum"];
    let mut direct = vec!["measure", "--run", r, "--probe-size", "20", "--out"];
    direct.push(a.to_str().unwrap());
    direct.extend(common);
    ok(&direct);
    ok(&[
        "export",
        "--run",
        r,
        "--probe-size",
        "20",
        "--out",
        e.to_str().unwrap(),
    ]);
    // A config holding only [model] is enough with --weights and --probe.
    let arch = tmp.path().join("arch.toml");
    std::fs::write(
        &arch,
        "[model]\nkind = \"fnn\"\nhidden = [8]\nactivation = \"tanh\"\n",
    )
    .unwrap();
    let ef = e.to_str().unwrap();
    let mut via = vec![
        "measure",
        "--config",
        arch.to_str().unwrap(),
        "--weights",
        ef,
    ];
    via.extend(["--probe", ef, "--out", b.to_str().unwrap()]);
    via.extend(common);
    ok(&via);
    let (ja, jb) = (json(&a), json(&b));
    assert_eq!(numbers(&ja), numbers(&jb));
    assert!(jb["at"].as_str().unwrap().starts_with("weights "));
}

/// `train --weights` starts from the given weights: the fine-tuning run's step-0 probe is,
/// bit for bit, the last probe of the run the weights were exported from (same θ, same probe
/// set), its step-0 checkpoint holds them (so a run stopped before its first checkpoint
/// resumes from them), and `data.json` names them. Weights for another architecture, and
/// `--weights` with `--resume`, are one-line errors.
#[test]
fn training_starts_from_given_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sets = [
        "train.steps=2",
        "train.eval_every=2",
        "model={kind = \"fnn\", hidden = [8], activation = \"tanh\"}",
        "probe.size=16",
        "probe.hessian=false",
    ];
    let args = tiny_train(&a, &sets);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let st = tmp.path().join("a.safetensors");
    let stf = st.to_str().unwrap();
    ok(&["export", "--run", a.to_str().unwrap(), "--out", stf]);
    let mut args = tiny_train(&b, &sets);
    args.extend(["--weights".into(), stf.into()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let probes = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "probe")
            .map(|mut v| {
                let o = v.as_object_mut().unwrap();
                o.remove("step");
                o.remove("lr");
                v
            })
            .collect()
    };
    assert_eq!(probes(&a).last(), probes(&b).first());
    assert_ne!(probes(&a).first(), probes(&b).first(), "not the seed's θ");
    assert!(b.join("checkpoints/step-0000000000.ckpt").is_file());
    let data = json(&b.join("data.json"));
    assert!(
        data["initial_weights"]["source"]
            .as_str()
            .unwrap()
            .ends_with("a.safetensors")
    );

    // Another architecture: the first tensor that differs is named, with both shapes.
    let mut args = tiny_train(&tmp.path().join("c"), &sets);
    args.extend([
        "--set".into(),
        "model.hidden=[9]".into(),
        "--weights".into(),
        stf.into(),
    ]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_one_line_error(&out, &["--weights", "1.weight", "[9, 192]", "[8, 192]"]);
    assert!(!tmp.path().join("c/metrics.jsonl").exists());
    let out = run(&["train", "--resume", a.to_str().unwrap(), "--weights", stf]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--weights"));
}

/// Writes `arch.toml` ([`ARCH`]), its `weights.safetensors` in `nn.Sequential` names and a
/// `probe.safetensors` of 6 samples with integer labels into `dir`; returns the probe's x and
/// labels.
pub(crate) fn write_example(dir: &Path) -> (Vec<f64>, Vec<f64>) {
    std::fs::write(dir.join("arch.toml"), ARCH).unwrap();
    write_safetensors(
        &dir.join("weights.safetensors"),
        &refs(&state(&|n| n.to_string())),
        "f32",
    );
    let x = values(6 * 4, 9);
    let labels = vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0];
    write_safetensors(
        &dir.join("probe.safetensors"),
        &[
            ("x", vec![6, 4], x.clone()),
            ("labels", vec![6], labels.clone()),
        ],
        "f32",
    );
    (x, labels)
}

/// A PyTorch-style state_dict (f32, f16, bf16, or renamed through --name-map) with a
/// BatchNorm1d, and probe sets as safetensors or .npy pairs with integer labels.
#[test]
fn a_state_dict_with_batchnorm_and_probe_files_is_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let (x, labels) = write_example(tmp.path());
    write_npy(Path::new(&p("x.npy")), &[6, 4], &x, "<f4");
    write_npy(Path::new(&p("y.npy")), &[6], &labels, "<i8");
    let arch = p("arch.toml");
    let measure = |weights: &str, probe: &[&str], extra: &[&str], out: &str| {
        let mut a = vec!["measure", "--config", &arch, "--weights"];
        a.push(weights);
        a.extend(probe);
        a.extend(["--k", "2", "--out"]);
        a.push(out);
        a.extend(extra);
        ok(&a)
    };
    let plain = state(&|n| n.to_string());
    write_safetensors(Path::new(&p("w.safetensors")), &refs(&plain), "f32");
    let stdout = measure(
        &p("w.safetensors"),
        &["--probe", &p("probe.safetensors")],
        &[],
        &p("a.json"),
    );
    assert!(stdout.contains("μ = "), "{stdout}");
    let a = json(Path::new(&p("a.json")));
    assert_eq!(a["probe"]["size"], 6);
    assert_eq!(a["batchnorm"][0]["module"], "1");
    assert_eq!(a["batchnorm"][0]["weight_and_bias_in_theta"], true);
    assert_eq!(a["measurement"]["params"], 5 * 4 + 5 + 5 + 5 + 3 * 5 + 3);
    // The same probe as two .npy files.
    measure(
        &p("w.safetensors"),
        &["--probe-x", &p("x.npy"), "--probe-y", &p("y.npy")],
        &[],
        &p("b.json"),
    );
    assert_eq!(numbers(&a), numbers(&json(Path::new(&p("b.json")))));
    // Renamed tensors through a name map.
    let renamed = state(&|n| format!("net.{n}"));
    write_safetensors(Path::new(&p("r.safetensors")), &refs(&renamed), "f32");
    let map: String = plain
        .iter()
        .map(|(n, _, _)| format!("\"net.{n}\" = \"{n}\"\n"))
        .collect();
    std::fs::write(p("map.toml"), map).unwrap();
    measure(
        &p("r.safetensors"),
        &["--probe", &p("probe.safetensors")],
        &["--name-map", &p("map.toml")],
        &p("c.json"),
    );
    assert_eq!(numbers(&a), numbers(&json(Path::new(&p("c.json")))));
    // Half-precision weights are read (and give nearby numbers).
    for dtype in ["f16", "bf16"] {
        write_safetensors(Path::new(&p("h.safetensors")), &refs(&plain), dtype);
        measure(
            &p("h.safetensors"),
            &["--probe", &p("probe.safetensors")],
            &[],
            &p("h.json"),
        );
        let (l0, l1) = (
            a["measurement"]["loss"].as_f64().unwrap(),
            json(Path::new(&p("h.json")))["measurement"]["loss"]
                .as_f64()
                .unwrap(),
        );
        assert!(
            (l0 - l1).abs() < 0.05 * l0,
            "{dtype}: loss {l1} vs f32 {l0}"
        );
    }
}

/// Every mismatch between the architecture, the weights and the probe set is one line.
#[test]
fn weight_and_probe_mismatches_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("arch.toml"), ARCH).unwrap();
    let probe = |name: &str, x: Vec<f64>, labels: Vec<f64>| {
        write_safetensors(
            Path::new(&p(name)),
            &[("x", vec![2, 4], x), ("labels", vec![2], labels)],
            "f32",
        );
    };
    probe("probe.safetensors", values(8, 1), vec![0.0, 2.0]);
    probe("bad-label.safetensors", values(8, 1), vec![0.0, 3.0]);
    let mut nan = values(8, 1);
    nan[5] = f64::NAN;
    probe("nan.safetensors", nan, vec![0.0, 1.0]);
    let plain = state(&|n| n.to_string());
    let edited = |name: &str, edit: &dyn Fn(&mut State)| {
        let mut s = plain.clone();
        edit(&mut s);
        write_safetensors(Path::new(&p(name)), &refs(&s), "f32");
        p(name)
    };
    let good = edited("w.safetensors", &|_| {});
    let transposed = edited("t.safetensors", &|s| s[0].1 = vec![4, 5]);
    let missing = edited("m.safetensors", &|s| {
        s.remove(8);
    });
    let extra = edited("e.safetensors", &|s| {
        s.push(("head.weight".into(), vec![1], vec![0.0]))
    });
    let arch = p("arch.toml");
    let fails = |weights: &str, probe: &str, needles: &[&str]| {
        let out = run(&[
            "measure",
            "--config",
            &arch,
            "--weights",
            weights,
            "--probe",
            probe,
        ]);
        assert_one_line_error(&out, needles);
    };
    let pr = p("probe.safetensors");
    fails(
        &transposed,
        &pr,
        &["`0.weight`", "[4, 5]", "[5, 4]", "[out, in]", "transposed"],
    );
    fails(&missing, &pr, &["`3.bias`", "missing", "[3]"]);
    fails(&extra, &pr, &["head.weight", "--name-map"]);
    fails(&good, &p("bad-label.safetensors"), &["label 3", "0..3"]);
    fails(&good, &p("nan.safetensors"), &["x", "non-finite"]);
    // A [model]-only config needs a probe file.
    assert_one_line_error(
        &run(&["measure", "--config", &arch, "--weights", &good]),
        &["[model]", "--probe"],
    );
    // BatchNorm is measured in eval mode, never trained.
    let out = run(&tiny_train(
        &tmp.path().join("run"),
        &["model={kind = \"sequential\", layers = [{op = \"flatten\"}, {op = \"batchnorm1d\"}, {op = \"linear\", out = 10}]}"],
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert_one_line_error(&out, &["batchnorm", "per-sample gradients"]);
}

/// The network of the PyTorch check: conv2d, batchnorm2d (eval, random running statistics),
/// relu, a residual block with tanh, avgpool2d, flatten and linear.
const TORCH_NET: &str = r#"
import torch
from torch import nn

class Residual(nn.Sequential):
    """block(x) + shortcut(x); the shortcut is the identity unless given."""
    def __init__(self, *layers, shortcut=None):
        super().__init__(*layers)
        if shortcut is not None:
            self.shortcut = shortcut

    def forward(self, x):
        y = x
        for name, m in self.named_children():
            if name != "shortcut":
                y = m(y)
        return y + (self.shortcut(x) if "shortcut" in self._modules else x)

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(1, 2, 3, padding=1),
    nn.BatchNorm2d(2),
    nn.ReLU(),
    Residual(nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.Tanh()),
    Residual(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(),
             shortcut=nn.Sequential(nn.Conv2d(2, 3, 1, stride=2, bias=False), nn.BatchNorm2d(3))),
    nn.AvgPool2d(2, stride=1),
    nn.AvgPool2d(2),
    nn.Flatten(),
    nn.Linear(3, 3),
)
with torch.no_grad():
    for bn in [model[1], model[4].shortcut[1]]:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
model.eval()
x = torch.randn(8, 1, 6, 6)
labels = torch.randint(0, 3, (8,))
"#;

/// Converts the network (with a projection shortcut and overlapping pooling) with
/// scripts/from_torch.py, measures it, and recomputes μ, Tr G and
/// λ_max(G) from the definitions in PyTorch in float64 (J by torch.func.jacrev).
const TORCH_CHECK: &str = r#"
import copy, json, subprocess, sys
import torch
import netdef

exe, root = sys.argv[1], sys.argv[2]
torch.save(netdef.x, "x.pt")
torch.save(netdef.labels, "labels.pt")
r = subprocess.run([sys.executable, f"{root}/scripts/from_torch.py", "--model", "netdef:model",
                    "--inputs", "x.pt", "--labels", "labels.pt", "--out", "conv", "--noisegeom", exe,
                    "--", "--what", "mu,spectrum", "--k", "3", "--no-hessian", "--precision", "f64"])
assert r.returncode == 0, "from_torch.py failed"
got = json.load(open("conv/measure.json"))["measurement"]

m = copy.deepcopy(netdef.model).double().eval()
params = {k: v.detach() for k, v in m.named_parameters()}
X = netdef.x.double()
n, c = X.shape[0], 3
Y = torch.nn.functional.one_hot(netdef.labels, c).double()
f = lambda p: torch.func.functional_call(m, p, (X,))
jac = torch.func.jacrev(f)(params)
J = torch.cat([jac[k].reshape(n * c, -1) for k in params], 1)
e = (f(params) - Y).reshape(n * c).detach()
G = J.T @ J / n
two_l = e @ e / n
gi = torch.einsum("ncp,nc->np", J.reshape(n, c, -1), e.reshape(n, c))
grad = gi.mean(0)
sigma = gi.T @ gi / n - torch.outer(grad, grad)
want = {
    "mu": float(torch.trace(sigma @ G) / (two_l * (G * G).sum())),
    "trace_g": float(torch.trace(G)),
    "lambda_max_g": float(torch.linalg.eigvalsh(G).max()),
}
have = {
    "mu": got["loss_alignment"]["mu"],
    "trace_g": got["curvature"]["trace_g"],
    "lambda_max_g": got["curvature"]["lambda_max_g"],
}
for k in want:
    rel = abs(have[k] - want[k]) / abs(want[k])
    print(f"{k}: noisegeom {have[k]:.12e}  PyTorch f64 {want[k]:.12e}  rel {rel:.1e}")
    assert rel <= 1e-5, k
print("checked")
"#;

/// A PyTorch nn.Sequential, converted with scripts/from_torch.py and measured, gives the μ,
/// Tr G and λ_max(G) that PyTorch computes from the definitions in float64. SKIPPED when
/// `torch` is not importable.
#[test]
fn a_pytorch_model_measures_like_pytorch_in_f64() {
    if !crate::support::has_torch() {
        crate::support::skipped(
            "a_pytorch_model_measures_like_pytorch_in_f64",
            "python3 cannot import torch (pip install torch to run it)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("netdef.py"), TORCH_NET).unwrap();
    std::fs::write(tmp.path().join("check.py"), TORCH_CHECK).unwrap();
    let out = std::process::Command::new("python3")
        .arg("check.py")
        .arg(env!("CARGO_BIN_EXE_noisegeom"))
        .arg(crate::support::root())
        .current_dir(tmp.path())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("NOISEGEOM_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("checked"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
