//! Autodiff ops of their own for the trainer's CPU backend, `Autodiff<Flex>`: an affine
//! layer and a convolution whose forward and backward run on host memory through
//! [`gemm()`](crate::gemm::gemm) ([`crate::conv`] for the convolution).
//!
//! Through burn's generic ops the affine layer is a matmul, a transpose and a broadcast bias
//! add, and each matmul output is zero-filled and copied once more by burn-flex; its
//! backward reduces the broadcast for ∂b. Here the forward is one GEMM into a buffer
//! holding the bias, and the backward writes ∂x, ∂Wᵀ and ∂b directly. ∂W is handed back as
//! the transpose of a contiguous `[in, out]` matrix: the layout the SGD update and the next
//! forward read without a copy.
//!
//! `Autodiff<Flex>`'s [`Kernels`](crate::Kernels) implementation calls them in first-order
//! passes. Under a second autodiff decorator (Hessian products) the generic ops run.

use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::BackendTypes;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Shape, Tensor, TensorData, TensorPrimitive};

use crate::conv::{ConvGeom, ConvShape, conv_forward, conv_input_grad, conv_param_grads};
use crate::gemm::{MatRef, Threads, gemm};

/// burn-flex under one autodiff decorator, the backend the trainer runs on the CPU.
pub type AdFlex = Autodiff<Flex>;
type AdTensor = <AdFlex as BackendTypes>::FloatTensorPrimitive;

/// `t`'s autodiff primitive.
fn ad<const D: usize>(t: Tensor<AdFlex, D>) -> AdTensor {
    t.into_primitive().tensor()
}

/// The inverse of [`ad`].
fn tensor<const D: usize>(t: AdTensor) -> Tensor<AdFlex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// The values of `t` in row-major order, without a copy when it is contiguous.
fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("a float tensor of burn-flex holds f32")
                .to_vec(),
        ),
    }
}

/// Calls `f` with the 2-D tensor `t` as a matrix view, in place when its strides are
/// non-negative (contiguous, or a transpose), else on a contiguous copy.
fn with_mat<R>(t: &FlexTensor, f: impl FnOnce(MatRef<f32>) -> R) -> R {
    let l = t.layout();
    let (dims, strides) = (l.shape().dims::<2>(), l.strides());
    match (usize::try_from(strides[0]), usize::try_from(strides[1])) {
        (Ok(rs), Ok(cs)) => {
            let data = &t.storage::<f32>()[l.start_offset()..];
            f(MatRef::new(data, dims[0], dims[1], rs, cs))
        }
        _ => f(MatRef::rows(&values(t), dims[0], dims[1])),
    }
}

/// `rows` copies of `b` (`[rows, b.len()]`), the buffer a GEMM then accumulates into.
fn bias_rows(b: &[f32], rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * b.len());
    for _ in 0..rows {
        out.extend_from_slice(b);
    }
    out
}

#[derive(Debug)]
struct DenseBackward;

#[derive(Clone, Debug)]
struct DenseState {
    /// `[n, in]`.
    x: FlexTensor,
    /// `[out, in]`.
    weight: FlexTensor,
}

impl Backward<Flex, 3> for DenseBackward {
    type State = DenseState;

