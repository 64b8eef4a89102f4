use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::layers::{Conv, Dense, Hadamard, Layer, NoTap, Norm, Tap, per_channel};
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
    /// Swaps the running value with the one the matching [`Stage::SaveSkip`] remembered: after
    /// a residual block's stages, the block's output is remembered and its input runs through
    /// the shortcut's stages (a projection) up to [`Stage::AddSkip`].
    SwapSkip,
    /// Mean over `kernel`×`kernel` windows `stride` apart (`torch.nn.AvgPool2d(kernel,
    /// stride)`, no padding; `None`: stride = kernel); rows and columns past the last whole
    /// window are dropped, as PyTorch does.
    AvgPool {
        kernel: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// BatchNorm in eval mode over the channels (features of a vector, channels of an
    /// image): x̂ = (x − mean)/√(var + eps) with the running statistics, then γ ⊙ x̂ + β.
    /// With `frozen`, γ and β are fixed values of the architecture; without, they are
    /// parameters of θ (`weight` γ, then `bias` β, each `[channels]`).
    BatchNorm {
        eps: f64,
        mean: Vec<f32>,
        var: Vec<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frozen: Option<Affine>,
    },
}

/// A fixed per-channel affine map γ ⊙ x + β (a frozen BatchNorm's weight and bias).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Stage {
    /// Whether the stage holds parameters of θ (it is then a [`Layer`] of the [`Net`]).
    pub fn is_parametric(&self) -> bool {
        matches!(
            self,
            Stage::Dense { .. }
                | Stage::Conv { .. }
                | Stage::Hadamard
                | Stage::BatchNorm { frozen: None, .. }
        )
    }
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
pub(crate) enum Shape {
    Flat(usize),
    Image(usize, usize, usize),
}

