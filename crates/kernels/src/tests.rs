//! The host kernels against hand-written values and burn's own ops in f64.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};

use crate::conv::{ConvGeom, im2col};

type F64 = NdArray<f64>;
type Ad = Autodiff<F64>;

/// Tests that record an autodiff graph hold this: two threads running `backward` at once can
/// drop gradients in burn 0.21 (burn #5573).
static GRAPH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dev() -> burn::tensor::Device<F64> {
    Default::default()
}

/// ||a − b|| / ||b|| (the lengths must agree).
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Deterministic values in [−2, 2].
fn vals(len: usize, seed: usize) -> Vec<f64> {
    (0..len)
        .map(|k| (((k + seed) * 7919 % 211) as f64 - 105.0) / 53.0)
        .collect()
}

/// A convolution's sizes `(n, c_in, h, w, c_out, kernel, stride, padding)` as a
/// [`ConvShape`](crate::conv::ConvShape), with values for x, W, b and the output's cotangent.
fn conv_case(
    (n, c_in, h, w, c_out, kernel, stride, padding): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
) -> (crate::conv::ConvShape, [Vec<f64>; 4]) {
    let geom = ConvGeom {
        kernel,
        stride,
        padding,
    };
    let s = crate::conv::ConvShape::of([n, c_in, h, w], [c_out, c_in, kernel, kernel], geom);
    let out = n * c_out * s.p();
    let values = [
        vals(n * c_in * h * w, 1),
        vals(c_out * c_in * kernel * kernel, 2),
        vals(c_out, 3),
        vals(out, 4),
    ];
    (s, values)
}

