use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::*;

type F64 = NdArray<f64>;
type Ad = Autodiff<F64>;
type Ad2 = Autodiff<Ad>;

fn dev() -> burn::tensor::Device<F64> {
    Default::default()
}

/// Every model kind, tiny, with the input shape it expects and its output count.
pub(crate) fn zoo() -> Vec<(ModelConfig, Vec<usize>, usize)> {
    let toml_models = [
        ("kind = \"linear\"\nbias = true", vec![5], 1),
        ("kind = \"two_layer_linear\"\nwidth = 4", vec![5], 2),
        ("kind = \"diagonal\"", vec![5], 1),
        (
            "kind = \"two_layer\"\nwidth = 6\nactivation = \"tanh\"",
            vec![5],
            1,
        ),
        (
            "kind = \"two_layer\"\nwidth = 6\nactivation = \"smooth\"",
            vec![5],
            3,
        ),
        (
            "kind = \"two_layer\"\nwidth = 6\nactivation = \"relu\"",
            vec![5],
            1,
        ),
        (
            "kind = \"fnn\"\nhidden = [6, 5]\nactivation = \"tanh\"",
            vec![4],
            3,
        ),
        (
            "kind = \"fnn\"\nhidden = [6]\nactivation = \"relu\"",
            vec![1, 2, 2],
            2,
        ),
        (
            "kind = \"cnn\"\nchannels = [2, 3]\nactivation = \"tanh\"",
            vec![2, 4, 4],
            3,
        ),
        (
            "kind = \"cnn\"\nchannels = [2, 2, 2]\nhead = \"avg_pool\"",
            vec![1, 5, 5],
            2,
        ),
        (
            "kind = \"vgg\"\nchannels = [2, 3]\nconvs_per_block = 2\nhidden = [4]\nactivation = \"tanh\"",
            vec![1, 4, 4],
            3,
        ),
        (
            "kind = \"resnet\"\nchannels = [2, 3]\nblocks = 2",
            vec![2, 4, 4],
            2,
        ),
        (sequential::TINY, vec![2, 4, 4], 3),
        (sequential::PROJECTED, vec![1, 6, 6], 2),
    ];
    toml_models
        .into_iter()
        .map(|(t, s, c)| (toml::from_str(t).unwrap(), s, c))
        .collect()
}

fn inputs<B: Backend>(n: usize, d: usize, device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f64> = (0..n * d)
        .map(|k| ((k * 37 % 23) as f64 - 11.0) / 7.0)
        .collect();
    Tensor::from_data(TensorData::new(v, [n, d]), device)
}

/// Builds a network on the doubly nested backend whose inner parameters are leaves too,
/// so that a gradient computed in the outer graph can be differentiated again.
struct Nested<'a> {
    values: &'a [f64],
    offset: usize,
}

impl ParamSource<Ad2> for Nested<'_> {
    fn param<const D: usize>(&mut self, shape: [usize; D], _: ParamInit) -> Param<Tensor<Ad2, D>> {
        let len: usize = shape.iter().product();
        let v = self.values[self.offset..self.offset + len].to_vec();
        self.offset += len;
        let inner = Tensor::<Ad, D>::from_data(TensorData::new(v, shape), &dev()).require_grad();
        Param::from_tensor(Tensor::from_inner(inner))
    }
}

/// ||a − b|| / ||b|| (the lengths must agree).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn grad_of<B: burn::tensor::backend::AutodiffBackend + Kernels>(
    net: &Net<B>,
    x: Tensor<B, 2>,
) -> Vec<f64> {
    grad_with(net, x, &mut NoTap)
}

fn grad_with<B: burn::tensor::backend::AutodiffBackend + Kernels, T: Tap<B>>(
    net: &Net<B>,
    x: Tensor<B, 2>,
    tap: &mut T,
) -> Vec<f64> {
    let loss = net
        .forward_with(x, tap)
        .powf_scalar(2.0)
        .sum()
        .mul_scalar(0.5);
    param_grads(net, loss)
}

