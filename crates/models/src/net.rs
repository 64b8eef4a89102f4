use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::layers::{Conv, Dense, Hadamard, Layer, NoTap, Tap};
use crate::params::{ParamInit, ParamSource, Role};
use crate::{Activation, ModelError};
use noisegeom_kernels::{Kernels, Pass};

/// One step of a sequential network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Stage {
    /// Affine map to `out` features (weight `[out, in]`).
    Dense { out: usize, bias: bool },
    /// Square convolution to `out` channels (weight `[out, in, k, k]`).
    Conv {
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    },
    /// Elementwise product with a learned vector of the input's width.
    Hadamard,
    /// Elementwise nonlinearity.
    Act { activation: Activation },
    /// `[n, c, h, w] → [n, c·h·w]`.
    Flatten,
    /// `[n, c, h, w] → [n, c]`, the mean over positions (reshape + mean, so it nests).
    GlobalAvgPool,
    /// `[n, d] → [n, 1]`, the sum of the features.
    SumFeatures,
    /// A fixed (untrained) affine map without bias; `weights` is `[out, in]` row-major.
    /// Not a parameter: it is part of the architecture and exported with it.
    FixedDense { out: usize, weights: Vec<f32> },
    /// Remembers the running value for a later [`Stage::AddSkip`] (the start of a residual
    /// block's identity shortcut). Saves nest like brackets.
    SaveSkip,
    /// Adds the value remembered by the matching [`Stage::SaveSkip`] (same shape).
    AddSkip,
}

/// A network's full description: everything but the trained parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// `[d]` or `[channels, height, width]`.
    pub input_shape: Vec<usize>,
    pub stages: Vec<Stage>,
}

/// Shape of the running value between stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Flat(usize),
    Image(usize, usize, usize),
}

impl Arch {
    /// Checks that every stage fits the shape before it; returns the output width.
    pub fn validate(&self) -> Result<usize, ModelError> {
        let mut shape = self.input()?;
        let mut saved = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let err = |problem: String| ModelError::Arch { stage: i, problem };
            match stage {
                Stage::SaveSkip => saved.push(shape),
                Stage::AddSkip => match saved.pop() {
                    Some(s) if s == shape => {}
                    Some(s) => {
                        return Err(err(format!(
                            "add_skip adds a value of shape {s:?} to one of shape {shape:?}; a residual block must keep its shape"
                        )));
                    }
                    None => return Err(err("add_skip has no save_skip before it".into())),
                },
                _ => {}
            }
            shape = next_shape(shape, stage).ok_or_else(|| {
                err(format!(
                    "{stage:?} cannot follow a value of shape {shape:?}"
                ))
            })?;
        }
        if !saved.is_empty() {
            return Err(ModelError::Arch {
                stage: self.stages.len(),
                problem: format!("{} save_skip stages have no add_skip", saved.len()),
            });
        }
        match shape {
            Shape::Flat(c) => Ok(c),
            Shape::Image(..) => Err(ModelError::Arch {
                stage: self.stages.len(),
                problem: "the network ends on an image; add flatten or global_avg_pool".into(),
            }),
        }
    }

    /// Number of outputs c.
    pub fn outputs(&self) -> usize {
        self.validate().expect("validated at construction")
    }

    fn input(&self) -> Result<Shape, ModelError> {
        match self.input_shape[..] {
            [d] => Ok(Shape::Flat(d)),
            [c, h, w] => Ok(Shape::Image(c, h, w)),
            _ => Err(ModelError::Arch {
                stage: 0,
                problem: format!(
                    "input shape {:?} is neither [d] nor [c, h, w]",
                    self.input_shape
                ),
            }),
        }
    }

    /// Names and shapes of the parameters, in the flat-vector order. Names follow the
    /// stage index: `s{i}.weight`, `s{i}.bias`.
    pub fn param_layout(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut shape = self.input().expect("validated");
        for (i, stage) in self.stages.iter().enumerate() {
            match (stage, shape) {
                (Stage::Dense { out: o, bias }, Shape::Flat(d)) => {
                    out.push((format!("s{i}.weight"), vec![*o, d]));
                    if *bias {
                        out.push((format!("s{i}.bias"), vec![*o]));
                    }
                }
                (
                    Stage::Conv {
                        out: o,
                        kernel,
                        bias,
                        ..
                    },
                    Shape::Image(c, _, _),
                ) => {
                    out.push((format!("s{i}.weight"), vec![*o, c, *kernel, *kernel]));
                    if *bias {
                        out.push((format!("s{i}.bias"), vec![*o]));
                    }
                }
                (Stage::Hadamard, Shape::Flat(d)) => out.push((format!("s{i}.weight"), vec![d])),
                _ => {}
            }
            shape = next_shape(shape, stage).expect("validated");
        }
        out
    }

    /// Total number of trained parameters p.
    pub fn num_params(&self) -> usize {
        self.param_layout()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Per sample: the floats of every stage's output (what a forward pass through an autodiff
    /// graph keeps), and the floating-point operations of one forward pass (2 per
    /// multiply-add of the parametric layers).
    pub fn per_sample_cost(&self) -> (usize, f64) {
        let mut shape = self.input().expect("validated");
        let (mut floats, mut flops) = (0usize, 0.0f64);
        for stage in &self.stages {
            let next = next_shape(shape, stage).expect("validated");
            let size = |s: Shape| match s {
                Shape::Flat(d) => d,
                Shape::Image(c, h, w) => c * h * w,
            };
            flops += match (stage, shape, next) {
                (
                    Stage::Dense { .. } | Stage::FixedDense { .. },
                    Shape::Flat(d),
                    Shape::Flat(o),
                ) => 2.0 * (d * o) as f64,
                (Stage::Conv { kernel, .. }, Shape::Image(c, _, _), Shape::Image(o, h, w)) => {
                    2.0 * (kernel * kernel * c * o * h * w) as f64
                }
                _ => size(next) as f64,
            };
            floats += size(next);
            shape = next;
        }
        (floats, flops)
    }
}

