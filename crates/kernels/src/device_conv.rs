//! A convolution of its own for burn's wgpu backend, forward and backward, as three cubecl
//! kernels on NCHW tensors, and the autodiff op that runs them in first-order passes.
//!
//! This build compiles wgpu's kernels to WGSL (burn's `vulkan` and `metal` features, which
//! compile to SPIR-V and MSL, stay off), and cubecl has no cooperative-matrix ops in WGSL, so
//! burn 0.21's convolution there is its direct fallback: input and output permuted to NHWC
//! and back around every call; the weight gradient as one convolution whose "kernel" is the
//! whole output plane, so that only `c_out·c_in·k²` threads each sum over the whole batch;
//! the input gradient as a matmul and a col2im pass. Here each pass is one kernel on the
//! layouts the model already holds, every thread keeping a tile of outputs in registers:
//! - forward: `t` output channels × `u` neighbouring output pixels of one sample and row;
//! - input gradient: `t` input channels × `u` input pixels of one row that share their
//!   kernel taps (the same `x mod stride`); neighbouring threads differ in pixels and
//!   samples only, so a group of them branches alike;
//! - weight gradient: `t` output channels × all `k²` taps of one input channel, over one run
//!   of samples; the runs' partial sums (enough runs to keep a GPU busy) are added by a
//!   reduction after.
//!
//! The numbers agree with the host f64 convolution to f32 round-off (`tests.rs`); the
//! measured effect is in docs/performance.md.

use burn::backend::Autodiff;
use burn::backend::Wgpu;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::wgpu::{CubeBackend, CubeTensor, WgpuRuntime};
use burn::tensor::backend::BackendTypes;
use burn::tensor::{DType, Tensor as BTensor, TensorPrimitive};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::*;

use crate::ConvGeom;
use crate::conv::ConvShape;

type Cube = CubeBackend<WgpuRuntime, f32, i32, u32>;
type FusedRuntime = <Cube as FusionBackend>::FusionRuntime;
type Fused = FusionTensor<FusedRuntime>;
type AdWgpu = Autodiff<Wgpu>;
type AdTensor = <AdWgpu as BackendTypes>::FloatTensorPrimitive;

/// The sizes every kernel reads.
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct Dims {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    ho: u32,
    wo: u32,
    stride: u32,
    pad: u32,
    /// Samples per partial sum of the weight gradient, and the number of partial sums.
    per_run: u32,
    runs: u32,
}

/// `dst[i] = src[base + (first + step·i)·stride]` for `i < u`, zero where `first + step·i`
/// falls outside `0..len` (the padding).
#[cube]
fn load_row(
    src: &Tensor<f32>,
    base: usize,
    stride: usize,
    first: i32,
    step: i32,
    len: i32,
    dst: &mut Array<f32>,
    #[comptime] u: u32,
) {
    #[unroll]
    for i in 0..u {
        let at = first + step * i as i32;
        let inside = at >= 0 && at < len;
        let clamped = clamp(at, 0, len - 1) as usize;
        dst[i as usize] = select(inside, src[base + clamped * stride], 0.0);
    }
}

/// `dst[j] = src[base + j·stride]` for `j < t`.
#[cube]
fn load_strided(
    src: &Tensor<f32>,
    base: usize,
    stride: usize,
    dst: &mut Array<f32>,
    #[comptime] t: u32,
) {
    #[unroll]
    for j in 0..t {
        dst[j as usize] = src[base + j as usize * stride];
    }
}

/// `acc[j·u + i] += a[i]·b[j]`: the register tile's update.
#[cube]
fn outer_add(
    acc: &mut Array<f32>,
    a: &Array<f32>,
    b: &Array<f32>,
    #[comptime] t: u32,
    #[comptime] u: u32,
) {
    #[unroll]
    for j in 0..t {
        #[unroll]
        for i in 0..u {
            acc[(j * u + i) as usize] += a[i as usize] * b[j as usize];
        }
    }
}