/// [`grad_of`] through a forward of `pass`.
fn grad_in<B: burn::tensor::backend::AutodiffBackend + Kernels>(
    net: &Net<B>,
    x: Tensor<B, 2>,
    pass: Pass,
) -> Vec<f64> {
    let loss = net
        .forward_pass(x, pass)
        .powf_scalar(2.0)
        .sum()
        .mul_scalar(0.5);
    param_grads(net, loss)
}

/// The gradient of `loss` with respect to `net`'s parameters, flat in visiting order.
fn param_grads<B: burn::tensor::backend::AutodiffBackend + Kernels>(
    net: &Net<B>,
    loss: Tensor<B, 1>,
) -> Vec<f64> {
    let grads = loss.backward();
    let mut out = Vec::new();
    struct G<'g, B: burn::tensor::backend::AutodiffBackend>(&'g B::Gradients, &'g mut Vec<f64>);
    impl<B: burn::tensor::backend::AutodiffBackend> burn::module::ModuleVisitor<B> for G<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let g = p.val().grad(self.0).unwrap_or_else(|| {
                panic!("no gradient for a parameter of shape {:?}", p.val().dims())
            });
            self.1.extend(g.into_data().iter::<f64>());
        }
    }
    burn::module::Module::visit(net, &mut G::<B>(&grads, &mut out));
    out
}

#[test]
fn every_model_survives_double_backward_and_matches_finite_differences() {
    let _graph = crate::autodiff_lock();
    for (cfg, shape, c) in zoo() {
        let arch = cfg.arch(&shape, c, 3).unwrap();
        let p = arch.num_params();
        let theta: Vec<f64> = {
            let net = Net::<F64>::build(
                arch.clone(),
                &mut RandomInit::new(&dev(), cfg.init_scheme(), 5),
            )
            .unwrap();
            flatten(&net)
        };
        assert_eq!(theta.len(), p);
        let d: usize = shape.iter().product();
        let v: Vec<f64> = (0..p).map(|k| ((k * 13 % 7) as f64 - 3.0) / 3.0).collect();

        // Exact Hv: gradient in the outer graph, then differentiate ⟨g, v⟩ in the inner one.
        let net2 = Net::<Ad2>::build(
            arch.clone(),
            &mut Nested {
                values: &theta,
                offset: 0,
            },
        )
        .unwrap();
        let out = net2.forward(inputs::<Ad2>(3, d, &dev()));
        let loss = out.powf_scalar(2.0).sum().mul_scalar(0.5);
        let g_outer = loss.backward();
        let mut gv: Option<Tensor<Ad, 1>> = None;
        let mut leaves: Vec<Tensor<Ad, 1>> = Vec::new();
        let mut off = 0;
        struct Dot<'g> {
            grads: &'g <Ad2 as burn::tensor::backend::AutodiffBackend>::Gradients,
            v: &'g [f64],
            off: &'g mut usize,
            acc: &'g mut Option<Tensor<Ad, 1>>,
        }
        impl burn::module::ModuleVisitor<Ad2> for Dot<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad2, D>>) {
                let g = p.val().grad(self.grads).unwrap().flatten::<1>(0, D - 1);
                let n = g.dims()[0];
                let vv = Tensor::<Ad, 1>::from_data(
                    TensorData::new(self.v[*self.off..*self.off + n].to_vec(), [n]),
                    &dev(),
                );
                *self.off += n;
                let term = (g * vv).sum();
                *self.acc = Some(match self.acc.take() {
                    Some(a) => a + term,
                    None => term,
                });
            }
        }
        burn::module::Module::visit(
            &net2,
            &mut Dot {
                grads: &g_outer,
                v: &v,
                off: &mut off,
                acc: &mut gv,
            },
        );
        struct Leaves<'l>(&'l mut Vec<Tensor<Ad, 1>>);
        impl burn::module::ModuleVisitor<Ad2> for Leaves<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad2, D>>) {
                // Keep the inner leaf itself (reshaping would create a new node).
                let leaf = p.val().inner();
                self.0.push(leaf.flatten::<1>(0, D - 1));
            }
        }
        burn::module::Module::visit(&net2, &mut Leaves(&mut leaves));
        let g_inner = gv.unwrap().backward();
        let mut hv = Vec::new();
        struct Read<'r>(
            &'r <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
            &'r mut Vec<f64>,
        );
        impl burn::module::ModuleVisitor<Ad2> for Read<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad2, D>>) {
                let g = p
                    .val()
                    .inner()
                    .grad(self.0)
                    .expect("inner leaf has a gradient");
                self.1.extend(g.into_data().iter::<f64>());
            }
        }
        burn::module::Module::visit(&net2, &mut Read(&g_inner, &mut hv));
        drop(leaves);

        // Central differences of the exact gradient, in f64.
        let eps = 1e-5;
        let shifted = |s: f64| {
            let t: Vec<f64> = theta.iter().zip(&v).map(|(a, b)| a + s * b).collect();
            let net = Net::<Ad>::build(arch.clone(), &mut FlatSource::new(&dev(), &t)).unwrap();
            grad_of(&net, inputs::<Ad>(3, d, &dev()))
        };
        let (gp, gm) = (shifted(eps), shifted(-eps));
        let fd: Vec<f64> = gp
            .iter()
            .zip(&gm)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect();
        let err = hv
            .iter()
            .zip(&fd)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = fd.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(
            scale > 1e-3,
            "{}: Hv is (nearly) zero, the check is vacuous",
            cfg.kind()
        );
        // ReLU nets are piecewise quadratic in θ here, so FD is exact up to rounding unless a
        // unit flips within ±1e-5, which these inputs avoid.
        assert!(
            err / scale < 1e-7,
            "{}: nested Hv vs FD relative error {:e}",
            cfg.kind(),
            err / scale
        );
    }
}

