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

fn grad_of<B: burn::tensor::backend::AutodiffBackend>(net: &Net<B>, x: Tensor<B, 2>) -> Vec<f64> {
    grad_with(net, x, &mut NoTap)
}

fn grad_with<B: burn::tensor::backend::AutodiffBackend, T: Tap<B>>(
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

/// The gradient of `loss` with respect to `net`'s parameters, flat in visiting order.
fn param_grads<B: burn::tensor::backend::AutodiffBackend>(
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
            let net = Net::<F64>::build(arch.clone(), &mut RandomInit::new(&dev(), cfg.init(), 5))
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
        let net =
            Net::<F64>::build(arch.clone(), &mut RandomInit::new(&dev(), cfg.init(), 2)).unwrap();
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
    assert!(bad(vec![Stage::SaveSkip, dense3, Stage::AddSkip]).contains("keep its shape"));
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

#[test]
fn im2col_matches_hand_written_patches() {
    // x = 1..9 as one 3×3 plane.
    let x = Tensor::<F64, 4>::from_data(
        TensorData::new((1..=9).map(f64::from).collect::<Vec<_>>(), [1, 1, 3, 3]),
        &dev(),
    );
    let patches = |g, ones| {
        layers::im2col(x.clone(), g, ones)
            .into_data()
            .to_vec::<f64>()
            .unwrap()
    };
    // k = 2, stride 1, no padding: rows (ky, kx) = (0,0), (0,1), (1,0), (1,1) over the 2×2
    // output positions.
    let g = ConvGeom {
        kernel: 2,
        stride: 1,
        padding: 0,
    };
    #[rustfmt::skip]
    let want = [1., 2., 4., 5.,  2., 3., 5., 6.,  4., 5., 7., 8.,  5., 6., 8., 9.];
    assert_eq!(patches(g, false), want);
    // With the row of ones (the bias's) last.
    let with_ones = patches(g, true);
    assert_eq!(&with_ones[..16], &want);
    assert_eq!(&with_ones[16..], &[1.0; 4]);
    // k = 3, stride 2, padding 1: output 2×2 at input centres (0,0), (0,2), (2,0), (2,2);
    // row (ky, kx) reads x[2·oy + ky − 1][2·ox + kx − 1], zero outside.
    let g = ConvGeom {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    let got = patches(g, false);
    let at = |iy: isize, ix: isize| {
        if (0..3).contains(&iy) && (0..3).contains(&ix) {
            (iy * 3 + ix + 1) as f64
        } else {
            0.0
        }
    };
    for ky in 0..3 {
        for kx in 0..3 {
            for oy in 0..2 {
                for ox in 0..2 {
                    let want = at(2 * oy + ky - 1, 2 * ox + kx - 1);
                    let r = (ky * 3 + kx) as usize;
                    assert_eq!(got[r * 4 + (oy * 2 + ox) as usize], want, "row {r}");
                }
            }
        }
    }
    // The corner row (0, 0) by hand: only output (1, 1) sees x[1][1] = 5.
    assert_eq!(&got[..4], &[0., 0., 0., 5.]);
}

/// The GEMM weight gradient (host im2col) against burn's own conv backward, on every zoo model
/// with convolutions (strides 1 and 2, padding, a residual block), in f64: the same outputs
/// and the same gradient of every parameter to round-off.
#[test]
fn host_conv_weight_grad_matches_the_backend_conv_backward() {
    let _graph = crate::autodiff_lock();
    let mut checked = 0;
    for (cfg, shape, c) in zoo() {
        let arch = cfg.arch(&shape, c, 0).unwrap();
        let has_conv = arch.stages.iter().any(|s| matches!(s, Stage::Conv { .. }));
        if !has_conv {
            continue;
        }
        let net =
            Net::<Ad>::build(arch.clone(), &mut RandomInit::new(&dev(), cfg.init(), 3)).unwrap();
        let d: usize = shape.iter().product();
        let x = inputs::<Ad>(5, d, &dev());
        let out_ref = net.forward(x.clone()).into_data().to_vec::<f64>().unwrap();
        let out = net
            .forward_with(x.clone(), &mut TrainOps::Host)
            .into_data()
            .to_vec::<f64>()
            .unwrap();
        let want = grad_of(&net, x.clone());
        let got = grad_with(&net, x, &mut TrainOps::Host);
        assert!(rel(&out, &out_ref) < 1e-13, "{cfg:?}: outputs");
        assert_eq!(got.len(), want.len());
        assert!(
            rel(&got, &want) < 1e-12,
            "{cfg:?}: gradient rel. error {:e}",
            rel(&got, &want)
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} conv models in the zoo");
    assert_eq!(TrainOps::for_device::<Ad>(&dev()), TrainOps::Host);
}

/// The host convolution's kernels (`conv_host`) against burn's conv2d and its autodiff
/// backward in f64, on kernels 1, 3 and 5, strides 1 to 3, paddings 0 to 2, odd sizes: the
/// output (patches kept or not), ∂W, ∂b and ∂x to round-off.
#[test]
fn host_conv_kernels_match_burns_conv_in_f64() {
    let _graph = crate::autodiff_lock();
    use crate::conv_host::{ConvShape, conv_forward, conv_input_grad, conv_param_grads};
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    let vals = |len: usize, seed: usize| -> Vec<f64> {
        (0..len)
            .map(|k| (((k + seed) * 7919 % 211) as f64 - 105.0) / 53.0)
            .collect()
    };
    for (n, c_in, h, w, c_out, kernel, stride, padding) in [
        (3, 2, 5, 5, 4, 3, 1, 1),
        (2, 3, 7, 6, 5, 3, 2, 1),
        (2, 2, 6, 6, 3, 3, 2, 0),
        (3, 4, 4, 5, 2, 1, 1, 0),
        (1, 1, 8, 8, 2, 3, 1, 0),
        (2, 2, 7, 8, 3, 3, 3, 1),
        (1, 2, 6, 5, 2, 5, 2, 2),
    ] {
        let geom = ConvGeom {
            kernel,
            stride,
            padding,
        };
        let s = ConvShape {
            n,
            c_in,
            h,
            w,
            c_out,
            geom,
        };
        let (xv, wv, bv) = (
            vals(n * c_in * h * w, 1),
            vals(c_out * c_in * kernel * kernel, 2),
            vals(c_out, 3),
        );
        let (ho, wo) = (geom.out_len(h), geom.out_len(w));
        let rv = vals(n * c_out * ho * wo, 4);
        let x = Tensor::<Ad, 4>::from_data(TensorData::new(xv.clone(), [n, c_in, h, w]), &dev())
            .require_grad();
        let wt = Tensor::<Ad, 4>::from_data(
            TensorData::new(wv.clone(), [c_out, c_in, kernel, kernel]),
            &dev(),
        )
        .require_grad();
        let bt =
            Tensor::<Ad, 1>::from_data(TensorData::new(bv.clone(), [c_out]), &dev()).require_grad();
        let z = conv2d(
            x.clone(),
            wt.clone(),
            Some(bt.clone()),
            ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1),
        );
        let r = Tensor::<Ad, 4>::from_data(TensorData::new(rv.clone(), [n, c_out, ho, wo]), &dev());
        let grads = (z.clone() * r).sum().backward();
        let f = |t: TensorData| t.to_vec::<f64>().unwrap();
        let want_z = f(z.into_data());
        let (got_z, u) = conv_forward(&xv, &wv, Some(&bv), s, true);
        let (got_z_unkept, none) = conv_forward(&xv, &wv, Some(&bv), s, false);
        assert!(none.is_none());
        let case = format!("{s:?}");
        assert!(rel(&got_z, &want_z) < 1e-14, "{case}: output");
        assert_eq!(got_z, got_z_unkept, "{case}: output without kept patches");
        let (dw, db) = conv_param_grads(&rv, &u.unwrap(), s);
        let dx = conv_input_grad(&rv, &wv, s);
        assert!(
            rel(&dw, &f(wt.grad(&grads).unwrap().into_data())) < 1e-13,
            "{case}: ∂W"
        );
        assert!(
            rel(&db, &f(bt.grad(&grads).unwrap().into_data())) < 1e-13,
            "{case}: ∂b"
        );
        assert!(
            rel(&dx, &f(x.grad(&grads).unwrap().into_data())) < 1e-13,
            "{case}: ∂x"
        );
        // Without a bias the output is W·U alone.
        let (z0, _) = conv_forward(&xv, &wv, None, s, false);
        let p = ho * wo;
        for (i, (a, b)) in z0.iter().zip(&got_z).enumerate() {
            assert!(
                (a + bv[i / p % c_out] - b).abs() < 1e-12,
                "{case}: bias at {i}"
            );
        }
    }
}

/// The affine and convolution ops of `flex_ops` on `Autodiff<Flex>` (what the trainer runs on
/// the CPU, `TrainOps::Host`), on every zoo model: outputs and the gradient of every parameter
/// against burn's own ops on NdArray<f64> with the same (f32-representable) parameters and
/// inputs, to f32 round-off. Gradients of earlier layers pass through the ops' ∂x.
#[test]
fn the_flex_ops_match_the_f64_reference() {
    let _graph = crate::autodiff_lock();
    use burn::backend::Flex;
    type AdF = Autodiff<Flex>;
    assert!(crate::flex_ops::is_autodiff_flex::<AdF>());
    assert!(!crate::flex_ops::is_autodiff_flex::<Ad>());
    assert!(!crate::flex_ops::is_autodiff_flex::<Autodiff<AdF>>());
    let fdev = Default::default();
    let mut checked = 0;
    for (cfg, shape, c) in zoo() {
        let arch = cfg.arch(&shape, c, 0).unwrap();
        let net32 =
            Net::<AdF>::build(arch.clone(), &mut RandomInit::new(&fdev, cfg.init(), 3)).unwrap();
        let theta = flatten(&net32);
        let net64 = Net::<Ad>::build(arch.clone(), &mut FlatSource::new(&dev(), &theta)).unwrap();
        let d: usize = shape.iter().product();
        // Inputs in sevenths, rounded to f32 for both.
        let x64 = inputs::<Ad>(5, d, &dev());
        let xv: Vec<f32> = x64.to_data().iter::<f64>().map(|v| v as f32).collect();
        let x64 = Tensor::<Ad, 2>::from_data(
            TensorData::new(xv.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), [5, d]),
            &dev(),
        );
        let x32 = Tensor::<AdF, 2>::from_data(TensorData::new(xv, [5, d]), &fdev);
        let out_want = net64
            .forward(x64.clone())
            .into_data()
            .to_vec::<f64>()
            .unwrap();
        let out_got: Vec<f64> = net32
            .forward_with(x32.clone(), &mut TrainOps::Host)
            .into_data()
            .iter::<f64>()
            .collect();
        // Forward mode and reverse over it (the metrics' Jv and Hv route): on
        // `Autodiff<Flex>` the JVP's parametric layers run on the host ops.
        let v: Vec<f64> = (0..theta.len())
            .map(|k| ((k * 29 % 19) as f64 - 9.0) / 8.0)
            .collect();
        let t32 = Net::<AdF>::build(arch.clone(), &mut FlatSource::frozen(&fdev, &v)).unwrap();
        let t64 = Net::<Ad>::build(arch, &mut FlatSource::frozen(&dev(), &v)).unwrap();
        let (jv_want, rof_want) = jvp_and_reverse(&net64, x64.clone(), &t64);
        let (jv_got, rof_got) = jvp_and_reverse(&net32, x32.clone(), &t32);
        let want = grad_of(&net64, x64);
        let got = grad_with(&net32, x32, &mut TrainOps::Host);
        assert!(rel(&out_got, &out_want) < 1e-6, "{cfg:?}: outputs");
        assert_eq!(got.len(), want.len());
        assert!(
            rel(&got, &want) < 1e-5,
            "{cfg:?}: gradient rel. error {:e}",
            rel(&got, &want)
        );
        assert!(rel(&jv_got, &jv_want) < 1e-5, "{cfg:?}: J·v");
        assert_eq!(rof_got.len(), rof_want.len());
        assert!(
            rel(&rof_got, &rof_want) < 1e-5,
            "{cfg:?}: ∇(f·Jv) rel. error {:e}",
            rel(&rof_got, &rof_want)
        );
        checked += 1;
    }
    assert_eq!(checked, zoo().len());
}

/// J·v along the direction held by `tangent`, and the gradient of Σ f ⊙ J·v with respect to
/// `net`'s parameters (reverse over forward, as the metrics' Hv takes it).
fn jvp_and_reverse<B: burn::tensor::backend::AutodiffBackend>(
    net: &Net<B>,
    x: Tensor<B, 2>,
    tangent: &Net<B>,
) -> (Vec<f64>, Vec<f64>) {
    let (f, jv) = net.jvp(x, tangent);
    let jv = jv.expect("a nonzero direction moves every zoo model's outputs");
    let jv_host = jv.to_data().iter::<f64>().collect();
    (jv_host, param_grads(net, (f * jv).sum()))
}

/// The host convolution's parameter gradients over more samples than one partial sum holds
/// give the same bits on 1 and 3 threads (fixed runs of samples, added in order), so a run's
/// numbers do not depend on the machine's core count.
#[test]
fn host_conv_param_grads_do_not_depend_on_the_thread_count() {
    use crate::conv_host::{ConvShape, conv_forward, conv_param_grads};
    let s = ConvShape {
        n: 41,
        c_in: 2,
        h: 6,
        w: 5,
        c_out: 3,
        geom: ConvGeom {
            kernel: 3,
            stride: 2,
            padding: 1,
        },
    };
    let vals = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|k| ((k * 7919 % 211) as f32 - 105.0) / 53.0)
            .collect()
    };
    let x = vals(s.n * s.c_in * s.h * s.w);
    let dz = vals(s.n * s.c_out * s.p());
    let (_, u) = conv_forward(&x, &vals(s.c_out * s.k()), None, s, true);
    let u = u.unwrap();
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| conv_param_grads(&dz, &u, s))
    };
    let one = on(1);
    assert_eq!(one, on(3));
    assert!(one.0.iter().any(|&v| v != 0.0));
}