/// Writes the tile `acc[j·u + i]` to `out[base + j·plane + first + step·i]` for the pixels
/// `first + step·i < len`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_tile(
    out: &mut Tensor<f32>,
    acc: &Array<f32>,
    base: u32,
    plane: u32,
    first: u32,
    step: u32,
    len: u32,
    #[comptime] t: u32,
    #[comptime] u: u32,
) {
    #[unroll]
    for i in 0..u {
        let at = first + step * i;
        if at < len {
            #[unroll]
            for j in 0..t {
                out[(base + j * plane + at) as usize] = acc[(j * u + i) as usize];
            }
        }
    }
}

/// `y[n, co, oy, ox] = b[co] + Σ x[n, ci, oy·s + kh − p, ox·s + kw − p] · w[co, ci, kh, kw]`.
/// One thread: sample `n`, output channels `co0..co0 + t`, row `oy`, pixels `ox0..ox0 + u`.
#[cube(launch)]
fn forward_kernel(
    x: &Tensor<f32>,
    wt: &Tensor<f32>,
    b: &Tensor<f32>,
    out: &mut Tensor<f32>,
    d: Dims,
    #[comptime] k: u32,
    #[comptime] t: u32,
    #[comptime] u: u32,
) {
    let tiles = d.c_out / t;
    let qt = d.wo.div_ceil(u);
    let pos = ABSOLUTE_POS as u32;
    if pos >= d.n * tiles * d.ho * qt {
        terminate!();
    }
    let ox0 = (pos % qt) * u;
    let r = pos / qt;
    let oy = r % d.ho;
    let r = r / d.ho;
    let co0 = (r % tiles) * t;
    let n = r / tiles;
    let mut acc = Array::<f32>::new(comptime!((t * u) as usize));
    #[unroll]
    for j in 0..t {
        let bj = b[(co0 + j) as usize * b.stride(0)];
        #[unroll]
        for i in 0..u {
            acc[(j * u + i) as usize] = bj;
        }
    }
    let mut xv = Array::<f32>::new(comptime!(u as usize));
    let mut wv = Array::<f32>::new(comptime!(t as usize));
    let iy0 = (oy * d.stride) as i32 - d.pad as i32;
    for ci in 0..d.c_in {
        let xb = n as usize * x.stride(0) + ci as usize * x.stride(1);
        let wb = co0 as usize * wt.stride(0) + ci as usize * wt.stride(1);
        for kh in 0..k {
            let iy = iy0 + kh as i32;
            if iy >= 0 && iy < d.h as i32 {
                let xr = xb + iy as usize * x.stride(2);
                for kw in 0..k {
                    let ix0 = (ox0 * d.stride + kw) as i32 - d.pad as i32;
                    load_row(
                        x,
                        xr,
                        x.stride(3),
                        ix0,
                        d.stride as i32,
                        d.w as i32,
                        &mut xv,
                        u,
                    );
                    let wk = wb + kh as usize * wt.stride(2) + kw as usize * wt.stride(3);
                    load_strided(wt, wk, wt.stride(0), &mut wv, t);
                    outer_add(&mut acc, &xv, &wv, t, u);
                }
            }
        }
    }
    let row = ((n * d.c_out + co0) * d.ho + oy) * d.wo;
    store_tile(out, &acc, row, d.ho * d.wo, ox0, 1, d.wo, t, u);
}