    fn backward(self, ops: Ops<DenseState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let DenseState { x, weight } = ops.state;
        let [n, d_in] = x.layout().shape().dims::<2>();
        let d_out = weight.layout().shape().dims::<2>()[0];
        let dz = grads.consume::<Flex>(&ops.node);
        let dz = values(&dz);
        let dz_rows = MatRef::rows(&dz, n, d_out);
        if let Some(node) = x_node {
            // ∂x = ΔZ·W.
            let mut dx = vec![0.0; n * d_in];
            with_mat(&weight, |w| gemm(&mut dx, dz_rows, w, false, Threads::Auto));
            grads.register::<Flex>(node.id, flex(dx, [n, d_in]));
        }
        if let Some(node) = w_node {
            // ∂Wᵀ = xᵀ·ΔZ, contiguous `[in, out]`; ∂W is its transpose, a view.
            let mut dwt = vec![0.0; d_in * d_out];
            with_mat(&x, |x| gemm(&mut dwt, x.t(), dz_rows, false, Threads::Auto));
            let dw = Flex::float_swap_dims(flex(dwt, [d_in, d_out]), 0, 1);
            grads.register::<Flex>(node.id, dw);
        }
        if let Some(node) = b_node {
            let mut db = vec![0.0f32; d_out];
            for row in dz.chunks_exact(d_out) {
                db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            grads.register::<Flex>(node.id, flex(db, [d_out]));
        }
    }
}

/// `x·Wᵀ + b` on `Autodiff<Flex>` (a missing bias is a constant zero): `x: [n, in]`,
/// `w: [out, in]`, `b: [out]`.
pub fn affine(
    x: Tensor<AdFlex, 2>,
    w: Tensor<AdFlex, 2>,
    b: Option<Tensor<AdFlex, 1>>,
) -> Tensor<AdFlex, 2> {
    let [n, _] = x.dims();
    let [d_out, _] = w.dims();
    let b = b.unwrap_or_else(|| Tensor::zeros([d_out], &w.device()));
    let (x, w, b) = (ad(x), ad(w), ad(b));
    let mut z = bias_rows(&values(&b.primitive), n);
    with_mat(&x.primitive, |xm| {
        with_mat(&w.primitive, |wm| {
            gemm(&mut z, xm, wm.t(), true, Threads::Auto)
        })
    });
    let z = flex(z, [n, d_out]);
    let out = match DenseBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            DenseState {
                x: x.primitive,
                weight: w.primitive,
            },
            z,
        ),
        OpsKind::UnTracked(prep) => prep.finish(z),
    };
    tensor(out)
}

#[derive(Debug)]
struct ConvBackward;

#[derive(Clone, Debug)]
struct ConvState {
    /// `[n, c_in·k², h'·w']`, kept when the weight or the bias is tracked (their
    /// gradients read them; the input's does not).
    patches: Option<Arc<Vec<f32>>>,
    /// `[c_out, c_in, k, k]`.
    weight: FlexTensor,
    shape: ConvShape,
}

impl Backward<Flex, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, w, b] = ops.parents;
        let ConvState {
            patches,
            weight,
            shape: s,
        } = ops.state;
        let dz = grads.consume::<Flex>(&ops.node);
        let dz = values(&dz);
        if let Some(x) = x {
            let dx = conv_input_grad(&dz, &values(&weight), s);
            grads.register::<Flex>(x.id, flex(dx, [s.n, s.c_in, s.h, s.w]));
        }
        if w.is_some() || b.is_some() {
            let patches = patches.expect("kept for a tracked weight or bias");
            let (dw, db) = conv_param_grads(&dz, &patches, s);
            let k = s.geom.kernel;
            if let Some(w) = w {
                grads.register::<Flex>(w.id, flex(dw, [s.c_out, s.c_in, k, k]));
            }
            if let Some(b) = b {
                grads.register::<Flex>(b.id, flex(db, [s.c_out]));
            }
        }
    }
}

/// `conv2d(x, w) + b` on `Autodiff<Flex>` by [`crate::conv`]'s kernels (a missing bias is a
/// constant zero). `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`.
pub fn conv2d(
    x: Tensor<AdFlex, 4>,
    w: Tensor<AdFlex, 4>,
    b: Option<Tensor<AdFlex, 1>>,
    geom: ConvGeom,
) -> Tensor<AdFlex, 4> {
    let s = ConvShape::of(x.dims(), w.dims(), geom);
    let b = b.unwrap_or_else(|| Tensor::zeros([s.c_out], &w.device()));
    let (x, w, b) = (ad(x), ad(w), ad(b));
    let run = |keep: bool| {
        conv_forward(
            &values(&x.primitive),
            &values(&w.primitive),
            Some(&values(&b.primitive)),
            s,
            keep,
        )
    };
    let (ho, wo) = s.out();
    let out_shape = [s.n, s.c_out, ho, wo];
    let out = match ConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // A JVP's tangent layer holds a constant dθ: only ∂x is formed, from W alone.
            let params = !(w.node.requirement.is_none() && b.node.requirement.is_none());
            let (z, u) = run(params);
            let state = ConvState {
                patches: params.then(|| Arc::new(u.expect("the patches are kept when asked"))),
                weight: w.primitive.clone(),
                shape: s,
            };
            prep.finish(state, flex(z, out_shape))
        }
        OpsKind::UnTracked(prep) => prep.finish(flex(run(false).0, out_shape)),
    };
    tensor(out)
}