#[test]
fn flat_view_round_trips() {
    for (cfg, shape, c) in zoo() {
        let arch = cfg.arch(&shape, c, 1).unwrap();
        let net = Net::<F64>::build(
            arch.clone(),
            &mut RandomInit::new(&dev(), cfg.init_scheme(), 2),
        )
        .unwrap();
        let theta = flatten(&net);
        assert_eq!(theta.len(), arch.num_params());
        assert_eq!(
            arch.param_layout()
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum::<usize>(),
            theta.len()
        );
        let back = Net::<F64>::build(arch.clone(), &mut FlatSource::new(&dev(), &theta)).unwrap();
        assert_eq!(flatten(&back), theta);
        // Frozen: the same values, and no parameter a backward pass would differentiate.
        let frozen =
            Net::<Ad>::build(arch.clone(), &mut FlatSource::frozen(&dev(), &theta)).unwrap();
        assert_eq!(flatten(&frozen), theta);
        struct Grad(Vec<bool>);
        impl burn::module::ModuleVisitor<Ad> for Grad {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Ad, D>>) {
                self.0.push(p.val().is_require_grad());
            }
        }
        let mut g = Grad(Vec::new());
        burn::module::Module::visit(&frozen, &mut g);
        assert!(
            g.0.iter().all(|r| !r),
            "{cfg:?}: a frozen parameter requires grad"
        );
        let d: usize = shape.iter().product();
        let (a, b) = (
            net.forward(inputs(4, d, &dev())).into_data(),
            back.forward(inputs(4, d, &dev())).into_data(),
        );
        assert_eq!(a, b);
        // f32 round trip on the f32 CPU backend.
        let net32 = Net::<burn::backend::Flex>::build(
            arch.clone(),
            &mut FlatSource::new(&Default::default(), &theta),
        )
        .unwrap();
        let t32 = flatten(&net32);
        for (x, y) in t32.iter().zip(&theta) {
            assert_eq!(*x, *y as f32 as f64);
        }
        // A vector of the wrong length is an error, not a panic.
        let short = &theta[..theta.len() - 1];
        let err = Net::<F64>::build(arch, &mut FlatSource::new(&dev(), short)).unwrap_err();
        assert!(err.to_string().contains("different model"), "{err}");
    }
}