/// `∂x[n, ci, y, x] = Σ ∂y[n, co, oy, ox] · w[co, ci, kh, kw]` over `y = oy·s + kh − p`,
/// `x = ox·s + kw − p`. One thread: sample `n`, input channels `ci0..ci0 + t`, row `y`, the
/// `u` pixels `x = px + s·(q0 + i)` of one residue `px`, which all take the same taps.
#[cube(launch)]
fn input_grad_kernel(
    dy: &Tensor<f32>,
    wt: &Tensor<f32>,
    out: &mut Tensor<f32>,
    d: Dims,
    #[comptime] k: u32,
    #[comptime] t: u32,
    #[comptime] u: u32,
) {
    let qt = d.w.div_ceil(d.stride).div_ceil(u);
    let tiles = d.c_in / t;
    let pos = ABSOLUTE_POS as u32;
    if pos >= d.n * tiles * d.h * d.stride * qt {
        terminate!();
    }
    // Neighbouring threads differ in pixels and samples, not in `y mod s` or `px`: they take
    // the same taps, so a group of them branches alike.
    let q0 = (pos % qt) * u;
    let r = pos / qt;
    let n = r % d.n;
    let r = r / d.n;
    let ci0 = (r % tiles) * t;
    let r = r / tiles;
    let px = r % d.stride;
    let y = r / d.stride;
    let mut acc = Array::<f32>::new(comptime!((t * u) as usize));
    #[unroll]
    for j in 0..t * u {
        acc[j as usize] = 0.0;
    }
    let mut g = Array::<f32>::new(comptime!(u as usize));
    let mut wv = Array::<f32>::new(comptime!(t as usize));
    // Shifts by s·k keep the residues of these possibly negative offsets exact.
    let lift = (d.stride * k) as i32;
    for kh in 0..k {
        let ny = (y + d.pad) as i32 - kh as i32;
        if ny >= 0 && (ny as u32).is_multiple_of(d.stride) && ny as u32 / d.stride < d.ho {
            let oy = ny as u32 / d.stride;
            for kw in 0..k {
                // x + p − kw = (px + p − kw) + s·q: a multiple of s for every q at once.
                let c = (px + d.pad) as i32 - kw as i32;
                if ((c + lift) as u32).is_multiple_of(d.stride) {
                    let shift = (c + lift) / d.stride as i32 - k as i32;
                    let db = n as usize * dy.stride(0) + oy as usize * dy.stride(2);
                    let wb = ci0 as usize * wt.stride(1)
                        + kh as usize * wt.stride(2)
                        + kw as usize * wt.stride(3);
                    for co in 0..d.c_out {
                        let dc = db + co as usize * dy.stride(1);
                        let ox0 = q0 as i32 + shift;
                        load_row(dy, dc, dy.stride(3), ox0, 1, d.wo as i32, &mut g, u);
                        let wc = wb + co as usize * wt.stride(0);
                        load_strided(wt, wc, wt.stride(1), &mut wv, t);
                        outer_add(&mut acc, &g, &wv, t, u);
                    }
                }
            }
        }
    }
    let row = ((n * d.c_in + ci0) * d.h + y) * d.w;
    store_tile(
        out,
        &acc,
        row,
        d.h * d.w,
        px + d.stride * q0,
        d.stride,
        d.w,
        t,
        u,
    );
}

