//! `[model] kind = "sequential"`: an explicit list of layers mirroring `torch.nn.Sequential`,
//! expanded to the same [`Stage`]s the built-in kinds expand to. Shapes are checked layer by
//! layer before anything is built, and every error names the layer and its op.

use serde::{Deserialize, Serialize};

use crate::net::{Shape, next_shape};
use crate::{Activation, Affine, ModelError, Stage};

/// One entry of a `sequential` model's `layers` list (the `torch.nn` module it mirrors in
/// brackets). Unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// `nn.Linear(in, out, bias)`.
    Linear {
        out: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// `nn.Conv2d(in, out, kernel, stride, padding, bias)`, square kernel.
    Conv2d {
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// `nn.ReLU()`.
    Relu {},
    /// `nn.Tanh()`.
    Tanh {},
    /// `nn.GELU()` (exact, erf-based).
    Gelu {},
    /// `nn.Identity()`.
    Identity {},
    /// `nn.Flatten()`.
    Flatten {},
    /// `nn.AvgPool2d(kernel, stride)` (no padding); `stride` defaults to `kernel`.
    Avgpool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    /// `nn.AdaptiveAvgPool2d(1)` followed by flattening: `[c, h, w] → [c]`.
    AdaptiveAvgpool2d {
        #[serde(default = "one")]
        output_size: usize,
    },
    /// `nn.BatchNorm1d(features)` in eval mode (running statistics).
    Batchnorm1d {
        #[serde(default = "bn_eps")]
        eps: f64,
        /// γ and β are parameters of θ (true) or fixed (false).
        #[serde(default = "yes")]
        trainable: bool,
    },
    /// `nn.BatchNorm2d(channels)` in eval mode (running statistics).
    Batchnorm2d {
        #[serde(default = "bn_eps")]
        eps: f64,
        #[serde(default = "yes")]
        trainable: bool,
    },
    /// x ↦ block(x) + shortcut(x): `layers` is the block; `shortcut` is empty (the identity,
    /// so the block must keep the shape) or a projection such as a 1×1 `conv2d` with the
    /// block's stride, optionally followed by a `batchnorm2d` (torchvision's `downsample`),
    /// ending on the block's shape.
    Residual {
        layers: Vec<LayerSpec>,
        #[serde(default)]
        shortcut: Vec<LayerSpec>,
    },
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn bn_eps() -> f64 {
    1e-5
}

impl LayerSpec {
    fn op(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Relu {} => "relu",
            LayerSpec::Tanh {} => "tanh",
            LayerSpec::Gelu {} => "gelu",
            LayerSpec::Identity {} => "identity",
            LayerSpec::Flatten {} => "flatten",
            LayerSpec::Avgpool2d { .. } => "avgpool2d",
            LayerSpec::AdaptiveAvgpool2d { .. } => "adaptive_avgpool2d",
            LayerSpec::Batchnorm1d { .. } => "batchnorm1d",
            LayerSpec::Batchnorm2d { .. } => "batchnorm2d",
            LayerSpec::Residual { .. } => "residual",
        }
    }
}

fn describe(s: Shape) -> String {
    match s {
        Shape::Flat(d) => format!("a vector of {d}"),
        Shape::Image(c, h, w) => format!("an image [{c}, {h}, {w}]"),
    }
}

/// The stages of `layers` for inputs of `shape`, and the shape they end on. `path` names
/// the enclosing residual blocks (`"3."` inside layer 3).
pub(crate) fn expand(
    layers: &[LayerSpec],
    mut shape: Shape,
    path: &str,
    stages: &mut Vec<Stage>,
) -> Result<Shape, ModelError> {
    for (i, layer) in layers.iter().enumerate() {
        let err = |problem: String| ModelError::Config {
            kind: "sequential",
            problem: format!("layer {path}{i} ({}): {problem}", layer.op()),
        };
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(err(format!("needs {name} ≥ 1")))
            } else {
                Ok(())
            }
        };
        let image = || match shape {
            Shape::Image(..) => Ok(()),
            Shape::Flat(d) => Err(err(format!(
                "needs an image input [c, h, w], but the value here is a vector of {d}"
            ))),
        };
        let vector = |fix: &str| match shape {
            Shape::Flat(_) => Ok(()),
            s => Err(err(format!(
                "needs a vector input, but the value here is {}{fix}",
                describe(s)
            ))),
        };
        let stage = match layer {
            LayerSpec::Linear { out, bias } => {
                positive("out", *out)?;
                vector("; add { op = \"flatten\" } before it")?;
                Stage::Dense {
                    out: *out,
                    bias: *bias,
                }
            }
            LayerSpec::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
            } => {
                positive("out", *out)?;
                positive("kernel", *kernel)?;
                positive("stride", *stride)?;
                image()?;
                if let Shape::Image(_, h, w) = shape
                    && (h + 2 * padding < *kernel || w + 2 * padding < *kernel)
                {
                    return Err(err(format!(
                        "kernel {kernel} is larger than the padded input {} × {}",
                        h + 2 * padding,
                        w + 2 * padding
                    )));
                }
                Stage::Conv {
                    out: *out,
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                    bias: *bias,
                }
            }
            LayerSpec::Relu {}
            | LayerSpec::Tanh {}
            | LayerSpec::Gelu {}
            | LayerSpec::Identity {} => Stage::Act {
                activation: match layer {
                    LayerSpec::Relu {} => Activation::Relu,
                    LayerSpec::Tanh {} => Activation::Tanh,
                    LayerSpec::Gelu {} => Activation::Gelu,
                    _ => Activation::Identity,
                },
            },
            LayerSpec::Flatten {} => match shape {
                Shape::Image(..) => Stage::Flatten,
                // Flattening a vector changes nothing.
                Shape::Flat(_) => Stage::Act {
                    activation: Activation::Identity,
                },
            },
            LayerSpec::Avgpool2d { kernel, stride } => {
                positive("kernel", *kernel)?;
                image()?;
                if *stride == Some(0) {
                    return Err(err(
                        "needs stride ≥ 1 (or leave it out: stride = kernel)".into()
                    ));
                }
                if let Shape::Image(_, h, w) = shape
                    && (h < *kernel || w < *kernel)
                {
                    return Err(err(format!(
                        "kernel {kernel} is larger than the input {h} × {w}"
                    )));
                }
                Stage::AvgPool {
                    kernel: *kernel,
                    // Stored only where it differs from the kernel, as torch's default.
                    stride: stride.filter(|s| s != kernel),
                }
            }
            LayerSpec::AdaptiveAvgpool2d { output_size } => {
                image()?;
                if *output_size != 1 {
                    return Err(err(format!(
                        "output_size = {output_size}: only 1 (global average pooling) is supported"
                    )));
                }
                Stage::GlobalAvgPool
            }
            LayerSpec::Batchnorm1d { eps, trainable }
            | LayerSpec::Batchnorm2d { eps, trainable } => {
                if matches!(layer, LayerSpec::Batchnorm1d { .. }) {
                    vector("; use batchnorm2d for images")?
                } else {
                    image()?
                }
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(err(format!("eps = {eps}; it must be positive")));
                }
                let c = shape.channels();
                Stage::BatchNorm {
                    eps: *eps,
                    mean: vec![0.0; c],
                    var: vec![1.0; c],
                    frozen: (!trainable).then(|| Affine {
                        weight: vec![1.0; c],
                        bias: vec![0.0; c],
                    }),
                }
            }
            LayerSpec::Residual { layers, shortcut } => {
                if layers.is_empty() {
                    return Err(err("needs at least one layer in `layers`".into()));
                }
                stages.push(Stage::SaveSkip);
                let end = expand(layers, shape, &format!("{path}{i}."), stages)?;
                if shortcut.is_empty() {
                    if end != shape {
                        return Err(err(format!(
                            "the block turns {} into {}; an identity shortcut needs the shape kept, or give a `shortcut` projection, e.g. [{{ op = \"conv2d\", out = {}, kernel = 1, stride = … }}]",
                            describe(shape),
                            describe(end),
                            end.channels()
                        )));
                    }
                } else {
                    stages.push(Stage::SwapSkip);
                    let side = expand(shortcut, shape, &format!("{path}{i}.shortcut."), stages)?;
                    if side != end {
                        return Err(err(format!(
                            "the block ends on {} but its shortcut on {}; they must match to be added",
                            describe(end),
                            describe(side)
                        )));
                    }
                }
                stages.push(Stage::AddSkip);
                shape = end;
                continue;
            }
        };
        shape = next_shape(shape, &stage)
            .ok_or_else(|| err(format!("cannot follow {}", describe(shape))))?;
        stages.push(stage);
    }
    Ok(shape)
}