#[test]
fn dense_and_conv_match_hand_computed_values() {
    // Dense: W = [[1, 2], [3, 4], [5, 6]] ([out=3, in=2]), b = [1, 0, -1], x = [1, -1].
    // Wx + b = [1-2+1, 3-4+0, 5-6-1] = [0, -1, -2].
    let arch = Arch {
        input_shape: vec![2],
        stages: vec![Stage::Dense { out: 3, bias: true }],
    };
    let theta = [1., 2., 3., 4., 5., 6., 1., 0., -1.];
    let net = Net::<F64>::build(arch, &mut FlatSource::new(&dev(), &theta)).unwrap();
    let x = Tensor::<F64, 2>::from_data(TensorData::new(vec![1.0, -1.0], [1, 2]), &dev());
    let y: Vec<f64> = net.forward(x).into_data().iter::<f64>().collect();
    assert_eq!(y, vec![0.0, -1.0, -2.0]);

    // Conv 1→1, 2×2 kernel [[1, 0], [0, -1]], stride 1, no padding, bias 0.5, on the 3×3
    // image 1..9: out[r][c] = x[r][c] − x[r+1][c+1] + 0.5 = −4 + 0.5 everywhere; then
    // global average pool and a fixed readout of 2 gives −7.
    let arch = Arch {
        input_shape: vec![1, 3, 3],
        stages: vec![
            Stage::Conv {
                out: 1,
                kernel: 2,
                stride: 1,
                padding: 0,
                bias: true,
            },
            Stage::GlobalAvgPool,
            Stage::FixedDense {
                out: 1,
                weights: vec![2.0],
            },
        ],
    };
    let theta = [1., 0., 0., -1., 0.5];
    let net = Net::<F64>::build(arch, &mut FlatSource::new(&dev(), &theta)).unwrap();
    let x = Tensor::<F64, 2>::from_data(
        TensorData::new((1..=9).map(|v| v as f64).collect::<Vec<_>>(), [1, 9]),
        &dev(),
    );
    let y: Vec<f64> = net.forward(x).into_data().iter::<f64>().collect();
    assert_eq!(y, vec![-7.0]);
}

#[test]
fn residual_block_adds_its_input() {
    // x = [1, 2], W = [[1, 1], [0, 2]]: x + relu(W x) = [1 + 3, 2 + 4] = [4, 6], and the
    // nested block of a second save/add doubles it: 2·[4, 6] = [8, 12].
    let arch = Arch {
        input_shape: vec![2],
        stages: vec![
            Stage::SaveSkip,
            Stage::SaveSkip,
            Stage::Dense {
                out: 2,
                bias: false,
            },
            Stage::Act {
                activation: Activation::Relu,
            },
            Stage::AddSkip,
            Stage::SaveSkip,
            Stage::AddSkip,
            Stage::AddSkip,
        ],
    };
    // The outer add adds x again: 2·[4, 6] + [1, 2] = [9, 14].
    let theta = [1., 1., 0., 2.];
    let net = Net::<F64>::build(arch, &mut FlatSource::new(&dev(), &theta)).unwrap();
    let x = Tensor::<F64, 2>::from_data(TensorData::new(vec![1.0, 2.0], [1, 2]), &dev());
    let y: Vec<f64> = net.forward(x).into_data().iter::<f64>().collect();
    assert_eq!(y, vec![9.0, 14.0]);

    let bad = |stages: Vec<Stage>| {
        Arch {
            input_shape: vec![2],
            stages,
        }
        .validate()
        .unwrap_err()
        .to_string()
    };
    let dense3 = Stage::Dense {
        out: 3,
        bias: false,
    };
    assert!(bad(vec![Stage::AddSkip]).contains("no save_skip"));
    assert!(bad(vec![Stage::SaveSkip]).contains("no add_skip"));
    assert!(bad(vec![Stage::SaveSkip, dense3.clone(), Stage::AddSkip]).contains("same shape"));
    assert!(bad(vec![Stage::SwapSkip]).contains("no save_skip"));
    // The shortcut (after swap_skip) must end where the block ended.
    let dense2 = Stage::Dense {
        out: 2,
        bias: false,
    };
    let shortcut = vec![
        Stage::SaveSkip,
        dense3,
        Stage::SwapSkip,
        dense2,
        Stage::AddSkip,
    ];
    assert!(bad(shortcut).contains("same shape"));
}