/// Partial weight gradients `out[run, co, ci, kh, kw] = Σ ∂y[n, co, oy, ox] · x[n, ci, iy, ix]`
/// over the run's samples. One thread: run, output channels `co0..co0 + t`, input channel
/// `ci`, all `k²` taps.
#[cube(launch)]
fn weight_grad_kernel(
    x: &Tensor<f32>,
    dy: &Tensor<f32>,
    out: &mut Tensor<f32>,
    d: Dims,
    #[comptime] k: u32,
    #[comptime] t: u32,
) {
    let tiles = d.c_out / t;
    let pos = ABSOLUTE_POS as u32;
    if pos >= d.runs * tiles * d.c_in {
        terminate!();
    }
    let ci = pos % d.c_in;
    let r = pos / d.c_in;
    let co0 = (r % tiles) * t;
    let run = r / tiles;
    let mut acc = Array::<f32>::new(comptime!((t * k * k) as usize));
    #[unroll]
    for j in 0..t * k * k {
        acc[j as usize] = 0.0;
    }
    let mut g = Array::<f32>::new(comptime!(t as usize));
    let first = run * d.per_run;
    let end = clamp_max(first + d.per_run, d.n);
    for s in first..end {
        let xb = s as usize * x.stride(0) + ci as usize * x.stride(1);
        let db = s as usize * dy.stride(0) + co0 as usize * dy.stride(1);
        for oy in 0..d.ho {
            let iy0 = (oy * d.stride) as i32 - d.pad as i32;
            let dr = db + oy as usize * dy.stride(2);
            for ox in 0..d.wo {
                load_strided(dy, dr + ox as usize * dy.stride(3), dy.stride(1), &mut g, t);
                let ix0 = (ox * d.stride) as i32 - d.pad as i32;
                #[unroll]
                for kh in 0..k {
                    let iy = iy0 + kh as i32;
                    if iy >= 0 && iy < d.h as i32 {
                        let xr = xb + iy as usize * x.stride(2);
                        #[unroll]
                        for kw in 0..k {
                            let ix = ix0 + kw as i32;
                            if ix >= 0 && ix < d.w as i32 {
                                let v = x[xr + ix as usize * x.stride(3)];
                                #[unroll]
                                for j in 0..t {
                                    acc[((j * k + kh) * k + kw) as usize] += g[j as usize] * v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let ob = ((run * d.c_out + co0) * d.c_in + ci) * k * k;
    #[unroll]
    for j in 0..t {
        #[unroll]
        for kk in 0..k * k {
            out[(ob + j * d.c_in * k * k + kk) as usize] = acc[(j * k * k + kk) as usize];
        }
    }
}

/// Threads (`c_out·c_in / t` per run of samples) the weight gradient aims for: enough for a
/// GPU's cores, each thread summing over at least one sample.
const WEIGHT_GRAD_THREADS: usize = 1 << 16;

/// The weight gradient's runs of samples: (samples per run, runs).
fn runs(d: &ConvShape) -> (usize, usize) {
    let per_run = d.c_out / weight_grad_tile(d) * d.c_in;
    let runs = (WEIGHT_GRAD_THREADS / per_run).clamp(1, d.n);
    let per_run = d.n.div_ceil(runs);
    (per_run, d.n.div_ceil(per_run))
}

fn launch_dims(d: &ConvShape) -> DimsLaunch<WgpuRuntime> {
    let (ho, wo) = d.out();
    let (per_run, runs) = runs(d);
    let u = |v: usize| u32::try_from(v).expect("a convolution size fits in u32");
    DimsLaunch::new(
        u(d.n),
        u(d.c_in),
        u(d.h),
        u(d.w),
        u(d.c_out),
        u(ho),
        u(wo),
        u(d.geom.stride),
        u(d.geom.padding),
        u(per_run),
        u(runs),
    )
}

/// The largest of `max`, `max/2`, …, 1 that divides `c`: a register tile of channels.
fn tile(c: usize, max: usize) -> usize {
    let mut t = max;
    while !c.is_multiple_of(t) {
        t /= 2;
    }
    t
}

/// Output channels per thread of the weight gradient, whose `t·k²` sums stay in registers.
fn weight_grad_tile(d: &ConvShape) -> usize {
    let k2 = d.geom.kernel * d.geom.kernel;
    // At most 72 sums: 8 channels of a 3×3 kernel, 2 of a 5×5, 16 of a 1×1.
    let most = (72 / k2).clamp(1, 16);
    tile(d.c_out, 1 << most.ilog2())
}

/// Output pixels per thread in the forward and input-gradient kernels.
const PIXELS: usize = 8;

/// A contiguous f32 tensor of `shape` on `like`'s device, uninitialised.
fn empty(like: &CubeTensor<WgpuRuntime>, shape: Vec<usize>) -> CubeTensor<WgpuRuntime> {
    let bytes = shape.iter().product::<usize>() * size_of::<f32>();
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        like.client.empty(bytes),
        DType::F32,
    )
}

/// One launch over `threads` threads on `out`'s device.
fn grid(out: &CubeTensor<WgpuRuntime>, threads: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d(256);
    (
        cubecl::calculate_cube_count_elemwise(&out.client, threads, dim),
        dim,
    )
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// Inputs `x, w, b`: the output `[n, c_out, h', w']`.
    Forward,
    /// Inputs `∂y, w`: `∂x`, `[n, c_in, h, w]`.
    InputGrad,
    /// Inputs `x, ∂y`: the partial weight gradients, `[runs, c_out, c_in, k, k]`.
    WeightGrad,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Forward => "noisegeom_conv_forward",
            Stage::InputGrad => "noisegeom_conv_input_grad",
            Stage::WeightGrad => "noisegeom_conv_weight_grad",
        }
    }

    fn out_shape(self, d: &ConvShape) -> Vec<usize> {
        let (ho, wo) = d.out();
        let k = d.geom.kernel;
        match self {
            Stage::Forward => vec![d.n, d.c_out, ho, wo],
            Stage::InputGrad => vec![d.n, d.c_in, d.h, d.w],
            Stage::WeightGrad => vec![runs(d).1, d.c_out, d.c_in, k, k],
        }
    }

    /// Runs the stage's kernel on device tensors.
    fn run(self, d: &ConvShape, inputs: Vec<CubeTensor<WgpuRuntime>>) -> CubeTensor<WgpuRuntime> {
        let out = empty(&inputs[0], self.out_shape(d));
        let (ho, wo) = d.out();
        let k = d.geom.kernel as u32;
        let client = out.client.clone();
        let mut inputs = inputs.into_iter().map(|t| t.into_tensor_arg());
        let mut next = || inputs.next().expect("every stage's inputs are given");
        match self {
            Stage::Forward => {
                let t = tile(d.c_out, 8);
                let threads = d.n * d.c_out / t * ho * wo.div_ceil(PIXELS);
                let (count, dim) = grid(&out, threads);
                forward_kernel::launch(
                    &client,
                    count,
                    dim,
                    next(),
                    next(),
                    next(),
                    out.clone().into_tensor_arg(),
                    launch_dims(d),
                    k,
                    t as u32,
                    PIXELS as u32,
                );
            }
            Stage::InputGrad => {
                let t = tile(d.c_in, 16);
                let s = d.geom.stride;
                let threads = d.n * d.c_in / t * d.h * s * d.w.div_ceil(s).div_ceil(PIXELS);
                let (count, dim) = grid(&out, threads);
                input_grad_kernel::launch(
                    &client,
                    count,
                    dim,
                    next(),
                    next(),
                    out.clone().into_tensor_arg(),
                    launch_dims(d),
                    k,
                    t as u32,
                    PIXELS as u32,
                );
            }
            Stage::WeightGrad => {
                let t = weight_grad_tile(d);
                let threads = runs(d).1 * d.c_out / t * d.c_in;
                let (count, dim) = grid(&out, threads);
                weight_grad_kernel::launch(
                    &client,
                    count,
                    dim,
                    next(),
                    next(),
                    out.clone().into_tensor_arg(),
                    launch_dims(d),
                    k,
                    t as u32,
                );
            }
        }
        out
    }
}

/// One stage, queued on burn's fusion stream as a custom operation.
#[derive(Debug)]
struct ConvOp {
    desc: CustomOpIr,
    stage: Stage,
    dims: ConvShape,
}

impl Operation<FusedRuntime> for ConvOp {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusedRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<Cube>(t))
            .collect();
        let out = self.stage.run(&self.dims, inputs);
        handles.register_float_tensor::<Cube>(&self.desc.outputs[0].id, out);
    }
}

/// Queues `stage` on `inputs` and returns its (lazy) output.
fn queue(stage: Stage, dims: ConvShape, inputs: Vec<Fused>) -> Fused {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        stage.out_shape(&dims).into(),
        DType::F32,
    );
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(stage.name(), &inputs, &[out]);
    let op = ConvOp {
        desc: desc.clone(),
        stage,
        dims,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .pop()
        .expect("one output")
}

fn tensor<const D: usize>(t: Fused) -> BTensor<Wgpu, D> {
    BTensor::from_primitive(TensorPrimitive::Float(t))
}

fn fused<const D: usize>(t: BTensor<Wgpu, D>) -> Fused {
    t.into_primitive().tensor()
}

#[derive(Debug)]
struct ConvBackward;

#[derive(Clone, Debug)]
struct ConvState {
    /// `[n, c_in, h, w]`, kept when the weight is tracked.
    x: Option<Fused>,
    /// `[c_out, c_in, k, k]`, kept when the input is tracked.
    w: Option<Fused>,
    dims: ConvShape,
}

impl Backward<Wgpu, 3> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node, b_node] = ops.parents;
        let ConvState { x, w, dims: d } = ops.state;
        let dy = grads.consume::<Wgpu>(&ops.node);
        if let Some(node) = x_node {
            let w = w.expect("kept for a tracked input");
            let dx = queue(Stage::InputGrad, d, vec![dy.clone(), w]);
            grads.register::<Wgpu>(node.id, dx);
        }
        if let Some(node) = w_node {
            let x = x.expect("kept for a tracked weight");
            let k = d.geom.kernel;
            let partial = tensor::<5>(queue(Stage::WeightGrad, d, vec![x, dy.clone()]));
            let dw = partial.sum_dim(0).reshape([d.c_out, d.c_in, k, k]);
            grads.register::<Wgpu>(node.id, fused(dw));
        }
        if let Some(node) = b_node {
            let db = tensor::<4>(dy)
                .sum_dim(3)
                .sum_dim(2)
                .sum_dim(0)
                .reshape([d.c_out]);
            grads.register::<Wgpu>(node.id, fused(db));
        }
    }
}

