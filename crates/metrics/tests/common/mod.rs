//! Dense f64 ground truth on tiny problems, built without the engine under test:
//! J from burn's first-order reverse mode (one unit cotangent per row), checked against
//! Richardson-extrapolated central differences of the forward pass; H from Richardson
//! differences of the reverse-mode gradient. G, M, Σ₁ are then formed explicitly.
#![allow(dead_code, clippy::needless_range_loop)]

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use noisegeom_models::{
    Arch, FlatSource, ModelConfig, Net, RandomInit, Stage, autodiff_lock, flatten,
};

pub type F64 = NdArray<f64>;
pub type Ad = Autodiff<F64>;

pub fn dev() -> burn::tensor::Device<F64> {
    Default::default()
}

/// A tiny problem: architecture, θ, inputs, targets.
pub struct Problem {
    pub name: String,
    pub arch: Arch,
    pub theta: Vec<f64>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub n: usize,
    pub d: usize,
    pub c: usize,
}

/// Every model kind, tiny, with c = 1 and c > 1 (including c = 10).
pub fn zoo(n: usize) -> Vec<Problem> {
    let specs: [(&str, Vec<usize>, usize); 14] = [
        ("kind = \"linear\"\nbias = true", vec![5], 1),
        ("kind = \"linear\"", vec![4], 10),
        ("kind = \"two_layer_linear\"\nwidth = 4", vec![5], 2),
        ("kind = \"diagonal\"", vec![6], 1),
        (
            "kind = \"two_layer\"\nwidth = 6\nactivation = \"tanh\"",
            vec![5],
            1,
        ),
        (
            "kind = \"two_layer\"\nwidth = 5\nactivation = \"smooth\"",
            vec![4],
            3,
        ),
        (
            "kind = \"two_layer\"\nwidth = 6\nactivation = \"relu\"",
            vec![5],
            1,
        ),
        (
            "kind = \"fnn\"\nhidden = [5, 4]\nactivation = \"tanh\"",
            vec![4],
            10,
        ),
        (
            "kind = \"fnn\"\nhidden = [6]\nactivation = \"relu\"",
            vec![3],
            3,
        ),
        (
            "kind = \"cnn\"\nchannels = [2, 2]\nactivation = \"tanh\"",
            vec![2, 4, 4],
            3,
        ),
        (
            "kind = \"vgg\"\nchannels = [2, 2]\nconvs_per_block = 1\nhidden = [3]\nactivation = \"tanh\"",
            vec![1, 4, 4],
            3,
        ),
        (
            "kind = \"resnet\"\nchannels = [2, 2]\nactivation = \"tanh\"",
            vec![1, 4, 4],
            2,
        ),
        (SEQUENTIAL, vec![1, 4, 4], 2),
        (PROJECTED, vec![1, 6, 6], 2),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(k, (toml_text, shape, c))| {
            let cfg: ModelConfig = toml::from_str(toml_text).unwrap();
            let arch = cfg.arch(&shape, c, 11).unwrap();
            let net = Net::<F64>::build(
                arch.clone(),
                &mut RandomInit::new(&dev(), cfg.init_scheme(), 100 + k as u64),
            )
            .unwrap();
            let mut theta = flatten(&net);
            let mut arch = arch;
            if cfg.kind() == "sequential" {
                randomise_batchnorm(&mut arch, &mut theta, k as u64);
            }
            let d: usize = shape.iter().product();
            let mut rng = noisegeom_data::seeded_rng(k as u64, "dense-test-data");
            let x = noisegeom_data::normal_vec(&mut rng, n * d, 1.0);
            let y = noisegeom_data::normal_vec(&mut rng, n * c, 1.0);
            Problem {
                name: format!("{} c={c}", cfg.kind()),
                arch,
                theta,
                x,
                y,
                n,
                d,
                c,
            }
        })
        .collect()
}