#[test]
fn vgg_and_resnet_have_the_documented_layers() {
    // VGG: blocks [32, 64, 128] × 2 convs, avg-pool head: 6 convs + 1 dense.
    let vgg: ModelConfig = toml::from_str("kind = \"vgg\"").unwrap();
    let arch = vgg.arch(&[3, 32, 32], 10, 0).unwrap();
    let shapes: Vec<Vec<usize>> = arch.param_layout().into_iter().map(|(_, s)| s).collect();
    assert_eq!(shapes.len(), 14);
    assert_eq!(shapes[2], vec![32, 32, 3, 3]);
    assert_eq!(shapes[4], vec![64, 32, 3, 3]);
    assert_eq!(shapes[12], vec![10, 128]);
    // ResNet: stem + 2 stage convs + 3 blocks × 2 convs + 1 dense = 10 layers.
    let resnet: ModelConfig = toml::from_str("kind = \"resnet\"").unwrap();
    let arch = resnet.arch(&[3, 32, 32], 10, 0).unwrap();
    assert_eq!(arch.param_layout().len(), 20);
    let err = resnet.arch(&[10], 10, 0).unwrap_err().to_string();
    assert!(err.contains("image"), "{err}");
}

#[test]
fn configs_reject_unknown_keys_and_bad_shapes() {
    let err = toml::from_str::<ModelConfig>(
        "kind = \"fnn\"\nhidden = [3]\nactivation = \"relu\"\nwidht = 3",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("widht"), "{err}");
    let err = toml::from_str::<ModelConfig>("kind = \"transformer\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("transformer"), "{err}");
    let cnn: ModelConfig = toml::from_str("kind = \"cnn\"").unwrap();
    let err = cnn.arch(&[10], 10, 0).unwrap_err().to_string();
    assert!(err.contains("image"), "{err}");
    // The default CNN on CIFAR shapes: 3 convs + 1 dense.
    let arch = cnn.arch(&[3, 32, 32], 10, 0).unwrap();
    let layout = arch.param_layout();
    assert_eq!(layout.len(), 8);
    assert_eq!(layout[6].1, vec![10, 64 * 8 * 8]);
}

#[test]
fn two_layer_readout_is_fixed_plus_minus_one_over_sqrt_m() {
    let cfg: ModelConfig =
        toml::from_str("kind = \"two_layer\"\nwidth = 16\nactivation = \"relu\"").unwrap();
    let arch = cfg.arch(&[3], 1, 7).unwrap();
    assert_eq!(arch.num_params(), 16 * 3, "only W is trained");
    let Some(Stage::FixedDense { weights, .. }) = arch.stages.last() else {
        panic!("fixed readout expected")
    };
    assert!(weights.iter().all(|w| (w.abs() - 0.25).abs() < 1e-7));
    assert!(weights.iter().any(|w| *w > 0.0) && weights.iter().any(|w| *w < 0.0));
    assert_eq!(arch, cfg.arch(&[3], 1, 7).unwrap(), "signs are seeded");
}

mod passes;
mod sequential;
