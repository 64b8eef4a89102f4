//! Matrix-free operators over a fixed probe set (docs/definitions.md §6): residuals, loss, gradient, J v,
//! Jᵀw, G v, M v, Σ₁ v, H v and the quadratic forms along one direction.
//!
//! Vectors in parameter space are host `f64` slices in flat-θ order; vectors in output space
//! are host `f64` slices of length n·c, sample-major (`i·c + o`). Work is done on the device in
//! micro-batches of `chunk` samples and summed on the host in f64, so memory stays bounded and
//! nothing of size p×p or n×p is ever formed.

use burn::module::Module;
use burn::tensor::Tensor;
use noisegeom_models::{Arch, FlatSource, Kernels, Net, Pass, autodiff_lock};

use crate::GeometryError;
use crate::nested::{
    Ad, Ad2, NestedSource, add_grad_to_host, flat_grad, flat_inner_grad, to_device, to_device2,
    to_host,
};

/// The probe set and θ, with the networks each product needs.
pub struct ProbeOps<B: Kernels> {
    pub arch: Arch,
    pub device: B::Device,
    /// Probe inputs `[n, d]` and targets `[n, c]` on the device.
    pub x: Tensor<B, 2>,
    pub y: Tensor<B, 2>,
    pub n: usize,
    pub c: usize,
    pub p: usize,
    pub chunk: usize,
    /// Whether the Gram's affine-layer products are formed on host memory by direct GEMM
    /// calls (`linalg::row_products`) rather than by the backend's matmul. Set when the
    /// backend's tensors live on the host (burn-flex, burn-ndarray); tests clear it to check
    /// the backend path too.
    pub host_products: bool,
    theta: Vec<f64>,
    net: Net<B>,
    net_ad: Net<Ad<B>>,
    /// The same network with constant parameters: backward passes give activation gradients
    /// only (the Gram's probe signals) without computing parameter gradients.
    net_frozen: Net<Ad<B>>,
    /// The nested networks, built on first use (a Gram-only measurement never needs them).
    net_jvp: std::cell::OnceCell<Net<Ad2<B>>>,
    net_hvp: std::cell::OnceCell<Net<Ad2<B>>>,
    residuals: Vec<f64>,
    grad: Vec<f64>,
}

/// Which operator [`ProbeOps::finite_difference`] approximates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdOperator {
    Jv,
    Hv,
}

/// A finite-difference product with the error it reports for itself.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FiniteDifference {
    pub value: Vec<f64>,
    /// Estimated relative error, an upper estimate for `value` (see
    /// [`ProbeOps::finite_difference`]).
    pub error_estimate: f64,
    pub step: f64,
    pub method: String,
}

/// The quadratic forms of docs/definitions.md §6 along one direction u, from a single JVP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuadForms {
    /// uᵀGu = (1/n) Σ_i ||s_i||², s = Ju.
    pub g: f64,
    /// uᵀMu = (1/n) Σ_i (e_i·s_i)².
    pub m: f64,
    /// ∇L·u = (1/n) Σ_i e_i·s_i.
    pub grad_dot: f64,
}

impl QuadForms {
    /// uᵀΣ₁u = uᵀMu − (∇L·u)².
    pub fn sigma(&self) -> f64 {
        self.m - self.grad_dot * self.grad_dot
    }
}

/// Directions per forward pass in [`ProbeOps::quad_forms_many`]: each holds a tangent copy
/// of the network and its activations.
pub const DIRECTIONS_PER_PASS: usize = 8;