/// A `sequential` net with a residual block, trainable and frozen BatchNorm (eval mode),
/// GELU, tanh and average pooling.
const SEQUENTIAL: &str = r#"
kind = "sequential"
layers = [
  { op = "conv2d", out = 2, kernel = 3, padding = 1 },
  { op = "batchnorm2d" },
  { op = "gelu" },
  { op = "residual", layers = [
    { op = "conv2d", out = 2, kernel = 3, padding = 1, bias = false },
    { op = "batchnorm2d", trainable = false },
    { op = "tanh" },
  ] },
  { op = "avgpool2d", kernel = 2 },
  { op = "flatten" },
  { op = "batchnorm1d" },
  { op = "linear", out = 2 },
]
"#;

/// A residual block that halves the resolution with a projection shortcut (1×1 conv of
/// stride 2, then a trainable BatchNorm), and overlapping average pooling.
const PROJECTED: &str = r#"
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

/// Random running statistics (and frozen γ, β) for every BatchNorm, and θ moved off its
/// initialisation (BatchNorm's γ = 1, β = 0), so that none of them is trivial.
fn randomise_batchnorm(arch: &mut Arch, theta: &mut [f64], seed: u64) {
    let mut rng = noisegeom_data::seeded_rng(seed, "dense-test-batchnorm");
    for stage in &mut arch.stages {
        if let Stage::BatchNorm {
            mean, var, frozen, ..
        } = stage
        {
            let c = mean.len();
            let mut draw = |std: f64| -> Vec<f32> {
                noisegeom_data::normal_vec(&mut rng, c, std)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect()
            };
            *mean = draw(0.5);
            *var = draw(0.5).iter().map(|v| 0.5 + v.abs()).collect();
            if let Some(a) = frozen {
                a.weight = draw(0.5).iter().map(|v| 1.0 + v).collect();
                a.bias = draw(0.5);
            }
        }
    }
    let noise = noisegeom_data::normal_vec(&mut rng, theta.len(), 0.3);
    for (t, e) in theta.iter_mut().zip(noise) {
        *t += e;
    }
}

/// Dense matrices for one problem. Matrices are row-major `Vec<Vec<f64>>`.
pub struct Dense {
    /// J, rows sample-major (i·c + o), p columns.
    pub j: Vec<Vec<f64>>,
    pub e: Vec<f64>,
    pub grad: Vec<f64>,
    pub g: Vec<Vec<f64>>,
    pub m: Vec<Vec<f64>>,
    pub sigma: Vec<Vec<f64>>,
    pub h: Vec<Vec<f64>>,
    pub loss: f64,
    /// max relative difference between reverse-mode J and finite-difference J.
    pub j_fd_err: f64,
}

fn outputs(p: &Problem, theta: &[f64]) -> Vec<f64> {
    let net = Net::<F64>::build(p.arch.clone(), &mut FlatSource::new(&dev(), theta)).unwrap();
    let x = Tensor::<F64, 2>::from_data(TensorData::new(p.x.clone(), [p.n, p.d]), &dev());
    net.forward(x).into_data().iter::<f64>().collect()
}

/// Reverse-mode gradient of L = ||f − y||²/(2n).
fn loss_grad(p: &Problem, theta: &[f64]) -> Vec<f64> {
    let _graph = autodiff_lock();
    let net = Net::<Ad>::build(p.arch.clone(), &mut FlatSource::new(&dev(), theta)).unwrap();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(p.x.clone(), [p.n, p.d]), &dev());
    let y = Tensor::<Ad, 2>::from_data(TensorData::new(p.y.clone(), [p.n, p.c]), &dev());
    let e = net.forward(x) - y;
    let grads = (e.clone() * e)
        .sum()
        .mul_scalar(0.5 / p.n as f64)
        .backward();
    grad_vec(&net, &grads)
}