impl Arch {
    /// Checks that every stage fits the shape before it; returns the output width.
    pub fn validate(&self) -> Result<usize, ModelError> {
        let mut shape = self.input()?;
        let mut saved = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            shape = step_shape(shape, stage, &mut saved)
                .map_err(|problem| ModelError::Arch { stage: i, problem })?;
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

    /// The shape each stage reads, in order (of a validated architecture).
    pub(crate) fn stage_inputs(&self) -> Vec<Shape> {
        let mut shape = self.input().expect("validated");
        let mut saved = Vec::new();
        self.stages
            .iter()
            .map(|stage| {
                let before = shape;
                shape = step_shape(shape, stage, &mut saved).expect("validated");
                before
            })
            .collect()
    }

    /// Number of outputs c.
    pub fn outputs(&self) -> usize {
        self.validate().expect("validated at construction")
    }

    pub(crate) fn input(&self) -> Result<Shape, ModelError> {
        Shape::of(&self.input_shape).ok_or_else(|| ModelError::Arch {
            stage: 0,
            problem: format!(
                "input shape {:?} is neither [d] nor [c, h, w]",
                self.input_shape
            ),
        })
    }

    /// Names and shapes of the parameters, in the flat-vector order. Names follow
    /// `torch.nn.Sequential` ([`Arch::state_layout`]).
    pub fn param_layout(&self) -> Vec<(String, Vec<usize>)> {
        self.state_layout()
            .into_iter()
            .filter(|e| e.trained)
            .map(|e| (e.name, e.shape))
            .collect()
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
        let mut saved = Vec::new();
        let (mut floats, mut flops) = (0usize, 0.0f64);
        for stage in &self.stages {
            let next = step_shape(shape, stage, &mut saved).expect("validated");
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

/// The shape after `stage`, `saved` holding the values remembered for residual shortcuts.
pub(crate) fn step_shape(
    shape: Shape,
    stage: &Stage,
    saved: &mut Vec<Shape>,
) -> Result<Shape, String> {
    match stage {
        Stage::SaveSkip => saved.push(shape),
        Stage::SwapSkip => {
            return match saved.last_mut() {
                Some(s) => Ok(std::mem::replace(s, shape)),
                None => Err("swap_skip has no save_skip before it".into()),
            };
        }
        Stage::AddSkip => match saved.pop() {
            Some(s) if s == shape => {}
            Some(s) => {
                return Err(format!(
                    "add_skip adds a value of shape {s:?} to one of shape {shape:?}; a residual block and its shortcut must end on the same shape"
                ));
            }
            None => return Err("add_skip has no save_skip before it".into()),
        },
        _ => {}
    }
    next_shape(shape, stage)
        .ok_or_else(|| format!("{stage:?} cannot follow a value of shape {shape:?}"))
}

/// The shape after a stage that does not touch the shortcut stack.
pub(crate) fn next_shape(shape: Shape, stage: &Stage) -> Option<Shape> {
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
        (Stage::AvgPool { kernel, stride }, Image(c, h, w))
            if *kernel >= 1 && stride.is_none_or(|s| s >= 1) && h >= *kernel && w >= *kernel =>
        {
            let s = stride.unwrap_or(*kernel);
            Image(c, (h - kernel) / s + 1, (w - kernel) / s + 1)
        }
        (
            Stage::BatchNorm {
                mean, var, frozen, ..
            },
            s,
        ) if mean.len() == s.channels()
            && var.len() == s.channels()
            && frozen
                .as_ref()
                .is_none_or(|a| a.weight.len() == s.channels() && a.bias.len() == s.channels()) =>
        {
            s
        }
        (Stage::Act { .. } | Stage::SaveSkip | Stage::AddSkip | Stage::SwapSkip, s) => s,
        _ => return None,
    })
}

impl Shape {
    /// The shape of inputs `[d]` or `[c, h, w]`.
    pub(crate) fn of(dims: &[usize]) -> Option<Shape> {
        match *dims {
            [d] => Some(Shape::Flat(d)),
            [c, h, w] => Some(Shape::Image(c, h, w)),
            _ => None,
        }
    }

    /// Features of a vector, channels of an image.
    pub(crate) fn channels(self) -> usize {
        match self {
            Shape::Flat(d) => d,
            Shape::Image(c, _, _) => c,
        }
    }
}

/// `[n, c, h, w] → [n, c]`, the mean over positions (reshape + mean, so it nests).
pub(crate) fn global_avg_pool<B: Backend>(a: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = a.dims();
    a.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
}

/// Mean over `k`×`k` windows `s` apart, the remainder rows and columns dropped. Non-
/// overlapping windows (s = k) are a reshape and a mean; others two products with fixed
/// 0/(1/k) window matrices, one per axis. Both are linear maps of plain ops, so they nest.
pub(crate) fn avg_pool<B: Backend>(a: Tensor<B, 4>, k: usize, s: usize) -> Tensor<B, 4> {
    if s != k {
        let [n, c, h, w] = a.dims();
        let (ho, wo) = ((h - k) / s + 1, (w - k) / s + 1);
        let device = a.device();
        // Pools the last axis of `[rows, len]` into `out` windows.
        let windows = |len: usize, out: usize| {
            let mut m = vec![0.0f64; len * out];
            for o in 0..out {
                for i in o * s..o * s + k {
                    m[i * out + o] = 1.0 / k as f64;
                }
            }
            Tensor::<B, 2>::from_data(TensorData::new(m, [len, out]), &device)
        };
        let a = a.reshape([n * c * h, w]).matmul(windows(w, wo));
        let a = a
            .reshape([n, c, h, wo])
            .swap_dims(2, 3)
            .reshape([n * c * wo, h]);
        let a = a.matmul(windows(h, ho)).reshape([n, c, wo, ho]);
        return a.swap_dims(2, 3);
    }
    let [n, c, h, w] = a.dims();
    let (ho, wo) = (h / k, w / k);
    let a = if ho * k == h && wo * k == w {
        a
    } else {
        a.slice([0..n, 0..c, 0..ho * k, 0..wo * k])
    };
    a.reshape([n, c, ho, k, wo, k])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([n, c, ho, wo])
}

/// The fixed per-channel map of an eval-mode BatchNorm stage, `x ↦ scale ⊙ x + shift`,
/// formed in f64: x̂ = (x − mean)/√(var + eps), then γ, β when frozen.
pub(crate) fn bn_fixed(
    eps: f64,
    mean: &[f32],
    var: &[f32],
    frozen: Option<&Affine>,
) -> (Vec<f64>, Vec<f64>) {
    (0..mean.len())
        .map(|i| {
            let s = 1.0 / (var[i] as f64 + eps).sqrt();
            let (g, b) = frozen.map_or((1.0, 0.0), |a| (a.weight[i] as f64, a.bias[i] as f64));
            (g * s, b - mean[i] as f64 * g * s)
        })
        .unzip()
}

/// `scale ⊙ a (+ shift)` per channel.
pub(crate) fn fixed_affine<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    scale: &[f64],
    shift: Option<&[f64]>,
) -> Tensor<B, D> {
    let device = a.device();
    let v = |x: &[f64]| {
        per_channel::<B, D>(Tensor::from_data(
            TensorData::new(x.to_vec(), [x.len()]),
            &device,
        ))
    };
    let z = a * v(scale);
    match shift {
        Some(t) => z + v(t),
        None => z,
    }
}

/// The `[in, out]` matrix that a fixed dense stage multiplies by (`weights` is `[out, in]`).
pub(crate) fn fixed_weight<B: Backend>(
    out: usize,
    weights: &[f32],
    device: &B::Device,
) -> Tensor<B, 2> {
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
        for (stage, shape) in arch.stages.iter().zip(arch.stage_inputs()) {
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
                (Stage::BatchNorm { frozen: None, .. }, s) => {
                    let c = s.channels();
                    let weight = source.param([c], ParamInit::new(1, Role::NormScale));
                    let bias = source.param([c], ParamInit::new(1, Role::NormShift));
                    layers.push(Layer::Norm(Norm { weight, bias }));
                }
                _ => {}
            }
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

    /// The forward pass with a [`Tap`] on every parametric layer, in a [`Pass`].
    pub fn forward_tapped<T: Tap<B>>(
        &self,
        x: Tensor<B, 2>,
        tap: &mut T,
        pass: Pass,
    ) -> Tensor<B, 2> {
        self.forward_in(x, tap, pass)
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
                (Stage::SwapSkip, v) => std::mem::replace(saved.last_mut().expect("validated"), v),
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
                (Stage::AvgPool { kernel, stride }, Value::Image(a)) => {
                    Value::Image(avg_pool(a, *kernel, stride.unwrap_or(*kernel)))
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
                        Value::Flat(a) => Value::Flat(fixed_affine(a, &scale, Some(&shift))),
                        Value::Image(a) => Value::Image(fixed_affine(a, &scale, Some(&shift))),
                    };
                    match frozen {
                        Some(_) => v,
                        None => match (v, layers.next()) {
                            (Value::Flat(a), Some(Layer::Norm(l))) => {
                                Value::Flat(l.forward(a, tap, pass))
                            }
                            (Value::Image(a), Some(Layer::Norm(l))) => {
                                Value::Image(l.forward(a, tap, pass))
                            }
                            _ => unreachable!("layers follow stages"),
                        },
                    }
                }
                _ => unreachable!("validated at construction"),
            };
        }
        match v {
            Value::Flat(out) => out,
            Value::Image(_) => unreachable!("validated at construction"),
        }
    }
}
