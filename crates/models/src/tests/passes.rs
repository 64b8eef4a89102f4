//! Training and first-order passes: the host kernels a [`Pass`] picks against burn's own ops.

use super::*;

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
        let net = Net::<Ad>::build(
            arch.clone(),
            &mut RandomInit::new(&dev(), cfg.init_scheme(), 3),
        )
        .unwrap();
        let d: usize = shape.iter().product();
        let x = inputs::<Ad>(5, d, &dev());
        let out_ref = net.forward(x.clone()).into_data().to_vec::<f64>().unwrap();
        let out = net
            .forward_pass(x.clone(), Pass::Train)
            .into_data()
            .to_vec::<f64>()
            .unwrap();
        let want = grad_of(&net, x.clone());
        let got = grad_in(&net, x, Pass::Train);
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
    const { assert!(<Ad as Kernels>::HOST_MEMORY) };
}

/// The affine and convolution ops of `noisegeom_kernels::flex` on `Autodiff<Flex>` (what the
/// trainer runs on the CPU, `Pass::Train`), on every zoo model: outputs and the gradient of every parameter
/// against burn's own ops on NdArray<f64> with the same (f32-representable) parameters and
/// inputs, to f32 round-off. Gradients of earlier layers pass through the ops' ∂x.
#[test]
fn the_flex_ops_match_the_f64_reference() {
    let _graph = crate::autodiff_lock();
    use burn::backend::Flex;
    type AdF = Autodiff<Flex>;
    let fdev = Default::default();
    let mut checked = 0;
    for (cfg, shape, c) in zoo() {
        let arch = cfg.arch(&shape, c, 0).unwrap();
        let net32 = Net::<AdF>::build(
            arch.clone(),
            &mut RandomInit::new(&fdev, cfg.init_scheme(), 3),
        )
        .unwrap();
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
            .forward_pass(x32.clone(), Pass::Train)
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
        let got = grad_in(&net32, x32, Pass::Train);
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
fn jvp_and_reverse<B: burn::tensor::backend::AutodiffBackend + Kernels>(
    net: &Net<B>,
    x: Tensor<B, 2>,
    tangent: &Net<B>,
) -> (Vec<f64>, Vec<f64>) {
    let (f, jv) = net.jvp(x, tangent);
    let jv = jv.expect("a nonzero direction moves every zoo model's outputs");
    let jv_host = jv.to_data().iter::<f64>().collect();
    (jv_host, param_grads(net, (f * jv).sum()))
}