fn grad_vec(
    net: &Net<Ad>,
    grads: &<Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f64> {
    noisegeom_metrics::nested::to_host(noisegeom_metrics::nested::flat_grad(net, grads))
}

/// Richardson extrapolation of central differences of `f` along coordinate k:
/// D(h) = (f(θ+h e_k) − f(θ−h e_k)) / 2h, combined over h, h/2, h/4 to O(h⁶).
fn richardson(theta: &[f64], k: usize, h: f64, f: &dyn Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let d = |h: f64| {
        let mut tp = theta.to_vec();
        let mut tm = theta.to_vec();
        tp[k] += h;
        tm[k] -= h;
        let (a, b) = (f(&tp), f(&tm));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y) / (2.0 * h))
            .collect::<Vec<f64>>()
    };
    let (d1, d2, d3) = (d(h), d(h / 2.0), d(h / 4.0));
    d1.iter()
        .zip(&d2)
        .zip(&d3)
        .map(|((a, b), c)| {
            let r1 = (4.0 * b - a) / 3.0;
            let r2 = (4.0 * c - b) / 3.0;
            (16.0 * r2 - r1) / 15.0
        })
        .collect()
}

pub fn dense(p: &Problem) -> Dense {
    let nc = p.n * p.c;
    let np = p.theta.len();
    // J by reverse mode: row r = ∇θ f_r, one backward per unit cotangent.
    let _graph = autodiff_lock();
    let net = Net::<Ad>::build(p.arch.clone(), &mut FlatSource::new(&dev(), &p.theta)).unwrap();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(p.x.clone(), [p.n, p.d]), &dev());
    let mut j = Vec::with_capacity(nc);
    for r in 0..nc {
        let mut w = vec![0.0; nc];
        w[r] = 1.0;
        let w = Tensor::<Ad, 2>::from_data(TensorData::new(w, [p.n, p.c]), &dev());
        let grads = (net.forward(x.clone()) * w).sum().backward();
        j.push(grad_vec(&net, &grads));
    }
    // Check J against finite differences of the forward pass (independent of autodiff).
    let mut j_fd_err: f64 = 0.0;
    let scale = j.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    for k in 0..np {
        let col = richardson(&p.theta, k, 1e-3, &|t| outputs(p, t));
        for r in 0..nc {
            j_fd_err = j_fd_err.max((col[r] - j[r][k]).abs() / scale);
        }
    }
    let f = outputs(p, &p.theta);
    let e: Vec<f64> = f.iter().zip(&p.y).map(|(a, b)| a - b).collect();
    let n = p.n as f64;
    let loss = e.iter().map(|v| v * v).sum::<f64>() / (2.0 * n);
    let mut grad = vec![0.0; np];
    let mut g = vec![vec![0.0; np]; np];
    let mut m = vec![vec![0.0; np]; np];
    for i in 0..p.n {
        let mut gi = vec![0.0; np];
        for o in 0..p.c {
            let r = i * p.c + o;
            for a in 0..np {
                gi[a] += j[r][a] * e[r];
                for b in 0..np {
                    g[a][b] += j[r][a] * j[r][b] / n;
                }
            }
        }
        for a in 0..np {
            grad[a] += gi[a] / n;
            for b in 0..np {
                m[a][b] += gi[a] * gi[b] / n;
            }
        }
    }
    let sigma: Vec<Vec<f64>> = (0..np)
        .map(|a| (0..np).map(|b| m[a][b] - grad[a] * grad[b]).collect())
        .collect();
    // H: columns by Richardson differences of the reverse-mode gradient, then symmetrised.
    let cols: Vec<Vec<f64>> = (0..np)
        .map(|k| richardson(&p.theta, k, 1e-3, &|t| loss_grad(p, t)))
        .collect();
    let h = (0..np)
        .map(|a| (0..np).map(|b| 0.5 * (cols[b][a] + cols[a][b])).collect())
        .collect();
    Dense {
        j,
        e,
        grad,
        g,
        m,
        sigma,
        h,
        loss,
        j_fd_err,
    }
}

pub fn matvec(a: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    a.iter()
        .map(|row| row.iter().zip(v).map(|(x, y)| x * y).sum())
        .collect()
}

pub fn mat_t_vec(a: &[Vec<f64>], w: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a[0].len()];
    for (row, wr) in a.iter().zip(w) {
        out.iter_mut().zip(row).for_each(|(o, x)| *o += x * wr);
    }
    out
}

/// ||a − b|| / ||b||.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

pub fn test_vector(len: usize, seed: u64) -> Vec<f64> {
    noisegeom_data::normal_vec(
        &mut noisegeom_data::seeded_rng(seed, "test-vector"),
        len,
        1.0,
    )
}