fn next_shape(shape: Shape, stage: &Stage) -> Option<Shape> {
    use Shape::*;
    Some(match (stage, shape) {
        (Stage::Dense { out, .. }, Flat(_)) => Flat(*out),
        (Stage::Hadamard, Flat(d)) => Flat(d),
        (Stage::SumFeatures, Flat(_)) => Flat(1),
        (Stage::FixedDense { out, weights }, Flat(d)) if weights.len() == out * d => Flat(*out),
        (
            Stage::Conv {
                out,
                kernel,
                stride,
                padding,
                ..
            },
            Image(_, h, w),
        ) if *stride >= 1 && h + 2 * padding >= *kernel && w + 2 * padding >= *kernel => Image(
            *out,
            (h + 2 * padding - kernel) / stride + 1,
            (w + 2 * padding - kernel) / stride + 1,
        ),
        (Stage::Flatten, Image(c, h, w)) => Flat(c * h * w),
        (Stage::GlobalAvgPool, Image(c, _, _)) => Flat(c),
        (Stage::Act { .. } | Stage::SaveSkip | Stage::AddSkip, s) => s,
        _ => return None,
    })
}

/// `[n, c, h, w] → [n, c]`, the mean over positions (reshape + mean, so it nests).
fn global_avg_pool<B: Backend>(a: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = a.dims();
    a.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// The `[in, out]` matrix that a fixed dense stage multiplies by (`weights` is `[out, in]`).
fn fixed_weight<B: Backend>(out: usize, weights: &[f32], device: &B::Device) -> Tensor<B, 2> {
    let d = weights.len() / out;
    Tensor::<B, 2>::from_data(TensorData::new(weights.to_vec(), [out, d]), device).transpose()
}

/// A sequential network over backend `B`: the trained layers plus the architecture.
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    pub layers: Vec<Layer<B>>,
    #[module(skip)]
    pub arch: Arch,
}

enum Value<B: Backend> {
    Flat(Tensor<B, 2>),
    Image(Tensor<B, 4>),
}

impl<B: Backend> Clone for Value<B> {
    fn clone(&self) -> Self {
        match self {
            Value::Flat(a) => Value::Flat(a.clone()),
            Value::Image(a) => Value::Image(a.clone()),
        }
    }
}

impl<B: Backend> Value<B> {
    /// The residual sum `self + skip` (shapes checked by [`Arch::validate`]).
    fn add(self, skip: Self) -> Self {
        match (self, skip) {
            (Value::Flat(a), Value::Flat(b)) => Value::Flat(a + b),
            (Value::Image(a), Value::Image(b)) => Value::Image(a + b),
            _ => unreachable!("validated at construction"),
        }
    }
}