impl<B: Kernels> ProbeOps<B> {
    /// `x` is `[n, d]`, `y` is `[n, c]`, both host row-major. `chunk` samples go through the
    /// network at a time.
    pub fn new(
        arch: Arch,
        theta: &[f64],
        x: &[f64],
        y: &[f64],
        n: usize,
        chunk: usize,
        device: &B::Device,
    ) -> Result<Self, GeometryError> {
        let p = arch.num_params();
        if theta.len() != p {
            return Err(noisegeom_models::ModelError::FlatLength {
                expected: p,
                actual: theta.len(),
            }
            .into());
        }
        if n == 0 {
            return Err(GeometryError::Input("the probe set is empty".into()));
        }
        let d: usize = arch.input_shape.iter().product();
        let c = arch.outputs();
        if x.len() != n * d || y.len() != n * c {
            return Err(GeometryError::Input(format!(
                "probe set shapes: {} inputs for n = {n}, d = {d} and {} targets for c = {c}",
                x.len(),
                y.len()
            )));
        }
        let net = Net::<B>::build(arch.clone(), &mut FlatSource::new(device, theta))?;
        let net_ad = Net::<Ad<B>>::build(arch.clone(), &mut FlatSource::new(device, theta))?;
        let net_frozen = Net::<Ad<B>>::build(arch.clone(), &mut FlatSource::frozen(device, theta))?;
        let mut ops = ProbeOps {
            arch: arch.clone(),
            device: device.clone(),
            x: to_device2(x, n, d, device),
            y: to_device2(y, n, c, device),
            n,
            c,
            p,
            chunk: chunk.clamp(1, n),
            host_products: B::HOST_MEMORY,
            theta: theta.to_vec(),
            net,
            net_ad,
            net_frozen,
            net_jvp: Default::default(),
            net_hvp: Default::default(),
            residuals: Vec::new(),
            grad: Vec::new(),
        };
        ops.residuals = ops.compute_residuals();
        ops.grad = ops
            .vjp(&ops.residuals)
            .into_iter()
            .map(|g| g / n as f64)
            .collect();
        noisegeom_data::stop::check()?;
        Ok(ops)
    }

    /// The probe set from a dataset: inputs as stored, targets one-hot (classes) or as given.
    pub fn from_dataset(
        arch: Arch,
        theta: &[f64],
        ds: &noisegeom_data::Dataset,
        chunk: usize,
        device: &B::Device,
    ) -> Result<Self, GeometryError> {
        let x: Vec<f64> = ds.inputs.iter().map(|v| *v as f64).collect();
        let y: Vec<f64> = ds.target_matrix().iter().map(|v| *v as f64).collect();
        Self::new(arch, theta, &x, &y, ds.len(), chunk, device)
    }

    fn nested(&self, inner_grad: bool) -> &Net<Ad2<B>> {
        let cell = if inner_grad {
            &self.net_hvp
        } else {
            &self.net_jvp
        };
        cell.get_or_init(|| {
            Net::<Ad2<B>>::build(
                self.arch.clone(),
                &mut NestedSource {
                    device: &self.device,
                    values: &self.theta,
                    offset: 0,
                    inner_grad,
                },
            )
            .expect("the architecture was validated when the plain network was built")
        })
    }

    pub fn theta(&self) -> &[f64] {
        &self.theta
    }

    /// The explicit, labelled fallback for an operator whose exact path is unavailable:
    /// central finite differences in f64 only, with their own error estimate. `which` is
    /// `Jv` (differences of the residuals) or `Hv` (differences of ∇L). Each is taken at
    /// steps h and h/2; the reported value is the Richardson extrapolation
    /// (4·D(h/2) − D(h))/3, and the error estimate ‖D(h/2) − D(h)‖/(3‖D(h/2)‖) is the
    /// estimated relative error of D(h/2), the O(h²) term that extrapolation removes, so
    /// an upper estimate for the returned value. Not valid across ReLU kinks.
    pub fn finite_difference(
        &self,
        which: FdOperator,
        v: &[f64],
        h: f64,
    ) -> Result<FiniteDifference, GeometryError> {
        if std::mem::size_of::<B::FloatElem>() != 8 {
            return Err(GeometryError::Input(
                "finite differences are only offered in f64; run with --precision f64".into(),
            ));
        }
        assert_eq!(v.len(), self.p, "parameter-space vector length");
        let x = to_host(self.x.clone());
        let y = to_host(self.y.clone());
        let at = |t: f64| -> Result<Vec<f64>, GeometryError> {
            let theta: Vec<f64> = self.theta.iter().zip(v).map(|(a, b)| a + t * b).collect();
            let ops = ProbeOps::<B>::new(
                self.arch.clone(),
                &theta,
                &x,
                &y,
                self.n,
                self.chunk,
                &self.device,
            )?;
            Ok(match which {
                FdOperator::Jv => ops.residuals,
                FdOperator::Hv => ops.grad,
            })
        };
        let central = |h: f64| -> Result<Vec<f64>, GeometryError> {
            let (plus, minus) = (at(h)?, at(-h)?);
            Ok(plus
                .iter()
                .zip(&minus)
                .map(|(a, b)| (a - b) / (2.0 * h))
                .collect())
        };
        let (coarse, fine) = (central(h)?, central(h / 2.0)?);
        let diff = norm(
            &coarse
                .iter()
                .zip(&fine)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>(),
        );
        let scale = norm(&fine).max(f64::MIN_POSITIVE);
        Ok(FiniteDifference {
            value: fine
                .iter()
                .zip(&coarse)
                .map(|(f, c)| (4.0 * f - c) / 3.0)
                .collect(),
            error_estimate: diff / (3.0 * scale),
            step: h,
            method: format!(
                "central finite difference of {}, steps {h:e} and {:e}, Richardson-extrapolated (fallback, f64)",
                match which {
                    FdOperator::Jv => "the residuals",
                    FdOperator::Hv => "∇L",
                },
                h / 2.0
            ),
        })
    }

