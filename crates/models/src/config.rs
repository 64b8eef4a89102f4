use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::net::Shape;
use crate::sequential::{LayerSpec, expand};
use crate::{Activation, Arch, InitScheme, Kernels, ModelError, Net, RandomInit, Stage};

/// How a CNN turns its last feature map into features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// Flatten `[c, h, w]` and apply the affine readout.
    #[default]
    Flatten,
    /// Mean over positions, then the affine readout.
    AvgPool,
}

/// The hand-written model description (the `[model]` table of a config). Unknown keys are
/// errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// f(x) = wᵀx (+ b).
    Linear {
        #[serde(default)]
        bias: bool,
        #[serde(default = "lecun")]
        init: InitScheme,
    },
    /// f(x) = aᵀWx, W ∈ R^{width×d}, a ∈ R^width; both trained.
    TwoLayerLinear {
        width: usize,
        #[serde(default = "lecun")]
        init: InitScheme,
    },
    /// f(x) = ⟨u ⊙ v, x⟩.
    Diagonal {
        #[serde(default = "lecun")]
        init: InitScheme,
    },
    /// f(x) = Σ_k a_k σ(w_kᵀx), no hidden bias, with the second layer fixed at
    /// a_k = ±1/√width (seeded signs). Only W is trained. **\[choice\]**, docs/definitions.md §14.
    TwoLayer {
        width: usize,
        activation: Activation,
        #[serde(default = "lecun")]
        init: InitScheme,
    },
    /// Fully connected net: `hidden` widths, then an affine readout to c outputs.
    Fnn {
        hidden: Vec<usize>,
        activation: Activation,
        #[serde(default = "yes")]
        bias: bool,
        #[serde(default)]
        init: InitScheme,
    },
    /// Convolutional net: one 3×3 conv per entry of `channels` (stride 1 for the first,
    /// 2 after, padding 1), each followed by the activation, then `head` and an affine
    /// readout. The default `channels = [32, 64, 64]` is the 4-layer CNN (3 conv + 1 dense).
    Cnn {
        #[serde(default = "cnn_channels")]
        channels: Vec<usize>,
        #[serde(default = "relu")]
        activation: Activation,
        #[serde(default)]
        head: Head,
        #[serde(default = "yes")]
        bias: bool,
        #[serde(default)]
        init: InitScheme,
    },
    /// VGG-style net without BatchNorm: one block per entry of `channels`, each
    /// `convs_per_block` 3×3 convs (padding 1) followed by the activation. Blocks after the
    /// first open with a stride-2 conv, which replaces VGG's max-pooling (burn's pooling
    /// backward cannot be differentiated twice, and every model here is). Then `head`, the
    /// `hidden` dense layers with the activation, and an affine readout.
    Vgg {
        #[serde(default = "vgg_channels")]
        channels: Vec<usize>,
        #[serde(default = "two")]
        convs_per_block: usize,
        #[serde(default)]
        hidden: Vec<usize>,
        #[serde(default = "relu")]
        activation: Activation,
        #[serde(default = "avg_pool")]
        head: Head,
        #[serde(default = "yes")]
        bias: bool,
        #[serde(default)]
        init: InitScheme,
    },
    /// ResNet-style net without BatchNorm: a 3×3 stem conv to `channels[0]`; then per stage
    /// (one per entry of `channels`) a stride-2 3×3 conv to that width (not for the first),
    /// and `blocks` residual blocks x ↦ σ(x + conv(σ(conv(x)))) with identity shortcuts; then
    /// `head` and an affine readout.
    Resnet {
        #[serde(default = "resnet_channels")]
        channels: Vec<usize>,
        #[serde(default = "one")]
        blocks: usize,
        #[serde(default = "relu")]
        activation: Activation,
        #[serde(default = "avg_pool")]
        head: Head,
        #[serde(default = "yes")]
        bias: bool,
        #[serde(default)]
        init: InitScheme,
    },
    /// An explicit list of layers, mirroring `torch.nn.Sequential` (see [`LayerSpec`]).
    /// `input_shape` (`[d]` or `[c, h, w]`) is needed when no dataset gives it (a model
    /// measured on a probe file); when both do, they must agree.
    Sequential {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input_shape: Option<Vec<usize>>,
        layers: Vec<LayerSpec>,
        /// Initialisation when no weights are given (BatchNorm: γ = 1, β = 0).
        #[serde(default)]
        init: InitScheme,
    },
}