impl<B: Kernels> Net<B> {
    /// Builds the network, drawing each parameter from `source` in flat-vector order.
    pub fn build<S: ParamSource<B>>(arch: Arch, source: &mut S) -> Result<Self, ModelError> {
        arch.validate()?;
        let mut layers = Vec::new();
        let mut shape = arch.input()?;
        for stage in &arch.stages {
            match (stage, shape) {
                (Stage::Dense { out, bias }, Shape::Flat(d)) => {
                    let weight = source.param([*out, d], ParamInit::new(d, Role::Weight));
                    let bias = bias.then(|| source.param([*out], ParamInit::new(d, Role::Bias)));
                    layers.push(Layer::Dense(Dense { weight, bias }));
                }
                (
                    Stage::Conv {
                        out,
                        kernel,
                        stride,
                        padding,
                        bias,
                    },
                    Shape::Image(c, _, _),
                ) => {
                    let fan_in = c * kernel * kernel;
                    let weight = source.param(
                        [*out, c, *kernel, *kernel],
                        ParamInit::new(fan_in, Role::Weight),
                    );
                    let bias =
                        bias.then(|| source.param([*out], ParamInit::new(fan_in, Role::Bias)));
                    layers.push(Layer::Conv(Conv {
                        weight,
                        bias,
                        stride: *stride,
                        padding: *padding,
                    }));
                }
                (Stage::Hadamard, Shape::Flat(d)) => {
                    let weight = source.param([d], ParamInit::new(1, Role::Diagonal));
                    layers.push(Layer::Hadamard(Hadamard { weight }));
                }
                _ => {}
            }
            shape = next_shape(shape, stage).expect("validated");
        }
        source.finish()?;
        Ok(Net { layers, arch })
    }

    /// `[n, prod(input_shape)] → [n, c]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_with(x, &mut NoTap)
    }

    /// The forward pass with a [`Tap`] on every parametric layer (burn's own ops).
    pub fn forward_with<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T) -> Tensor<B, 2> {
        self.forward_in(x, tap, Pass::Generic)
    }

    /// The forward pass of a [`Pass`]: its layers may use the backend's host kernels.
    pub fn forward_pass(&self, x: Tensor<B, 2>, pass: Pass) -> Tensor<B, 2> {
        self.forward_in(x, &mut NoTap, pass)
    }

    fn forward_in<T: Tap<B>>(&self, x: Tensor<B, 2>, tap: &mut T, pass: Pass) -> Tensor<B, 2> {
        let [n, _] = x.dims();
        let mut v = match self.arch.input_shape[..] {
            [c, h, w] => Value::Image(x.reshape([n, c, h, w])),
            _ => Value::Flat(x),
        };
        let mut layers = self.layers.iter();
        let mut saved = Vec::new();
        for stage in &self.arch.stages {
            v = match (stage, v) {
                (Stage::SaveSkip, v) => {
                    saved.push(v.clone());
                    v
                }
                (Stage::AddSkip, v) => v.add(saved.pop().expect("validated")),
                (Stage::Dense { .. }, Value::Flat(a)) => match layers.next() {
                    Some(Layer::Dense(l)) => Value::Flat(l.forward(a, tap, pass)),
                    _ => unreachable!("layers follow stages"),
                },
                (Stage::Conv { .. }, Value::Image(a)) => match layers.next() {
                    Some(Layer::Conv(l)) => Value::Image(l.forward(a, tap, pass)),
                    _ => unreachable!("layers follow stages"),
                },
                (Stage::Hadamard, Value::Flat(a)) => match layers.next() {
                    Some(Layer::Hadamard(l)) => Value::Flat(l.forward(a, tap, pass)),
                    _ => unreachable!("layers follow stages"),
                },
                (Stage::Act { activation }, Value::Flat(a)) => Value::Flat(activation.apply(a)),
                (Stage::Act { activation }, Value::Image(a)) => Value::Image(activation.apply(a)),
                (Stage::Flatten, Value::Image(a)) => Value::Flat(a.flatten(1, 3)),
                (Stage::GlobalAvgPool, Value::Image(a)) => Value::Flat(global_avg_pool(a)),
                (Stage::SumFeatures, Value::Flat(a)) => Value::Flat(a.sum_dim(1)),
                (Stage::FixedDense { out, weights }, Value::Flat(a)) => {
                    let w = fixed_weight(*out, weights, &a.device());
                    Value::Flat(a.matmul(w))
                }
                _ => unreachable!("validated at construction"),
            };
        }
        match v {
            Value::Flat(out) => out,
            Value::Image(_) => unreachable!("validated at construction"),
        }
    }

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
