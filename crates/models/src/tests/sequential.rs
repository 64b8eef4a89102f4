//! `kind = "sequential"`, eval-mode BatchNorm, and the state read from named tensors.

use std::collections::BTreeMap;

use super::*;

/// A tiny sequential net with every op family: conv, trainable BatchNorm2d, GELU, a
/// residual block holding a frozen BatchNorm2d, average pooling, flatten, a frozen
/// BatchNorm1d, tanh and linear layers ([2, 4, 4] inputs, 3 outputs).
pub(crate) const TINY: &str = r#"
kind = "sequential"
layers = [
  { op = "conv2d", out = 3, kernel = 3, padding = 1 },
  { op = "batchnorm2d" },
  { op = "gelu" },
  { op = "residual", layers = [
    { op = "conv2d", out = 3, kernel = 3, padding = 1, bias = false },
    { op = "batchnorm2d", trainable = false },
    { op = "tanh" },
  ] },
  { op = "avgpool2d", kernel = 2 },
  { op = "flatten" },
  { op = "linear", out = 4 },
  { op = "batchnorm1d", trainable = false },
  { op = "tanh" },
  { op = "linear", out = 3 },
]
"#;

/// A residual block that halves the resolution, with a projection shortcut (1×1 conv of
/// stride 2, then BatchNorm), and overlapping average pooling ([1, 6, 6] inputs).
pub(crate) const PROJECTED: &str = r#"
kind = "sequential"
layers = [
  { op = "conv2d", out = 2, kernel = 3, padding = 1 },
  { op = "tanh" },
  { op = "residual", layers = [
    { op = "conv2d", out = 3, kernel = 3, stride = 2, padding = 1 },
    { op = "tanh" },
  ], shortcut = [
    { op = "conv2d", out = 3, kernel = 1, stride = 2, bias = false },
    { op = "batchnorm2d" },
  ] },
  { op = "avgpool2d", kernel = 2, stride = 1 },
  { op = "flatten" },
  { op = "linear", out = 2 },
]
"#;

/// The example of the issue that asked for `sequential` (CIFAR-shaped inputs).
const EXAMPLE: &str = r#"
kind = "sequential"
input_shape = [3, 32, 32]
layers = [
  { op = "conv2d", out = 32, kernel = 3, stride = 1, padding = 1 },
  { op = "relu" },
  { op = "conv2d", out = 64, kernel = 3, stride = 2, padding = 1, bias = false },
  { op = "batchnorm2d" },
  { op = "tanh" },
  { op = "avgpool2d", kernel = 2 },
  { op = "flatten" },
  { op = "linear", out = 10 },
]
"#;

#[test]
fn sequential_layers_follow_torch_names_and_shapes() {
    let cfg: ModelConfig = toml::from_str(EXAMPLE).unwrap();
    let arch = cfg.arch(&[3, 32, 32], 10, 0).unwrap();
    let layout: Vec<(String, Vec<usize>)> = arch.param_layout();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("0.weight", vec![32, 3, 3, 3]),
        ("0.bias", vec![32]),
        ("2.weight", vec![64, 32, 3, 3]),
        ("3.weight", vec![64]),
        ("3.bias", vec![64]),
        // 32 → 16 (stride 2) → 8 (pool 2).
        ("7.weight", vec![10, 64 * 8 * 8]),
        ("7.bias", vec![10]),
    ];
    let got: Vec<(&str, Vec<usize>)> = layout
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    assert_eq!(got, want);
    let fixed: Vec<String> = arch
        .state_layout()
        .into_iter()
        .filter(|e| !e.trained)
        .map(|e| e.name)
        .collect();
    assert_eq!(fixed, ["3.running_mean", "3.running_var"]);
    // Residual blocks nest their names: module 3 of TINY holds 3.0 (conv) and 3.1 (BN).
    let tiny: ModelConfig = toml::from_str(TINY).unwrap();
    let names: Vec<String> = tiny
        .arch(&[2, 4, 4], 3, 0)
        .unwrap()
        .state_layout()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for n in ["3.0.weight", "3.1.running_var", "7.running_mean", "9.bias"] {
        assert!(names.iter().any(|m| m == n), "{n} in {names:?}");
    }
    // A projection shortcut (torchvision's `downsample`) is named `i.shortcut.j`.
    let down: ModelConfig = toml::from_str(PROJECTED).unwrap();
    let arch = down.arch(&[1, 6, 6], 2, 0).unwrap();
    let names: Vec<(String, Vec<usize>)> = arch
        .state_layout()
        .into_iter()
        .map(|e| (e.name, e.shape))
        .collect();
    for (n, s) in [
        ("2.0.weight", vec![3, 2, 3, 3]),
        ("2.shortcut.0.weight", vec![3, 2, 1, 1]),
        ("2.shortcut.1.running_var", vec![3]),
        // [3, 3, 3] pooled by 2 × 2 windows 1 apart: [3, 2, 2].
        ("5.weight", vec![2, 12]),
    ] {
        assert!(
            names.contains(&(n.to_string(), s.clone())),
            "{n} {s:?} in {names:?}"
        );
    }
    assert_eq!(cfg.natural_outputs(&[3, 32, 32]), Some(10));
    // The config's input shape must agree with the data's.
    let err = cfg.arch(&[1, 28, 28], 10, 0).unwrap_err().to_string();
    assert!(
        err.contains("[3, 32, 32]") && err.contains("[1, 28, 28]"),
        "{err}"
    );
}