    /// e = f(x) − y, sample-major, length n·c.
    pub fn residuals(&self) -> &[f64] {
        &self.residuals
    }

    /// L = ||e||² / (2n).
    pub fn loss(&self) -> f64 {
        self.residuals.iter().map(|e| e * e).sum::<f64>() / (2.0 * self.n as f64)
    }

    /// ∇L = Jᵀe / n.
    pub fn grad(&self) -> &[f64] {
        &self.grad
    }

    /// The probe set's chunks, `(start, len)`. After a stop request
    /// ([`noisegeom_data::stop`]) no more: a product then covers part of the probe set (an
    /// output-space one is padded with zeros to its length, see [`Self::full`]), and the
    /// entry points ([`crate::measure()`], [`crate::track()`], [`Self::new`]) return an
    /// interruption error instead of anything computed from it.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.n)
            .step_by(self.chunk)
            .take_while(|_| !noisegeom_data::stop::requested())
            .map(|s| (s, self.chunk.min(self.n - s)))
    }

    /// An output-space vector cut short by a stop request, padded to its length n·c.
    fn full(&self, mut v: Vec<f64>) -> Vec<f64> {
        v.resize(self.n * self.c, 0.0);
        v
    }

    fn compute_residuals(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.n * self.c);
        for (s, len) in self.chunks() {
            let f = self.net.forward(self.x.clone().narrow(0, s, len));
            out.extend(to_host(f - self.y.clone().narrow(0, s, len)));
        }
        self.full(out)
    }

    /// The network outputs f(x), sample-major.
    pub fn outputs(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.n * self.c);
        for (s, len) in self.chunks() {
            out.extend(to_host(self.net.forward(self.x.clone().narrow(0, s, len))));
        }
        self.full(out)
    }

    /// Jᵀw for w ∈ R^{n·c} (no 1/n).
    pub fn vjp(&self, w: &[f64]) -> Vec<f64> {
        assert_eq!(w.len(), self.n * self.c, "output-space vector length");
        let mut acc = vec![0.0; self.p];
        for (s, len) in self.chunks() {
            let _graph = autodiff_lock();
            let wc = to_device2::<Ad<B>>(
                &w[s * self.c..(s + len) * self.c],
                len,
                self.c,
                &self.device,
            );
            let out = self.net_ad.forward_pass(
                Tensor::from_inner(self.x.clone().narrow(0, s, len)),
                Pass::FirstOrder,
            );
            let grads = (out * wc).sum().backward();
            add_grad_to_host(&mut acc, &self.net_ad, &grads);
        }
        acc
    }

    /// Jv for v ∈ R^p, exact, in forward mode: one pass carrying the tangent through the
    /// network ([`Net::jvp`]), about twice a forward in cost and with no autodiff graph.
    pub fn jvp(&self, v: &[f64]) -> Vec<f64> {
        self.jvp_many(&[v]).remove(0)
    }

    /// [`Self::jvp`] along several directions, one forward-mode pass per chunk carrying all
    /// of them ([`Net::jvp_many`]): the primal forward is shared. Each direction holds a
    /// tangent copy of the network and its activations, so callers pass a few at a time.
    pub fn jvp_many<V: AsRef<[f64]>>(&self, dirs: &[V]) -> Vec<Vec<f64>> {
        let tangents: Vec<Net<B>> = dirs
            .iter()
            .map(|u| {
                let u = u.as_ref();
                assert_eq!(u.len(), self.p, "parameter-space vector length");
                Net::<B>::build(self.arch.clone(), &mut FlatSource::new(&self.device, u))
                    .expect("the architecture was validated when the plain network was built")
            })
            .collect();
        let refs: Vec<&Net<B>> = tangents.iter().collect();
        let mut out = vec![Vec::with_capacity(self.n * self.c); dirs.len()];
        for (start, len) in self.chunks() {
            let x = self.x.clone().narrow(0, start, len);
            for (jv_host, jv) in out.iter_mut().zip(self.net.jvp_many(x, &refs).1) {
                match jv {
                    Some(jv) => jv_host.extend(to_host(jv)),
                    None => jv_host.resize(jv_host.len() + len * self.c, 0.0),
                }
            }
        }
        out.into_iter().map(|v| self.full(v)).collect()
    }

    /// Jv by the double-VJP trick through nested autodiff (exact): the route that needs no
    /// forward-mode rule per layer. Kept as an independent cross-check of [`Self::jvp`].
    pub fn jvp_double_vjp(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.p, "parameter-space vector length");
        let v_ad = to_device::<Ad<B>>(v, &self.device);
        let mut out = Vec::with_capacity(self.n * self.c);
        for (s, len) in self.chunks() {
            let _graph = autodiff_lock();
            let u = Tensor::<Ad<B>, 2>::zeros([len, self.c], &self.device).require_grad();
            let x = Tensor::<Ad2<B>, 2>::from_inner(Tensor::from_inner(
                self.x.clone().narrow(0, s, len),
            ));
            let net = self.nested(false);
            let f = net.forward(x);
            let outer = (f * Tensor::from_inner(u.clone())).sum().backward();
            let jtu = flat_grad(net, &outer);
            let inner = (jtu * v_ad.clone()).sum().backward();
            let jv = u
                .grad(&inner)
                .unwrap_or_else(|| Tensor::zeros([len, self.c], &self.device));
            out.extend(to_host(jv));
        }
        self.full(out)
    }

    /// Gv = Jᵀ(Jv)/n: the gradient of (1/n) Σ_i f_i·stop(J_i v), one pass per chunk
    /// (`jvp_then_backward`).
    pub fn gv(&self, v: &[f64]) -> Vec<f64> {
        self.jvp_then_backward(v, |f, jv, _| f * jv.detach())
    }

    /// Mv = (1/n) Jᵀr with r_i = e_i (e_i·s_i), s = Jv: the gradient of
    /// (1/n) Σ_i f_i·stop(r_i), one pass per chunk.
    pub fn mv(&self, v: &[f64]) -> Vec<f64> {
        self.jvp_then_backward(v, |f, jv, y| {
            let e = (f.clone() - y).detach();
            let r = e.clone() * (e * jv.detach()).sum_dim(1);
            f * r
        })
    }

    /// (1/n) ∇_θ Σ of `objective(f, Jv, y)` over the probe set. Per chunk, one forward-mode
    /// pass on the autodiff network ([`Net::jvp`]) gives f and Jv with the primal forward
    /// recorded, and one backward of the objective's sum follows: the JVP and the backward
    /// share the forward. Exact (no finite differences, no nesting).
    fn jvp_then_backward(
        &self,
        v: &[f64],
        objective: impl Fn(Tensor<Ad<B>, 2>, Tensor<Ad<B>, 2>, Tensor<Ad<B>, 2>) -> Tensor<Ad<B>, 2>,
    ) -> Vec<f64> {
        assert_eq!(v.len(), self.p, "parameter-space vector length");
        let tangent =
            Net::<Ad<B>>::build(self.arch.clone(), &mut FlatSource::frozen(&self.device, v))
                .expect("the architecture was validated when the plain network was built");
        let mut acc = vec![0.0; self.p];
        let inv = 1.0 / self.n as f64;
        for (s, len) in self.chunks() {
            let _graph = autodiff_lock();
            let x = Tensor::<Ad<B>, 2>::from_inner(self.x.clone().narrow(0, s, len));
            let y = Tensor::<Ad<B>, 2>::from_inner(self.y.clone().narrow(0, s, len));
            let (f, jv) = self.net_ad.jvp(x, &tangent);
            let Some(jv) = jv else { continue };
            let grads = objective(f, jv, y).sum().mul_scalar(inv).backward();
            add_grad_to_host(&mut acc, &self.net_ad, &grads);
        }
        acc
    }

    /// Σ₁v = Mv − ∇L (∇L·v).
    pub fn sigma_v(&self, v: &[f64]) -> Vec<f64> {
        let mut out = self.mv(v);
        let gv = dot(&self.grad, v);
        out.iter_mut()
            .zip(&self.grad)
            .for_each(|(o, g)| *o -= g * gv);
        out
    }

    /// Gv and Σ₁v together, sharing one JVP.
    pub fn gv_and_sigma_v(&self, v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let s = self.jvp(v);
        let inv_n = 1.0 / self.n as f64;
        let gv = scale(self.vjp(&s), inv_n);
        let mut sv = scale(self.vjp(&self.weight_by_residual(&s)), inv_n);
        let gdot = dot(&self.grad, v);
        sv.iter_mut()
            .zip(&self.grad)
            .for_each(|(o, g)| *o -= g * gdot);
        (gv, sv)
    }

    /// Hv, exact, reverse over forward: with s(θ) = (1/n) Σ_i e_i(θ)·(J_i(θ) v), one
    /// backward of the forward-mode pass gives ∇s = (1/n) Σ_i [J_iᵀ J_i v + Σ_o e_io ∇²f_io v]
    /// = Hv. One level of autodiff, no nesting.
    pub fn hv(&self, v: &[f64]) -> Vec<f64> {
        self.jvp_then_backward(v, |f, jv, y| (f - y) * jv)
    }

    /// Hv by double backward through nested autodiff (exact): kept as an independent
    /// cross-check of [`Self::hv`].
    pub fn hv_double_backward(&self, v: &[f64]) -> Vec<f64> {
        assert_eq!(v.len(), self.p, "parameter-space vector length");
        let v_ad = to_device::<Ad<B>>(v, &self.device);
        let mut acc = vec![0.0; self.p];
        let inv = 0.5 / self.n as f64;
        for (s, len) in self.chunks() {
            let _graph = autodiff_lock();
            let x = Tensor::<Ad2<B>, 2>::from_inner(Tensor::from_inner(
                self.x.clone().narrow(0, s, len),
            ));
            let y = Tensor::<Ad2<B>, 2>::from_inner(Tensor::from_inner(
                self.y.clone().narrow(0, s, len),
            ));
            let net = self.nested(true);
            let e = net.forward(x) - y;
            let loss = (e.clone() * e).sum().mul_scalar(inv);
            let g = flat_grad(net, &loss.backward());
            let inner = (g * v_ad.clone()).sum().backward();
            add(&mut acc, &to_host(flat_inner_grad(net, &inner)));
        }
        acc
    }

    /// uᵀGu, uᵀMu and ∇L·u from one JVP.
    pub fn quad_forms(&self, u: &[f64]) -> QuadForms {
        self.quad_forms_many(&[u]).remove(0)
    }

    /// [`Self::quad_forms`] for each direction, from JVPs that share each chunk's forward
    /// pass ([`Self::jvp_many`], `DIRECTIONS_PER_PASS` directions at a time).
    pub fn quad_forms_many<V: AsRef<[f64]>>(&self, dirs: &[V]) -> Vec<QuadForms> {
        dirs.chunks(DIRECTIONS_PER_PASS)
            .flat_map(|group| self.jvp_many(group))
            .map(|s| self.forms(&s))
            .collect()
    }

    /// The quadratic forms from s = Ju.
    fn forms(&self, s: &[f64]) -> QuadForms {
        let (mut g, mut m, mut gd) = (0.0, 0.0, 0.0);
        for (si, ei) in s
            .chunks_exact(self.c)
            .zip(self.residuals.chunks_exact(self.c))
        {
            let es: f64 = si.iter().zip(ei).map(|(a, b)| a * b).sum();
            g += si.iter().map(|a| a * a).sum::<f64>();
            m += es * es;
            gd += es;
        }
        let n = self.n as f64;
        QuadForms {
            g: g / n,
            m: m / n,
            grad_dot: gd / n,
        }
    }

    /// r_i = e_i (e_i·s_i).
    fn weight_by_residual(&self, s: &[f64]) -> Vec<f64> {
        let mut r = vec![0.0; s.len()];
        for ((ri, si), ei) in r
            .chunks_exact_mut(self.c)
            .zip(s.chunks_exact(self.c))
            .zip(self.residuals.chunks_exact(self.c))
        {
            let es: f64 = si.iter().zip(ei).map(|(a, b)| a * b).sum();
            ri.iter_mut().zip(ei).for_each(|(r, e)| *r = e * es);
        }
        r
    }

    /// The network, plain (no autodiff).
    pub(crate) fn net(&self) -> &Net<B> {
        &self.net
    }

    /// The network with constant parameters on the autodiff backend (for the Gram's probes).
    pub fn net_frozen(&self) -> &Net<Ad<B>> {
        &self.net_frozen
    }

    /// Number of parameters of each layer's tensors, for callers that split θ.
    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }
}

pub(crate) fn add(acc: &mut [f64], v: &[f64]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

pub(crate) fn scale(mut v: Vec<f64>, s: f64) -> Vec<f64> {
    v.iter_mut().for_each(|x| *x *= s);
    v
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}