fn vgg_channels() -> Vec<usize> {
    vec![32, 64, 128]
}
fn resnet_channels() -> Vec<usize> {
    vec![16, 32, 64]
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn avg_pool() -> Head {
    Head::AvgPool
}

fn lecun() -> InitScheme {
    InitScheme::Lecun
}
fn yes() -> bool {
    true
}
fn relu() -> Activation {
    Activation::Relu
}
fn cnn_channels() -> Vec<usize> {
    vec![32, 64, 64]
}

impl ModelConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Linear { .. } => "linear",
            ModelConfig::TwoLayerLinear { .. } => "two_layer_linear",
            ModelConfig::Diagonal { .. } => "diagonal",
            ModelConfig::TwoLayer { .. } => "two_layer",
            ModelConfig::Fnn { .. } => "fnn",
            ModelConfig::Cnn { .. } => "cnn",
            ModelConfig::Vgg { .. } => "vgg",
            ModelConfig::Resnet { .. } => "resnet",
            ModelConfig::Sequential { .. } => "sequential",
        }
    }

    /// The initialisation scheme of the parameters.
    pub fn init_scheme(&self) -> InitScheme {
        match self {
            ModelConfig::Linear { init, .. }
            | ModelConfig::TwoLayerLinear { init, .. }
            | ModelConfig::Diagonal { init }
            | ModelConfig::TwoLayer { init, .. }
            | ModelConfig::Fnn { init, .. }
            | ModelConfig::Cnn { init, .. }
            | ModelConfig::Vgg { init, .. }
            | ModelConfig::Resnet { init, .. }
            | ModelConfig::Sequential { init, .. } => *init,
        }
    }

    /// A network of [`Self::arch`] initialised by [`Self::init_scheme`]; `seed` fixes both
    /// the signs of a fixed second layer and the initial parameters (as the trainer does).
    pub fn init<B: Kernels>(
        &self,
        input_shape: &[usize],
        outputs: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<Net<B>, ModelError> {
        let arch = self.arch(input_shape, outputs, seed)?;
        Net::build(arch, &mut RandomInit::new(device, self.init_scheme(), seed))
    }

    /// The output count a model fixes itself (a `sequential` model's last layer), for inputs
    /// of `input_shape`; `None` for the built-in kinds, which take it from the targets, or
    /// when the layers do not fit the shape ([`Self::arch`] then says why).
    pub fn natural_outputs(&self, input_shape: &[usize]) -> Option<usize> {
        let ModelConfig::Sequential { layers, .. } = self else {
            return None;
        };
        let shape = Shape::of(input_shape)?;
        match expand(layers, shape, "", &mut Vec::new()).ok()? {
            Shape::Flat(c) => Some(c),
            Shape::Image(..) => None,
        }
    }

    /// The architecture for inputs of `input_shape` and `outputs` outputs. `seed` fixes the
    /// signs of a fixed second layer.
    pub fn arch(
        &self,
        input_shape: &[usize],
        outputs: usize,
        seed: u64,
    ) -> Result<Arch, ModelError> {
        let err = |problem: String| ModelError::Config {
            kind: self.kind(),
            problem,
        };
        if let ModelConfig::Sequential {
            input_shape: given,
            layers,
            ..
        } = self
        {
            return sequential_arch(given.as_deref(), layers, input_shape, outputs);
        }
        let d: usize = input_shape.iter().product();
        let image_in = input_shape.len() == 3;
        let convolutional = matches!(
            self,
            ModelConfig::Cnn { .. } | ModelConfig::Vgg { .. } | ModelConfig::Resnet { .. }
        );
        if convolutional && !image_in {
            return Err(err(format!(
                "needs image inputs [c, h, w], but the data are vectors of length {d}"
            )));
        }
        let mut stages = Vec::new();
        if image_in && !convolutional {
            stages.push(Stage::Flatten);
        }
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(err(format!("needs {name} ≥ 1")))
            } else {
                Ok(())
            }
        };
        match self {
            ModelConfig::Linear { bias, .. } => stages.push(Stage::Dense {
                out: outputs,
                bias: *bias,
            }),
            ModelConfig::TwoLayerLinear { width, .. } => {
                positive("width", *width)?;
                stages.push(Stage::Dense {
                    out: *width,
                    bias: false,
                });
                stages.push(Stage::Dense {
                    out: outputs,
                    bias: false,
                });
            }
            ModelConfig::Diagonal { .. } => {
                if outputs != 1 {
                    return Err(err(format!(
                        "has one output but the targets need {outputs}; use it for regression"
                    )));
                }
                stages.extend([Stage::Hadamard, Stage::Hadamard, Stage::SumFeatures]);
            }
            ModelConfig::TwoLayer {
                width, activation, ..
            } => {
                positive("width", *width)?;
                let mut rng = noisegeom_data::seeded_rng(seed, "two-layer-readout");
                let a = 1.0 / (*width as f32).sqrt();
                let weights = (0..outputs * width)
                    .map(|_| if rng.random_bool(0.5) { a } else { -a })
                    .collect();
                stages.push(Stage::Dense {
                    out: *width,
                    bias: false,
                });
                stages.push(Stage::Act {
                    activation: *activation,
                });
                stages.push(Stage::FixedDense {
                    out: outputs,
                    weights,
                });
            }
            ModelConfig::Fnn {
                hidden,
                activation,
                bias,
                ..
            } => {
                for &w in hidden {
                    positive("every hidden width", w)?;
                    stages.push(Stage::Dense {
                        out: w,
                        bias: *bias,
                    });
                    stages.push(Stage::Act {
                        activation: *activation,
                    });
                }
                stages.push(Stage::Dense {
                    out: outputs,
                    bias: *bias,
                });
            }
            ModelConfig::Cnn {
                channels,
                activation,
                head,
                bias,
                ..
            } => {
                if channels.is_empty() {
                    return Err(err("needs at least one conv layer in `channels`".into()));
                }
                for (i, &c) in channels.iter().enumerate() {
                    positive("every channel count", c)?;
                    conv_act(
                        &mut stages,
                        c,
                        if i == 0 { 1 } else { 2 },
                        *bias,
                        *activation,
                    );
                }
                readout(&mut stages, *head, &[], outputs, *bias, *activation);
            }
            ModelConfig::Vgg {
                channels,
                convs_per_block,
                hidden,
                activation,
                head,
                bias,
                ..
            } => {
                if channels.is_empty() {
                    return Err(err("needs at least one block in `channels`".into()));
                }
                positive("convs_per_block", *convs_per_block)?;
                for (b, &c) in channels.iter().enumerate() {
                    positive("every channel count", c)?;
                    for i in 0..*convs_per_block {
                        let stride = if b > 0 && i == 0 { 2 } else { 1 };
                        conv_act(&mut stages, c, stride, *bias, *activation);
                    }
                }
                for &w in hidden {
                    positive("every hidden width", w)?;
                }
                readout(&mut stages, *head, hidden, outputs, *bias, *activation);
            }
            ModelConfig::Sequential { .. } => unreachable!("built above"),
            ModelConfig::Resnet {
                channels,
                blocks,
                activation,
                head,
                bias,
                ..
            } => {
                if channels.is_empty() {
                    return Err(err("needs at least one stage in `channels`".into()));
                }
                for (s, &c) in channels.iter().enumerate() {
                    positive("every channel count", c)?;
                    // The stem (stride 1), or the stride-2 conv that opens a stage.
                    conv_act(
                        &mut stages,
                        c,
                        if s == 0 { 1 } else { 2 },
                        *bias,
                        *activation,
                    );
                    for _ in 0..*blocks {
                        stages.push(Stage::SaveSkip);
                        conv_act(&mut stages, c, 1, *bias, *activation);
                        stages.push(conv3(c, 1, *bias));
                        stages.push(Stage::AddSkip);
                        stages.push(Stage::Act {
                            activation: *activation,
                        });
                    }
                }
                readout(&mut stages, *head, &[], outputs, *bias, *activation);
            }
        }
        let arch = Arch {
            input_shape: input_shape.to_vec(),
            stages,
        };
        arch.validate()?;
        Ok(arch)
    }
}