/// Each mistake is one error naming the layer (nested: `2.1`) and its op.
#[test]
fn sequential_errors_name_the_layer_and_op() {
    let err_of = |layers: &str, shape: &[usize], c: usize| -> String {
        let text = format!("kind = \"sequential\"\nlayers = [{layers}]");
        match toml::from_str::<ModelConfig>(&text) {
            // The config reader turns TOML errors into one line (`TrainError::Config`).
            Err(e) => e.message().to_string(),
            Ok(cfg) => cfg.arch(shape, c, 0).unwrap_err().to_string(),
        }
    };
    let cases: [(&str, &[usize], usize, &[&str]); 10] = [
        (
            r#"{ op = "conv2d", out = 2, kernel = 3 }, { op = "linear", out = 2 }"#,
            &[1, 5, 5],
            2,
            &["layer 1 (linear)", "flatten"],
        ),
        (
            r#"{ op = "conv2d", out = 2, kernel = 3 }"#,
            &[4],
            2,
            &["layer 0 (conv2d)", "image"],
        ),
        (
            r#"{ op = "flatten" }, { op = "residual", layers = [{ op = "relu" }, { op = "linear", out = 3 }] }, { op = "linear", out = 2 }"#,
            &[1, 2, 2],
            2,
            &["layer 1 (residual)", "shape"],
        ),
        (
            r#"{ op = "residual", layers = [{ op = "relu" }, { op = "conv2d", out = 1, kernel = 9 }] }, { op = "flatten" }"#,
            &[1, 4, 4],
            16,
            &["layer 0.1 (conv2d)", "larger than"],
        ),
        (
            r#"{ op = "avgpool2d", kernel = 2, stride = 0 }, { op = "flatten" }"#,
            &[1, 4, 4],
            4,
            &["layer 0 (avgpool2d)", "stride ≥ 1"],
        ),
        (
            r#"{ op = "residual", layers = [{ op = "conv2d", out = 2, kernel = 3, stride = 2, padding = 1 }], shortcut = [{ op = "conv2d", out = 2, kernel = 1 }] }, { op = "flatten" }"#,
            &[1, 4, 4],
            8,
            &["layer 0 (residual)", "[2, 2, 2]", "[2, 4, 4]", "shortcut"],
        ),
        (
            r#"{ op = "adaptive_avgpool2d", output_size = 2 }"#,
            &[1, 4, 4],
            1,
            &["layer 0 (adaptive_avgpool2d)", "output_size"],
        ),
        (
            r#"{ op = "linear", out = 3 }"#,
            &[4],
            2,
            &["3 outputs", "2"],
        ),
        (r#"{ op = "relu", inplace = true }"#, &[4], 4, &["inplace"]),
        (
            r#"{ op = "batchnorm2d" }"#,
            &[4],
            4,
            &["layer 0 (batchnorm2d)", "image"],
        ),
    ];
    for (layers, shape, c, want) in cases {
        let err = err_of(layers, shape, c);
        for w in want {
            assert!(err.contains(w), "{layers}: `{w}` not in: {err}");
        }
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

/// A tiny [d] → 4 → BatchNorm1d → tanh → 2 net, its BatchNorm given random running
/// statistics (and, when frozen, a random γ and β).
fn bn_net(trainable: bool) -> (Arch, Vec<f64>) {
    let text = format!(
        "kind = \"sequential\"\nlayers = [{{ op = \"linear\", out = 4 }}, {{ op = \"batchnorm1d\", eps = 0.01, trainable = {trainable} }}, {{ op = \"tanh\" }}, {{ op = \"linear\", out = 2 }}]"
    );
    let cfg: ModelConfig = toml::from_str(&text).unwrap();
    let mut arch = cfg.arch(&[3], 2, 0).unwrap();
    let mut rng = noisegeom_data::seeded_rng(5, "bn-test");
    let mut draw = |len: usize, mean: f64, std: f64| -> Vec<f32> {
        noisegeom_data::normal_vec(&mut rng, len, std)
            .into_iter()
            .map(|v| (v + mean) as f32)
            .collect()
    };
    let Stage::BatchNorm {
        mean, var, frozen, ..
    } = &mut arch.stages[1]
    else {
        panic!("stage 1 is the BatchNorm")
    };
    *mean = draw(4, 0.0, 0.7);
    *var = draw(4, 0.0, 0.5).iter().map(|v| 0.4 + v.abs()).collect();
    if let Some(a) = frozen {
        a.weight = draw(4, 1.0, 0.5);
        a.bias = draw(4, 0.0, 0.5);
    }
    let mut rng = noisegeom_data::seeded_rng(6, "bn-test-theta");
    let theta = noisegeom_data::normal_vec(&mut rng, arch.num_params(), 0.6);
    (arch, theta)
}

/// f(x) by hand in f64, the BatchNorm unfolded: (h − mean)/√(var + eps)·γ + β.
fn bn_reference(arch: &Arch, theta: &[f64], x: &[f64]) -> Vec<f64> {
    let Stage::BatchNorm {
        eps,
        mean,
        var,
        frozen,
    } = &arch.stages[1]
    else {
        panic!("stage 1 is the BatchNorm")
    };
    let mut it = theta.iter().copied();
    let mut take = |n: usize| (0..n).map(|_| it.next().unwrap()).collect::<Vec<f64>>();
    let (w1, b1) = (take(12), take(4));
    let (gamma, beta) = match frozen {
        None => (take(4), take(4)),
        Some(a) => (
            a.weight.iter().map(|&v| v as f64).collect(),
            a.bias.iter().map(|&v| v as f64).collect(),
        ),
    };
    let (w2, b2) = (take(8), take(2));
    let mut out = Vec::new();
    for xi in x.chunks(3) {
        let a: Vec<f64> = (0..4)
            .map(|j| {
                let h = (0..3).map(|k| w1[j * 3 + k] * xi[k]).sum::<f64>() + b1[j];
                let z = (h - mean[j] as f64) / (var[j] as f64 + eps).sqrt() * gamma[j] + beta[j];
                z.tanh()
            })
            .collect();
        out.extend((0..2).map(|o| (0..4).map(|j| w2[o * 4 + j] * a[j]).sum::<f64>() + b2[o]));
    }
    out
}

/// Eval-mode BatchNorm (trainable γ, β in θ, or frozen into the architecture) against the
/// unfolded reference in f64: outputs, and Jacobian-vector products against central
/// differences of the reference.
#[test]
fn batchnorm_matches_the_unfolded_reference_in_f64() {
    for trainable in [true, false] {
        let (arch, theta) = bn_net(trainable);
        assert_eq!(arch.num_params(), if trainable { 34 } else { 26 });
        let x: Vec<f64> = (0..15).map(|k| ((k * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let xt = Tensor::<F64, 2>::from_data(TensorData::new(x.clone(), [5, 3]), &dev());
        let net = Net::<F64>::build(arch.clone(), &mut FlatSource::new(&dev(), &theta)).unwrap();
        let got: Vec<f64> = net.forward(xt.clone()).into_data().to_vec().unwrap();
        let want = bn_reference(&arch, &theta, &x);
        assert!(
            rel(&got, &want) < 1e-12,
            "trainable {trainable}: outputs {got:?} vs {want:?}"
        );

        let mut rng = noisegeom_data::seeded_rng(7, "bn-test-direction");
        let v = noisegeom_data::normal_vec(&mut rng, theta.len(), 1.0);
        let tangent = Net::<F64>::build(arch.clone(), &mut FlatSource::new(&dev(), &v)).unwrap();
        let (_, jv) = net.jvp(xt, &tangent);
        let jv: Vec<f64> = jv.unwrap().into_data().to_vec().unwrap();
        let h = 1e-5;
        let at = |s: f64| {
            let t: Vec<f64> = theta.iter().zip(&v).map(|(a, b)| a + s * b).collect();
            bn_reference(&arch, &t, &x)
        };
        let fd: Vec<f64> = at(h)
            .iter()
            .zip(at(-h))
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        assert!(
            rel(&jv, &fd) < 1e-8,
            "trainable {trainable}: J·v rel. error {:e}",
            rel(&jv, &fd)
        );
    }
}

/// The state written by `state_values` reads back to the same architecture and θ; every
/// mismatch is one line naming the tensor.
#[test]
fn state_round_trips_and_mismatches_are_named() {
    let (arch, theta) = bn_net(false);
    let state = |arch: &Arch, theta: &[f64]| -> BTreeMap<String, NamedTensor> {
        arch.state_values(theta)
            .into_iter()
            .map(|(e, values)| {
                (
                    e.name,
                    NamedTensor {
                        shape: e.shape,
                        values,
                    },
                )
            })
            .collect()
    };
    // Read into a fresh architecture (default statistics): the file's replace them.
    let fresh = toml::from_str::<ModelConfig>(
        "kind = \"sequential\"\nlayers = [{ op = \"linear\", out = 4 }, { op = \"batchnorm1d\", eps = 0.01, trainable = false }, { op = \"tanh\" }, { op = \"linear\", out = 2 }]",
    )
    .unwrap()
    .arch(&[3], 2, 0)
    .unwrap();
    assert_ne!(fresh, arch);
    let mut file = state(&arch, &theta);
    file.insert(
        "1.num_batches_tracked".into(),
        NamedTensor {
            shape: vec![],
            values: vec![100.0],
        },
    );
    let (read, th) = fresh.load_state(file.clone()).unwrap();
    assert_eq!(read, arch);
    assert_eq!(th, theta);

    let fails = |edit: &dyn Fn(&mut BTreeMap<String, NamedTensor>), want: &[&str]| {
        let mut f = file.clone();
        edit(&mut f);
        let err = fresh.load_state(f).unwrap_err().to_string();
        for w in want {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
        assert!(!err.contains('\n'), "{err}");
    };
    fails(
        &|f| {
            f.remove("3.weight");
        },
        &["`3.weight` is missing", "[2, 4]", "[out, in]"],
    );
    fails(
        &|f| {
            let t = f.get_mut("0.weight").unwrap();
            t.shape = vec![3, 4];
        },
        &["`0.weight`", "[3, 4]", "[4, 3]", "transposed"],
    );
    fails(
        &|f| {
            f.insert(
                "fc.weight".into(),
                NamedTensor {
                    shape: vec![1],
                    values: vec![0.0],
                },
            );
        },
        &["fc.weight", "--name-map"],
    );
    fails(
        &|f| f.get_mut("1.running_var").unwrap().values[2] = -1.0,
        &["1.running_var", "negative"],
    );
    fails(
        &|f| f.get_mut("3.bias").unwrap().values[0] = f64::NAN,
        &["3.bias", "non-finite"],
    );
}

/// Average pooling with any stride against the definition, window by window, in f64: the
/// mean of the k × k window at (s·i, s·j), remainder rows and columns dropped.
#[test]
fn average_pooling_matches_its_definition() {
    let (n, c, h, w) = (2, 3, 7, 6);
    let x: Vec<f64> = (0..n * c * h * w)
        .map(|k| ((k * 31 % 17) as f64 - 8.0) / 5.0)
        .collect();
    for (k, s) in [(2, 2), (3, 3), (2, 1), (3, 1), (3, 2), (1, 2)] {
        let a = Tensor::<F64, 4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &dev());
        let got: Vec<f64> = crate::net::avg_pool(a, k, s).into_data().to_vec().unwrap();
        let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
        let mut want = Vec::new();
        for b in 0..n * c {
            for i in 0..ho {
                for j in 0..wo {
                    let mut sum = 0.0;
                    for di in 0..k {
                        for dj in 0..k {
                            sum += x[b * h * w + (s * i + di) * w + s * j + dj];
                        }
                    }
                    want.push(sum / (k * k) as f64);
                }
            }
        }
        assert_eq!(got.len(), want.len(), "k {k} s {s}");
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-14, "k {k} s {s}: {g} vs {e}");
        }
    }
}
