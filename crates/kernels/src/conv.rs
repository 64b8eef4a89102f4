//! A 2-D convolution on host memory, forward and backward, from im2col patches and
//! [`gemm()`](crate::gemm::gemm).
//!
//! burn's convolution under autodiff forms the output, the input gradient (a transposed
//! convolution) and the weight gradient (a convolution with the output gradient as its
//! kernel) as three unrelated convolutions, each building its own patches. Here the patches U_i (`[c_in·k², h'·w']` per sample) are built once in the
//! forward and kept:
//! - Z_i = W·U_i + b, one GEMM per sample;
//! - ∂W = Σ_i ΔZ_i U_iᵀ, ∂b = Σ_i ΔZ_i 1;
//! - ∂x_i = col2im(Wᵀ ΔZ_i), the transpose of the patch map applied to a GEMM's output.
//!
//! Samples run in parallel, each product on one thread. The autodiff op that runs these
//! kernels is [`crate::flex::conv2d`].

use rayon::prelude::*;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use crate::gemm::{GemmElem, MatRef, Threads, gemm};

/// Geometry of a square 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeom {
    /// The output side for an input side `len`.
    pub fn out_len(&self, len: usize) -> usize {
        (len + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// The sizes of one convolution over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Samples.
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub geom: ConvGeom,
}

impl ConvShape {
    /// The sizes of `conv2d(x, w)` for `x: [n, c_in, h, w]` and `w: [c_out, c_in, k, k]`.
    pub fn of(x: [usize; 4], w: [usize; 4], geom: ConvGeom) -> Self {
        let [n, c_in, h, w_in] = x;
        ConvShape {
            n,
            c_in,
            h,
            w: w_in,
            c_out: w[0],
            geom,
        }
    }
    /// The output's sides, (h', w').
    pub fn out(&self) -> (usize, usize) {
        (self.geom.out_len(self.h), self.geom.out_len(self.w))
    }
    /// Rows of a sample's patches, c_in·k² (the weight's row length).
    pub fn k(&self) -> usize {
        self.c_in * self.geom.kernel * self.geom.kernel
    }
    /// Output positions per sample, h'·w'.
    pub fn p(&self) -> usize {
        let (ho, wo) = self.out();
        ho * wo
    }
    fn input_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
}

/// A sample's input planes split by stride phase: plane (ci, py, px) holds
/// `x[ci][qy·s + py][qx·s + px]` at (qy, qx), `[hp, wp]` with hp = ⌈h/s⌉, wp = ⌈w/s⌉. A patch row
/// (fixed ci, ky, kx) reads, for each output row, one contiguous run of one phase plane, so
/// building the patches is copies and their transpose is vectorisable adds, also at stride 2.
/// At stride 1 the phase planes are the input itself.
#[derive(Clone, Copy, Debug)]
struct Phases {
    c: usize,
    h: usize,
    w: usize,
    s: usize,
    hp: usize,
    wp: usize,
}

impl Phases {
    fn new([c, h, w]: [usize; 3], s: usize) -> Self {
        Phases {
            c,
            h,
            w,
            s,
            hp: h.div_ceil(s),
            wp: w.div_ceil(s),
        }
    }

    fn len(&self) -> usize {
        self.c * self.s * self.s * self.hp * self.wp
    }

    /// Where the patch row (ci, ky, kx) reads output position (oy, ox), for the input
    /// position (oy·s + ky − pad, ox·s + kx − pad): `base + (oy + dy)·wp + ox + dx`. Returns
    /// (base, dy, dx).
    fn at(&self, ci: usize, ky: usize, kx: usize, pad: usize) -> (usize, isize, isize) {
        let s = self.s;
        // The phase of ky − pad, and (ky − pad − phase)/s, without going below zero.
        let phase = |kk: usize| (kk + s * pad - pad) % s;
        let shift = |kk: usize, ph: usize| ((kk + s * pad - pad - ph) / s) as isize - pad as isize;
        let (py, px) = (phase(ky), phase(kx));
        let base = ((ci * s + py) * s + px) * self.hp * self.wp;
        (base, shift(ky, py), shift(kx, px))
    }

    /// Splits one sample `x: [c, h, w]` into `out` (`self.len()`; entries past the input's
    /// edge are left as they are).
    fn split<E: Copy>(&self, x: &[E], out: &mut [E]) {
        let (s, hp, wp) = (self.s, self.hp, self.wp);
        for (ci, plane) in x.chunks_exact(self.h * self.w).enumerate() {
            for (iy, line) in plane.chunks_exact(self.w).enumerate() {
                for px in 0..s.min(self.w) {
                    let at = ((ci * s + iy % s) * s + px) * hp * wp + iy / s * wp;
                    for (o, &v) in out[at..at + wp]
                        .iter_mut()
                        .zip(line[px..].iter().step_by(s))
                    {
                        *o = v;
                    }
                }
            }
        }
    }

    /// `dx[c, h, w] +=` the phase planes `ph`, the inverse of [`Self::split`].
    fn merge_add<E: Copy + core::ops::AddAssign>(&self, ph: &[E], dx: &mut [E]) {
        let (s, hp, wp) = (self.s, self.hp, self.wp);
        for (ci, plane) in dx.chunks_exact_mut(self.h * self.w).enumerate() {
            for (iy, line) in plane.chunks_exact_mut(self.w).enumerate() {
                for px in 0..s.min(self.w) {
                    let at = ((ci * s + iy % s) * s + px) * hp * wp + iy / s * wp;
                    for (o, &v) in line[px..].iter_mut().step_by(s).zip(&ph[at..at + wp]) {
                        *o += v;
                    }
                }
            }
        }
    }
}

/// Visits every run of a sample's patch rows: `f(row, at, start, len)` for patch row `row`,
/// output positions `at..at + len` (a run within one output row) and their inputs at
/// `start..start + len` of the phase planes ([`Phases`]). Positions reading the padding are
/// not visited.
fn patch_runs(ph: Phases, g: ConvGeom, mut f: impl FnMut(usize, usize, usize, usize)) {
    let (k, s, pad) = (g.kernel, g.stride, g.padding);
    let (ho, wo) = (g.out_len(ph.h), g.out_len(ph.w));
    for r in 0..ph.c * k * k {
        let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
        let (base, dy, dx) = ph.at(ci, ky, kx, pad);
        let cols = inside(kx, s, pad, ph.w, wo);
        for oy in inside(ky, s, pad, ph.h, ho) {
            let start =
                base as isize + (oy as isize + dy) * ph.wp as isize + cols.start as isize + dx;
            f(r, oy * wo + cols.start, start as usize, cols.len());
        }
    }
}

/// Writes the patches of one sample into `u: [c·k² (+1), h'·w']` (row `(ci·k + ky)·k + kx`,
/// matching a `[out, in, k, k]` weight flattened; a last row of `one` when `u` has one more
/// row), from its phase planes `xp` ([`Phases`]). `u` must hold zeros where the patch reads
/// the padding.
fn patches_into<E: Copy>(xp: &[E], ph: Phases, g: ConvGeom, one: E, u: &mut [E]) {
    let p = g.out_len(ph.h) * g.out_len(ph.w);
    let rows = ph.c * g.kernel * g.kernel;
    if u.len() > rows * p {
        u[rows * p..].fill(one);
    }
    patch_runs(ph, g, |r, at, start, len| {
        u[r * p + at..][..len].copy_from_slice(&xp[start..start + len]);
    });
}

/// The output positions `o < out` whose input position `o·s + kk − pad` (kernel offset `kk`)
/// lies inside `0..len`.
fn inside(kk: usize, s: usize, pad: usize, len: usize, out: usize) -> core::ops::Range<usize> {
    // o·s + kk ≥ pad and o·s + kk < pad + len.
    let lo = pad.saturating_sub(kk).div_ceil(s);
    let hi = (pad + len).saturating_sub(kk).div_ceil(s).min(out);
    lo..hi.max(lo)
}

/// The patches of every sample of `x: [n, c, h, w]`, `[n, c·k² (+1 with ones), h'·w']`,
/// samples in parallel.
pub fn patches<E: Copy + Send + Sync>(
    x: &[E],
    [n, c, h, w]: [usize; 4],
    g: ConvGeom,
    ones: bool,
    [zero, one]: [E; 2],
) -> Vec<E> {
    let per = (c * g.kernel * g.kernel + usize::from(ones)) * g.out_len(h) * g.out_len(w);
    let mut u = vec![zero; n * per];
    if per > 0 {
        let ph = Phases::new([c, h, w], g.stride);
        u.par_chunks_mut(per)
            .zip(x.par_chunks(c * h * w))
            .for_each_init(
                || vec![zero; if g.stride > 1 { ph.len() } else { 0 }],
                |xp, (u, x)| {
                    if g.stride > 1 {
                        ph.split(x, xp);
                        patches_into(xp, ph, g, one, u);
                    } else {
                        patches_into(x, ph, g, one, u);
                    }
                },
            );
    }
    u
}

/// `z[i] = W·U_i (+ b)` for every sample: `x: [n, c_in, h, w]`, `w: [c_out, c_in·k²]`,
/// `b: [c_out]`, `z: [n, c_out, h'·w']`. Returns z and, when `keep`, the patches
/// `[n, c_in·k², h'·w']` for the backward.
pub fn conv_forward<E: GemmElem>(
    x: &[E],
    w: &[E],
    b: Option<&[E]>,
    s: ConvShape,
    keep: bool,
) -> (Vec<E>, Option<Vec<E>>) {
    let (k, p, co) = (s.k(), s.p(), s.c_out);
    assert_eq!(
        x.len(),
        s.n * s.input_len(),
        "input [{}, {}, {}, {}]",
        s.n,
        s.c_in,
        s.h,
        s.w
    );
    assert_eq!(w.len(), co * k, "weight [{co}, {k}]");
    let mut z = vec![E::ZERO; s.n * co * p];
    if p == 0 || co == 0 {
        return (z, keep.then(Vec::new));
    }
    let ph = Phases::new([s.c_in, s.h, s.w], s.geom.stride);
    let one_sample = |zi: &mut [E], ui: &[E]| {
        if let Some(b) = b {
            for (row, &bo) in zi.chunks_exact_mut(p).zip(b) {
                row.fill(bo);
            }
        }
        gemm(
            zi,
            MatRef::rows(w, co, k),
            MatRef::rows(ui, k, p),
            b.is_some(),
            Threads::One,
        );
    };
    if keep {
        let u = patches(x, [s.n, s.c_in, s.h, s.w], s.geom, false, [E::ZERO, E::ONE]);
        z.par_chunks_mut(co * p)
            .zip(u.par_chunks(k * p))
            .for_each(|(zi, ui)| one_sample(zi, ui));
        (z, Some(u))
    } else {
        z.par_chunks_mut(co * p)
            .zip(x.par_chunks(s.input_len()))
            .for_each_init(
                || (vec![E::ZERO; k * p], vec![E::ZERO; ph.len()]),
                |(ui, xp), (zi, xi)| {
                    let xp = if s.geom.stride > 1 {
                        ph.split(xi, xp);
                        &xp[..]
                    } else {
                        xi
                    };
                    patches_into(xp, ph, s.geom, E::ONE, ui);
                    one_sample(zi, ui);
                },
            );
        (z, None)
    }
}

/// The parameter gradients from the output gradient `dz: [n, c_out, h'·w']` and the kept
/// patches `u: [n, c_in·k², h'·w']`: `∂W = Σ_i ΔZ_i U_iᵀ` (`[c_out, c_in·k²]`) and
/// `∂b = Σ_i ΔZ_i 1` (`[c_out]`).
pub fn conv_param_grads<E: GemmElem + core::ops::AddAssign>(
    dz: &[E],
    u: &[E],
    s: ConvShape,
) -> (Vec<E>, Vec<E>) {
    let (k, p, co) = (s.k(), s.p(), s.c_out);
    assert_eq!(dz.len(), s.n * co * p, "output gradient");
    assert_eq!(u.len(), s.n * k * p, "patches");
    let zero = || (vec![E::ZERO; co * k], vec![E::ZERO; co]);
    if s.n == 0 || p == 0 || co == 0 {
        return zero();
    }
    // Partial sums over runs of a fixed number of samples, added in order: the bits do not
    // depend on the thread count or on rayon's scheduling.
    const RUN: usize = 16;
    let partials: Vec<(Vec<E>, Vec<E>)> = dz
        .par_chunks(RUN * co * p)
        .zip(u.par_chunks(RUN * k * p))
        .map(|(dz, u)| {
            let (mut dw, mut db) = zero();
            for (dzi, ui) in dz.chunks_exact(co * p).zip(u.chunks_exact(k * p)) {
                gemm(
                    &mut dw,
                    MatRef::rows(dzi, co, p),
                    MatRef::transposed(ui, p, k),
                    true,
                    Threads::One,
                );
                for (d, row) in db.iter_mut().zip(dzi.chunks_exact(p)) {
                    for &v in row {
                        *d += v;
                    }
                }
            }
            (dw, db)
        })
        .collect();
    let mut parts = partials.into_iter();
    let (mut dw, mut db) = parts.next().unwrap_or_else(zero);
    for (dw2, db2) in parts {
        dw.iter_mut().zip(dw2).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(db2).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

/// The input gradient `∂x_i = col2im(Wᵀ ΔZ_i)`, `[n, c_in, h, w]`, samples in parallel.
pub fn conv_input_grad<E: GemmElem + core::ops::AddAssign>(
    dz: &[E],
    w: &[E],
    s: ConvShape,
) -> Vec<E> {
    let (k, p, co) = (s.k(), s.p(), s.c_out);
    assert_eq!(dz.len(), s.n * co * p, "output gradient");
    assert_eq!(w.len(), co * k, "weight");
    let mut dx = vec![E::ZERO; s.n * s.input_len()];
    if p == 0 || s.input_len() == 0 {
        return dx;
    }
    let ph = Phases::new([s.c_in, s.h, s.w], s.geom.stride);
    let strided = s.geom.stride > 1;
    dx.par_chunks_mut(s.input_len())
        .zip(dz.par_chunks(co * p))
        .for_each_init(
            || {
                (
                    vec![E::ZERO; k * p],
                    vec![E::ZERO; if strided { ph.len() } else { 0 }],
                )
            },
            |(du, acc), (dxi, dzi)| {
                gemm(
                    du,
                    MatRef::transposed(w, k, co),
                    MatRef::rows(dzi, co, p),
                    false,
                    Threads::One,
                );
                // The transpose of the patch map: add each run of du into the phase planes
                // (at stride 1, into ∂x itself).
                let add_runs = |target: &mut [E]| {
                    patch_runs(ph, s.geom, |r, at, start, len| {
                        let src = &du[r * p + at..][..len];
                        for (o, &v) in target[start..start + len].iter_mut().zip(src) {
                            *o += v;
                        }
                    });
                };
                if strided {
                    acc.fill(E::ZERO);
                    add_runs(acc);
                    ph.merge_add(acc, dxi);
                } else {
                    add_runs(dxi);
                }
            },
        );
    dx
}

/// The im2col patches of `x: [n, c, h, w]` as a constant `[n, c·k² (+1), h'·w']` (row
/// `(ci·k + ky)·k + kx`, matching a `[out, in, k, k]` weight flattened, and a last row of
/// ones when `ones` is set), built on the host, samples in parallel.
pub fn im2col<B: Backend>(x: Tensor<B, 4>, g: ConvGeom, ones: bool) -> Tensor<B, 3> {
    let dims = x.dims();
    let device = x.device();
    let (ho, wo) = (g.out_len(dims[2]), g.out_len(dims[3]));
    let data = crate::read(x.detach());
    // Read in place: the activations are not copied before the patches are built.
    let values = data
        .as_slice::<B::FloatElem>()
        .expect("a float tensor holds the backend's float type");
    let u = patches(values, dims, g, ones, [0.0.elem(), 1.0.elem()]);
    let shape = [
        dims[0],
        dims[1] * g.kernel * g.kernel + usize::from(ones),
        ho * wo,
    ];
    Tensor::from_data(TensorData::new(u, shape), &device)
}

/// `conv2d(x, W) + b` whose weight gradient is one batched GEMM over host im2col patches,
/// dW = Σ_i ΔZ_i U_iᵀ, for a first-order pass on a host backend whose own convolution
/// backward is slow (burn-ndarray). Where `x` is a constant (`x_is_constant`: the network's
/// input) the output is that GEMM too; otherwise the output and the input gradient stay the
/// backend's, and a term equal to zero, M − stop(M) with M = W·U, carries the weight
/// gradient. Not for a pass differentiated twice: the input gradient sees W as a constant.
pub fn conv2d_gemm_weight_grad<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    b: Option<Tensor<B, 1>>,
    g: ConvGeom,
    x_is_constant: bool,
) -> Tensor<B, 4> {
    let [cout, cin, k, _] = w.dims();
    let [n, _, h, wd] = x.dims();
    let (ho, wo) = (g.out_len(h), g.out_len(wd));
    let wmat = w.clone().reshape([cout, cin * k * k]);
    if x_is_constant {
        // The output is the GEMM, the bias folded in as a last patch row of ones (a
        // broadcast add of the bias would take burn-flex's strided path).
        let bias = b.map(|b| b.reshape([cout, 1]));
        let u = im2col(x, g, bias.is_some()); // [n, cin·k² (+1), ho·wo], a constant
        let wmat = match bias {
            Some(b) => Tensor::cat(vec![wmat, b], 1),
            None => wmat,
        };
        let kk = wmat.dims()[1];
        return wmat
            .reshape([1, cout, kk])
            .matmul(u)
            .reshape([n, cout, ho, wo]);
    }
    let u = im2col(x.clone(), g, false);
    let m = wmat
        .reshape([1, cout, cin * k * k])
        .matmul(u)
        .reshape([n, cout, ho, wo]);
    // `detach` alone would keep W a leaf that requires grad (burn re-marks it), and the
    // backend would still form its weight gradient.
    let z = crate::generic_conv2d(x, w.detach().set_require_grad(false), b, g);
    // m − stop(m) is exactly zero (m − m for finite m) and its gradient with respect to W
    // is the GEMM's. stop(m) is a copy (`mul_scalar(1)`) so that m's buffer is unshared:
    // burn-flex subtracts in place then, and otherwise takes its slow strided path.
    let stop = m.clone().detach().set_require_grad(false).mul_scalar(1.0);
    z + (m - stop)
}