#[test]
fn im2col_matches_hand_written_patches() {
    // x = 1..9 as one 3×3 plane.
    let x = Tensor::<F64, 4>::from_data(
        TensorData::new((1..=9).map(f64::from).collect::<Vec<_>>(), [1, 1, 3, 3]),
        &dev(),
    );
    let patches = |g, ones| {
        im2col(x.clone(), g, ones)
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

/// The host convolution's kernels (`conv`) against burn's conv2d and its autodiff
/// backward in f64, on kernels 1, 3 and 5, strides 1 to 3, paddings 0 to 2, odd sizes: the
/// output (patches kept or not), ∂W, ∂b and ∂x to round-off.
#[test]
fn host_conv_kernels_match_burns_conv_in_f64() {
    let _graph = GRAPH.lock().unwrap_or_else(|e| e.into_inner());
    use crate::conv::{ConvShape, conv_forward, conv_input_grad, conv_param_grads};
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    for sizes in [
        (3, 2, 5, 5, 4, 3, 1, 1),
        (2, 3, 7, 6, 5, 3, 2, 1),
        (2, 2, 6, 6, 3, 3, 2, 0),
        (3, 4, 4, 5, 2, 1, 1, 0),
        (1, 1, 8, 8, 2, 3, 1, 0),
        (2, 2, 7, 8, 3, 3, 3, 1),
        (1, 2, 6, 5, 2, 5, 2, 2),
    ] {
        let (s, [xv, wv, bv, rv]) = conv_case(sizes);
        let ConvShape {
            n,
            c_in,
            h,
            w,
            c_out,
            geom,
        } = s;
        let (kernel, stride, padding) = (geom.kernel, geom.stride, geom.padding);
        let (ho, wo) = s.out();
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

/// The host convolution's parameter gradients over more samples than one partial sum holds
/// give the same bits on 1 and 3 threads (fixed runs of samples, added in order), so a run's
/// numbers do not depend on the machine's core count.
#[test]
fn host_conv_param_grads_do_not_depend_on_the_thread_count() {
    use crate::conv::{ConvShape, conv_forward, conv_param_grads};
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
    let vals = |len: usize| -> Vec<f32> { vals(len, 0).into_iter().map(|v| v as f32).collect() };
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

/// The wgpu convolution (`device_conv`) under autodiff against the host convolution in f64
/// (itself checked against burn's above): the output (also outside autodiff), ∂x, ∂W and ∂b
/// to f32 round-off, on
/// kernels 1, 3 and 5, strides 1 to 3, paddings 0 to 2, channel counts that divide no tile,
/// a strided (transposed) input, runs of several samples in the weight gradient, and with
/// only the input or only the parameters tracked (a JVP's two layers).
#[cfg(feature = "wgpu")]
#[test]
fn device_conv_matches_the_host_conv_in_f64() {
    use crate::conv::{conv_forward, conv_input_grad, conv_param_grads};
    use crate::{Kernels, Pass};
    use burn::backend::Wgpu;
    use std::io::Write;
    let Some(adapter) = crate::device_conv::adapter() else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED device_conv_matches_the_host_conv_in_f64: no wgpu adapter (apt-get install mesa-vulkan-drivers to run it)"
        );
        return;
    };
    let _graph = GRAPH.lock().unwrap_or_else(|e| e.into_inner());
    type Ad = Autodiff<Wgpu>;
    let device = Default::default();
    let wide = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
    let got = |t: TensorData| wide(&t.convert::<f32>().to_vec::<f32>().unwrap());
    // (n, c_in, h, w, c_out, kernel, stride, padding, transposed input, tracked: x, params)
    let cases = [
        (3, 2, 5, 5, 4, 3, 1, 1, false, true, true),
        (2, 3, 7, 6, 5, 3, 2, 1, false, true, true),
        (2, 2, 6, 6, 3, 3, 2, 0, true, true, true),
        (3, 4, 4, 5, 2, 1, 1, 0, false, true, true),
        (2, 2, 7, 8, 3, 3, 3, 1, false, true, true),
        (1, 2, 6, 5, 2, 5, 2, 2, false, true, true),
        (9, 48, 11, 9, 24, 3, 2, 1, true, true, true),
        (300, 64, 5, 6, 64, 3, 2, 1, false, true, true),
        (4, 16, 8, 8, 32, 3, 1, 1, false, false, true),
        (4, 16, 8, 8, 32, 3, 1, 1, false, true, false),
    ];
    for (n, c_in, h, w, c_out, kernel, stride, padding, transposed, track_x, track_p) in cases {
        let (s, values) = conv_case((n, c_in, h, w, c_out, kernel, stride, padding));
        let case =
            format!("{s:?}, transposed {transposed}, tracked {track_x}/{track_p} on {adapter}");
        let [xv, wv, bv, rv] = values.map(|v| v.iter().map(|&a| a as f32).collect::<Vec<f32>>());
        let geom = s.geom;
        let (ho, wo) = s.out();
        let x = if transposed {
            // The same values through a view whose last two strides are swapped.
            let mut t = vec![0.0; xv.len()];
            for (i, v) in xv.iter().enumerate() {
                let (plane, yx) = (i / (h * w), i % (h * w));
                t[plane * h * w + (yx % w) * h + yx / w] = *v;
            }
            Tensor::<Ad, 4>::from_data(TensorData::new(t, [n, c_in, w, h]), &device).swap_dims(2, 3)
        } else {
            Tensor::<Ad, 4>::from_data(TensorData::new(xv.clone(), [n, c_in, h, w]), &device)
        };
        let x = if track_x { x.require_grad() } else { x };
        let wt = Tensor::<Ad, 4>::from_data(
            TensorData::new(wv.clone(), [c_out, c_in, kernel, kernel]),
            &device,
        );
        let bt = Tensor::<Ad, 1>::from_data(TensorData::new(bv.clone(), [c_out]), &device);
        let (wt, bt) = if track_p {
            (wt.require_grad(), bt.require_grad())
        } else {
            (wt, bt)
        };
        let z = crate::device_conv::conv2d(x.clone(), wt.clone(), Some(bt.clone()), geom);
        let r =
            Tensor::<Ad, 4>::from_data(TensorData::new(rv.clone(), [n, c_out, ho, wo]), &device);
        let grads = (z.clone() * r).sum().backward();
        let (xv, wv, bv, rv) = (wide(&xv), wide(&wv), wide(&bv), wide(&rv));
        let (want_z, u) = conv_forward(&xv, &wv, Some(&bv), s, true);
        assert!(rel(&got(z.into_data()), &want_z) < 1e-5, "{case}: output");
        let plain = <Wgpu as Kernels>::conv(
            x.clone().inner(),
            wt.clone().inner(),
            Some(bt.clone().inner()),
            geom,
            Pass::Generic,
        );
        assert!(
            rel(&got(plain.into_data()), &want_z) < 1e-5,
            "{case}: output outside autodiff"
        );
        if track_x {
            let dx = conv_input_grad(&rv, &wv, s);
            assert!(
                rel(&got(x.grad(&grads).unwrap().into_data()), &dx) < 1e-5,
                "{case}: ∂x"
            );
        } else {
            assert!(x.grad(&grads).is_none(), "{case}: ∂x of a constant");
        }
        if track_p {
            let (dw, db) = conv_param_grads(&rv, &u.unwrap(), s);
            assert!(
                rel(&got(wt.grad(&grads).unwrap().into_data()), &dw) < 1e-5,
                "{case}: ∂W"
            );
            assert!(
                rel(&got(bt.grad(&grads).unwrap().into_data()), &db) < 1e-5,
                "{case}: ∂b"
            );
        } else {
            assert!(wt.grad(&grads).is_none(), "{case}: ∂W of a constant");
        }
    }
}