fn ad<const D: usize>(t: BTensor<AdWgpu, D>) -> AdTensor {
    t.into_primitive().tensor()
}

/// `conv2d(x, w) + b` on `Autodiff<Wgpu>` by this module's kernels (a missing bias is a
/// constant zero). `x: [n, c_in, h, w]`, `w: [c_out, c_in, k, k]`, square kernels.
pub fn conv2d(
    x: BTensor<AdWgpu, 4>,
    w: BTensor<AdWgpu, 4>,
    b: Option<BTensor<AdWgpu, 1>>,
    geom: ConvGeom,
) -> BTensor<AdWgpu, 4> {
    let dims = ConvShape::of(x.dims(), w.dims(), geom);
    let b = b.unwrap_or_else(|| BTensor::zeros([dims.c_out], &w.device()));
    let (x, w, b) = (ad(x), ad(w), ad(b));
    let run = || {
        queue(
            Stage::Forward,
            dims,
            vec![
                x.primitive.clone(),
                w.primitive.clone(),
                b.primitive.clone(),
            ],
        )
    };
    let out = match ConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // Each input's gradient reads the other: keep only what a tracked parent needs.
            let state = ConvState {
                x: (!w.node.requirement.is_none()).then(|| x.primitive.clone()),
                w: (!x.node.requirement.is_none()).then(|| w.primitive.clone()),
                dims,
            };
            prep.finish(state, run())
        }
        OpsKind::UnTracked(prep) => prep.finish(run()),
    };
    BTensor::from_primitive(TensorPrimitive::Float(out))
}

