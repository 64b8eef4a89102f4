//! Forward mode: [`Net::jvp`] and [`Net::jvp_many`], each stage's tangent rule.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::layers::{Layer, NoTap};
use crate::net::{avg_pool, bn_fixed, fixed_affine, fixed_weight, global_avg_pool};
use crate::{Kernels, Net, Pass, Stage};

impl<B: Kernels> Net<B> {
    /// Forward-mode derivative: f(x) and J·dθ, the change of f(x) along the parameter
    /// direction `tangent` (a network of the same architecture holding dθ). One pass, about
    /// twice a forward in cost, with no autodiff graph. `None` means J·dθ = 0.
    pub fn jvp(&self, x: Tensor<B, 2>, tangent: &Net<B>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let (f, mut jv) = self.jvp_many(x, &[tangent]);
        (f, jv.pop().flatten())
    }

    /// [`Self::jvp`] along several directions at once: the primal forward (and every
    /// activation's derivative) is computed once and shared by all the tangents.
    pub fn jvp_many(
        &self,
        x: Tensor<B, 2>,
        tangents: &[&Net<B>],
    ) -> (Tensor<B, 2>, Vec<Option<Tensor<B, 2>>>) {
        for t in tangents {
            debug_assert_eq!(self.arch, t.arch, "the tangent has this network's shape");
        }
        let [n, _] = x.dims();
        let k = tangents.len();
        let mut v = match self.arch.input_shape[..] {
            [c, h, w] => Dual::Image(x.reshape([n, c, h, w]), vec![None; k]),
            _ => Dual::Flat(x, vec![None; k]),
        };
        let mut li = 0;
        let mut saved = Vec::new();
        // A first-order pass: a later `backward()` (the metrics' Hv) goes through it once.
        let pass = Pass::FirstOrder;
        // The tangents' counterpart of parametric layer `li`.
        let tangent_layer = |k: usize, li: usize| &tangents[k].layers[li];
        // Every parametric layer is bilinear in (input, parameters): z = l(a) and
        // dz = l(da) + t(a), with t the tangent network's layer (holding dθ).
        macro_rules! bilinear {
            ($layer:ident, $dual:ident, $a:expr, $da:expr) => {{
                let Layer::$layer(l) = &self.layers[li] else {
                    unreachable!("layers follow stages")
                };
                let dz = tangent_outputs(
                    &$a,
                    $da,
                    |d| l.linear(d, pass),
                    |k, a| match tangent_layer(k, li) {
                        Layer::$layer(t) => t.forward(a, &mut NoTap, pass),
                        _ => unreachable!("same architecture"),
                    },
                );
                li += 1;
                Dual::$dual(l.forward($a, &mut NoTap, pass), dz)
            }};
        }
        for stage in &self.arch.stages {
            v = match (stage, v) {
                (Stage::SaveSkip, v) => {
                    saved.push(v.clone());
                    v
                }
                (Stage::AddSkip, v) => v.add(saved.pop().expect("validated")),
                (Stage::SwapSkip, v) => std::mem::replace(saved.last_mut().expect("validated"), v),
                (Stage::Dense { .. }, Dual::Flat(a, da)) => bilinear!(Dense, Flat, a, da),
                (Stage::Conv { .. }, Dual::Image(a, da)) => bilinear!(Conv, Image, a, da),
                (Stage::Hadamard, Dual::Flat(a, da)) => bilinear!(Hadamard, Flat, a, da),
                (Stage::Act { activation }, Dual::Flat(a, da)) => {
                    let (z, dz) = activation.apply_jvp(a, da);
                    Dual::Flat(z, dz)
                }
                (Stage::Act { activation }, Dual::Image(a, da)) => {
                    let (z, dz) = activation.apply_jvp(a, da);
                    Dual::Image(z, dz)
                }
                (Stage::Flatten, Dual::Image(a, da)) => {
                    Dual::Flat(a.flatten(1, 3), map_tangents(da, |d| d.flatten(1, 3)))
                }
                (Stage::GlobalAvgPool, Dual::Image(a, da)) => {
                    Dual::Flat(global_avg_pool(a), map_tangents(da, global_avg_pool))
                }
                (Stage::SumFeatures, Dual::Flat(a, da)) => {
                    Dual::Flat(a.sum_dim(1), map_tangents(da, |d| d.sum_dim(1)))
                }
                (Stage::FixedDense { out, weights }, Dual::Flat(a, da)) => {
                    let w = fixed_weight(*out, weights, &a.device());
                    let dz = map_tangents(da, |d| d.matmul(w.clone()));
                    Dual::Flat(a.matmul(w), dz)
                }
                (Stage::AvgPool { kernel, stride }, Dual::Image(a, da)) => {
                    let s = stride.unwrap_or(*kernel);
                    Dual::Image(
                        avg_pool(a, *kernel, s),
                        map_tangents(da, |d| avg_pool(d, *kernel, s)),
                    )
                }
                (
                    Stage::BatchNorm {
                        eps,
                        mean,
                        var,
                        frozen,
                    },
                    v,
                ) => {
                    let (scale, shift) = bn_fixed(*eps, mean, var, frozen.as_ref());
                    let v = match v {
                        Dual::Flat(a, da) => Dual::Flat(
                            fixed_affine(a, &scale, Some(&shift)),
                            map_tangents(da, |d| fixed_affine(d, &scale, None)),
                        ),
                        Dual::Image(a, da) => Dual::Image(
                            fixed_affine(a, &scale, Some(&shift)),
                            map_tangents(da, |d| fixed_affine(d, &scale, None)),
                        ),
                    };
                    match (frozen, v) {
                        (Some(_), v) => v,
                        (None, Dual::Flat(a, da)) => bilinear!(Norm, Flat, a, da),
                        (None, Dual::Image(a, da)) => bilinear!(Norm, Image, a, da),
                    }
                }
                _ => unreachable!("validated at construction"),
            };
        }
        match v {
            Dual::Flat(out, d) => (out, d),
            Dual::Image(..) => unreachable!("validated at construction"),
        }
    }
}