/// The architecture of a `sequential` model for inputs of `input_shape` (the data's; it
/// must match the config's `given` shape, if any) and `outputs` outputs.
fn sequential_arch(
    given: Option<&[usize]>,
    layers: &[LayerSpec],
    input_shape: &[usize],
    outputs: usize,
) -> Result<Arch, ModelError> {
    let err = |problem: String| ModelError::Config {
        kind: "sequential",
        problem,
    };
    if let Some(g) = given
        && g != input_shape
    {
        return Err(err(format!(
            "has input_shape = {g:?} but the data's inputs are {input_shape:?}"
        )));
    }
    let shape = Shape::of(input_shape)
        .filter(|_| input_shape.iter().all(|&s| s > 0))
        .ok_or_else(|| {
            err(format!(
                "input_shape = {input_shape:?}: give [d] or [c, h, w], every size ≥ 1"
            ))
        })?;
    if layers.is_empty() {
        return Err(err("needs at least one layer in `layers`".into()));
    }
    let mut stages = Vec::new();
    match expand(layers, shape, "", &mut stages)? {
        Shape::Flat(c) if c == outputs => {}
        Shape::Flat(c) => {
            return Err(err(format!(
                "the last layer gives {c} outputs but the targets have {outputs}; set the last linear layer's out = {outputs}"
            )));
        }
        Shape::Image(c, h, w) => {
            return Err(err(format!(
                "the layers end on an image [{c}, {h}, {w}]; end with flatten or adaptive_avgpool2d and a linear layer"
            )));
        }
    }
    let arch = Arch {
        input_shape: input_shape.to_vec(),
        stages,
    };
    arch.validate()?;
    Ok(arch)
}

/// A 3×3 conv with padding 1.
fn conv3(out: usize, stride: usize, bias: bool) -> Stage {
    Stage::Conv {
        out,
        kernel: 3,
        stride,
        padding: 1,
        bias,
    }
}

/// A 3×3 conv followed by the activation.
fn conv_act(
    stages: &mut Vec<Stage>,
    out: usize,
    stride: usize,
    bias: bool,
    activation: Activation,
) {
    stages.push(conv3(out, stride, bias));
    stages.push(Stage::Act { activation });
}

/// The end of a conv net: `head`, the `hidden` dense layers with the activation, and an
/// affine readout to `outputs`.
fn readout(
    stages: &mut Vec<Stage>,
    head: Head,
    hidden: &[usize],
    outputs: usize,
    bias: bool,
    activation: Activation,
) {
    stages.push(match head {
        Head::Flatten => Stage::Flatten,
        Head::AvgPool => Stage::GlobalAvgPool,
    });
    for &w in hidden {
        stages.push(Stage::Dense { out: w, bias });
        stages.push(Stage::Act { activation });
    }
    stages.push(Stage::Dense { out: outputs, bias });
}