/// `conv2d(x, w) + b` on `Wgpu` outside autodiff (an evaluation's forward pass) by the
/// forward kernel.
pub fn conv2d_forward(
    x: BTensor<Wgpu, 4>,
    w: BTensor<Wgpu, 4>,
    b: Option<BTensor<Wgpu, 1>>,
    geom: ConvGeom,
) -> BTensor<Wgpu, 4> {
    let dims = ConvShape::of(x.dims(), w.dims(), geom);
    let b = b.unwrap_or_else(|| BTensor::zeros([dims.c_out], &w.device()));
    tensor(queue(
        Stage::Forward,
        dims,
        vec![fused(x), fused(w), fused(b)],
    ))
}

/// Whether burn's wgpu backend has an adapter to run on (Vulkan, or Metal on macOS),
/// and its name.
pub fn adapter() -> Option<String> {
    let native = if cfg!(target_os = "macos") {
        wgpu::Backends::METAL
    } else {
        wgpu::Backends::VULKAN
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = native;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(native));
    adapters
        .iter()
        .map(|a| a.get_info())
        .max_by_key(|i| match i.device_type {
            wgpu::DeviceType::DiscreteGpu => 4,
            wgpu::DeviceType::IntegratedGpu => 3,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 1,
            wgpu::DeviceType::Other => 0,
        })
        .map(|i| format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend))
}