/// Per tangent k: dz_k = `tangent(k, a)` + `linear(da_k)` (the second term absent when
/// da_k is zero).
fn tangent_outputs<T: Clone + std::ops::Add<Output = T>>(
    a: &T,
    da: Vec<Option<T>>,
    linear: impl Fn(T) -> T,
    tangent: impl Fn(usize, T) -> T,
) -> Vec<Option<T>> {
    da.into_iter()
        .enumerate()
        .map(|(k, d)| {
            let t = tangent(k, a.clone());
            Some(match d {
                Some(d) => t + linear(d),
                None => t,
            })
        })
        .collect()
}

/// A linear map applied to every tangent.
fn map_tangents<T, U>(da: Vec<Option<T>>, f: impl Fn(T) -> U) -> Vec<Option<U>> {
    da.into_iter().map(|d| d.map(&f)).collect()
}

/// A value and its tangents (`None`: zero) in [`Net::jvp_many`].
enum Dual<B: Backend> {
    Flat(Tensor<B, 2>, Vec<Option<Tensor<B, 2>>>),
    Image(Tensor<B, 4>, Vec<Option<Tensor<B, 4>>>),
}

impl<B: Backend> Clone for Dual<B> {
    fn clone(&self) -> Self {
        match self {
            Dual::Flat(a, d) => Dual::Flat(a.clone(), d.clone()),
            Dual::Image(a, d) => Dual::Image(a.clone(), d.clone()),
        }
    }
}

/// The sum of two optional tangents (`None` is zero).
fn add_tangents<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The tangents' sums, pairwise.
fn add_all<T: std::ops::Add<Output = T>>(a: Vec<Option<T>>, b: Vec<Option<T>>) -> Vec<Option<T>> {
    a.into_iter()
        .zip(b)
        .map(|(a, b)| add_tangents(a, b))
        .collect()
}

impl<B: Backend> Dual<B> {
    /// The residual sum and its tangent.
    fn add(self, skip: Self) -> Self {
        match (self, skip) {
            (Dual::Flat(a, da), Dual::Flat(b, db)) => Dual::Flat(a + b, add_all(da, db)),
            (Dual::Image(a, da), Dual::Image(b, db)) => Dual::Image(a + b, add_all(da, db)),
            _ => unreachable!("validated at construction"),
        }
    }
}
