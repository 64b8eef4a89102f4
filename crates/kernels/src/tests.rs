//! The host kernels against hand-written values and burn's own ops in f64.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};

use crate::conv::{ConvGeom, im2col};

type F64 = NdArray<f64>;
type Ad = Autodiff<F64>;

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
    // The only test here that records an autodiff graph: no lock against burn #5573.
    use crate::conv::{ConvShape, conv_forward, conv_input_grad, conv_param_grads};
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
